"""Tests for spectral_jax.datasets.images: format conversions and clear errors."""

import numpy as np
import pytest
from PIL import Image

from spectral_jax.datasets import images


def _save(tmp_path, name, img, **kw):
  path = tmp_path / name
  img.save(path, **kw)
  return path


def test_rgb_roundtrip(tmp_path, rng):
  rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
  path = _save(tmp_path, "a.png", Image.fromarray(rgb))
  np.testing.assert_array_equal(images.read_image(path), rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path, rng):
  g = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
  out = images.read_image(_save(tmp_path, "g.png", Image.fromarray(g, mode="L")))
  assert out.shape == (5, 6, 3) and out.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], g)


def test_16bit_is_rescaled(tmp_path):
  g16 = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
  out = images.read_image(_save(tmp_path, "g16.png", Image.fromarray(g16)))
  np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 1]])


def test_rgba_composited_over_white(tmp_path):
  rgba = np.zeros((2, 2, 4), dtype=np.uint8)
  rgba[0, 0] = (255, 0, 0, 255)   # opaque red stays red
  rgba[0, 1] = (0, 0, 0, 0)       # transparent becomes white
  out = images.read_image(_save(tmp_path, "a.png", Image.fromarray(rgba, mode="RGBA")))
  np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(out[0, 1], (255, 255, 255))


def test_exif_orientation_applied(tmp_path):
  rgb = np.zeros((4, 6, 3), dtype=np.uint8)
  img = Image.fromarray(rgb)
  exif = img.getexif()
  exif[0x0112] = 6  # rotate 90° clockwise on display
  path = _save(tmp_path, "r.jpg", img, exif=exif)
  assert images.read_image(path).shape == (6, 4, 3)


def test_float_image_with_nan_is_refused(tmp_path):
  a = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
  a[3, 4] = np.nan
  Image.fromarray(a, mode="F").save(tmp_path / "nan.tiff")
  with pytest.raises(images.ImageReadError, match="1 NaN/Inf pixel values"):
    images.read_image(tmp_path / "nan.tiff")
  a[3, 4] = 0.5
  Image.fromarray(a, mode="F").save(tmp_path / "ok.tiff")
  assert images.read_image(tmp_path / "ok.tiff").shape == (12, 10, 3)


def test_missing_and_corrupt_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.png"):
    images.read_image(tmp_path / "nope.png")
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"definitely not a jpeg")
  with pytest.raises(images.ImageReadError, match="bad.jpg"):
    images.read_image(bad)


def test_list_images_filters_by_suffix(tmp_path):
  for name in ("b.JPG", "a.png", "notes.txt", "c.tiff"):
    (tmp_path / name).write_bytes(b"x")
  assert [p.name for p in images.list_images(tmp_path)] == ["a.png", "b.JPG", "c.tiff"]
  with pytest.raises(FileNotFoundError, match="not a directory"):
    images.list_images(tmp_path / "missing")


def test_square_photos_are_centre_crops_of_the_bundled_photos():
  from spectral_jax.datasets import samples  # pylint: disable=import-outside-toplevel
  photos = list(samples.bundled_photos().values())
  batch = samples.square_photos(32, len(photos) + 1)
  assert batch.shape == (len(photos) + 1, 32, 32, 3) and batch.dtype == np.float32
  assert 0.0 <= batch.min() and batch.max() <= 1.0
  np.testing.assert_array_equal(batch[-1], batch[0])  # cycled
  # VOC (500×375): shorter side to 32 → 43×32, then the centre 32 columns.
  voc = Image.fromarray(photos[0]).resize((43, 32), Image.BILINEAR)
  np.testing.assert_array_equal(batch[0], np.asarray(voc, np.float32)[:, 5:37] / 255.0)
  with pytest.raises(ValueError, match="size and count"):
    samples.square_photos(0, 1)
