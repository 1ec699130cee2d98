"""K-means in JAX and cluster → class matching (SPEC §4–5).

* :func:`kmeans` — Lloyd's algorithm with greedy k-means++ seeding, optional per-point weights
  (weight 0 = padding), ``n_init`` restarts keeping the lowest inertia, batched over leading
  dimensions. It follows scikit-learn's ``KMeans(algorithm="lloyd")`` step by step (data
  centred first, tolerance relative to the mean feature variance, empty clusters moved to the
  points farthest from their centre, a final assignment after the loop), so inertias agree
  with scikit-learn's up to the luck of the seeding.
* :func:`kmeans_predict` — nearest-centroid labels for new points.
* :func:`cluster_qr` — the deterministic discretisation of k eigenvectors into k clusters by
  column-pivoted QR (Damle, Minden & Ying, "Simple, direct and efficient multi-way spectral
  clustering", 2019; scikit-learn's ``assign_labels="cluster_qr"``): no seed, no restarts.
* :func:`hungarian_match`, :func:`majority_vote_match` — a cluster → class lookup array from a
  pooled confusion matrix (rows: ground-truth classes, columns: clusters), as the DSM and
  NeuralEF evaluations compute it.
* :func:`num_segments_from_eigengap` — DSM's adaptive number of segments per image.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from spectral_jax._checks import is_traced


class KMeansResult(NamedTuple):
  """Output of :func:`kmeans`; ``...`` are the input's leading batch dimensions.

  Attributes:
    centroids: (..., k, d) cluster centres, the input's float dtype.
    labels: (..., n) int32 index of the nearest centroid of every point (padded points too).
    inertia: (...) weighted sum of squared distances of the points to their centroid.
    n_iter: (...) int32 Lloyd iterations run by the kept restart.
  """

  centroids: jax.Array
  labels: jax.Array
  inertia: jax.Array
  n_iter: jax.Array


def _check_points(x: jax.Array, k: int, weights: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Validates (..., n, d) points and (..., n) weights; returns float arrays."""
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"points must have shape (..., n, d); got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  n = x.shape[-2]
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"the number of clusters must be a positive int; got {k!r}")
  if k > n:
    raise ValueError(f"cannot form {k} clusters from {n} points: lower the number of clusters")
  if weights is None:
    weights = jnp.ones(x.shape[:-1], x.dtype)
  else:
    weights = jnp.asarray(weights)
    if weights.shape != x.shape[:-1]:
      raise ValueError(f"weights must have shape {x.shape[:-1]} (points without the feature "
                       f"axis); got {weights.shape}")
    weights = weights.astype(x.dtype)
  if not is_traced(x, weights):
    if not bool(jnp.all(jnp.isfinite(x))):
      raise ValueError("points contain NaN or Inf: clean or mask them (weight 0 is not enough, "
                       "as NaN poisons the distances)")
    if bool(jnp.any(weights < 0)) or not bool(jnp.all(jnp.isfinite(weights))):
      raise ValueError("weights must be finite and non-negative")
    too_few = jnp.sum(weights > 0, axis=-1) < k
    if bool(jnp.any(too_few)):
      raise ValueError(f"some item has fewer than {k} points with positive weight: lower the "
                       "number of clusters or drop that item")
  return x, weights


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Squared Euclidean distances ``‖xᵢ − c_j‖²`` (clamped at 0).

  Args:
    x: (..., n, d) points.
    centroids: (..., k, d) centres.
  Returns:
    (..., n, k) distances, the points' float dtype.
  """
  xx = jnp.sum(x * x, axis=-1)[..., :, None]
  cc = jnp.sum(centroids * centroids, axis=-1)[..., None, :]
  xc = jnp.einsum("...nd,...kd->...nk", x, centroids, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(xx - 2.0 * xc + cc, 0.0)


def _sample(mass: jax.Array, u: jax.Array) -> jax.Array:
  """Inverse-CDF sampling: indices ``i`` with probability ∝ ``mass[i]`` for uniforms ``u``.

  Uses ``(1 − u)·total ∈ (0, total]`` so that points of zero mass are never drawn.
  """
  cdf = jnp.cumsum(mass)
  idx = jnp.searchsorted(cdf, (1.0 - u) * cdf[-1], side="left", method="compare_all")
  return jnp.minimum(idx, mass.shape[0] - 1)


def _plusplus(u: jax.Array, x: jax.Array, w: jax.Array, active=None) -> jax.Array:
  """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant) for one item.

  Args:
    u: (k, trials) uniforms in [0, 1): row 0 column 0 draws the first centre, row i the
      candidates of centre i. Drawing all randomness up front keeps a single PRNG call (threefry
      is the main compile cost on CPU).
    x: (n, d) points; w: (n,) weights.
    active: optional (k,) bool, True for the first c centres: only those are seeded (the rest
      repeat the first centre and are never used), exactly as a c-centre seeding with the
      first c rows of ``u``.
  """
  k = u.shape[0]
  first = _sample(w, u[0, :1])[0]
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = squared_distances(x, x[first][None])[:, 0]

  def add_center(i, state):
    centers, closest = state
    potential = w * closest
    # All remaining mass on existing centres (duplicate points): fall back to the weights.
    mass = jnp.where(jnp.sum(potential) > 0, potential, w)
    candidates = _sample(mass, u[i])
    cand_closest = jnp.minimum(closest[:, None], squared_distances(x, x[candidates]))
    best = jnp.argmin(jnp.sum(w[:, None] * cand_closest, axis=0))
    if active is None:
      return centers.at[i].set(x[candidates[best]]), cand_closest[:, best]
    return (centers.at[i].set(jnp.where(active[i], x[candidates[best]], x[first])),
            jnp.where(active[i], cand_closest[:, best], closest))

  centers, _ = jax.lax.fori_loop(1, k, add_center, (centers, closest))
  return centers


def kmeans_plusplus(key: jax.Array, x: jax.Array, num_clusters: int, *,
                    weights: jax.Array | None = None,
                    n_local_trials: int | None = None) -> jax.Array:
  """Greedy k-means++ seeding (scikit-learn's ``kmeans_plusplus``), batched.

  Each new centre is the best, by resulting potential, of ``n_local_trials`` candidates sampled
  with probability ∝ weight · D², D the distance to the closest centre so far.

  Args:
    key: a PRNG key; item ``b`` of the flattened batch uses ``jax.random.split(key, B)[b]``.
    x: (..., n, d) float points.
    num_clusters: k ≤ n.
    weights: optional (..., n) non-negative weights; points of weight 0 are never picked.
    n_local_trials: candidates per centre; default ``2 + floor(ln k)`` as scikit-learn.
  Returns:
    (..., k, d) initial centres, rows of ``x``.
  """
  x, w = _check_points(x, num_clusters, weights)
  trials = n_local_trials or 2 + int(math.log(num_clusters))
  return _plusplus_jit(key, x, w, num_clusters, trials)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _plusplus_jit(key, x, w, k, trials):
  fn = lambda kk, xx, ww: _plusplus(jax.random.uniform(kk, (k, trials), xx.dtype), xx, ww)
  return _batched(fn, key, x, w)


def _batched(fn, key, x, w, *extra):
  """Applies ``fn(key, x[b], w[b], *extra[b])`` to every item of the leading batch dims of
  ``x`` (``extra``: arrays of shape batch_shape + (...))."""
  batch_shape = x.shape[:-2]
  size = math.prod(batch_shape)
  if not batch_shape:
    return fn(key, x, w, *extra)
  keys = jax.random.split(key, size)
  flat = [e.reshape((size,) + e.shape[len(batch_shape):]) for e in extra]
  out = jax.vmap(fn)(keys, x.reshape((size,) + x.shape[-2:]), w.reshape((size, -1)), *flat)
  return jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)


def _relocate_empty(centroids, counts, x, w, dist_to_own, active):
  """Moves each empty (active) cluster onto one of the points farthest from their own centre."""
  k = centroids.shape[0]
  empty = (counts <= 0) & active
  # Rank of each empty cluster among the empty ones: the j-th empty cluster takes the j-th
  # farthest point, as scikit-learn's `_relocate_empty_clusters_dense`.
  rank = jnp.cumsum(empty) - 1
  far = jax.lax.top_k(jnp.where(w > 0, dist_to_own, -1.0), k)[1]
  return jnp.where(empty[:, None], x[far[jnp.clip(rank, 0, k - 1)]], centroids)


def _lloyd(x, w, init, max_iter, tol_abs, active):
  """Lloyd iterations for one item; returns (centroids, labels, inertia, n_iter).

  Only the ``active`` (k,) centres take points; the others stay where they are."""
  k = init.shape[0]
  dist = lambda c: jnp.where(active[None, :], squared_distances(x, c), jnp.inf)

  def m_step(centroids):
    d2 = dist(centroids)
    labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
    counts = jax.ops.segment_sum(w, labels, num_segments=k)
    sums = jax.ops.segment_sum(w[:, None] * x, labels, num_segments=k)
    new = sums / jnp.where(counts > 0, counts, 1.0)[:, None]
    own = jnp.take_along_axis(d2, labels[:, None], axis=-1)[:, 0]
    new = _relocate_empty(new, counts, x, w, own, active)
    return jnp.where(active[:, None], new, centroids), labels

  def cond(state):
    _, _, i, shift, changed = state
    return (i < max_iter) & (shift > tol_abs) & changed

  def body(state):
    centroids, labels, i, _, _ = state
    new, new_labels = m_step(centroids)
    shift = jnp.sum((new - centroids) ** 2)
    changed = jnp.any((new_labels != labels) & (w > 0)) | (i == 0)
    return new, new_labels, i + 1, shift, changed

  n = x.shape[0]
  state = (init, jnp.full((n,), -1, jnp.int32), jnp.int32(0), jnp.asarray(jnp.inf, x.dtype),
           jnp.bool_(True))
  centroids, _, n_iter, _, _ = jax.lax.while_loop(cond, body, state)
  d2 = dist(centroids)
  labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
  inertia = jnp.sum(w * jnp.min(d2, axis=-1))
  return centroids, labels, inertia, n_iter


def _kmeans_one(key, x, w, num_active, k, n_init, max_iter, tol, n_local_trials):
  """All restarts of K-means for one (n, d) item; keeps the lowest inertia.

  ``n_init``, ``max_iter`` and ``tol`` are traced values, so changing them does not recompile.
  Restarts run one after another (a fori_loop over ``fold_in(key, r)``): on CPU a vmap over
  restarts doubles the compile time; the batch dimension is where the parallelism is.
  """
  valid = w > 0
  n_valid = jnp.sum(valid)
  mean = jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0) / n_valid
  xc = jnp.where(valid[:, None], x - mean, 0.0)  # centred, padding parked at the mean
  var = jnp.sum(jnp.where(valid[:, None], xc**2, 0.0), axis=0) / n_valid
  tol_abs = tol * jnp.mean(var)
  active = jnp.arange(k) < num_active

  def restart(r, best):
    u = jax.random.uniform(jax.random.fold_in(key, r), (k, n_local_trials), x.dtype)
    run = _lloyd(xc, w, _plusplus(u, xc, w, active), max_iter, tol_abs, active)
    better = run[2] < best[2]
    return jax.tree.map(lambda new, old: jnp.where(better, new, old), run, best)

  first = jnp.zeros((k, x.shape[1]), x.dtype), jnp.zeros(x.shape[:1], jnp.int32)
  init = first + (jnp.asarray(jnp.inf, x.dtype), jnp.int32(0))
  centroids, _, inertia, n_iter = jax.lax.fori_loop(0, n_init, restart, init)
  d2 = jnp.where(active[None, :], squared_distances(xc, centroids), jnp.inf)
  labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
  return KMeansResult(centroids + mean, labels, inertia, n_iter)


def kmeans(key: jax.Array, x: jax.Array, num_clusters: int, *, n_init: int = 10,
           max_iter: int = 300, tol: float = 1e-4, weights: jax.Array | None = None,
           n_local_trials: int | None = None,
           num_active: jax.Array | None = None) -> KMeansResult:
  """K-means (Lloyd) with k-means++ seeding and restarts, batched over leading dimensions.

  Minimises the inertia ``Σᵢ wᵢ ‖xᵢ − c_{ℓ(i)}‖²``. Each restart stops after ``max_iter``
  iterations, when no assignment changes, or when the squared centroid shift ``Σ_j ‖Δc_j‖²``
  falls to ``tol · mean_f Var(x_f)`` (scikit-learn's criterion). Points of weight 0 (padding)
  take no part in seeding, centroids, inertia or the tolerance; they still get a label.

  Defaults follow scikit-learn's ``KMeans`` as the DSM reference called it (n_init=10,
  max_iter=300, tol=1e-4).

  Args:
    key: a PRNG key; item ``b`` of the flattened batch uses ``jax.random.split(key, B)[b]``
      (an unbatched input uses ``key`` itself), so a batched call equals per-item calls;
      restart ``r`` draws from ``jax.random.fold_in(item_key, r)``.
    x: (..., n, d) points (float; ints are cast to float32).
    num_clusters: k, a static int ≤ n (and ≤ the number of points with positive weight).
    n_init: number of restarts; the one with the lowest inertia is returned.
    max_iter: maximum Lloyd iterations per restart.
    tol: relative tolerance on the centroid shift (see above).
    weights: optional (..., n) non-negative point weights (a boolean mask works too).
    n_local_trials: k-means++ candidates per centre; default ``2 + floor(ln k)``.
    num_active: optional (...) int in [1, k] (traced): cluster item b into only that many
      clusters, with ids < num_active[b] — one compiled program for every count. The result
      equals a ``num_active``-cluster run with the same ``n_local_trials`` (uniforms are
      drawn per (centre, trial) in order, so the first c centres see the same draws).
  Returns:
    A :class:`KMeansResult` with centroids (..., k, d), labels (..., n), inertia (...) and
    n_iter (...).
  Raises:
    ValueError: bad shapes, k > n, or (for concrete inputs) NaN/Inf points, negative weights or
      fewer than k points with positive weight in some item.
  """
  if n_init < 1 or max_iter < 1:
    raise ValueError(f"n_init and max_iter must be ≥ 1; got {n_init}, {max_iter}")
  x, w = _check_points(x, num_clusters, weights)
  trials = n_local_trials or 2 + int(math.log(num_clusters))
  if num_active is None:
    num_active = jnp.full(x.shape[:-2], num_clusters, jnp.int32)
  num_active = jnp.broadcast_to(jnp.asarray(num_active, jnp.int32), x.shape[:-2])
  return _kmeans_jit(key, x, w, num_active, num_clusters, n_init, max_iter, float(tol), trials)


@functools.partial(jax.jit, static_argnums=(4, 8))
def _kmeans_jit(key, x, w, num_active, k, n_init, max_iter, tol, trials):
  fn = lambda kk, xx, ww, aa: _kmeans_one(kk, xx, ww, aa, k, n_init, max_iter, tol, trials)
  return _batched(fn, key, x, w, num_active)


def kmeans_predict(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Index of the nearest centroid of each point.

  Args:
    x: (..., n, d) points.
    centroids: (..., k, d) centres (e.g. ``KMeansResult.centroids``), or (k, d) shared by all.
  Returns:
    (..., n) int32 labels in [0, k).
  """
  x = jnp.asarray(x)
  centroids = jnp.asarray(centroids)
  if x.shape[-1] != centroids.shape[-1]:
    raise ValueError(f"points have {x.shape[-1]} features but centroids have "
                     f"{centroids.shape[-1]}")
  return jnp.argmin(squared_distances(x, centroids.astype(x.dtype)), axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Cluster → class matching on pooled confusion matrices (host NumPy: evaluation edge).


def cluster_qr(vectors: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Labels from k eigenvectors by column-pivoted QR (Damle, Minden & Ying 2019).

  As scikit-learn's ``cluster_qr``: the k pivots of the QR factorisation with column pivoting
  of ``Vᵀ`` pick k representative points; the polar factor ``U Wᵀ`` of ``V[pivots]ᵀ``
  (``V[pivots]ᵀ = U Σ Wᵀ``) rotates every row of V, and a point's label is the column of the
  largest ``|V U Wᵀ|`` entry. Deterministic: the same vectors give the same labels, with no
  key. Batched over leading dimensions.

  Args:
    vectors: (..., n, k) the first k eigenvectors (the trivial one included, as scikit-learn's
      spectral embedding), k ≤ n.
    valid: optional (..., n) bool real points: the others are zeroed first (so they are never
      pivots while the real rows span k dimensions) and labelled 0.
  Returns:
    (..., n) int32 in [0, k).
  """
  v = jnp.asarray(vectors, jnp.float32)
  if v.ndim < 2 or v.shape[-1] > v.shape[-2]:
    raise ValueError(f"vectors must be (..., n, k) with k ≤ n; got {v.shape}")
  if valid is not None:
    v = jnp.where(valid[..., None], v, 0.0)

  def one(x):
    k = x.shape[-1]
    _, _, piv = jax.scipy.linalg.qr(x.T, mode="economic", pivoting=True)
    u, _, wt = jnp.linalg.svd(x[piv[:k]].T)
    return jnp.argmax(jnp.abs(x @ (u @ wt)), axis=-1).astype(jnp.int32)

  flat = v.reshape((-1,) + v.shape[-2:])
  labels = jax.vmap(one)(flat).reshape(v.shape[:-1])
  return labels if valid is None else jnp.where(valid, labels, 0)


def _check_confusion(confusion) -> np.ndarray:
  c = np.asarray(confusion, dtype=np.float64)
  if c.ndim != 2:
    raise ValueError(f"confusion must be (num_classes, num_clusters); got shape {c.shape}")
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError("confusion must hold finite non-negative counts")
  return c


def iou_matrix(confusion) -> np.ndarray:
  """IoU of every (class, cluster) pair from a confusion matrix.

  ``IoU[c, j] = n_cj / (Σ_j' n_cj' + Σ_c' n_c'j − n_cj)``, the Jaccard index between the pixels
  of class ``c`` and those of cluster ``j`` (ignored pixels are not in the counts). 0 where the
  union is empty.

  Args:
    confusion: (num_classes, num_clusters) counts; rows ground truth, columns clusters.
  Returns:
    (num_classes, num_clusters) float64.
  """
  c = _check_confusion(confusion)
  union = c.sum(axis=1, keepdims=True) + c.sum(axis=0, keepdims=True) - c
  return np.where(union > 0, c / np.maximum(union, 1e-300), 0.0)


def _match_scores(confusion, score: str) -> np.ndarray:
  """(num_classes, num_clusters) scores to maximise: IoUs ("iou") or raw counts ("counts")."""
  c = _check_confusion(confusion)
  if score == "iou":
    return iou_matrix(c)
  if score == "counts":
    return c
  raise ValueError(f"score must be 'iou' or 'counts'; got {score!r}")


def hungarian_match(confusion, score: str = "iou") -> np.ndarray:
  """One-to-one cluster → class assignment (``scipy.optimize.linear_sum_assignment``).

  Both references (DSM ``eval_utils.hungarian_match``, NeuralEF segmentor) maximise the sum of
  IoUs of the matched pairs: ``score="iou"`` (default). ``"counts"`` maximises the number of
  matched pixels instead (the trace of the permuted confusion, i.e. pixel accuracy).

  Args:
    confusion: (num_classes, num_clusters) counts, rows ground truth, columns clusters,
      pooled over the dataset; needs num_clusters ≤ num_classes.
    score: "iou" or "counts".
  Returns:
    (num_clusters,) int64 lookup: ``lookup[cluster] = class``, all distinct.
  Raises:
    ValueError: num_clusters > num_classes (use :func:`majority_vote_match`), unknown score.
  """
  scores = _match_scores(confusion, score)
  num_classes, num_clusters = scores.shape
  if num_clusters > num_classes:
    raise ValueError(f"{num_clusters} clusters cannot map one-to-one onto {num_classes} classes: "
                     "use majority_vote_match")
  clusters, classes = scipy.optimize.linear_sum_assignment(scores.T, maximize=True)
  lookup = np.empty(num_clusters, np.int64)
  lookup[clusters] = classes
  return lookup


def majority_vote_match(confusion, score: str = "iou") -> np.ndarray:
  """Many-to-one cluster → class assignment (SPEC §5, NeuralEF ``optimal_map(iou=True)``).

  Each cluster goes to the class with the highest IoU-normalised count
  ``n_cj / (n_c· + n_·j − n_cj)``; ``score="counts"`` uses raw counts (the class holding most of
  the cluster's pixels). Ties go to the lowest class id; an empty cluster maps to class 0.

  Args:
    confusion: (num_classes, num_clusters) counts, rows ground truth, columns clusters.
    score: "iou" (default, as the reference) or "counts".
  Returns:
    (num_clusters,) int64 lookup: ``lookup[cluster] = class``.
  """
  return np.argmax(_match_scores(confusion, score), axis=0).astype(np.int64)


def num_segments_from_eigengap(eigenvalues: jax.Array, min_segments: int = 2) -> jax.Array:
  """Number of segments at the largest eigengap (DSM adaptive multi-region segmentation).

  With ascending eigenvalues λ₀ ≤ λ₁ ≤ …, returns ``argmax_{i ≥ m−1} (λ_{i+1} − λᵢ) + 1``, with
  ``m = min_segments``. The default m = 2 skips the gap after the trivial λ₀ = 0 as the DSM
  reference does (``argsort(diff(λ))[::-1]`` without index 0); ties go to the larger count,
  as in the reference's reversed argsort.

  Args:
    eigenvalues: (..., k) ascending eigenvalues, k ≥ min_segments + 1.
    min_segments: smallest count returned (≥ 1).
  Returns:
    (...) int32 in [min_segments, k − 1].
  """
  lam = jnp.asarray(eigenvalues)
  k = lam.shape[-1]
  if min_segments < 1 or k < min_segments + 1:
    raise ValueError(f"need ≥ {min_segments + 1} eigenvalues for min_segments={min_segments}; "
                     f"got {k}")
  gaps = jnp.diff(lam, axis=-1)[..., min_segments - 1:]
  last_max = gaps.shape[-1] - 1 - jnp.argmax(jnp.flip(gaps, axis=-1), axis=-1)
  return (last_max + min_segments).astype(jnp.int32)


__all__ = [
    "KMeansResult", "cluster_qr", "kmeans", "kmeans_plusplus", "kmeans_predict",
    "squared_distances",
    "iou_matrix", "hungarian_match", "majority_vote_match", "num_segments_from_eigengap",
]
