"""NeuralEF evaluation on a dataset's validation split (issue #14 item 3): the command end to end
on the Pascal Context fixture (ψ from a 2-step run on random features, a random ViT-S/14 at
112-px windows), its metrics recomputed with NumPy / SciPy from the saved predictions and the
fixture's raw labels, the reference resize and sliding-window inference against independent
implementations, and bad input as one-line errors."""

import json

import numpy as np
import pytest
import scipy.optimize

from conftest import write_pascal_context
from experiments.configs import neuralef as configs
from spectral_jax import protocols
from spectral_jax.neuralef import evaluate as ev
from test_bad_inputs import run_command

EVAL = "experiments.evaluate_neuralef"
SMALL = ["--config.eval.short_side=112", "--config.eval.window=112", "--config.eval.stride=56"]


def _random_features(c_dim: int):
  from spectral_jax.neuralef import feature_cache
  rng = np.random.default_rng(0)
  return feature_cache.FeatureSet(
      psi_inputs=rng.normal(size=(8, 16, 3 * c_dim)).astype(np.float32),
      graph_features=rng.normal(size=(8, 16, c_dim)).astype(np.float32),
      image_grids=rng.uniform(size=(8, 4, 4, 3)).astype(np.float32),
      image_index=np.arange(8, dtype=np.int32), view_index=np.zeros(8, np.int32), grid=(4, 4),
      names=tuple(f"im{i}" for i in range(8)), key="random")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step ψ (test preset, random ViT-S/14 recorded as its backbone) and the command's
  evaluation of the Pascal Context fixture with saved predictions."""
  from spectral_jax.neuralef import train as train_lib
  root = tmp_path_factory.mktemp("nefeval")
  raw = write_pascal_context(root / "data")
  config = configs.get_config("test")
  config.backbone.weights = "random"
  config.train.num_steps = 2
  config.checkpoint.every = 1
  train_lib.train(config, root / "run", _random_features(384))   # ViT-S: C = 384
  proc = run_command(EVAL, [f"--workdir={root / 'run'}", "--config.data.dataset=pascal_context",
                            f"--config.data.data_dir={root / 'data'}", *SMALL,
                            "--config.eval.save_predictions=True", "--config.eval.num_overlays=1",
                            f"--output_dir={root / 'eval'}"], timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, raw, proc


def _reduced(raw: np.ndarray) -> np.ndarray:
  """mmseg's PascalContextDataset59 reduction, by hand: 0 and 255 → ignored, k → k − 1."""
  raw = raw.astype(np.int64)
  return np.where((raw == 0) | (raw == 255), -1, raw - 1)


def _numpy_scores(labels, preds, num_classes, num_clusters, matching):
  conf = np.zeros((num_classes, num_clusters), np.int64)
  for label, pred in zip(labels, preds):
    keep = label >= 0
    np.add.at(conf, (label[keep], pred[keep]), 1)
  iou = conf / np.maximum(conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf, 1)
  if matching == "majority":
    lookup = iou.argmax(axis=0)
  else:
    lookup = np.full(num_clusters, -1)
    classes, clusters = scipy.optimize.linear_sum_assignment(iou, maximize=True)
    lookup[clusters] = classes
  hit = np.zeros(num_classes)
  gt, pr = conf.sum(1).astype(float), np.zeros(num_classes)
  for j in range(num_clusters):
    if lookup[j] >= 0:
      hit[lookup[j]] += conf[lookup[j], j]
      pr[lookup[j]] += conf[:, j].sum()
  union = gt + pr - hit
  present = union > 0
  return float(np.mean(hit[present] / union[present])), float(hit.sum() / conf.sum())


