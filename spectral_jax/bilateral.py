"""The fast bilateral solver (Barron & Poole, ECCV 2016) as TokenCut refines its masks (SPEC §7).

TokenCut's saliency results "with the bilateral solver" (ECSSD IoU .772, maxFβ .874) come from
its ``unsupervised_saliency_detection/bilateral_solver.py``; this module computes the same
thing in JAX, jit-able, with static shapes:

* **Grid.** Each pixel goes to the vertex ``(⌊x/σₛ⌋, ⌊y/σₛ⌋, ⌊Y/σₗ⌋, ⌊U/σ_c⌋, ⌊V/σ_c⌋)`` of
  a 5-D bilateral grid, YUV = the JPEG (BT.601 full-range) transform of the 0–255 RGB pixel
  with 128 added to U and V. Only occupied vertices exist (at most one per pixel): they are
  found by sorting one integer key per pixel, and neighbours by binary search in the sorted
  keys. The colour cells are computed in exact integer arithmetic (the transform's
  coefficients have six decimals), so a pixel exactly on a cell boundary goes where exact
  arithmetic puts it; the reference's float64 may round such a pixel either way.
* **Splat / blur / slice.** ``S`` (vertices × pixels) sums pixels into their vertex;
  the blur is the ``[1 2 1]`` kernel along each of the 5 axes over existing vertices,
  ``B x = 2·5·x + Σ_d (x[v − e_d] + x[v + e_d])``; slicing reads each pixel's vertex.
* **Bistochastisation.** ``m = S·1``, ``n = 1``, then 10 times ``n ← √(n·m / B n)``, and
  ``m ← n · B n``.
* **Solve.** ``A = λ (diag m − diag n · B · diag n) + diag(S c)``, ``b = S (c·t)`` for a target
  t and confidence c; preconditioned conjugate gradients (Jacobi, diagonal clamped at
  ``a_diag_min``) from ``y₀ = S(c·t) / S c``, relative tolerance ``cg_tol``, at most
  ``cg_maxiter`` iterations; the output is ``Sᵀ y`` per pixel.
* **TokenCut's use** (``bilateral_solver_output``): t = the mask upsampled to the photo
  (nearest), c = 0.999 everywhere, σₛ = 16, σₗ = 16, σ_c = 8 (its saliency script's
  defaults), λ = 256, 25 iterations, tol 1e-5. Its scores are taken on the soft output: the
  refined mask is ``output > 0.5`` (:func:`refine_mask`). Its hole filling and largest
  component are drawn only in its pictures and are not applied here.

Cost: one sort of H·W keys and ten neighbour searches (O(H·W·log(H·W))), then about
``12 + cg_maxiter`` blurs of 10 gathers each over the grid's vertex slots, which
:func:`bilateral_solve` cuts to the next power of two above the vertex count (:func:`compact`;
25.8k vertices for a 375×500 photo). Memory O(H·W).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# RGB → YUV (JPEG / BT.601 full range) in millionths, and the +128 offset of U and V.
RGB_TO_YUV_MICRO = np.array([[299000, 587000, 114000],
                             [-168736, -331264, 500000],
                             [500000, -418688, -81312]], np.int32)
YUV_OFFSET_MICRO = np.array([0, 128_000_000, 128_000_000], np.int32)
_MICRO = 1_000_000
_DIMS = 5                      # x, y, luma, chroma U, chroma V
_INT32_MAX = np.iinfo(np.int32).max


class BilateralParams(NamedTuple):
  """Grid and solver settings; TokenCut's saliency defaults.

  Attributes:
    sigma_spatial: grid cell size in pixels (TokenCut's ``--sigma-spatial`` 16).
    sigma_luma: cell size along Y, 0–255 units (``--sigma-luma`` 16).
    sigma_chroma: cell size along U and V (``--sigma-chroma`` 8).
    lam: λ, the smoothness weight (256).
    confidence: per-pixel confidence of the target (0.999 everywhere).
    cg_tol: PCG relative tolerance ‖r‖ ≤ tol·‖b‖ (1e-5).
    cg_maxiter: PCG iterations at most (25).
    a_diag_min: clamp of A's diagonal in the Jacobi preconditioner (1e-5).
    bistochastize_iters: Sinkhorn-like iterations for n (10).
  """

  sigma_spatial: float = 16.0
  sigma_luma: float = 16.0
  sigma_chroma: float = 8.0
  lam: float = 256.0
  confidence: float = 0.999
  cg_tol: float = 1e-5
  cg_maxiter: int = 25
  a_diag_min: float = 1e-5
  bistochastize_iters: int = 10

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    for name in ("sigma_spatial", "sigma_luma", "sigma_chroma"):
      v = getattr(self, name)
      if not (np.isfinite(v) and v > 0):
        raise ValueError(f"bilateral {name} must be a positive number; got {v}")
    if not (np.isfinite(self.lam) and self.lam >= 0):
      raise ValueError(f"bilateral lam must be a finite number ≥ 0; got {self.lam}")
    if not 0 < self.confidence <= 1:
      raise ValueError(f"bilateral confidence must lie in (0, 1]; got {self.confidence}")
    if not (self.cg_tol >= 0 and self.a_diag_min > 0):
      raise ValueError("bilateral cg_tol must be ≥ 0 and a_diag_min > 0")
    for name in ("cg_maxiter", "bistochastize_iters"):
      v = getattr(self, name)
      if not (isinstance(v, (int, np.integer)) and v >= 1):
        raise ValueError(f"bilateral {name} must be an int ≥ 1; got {v!r}")


class Grid(NamedTuple):
  """A bilateral grid of one image with P = H·W pixels and V vertex slots (V = P as built,
  fewer after :func:`compact`).

  Attributes:
    vertex: (P,) int32 each pixel's vertex.
    neighbours: (5, 2, V) int32 the vertex one cell down / up along each axis, −1 if absent.
    occupied: (V,) bool the slots that are vertices (the first ``num_vertices``).
    num_vertices: () int32.
  """

  vertex: jax.Array
  neighbours: jax.Array
  occupied: jax.Array
  num_vertices: jax.Array


def _axis_cells(shape: tuple[int, int], params: BilateralParams) -> tuple[np.ndarray, ...]:
  """Static per-axis facts: the x and y cell of each column / row, the cell counts."""
  h, w = shape
  xs = np.floor(np.arange(w) / params.sigma_spatial).astype(np.int32)
  ys = np.floor(np.arange(h) / params.sigma_spatial).astype(np.int32)
  luma = int(round(params.sigma_luma * _MICRO))
  chroma = int(round(params.sigma_chroma * _MICRO))
  if luma < 1 or chroma < 1:
    raise ValueError("bilateral sigma_luma and sigma_chroma must be at least 1e-6")
  # the largest Y, U, V (millionths) any 0–255 pixel reaches, in cells
  top = np.maximum(RGB_TO_YUV_MICRO, 0).sum(axis=1).astype(np.int64) * 255 + YUV_OFFSET_MICRO
  max_y, max_u, max_v = (int(v) for v in top // np.array([luma, chroma, chroma]))
  # +1 shift and +1 spare on each side, so that a neighbour's key never wraps into another axis
  sizes = np.array([xs[-1] + 3, ys[-1] + 3, max_y + 3, max_u + 3, max_v + 3], np.int64)
  return xs, ys, np.array([luma, chroma, chroma], np.int32), sizes


def _strides(sizes: np.ndarray) -> np.ndarray:
  total = math.prod(int(s) for s in sizes)
  if total > _INT32_MAX:
    raise ValueError(f"the bilateral grid would have {total:.3g} cells, beyond int32 keys: "
                     "use larger sigmas or a smaller image")
  return np.array([math.prod(int(s) for s in sizes[d + 1:]) for d in range(_DIMS)], np.int32)


def grid_coordinates(image: jax.Array, params: BilateralParams = BilateralParams()) -> jax.Array:
  """(H, W, 5) int32 grid cell of each pixel: x, y, luma, U, V (see the module doc).

  Args:
    image: (H, W, 3) RGB integers in 0–255 (uint8 or any int dtype).
  """
  h, w = image.shape[:2]
  xs, ys, colour_sigma, _ = _axis_cells((h, w), params)
  rgb = jnp.asarray(image).astype(jnp.int32)
  yuv = jnp.einsum("hwc,kc->hwk", rgb, jnp.asarray(RGB_TO_YUV_MICRO)) + YUV_OFFSET_MICRO
  colour = yuv // jnp.asarray(colour_sigma)
  space = jnp.stack(jnp.broadcast_arrays(jnp.asarray(xs)[None, :], jnp.asarray(ys)[:, None]), -1)
  return jnp.concatenate([space, colour], axis=-1)


@functools.partial(jax.jit, static_argnums=(1,))
def bilateral_grid(image: jax.Array, params: BilateralParams = BilateralParams()) -> Grid:
  """The occupied vertices of an image's bilateral grid and their neighbours.

  Args:
    image: (H, W, 3) RGB integers 0–255.
    params: only the sigmas are used.
  Returns:
    A :class:`Grid` with P = H·W vertex slots.
  """
  h, w = image.shape[:2]
  p = h * w
  *_, sizes = _axis_cells((h, w), params)
  strides = jnp.asarray(_strides(sizes))
  coords = grid_coordinates(image, params).reshape(p, _DIMS) + 1
  keys = coords @ strides
  order = jnp.argsort(keys)
  sorted_keys = keys[order]
  new = jnp.concatenate([jnp.ones((1,), bool), sorted_keys[1:] != sorted_keys[:-1]])
  ids_sorted = jnp.cumsum(new, dtype=jnp.int32) - 1
  vertex = jnp.zeros((p,), jnp.int32).at[order].set(ids_sorted)
  num_vertices = ids_sorted[-1] + 1
  occupied = jnp.arange(p) < num_vertices
  table = jnp.full((p,), _INT32_MAX, jnp.int32).at[ids_sorted].set(sorted_keys)

  def lookup(offset):
    want = jnp.where(occupied, table + offset, _INT32_MAX)
    at = jnp.minimum(jnp.searchsorted(table, want), p - 1).astype(jnp.int32)
    return jnp.where(occupied & (table[at] == want), at, -1)

  neighbours = jnp.stack([jnp.stack([lookup(-strides[d]), lookup(strides[d])])
                          for d in range(_DIMS)])
  return Grid(vertex, neighbours, occupied, num_vertices)


def splat(grid: Grid, values: jax.Array) -> jax.Array:
  """(P,) pixel values → (V,) vertex sums ``S x`` (V the grid's vertex slots)."""
  return jax.ops.segment_sum(values, grid.vertex, num_segments=grid.occupied.shape[0])


def slice_(grid: Grid, values: jax.Array) -> jax.Array:
  """(V,) vertex values → (P,) pixel values ``Sᵀ y``."""
  return values[grid.vertex]


def blur(grid: Grid, values: jax.Array) -> jax.Array:
  """``[1 2 1]`` along each axis over the existing vertices: ``2·5·x + Σ neighbours``."""
  nb = grid.neighbours
  gathered = jnp.where(nb >= 0, values[jnp.maximum(nb, 0)], 0)
  return 2 * _DIMS * values + jnp.sum(gathered, axis=(0, 1))


def bistochastize(grid: Grid, iterations: int = 10, dtype=jnp.float32
                  ) -> tuple[jax.Array, jax.Array]:
  """The diagonals ``(n, m)`` that make ``diag(n) B diag(n)`` have row sums m = S·1.

  Returns:
    ``(n (P,), m (P,))``, 0 on unoccupied slots.
  """
  occ = grid.occupied
  m = splat(grid, jnp.ones(grid.vertex.shape, dtype))   # (V,)

  def step(_, n):
    bn = blur(grid, n)
    return jnp.where(occ, jnp.sqrt(n * m / jnp.where(occ, bn, 1.0)), 0.0)

  n = jax.lax.fori_loop(0, iterations, step, occ.astype(dtype))
  return n, n * blur(grid, n)


def compact(grid: Grid, slots: int) -> Grid:
  """The same grid with ``slots`` vertex slots (``num_vertices ≤ slots``, static): the blur and
  the solve then cost O(slots), not O(H·W). Vertex ids are the first ones, so nothing moves."""
  return grid._replace(neighbours=grid.neighbours[..., :slots], occupied=grid.occupied[:slots])


def vertex_slots(num_vertices: int, pixels: int) -> int:
  """Slots for a grid of ``num_vertices``: the next power of two (few compiled sizes), at most
  one per pixel."""
  return min(pixels, 1 << max(int(num_vertices) - 1, 1).bit_length())


@functools.partial(jax.jit, static_argnums=(3,))
def solve(grid: Grid, target: jax.Array, confidence: jax.Array,
          params: BilateralParams = BilateralParams()) -> jax.Array:
  """The bilateral solver on a built grid (jit-able; :func:`bilateral_solve` is the checked
  entry point).

  Args:
    grid: :func:`bilateral_grid` of the image, optionally :func:`compact`-ed.
    target: (H, W) float target t.
    confidence: (H, W) confidence c, target's dtype.
    params: the solver settings (the sigmas are the grid's).
  Returns:
    (H, W) ``Sᵀ y``, target's dtype.
  """
  h, w = target.shape
  dtype = target.dtype
  n, m = bistochastize(grid, params.bistochastize_iters, dtype)
  t, c = target.reshape(h * w), confidence.reshape(h * w)
  c_splat = splat(grid, c)
  b = splat(grid, c * t)
  lam = jnp.asarray(params.lam, dtype)

  def matvec(y):
    return lam * (m * y - n * blur(grid, n * y)) + c_splat * y

  diag = lam * (m - 2 * _DIMS * n * n) + c_splat
  inv_diag = 1.0 / jnp.maximum(diag, params.a_diag_min)
  y0 = jnp.where(c_splat > 0, b / jnp.where(c_splat > 0, c_splat, 1.0), 0.0)
  y, _ = jax.scipy.sparse.linalg.cg(matvec, b, x0=y0, tol=params.cg_tol, atol=0.0,
                                    maxiter=params.cg_maxiter, M=lambda r: inv_diag * r)
  return slice_(grid, y).reshape(h, w)


def bilateral_solve(image, target, confidence=None,
                    params: BilateralParams = BilateralParams()) -> jax.Array:
  """The bilateral solver's output for one image: a target smoothed along the image's edges.

  Args:
    image: (H, W, 3) RGB, uint8 / ints 0–255 (floats in [0, 1] are scaled by 255 and rounded).
    target: (H, W) float target t (e.g. a 0/1 mask); float32, or float64 with x64 on.
    confidence: (H, W) weights c in [0, 1]; None: ``params.confidence`` everywhere.
    params: :class:`BilateralParams` (TokenCut's by default).
  Returns:
    (H, W) the solver's output ``Sᵀ y`` in target's float dtype (not clipped).
  Raises:
    ValueError: shapes that do not match, an empty image, non-finite targets, bad params, or
      a grid too large for int32 keys.
  """
  params.validate()
  image = jnp.asarray(image)
  target = jnp.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.floating):
    target = target.astype(jnp.float32)
  if image.ndim != 3 or image.shape[-1] != 3 or target.shape != image.shape[:2]:
    raise ValueError(f"image must be (H, W, 3) and target (H, W) of the same size; got "
                     f"{image.shape} and {target.shape}")
  if min(target.shape) < 1:
    raise ValueError(f"the image is empty: {image.shape}")
  if not bool(jnp.all(jnp.isfinite(target))):
    raise ValueError("the bilateral solver's target has NaN or Inf values")
  if jnp.issubdtype(image.dtype, jnp.floating):
    image = jnp.round(jnp.clip(image, 0.0, 1.0) * 255)
  image = image.astype(jnp.int32)
  if confidence is None:
    confidence = jnp.full(target.shape, params.confidence, target.dtype)
  confidence = jnp.asarray(confidence)
  if confidence.shape != target.shape:
    raise ValueError(f"confidence {confidence.shape} must match target {target.shape}")
  grid = bilateral_grid(image, params)
  slots = vertex_slots(int(grid.num_vertices), target.size)   # one host read: the grid's size
  return solve(compact(grid, slots), target, confidence.astype(target.dtype), params)


def refine_mask(image, mask, params: BilateralParams = BilateralParams()
                ) -> tuple[jax.Array, jax.Array]:
  """TokenCut's bilateral-solver refinement of a binary mask at the photo's resolution.

  Args:
    image: (H, W, 3) RGB 0–255 (uint8) or floats in [0, 1].
    mask: (H, W) bool or {0, 1} mask (TokenCut: the seed component, upsampled nearest).
    params: :class:`BilateralParams`.
  Returns:
    ``(score (H, W) float32 in [0, 1], refined (H, W) bool = score > 0.5)``; the score is the
    solver's output clipped to [0, 1] (what TokenCut's IoU and maxFβ read).
  """
  out = bilateral_solve(image, jnp.asarray(mask, jnp.float32), None, params)
  return jnp.clip(out, 0.0, 1.0), out > 0.5


__all__ = [
    "BilateralParams", "Grid", "RGB_TO_YUV_MICRO", "YUV_OFFSET_MICRO", "bilateral_grid",
    "bilateral_solve", "bistochastize", "blur", "compact", "grid_coordinates", "refine_mask",
    "slice_", "solve", "splat", "vertex_slots",
]
