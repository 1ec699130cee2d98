"""Affinity graphs and kernels over patch features and pixels (SPEC §2).

Every function is pure and jit-able; leading batch dimensions are written ``...``.

DSM (Melas-Kyriazi et al. 2022, §3.1): per image, ``W = W_feat + λ·W_knn`` with
``W_feat = relu(F̂ F̂ᵀ)``; the eigenproblem is ``(D − W) y = λ D y``.
NeuralEF segmentation (Deng & Luo, eq. 6): per batch, ``G = G₁ + α·G₂``.

Layers, bottom up:

* ``resize_to_grid``: an image brought to the patch grid (PIL or PyTorch bilinear).
* k-nearest-neighbour rows, computed in blocks of query rows so that peak memory is
  O(block_size·n + m·k) instead of O(n²): ``topk_cosine_rows`` (features; with ``knn_degrees`` and
  ``knn_rows_matmul`` for kernel rows sharded over devices) and ``colour_knn_indices``
  (colour–position).
* Graphs: ``feature_affinity`` / ``colour_knn_affinity`` / ``dsm_affinity`` (DSM) and
  ``knn_feature_graph`` / ``pixel_graph`` / ``neuralef_kernel`` (NeuralEF).
* ``degrees`` / ``normalize_symmetric``: ``D^-½ W D^-½`` with the zero-degree guard.

Sparse graphs are ``jax.experimental.sparse.BCOO`` matrices (the primary sparse form: it has static
shapes, works under jit/vmap and in ``@``/``todense``). Their ``nse`` is a static upper bound:
entries may repeat (repeats **sum**, as in SciPy's COO), and the pixel graph stores its OR-ed
duplicates as explicit zeros. ``to_graphs_tuple`` turns a 2-D BCOO matrix into a
``jraph.GraphsTuple``.

Neighbour ties: every k-nearest-neighbour search here ranks by score with ``jax.lax.top_k``, so
among equal scores the **lower index wins** (a stable sort). Colour–position distances are
computed from integer grid offsets (see ``colour_knn_indices``), so neighbours at the same
geometric distance in a flat-colour region tie exactly and the rule decides. (The references
leave ties to their KD-tree / ``torch.topk``.)

Validation: ranks, dtypes and ``k`` are checked at trace time (ValueError/TypeError). NaN/Inf
checks and the [0, 1] range check of images run only on concrete inputs, i.e. in eager calls, not
under ``jit``/``shard_map`` tracing (a traced value cannot be inspected without a host sync).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from spectral_jax._checks import all_finite, is_traced, value_range

# Degrees below this are treated as 1 (isolated nodes), as the DSM reference does.
MIN_DEGREE = 1e-12

# SPEC §2 reference values.
DSM_N_NEIGHBORS = (20, 10)
DSM_DISTANCE_WEIGHTS = (2.0, 0.1)
NEURALEF_K = 256
NEURALEF_N_NEIGHBORS = (10, 5)
NEURALEF_DISTANCE_WEIGHTS = (2.0, 0.1)
NEURALEF_ALPHA = 0.3

_OUTPUTS = ("dense", "bcoo")


# ----------------------------------------------------------------------------- validation


def _check_array(x, name: str, rank: int | None = None, min_rank: int | None = None,
                 layout: str = "") -> None:
  """Rank and float-dtype checks (trace-time), NaN/Inf check (eager only)."""
  ndim = np.ndim(x)
  if rank is not None and ndim != rank:
    raise ValueError(f"{name} must have rank {rank} {layout}; got shape {np.shape(x)}")
  if min_rank is not None and ndim < min_rank:
    raise ValueError(f"{name} must have rank >= {min_rank} {layout}; got shape {np.shape(x)}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f"{name} must be a float array; got dtype {jnp.result_type(x)}. "
                    "Cast it with .astype(jnp.float32).")
  if not is_traced(x) and not all_finite(x):
    raise ValueError(f"{name} contains NaN or Inf values; clean the input before building a graph")


def _check_unit_range(image, name: str) -> None:
  """Colour values must lie in [0, 1] (eager only)."""
  if not is_traced(image) and np.size(image):
    lo, hi = value_range(image)
    if lo < -1e-6 or hi > 1 + 1e-6:
      raise ValueError(
          f"{name} must hold RGB values in [0, 1]; got range [{lo:.4g}, {hi:.4g}]. "
          "Divide uint8 images by 255 (resize_to_grid does this).")


def _check_k(k, n: int, *, self_excluded: bool, name: str = "k") -> None:
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"{name} must be a Python int (it fixes output shapes); got {k!r}")
  limit = n - 1 if self_excluded else n
  what = "n - 1 (self is excluded)" if self_excluded else "n (self counts as a neighbour)"
  if k < 1 or k > limit:
    raise ValueError(f"{name}={k} neighbours requested but n={n} nodes allow at most {what}; "
                     f"choose 1 <= {name} <= {limit}")


def _check_output(output: str) -> None:
  if output not in _OUTPUTS:
    raise ValueError(f"output must be one of {_OUTPUTS}; got {output!r}")


def _compute_dtype(x) -> jnp.dtype:
  """At least float32 (bf16/f16 features are compared in float32)."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