def test_command_metrics_equal_a_numpy_recomputation(run):
  root, raw, _ = run
  out = root / "eval"
  report = json.loads((out / "report.json").read_text())
  metrics = json.loads((out / "metrics.json").read_text())
  ids = ["2008_000001", "2008_000002"]                     # the fixture's val split
  assert report["dataset"]["images"] == ids and metrics["num_images"] == 2
  used = report["kmeans_fit"]["psi_clusters_used"]
  assert 1 <= used <= 8
  assert set(report["results"]) == {"psi"} | {f"{m}_{n}" for m in ("kmeans", "ours_star")
                                              for n in (8, 59, used)}
  labels = [_reduced(raw[i]) for i in ids]
  for method, r in report["results"].items():
    preds = [np.load(out / "predictions" / method / f"{i}.npy") for i in ids]
    assert all(p.shape == l.shape for p, l in zip(preds, labels))
    assert all(p.min() >= 0 and p.max() < r["clusters"] for p in preds)
    for matching in protocols.MATCHINGS:
      miou, acc = _numpy_scores(labels, preds, 59, r["clusters"], matching)
      assert r[matching]["miou"] == pytest.approx(miou, rel=1e-6), (method, matching)
      assert r[matching]["pixel_accuracy"] == pytest.approx(acc, rel=1e-6), (method, matching)
      assert metrics[method][matching] == {"miou": r[matching]["miou"],
                                           "pixel_accuracy": r[matching]["pixel_accuracy"]}
  assert report["kmeans_fit"]["split"] == "train"
  assert report["kmeans_fit"]["tokens"] == 64                 # one 112-px window, P = 14
  assert sorted(p.name for p in (out / "overlays").iterdir()) == ["2008_000001.png"]


def test_command_prints_the_table_beside_the_paper(run):
  _, _, proc = run
  out = proc.stdout
  assert "beside the paper" in out
  psi_row = next(line for line in out.splitlines() if line.startswith("NeuralEF ψ (argmax) (8)"))
  assert psi_row.split()[-3] == "38.8" and psi_row.split()[-1] == "70.4"
  assert any("K-means" in line and "28.9" in line for line in out.splitlines())
  assert any("Ours*" in line and "39.6" in line for line in out.splitlines())


def test_paper_table_holds_spec_numbers():
  assert ev.PAPER["pascal_context"]["psi"] == {"miou": 38.8, "pixel_accuracy": 70.4}
  assert ev.PAPER["cityscapes"]["psi"] == {"miou": 28.2, "pixel_accuracy": 83.4}
  assert ev.PAPER["ade20k"]["psi"] == {"miou": 21.6, "pixel_accuracy": 63.3}
  assert [ev.PAPER[d]["kmeans"]["miou"] for d in ("pascal_context", "cityscapes", "ade20k")] == [
      28.9, 22.4, 19.2]
  assert [ev.PAPER[d]["ours_star"]["miou"] for d in ("pascal_context", "cityscapes",
                                                     "ade20k")] == [39.6, 30.0, 23.6]


def test_reference_resize_by_hand():
  proto = ev.PROTOCOLS["pascal_context"]
  assert (proto.short_side, proto.window, proto.stride) == (520, 480, 320)
  # mmcv imrescale to (2080, 520): scale min(2080/500, 520/375); int(500 · 1.3867 + 0.5) = 693
  assert ev.reference_resize(np.zeros((375, 500, 3), np.uint8), proto).shape == (520, 693, 3)
  # a very wide image: the long side caps mmcv's scale at 4 × 520 / 3000 → (69, 2080); the
  # short side 69 < 480, so Segmenter then upsamples it to 480: (480, int(2080 / 69 · 480))
  assert ev.reference_resize(np.zeros((100, 3000, 3), np.uint8), proto).shape[:2] == (
      480, int(2080 / 69 * 480))
  small = ev.Protocol(112, 4, 128, 64, 59, "train")
  # (200, 300) → mmcv (112, 168) → short side 112 < window 128 → (128, int(1.5 · 128))
  assert ev.reference_resize(np.zeros((200, 300, 3), np.uint8), small).shape[:2] == (128, 192)


