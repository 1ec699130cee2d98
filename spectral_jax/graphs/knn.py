"""Blockwise cosine k-nearest-neighbour rows and the NeuralEF feature graph (SPEC §2).

Query rows are processed in blocks, so peak memory is O(block_size·n + m·k) instead of O(n²):
``topk_cosine_rows`` (rows of A₀), ``knn_degrees`` and ``knn_rows_matmul`` (kernel rows sharded
over devices) and ``knn_feature_graph`` (``A = (A₀ + A₀ᵀ)/2``, dense or BCOO).
``ring_topk_cosine_rows`` gives the sharded rows of A₀ without gathering the keys: they travel
around the device ring (``ring_steps``) while each device computes on the block in hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from jax.experimental import sparse

from spectral_jax.graphs._constants import MIN_DEGREE, NEURALEF_K
from spectral_jax.graphs._edges import both_directions, edges_to_graph, flat_rows, map_rows
from spectral_jax.graphs._edges import row_ids
from spectral_jax.graphs._validation import check_array, check_block_size, check_k
from spectral_jax.graphs._validation import check_output, compute_dtype
from spectral_jax.graphs.affinity import l2_normalize


def _topk_cosine_2d(queries, keys, row_offset, k, block_size, precision):
  dtype = compute_dtype(queries)
  q = l2_normalize(queries.astype(dtype))
  kn = l2_normalize(keys.astype(dtype))
  cols = jnp.arange(kn.shape[0])

  def row(args):
    qi, i = args
    s = jnp.dot(kn, qi, precision=precision)
    s = jnp.where(s > 0, s, jnp.zeros_like(s))  # clamp ≥ 0 (+0.0, never -0.0 or NaN)
    s = jnp.where(cols == i, -jnp.inf, s)       # self excluded
    return tuple(jax.lax.top_k(s, k))

  ids = row_offset + jnp.arange(q.shape[0])
  return map_rows(row, (q, ids), block_size)


@functools.partial(jax.jit, static_argnames=("k", "block_size", "precision"))
def _topk_cosine_rows(queries, keys, row_offset, *, k, block_size, precision):
  core = lambda q, kk: _topk_cosine_2d(q, kk, row_offset, k, block_size, precision)
  return jnp.vectorize(core, signature="(m,d),(n,d)->(m,k),(m,k)")(queries, keys)


def topk_cosine_rows(queries: jax.Array, keys: jax.Array, k: int, *,
                     row_offset: int | jax.Array = 0, block_size: int | None = None,
                     precision=jax.lax.Precision.HIGHEST) -> tuple[jax.Array, jax.Array]:
  """Rows of the NeuralEF feature k-NN graph A₀ (SPEC §2): cosine top-k, self excluded.

  For each query row i (which is key row ``row_offset + i``): cosine similarities to all n keys,
  negatives clamped to 0, the key itself excluded, then the k largest (lower index wins ties, so
  rows with fewer than k positive similarities list the lowest-index zero entries with value 0).
  The reference excludes the diagonal with -inf *before* clamping, which makes it 0; the
  resulting matrix A₀ is the same.

  Query rows are processed ``block_size`` at a time (``lax.map``), so peak memory is
  O(block_size·n + m·k); ``block_size=None`` computes the full (m, n) similarity at once.
  Works under ``jit`` and inside ``shard_map``: ``row_offset`` may be traced (e.g.
  ``lax.axis_index('data') * m`` with all-gathered keys).

  Args:
    queries: (..., m, d) float features of the query rows (need not be normalised).
    keys: (..., n, d) float features of all nodes (the same space as ``queries``).
    k: neighbours per row, 1 <= k <= n - 1 (static).
    row_offset: index of the first query row among the keys (int or traced int32 scalar).
    block_size: query rows per block, or None for one dense block (static).
    precision: matmul precision of the similarities (default HIGHEST: full float32 on TPU/GPU;
      the reference ran this product under fp16 autocast).
  Returns:
    values: (..., m, k) similarities in [0, 1], descending per row, float32 (or wider).
    indices: (..., m, k) int32 key indices.
  """
  check_array(queries, "queries", min_rank=2, layout="(..., m, d)")
  check_array(keys, "keys", min_rank=2, layout="(..., n, d)")
  if queries.shape[-1] != keys.shape[-1]:
    raise ValueError(f"queries and keys must share the feature size d; got {queries.shape} and "
                     f"{keys.shape}")
  check_k(k, keys.shape[-2], self_excluded=True)
  check_block_size(block_size)
  return _topk_cosine_rows(queries, keys, row_offset, k=int(k), block_size=block_size,
                           precision=precision)


def ring_steps(step: Callable, carry, moving, axis_name: str):
  """A ring over the D devices of ``axis_name``: D calls of ``step``, ``moving`` passed on after each.

  ``step(j, carry, moving) -> (carry, moving)`` runs for j = 0 … D−1; after each call but the
  last, the returned ``moving`` goes to the next device (``ppermute`` d → d+1 mod D), so at step
  j device d holds what device (d − j) mod D started with (`ring_source`). The send of a part
  that ``step`` returns unchanged depends only on the step's input, so it may overlap the
  step's compute. A ``fori_loop`` over D − 1 sends, then the last step.

  Returns:
    The final ``(carry, moving)``.
  """
  d = jax.lax.axis_size(axis_name)
  perm = [(i, (i + 1) % d) for i in range(d)]

  def body(j, state):
    carry, moving = step(j, *state)
    return carry, jax.lax.ppermute(moving, axis_name, perm)

  carry, moving = jax.lax.fori_loop(0, d - 1, body, (carry, moving))
  return step(d - 1, carry, moving)


def ring_source(j, axis_name: str) -> jax.Array:
  """The device whose block this device holds at step ``j`` of `ring_steps`: (d − j) mod D."""
  d = jax.lax.axis_size(axis_name)
  return (jax.lax.axis_index(axis_name) - j) % d


def _merge_topk(values, indices, more_values, more_indices, k):
  """The k best of two (…, a) and (…, b) candidate lists: larger value first, then lower index
  (the order ``lax.top_k`` gives over one list of ascending indices)."""
  v = jnp.concatenate([values, more_values], axis=-1)
  i = jnp.concatenate([indices, more_indices], axis=-1)
  neg, i = jax.lax.sort((-v, i), dimension=-1, num_keys=2)
  return -neg[..., :k], i[..., :k]


@functools.partial(jax.jit, static_argnames=("k", "axis_name", "block_size", "precision"))
def _ring_topk_cosine_rows(queries, *, k, axis_name, block_size, precision):
  m = queries.shape[0]
  d = jax.lax.axis_size(axis_name)
  kb = min(k, m)                                       # candidates a key block can give
  q = l2_normalize(queries.astype(compute_dtype(queries)))
  ids = jax.lax.axis_index(axis_name) * m + jnp.arange(m)
  cols = jnp.arange(m)

  def step(j, carry, keys):
    start = ring_source(j, axis_name) * m

    def row(args):
      qi, i, best_v, best_i = args
      s = jnp.dot(keys, qi, precision=precision)
      s = jnp.where(s > 0, s, jnp.zeros_like(s))       # clamp ≥ 0 as topk_cosine_rows
      s = jnp.where(start + cols == i, -jnp.inf, s)    # self excluded
      v, local = jax.lax.top_k(s, kb)
      return _merge_topk(best_v, best_i, v, start + local, k)

    return map_rows(row, (q, ids, *carry), block_size), keys

  # Start from k placeholders that lose to every key (−inf, index n): self is −inf too but a
  # lower index, and the n − 1 ≥ k other keys all score ≥ 0, so none of them survives.
  # (``full_like`` of q: a per-device value, as shard_map wants a loop's carry to stay.)
  start = (jnp.full_like(q, -jnp.inf, shape=(m, k)),
           jnp.full_like(q, d * m, shape=(m, k), dtype=jnp.int32))
  (values, indices), _ = ring_steps(step, start, q, axis_name)
  return values, indices


def ring_topk_cosine_rows(queries: jax.Array, k: int, *, axis_name: str,
                          block_size: int | None = None,
                          precision=jax.lax.Precision.HIGHEST) -> tuple[jax.Array, jax.Array]:
  """``topk_cosine_rows`` of this device's rows against the whole batch, without gathering it.

  Inside ``shard_map``/``pmap`` over ``axis_name`` (D devices, m rows each): equal to
  ``topk_cosine_rows(queries, all_gather(queries), k, row_offset=axis_index·m)`` (same values,
  same indices, ties to the lower global index), but the (n, d) keys are never held: the
  normalised (m, d) blocks go around the device ring (`ring_steps`), and each device merges the
  top-k of the block in hand into its running top-k (a sort on (value ↓, index ↑) over 2k
  candidates) while the next block is in flight. Peak memory O(block_size·m + m·k + m·d);
  each device sends (D − 1)·m·d floats (an all-gather's traffic).

  Args:
    queries: (m, d) this device's features (need not be normalised).
    k: neighbours per row, 1 <= k <= D·m − 1 (static).
    axis_name: the mapped axis (static).
    block_size: query rows per block of the similarity (None: one (m, m) block per step).
    precision: matmul precision of the similarities (as ``topk_cosine_rows``).
  Returns:
    values: (m, k) similarities in [0, 1], descending per row.
    indices: (m, k) int32 global key indices (device e's rows are e·m … e·m + m − 1).
  """
  check_array(queries, "queries", rank=2, layout="(m, d)")
  check_k(k, queries.shape[0] * jax.lax.axis_size(axis_name), self_excluded=True)
  check_block_size(block_size)
  return _ring_topk_cosine_rows(queries, k=int(k), axis_name=axis_name, block_size=block_size,
                                precision=precision)


def knn_degrees(values: jax.Array, indices: jax.Array, n: int, *,
                row_offset: int | jax.Array = 0, axis_name: str | None = None,
                min_degree: float = MIN_DEGREE) -> jax.Array:
  """Degrees of the symmetrised graph ``A = (A₀ + A₀ᵀ)/2`` from rows of A₀ (SPEC §2).

  ``d_i = (Σ_j A₀[i, j] + Σ_j A₀[j, i]) / 2``: the row sums of the given rows plus their
  contributions to the columns. In a ``shard_map`` where each device holds m rows of A₀
  (``topk_cosine_rows`` with ``row_offset = axis_index * m``), pass ``axis_name`` to ``psum``
  the partial degrees into the full vector on every device. Then ``D^-½`` follows with the
  zero-degree guard, and the kernel's quadratic form is
  ``Ψᵀ G₁ Ψ = (M + Mᵀ)/2`` with ``M = psum(Ψ̃_rowsᵀ · knn_rows_matmul(values, indices, Ψ̃))``,
  ``Ψ̃ = D^-½ Ψ`` (all-gathered).

  Args:
    values: (m, k) non-negative edge weights of rows ``row_offset .. row_offset+m-1`` of A₀.
    indices: (m, k) int column indices in [0, n).
    n: number of nodes (static).
    row_offset: first row index (int or traced).
    axis_name: mapped axis to ``psum`` over, or None.
    min_degree: degrees below this become 1.
  Returns:
    (n,) degrees of A, float (values' dtype).
  """
  chex.assert_rank([values, indices], 2)
  chex.assert_equal_shape([values, indices])
  row_part = jax.lax.dynamic_update_slice(jnp.zeros(n, values.dtype), values.sum(-1),
                                          (row_offset,))
  col_part = jnp.zeros(n, values.dtype).at[indices.reshape(-1)].add(values.reshape(-1))
  d = (row_part + col_part) / 2
  if axis_name is not None:
    d = jax.lax.psum(d, axis_name)
  return jnp.where(d < min_degree, jnp.ones_like(d), d)


def knn_rows_matmul(values: jax.Array, indices: jax.Array, x: jax.Array) -> jax.Array:
  """``A₀[rows] @ x`` from k-NN rows: (m, k) values/indices and (n, c) ``x`` → (m, c).

  O(m·k·c) gathers; no (m, n) matrix is formed.
  """
  chex.assert_rank([values, indices, x], [2, 2, 2])
  return jnp.einsum("mk,mkc->mc", values.astype(x.dtype), x[indices])


@functools.partial(jax.jit, static_argnames=("k", "block_size", "output"))
def _knn_feature_graph(features, *, k, block_size, output):
  values, indices = _topk_cosine_rows(features, features, 0, k=k, block_size=block_size,
                                      precision=jax.lax.Precision.HIGHEST)
  rows, cols, data = both_directions(row_ids(values.shape), flat_rows(indices),
                                     flat_rows(values) / 2)
  return edges_to_graph(rows, cols, data, features.shape[-2], output)


def knn_feature_graph(features: jax.Array, k: int = NEURALEF_K, *,
                      block_size: int | None = None,
                      output: str = "dense") -> jax.Array | sparse.BCOO:
  """NeuralEF batch feature graph ``A = (A₀ + A₀ᵀ)/2`` (SPEC §2), not normalised.

  A₀ holds, per row, the top-k clamped cosine similarities to the other nodes (see
  ``topk_cosine_rows``); A is symmetric, weighted, with a zero diagonal. For NeuralEF the nodes are
  all B·N tokens of a mini-batch (flatten the batch first).

  Args:
    features: (..., n, d) float features (NeuralEF: the backbone's high-level tokens).
    k: neighbours per row, 1 <= k <= n - 1 (reference: 256).
    block_size: query rows per block (None: one (n, n) block).
    output: "dense" → (..., n, n) array; "bcoo" → BCOO (..., n, n) with 2·n·k entries (both
      directions of every A₀ edge at half weight; entries may repeat and then sum).
  Returns:
    The symmetrised graph, values in [0, 1].
  """
  check_output(output)
  check_array(features, "features", min_rank=2, layout="(..., n, d)")
  check_k(k, features.shape[-2], self_excluded=True)
  check_block_size(block_size)
  return _knn_feature_graph(features, k=int(k), block_size=block_size, output=output)


__all__ = ["topk_cosine_rows", "ring_topk_cosine_rows", "ring_steps", "ring_source",
           "knn_degrees", "knn_rows_matmul", "knn_feature_graph"]