# ----------------------------------------------------------------------------- dense basics


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


def _batched(fn: Callable, n_batch: int) -> Callable:
  """``fn`` vmapped over ``n_batch`` leading axes."""
  for _ in range(n_batch):
    fn = jax.vmap(fn)
  return fn


def _segment_row_sums(data: jax.Array, rows: jax.Array, n: int, n_batch: int) -> jax.Array:
  return _batched(lambda d, r: jax.ops.segment_sum(d, r, num_segments=n), n_batch)(data, rows)


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
    take = _batched(lambda v, i: v[i], w.n_batch)
    data = w.data * take(s, w.indices[..., 0]) * take(s, w.indices[..., 1])
    return sparse.BCOO((data, w.indices), shape=w.shape)
  return s[..., :, None] * w * s[..., None, :]


# ----------------------------------------------------------------------------- resizing


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


# ----------------------------------------------------------------------------- blockwise top-k


def _check_block_size(block_size) -> None:
  if block_size is not None and (not isinstance(block_size, (int, np.integer))
                                 or isinstance(block_size, bool) or block_size < 1):
    raise ValueError(f"block_size must be a positive int or None; got {block_size!r}")


def _map_rows(row_fn: Callable, xs, block_size: int | None):
  """Applies ``row_fn`` to every leading-axis slice of ``xs``: all at once (vmap) when
  ``block_size`` is None, else ``block_size`` rows at a time (``lax.map``), so that the per-row
  intermediates only ever exist for one block."""
  if block_size is None:
    return jax.vmap(row_fn)(xs)
  return jax.lax.map(row_fn, xs, batch_size=int(block_size))


def _topk_cosine_2d(queries, keys, row_offset, k, block_size, precision):
  dtype = _compute_dtype(queries)
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
  return _map_rows(row, (q, ids), block_size)


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
  _check_array(queries, "queries", min_rank=2, layout="(..., m, d)")
  _check_array(keys, "keys", min_rank=2, layout="(..., n, d)")
  if queries.shape[-1] != keys.shape[-1]:
    raise ValueError(f"queries and keys must share the feature size d; got {queries.shape} and "
                     f"{keys.shape}")
  _check_k(k, keys.shape[-2], self_excluded=True)
  _check_block_size(block_size)
  return _topk_cosine_rows(queries, keys, row_offset, k=int(k), block_size=block_size,
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


# ----------------------------------------------------------------------------- edge lists


def _row_ids(shape) -> jax.Array:
  """Row index of every entry of (..., m, k) row lists, flattened to (..., m·k)."""
  *lead, m, k = shape
  rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], (*lead, m, k))
  return rows.reshape(*lead, m * k)


def _flat_rows(a: jax.Array) -> jax.Array:
  return a.reshape(*a.shape[:-2], -1)


def _both_directions(rows, cols, data):
  """Each edge (i, j) also as (j, i): the edges of ``E + Eᵀ``."""
  cat = lambda a, b: jnp.concatenate([a, b], axis=-1)
  return cat(rows, cols), cat(cols, rows), cat(data, data)


def _edges_to_graph(rows, cols, data, n: int, output: str) -> jax.Array | sparse.BCOO:
  """Edges with leading batch dims (..., e) → (..., n, n) dense (repeats summed) or BCOO."""
  if output == "bcoo":
    return sparse.BCOO((data, jnp.stack([rows, cols], axis=-1)), shape=(*data.shape[:-1], n, n))
  scatter = lambda r, c, v: jnp.zeros((n, n), v.dtype).at[r, c].add(v)
  return _batched(scatter, data.ndim - 1)(rows, cols, data)


# ----------------------------------------------------------------------------- feature graph


@functools.partial(jax.jit, static_argnames=("k", "block_size", "output"))
def _knn_feature_graph(features, *, k, block_size, output):
  values, indices = _topk_cosine_rows(features, features, 0, k=k, block_size=block_size,
                                      precision=jax.lax.Precision.HIGHEST)
  rows, cols, data = _both_directions(_row_ids(values.shape), _flat_rows(indices),
                                      _flat_rows(values) / 2)
  return _edges_to_graph(rows, cols, data, features.shape[-2], output)


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
  _check_output(output)
  _check_array(features, "features", min_rank=2, layout="(..., n, d)")
  _check_k(k, features.shape[-2], self_excluded=True)
  _check_block_size(block_size)
  return _knn_feature_graph(features, k=int(k), block_size=block_size, output=output)


