"""Positional-embedding resampling against torch.nn.functional.interpolate (SPEC §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.backbones import posemb

# (checkpoint grid M, new grid (h, w)): up, down, non-square, both directions at once.
CASES = [(14, (20, 30)), (37, (16, 16)), (37, (32, 24)), (24, (30, 17)), (6, (3, 9))]


def _torch_reference(torch, grid, new_hw, mode):
  """What each reference calls: HF / timm by size; DINO & DINOv2 by scale factor + 0.1."""
  F = torch.nn.functional
  x = torch.from_numpy(np.array(grid)).permute(2, 0, 1)[None]
  side = grid.shape[0]
  if mode == "bicubic":
    y = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False)
  elif mode == "bilinear":
    y = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False)
  else:
    scale = tuple((n + 0.1) / side for n in new_hw)
    y = F.interpolate(x, scale_factor=scale, mode="bicubic")
  return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", posemb.MODES)
@pytest.mark.parametrize("side,new_hw", CASES)
def test_resample_grid_matches_torch(side, new_hw, mode, rng, torch):
  grid = rng.normal(size=(side, side, 5)).astype(np.float32)
  expected = _torch_reference(torch, grid, new_hw, mode)
  got = np.asarray(posemb.resample_grid(jnp.asarray(grid), new_hw, mode))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_keys_cubic_kernel_is_not_jax_image_resize(rng, torch):
  """PyTorch's a = -0.75 differs from jax.image.resize's cubic: the kernel must be ours."""
  grid = rng.normal(size=(14, 14, 4)).astype(np.float32)
  expected = _torch_reference(torch, grid, (20, 30), "bicubic")
  jax_cubic = np.asarray(jax.image.resize(grid, (20, 30, 4), "cubic", antialias=False))
  assert np.abs(jax_cubic - expected).max() > 1e-2


def test_offset_mode_differs_from_size_mode(rng):
  grid = rng.normal(size=(14, 14, 4)).astype(np.float32)
  by_size = np.asarray(posemb.resample_grid(grid, (20, 30), "bicubic"))
  by_offset = np.asarray(posemb.resample_grid(grid, (20, 30), "bicubic_offset"))
  assert np.abs(by_size - by_offset).max() > 1e-3


@pytest.mark.parametrize("mode", posemb.MODES)
def test_resample_matrix_rows_sum_to_one(mode):
  np.testing.assert_allclose(posemb.resample_matrix(37, 23, mode).sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", posemb.MODES)
def test_interpolate_pos_embed_keeps_cls_and_native_grid(mode, rng, torch):
  pos = jnp.asarray(rng.normal(size=(1, 1 + 36, 8)).astype(np.float32))
  np.testing.assert_array_equal(posemb.interpolate_pos_embed(pos, (6, 6), mode), pos)
  out = posemb.interpolate_pos_embed(pos, (4, 9), mode)
  assert out.shape == (1, 1 + 36, 8)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  grid = np.asarray(pos[0, 1:]).reshape(6, 6, 8)
  np.testing.assert_allclose(np.asarray(out[0, 1:]).reshape(4, 9, 8),
                             _torch_reference(torch, grid, (4, 9), mode), atol=2e-5)


def test_errors():
  with pytest.raises(ValueError, match="mode"):
    posemb.resample_matrix(4, 5, "lanczos")
  with pytest.raises(ValueError, match="square"):
    posemb.interpolate_pos_embed(jnp.zeros((1, 1 + 12, 4)), (3, 3))
