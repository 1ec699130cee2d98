"""`python -m experiments.evaluate_dsm` end to end on format-true fixtures (tests/conftest.py),
with the 1-block random backbone; metrics.json is checked against NumPy recomputations from
boxes.json / the saved masks and the fixture's ground truth."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).absolute().parents[1]
TINY = ["--config=experiments/configs/evaluate_dsm.py:test",
        "--config.backbone.overrides=depth=1,width=64,num_heads=2,mlp_dim=128",
        "--config.image_size=112", "--config.dsm.num_eigenvectors=6"]


def _run(args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "experiments.evaluate_dsm", *TINY, *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                        check=False)


def _run_ok(out, args):
  """Runs the command with ``--out=out`` and ``args``, asserts success; returns
  ``(metrics.json, the finished process)``."""
  done = _run([f"--out={out}", *args])
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((out / "metrics.json").read_text()), done


def _np_box_iou(a, b):
  a, b = np.asarray(a, float), np.asarray(b, float)
  w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
  h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
  inter = w * h
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def voc_run(voc_tree, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval_voc") / "out"
  done = _run(["--dataset=voc07", f"--data_dir={voc_tree[0]}", f"--out={out}"])
  assert done.returncode == 0, done.stderr[-3000:]
  return out, voc_tree[1], done


def test_voc_corloc_matches_numpy_from_boxes_json(voc_run):
  out, truth, _ = voc_run
  m = json.loads((out / "metrics.json").read_text())
  boxes = json.loads((out / "boxes.json").read_text())
  assert sorted(boxes) == sorted(truth) and m["num_images"] == 3 and m["num_failed"] == 0
  hits = 0
  for image_id, box in boxes.items():
    gt = truth[image_id]["boxes"]
    assert len(box) == 4 and box[0] < box[2] and box[1] < box[3]
    if len(gt):
      assert box[2] <= 500 and box[3] <= 375          # inside the 500 × 375 photo
      hits += bool(np.any(_np_box_iou(box, gt) >= 0.5))
  assert m["corloc"] == pytest.approx(hits / 3) and m["num_hits"] == hits
  # one DSM box per image: it can find at most one object, so recall = hits / all boxes
  assert m["object_recall"]["num_gt"] == sum(len(t["boxes"]) for t in truth.values()) == 38
  assert m["object_recall"]["num_matched"] == hits
  assert m["object_recall"]["recall"] == pytest.approx(hits / 38)
  objects = json.loads((out / "objects.json").read_text())   # reference DSM: one object each
  assert {k: v[0] for k, v in objects.items()} == boxes and all(len(v) == 1 for v in objects.values())
  assert 0.0 <= m["ap50"] <= 1.0
  assert m["dataset"] == "voc07" and m["split"] == "trainval"


def test_voc_report_prints_measured_beside_paper(voc_run):
  out, _, done = voc_run
  m = json.loads((out / "metrics.json").read_text())
  line = next(l for l in done.stdout.splitlines() if l.startswith("CorLoc"))
  assert line.split()[-2:] == [f"{100 * m['corloc']:.1f}", "62.7"]


def test_ecssd_scores_match_numpy_from_saved_masks(ecssd_tree, tmp_path):
  base, truth = ecssd_tree
  out = tmp_path / "out"
  m, _ = _run_ok(out, ["--dataset=ecssd", f"--data_dir={base}",
                       "--config.save_masks=True"])
  ious, accs, fs = [], [], []
  for image_id, t in truth.items():
    p = np.asarray(Image.open(out / "masks" / f"{image_id}.png")) > 0
    assert p.shape == t.shape
    inter, union = (p & t).sum(), (p | t).sum()
    ious.append(inter / union if union else 0.0)
    accs.append((p == t).mean())
    prec = inter / p.sum() if p.sum() else 1.0
    rec = inter / t.sum() if t.sum() else 1.0
    fs.append(1.3 * prec * rec / (0.3 * prec + rec) if prec + rec else 0.0)
  assert m["num_images"] == 3
  np.testing.assert_allclose([m["iou"], m["accuracy"], m["max_f_beta"]],
                             [np.mean(ious), np.mean(accs), np.mean(fs)], rtol=1e-6)
  assert set(json.loads((out / "boxes.json").read_text())) == set(truth)


def test_limit_and_refused_out(voc_run, voc_tree, tmp_path):
  out = tmp_path / "out"              # a copy: voc_run's outputs stay for the other tests
  shutil.copytree(voc_run[0], out)
  again = _run(["--dataset=voc07", f"--data_dir={voc_tree[0]}", f"--out={out}"])
  assert again.returncode == 2 and "already holds files" in again.stderr
  assert len(again.stderr.strip().splitlines()) == 1
  one = _run(["--dataset=voc07", f"--data_dir={voc_tree[0]}", f"--out={out}", "--overwrite",
              "--limit=1"])
  assert one.returncode == 0, one.stderr[-2000:]
  assert json.loads((out / "metrics.json").read_text())["num_images"] == 1


def test_prepared_copy_gives_the_same_metrics_boxes_and_per_image(voc_run, voc_tree, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from spectral_jax import datasets  # pylint: disable=import-outside-toplevel
  files_out = voc_run[0]
  tfds_dir = tmp_path / "tfds"
  datasets.prepare("voc07", voc_tree[0], tfds_dir=tfds_dir, progress=False)
  out = tmp_path / "out"
  done = _run(["--dataset=voc07", f"--config.tfds_dir={tfds_dir}", f"--out={out}"])
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ("boxes.json", "per_image.json"):
    assert json.loads((out / name).read_text()) == json.loads((files_out / name).read_text())
  drop = lambda m: {k: v for k, v in m.items() if k not in ("config", "wall_s")}
  got, want = (json.loads((o / "metrics.json").read_text()) for o in (out, files_out))
  assert drop(got) == drop(want) and got["config"]["tfds_dir"] == str(tfds_dir)


@pytest.mark.parametrize("args,code,text", [
    (["--dataset=voc2007"], 2, "--dataset must be one of voc07, voc12"),
    (["--dataset=cub"], 1, "segmentations.tgz"),
    (["--dataset=ecssd", "--config.tfds_dir=/nonexistent/tfds"], 1,
     "tfds_dir '/nonexistent/tfds' does not exist"),
])
def test_bad_dataset_and_missing_data_are_one_line_errors(tmp_path, args, code, text):
  out = tmp_path / "out"
  done = _run([*args, f"--data_dir={tmp_path}", f"--out={out}"])
  assert done.returncode == code and text in done.stderr
  assert done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
  assert not out.exists()        # nothing created when the data is missing


def test_reading_and_evaluating_never_imports_tensorflow(voc_tree, ecssd_tree, tmp_path):
  """Training and evaluation must stay TensorFlow-free (tfds may be installed beside): the file
  readers import neither TensorFlow nor tfds; preparing with the tfds builders, reading the
  prepared ArrayRecord, iterating it with grain and evaluating it import no TensorFlow."""
  code = f"""