# ----------------------------------------------------------------------------- colour–position k-NN


def _colour_knn_2d(image_grid, distance_weight, k, include_self, block_size):
  h, w, c = image_grid.shape
  colours = image_grid.reshape(h * w, c).astype(_compute_dtype(image_grid))
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

  return _map_rows(row, (colours, ids), block_size)


@functools.partial(jax.jit, static_argnames=("k", "distance_weight", "include_self",
                                             "block_size"))
def _colour_knn_indices(image_grid, *, k, distance_weight, include_self, block_size):
  core = lambda g: _colour_knn_2d(g, distance_weight, k, include_self, block_size)
  return jnp.vectorize(core, signature="(h,w,c)->(n,k)")(image_grid)


def _check_image_grid(image_grid, name: str, rank: int | None = None) -> None:
  layout = "(..., h, w, C)" if rank is None else "(B, h, w, C)"
  _check_array(image_grid, name, rank=rank, min_rank=3, layout=layout)
  _check_unit_range(image_grid, name)


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
  _check_image_grid(image_grid, "image_grid")
  _check_k(k, image_grid.shape[-3] * image_grid.shape[-2], self_excluded=not include_self)
  _check_block_size(block_size)
  return _colour_knn_indices(image_grid, k=int(k), distance_weight=float(distance_weight),
                             include_self=bool(include_self), block_size=block_size)


def _passes(n_neighbors, distance_weights, image_grid, *, self_excluded: bool):
  """Validated passes as a hashable tuple of (k, weight)."""
  if len(n_neighbors) != len(distance_weights) or not n_neighbors:
    raise ValueError("n_neighbors and distance_weights must be non-empty and of equal length; got "
                     f"{tuple(n_neighbors)} and {tuple(distance_weights)}")
  n = image_grid.shape[-3] * image_grid.shape[-2]
  for k in n_neighbors:
    _check_k(k, n, self_excluded=self_excluded, name="n_neighbors entry")
  return tuple((int(k), float(w)) for k, w in zip(n_neighbors, distance_weights))