class _FakeModel:
  """Window scores that depend on the whole crop (its mean), so averaging over windows
  matters; records every crop it was given."""

  def __init__(self):
    self.crops = []

  def scores(self, crop, method):
    self.crops.append(crop.shape[:2])
    x = crop.astype(np.float32) / 255
    k = 3 if method == "psi" else 2
    return np.stack([x[..., c % 3] * (c + 1) - x.mean() * c for c in range(k)], -1)


def _segmenter_slide(fn, image, ws, stride):
  """Segmenter's sliding_window / merge_windows (anchors ``arange(0, H, stride)`` below
  H − ws, then H − ws), in NumPy."""
  h, w = image.shape[:2]
  hs = [a for a in range(0, h, stride) if a < h - ws] + [h - ws]
  wss = [a for a in range(0, w, stride) if a < w - ws] + [w - ws]
  total, count = None, np.zeros((h, w, 1))
  for a in hs:
    for b in wss:
      logits = fn(image[a:a + ws, b:b + ws])
      if total is None:
        total = np.zeros((h, w, logits.shape[-1]))
      total[a:a + ws, b:b + ws] += logits
      count[a:a + ws, b:b + ws] += 1
  return total / count


def test_predict_image_slides_windows_over_a_large_image(torch):
  rgb = np.random.default_rng(1).integers(0, 256, size=(60, 150, 3), dtype=np.uint8)
  proto = ev.Protocol(short_side=64, max_ratio=4, window=64, stride=40, num_classes=59,
                      train_split="train")
  model = _FakeModel()
  got = ev.predict_image(model, rgb, proto, ["psi"])["psi"]
  resized = ev.reference_resize(rgb, proto)
  assert resized.shape[:2] == (64, 160)
  assert model.crops == [(64, 64)] * 4              # x anchors 0, 40, 80, 96: every crop a window
  want = _segmenter_slide(lambda c: model.scores(c, "psi"), resized, 64, 40)
  up = torch.nn.functional.interpolate(torch.from_numpy(want).permute(2, 0, 1)[None].float(),
                                       size=rgb.shape[:2], mode="bilinear", align_corners=False)
  np.testing.assert_array_equal(got, up[0].argmax(0).numpy())


def test_check_dataset_refuses_another_label_set():
  class Source:
    name, num_classes = "voc12_semantic", 21
  with pytest.raises(ValueError, match="21 classes but the pascal_context benchmark has 59"):
    ev.check_dataset(Source(), "pascal_context")
  Source.num_classes = 19
  assert ev.check_dataset(Source(), "cityscapes") == 19


@pytest.mark.parametrize("args, fragment", [
    (["--config.data.dataset=voc07", "--config.data.data_dir={root}/data"],
     "data.dataset must be one of pascal_context, cityscapes, ade20k"),
    (["--config.data.dataset=pascal_context", "--config.data.data_dir={root}/nowhere"],
     "nowhere"),
    (["--config.data.dataset=pascal_context", "--config.data.data_dir={root}/data",
      "--config.data.split=bogus"], "no split 'bogus'"),
    (["--config.data.dataset=pascal_context"], "data_dir is required"),
    (["--config.data.dataset=pascal_context", "--config.data.data_dir={root}/data",
      "--config.psi.k=4"], "changes how ψ was trained"),
    (["--config.data.dataset=pascal_context", "--config.data.data_dir={root}/data",
      "--config.eval.limit=-1"], "eval.limit must be ≥ 0; got -1"),
], ids=["not-neuralef-dataset", "missing-data", "wrong-split", "no-data-dir", "training-field",
        "negative-limit"])
def test_bad_dataset_input_is_one_line(run, args, fragment):
  root = run[0]
  proc = run_command(EVAL, [f"--workdir={root / 'run'}", *[a.format(root=root) for a in args]])
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr[-2000:]
  assert sum(line.startswith("error: ") for line in lines) == 1
