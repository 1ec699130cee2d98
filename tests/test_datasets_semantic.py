"""spectral_jax.datasets.semantic on format-true miniatures (tests/conftest.py write_*)."""

import numpy as np
import pytest
from PIL import Image

from conftest import write_ade20k, write_cityscapes, write_pascal_context
from spectral_jax import datasets
from spectral_jax.datasets import semantic


def _zero_ignored(raw):
  """Independent reduction: 0 and 255 → 255, k → k − 1 (pixel by pixel)."""
  out = np.full(raw.shape, 255, np.uint8)
  keep = (raw != 0) & (raw != 255)
  out[keep] = raw[keep] - 1
  return out


@pytest.fixture(scope="module")
def context_tree(tmp_path_factory):
  base = tmp_path_factory.mktemp("context")
  return base, write_pascal_context(base)


def test_pascal_context_reduces_labels_as_mmseg_context59(context_tree):
  base, raw = context_tree
  ds = datasets.load("pascal_context", base)
  assert ds.ids == ["2008_000001", "2008_000002"] and datasets.kind("pascal_context") == "semantic"
  for rec in ds:
    expected = _zero_ignored(raw[rec.id])
    np.testing.assert_array_equal(rec.class_mask, expected)
    assert rec.image.shape == expected.shape + (3,) and rec.image.dtype == np.uint8
  first, second = ds[0], ds[1]
  assert (first.class_mask == 255).sum() > (raw["2008_000001"] == 0).sum()  # void border too
  assert (second.class_mask[:10] == 58).all()                              # class 59 → 58
  assert np.array_equal(second.image[..., 0], second.image[..., 1])        # greyscale JPEG
  train = datasets.load("pascal_context", base / "VOCdevkit", split="train")
  assert train.ids == ["2008_000003"] and (train[0].class_mask == 255).all()


def test_pascal_context_missing_and_bad_split(tmp_path, context_tree):
  with pytest.raises(datasets.MissingDataError, match="SegmentationClassContext"):
    datasets.load("pascal_context", tmp_path)
  with pytest.raises(datasets.MissingDataError, match=r"split 'test'.*\['train', 'val'\]"):
    datasets.load("pascal_context", context_tree[0], split="test")


def test_pascal_context_label_out_of_range_is_refused(tmp_path):
  write_pascal_context(tmp_path)
  png = tmp_path / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000001.png"
  a = np.asarray(Image.open(png)).copy()
  a[0, 0] = 60
  Image.fromarray(a, mode="L").save(png)
  with pytest.raises(ValueError, match="outside pascal_context's 59 classes"):
    datasets.load("pascal_context", tmp_path)[0]


@pytest.fixture(scope="module")
def cityscapes_tree(tmp_path_factory):
  base = tmp_path_factory.mktemp("cityscapes")
  return base, write_cityscapes(base)


def test_cityscapes_27_classes_are_label_ids_7_to_33(cityscapes_tree):
  base, raw = cityscapes_tree
  for folder in (base, base / "cityscapes"):
    ds = datasets.load("cityscapes", folder)
    assert ds.ids == sorted(raw)
  for rec in ds:
    r = raw[rec.id].astype(int)
    expected = np.where((r >= 7) & (r <= 33), r - 7, 255)
    np.testing.assert_array_equal(rec.class_mask, expected)
    assert rec.image.shape == r.shape + (3,)
  coffee = ds[1].class_mask
  assert set(np.unique(coffee)) == set(range(27)) | {255}


def test_cityscapes_trainid_mapping_is_the_official_19(cityscapes_tree):
  base, raw = cityscapes_tree
  official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
              24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  ds = semantic.Cityscapes(base, "val", mapping="trainid")
  rec = ds[1]
  r = raw[rec.id]
  expected = np.full(r.shape, 255, np.uint8)
  for label_id, train_id in official.items():
    expected[r == label_id] = train_id
  np.testing.assert_array_equal(rec.class_mask, expected)
  with pytest.raises(ValueError, match="mapping must be one of"):
    semantic.Cityscapes(base, "val", mapping="coarse")


def test_cityscapes_missing_labels_name_the_file(tmp_path):
  write_cityscapes(tmp_path)
  (tmp_path / "cityscapes/gtFine/val/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
  with pytest.raises(datasets.MissingDataError, match=r"1 of 2.*bochum_000000_000313_gtFine"):
    datasets.load("cityscapes", tmp_path)
  with pytest.raises(datasets.MissingDataError, match="leftImg8bit_trainvaltest.zip"):
    datasets.load("cityscapes", tmp_path, split="test")


def test_ade20k_150_classes_zero_ignored_odd_size_and_greyscale(tmp_path):
  raw = write_ade20k(tmp_path)
  ds = datasets.load("ade20k", tmp_path)
  assert ds.split == "validation" and ds.ids == sorted(raw)
  assert datasets.load("ade20k", tmp_path / "ADEChallengeData2016", split="val").ids == ds.ids
  for rec in ds:
    np.testing.assert_array_equal(rec.class_mask, _zero_ignored(raw[rec.id]))
  first, second = ds[0], ds[1]
  assert first.image.shape == (373, 499, 3) and (first.class_mask[-7:] == 149).all()
  assert (second.class_mask == 255).all()
  assert np.array_equal(second.image[..., 0], second.image[..., 2])
  with pytest.raises(datasets.MissingDataError, match="ADEChallengeData2016.zip"):
    datasets.load("ade20k", tmp_path, split="training")
