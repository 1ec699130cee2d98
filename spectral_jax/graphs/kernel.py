"""The NeuralEF batch kernel ``G = G₁ + α·G₂`` (SPEC §2; Deng & Luo, eq. 6) and its pixel graph.

``neuralef_kernel`` forms G whole; ``batch_kernel_matmul`` gives one device's rows of it as a
matmul (the form the sharded NeuralEF train step uses, with collectives over a mapped axis).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from jax.experimental import sparse

from spectral_jax.graphs._constants import MIN_DEGREE, NEURALEF_ALPHA
from spectral_jax.graphs._constants import NEURALEF_DISTANCE_WEIGHTS, NEURALEF_K
from spectral_jax.graphs._constants import NEURALEF_KERNEL_FORMS, NEURALEF_N_NEIGHBORS
from spectral_jax.graphs._edges import batched, both_directions, edges_to_graph, flat_rows
from spectral_jax.graphs._edges import row_ids
from spectral_jax.graphs._validation import check_array, check_block_size, check_image_grid
from spectral_jax.graphs._validation import check_k, check_output, check_passes
from spectral_jax.graphs.affinity import _colour_knn_edges, normalize_symmetric
from spectral_jax.graphs.knn import _knn_feature_graph, knn_degrees, knn_rows_matmul
from spectral_jax.graphs.knn import ring_source, ring_steps, ring_topk_cosine_rows
from spectral_jax.graphs.knn import topk_cosine_rows


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


def batch_kernel_matmul(graph_features: jax.Array, image_grids: jax.Array, *, k: int,
                        alpha: float, n_neighbors: Sequence[int] = NEURALEF_N_NEIGHBORS,
                        distance_weights: Sequence[float] = NEURALEF_DISTANCE_WEIGHTS,
                        block_size: int | None = None, form: str = "dense",
                        axis_name: str | None = None,
                        min_degree: float = MIN_DEGREE,
                        ring: bool = False) -> Callable[[jax.Array], jax.Array]:
  """This device's rows of the NeuralEF batch kernel, as ``p ↦ G_rows @ p`` (SPEC §2, eq. (4)).

  ``G = D₁^-½ A D₁^-½ + α·D₂^-½ Ã D₂^-½`` over the n = D·m global tokens (token t = b·N + p is
  patch p of global image b), with A = (A₀ + A₀ᵀ)/2 the symmetrised top-k cosine graph of the
  global batch's graph features and Ã the block-diagonal pixel graph. Equal to the rows
  ``[offset, offset + m)`` of `neuralef_kernel` on the global batch (SPEC §5: the NeuralEF train step's kernel, sharded
  over a data axis by ``neuralef.step``).

  Args:
    graph_features: (b, N, C) this device's crops' high-level features (all of them without
      ``axis_name``).
    image_grids: (b, h, w, 3) their RGB grids in [0, 1], h·w = N.
    k: feature neighbours per token (reference 256).
    alpha: pixel-graph weight α (reference 0.3).
    n_neighbors, distance_weights: the pixel graph's passes.
    block_size: query rows per top-k block (None: one (m, n) similarity).
    form: "dense" materialises this device's (m, n) rows of G₁ (fast matmuls; O(m·n) memory);
      "knn" keeps the (m, k) neighbour lists and multiplies by gathers and a ``psum_scatter``
      (O(m·k + n·K) memory, gathers in blocks of rows).
    axis_name: the mapped batch axis inside ``shard_map``/``pmap``, or None.
    min_degree: zero-degree guard of both normalisations.
    ring: hold no gathered (n, ·) array: the top-k rows come from ``ring_topk_cosine_rows``
      (feature blocks go around the device ring) and ``kernel_matmul`` takes this device's
      (m, K) rows of p, passing p's blocks (and, for the knn form, the blocks of the
      transposed product) around the ring while it multiplies the block in hand (the dense
      form also sends the (m, k) neighbour lists around instead of all-gathering them).
      Equal to the gathering form up to float summation order.
  Returns:
    ``kernel_matmul(p)``: (n, K) → (m, K), m = b·N; the form ``neuralef_loss`` accepts. With
    ``ring``: (m, K) → (m, K) (this device's rows of p), flagged by the attribute
    ``takes_local_rows = True`` (``neuralef_loss`` then gathers nothing).
  """
  if form not in NEURALEF_KERNEL_FORMS:
    raise ValueError(f"form must be one of {NEURALEF_KERNEL_FORMS}; got {form!r}")
  chex.assert_rank([graph_features, image_grids], [3, 4])
  b, n_tok, _ = graph_features.shape
  m = b * n_tok
  feats = graph_features.reshape(m, -1)
  ring = bool(ring) and axis_name is not None  # one device: local rows are all the rows
  if axis_name is None:
    all_feats, offset, n = feats, 0, m
  else:
    offset, n = jax.lax.axis_index(axis_name) * m, m * jax.lax.axis_size(axis_name)
  if ring:
    values, indices = ring_topk_cosine_rows(feats, k, axis_name=axis_name,
                                            block_size=block_size)
  else:
    if axis_name is not None:
      all_feats = jax.lax.all_gather(feats, axis_name, tiled=True)
    values, indices = topk_cosine_rows(feats, all_feats, k, row_offset=offset,
                                       block_size=block_size)
  scale = jax.lax.rsqrt(knn_degrees(values, indices, n, row_offset=offset,
                                           axis_name=axis_name, min_degree=min_degree))
  scale_rows = jax.lax.dynamic_slice_in_dim(scale, offset, m)
  pixels = normalize_symmetric(
      pixel_graph(image_grids, n_neighbors=n_neighbors, distance_weights=distance_weights,
                         output="bcoo"), min_degree)

  if ring:
    feature_part = _ring_feature_part(values, indices, scale, offset, form, block_size,
                                      axis_name)
  elif form == "dense":
    # A's edges as knn_feature_graph forms them (A₀'s edges of every device, both
    # directions, halved), kept where the row is one of ours: this device's (m, n) rows of A.
    all_values, all_indices = values, indices
    if axis_name is not None:
      all_values = jax.lax.all_gather(values, axis_name, tiled=True)
      all_indices = jax.lax.all_gather(indices, axis_name, tiled=True)
    rows, cols, data = both_directions(row_ids(all_values.shape), flat_rows(all_indices),
                                       flat_rows(all_values) / 2)
    rows = rows - offset
    rows = jnp.where((rows >= 0) & (rows < m), rows, m)  # m is out of range: dropped
    a_rows = jnp.zeros((m, n), values.dtype).at[rows, cols].add(data, mode="drop")
    g1_rows = scale_rows[:, None] * a_rows * scale[None, :]
    feature_part = lambda p: g1_rows @ p
  else:
    def feature_part(p):
      q = scale[:, None] * p
      q_rows = jax.lax.dynamic_slice_in_dim(q, offset, m)
      out_edges, in_edges = _knn_products(values, indices, q, q_rows, block_size)
      if axis_name is not None:                                              # (A₀ᵀ q)_rows
        in_edges = jax.lax.psum_scatter(in_edges, axis_name, scatter_dimension=0, tiled=True)
      return scale_rows[:, None] * (out_edges + in_edges) / 2

  def kernel_matmul(p: jax.Array) -> jax.Array:
    p_rows = p if ring else jax.lax.dynamic_slice_in_dim(p, offset, m)
    pix = sparse.bcoo_dot_general(pixels, p_rows.reshape(b, n_tok, -1).astype(pixels.dtype),
                                  dimension_numbers=(([2], [1]), ([0], [0])))
    return feature_part(p) + alpha * pix.reshape(m, -1).astype(p.dtype)

  kernel_matmul.takes_local_rows = ring or axis_name is None
  return kernel_matmul


def _ring_feature_part(values, indices, scale, offset, form, block_size, axis_name):
  """``p_rows ↦ (D^-½ A D^-½ p)_rows`` from this device's (m, k) rows of A₀, with p's row blocks
  passed around the ring (`ring_steps`): no (n, ·) array but the (n,) scale."""
  m = values.shape[0]
  scale_rows = jax.lax.dynamic_slice_in_dim(scale, offset, m)

  if form == "dense":
    # This device's (m, n) rows of A = (A₀ + A₀ᵀ)/2: its own edges, then every device's edges
    # (i → c) with c among our rows, as (c, i), while the (m, k) lists go around the ring.
    a_rows = jnp.zeros((m, scale.shape[0]), values.dtype).at[
        jnp.arange(m)[:, None], indices].add(values / 2)

    def add_incoming(j, a, edges):
      v, i = edges
      t = i - offset
      t = jnp.where((t >= 0) & (t < m), t, m)          # m is out of range: dropped
      cols = ring_source(j, axis_name) * m + jnp.arange(m)[:, None]
      return a.at[t, jnp.broadcast_to(cols, t.shape)].add(v / 2, mode="drop"), edges

    a_rows, _ = ring_steps(add_incoming, a_rows, (values, indices), axis_name)
    g1_rows = scale_rows[:, None] * a_rows * scale[None, :]

    def multiply(j, out, p_blk):
      cols = jax.lax.dynamic_slice_in_dim(g1_rows, ring_source(j, axis_name) * m, m, axis=1)
      return out + cols @ p_blk, p_blk

    return lambda p: ring_steps(multiply, jnp.zeros_like(p), p, axis_name)[0]

  def feature_part(p):
    q_rows = scale_rows[:, None] * p
    out, in_edges = _ring_knn_products(values, indices, q_rows, block_size, axis_name)
    return scale_rows[:, None] * (out + in_edges) / 2
  return feature_part


def _ring_knn_products(values, indices, q_rows, block_size, axis_name):
  """``(A₀[rows] q, (A₀ᵀ q)_rows)`` for q sharded by rows (this device's (m, c) ``q_rows``).

  One ring: q's blocks travel (for A₀[rows] q) and so do partial sums of A₀ᵀq (a ring
  reduce-scatter: at step j this device adds its edges into the block of device
  (d − 1 − j) mod D, whose sum arrives home at the last step). The m·k edges are sorted by
  their column once, so each step touches only the edges into the block it needs (a
  ``while_loop`` over chunks of that range): over the ring every edge is gathered and scattered
  once, as in the gathering form, plus at most one partial chunk per block. A chunk's (edges,
  c) gather is the size of one top-k block against a device's m keys (``block_size`` × m
  floats; ``block_size=None``: all edges at once).
  """
  m, k = values.shape
  c = q_rows.shape[1]
  d = jax.lax.axis_size(axis_name)
  e = m * k
  size = e if block_size is None else int(min(e, max(1, block_size * m // c)))
  order = jnp.argsort(indices.reshape(-1), stable=True)
  pad = lambda a, fill: jnp.concatenate([a, jnp.full((size,), fill, a.dtype)])
  cols = pad(indices.reshape(-1)[order], 0)
  rows = pad((order // k).astype(jnp.int32), 0)
  vals = pad(values.reshape(-1)[order].astype(q_rows.dtype), 0)
  bounds = jnp.searchsorted(cols[:e], jnp.arange(d + 1) * m).astype(jnp.int32)  # per block

  def over_edges_into(block, acc, add):
    """``add(acc, rows, local cols, values)`` over the chunks of edges into ``block``."""
    stop = bounds[block + 1]

    def body(state):
      pos, acc = state
      take = lambda a: jax.lax.dynamic_slice_in_dim(a, pos, size)
      v = jnp.where(pos + jnp.arange(size) < stop, take(vals), 0)  # past the range: weight 0
      local = jnp.clip(take(cols) - block * m, 0, m - 1)
      return pos + size, add(acc, take(rows), local, v)

    return jax.lax.while_loop(lambda state: state[0] < stop, body, (bounds[block], acc))[1]

  def step(j, out, moving):
    q_blk, partial = moving
    out = over_edges_into(ring_source(j, axis_name), out, lambda acc, r, col, v: acc.at[r].add(
        v[:, None] * q_blk[col]))
    partial = over_edges_into(ring_source(j + 1 - d, axis_name), partial,   # (d − 1 − j) mod D
                              lambda acc, r, col, v: acc.at[col].add(v[:, None] * q_rows[r]))
    return out, (q_blk, partial)

  zeros = jnp.zeros_like(q_rows)
  out, (_, in_edges) = ring_steps(step, zeros, (q_rows, zeros), axis_name)
  return out, in_edges


def _knn_products(values, indices, q, q_rows, block_size):
  """``(A₀[rows] q, A₀[rows]ᵀ q_rows)`` from (m, k) neighbour lists, (n, c) q, (m, c) q_rows.

  Both products touch (rows, k, c) gathered/scattered values; they are formed for a block of
  rows at a time (a ``scan`` accumulating the (n, c) scatter), with as many rows as keep that
  block the size of a top-k block (``block_size`` × n floats). ``block_size=None``: all rows.
  """
  m, k = values.shape
  n, c = q.shape
  rows = m if block_size is None else int(min(m, max(1, block_size * n // (k * c))))
  pad = -m % rows
  padded = lambda a: jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(
      (m + pad) // rows, rows, *a.shape[1:])

  def block(acc, blk):
    v, i, qr = blk
    out = knn_rows_matmul(v, i, q)
    return acc.at[i].add(v[..., None].astype(q.dtype) * qr[:, None, :]), out

  in_edges, out_edges = jax.lax.scan(block, jnp.zeros_like(q),
                                     (padded(values), padded(indices), padded(q_rows)))
  return out_edges.reshape(m + pad, c)[:m], in_edges


__all__ = ["batch_kernel_matmul", "neuralef_kernel", "pixel_graph"]
