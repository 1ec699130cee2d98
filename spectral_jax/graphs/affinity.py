"""DSM affinities (SPEC §2; Melas-Kyriazi et al. 2022, §3.1), degrees and normalisation.

Per image ``W = W_feat + λ·W_knn`` with ``W_feat = relu(F̂ F̂ᵀ)`` (``feature_affinity``) and the
colour–position "KNN matting" affinity ``W_knn`` (``colour_knn_affinity``, built on
``colour_knn_indices``); ``dsm_affinity`` fuses them. ``degrees`` / ``normalize_symmetric`` give
``D^-½ W D^-½`` with the zero-degree guard, for dense and BCOO graphs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import sparse

from spectral_jax._checks import is_traced
from spectral_jax.graphs._constants import DSM_DISTANCE_WEIGHTS, DSM_N_NEIGHBORS, MIN_DEGREE
from spectral_jax.graphs._edges import both_directions, batched, edges_to_graph, flat_rows
from spectral_jax.graphs._edges import map_rows, row_ids
from spectral_jax.graphs._validation import check_array, check_block_size, check_image_grid
from spectral_jax.graphs._validation import check_k, check_output, check_passes, compute_dtype


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Divides ``x`` by its L2 norm along ``axis`` (zero vectors stay zero)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


@jax.jit
def feature_affinity(features: jax.Array) -> jax.Array:
  """DSM feature affinity ``W_feat = relu(F̂ F̂ᵀ)``, F̂ the L2-normalised rows of ``features``.

  Args:
    features: (..., n, d) patch features (DSM: last-block keys, CLS dropped).
  Returns:
    (..., n, n) symmetric, non-negative, float32 (or the input's float dtype).
  """
  f = l2_normalize(features)
  return jax.nn.relu(jnp.einsum("...id,...jd->...ij", f, f))


def _segment_row_sums(data: jax.Array, rows: jax.Array, n: int, n_batch: int) -> jax.Array:
  return batched(lambda d, r: jax.ops.segment_sum(d, r, num_segments=n), n_batch)(data, rows)


@jax.jit
def degrees(w: jax.Array | sparse.BCOO, min_degree: float = MIN_DEGREE) -> jax.Array:
  """Row sums ``d = W 1`` of (..., n, n) ``w``; entries below ``min_degree`` become 1.

  Args:
    w: dense (..., n, n) array or a BCOO matrix of that shape (batch dims as BCOO batch dims).
    min_degree: degrees below this are replaced by 1 (SPEC §2, DSM reference guard).
  Returns:
    (..., n) degrees.
  """
  if isinstance(w, sparse.BCOO):
    d = _segment_row_sums(w.data, w.indices[..., 0], w.shape[-1], w.n_batch)
  else:
    d = jnp.sum(w, axis=-1)
  return jnp.where(d < min_degree, jnp.ones_like(d), d)


@jax.jit
def normalize_symmetric(w: jax.Array | sparse.BCOO,
                        min_degree: float = MIN_DEGREE) -> jax.Array | sparse.BCOO:
  """Symmetric normalisation ``D^-½ W D^-½`` of a dense or BCOO (..., n, n) affinity.

  Isolated nodes (degree < ``min_degree``) get degree 1, so their rows stay zero, never NaN.
  (The NeuralEF reference has no guard: it would give NaN there.) A BCOO input keeps its
  indices; only the data are scaled.
  """
  s = jax.lax.rsqrt(degrees(w, min_degree))
  if isinstance(w, sparse.BCOO):
    take = batched(lambda v, i: v[i], w.n_batch)
    data = w.data * take(s, w.indices[..., 0]) * take(s, w.indices[..., 1])
    return sparse.BCOO((data, w.indices), shape=w.shape)
  return s[..., :, None] * w * s[..., None, :]


# ----------------------------------------------------------------------------- colour–position k-NN


def _colour_knn_2d(image_grid, distance_weight, k, include_self, block_size):
  h, w, c = image_grid.shape
  colours = image_grid.reshape(h * w, c).astype(compute_dtype(image_grid))
  # x = linspace(0, 1, w)[col]: distances use the integer column/row offsets times the grid step,
  # so equal geometric offsets give bit-identical distances (ties are then settled by index).
  step_x = distance_weight / (w - 1) if w > 1 else 0.0
  step_y = distance_weight / (h - 1) if h > 1 else 0.0
  node_row = jnp.repeat(jnp.arange(h), w)
  node_col = jnp.tile(jnp.arange(w), h)
  ids = jnp.arange(h * w)

  def row(args):
    ci, i = args
    d2 = jnp.sum((colours - ci) ** 2, axis=-1)
    d2 = d2 + ((node_col - node_col[i]) * step_x) ** 2 + ((node_row - node_row[i]) * step_y) ** 2
    score = jnp.where(ids == i, jnp.inf if include_self else -jnp.inf, -d2)
    return jax.lax.top_k(score, k)[1]

  return map_rows(row, (colours, ids), block_size)


@functools.partial(jax.jit, static_argnames=("k", "distance_weight", "include_self",
                                             "block_size"))
def _colour_knn_indices(image_grid, *, k, distance_weight, include_self, block_size):
  core = lambda g: _colour_knn_2d(g, distance_weight, k, include_self, block_size)
  return jnp.vectorize(core, signature="(h,w,c)->(n,k)")(image_grid)


def colour_knn_indices(image_grid: jax.Array, k: int, distance_weight: float, *,
                       include_self: bool, block_size: int | None = None) -> jax.Array:
  """k nearest grid nodes in colour–position space, one pass of the DSM / NeuralEF search.

  Node i = row·w + col has features ``[r, g, b, λ·x, λ·y]`` (λ = ``distance_weight``) with
  ``x = linspace(0, 1, w)[col]``, ``y = linspace(0, 1, h)[row]`` (0 when that side is 1), as in
  the references. The squared distance is computed as
  ``Σ_c Δc² + (Δcol·λ/(w−1))² + (Δrow·λ/(h−1))²`` from integer offsets, so neighbours at equal
  geometric offsets in a flat-colour region tie exactly; ties go to the lower index.

  Args:
    image_grid: (..., h, w, C) float colours (RGB in [0, 1]).
    k: neighbours per node (static); 1 <= k <= n with self, <= n − 1 without (n = h·w).
    distance_weight: λ, the weight of the position coordinates (static).
    include_self: DSM (True) lists each node first among its own neighbours; NeuralEF (False)
      excludes it.
    block_size: query nodes per block (None: the (n, n) distances at once).
  Returns:
    (..., n, k) int32 neighbour indices, nearest first.
  """
  check_image_grid(image_grid, "image_grid")
  check_k(k, image_grid.shape[-3] * image_grid.shape[-2], self_excluded=not include_self)
  check_block_size(block_size)
  return _colour_knn_indices(image_grid, k=int(k), distance_weight=float(distance_weight),
                             include_self=bool(include_self), block_size=block_size)


def _colour_knn_edges(image_grid, passes, include_self, block_size):
  """Directed k-NN edges of all passes, E + Eᵀ, batched over leading dims: (..., 2·n·Σk)."""
  rows, cols = [], []
  for k, weight in passes:
    idx = _colour_knn_indices(image_grid, k=k, distance_weight=weight,
                              include_self=include_self, block_size=block_size)
    rows.append(row_ids(idx.shape))
    cols.append(flat_rows(idx))
  rows, cols = jnp.concatenate(rows, axis=-1), jnp.concatenate(cols, axis=-1)
  return both_directions(rows, cols, jnp.ones(rows.shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=("passes", "block_size", "output"))
def _colour_knn_affinity(image_grid, *, passes, block_size, output):
  n = image_grid.shape[-3] * image_grid.shape[-2]
  return edges_to_graph(*_colour_knn_edges(image_grid, passes, True, block_size), n, output)


def colour_knn_affinity(image_grid: jax.Array, *,
                        n_neighbors: Sequence[int] = DSM_N_NEIGHBORS,
                        distance_weights: Sequence[float] = DSM_DISTANCE_WEIGHTS,
                        block_size: int | None = None,
                        output: str = "dense") -> jax.Array | sparse.BCOO:
  """DSM colour–position "KNN matting" affinity ``W_knn`` (SPEC §2; DSM ``knn_affinity``).

  For each pass (k, λ) every grid node links to its k nearest nodes in ``[r, g, b, λ·x, λ·y]``
  space (``colour_knn_indices``), **itself included** (self-loops, always first); edges are binary
  and the matrix adds (i, j) and (j, i), so repeated edges sum: entries lie in
  {0, …, 2·passes} (0..4 for the two reference passes) and the diagonal equals 2·passes.

  Args:
    image_grid: (..., h, w, 3) RGB in [0, 1] at the patch grid (``resize_to_grid``; DSM: the
      "pil" convention).
    n_neighbors: k of each pass (reference (20, 10)); each 1 <= k <= h·w.
    distance_weights: position weight λ of each pass (reference (2.0, 0.1)).
    block_size: query nodes per block (None: the (n, n) distances at once).
    output: "dense" → (..., n, n) float32; "bcoo" → BCOO with 2·n·Σk unit entries that sum.
  Returns:
    W_knn, symmetric, (..., n, n) with n = h·w.
  """
  check_output(output)
  check_image_grid(image_grid, "image_grid")
  passes = check_passes(n_neighbors, distance_weights, image_grid, self_excluded=False)
  check_block_size(block_size)
  return _colour_knn_affinity(image_grid, passes=passes, block_size=block_size, output=output)


def dsm_affinity(features: jax.Array, image_grid: jax.Array | None = None, *,
                 image_weight: float = 0.0,
                 n_neighbors: Sequence[int] = DSM_N_NEIGHBORS,
                 distance_weights: Sequence[float] = DSM_DISTANCE_WEIGHTS,
                 block_size: int | None = None) -> jax.Array:
  """DSM affinity ``W = W_feat + λ·W_knn`` (SPEC §2; the DSM paper's fused affinity).

  ``λ = image_weight`` defaults to 0, the reference command line (features only); the paper
  discusses λ > 0. With a concrete λ = 0 the image is not used (a traced λ always needs it).
  (The reference also divides W_feat by its maximum, which is 1 for normalised features, so that
  step is omitted.)

  Args:
    features: (..., n, d) float patch features.
    image_grid: (..., h, w, 3) RGB in [0, 1] with h·w = n; required when image_weight != 0.
    image_weight: λ.
    n_neighbors, distance_weights, block_size: see ``colour_knn_affinity``.
  Returns:
    (..., n, n) dense affinity.
  """
  check_array(features, "features", min_rank=2, layout="(..., n, d)")
  w_feat = feature_affinity(features)
  if not is_traced(image_weight) and image_weight == 0:
    return w_feat
  if image_grid is None:
    raise ValueError(f"image_weight={image_weight} needs image_grid (the image resized to the "
                     "patch grid, see resize_to_grid)")
  check_image_grid(image_grid, "image_grid")
  h, w = image_grid.shape[-3:-1]
  n = features.shape[-2]
  if h * w != n:
    raise ValueError(f"image_grid is {h}×{w} = {h * w} nodes but features have n={n}; resize the "
                     "image to the patch grid")
  passes = check_passes(n_neighbors, distance_weights, image_grid, self_excluded=False)
  check_block_size(block_size)
  w_knn = _colour_knn_affinity(image_grid, passes=passes, block_size=block_size, output="dense")
  return w_feat + image_weight * w_knn


__all__ = [
    "l2_normalize", "feature_affinity", "degrees", "normalize_symmetric", "colour_knn_indices",
    "colour_knn_affinity", "dsm_affinity",
]