import importlib.util, sys
from spectral_jax import backbones, datasets, dsm
voc = datasets.load("voc12", {str(voc_tree[0])!r})
[voc[i] for i in range(len(voc))]
list(datasets.iterate(voc, shuffle=True, shard_index=0, shard_count=1))
ds = datasets.load("ecssd", {str(ecssd_tree[0])!r})
bb = backbones.init_backbone(backbones.get_config("dinov2_vits14", depth=1, width=64,
                                                  num_heads=2, mlp_dim=128))
seg = dsm.make_pipeline(bb, dsm.PipelineConfig(num_eigenvectors=6, num_segments=3))
r = dsm.evaluate_dsm(seg, ds, kind="mask", image_size=56, batch_size=2, progress=False)
assert r.metrics["num_images"] == 3, r.metrics
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
print("imported by the file readers:", bad)
if not bad and importlib.util.find_spec("tensorflow_datasets"):
  out = {str(tmp_path / "tfds")!r}
  datasets.prepare("voc12", {str(voc_tree[0])!r}, tfds_dir=out, progress=False)
  datasets.prepare("ecssd", {str(ecssd_tree[0])!r}, tfds_dir=out, progress=False)
  prepared = datasets.load("voc12", tfds_dir=out)
  [prepared[i] for i in range(len(prepared))]
  list(datasets.iterate(prepared, shuffle=True, shard_index=0, shard_count=1))
  r2 = dsm.evaluate_dsm(seg, datasets.load("ecssd", tfds_dir=out), kind="mask",
                        image_size=56, batch_size=2, progress=False)
  assert r2.metrics == r.metrics, (r2.metrics, r.metrics)
  assert "tensorflow_datasets" in sys.modules
  bad = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
  print("imported by the prepared path:", bad)
