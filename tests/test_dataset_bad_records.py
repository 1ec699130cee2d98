"""A bad record in a benchmark is skipped with its id and the reason, never aborting the run
(issue 23): VOC ``<xmax>inf</xmax>``; COCO ``"bbox": null``, ``Infinity``, a category id of
10¹², an ``images`` entry of the wrong type; a truncated ECSSD mask. evaluate_dsm goes on with
the good records and counts the skipped ones in metrics.json (``"skipped_records"``)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import VOC_IDS
from spectral_jax.datasets import coco, voc
from test_datasets_coco import _write_coco

ROOT = pathlib.Path(__file__).absolute().parents[1]
TINY = ["--config=experiments/configs/evaluate_dsm.py:test",
        "--config.backbone.overrides=depth=1,width=64,num_heads=2,mlp_dim=128",
        "--config.image_size=112", "--config.dsm.num_eigenvectors=6"]


def _evaluate(args, out):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  done = subprocess.run([sys.executable, "-m", "experiments.evaluate_dsm", *TINY, *args,
                         f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  return json.loads((out / "metrics.json").read_text()), done


def test_voc_box_of_inf_skips_that_record(voc_tree, tmp_path):
  data = tmp_path / "voc"
  shutil.copytree(voc_tree[0] / "VOCdevkit" / "VOC2007", data / "VOCdevkit" / "VOC2007")
  xml = data / "VOCdevkit" / "VOC2007" / "Annotations" / f"{VOC_IDS[1]}.xml"
  text = xml.read_text()
  start = text.index("<xmax>") + len("<xmax>")
  xml.write_text(text[:start] + "inf" + text[text.index("</xmax>", start):])
  with pytest.raises(ValueError, match=r"<xmax>inf</xmax> in <bndbox> is not a finite"):
    voc.parse_annotation(xml)
  metrics, done = _evaluate(["--dataset=voc07", f"--data_dir={data}"], tmp_path / "out")
  assert metrics["num_images"] == 2 and metrics["skipped_records"] == 1
  assert list(metrics["failures"]) == [VOC_IDS[1]]
  assert "<xmax>inf</xmax>" in metrics["failures"][VOC_IDS[1]]
  assert f"skipping {VOC_IDS[1]}: " in done.stderr
  boxes = json.loads((tmp_path / "out" / "boxes.json").read_text())
  assert sorted(boxes) == sorted([VOC_IDS[0], VOC_IDS[2]])


def test_truncated_ecssd_mask_skips_that_record_naming_the_file(ecssd_tree, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(ecssd_tree[0] / "ECSSD", data / "ECSSD")
  mask = data / "ECSSD" / "ground_truth_mask" / "0002.png"
  mask.write_bytes(mask.read_bytes()[:200])
  metrics, _ = _evaluate(["--dataset=ecssd", f"--data_dir={data}"], tmp_path / "out")
  assert metrics["num_images"] == 2 and metrics["skipped_records"] == 1
  assert list(metrics["failures"]) == ["0002"]
  assert f"cannot read the mask {str(mask)!r}" in metrics["failures"]["0002"]


def test_coco_malformed_entries_skip_their_records(tmp_path):
  """id 25 gets an annotation with "bbox": null, id 30 one with an Infinity width (the json
  module reads the bare word), a copy of the coffee image as id 31 one with a category id of
  10¹², and the images list holds a string and an entry without an id; id 9 stays good."""
  _write_coco(tmp_path)
  path = tmp_path / "annotations" / "instances_train2014.json"
  data = json.loads(path.read_text())
  coffee = next(im for im in data["images"] if im["id"] == 30)
  data["images"].append(dict(coffee, id=31))
  data["images"] += ["not an entry", {"file_name": "x.jpg"}]
  base = {"iscrowd": 0, "segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]], "area": 1.0}
  data["annotations"] += [
      dict(base, id=900, image_id=25, category_id=1, bbox=None),
      dict(base, id=901, image_id=30, category_id=1, bbox=[1.0, 1.0, float("inf"), 4.0]),
      dict(base, id=902, image_id=31, category_id=10**12, bbox=[1.0, 1.0, 4.0, 4.0])]
  text = json.dumps(data)
  assert "Infinity" in text
  path.write_text(text)
  (tmp_path / "coco_20k_filenames.txt").write_text("9\n25\n30\n31\n")
  ds = coco.COCO20k(tmp_path)
  assert sorted(ds.skipped) == ["images[4]", "images[5]"]
  with pytest.raises(ValueError, match="'category_id' must be an integer in 1..254; got "
                                       "1000000000000"):
    ds.read("31")
  metrics, done = _evaluate(["--dataset=coco20k", f"--data_dir={tmp_path}"], tmp_path / "out")
  assert metrics["num_images"] == 1 and metrics["skipped_records"] == 5
  failures = metrics["failures"]
  assert sorted(failures) == ["25", "30", "31", "images[4]", "images[5]"]
  assert "annotation 900: 'bbox' must be [x, y, w, h]" in failures["25"] and "None" in failures["25"]
  assert "annotation 901: 'bbox'" in failures["30"] and "inf" in failures["30"]
  assert "'category_id' must be an integer in 1..254" in failures["31"]
  assert "not an entry with an integer 'id'" in failures["images[4]"]
  assert "Infinity" not in (tmp_path / "out" / "metrics.json").read_text()


def test_coco_images_not_a_list_is_one_clear_error(tmp_path):
  _write_coco(tmp_path)
  path = tmp_path / "annotations" / "instances_train2014.json"
  data = json.loads(path.read_text())
  data["images"] = {"9": data["images"][0]}
  path.write_text(json.dumps(data))
  (tmp_path / "coco_20k_filenames.txt").write_text("9\n")
  with pytest.raises(ValueError, match="'images' must be a list of entries; got dict"):
    coco.COCO20k(tmp_path)


def _coco_with(tmp_path, **annotation):
  """The COCO fixture with one more annotation on image 25 (``annotation`` over a good one)."""
  _write_coco(tmp_path)
  path = tmp_path / "annotations" / "instances_train2014.json"
  data = json.loads(path.read_text())
  good = {"id": 950, "image_id": 25, "iscrowd": 0, "category_id": 1, "area": 1.0,
          "bbox": [1.0, 1.0, 4.0, 4.0], "segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]]}
  data["annotations"].append(dict(good, **annotation))
  path.write_text(json.dumps(data))
  (tmp_path / "coco_20k_filenames.txt").write_text("9\n25\n")
  return coco.COCO20k(tmp_path)


def test_coco_category_300_fails_that_record_with_the_reason(tmp_path):
  """A category id past the uint8 class map's 1..254 (255 = ignore) would wrap; the record
  is refused naming the annotation (evaluate_dsm skips it, as the 10¹² case above)."""
  ds = _coco_with(tmp_path, category_id=300)
  with pytest.raises(ValueError, match="COCO 25 annotation 950: 'category_id' must be an "
                                       "integer in 1..254; got 300"):
    ds.read("25")
  assert ds.read("9").labels.tolist()   # the other record reads


def test_coco_nan_polygon_fails_that_record_with_the_reason(tmp_path):
  pytest.importorskip("pycocotools")
  ds = _coco_with(tmp_path, segmentation=[[1.0, float("nan"), 20.0, 1.0, 20.0, 20.0]])
  with pytest.raises(ValueError, match=r"COCO 25 annotation 950: a 'segmentation' polygon must "
                                       r"be a list of finite numbers; got \[1.0, nan"):
    ds.read("25")
  assert ds.read("9").instance_masks.any()
