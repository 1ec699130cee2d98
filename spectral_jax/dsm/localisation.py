"""DSM §3.2 object localisation: the oriented Fiedler vector, its positive side, the largest
connected component and its box (SPEC §4).

Frames: the backbone sees an image of ``input_hw = (H', W')`` pixels (the photo resized), cropped
to ``(h·P, w·P)``; boxes are ``[x0, y0, x1, y1]`` pixels, x1/y1 exclusive, first in that frame,
then scaled to the photo by :func:`scale_boxes`. Every function takes an optional ``valid``
(..., h, w) mask of the real patches of a padded grid; padding never counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import eigensolvers, regions

CONNECTIVITY = 4        # SPEC §4; the DSM code's skimage.measure.label is 8-connected
FOREGROUND_RULES = ("minority", "border")


def foreground_side(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Orients vectors so that their positive side is the minority (SPEC §3–4 sign rule).

  The project's one sign rule, ``eigensolvers.apply_sign_rule``, on single vectors: a vector
  with more than 50% (but not 100%) positive entries is negated, and one with no positive entry
  too. Idempotent, so safe on eigenvectors the solver already oriented.

  Args:
    y: (..., n) vectors (one per leading index).
    valid: optional (..., n) bool; fractions count only these entries.
  Returns:
    (..., n) oriented vectors, same dtype.
  """
  return eigensolvers.apply_sign_rule(y[..., None], valid)[..., 0]


def border_side(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Orients grid maps so that their positive side touches the image border least (an option).

  A map whose positive entries cover more than half of the border cells (the outermost rows and
  columns of the image's real patches, corners counted once) is negated: the object is taken to
  be the side that the frame cuts less, whatever its size. Not the reference's rule
  (:func:`foreground_side`); it helps where the object fills more than half of the photo.

  Args:
    y: (..., h, w) maps.
    valid: optional (..., h, w) bool real patches (top-left rectangles).
  Returns:
    (..., h, w) oriented maps.
  """
  v = jnp.ones(y.shape, bool) if valid is None else jnp.broadcast_to(valid, y.shape)
  ring = regions.border_weights(v) > 0
  positive_border = jnp.sum(ring & (y > 0), axis=(-2, -1), keepdims=True)
  return jnp.where(positive_border > jnp.sum(ring, axis=(-2, -1), keepdims=True) / 2, -y, y)


def fiedler_map(eigenvectors: jax.Array, grid: tuple[int, int], rule: str = "minority",
                valid: jax.Array | None = None) -> jax.Array:
  """The oriented Fiedler vector y₁ on the patch grid.

  Args:
    eigenvectors: (..., n, k) with k ≥ 2, n = h·w in row-major grid order.
    grid: (h, w).
    rule: "minority" (SPEC §3–4, the reference: the positive side is the smaller one,
      :func:`foreground_side`) or "border" (the side touching the border least,
      :func:`border_side`).
    valid: optional (..., h, w) bool real patches.
  Returns:
    (..., h, w) float.
  """
  h, w = grid
  if eigenvectors.shape[-2] != h * w or eigenvectors.shape[-1] < 2:
    raise ValueError(f"eigenvectors {eigenvectors.shape} must be (..., n={h * w}, k ≥ 2) for the "
                     f"{h}×{w} grid")
  if rule not in FOREGROUND_RULES:
    raise ValueError(f"rule must be one of {FOREGROUND_RULES}; got {rule!r}")
  flat_valid = None if valid is None else valid.reshape(valid.shape[:-2] + (h * w,))
  y = foreground_side(eigenvectors[..., 1], flat_valid).reshape(eigenvectors.shape[:-2] + (h, w))
  return y if rule == "minority" else border_side(y, valid)


def foreground_patches(fiedler: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """``y₁ > 0`` (SPEC §4); the whole image (its real patches) when nothing is positive.

  Args:
    fiedler: (..., h, w) oriented y₁ (:func:`fiedler_map`).
    valid: optional (..., h, w) bool real patches.
  Returns:
    (..., h, w) bool.
  """
  inside = jnp.ones(fiedler.shape, bool) if valid is None else valid
  mask = (fiedler > 0) & inside
  return (mask | ~jnp.any(mask, axis=(-2, -1), keepdims=True)) & inside


def localise(foreground: jax.Array, *, patch_size: int, image_size: tuple[int, int] | None = None,
             connectivity: int = CONNECTIVITY) -> tuple[jax.Array, jax.Array]:
  """Object localisation (SPEC §4): largest connected component of the mask, and its box.

  Args:
    foreground: (..., h, w) bool patch mask (False on padding).
    patch_size: P.
    image_size: (H', W') of the backbone's input image before its crop to a multiple of P; the
      box is clipped to it. Default (h·P, w·P).
    connectivity: 4 (SPEC §4, default) or 8 (what the DSM code's ``skimage.measure.label`` does).
  Returns:
    ``(component (..., h, w) bool, box (..., 4) int32)`` with box = min/max patch extent (+1)
    times P, ``[x0, y0, x1, y1]``.
  """
  component = regions.largest_component(foreground, connectivity=connectivity)
  box = regions.mask_to_box(component, patch_size=patch_size,
                            image_size=None if image_size is None else tuple(image_size))
  return component, box


def scale_boxes(boxes, input_hw: tuple[int, int], output_hw: tuple[int, int]) -> np.ndarray:
  """Boxes from the backbone's input frame (H', W') to the photo (H, W), rounded and clipped.

  Host NumPy (an output step).

  Args:
    boxes: (..., 4) [x0, y0, x1, y1].
  Returns:
    (..., 4) int32.
  """
  (hi, wi), (ho, wo) = input_hw, output_hw
  scale = np.array([wo / wi, ho / hi, wo / wi, ho / hi], np.float32)
  out = np.round(np.asarray(boxes, np.float32) * scale).astype(np.int32)
  return np.clip(out, 0, np.array([wo, ho, wo, ho], np.int32))


def centred_box(image_hw: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
  """Trivial baseline: the centred box whose sides are ``fraction`` of the image's.

  Returns:
    (4,) int64 [x0, y0, x1, y1].
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
  h, w = image_hw
  bh, bw = round(h * fraction), round(w * fraction)
  y0, x0 = (h - bh) // 2, (w - bw) // 2
  return np.array([x0, y0, x0 + bw, y0 + bh])


def box_mask(box, image_hw: tuple[int, int]) -> np.ndarray:
  """(H, W) bool mask of a pixel box [x0, y0, x1, y1] (the baseline's box-as-mask)."""
  x0, y0, x1, y1 = (int(v) for v in np.asarray(box))
  m = np.zeros(image_hw, bool)
  m[y0:y1, x0:x1] = True
  return m
