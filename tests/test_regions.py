"""Mask geometry against scipy.ndimage / scikit-image and hand-made cases."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.morphology

from spectral_jax import regions, testing

# One random-mask batch shape for every test: each shape is a new XLA compile.
SHAPE = (6, 30, 40)


def _structure(connectivity):
  return ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def _rank(labels):
  """Our labels (−1 background, raster index of the first pixel) → scipy's 0, 1, 2, …"""
  _, inv = np.unique(labels, return_inverse=True)
  ranked = inv.reshape(labels.shape)
  return ranked if (labels < 0).any() else ranked + 1


@pytest.fixture(scope="module")
def random_masks():
  rng = np.random.default_rng(0)
  density = np.array([0.2, 0.45, 0.55, 0.6, 0.75, 0.0])[:, None, None]
  return rng.random(SHAPE) < density  # item 5 is empty


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_components_matches_scipy(random_masks, connectivity):
  labels = np.asarray(regions.label_components(random_masks, connectivity))
  for mask, lab in zip(random_masks, labels):
    ref, _ = ndi.label(mask, _structure(connectivity))
    np.testing.assert_array_equal(_rank(lab), ref)


@pytest.fixture(scope="module")
def photo_masks(voc_photo):
  """Thresholded colour channels of the VOC photo: large, ragged, hundreds of components."""
  rgb = voc_photo.rgb
  return np.stack([rgb[..., 0] > 120, rgb[..., 1] > 100, rgb[..., 2] > 140])


def test_label_components_on_photo_masks(photo_masks):
  labels = np.asarray(regions.label_components(photo_masks))
  for mask, lab in zip(photo_masks, labels):
    ref, num = ndi.label(mask)
    assert num > 100
    np.testing.assert_array_equal(_rank(lab), ref)


def test_largest_component_matches_scipy(random_masks, photo_masks):
  got = np.asarray(regions.largest_component(random_masks))
  for mask, g in zip(random_masks, got):
    np.testing.assert_array_equal(g, testing.largest_component_np(mask))
  assert not got[5].any()  # empty in, empty out
  got = np.asarray(regions.largest_component(photo_masks))
  for mask, g in zip(photo_masks, got):
    np.testing.assert_array_equal(g, testing.largest_component_np(mask))


def _in_batch(*small):
  """Embeds small hand-made masks in a SHAPE batch (top-left corners), reusing the compile."""
  out = np.zeros(SHAPE, bool)
  for i, m in enumerate(small):
    out[i, :m.shape[0], :m.shape[1]] = m
  return out


def test_largest_component_tie_goes_to_first_in_raster_order():
  mask = np.zeros((5, 6), bool)
  mask[3:5, 0:2] = True  # 4 pixels, starts at raster row 3
  mask[0:2, 4:6] = True  # 4 pixels, starts at raster row 0: first
  got = np.asarray(regions.largest_component(_in_batch(mask)))[0, :5, :6]
  want = np.zeros_like(mask)
  want[0:2, 4:6] = True
  np.testing.assert_array_equal(got, want)


def test_diagonal_touch_is_one_component_only_with_8_connectivity():
  mask = _in_batch(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool))
  four = np.asarray(regions.largest_component(mask))[0]
  eight = np.asarray(regions.largest_component(mask, connectivity=8))[0]
  assert four.sum() == 4 and eight.sum() == 5


def test_mask_to_box_by_hand():
  mask = np.zeros((4, 5), bool)
  mask[1:3, 2] = True  # rows 1–2, column 2
  mask[2, 3] = True  # column 3
  # Extent: x in [2, 4), y in [1, 3); times P = 16.
  np.testing.assert_array_equal(regions.mask_to_box(mask, 16), [32, 16, 64, 48])
  # Clipped to a smaller image (the patch grid overhangs the image by padding).
  np.testing.assert_array_equal(regions.mask_to_box(mask, 16, image_size=(40, 60)),
                                [32, 16, 60, 40])
  # Empty mask: the whole image.
  np.testing.assert_array_equal(regions.mask_to_box(np.zeros((4, 5), bool), 16), [0, 0, 80, 64])
  np.testing.assert_array_equal(
      regions.mask_to_box(np.zeros((4, 5), bool), 16, image_size=(60, 70)), [0, 0, 70, 60])


