"""Image resampling: every resize of the library in one module.

* ``resize_to_grid``: an image (uint8 or float, any leading batch dims) brought to the patch grid
  with the references' bilinear conventions, on device and jit-able: Pillow's (DSM; bit-exact for
  uint8) or PyTorch's ``F.interpolate`` (NeuralEF). ``graphs`` re-exports it.
* Host helpers for the commands and data loaders, on (H, W[, C]) uint8 NumPy images with Pillow's
  BILINEAR filter (antialiased when downscaling), returning uint8: ``resize_to`` (an exact size),
  ``resize_longer_side``, ``resize_to_height`` and ``limit_side``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spectral_jax._checks import all_finite, is_traced

# ----------------------------------------------------------------------------- patch grid (device)


def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) float64 rows of Pillow's BILINEAR resampling (a triangle filter whose support
  grows with the downscale factor, i.e. antialiased), as in Pillow's ``precompute_coeffs``."""
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = filterscale  # the bilinear filter has support 1
  weights = np.zeros((out_size, in_size))
  for o in range(out_size):
    center = (o + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    x = np.arange(lo, hi)
    w = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
    if w.sum() > 0:
      weights[o, lo:hi] = w / w.sum()
  return weights


def _torch_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) rows of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis
  (no antialiasing: each output samples the two nearest inputs). Source positions are computed
  in float32 as PyTorch does, so the weights match its kernel."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  weights = np.zeros((out_size, in_size))
  for o in range(out_size):
    src = max(scale * (f32(o) + f32(0.5)) - f32(0.5), f32(0))
    i0 = min(int(src), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = f32(src - f32(i0))
    weights[o, i0] += f32(1) - frac
    weights[o, i1] += frac
  return weights


_PIL_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


def _pil_fixed_point(weights: np.ndarray) -> np.ndarray:
  scaled = weights * (1 << _PIL_PRECISION_BITS)
  return np.trunc(scaled + np.where(scaled < 0, -0.5, 0.5)).astype(np.int32)


def _pil_uint8_pass(kk: np.ndarray, x: jax.Array, spec: str) -> jax.Array:
  acc = jnp.einsum(spec, jnp.asarray(kk), x, preferred_element_type=jnp.int32)
  acc = acc + (1 << (_PIL_PRECISION_BITS - 1))
  return jnp.clip(jnp.right_shift(acc, _PIL_PRECISION_BITS), 0, 255)


def resize_to_grid(image: jax.Array, grid_shape: tuple[int, int], *,
                   convention: str = "pil") -> jax.Array:
  """Bilinearly resizes an image to the patch grid, with the reference's conventions (SPEC §2).

  Two conventions, both separable (horizontal pass first):

  * ``"pil"`` (DSM default): Pillow ``Image.resize((w, h), Image.BILINEAR)``, a triangle filter
    widened by the downscale factor (antialiased). DSM resizes the *uncropped* photo to the patch
    grid this way. For uint8 input Pillow's 8-bit fixed-point arithmetic is reproduced, including
    the rounding to uint8 after each pass, so the result equals PIL's bit for bit (then / 255).
  * ``"torch"`` (NeuralEF): ``F.interpolate(x, (h, w), mode="bilinear", align_corners=False)``,
    which samples the 2×2 nearest pixels with half-pixel centres and no antialiasing.

  Args:
    image: (..., H, W, C) uint8 (0..255) or float image (any range; kept as is).
    grid_shape: (h, w) output grid, e.g. (H // P, W // P).
    convention: "pil" or "torch".
  Returns:
    (..., h, w, C) float32; uint8 inputs are mapped to [0, 1].
  """
  if np.ndim(image) < 3:
    raise ValueError(f"image must have shape (..., H, W, C); got shape {np.shape(image)}")
  h, w = (int(s) for s in grid_shape)
  if h < 1 or w < 1:
    raise ValueError(f"grid_shape must be two positive ints; got {grid_shape}")
  if convention not in ("pil", "torch"):
    raise ValueError(f"convention must be 'pil' or 'torch'; got {convention!r}")
  dtype = jnp.result_type(image)
  is_uint8 = dtype == jnp.uint8
  if not is_uint8 and not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"image must be uint8 or float; got dtype {dtype}")
  if not is_uint8 and not is_traced(image) and not all_finite(image):
    raise ValueError("image contains NaN or Inf values")
  return _resize(image, (h, w), convention)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize(image, grid_shape, convention):
  (h, w), (in_h, in_w) = grid_shape, image.shape[-3:-1]
  weights = _pil_bilinear_weights if convention == "pil" else _torch_bilinear_weights
  wy, wx = weights(in_h, h), weights(in_w, w)
  if image.dtype == jnp.uint8 and convention == "pil":
    x = image.astype(jnp.int32)
    x = _pil_uint8_pass(_pil_fixed_point(wx), x, "ow,...hwc->...hoc")
    x = _pil_uint8_pass(_pil_fixed_point(wy), x, "oh,...hwc->...owc")
    return x.astype(jnp.float32) / 255.0
  x = image.astype(jnp.float32)
  if image.dtype == jnp.uint8:
    x = x / 255.0
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ow,...hwc->...hoc", jnp.asarray(wx, jnp.float32), x, precision=hp)
  return jnp.einsum("oh,...hwc->...owc", jnp.asarray(wy, jnp.float32), x, precision=hp)


# ----------------------------------------------------------------------------- host (PIL, uint8)


def _as_uint8_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"image must have shape (H, W) or (H, W, C); got shape {image.shape}")
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8 (0..255); got dtype {image.dtype}. Convert floats in "
                    "[0, 1] with (x * 255).round().astype(np.uint8), or use resize_to_grid.")
  return image


def resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 image to ``shape = (h, w)`` (note: rows first, unlike PIL's (w, h)).

  Args:
    image: (H, W) or (H, W, C) uint8.
    shape: (h, w) output size, both >= 1.
  Returns:
    (h, w[, C]) uint8, Pillow ``Image.resize((w, h), Image.BILINEAR)``.
  """
  image = _as_uint8_image(image)
  h, w = (int(s) for s in shape)
  if h < 1 or w < 1:
    raise ValueError(f"shape must be two positive ints (h, w); got {tuple(shape)}")
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _scaled(image: np.ndarray, scale: float) -> tuple[int, int]:
  h, w = image.shape[:2]
  return max(1, round(h * scale)), max(1, round(w * scale))


def resize_longer_side(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes a uint8 image so that its longer side is ``size`` px, keeping the aspect ratio
  (sides rounded, at least 1); ``size`` 0 (or an image already that size) returns it unchanged."""
  image = _as_uint8_image(image)
  if size <= 0:
    return image
  shape = _scaled(image, size / max(image.shape[:2]))
  return image if shape == image.shape[:2] else resize_to(image, shape)


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
  """Resizes a uint8 image to ``height`` rows, the width scaled alike (rounded, at least 1)."""
  image = _as_uint8_image(image)
  return resize_to(image, (height, _scaled(image, height / image.shape[0])[1]))


def limit_side(image: np.ndarray, max_side: int = 1024) -> np.ndarray:
  """A uint8 image shrunk so that its longer side is at most ``max_side`` (unchanged if it is)."""
  image = _as_uint8_image(image)
  if max(image.shape[:2]) <= max_side:
    return image
  return resize_to(image, _scaled(image, max_side / max(image.shape[:2])))


__all__ = ["resize_to_grid", "resize_to", "resize_longer_side", "resize_to_height", "limit_side"]
