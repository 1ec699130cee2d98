"""Tests for spectral_jax.image_ops against Pillow and PyTorch."""

import numpy as np
from PIL import Image
import pytest

from spectral_jax import graphs
from spectral_jax import image_ops

GRID = (23, 31)  # the VOC photo (375×500) at a ViT-S/16 patch grid


def test_graphs_reexports_resize_to_grid():
  assert graphs.resize_to_grid is image_ops.resize_to_grid


# ----------------------------------------------------------------------------- resize_to_grid


@pytest.mark.parametrize("out_shape", [GRID, (37, 37)])
def test_resize_pil_matches_pillow_bit_for_bit(voc_photo, out_shape):
  h, w = out_shape
  pil = np.asarray(Image.fromarray(voc_photo.rgb).resize((w, h), Image.BILINEAR))
  ours = np.asarray(image_ops.resize_to_grid(voc_photo.rgb, out_shape))
  np.testing.assert_array_equal(np.round(ours * 255).astype(np.uint8), pil)


def test_resize_pil_upsampling_and_float_path(rng):
  small = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
  pil = np.asarray(Image.fromarray(small).resize((13, 9), Image.BILINEAR))
  ours = np.asarray(image_ops.resize_to_grid(small, (9, 13)))
  np.testing.assert_array_equal(np.round(ours * 255).astype(np.uint8), pil)
  # Float input: no uint8 rounding; compare with PIL's float ('F') mode per channel.
  x = rng.random((40, 50, 3)).astype(np.float32)
  ref = np.stack([np.asarray(Image.fromarray(x[..., c], "F").resize((11, 9), Image.BILINEAR))
                  for c in range(3)], -1)
  np.testing.assert_allclose(image_ops.resize_to_grid(x, (9, 11)), ref, atol=1e-5)


def test_resize_torch_matches_interpolate(voc_photo, torch):
  img = voc_photo.rgb.astype(np.float32) / 255
  t = torch.from_numpy(img).permute(2, 0, 1)[None]
  ref = torch.nn.functional.interpolate(t, size=GRID, mode="bilinear", align_corners=False)
  ref = ref[0].permute(1, 2, 0).numpy()
  ours = image_ops.resize_to_grid(img, GRID, convention="torch")
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  # Batched == per item, and uint8 input is scaled to [0, 1] first.
  both = image_ops.resize_to_grid(np.stack([voc_photo.rgb, voc_photo.rgb[::-1]]), GRID,
                                  convention="torch")
  np.testing.assert_allclose(both[0], ours, atol=1e-6)
  np.testing.assert_allclose(
      both[1], image_ops.resize_to_grid(img[::-1], GRID, convention="torch"), atol=1e-6)


# ----------------------------------------------------------------------------- host helpers


def _pil(rgb, w, h):
  return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def test_resize_to_is_pil_bilinear(voc_photo):
  out = image_ops.resize_to(voc_photo.rgb, (100, 60))
  assert out.shape == (100, 60, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, _pil(voc_photo.rgb, 60, 100))
  gray = voc_photo.rgb[..., 0]
  np.testing.assert_array_equal(image_ops.resize_to(gray, (7, 9)), _pil(gray, 9, 7))


def test_resize_longer_side(voc_photo):
  rgb = voc_photo.rgb  # 375×500
  out = image_ops.resize_longer_side(rgb, 224)
  np.testing.assert_array_equal(out, _pil(rgb, 224, 168))  # 375·224/500 = 168
  assert image_ops.resize_longer_side(rgb, 0) is rgb
  assert image_ops.resize_longer_side(rgb, 500) is rgb
  assert image_ops.resize_longer_side(rgb[:, :2], 3).shape == (3, 1, 3)  # at least 1 px


def test_resize_to_height_and_limit_side(voc_photo):
  rgb = voc_photo.rgb
  np.testing.assert_array_equal(image_ops.resize_to_height(rgb, 120), _pil(rgb, 160, 120))
  assert image_ops.limit_side(rgb, 500) is rgb
  np.testing.assert_array_equal(image_ops.limit_side(rgb, 250), _pil(rgb, 250, 188))


def test_host_helpers_reject_bad_images(rng):
  with pytest.raises(TypeError, match="uint8"):
    image_ops.resize_to(rng.random((8, 8, 3)), (4, 4))
  with pytest.raises(ValueError, match="shape"):
    image_ops.resize_to(np.zeros((2, 8, 8, 3), np.uint8), (4, 4))
  with pytest.raises(ValueError, match="positive"):
    image_ops.resize_to(np.zeros((8, 8, 3), np.uint8), (0, 4))