def test_mask_to_box_matches_nonzero_extent(random_masks):
  boxes = np.asarray(regions.mask_to_box(random_masks[:5], 8, image_size=(235, 310)))
  for mask, box in zip(random_masks[:5], boxes):
    np.testing.assert_array_equal(box, testing.box_np(mask, 8, image_size=(235, 310)))


@pytest.mark.filterwarnings("ignore:`binary_(erosion|dilation)` is deprecated:FutureWarning")
@pytest.mark.parametrize("iterations", [1, 3])
def test_erosion_dilation_match_skimage(random_masks, iterations):
  eroded = np.asarray(regions.binary_erosion(random_masks, iterations))
  dilated = np.asarray(regions.binary_dilation(random_masks, iterations))
  cross = ndi.generate_binary_structure(2, 1)
  for mask, e, d in zip(random_masks, eroded, dilated):
    want_e, want_d = mask, mask
    for _ in range(iterations):  # the DSM reference calls skimage once per step
      want_e = skimage.morphology.binary_erosion(want_e)
      want_d = skimage.morphology.binary_dilation(want_d)
    np.testing.assert_array_equal(e, want_e)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(
        e, ndi.binary_erosion(mask, cross, iterations=iterations, border_value=1))


def test_erosion_keeps_the_image_border():
  full = np.ones((5, 5), bool)
  np.testing.assert_array_equal(regions.binary_erosion(full), full)


@pytest.mark.filterwarnings("ignore:`binary_(erosion|dilation)` is deprecated:FutureWarning")
def test_erode_then_dilate_matches_reference_rule(random_masks):
  """The reference's loop: take each erosion/dilation step only if the mask stays non-empty."""
  segments = np.stack([random_masks[1] & ~random_masks[2], random_masks[4],
                       np.eye(30, 40, dtype=bool)])  # a thin diagonal line would vanish
  got = np.asarray(regions.erode_then_dilate(segments, num_erode=2, num_dilate=5))
  for seg, g in zip(segments, got):
    x = seg
    for erode in [True] * 2 + [False] * 5:
      fn = skimage.morphology.binary_erosion if erode else skimage.morphology.binary_dilation
      new = fn(x)
      if new.sum() > 0:
        x = new
    np.testing.assert_array_equal(g, x)
  assert got[2].any()


def test_border_majority_and_background_swap():
  segmap = np.array([[2, 2, 2, 1],
                     [2, 0, 0, 1],
                     [1, 0, 0, 1],
                     [1, 1, 1, 1]])
  # Edges (corners twice): left 2,2,1,1 right 1,1,1,1 top 2,2,2,1 bottom 1,1,1,1 → 1 wins 11:5.
  assert int(regions.border_majority(segmap, 3)) == 1
  swapped = np.asarray(regions.background_to_zero(segmap, 3))
  want = np.array([[2, 2, 2, 0],
                   [2, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]])
  np.testing.assert_array_equal(swapped, want)


def test_border_majority_tie_and_batch():
  a = np.array([[0, 0], [1, 1]])  # edges: 0,1 | 0,1 | 0,0 | 1,1 → tie 4:4 → lowest id 0
  b = np.array([[3, 3], [3, 1]])
  np.testing.assert_array_equal(regions.border_majority(jnp.stack([a, b]), 4), [0, 3])


def test_rejects_bad_masks():
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
    regions.largest_component(np.ones(5, bool))
  with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
    regions.label_components(np.ones((3, 3), bool), connectivity=6)
