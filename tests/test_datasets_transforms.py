"""Tests for spectral_jax.datasets.transforms against hand computations and closed forms
(colorsys for HSV, mmcv's rescale rule written out, bounds over many draws)."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from spectral_jax.datasets import transforms as T


def _photo(h=37, w=53, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rescale_size_is_mmcv_rule():
  # long side to 520 for a square scale; the short side rules for (2048, 512)
  assert T.rescale_size((375, 500), (520, 520)) == (int(375 * 520 / 500 + 0.5), 520)
  assert T.rescale_size((500, 375), (520, 520)) == (520, int(375 * 520 / 500 + 0.5))
  assert T.rescale_size((1024, 2048), (2048, 512)) == (512, 1024)
  assert T.rescale_size((100, 1000), (2048, 512)) == (205, 2048)  # long side caps at 2048


def test_random_resize_ratio_bounds_and_size():
  image = _photo(30, 40)
  ratios = []
  for seed in range(200):
    out, _, r = T.random_resize(image, np.random.default_rng(seed), scale=(60, 60),
                                ratio_range=(0.5, 2.0))
    ratios.append(r)
    want = T.rescale_size((30, 40), (int(60 * r), int(60 * r)))
    assert out.shape == (*want, 3)
    assert abs(out.shape[1] - int(60 * r)) <= 1  # the long side is r · scale
  ratios = np.asarray(ratios)
  assert ratios.min() >= 0.5 and ratios.max() < 2.0
  assert ratios.min() < 0.6 and ratios.max() > 1.9  # the whole range is drawn


def test_resize_labels_nearest_keeps_values():
  image, labels = _photo(20, 30), np.random.default_rng(1).integers(0, 5, (20, 30)).astype(np.uint8)
  labels[0] = 255
  out, lab, _ = T.random_resize(image, np.random.default_rng(0), labels, scale=(50, 50))
  assert lab.shape == out.shape[:2]
  assert set(np.unique(lab)) <= set(np.unique(labels))
  np.testing.assert_array_equal(out, np.asarray(Image.fromarray(image).resize(
      (out.shape[1], out.shape[0]), Image.BILINEAR)))


def test_random_crop_inside_image_and_small_images_whole():
  image = _photo(40, 50)
  seen = set()
  for seed in range(100):
    crop, _, (y0, x0) = T.random_crop(image, np.random.default_rng(seed), crop_size=16)
    assert 0 <= y0 <= 24 and 0 <= x0 <= 34
    np.testing.assert_array_equal(crop, image[y0:y0 + 16, x0:x0 + 16])
    seen.add((y0, x0))
  assert len(seen) > 50
  small, _, off = T.random_crop(_photo(10, 60), np.random.default_rng(0), crop_size=16)
  assert small.shape == (10, 16, 3) and off[0] == 0
  padded, _ = T.pad_to(small, 16)
  assert padded.shape == (16, 16, 3)
  np.testing.assert_array_equal(padded[:10], small)
  assert (padded[10:] == 0).all()


def test_cat_max_ratio_rejects_single_class_crops():
  """The kept window is the first of the (up to 10) drawn windows in which no class covers
  75% of the pixels (the last one if none qualifies)."""
  image = _photo(40, 40)
  labels = np.zeros((40, 40), np.uint8)
  labels[:, 30:] = 1   # only windows reaching x ≥ 30 hold two classes
  labels[:2] = 255     # ignored pixels do not count
  share = lambda y0, x0: (labels[y0:y0 + 16, x0:x0 + 16] == 1).sum() / (
      labels[y0:y0 + 16, x0:x0 + 16] != 255).sum()
  redrawn = 0
  for seed in range(40):
    _, lab, got = T.random_crop(image, np.random.default_rng(seed), labels, crop_size=16,
                                cat_max_ratio=0.75)
    replay = np.random.default_rng(seed)
    draws = [T.crop_offsets((40, 40), 16, replay) for _ in range(10)]
    good = [d for d in draws if 0.25 < share(*d) < 0.75]
    assert got == (good[0] if good else draws[-1]), seed
    np.testing.assert_array_equal(lab, labels[got[0]:got[0] + 16, got[1]:got[1] + 16])
    redrawn += got != draws[0]
  assert redrawn > 10  # the rule did act


def test_flip_twice_is_identity_and_probability():
  image, labels = _photo(), np.arange(37 * 53).reshape(37, 53).astype(np.uint8)
  once, lab, flipped = T.random_flip(image, np.random.default_rng(0), labels, prob=1.0)
  assert flipped
  np.testing.assert_array_equal(once, image[:, ::-1])
  np.testing.assert_array_equal(lab, labels[:, ::-1])
  twice, _, _ = T.random_flip(once, np.random.default_rng(0), prob=1.0)
  np.testing.assert_array_equal(twice, image)
  flips = [T.random_flip(image, np.random.default_rng(s))[2] for s in range(400)]
  assert 0.4 < np.mean(flips) < 0.6


def test_hsv_round_trip_matches_colorsys():
  rgb = np.random.default_rng(0).uniform(size=(200, 3))
  rgb[:3] = [[0.5, 0.5, 0.5], [0, 0, 0], [1, 0, 0]]   # grey, black, pure red
  hsv = T.rgb_to_hsv(rgb)
  want = np.asarray([colorsys.rgb_to_hsv(*p) for p in rgb])
  np.testing.assert_allclose(hsv, want, atol=1e-12)
  np.testing.assert_allclose(T.hsv_to_rgb(hsv), rgb, atol=1e-12)
  back = np.asarray([colorsys.hsv_to_rgb(*p) for p in hsv])
  np.testing.assert_allclose(T.hsv_to_rgb(hsv), back, atol=1e-12)


def test_saturation_and_hue_closed_forms():
  image = _photo(8, 8)
  # saturation 0: grey = V (max channel) everywhere
  grey = T.adjust_saturation(image, 0.0)
  np.testing.assert_array_equal(grey, np.repeat(image.max(-1, keepdims=True), 3, -1))
  # hue by 60 half-degree units... 120 half-degrees = 240° = 2/3 turn: R,G,B → G,B,R cycles
  pure = np.asarray([[[200, 10, 10]]], np.uint8)
  np.testing.assert_array_equal(T.adjust_hue(pure, 60), [[[10, 200, 10]]])   # 120°: red → green
  np.testing.assert_array_equal(T.adjust_hue(pure, 0), pure)
  h, s, v = colorsys.rgb_to_hsv(*(image[3, 4] / 255.0))
  want = np.round(np.asarray(colorsys.hsv_to_rgb((h + 7 / 180) % 1, s, v)) * 255)
  np.testing.assert_array_equal(T.adjust_hue(image, 7)[3, 4], want)


class _Scripted:
  """A generator that returns scripted coins and values (to force each branch)."""

  def __init__(self, coins, values):
    self.coins, self.values = list(coins), list(values)

  def integers(self, lo, hi=None):
    return self.coins.pop(0)

  def uniform(self, lo, hi):
    return self.values.pop(0)


def test_photometric_brightness_contrast_formulas():
  image = _photo(6, 7)
  # brightness +20 only (contrast last but its coin 0; no saturation, no hue)
  out, p = T.photometric_distortion(image, _Scripted([1, 0, 0, 0, 0], [20.0]))
  np.testing.assert_array_equal(out, np.clip(image.astype(np.int32) + 20, 0, 255))
  assert p == {"brightness": 20.0, "contrast": None, "contrast_first": False,
               "saturation": None, "hue": None}
  # contrast ×1.3 first: truncating uint8 of the clipped product
  out, p = T.photometric_distortion(image, _Scripted([0, 1, 1, 0, 0], [1.3]))
  np.testing.assert_array_equal(out, np.clip(image * np.float32(1.3), 0, 255).astype(np.uint8))
  assert p["contrast"] == 1.3 and p["contrast_first"]
  # brightness -10 then contrast ×0.5 last: (x − 10 clipped) · 0.5
  out, _ = T.photometric_distortion(image, _Scripted([1, 0, 0, 0, 1], [-10.0, 0.5]))
  step1 = np.clip(image.astype(np.float32) - 10, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(out, (step1 * np.float32(0.5)).astype(np.uint8))


def test_photometric_draws_within_ranges():
  image = _photo(6, 7)
  for seed in range(50):
    _, p = T.photometric_distortion(image, np.random.default_rng(seed))
    assert p["brightness"] is None or -32 <= p["brightness"] <= 32
    assert p["contrast"] is None or 0.5 <= p["contrast"] <= 1.5
    assert p["saturation"] is None or 0.5 <= p["saturation"] <= 1.5
    assert p["hue"] is None or -18 <= p["hue"] < 18


def test_train_augment_is_seeded_and_shaped():
  image, labels = _photo(60, 80), np.zeros((60, 80), np.uint8)
  aug = T.TrainAugment(crop_size=32, scale=(64, 64))
  a, pa = T.train_augment(image, np.random.default_rng(3), aug, labels)
  b, pb = T.train_augment(image, np.random.default_rng(3), aug, labels)
  c, _ = T.train_augment(image, np.random.default_rng(4), aug, labels)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and pa.shape == (8,)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(pa, pb)
  assert not np.array_equal(a, c)
  # without photometric changes the crop is a window of the resized (flipped) image
  plain = T.TrainAugment(crop_size=32, scale=(64, 64), photometric=False)
  crop, p = T.train_augment(image, np.random.default_rng(5), plain)
  resized = T.resize(image, T.rescale_size((60, 80), (int(64 * p[0]),) * 2))[0]
  y0, x0 = int(p[1]), int(p[2])
  window = resized[y0:y0 + 32, x0:x0 + 32]
  window = window[:, ::-1] if p[3] else window
  np.testing.assert_array_equal(crop[:window.shape[0], :window.shape[1]], window)
  np.testing.assert_array_equal(p[4:], [0, 1, 1, 0])  # the identity values
  # and those values are the identity: saturation ×1 and hue +0 leave a uint8 image as it is
  np.testing.assert_array_equal(T.adjust_saturation(image, 1.0), image)
  np.testing.assert_array_equal(T.adjust_hue(image, 0), image)
  with pytest.raises(ValueError, match="ratio_range"):
    T.TrainAugment(ratio_range=(2.0, 1.0))
  with pytest.raises(ValueError, match="uint8"):
    T.train_augment(image.astype(np.float32), np.random.default_rng(0))


def test_eval_resize_protocol():
  image = _photo(375 // 5, 500 // 5)
  out, _ = T.eval_resize(image, scale=(52, 52))
  assert out.shape[:2] == (39, 52)
  same, _ = T.eval_resize(np.zeros((52, 39, 3), np.uint8), scale=(52, 52))
  assert same.shape[:2] == (52, 39)