def _colour_knn_edges(image_grid, passes, include_self, block_size):
  """Directed k-NN edges of all passes, E + Eᵀ, batched over leading dims: (..., 2·n·Σk)."""
  rows, cols = [], []
  for k, weight in passes:
    idx = _colour_knn_indices(image_grid, k=k, distance_weight=weight,
                              include_self=include_self, block_size=block_size)
    rows.append(_row_ids(idx.shape))
    cols.append(_flat_rows(idx))
  rows, cols = jnp.concatenate(rows, axis=-1), jnp.concatenate(cols, axis=-1)
  return _both_directions(rows, cols, jnp.ones(rows.shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=("passes", "block_size", "output"))
def _colour_knn_affinity(image_grid, *, passes, block_size, output):
  n = image_grid.shape[-3] * image_grid.shape[-2]
  return _edges_to_graph(*_colour_knn_edges(image_grid, passes, True, block_size), n, output)


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
  _check_output(output)
  _check_image_grid(image_grid, "image_grid")
  passes = _passes(n_neighbors, distance_weights, image_grid, self_excluded=False)
  _check_block_size(block_size)
  return _colour_knn_affinity(image_grid, passes=passes, block_size=block_size, output=output)


def dsm_affinity(features: jax.Array, image_grid: jax.Array | None = None, *,
                 image_weight: float = 0.0,
                 n_neighbors: Sequence[int] = DSM_N_NEIGHBORS,
                 distance_weights: Sequence[float] = DSM_DISTANCE_WEIGHTS,
                 block_size: int | None = None) -> jax.Array:
  """DSM affinity ``W = W_feat + λ·W_knn`` (SPEC §2; the DSM paper's fused affinity).

  ``λ = image_weight`` defaults to 0, the reference command line (features only); the paper
  discusses λ > 0. With a concrete λ = 0 the image is not used (a traced λ always needs it). (The reference also divides W_feat by its
  maximum, which is 1 for normalised features, so that step is omitted.)

  Args:
    features: (..., n, d) float patch features.
    image_grid: (..., h, w, 3) RGB in [0, 1] with h·w = n; required when image_weight != 0.
    image_weight: λ.
    n_neighbors, distance_weights, block_size: see ``colour_knn_affinity``.
  Returns:
    (..., n, n) dense affinity.
  """
  _check_array(features, "features", min_rank=2, layout="(..., n, d)")
  w_feat = feature_affinity(features)
  if not is_traced(image_weight) and image_weight == 0:
    return w_feat
  if image_grid is None:
    raise ValueError(f"image_weight={image_weight} needs image_grid (the image resized to the "
                     "patch grid, see resize_to_grid)")
  _check_image_grid(image_grid, "image_grid")
  h, w = image_grid.shape[-3:-1]
  n = features.shape[-2]
  if h * w != n:
    raise ValueError(f"image_grid is {h}×{w} = {h * w} nodes but features have n={n}; resize the "
                     "image to the patch grid")
  passes = _passes(n_neighbors, distance_weights, image_grid, self_excluded=False)
  _check_block_size(block_size)
  w_knn = _colour_knn_affinity(image_grid, passes=passes, block_size=block_size, output="dense")
  return w_feat + image_weight * w_knn


# ----------------------------------------------------------------------------- NeuralEF kernel


def _first_occurrences(rows, cols, n: int):
  """1.0 for the first occurrence of each (row, col) along the last axis, 0.0 for repeats."""
  def one(r, c):
    key = r * n + c
    order = jnp.argsort(key, stable=True)
    sk = key[order]
    first = jnp.concatenate([jnp.ones(1, bool), sk[1:] != sk[:-1]])
    return jnp.zeros(key.shape, jnp.float32).at[order].set(first.astype(jnp.float32))
  return _batched(one, rows.ndim - 1)(rows, cols)


@functools.partial(jax.jit, static_argnames=("passes", "block_size", "output"))
def _pixel_graph(image_grids, *, passes, block_size, output):
  n = image_grids.shape[-3] * image_grids.shape[-2]
  rows, cols, _ = _colour_knn_edges(image_grids, passes, False, block_size)
  return _edges_to_graph(rows, cols, _first_occurrences(rows, cols, n), n, output)


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
  _check_output(output)
  _check_image_grid(image_grids, "image_grids")
  passes = _passes(n_neighbors, distance_weights, image_grids, self_excluded=True)
  _check_block_size(block_size)
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
  _check_output(output)
  _check_array(features, "features", rank=3, layout="(B, N, d)")
  _check_image_grid(image_grids, "image_grids", rank=4)
  b, n, _ = features.shape
  if image_grids.shape[0] != b or image_grids.shape[1] * image_grids.shape[2] != n:
    raise ValueError(f"image_grids {image_grids.shape} must be (B, h, w, 3) with B={b} and "
                     f"h·w = N = {n}, matching features {features.shape}")
  _check_k(k, b * n, self_excluded=True)
  passes = _passes(n_neighbors, distance_weights, image_grids, self_excluded=True)
  _check_block_size(block_size)
  return _neuralef_kernel(features, image_grids, alpha, min_degree, k=int(k), passes=passes,
                          block_size=block_size, output=output)


# ----------------------------------------------------------------------------- jraph


def to_graphs_tuple(graph: sparse.BCOO, nodes: jax.Array | None = None):
  """A 2-D BCOO (n, n) affinity as a single-graph ``jraph.GraphsTuple``.

  Entry ``W[i, j]`` becomes an edge j → i (``senders = j``, ``receivers = i``) with
  ``edges = W[i, j]`` of shape (nse,), so summing ``edges · nodes[senders]`` per receiver is
  ``W @ nodes``. Repeated and zero-data entries are kept as edges.

  Args:
    graph: BCOO of shape (n, n) without batch dims.
    nodes: optional (n, ...) node features.
  Returns:
    ``jraph.GraphsTuple`` with n_node = [n], n_edge = [nse].
  """
  import jraph  # pylint: disable=import-outside-toplevel

  if not isinstance(graph, sparse.BCOO) or graph.ndim != 2 or graph.n_batch:
    raise ValueError("to_graphs_tuple needs a 2-D BCOO matrix without batch dims; for a batch, "
                     "index one graph or use neuralef_kernel's flattened output")
  n, nse = graph.shape[0], graph.nse
  return jraph.GraphsTuple(
      nodes=nodes, edges=graph.data, senders=graph.indices[:, 1], receivers=graph.indices[:, 0],
      n_node=jnp.array([n]), n_edge=jnp.array([nse]), globals=None)


__all__ = [
    "MIN_DEGREE", "l2_normalize", "feature_affinity", "degrees", "normalize_symmetric",
    "resize_to_grid", "topk_cosine_rows", "knn_degrees", "knn_rows_matmul", "knn_feature_graph",
    "colour_knn_indices", "colour_knn_affinity", "dsm_affinity", "pixel_graph", "neuralef_kernel", "to_graphs_tuple",
]
