"""The NeuralEF batch kernel ``G = G₁ + α·G₂`` (SPEC §2; Deng & Luo, eq. 6) and its pixel graph."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import sparse

from spectral_jax.graphs._constants import MIN_DEGREE, NEURALEF_ALPHA
from spectral_jax.graphs._constants import NEURALEF_DISTANCE_WEIGHTS, NEURALEF_K
from spectral_jax.graphs._constants import NEURALEF_N_NEIGHBORS
from spectral_jax.graphs._edges import batched, edges_to_graph
from spectral_jax.graphs._validation import check_array, check_block_size, check_image_grid
from spectral_jax.graphs._validation import check_k, check_output, check_passes
from spectral_jax.graphs.affinity import _colour_knn_edges, normalize_symmetric
from spectral_jax.graphs.knn import _knn_feature_graph


def _first_occurrences(rows, cols, n: int):
  """1.0 for the first occurrence of each (row, col) along the last axis, 0.0 for repeats."""
  def one(r, c):
    key = r * n + c
    order = jnp.argsort(key, stable=True)
    sk = key[order]
    first = jnp.concatenate([jnp.ones(1, bool), sk[1:] != sk[:-1]])
    return jnp.zeros(key.shape, jnp.float32).at[order].set(first.astype(jnp.float32))
  return batched(one, rows.ndim - 1)(rows, cols)


@functools.partial(jax.jit, static_argnames=("passes", "block_size", "output"))
def _pixel_graph(image_grids, *, passes, block_size, output):
  n = image_grids.shape[-3] * image_grids.shape[-2]
  rows, cols, _ = _colour_knn_edges(image_grids, passes, False, block_size)
  return edges_to_graph(rows, cols, _first_occurrences(rows, cols, n), n, output)


def pixel_graph(image_grids: jax.Array, *,
                n_neighbors: Sequence[int] = NEURALEF_N_NEIGHBORS,
                distance_weights: Sequence[float] = NEURALEF_DISTANCE_WEIGHTS,
                block_size: int | None = None,
                output: str = "dense") -> jax.Array | sparse.BCOO:
  """NeuralEF per-image pixel graph (SPEC §2), one (N, N) block per image, not normalised.

  For each pass (k, λ) every grid node links to its k nearest *other* nodes in
  ``[r, g, b, λ·x, λ·y]`` space (``colour_knn_indices``, self excluded); the graph is the OR over
  both directions and all passes: binary, symmetric, zero diagonal. (Reference: k₁ = 10, λ = 2.0
  and k₂ = 5, λ = 0.1 on the image bilinearly downsampled to the grid,
  ``resize_to_grid(..., convention="torch")``.) The batch kernel is the block diagonal of these.

  Args:
    image_grids: (..., h, w, 3) RGB in [0, 1] (NeuralEF: (B, h, w, 3)).
    n_neighbors, distance_weights: the passes; each 1 <= k <= h·w − 1.
    block_size: query nodes per block.
    output: "dense" → (..., N, N) float32 in {0, 1}; "bcoo" → BCOO (..., N, N) with leading batch
      dims and nse = 2·N·Σk per image, repeated edges stored as explicit zeros.
  Returns:
    The per-image graphs, N = h·w.
  """
  check_output(output)
  check_image_grid(image_grids, "image_grids")
  passes = check_passes(n_neighbors, distance_weights, image_grids, self_excluded=True)
  check_block_size(block_size)
  return _pixel_graph(image_grids, passes=passes, block_size=block_size, output=output)


def _block_diagonal_bcoo(blocks: sparse.BCOO) -> sparse.BCOO:
  """BCOO (B, N, N) with one batch dim → 2-D BCOO (B·N, B·N), block b at offset b·N."""
  b, n = blocks.shape[0], blocks.shape[-1]
  idx = blocks.indices + (jnp.arange(b, dtype=blocks.indices.dtype) * n)[:, None, None]
  return sparse.BCOO((blocks.data.reshape(-1), idx.reshape(-1, 2)), shape=(b * n, b * n))


@functools.partial(jax.jit, static_argnames=("k", "passes", "block_size", "output"))
def _neuralef_kernel(features, image_grids, alpha, min_degree, *, k, passes, block_size, output):
  b, n, _ = features.shape
  g1 = _knn_feature_graph(features.reshape(b * n, -1), k=k, block_size=block_size, output=output)
  g2 = _pixel_graph(image_grids, passes=passes, block_size=block_size, output=output)
  g1, g2 = normalize_symmetric(g1, min_degree), normalize_symmetric(g2, min_degree)
  if output == "dense":
    g2 = jnp.einsum("bij,bc->bicj", g2, jnp.eye(b, dtype=g2.dtype)).reshape(b * n, b * n)
    return g1 + alpha * g2.astype(g1.dtype)
  g2 = _block_diagonal_bcoo(g2)
  data = jnp.concatenate([g1.data, alpha * g2.data.astype(g1.data.dtype)])
  return sparse.BCOO((data, jnp.concatenate([g1.indices, g2.indices])), shape=g1.shape)


def neuralef_kernel(features: jax.Array, image_grids: jax.Array, *, k: int = NEURALEF_K,
                    alpha: float = NEURALEF_ALPHA,
                    n_neighbors: Sequence[int] = NEURALEF_N_NEIGHBORS,
                    distance_weights: Sequence[float] = NEURALEF_DISTANCE_WEIGHTS,
                    block_size: int | None = None, output: str = "dense",
                    min_degree: float = MIN_DEGREE) -> jax.Array | sparse.BCOO:
  """NeuralEF batch kernel ``G = G₁ + α·G₂`` over all B·N tokens (SPEC §2; paper eq. 6).

  ``G₁ = D^-½ A D^-½`` of the batch feature graph (``knn_feature_graph`` over the flattened
  tokens, so edges cross images); ``G₂ = D^-½ A D^-½`` of the block-diagonal pixel graph
  (``pixel_graph``, no edges across images). Token t = b·N + p is patch p of image b.

  Args:
    features: (B, N, d) float tokens (the reference uses the high-level features).
    image_grids: (B, h, w, 3) RGB in [0, 1], h·w = N.
    k: feature neighbours per token, 1 <= k <= B·N − 1 (reference 256).
    alpha: pixel-graph weight α (reference 0.3).
    n_neighbors, distance_weights: pixel-graph passes (reference (10, 5), (2.0, 0.1)).
    block_size: query rows per block for both k-NN searches.
    output: "dense" → (B·N, B·N) array; "bcoo" → 2-D BCOO with 2·B·N·(k + Σk) entries that sum.
    min_degree: zero-degree guard of both normalisations.
  Returns:
    G, symmetric (B·N, B·N).
  """
  check_output(output)
  check_array(features, "features", rank=3, layout="(B, N, d)")
  check_image_grid(image_grids, "image_grids", rank=4)
  b, n, _ = features.shape
  if image_grids.shape[0] != b or image_grids.shape[1] * image_grids.shape[2] != n:
    raise ValueError(f"image_grids {image_grids.shape} must be (B, h, w, 3) with B={b} and "
                     f"h·w = N = {n}, matching features {features.shape}")
  check_k(k, b * n, self_excluded=True)
  passes = check_passes(n_neighbors, distance_weights, image_grids, self_excluded=True)
  check_block_size(block_size)
  return _neuralef_kernel(features, image_grids, alpha, min_degree, k=int(k), passes=passes,
                          block_size=block_size, output=output)


__all__ = ["pixel_graph", "neuralef_kernel"]