sys.exit(1 if bad else 0)
"""
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout[-500:] + done.stderr[-2000:]


def _semantic_tree(voc_tree, base):
  """A copy of the VOC2012 fixture whose val split has two images with class masks: the VOC
  photo and its mirror (greyscale JPEG; its class mask mirrored)."""
  import shutil  # pylint: disable=import-outside-toplevel
  src = pathlib.Path(voc_tree[0]) / "VOCdevkit" / "VOC2012"
  root = base / "VOCdevkit" / "VOC2012"
  shutil.copytree(src, root)
  i0, i1 = sorted(voc_tree[1])[:2]
  with Image.open(root / "SegmentationClass" / f"{i0}.png") as img:
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.save(root / "SegmentationClass" / f"{i1}.png")
  (root / "ImageSets/Segmentation/val.txt").write_text(f"{i0}\n{i1}\n")
  return {i: np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png")) for i in (i0, i1)}


def _brute_force_semantic(preds, truths, num_classes=21, ignore=255):
  """mIoU (absent classes 0) and pixel accuracy of the best one-to-one label → class map,
  found by trying every injective map (few labels)."""
  import itertools  # pylint: disable=import-outside-toplevel
  labels = 1 + max(int(p.max()) for p in preds)
  conf = np.zeros((num_classes, labels), np.int64)
  for p, t in zip(preds, truths):
    for c in range(num_classes):
      for j in range(labels):
        conf[c, j] += np.sum((t == c) & (p == j))
  assert conf.sum() == sum(np.sum(t != ignore) for t in truths)
  best = None
  for classes in itertools.permutations(range(num_classes), labels):
    ious, hits = [], 0
    for j, c in enumerate(classes):
      tp = conf[c, j]
      union = conf[c].sum() + conf[:, j].sum() - tp
      ious.append(tp / union if union else 0.0)
      hits += tp
    if best is None or sum(ious) > best[0] + 1e-12:
      best = (sum(ious), hits)
  return best[0] / num_classes, best[1] / conf.sum()


def test_voc12_semantic_miou_matches_brute_force_from_written_maps(voc_tree, tmp_path):
  truth = _semantic_tree(voc_tree, tmp_path / "data")
  out = tmp_path / "out"
  m, done = _run_ok(out, ["--dataset=voc12_semantic", f"--data_dir={tmp_path / 'data'}",
                          "--config.save_masks=True"])
  preds = [np.asarray(Image.open(out / "masks" / f"{i}.png")) for i in truth]
  assert [p.shape for p in preds] == [t.shape for t in truth.values()]
  assert max(int(p.max()) for p in preds) <= m["num_clusters"]    # 0 = background, c + 1
  miou, acc = _brute_force_semantic(preds, list(truth.values()))
  assert m["num_images"] == 2 and m["matching"] == "hungarian"
  np.testing.assert_allclose([m["miou"], m["pixel_accuracy"]], [miou, acc], rtol=1e-6)  # f32
  assert list(m["per_class_iou"])[:2] == ["background", "aeroplane"]
  assert len(m["per_class_iou"]) == 21
  assert np.mean([v or 0.0 for v in m["per_class_iou"].values()]) == pytest.approx(miou)
  line = next(l for l in done.stdout.splitlines() if l.startswith("mIoU"))
  assert line.split()[-2:] == [f"{100 * m['miou']:.1f}", "30.8"]


def test_semantic_alias_and_too_many_clusters_are_refused_before_work(voc_tree, tmp_path):
  """voc12_seg is accepted (alias); 25 clusters + background cannot match VOC's 21 classes
  one-to-one: one line, exit 2, nothing written (majority matching would accept them)."""
  _semantic_tree(voc_tree, tmp_path / "data")
  out = tmp_path / "out"
  done = _run(["--dataset=voc12_seg", f"--data_dir={tmp_path / 'data'}", f"--out={out}",
               "--config.semantic.num_clusters=25"])
  assert done.returncode == 2, done.stderr[-2000:]
  assert "26 labels cannot map one-to-one onto voc12's 21 classes" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_voc_multi_object_recall_and_ap50_from_objects_json(voc_tree, tmp_path):
  """--config.dsm.discovery=multi_region: every discovered box counts for recall and AP50,
  recomputed here from objects.json with test_protocols' NumPy references (difficult boxes
  ignored for AP, as VOC does)."""
  from test_protocols import _np_ap50, _np_object_recall  # pylint: disable=import-outside-toplevel
  base, truth = voc_tree
  out = tmp_path / "out"
  m, done = _run_ok(out, ["--dataset=voc07", f"--data_dir={base}",
                          "--config.dsm.discovery=multi_region"])
  objects = json.loads((out / "objects.json").read_text())
  boxes = json.loads((out / "boxes.json").read_text())
  assert {k: v[0] for k, v in objects.items()} == boxes   # the best object is "the" box
  ids = sorted(truth)
  preds = [np.asarray(objects[i], float).reshape(-1, 4) for i in ids]
  gts = [np.asarray(truth[i]["boxes"], float).reshape(-1, 4) for i in ids]
  matched, total = _np_object_recall(preds, gts)
  assert (m["object_recall"]["num_matched"], m["object_recall"]["num_gt"]) == (matched, total)
  ranks = [np.arange(len(p), 0, -1, dtype=float) for p in preds]
  ignore = [np.asarray(truth[i]["difficult"], bool) for i in ids]
  assert m["ap50"] == pytest.approx(_np_ap50(preds, ranks, gts, ignore), abs=1e-6)
  assert "AP50" in done.stdout


def test_ecssd_with_the_bilateral_solver_scores_its_refined_masks(ecssd_tree, tmp_path):
  """--config.bilateral.enabled: the saved masks are the solver's output > 0.5 and IoU /
  accuracy are theirs; box datasets refuse the option in one line."""
  base, truth = ecssd_tree
  out = tmp_path / "out"
  m, done = _run_ok(out, ["--dataset=ecssd", f"--data_dir={base}",
                          "--config.save_masks=True", "--config.bilateral.enabled=True"])
  ious, accs = [], []
  for image_id, t in truth.items():
    p = np.asarray(Image.open(out / "masks" / f"{image_id}.png")) > 0
    ious.append((p & t).sum() / max((p | t).sum(), 1))
    accs.append((p == t).mean())
  np.testing.assert_allclose([m["iou"], m["accuracy"]], [np.mean(ious), np.mean(accs)],
                             rtol=1e-6)
  assert m["config"]["bilateral"]["enabled"] and 0 <= m["max_f_beta"] <= 1
  done = _run(["--dataset=voc07", f"--data_dir={base}", f"--out={tmp_path / 'voc'}",
               "--config.bilateral.enabled=True"])
  assert done.returncode == 2 and "single-object masks" in done.stderr
  assert "Traceback" not in done.stderr
