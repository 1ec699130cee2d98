"""Fidelity without labels: how close ψ's outputs are to the batch kernel's eigenvectors.

NeuralEF trains ψ so that its K output columns on a batch approximate the K principal
eigenvectors of that batch's kernel G (Deng & Luo eq. (5)-(7), SPEC §5). On a fixed batch the
truth is computable: the top-K eigenpairs of the same G (`kernel_eigenpairs`, by this project's
`eigensolvers.lobpcg` or, at small n, dense ``eigh``). `fidelity` then compares ψ's normalised
columns ψ̂ⱼ = Ψ[:, j]/‖Ψ[:, j]‖ with them:

- ``cos_in_order`` (K,): |cos(ψ̂ⱼ, uⱼ)|, eigenfunction j against eigenvector j (the ordering the
  loss's asymmetric penalty is meant to produce);
- ``cos_cluster`` (K,): ‖U_Cᵀ ψ̂ⱼ‖, the cosine of ψ̂ⱼ with the whole eigenspace of uⱼ's cluster
  C of near-degenerate eigenvalues (consecutive eigenvalues closer than ``cluster_tol``·|λ₁|).
  Inside such a cluster the eigenvectors are any rotation of each other, so a per-index
  match (or a permutation) would be arbitrary; the projection onto the cluster's space is not.
  Equal to ``cos_in_order`` where eigenvalues are simple. A cluster cut by the K-th eigenvalue
  is only partly known (its members past K are not computed);
- ``best_cos``/``best_index`` (K,): the largest |cos(ψ̂ⱼ, uᵢ)| over all i < K and that i
  (whether ψ̂ⱼ matches some eigenvector out of order);
- ``angles[m]`` (m,): principal angles (radians, ascending) between span(ψ̂₀…ψ̂_{m−1}) and
  span(u₀…u_{m−1}) for each m of ``dims``;
- ``within_span[m]`` (m,): principal angles between span(u₀…u_{m−1}) and the span of all K
  columns of ψ: whether the leading eigenspace is representable by ψ at all, whatever the
  order;
- ``rayleigh`` (K,): ψ̂ⱼᵀ G ψ̂ⱼ, to compare with ``eigenvalues`` (K,), the true λⱼ.

`summary` reduces these to a flat dict of floats for logs (metrics.jsonl).

All functions are pure; `fidelity` and `principal_angles` are jit-able (shapes static). The
kernel is passed as the training uses it: a dense symmetric (n, n) array or a callable
``kernel_matmul(p) -> G @ p`` mapping (n, c) to (n, c) (``graphs.batch_kernel_matmul``
without ``axis_name``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import eigensolvers
from spectral_jax import graphs
from spectral_jax.neuralef import loss as loss_lib
from spectral_jax.neuralef import step as step_lib

Kernel = Union[jax.Array, np.ndarray, Callable[[jax.Array], jax.Array]]

# Leading-subspace sizes compared by default (those ≤ K are used, and K itself).
DEFAULT_DIMS = (1, 4, 16, 64)
# Consecutive eigenvalues closer than this fraction of |λ₁| form one near-degenerate cluster.
DEFAULT_CLUSTER_TOL = 1e-3
# `kernel_eigenpairs(method="auto")`: dense eigh up to this many tokens, LOBPCG above.
EIGH_MAX_TOKENS = 2048
# LOBPCG settings of `kernel_eigenpairs`: guard columns beyond K and residual blocks per
# iteration (see `eigensolvers.lobpcg`).
DEFAULT_GUARD = 16
DEFAULT_KRYLOV_BLOCKS = 2


class KernelEigenpairs(NamedTuple):
  """The top-K eigenpairs of a batch kernel (a pytree).

  Attributes:
    eigenvalues: (K,) descending.
    eigenvectors: (n, K) orthonormal columns.
    residual_norms: (K,) ‖G u − λ u‖ / (‖G‖ + |λ|) (relative; ‖G‖ estimated).
    converged: (K,) bool (always True for ``eigh``).
  """
  eigenvalues: jax.Array
  eigenvectors: jax.Array
  residual_norms: jax.Array
  converged: jax.Array


def _matmul(kernel: Kernel) -> Callable[[jax.Array], jax.Array]:
  if callable(kernel) and not hasattr(kernel, "shape"):
    return kernel
  g = jnp.asarray(kernel)
  return lambda p: jnp.matmul(g, p, precision=eigensolvers.PRECISION)


def dense_kernel(kernel: Kernel, n: int) -> jax.Array:
  """The (n, n) symmetric matrix of ``kernel`` (a callable is applied to the identity)."""
  if callable(kernel) and not hasattr(kernel, "shape"):
    g = kernel(jnp.eye(n, dtype=jnp.float32))
  else:
    g = jnp.asarray(kernel, jnp.float32)
  if g.shape != (n, n):
    raise ValueError(f"the kernel must be ({n}, {n}) (or map ({n}, c) to ({n}, c)); got {g.shape}")
  return (g + g.T) / 2


def kernel_eigenpairs(kernel: Kernel, n: int, k: int, *, method: str = "auto",
                      guard: int = DEFAULT_GUARD, krylov_blocks: int = DEFAULT_KRYLOV_BLOCKS,
                      tol: float | None = None, max_iters: int = 300,
                      seed: int = 0) -> KernelEigenpairs:
  """The k largest eigenpairs of the symmetric batch kernel G (n × n).

  Args:
    kernel: dense (n, n) array or ``kernel_matmul`` callable (n, c) → (n, c).
    n: number of tokens (rows of G).
    k: eigenpairs wanted (ψ's K), 1 ≤ k ≤ n.
    method: "eigh" (dense, forms G: O(n²) memory, O(n³) time), "lobpcg"
      (`eigensolvers.lobpcg`, largest, k + ``guard`` block columns, ``krylov_blocks`` residual
      blocks; matrix-free), or "auto": eigh for n ≤ `EIGH_MAX_TOKENS`, else lobpcg.
    guard, krylov_blocks, tol, max_iters, seed: LOBPCG settings (start block seeded by
      ``seed``); ``tol`` defaults to `eigensolvers.default_tol` (float32: 1.4e-5).
  Returns:
    `KernelEigenpairs`, float32. Jit-able for a fixed ``method`` (static arguments: all but
    ``kernel``).
  Raises:
    ValueError: bad method or k outside [1, n].
  """
  if method not in ("auto", "eigh", "lobpcg"):
    raise ValueError(f"method must be 'auto', 'eigh' or 'lobpcg'; got {method!r}")
  if not 1 <= int(k) <= int(n):
    raise ValueError(f"k = {k} eigenpairs need 1 ≤ k ≤ n = {n} tokens")
  if method == "auto":
    method = "eigh" if n <= EIGH_MAX_TOKENS else "lobpcg"
  if method == "eigh":
    g = dense_kernel(kernel, n)
    w, u = jnp.linalg.eigh(g)
    w, u = w[::-1][:k], u[:, ::-1][:, :k]
    res = jnp.linalg.norm(g @ u - u * w, axis=0) / (jnp.max(jnp.abs(w)) + jnp.abs(w))
    return KernelEigenpairs(w, u, res, jnp.ones((k,), bool))
  bs = min(int(k) + int(guard), int(n))
  x0 = jax.random.normal(jax.random.key(seed), (n, bs), jnp.float32)
  result = eigensolvers.lobpcg(kernel if callable(kernel) else jnp.asarray(kernel, jnp.float32),
                               x0, k=int(k), largest=True, tol=tol, max_iters=max_iters,
                               krylov_blocks=krylov_blocks, check_inputs=False)
  return KernelEigenpairs(result.eigenvalues, result.eigenvectors, result.residual_norms,
                          result.converged)


def _orth(a: jax.Array, rcond: float | None):
  """Orthonormal basis of span(a) (n, p) by SVD, columns below ``rcond``·σ_max zeroed.

  Returns (Q (n, p), rank ()): dropped directions are zero columns (a fixed shape under jit).
  """
  u, s, _ = jnp.linalg.svd(a, full_matrices=False)
  if rcond is None:
    rcond = max(a.shape) * float(jnp.finfo(a.dtype).eps)
  keep = s > rcond * s[0]
  return u * keep[None, :], jnp.sum(keep)


def principal_angles(a: jax.Array, b: jax.Array, *, rcond: float | None = None) -> jax.Array:
  """Principal angles between span(a) and span(b), radians, ascending (as many as the fewer
  columns).

  Cosines are the singular values of Q_aᵀQ_b; angles below 45° are taken from the sines (the
  singular values of the part of the smaller basis outside the other span), which keeps small
  angles accurate (Björck & Golub 1973; ``scipy.linalg.subspace_angles``, which returns them
  descending). Numerically dependent columns (singular values below ``rcond``·σ_max, default
  max(n, p)·eps as ``scipy.linalg.orth``) are dropped: a rank-r span has 90° for its missing
  dimensions.

  Args:
    a: (n, p) float.
    b: (n, q) float.
    rcond: relative rank threshold.
  Returns:
    (min(p, q),) float32 angles in [0, π/2].
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise ValueError(f"principal_angles needs (n, p) and (n, q) arrays; got {a.shape}, {b.shape}")
  if a.shape[1] < b.shape[1]:
    a, b = b, a                       # b: the side with fewer columns (q ≤ p)
  qa, _ = _orth(a, rcond)
  qb, rank_b = _orth(b, rcond)
  cross = jnp.matmul(qa.T, qb, precision=eigensolvers.PRECISION)
  cos = jnp.clip(jnp.linalg.svd(cross, compute_uv=False), 0.0, 1.0)       # descending
  outside = qb - jnp.matmul(qa, cross, precision=eigensolvers.PRECISION)
  sin = jnp.clip(jnp.linalg.svd(outside, compute_uv=False), 0.0, 1.0)     # descending
  # Dropped columns of qb add zero sines at the end: the rank_b genuine sines are the largest.
  q = b.shape[1]
  idx = jnp.arange(q)
  sin_ascending = sin[jnp.clip(rank_b - 1 - idx, 0, q - 1)]
  small = (cos**2 >= 0.5) & (idx < rank_b)
  return jnp.where(small, jnp.arcsin(sin_ascending), jnp.arccos(cos))


def _normalise_columns(psi: jax.Array) -> jax.Array:
  """Unit columns; each is first divided by its largest |entry|, so a column of tiny values
  (a softmax column at 1e-30, whose squares underflow in float32) is not blown up by a
  clamped norm. A column whose largest |entry| is below the smallest normal float (all zero,
  or denormals, which the CPU flushes to zero) becomes zero: dividing by a clamp there gives
  NaN under jit on the CPU (0 · 1/tiny)."""
  scale = jnp.max(jnp.abs(psi), axis=0)
  live = scale >= jnp.finfo(psi.dtype).tiny
  psi = jnp.where(live[None, :], psi / jnp.where(live, scale, 1.0)[None, :], 0.0)
  return psi / jnp.where(live, jnp.linalg.norm(psi, axis=0), 1.0)[None, :]


def clusters(eigenvalues: jax.Array, cluster_tol: float = DEFAULT_CLUSTER_TOL) -> jax.Array:
  """Cluster ids (K,) int32 of descending eigenvalues: a new cluster starts where the gap to
  the previous eigenvalue exceeds ``cluster_tol``·|λ₁|."""
  gaps = eigenvalues[:-1] - eigenvalues[1:]
  scale = jnp.max(jnp.abs(eigenvalues))
  return jnp.concatenate([jnp.zeros(1, jnp.int32),
                          jnp.cumsum(gaps > cluster_tol * scale).astype(jnp.int32)])


def fidelity_dims(k: int, dims: Sequence[int] = DEFAULT_DIMS) -> tuple[int, ...]:
  """The leading-subspace sizes compared for K eigenfunctions: those of ``dims`` below K, and K."""
  return tuple(sorted({int(m) for m in dims if 1 <= int(m) < k} | {int(k)}))


def fidelity(psi: jax.Array, reference: KernelEigenpairs, kernel: Kernel, *,
             dims: Sequence[int] = DEFAULT_DIMS,
             cluster_tol: float = DEFAULT_CLUSTER_TOL) -> dict:
  """Compares ψ's outputs on a batch with the batch kernel's top-K eigenvectors.

  Args:
    psi: (n, K) ψ's outputs on the batch's n tokens (any column scale: columns are normalised
      here; e.g. the softmax of the logits at the current τ, or the logits).
    reference: `kernel_eigenpairs` of the same batch's kernel, K eigenpairs.
    kernel: that kernel (dense (n, n) or ``kernel_matmul``), for ψ's Rayleigh quotients.
    dims: leading-subspace sizes m (those < K are used, plus K; `fidelity_dims`).
    cluster_tol: relative eigenvalue gap below which eigenvalues form one cluster.
  Returns:
    A dict of float32 arrays (keys described in the module docstring): ``cos_in_order``,
    ``cos_cluster``, ``best_cos``, ``best_index`` (int32), ``rayleigh``, ``eigenvalues``
    (K,) each, ``cluster_ids`` (K,) int32, ``angles`` and ``within_span``: dicts m → (m,).
  """
  psi = jnp.asarray(psi, jnp.float32)
  u = reference.eigenvectors
  if psi.ndim != 2 or psi.shape != u.shape:
    raise ValueError(f"psi must be (n, K) = {tuple(u.shape)} like the reference eigenvectors; "
                     f"got {psi.shape}")
  k = psi.shape[1]
  p = _normalise_columns(psi)
  cos = jnp.abs(jnp.matmul(u.T, p, precision=eigensolvers.PRECISION))       # (K_u, K_ψ)
  ids = clusters(reference.eigenvalues, cluster_tol)
  same = (ids[:, None] == ids[None, :]).astype(jnp.float32)
  rayleigh = jnp.sum(p * _matmul(kernel)(p), axis=0)
  out = {
      "cos_in_order": jnp.diagonal(cos),
      "cos_cluster": jnp.sqrt(jnp.clip(jnp.sum(same * cos**2, axis=0), 0.0, 1.0)),
      "best_cos": jnp.max(cos, axis=0),
      "best_index": jnp.argmax(cos, axis=0).astype(jnp.int32),
      "rayleigh": rayleigh,
      "eigenvalues": reference.eigenvalues,
      "cluster_ids": ids,
      "angles": {m: principal_angles(p[:, :m], u[:, :m]) for m in fidelity_dims(k, dims)},
      "within_span": {m: principal_angles(p, u[:, :m]) for m in fidelity_dims(k, dims)},
  }
  return out


def summary(result: dict) -> dict[str, float]:
  """Flat floats for logs from a `fidelity` result (host values; call outside jit).

  Keys (m over the compared sizes): ``cos_in_order_mean@m`` and ``cos_cluster_mean@m`` (means
  over the first m eigenfunctions), ``angle_max_deg@m`` / ``angle_mean_deg@m`` (principal
  angles of the leading m-dim subspaces), ``within_span_max_deg@m`` (largest angle between
  span(u₀…u_{m−1}) and ψ's whole span), ``best_in_place@K`` (fraction of ψ̂ⱼ whose best match
  is uⱼ itself), ``rayleigh_over_lambda_mean@m`` (mean of ψ̂ⱼᵀGψ̂ⱼ / λⱼ), ``lambda_1``,
  ``lambda_K`` and ``clusters@K`` (number of near-degenerate clusters among the K).
  """
  r = jax.device_get(result)
  cos, cc, ray, lam = (np.asarray(r[n], np.float64) for n in
                       ("cos_in_order", "cos_cluster", "rayleigh", "eigenvalues"))
  k = cos.shape[0]
  out: dict[str, float] = {}
  for m, ang in r["angles"].items():
    deg = np.degrees(np.asarray(ang, np.float64))
    out[f"cos_in_order_mean@{m}"] = float(cos[:m].mean())
    out[f"cos_cluster_mean@{m}"] = float(cc[:m].mean())
    out[f"angle_max_deg@{m}"] = float(deg.max())
    out[f"angle_mean_deg@{m}"] = float(deg.mean())
    out[f"within_span_max_deg@{m}"] = float(np.degrees(np.asarray(r["within_span"][m])).max())
    safe = np.where(np.abs(lam[:m]) > 0, lam[:m], np.nan)
    out[f"rayleigh_over_lambda_mean@{m}"] = float(np.nanmean(ray[:m] / safe))
  out[f"best_in_place@{k}"] = float(np.mean(np.asarray(r["best_index"]) == np.arange(k)))
  out["lambda_1"], out["lambda_K"] = float(lam[0]), float(lam[-1])
  out[f"clusters@{k}"] = float(np.asarray(r["cluster_ids"])[-1] + 1)
  return out


PSI_OUTPUTS = ("softmax", "logits")


def psi_outputs(logits: jax.Array, tau: jax.Array, outputs: str = "softmax") -> jax.Array:
  """ψ's columns as compared: ``softmax(logits/τ)`` (the training output without its Gumbel
  noise; the L2 batch normalisation only rescales columns) or the raw ``logits``; (..., K)."""
  if outputs not in PSI_OUTPUTS:
    raise ValueError(f"outputs must be one of {PSI_OUTPUTS}; got {outputs!r}")
  return jax.nn.softmax(logits / tau, axis=-1) if outputs == "softmax" else logits


def make_probe(config, batch: dict, *, outputs: str | None = None, method: str = "auto"
               ) -> Callable[..., tuple[dict[str, float], dict]]:
  """The fidelity of a training state on one fixed batch: ``probe(state) -> (summary, result)``.

  The batch kernel (``config.graph``, as the train step builds it on one device) and its top-K
  eigenpairs are computed once, here; each call runs ψ on the batch (``psi_outputs`` at the
  state's τ) and `fidelity` in one jitted program on this process's first device (the state's
  params are copied device to device, no host round trip), then reads the `summary` back.

  Args:
    config: the training config (``psi``, ``graph``, ``loss``, ``train.num_steps``;
      ``log.fidelity_outputs`` unless ``outputs`` is given).
    batch: host or device arrays ``psi_inputs`` (B, N, D), ``graph_features`` (B, N, C),
      ``image_grids`` (B, h, w, 3) of the fixed batch.
    outputs: "softmax" or "logits" (`psi_outputs`).
    method: `kernel_eigenpairs` method.
  Returns:
    ``probe(state)``: ``(summary dict of floats, the full `fidelity` result on the host)``;
    the summary also holds ``argmax_columns_used``: how many of the K columns are the argmax
    of ψ's logits on some token of the batch (the clusters inference would use), and
    ``eigenpairs_converged``: the fraction of the K reference eigenpairs that converged (1.0
    for eigh; below 1 the comparison is against inexact eigenvectors).
  """
  outputs = str(config.log.get("fidelity_outputs", "softmax")) if outputs is None else outputs
  psi_outputs(jnp.zeros((1, 1)), 1.0, outputs)  # validates ``outputs`` before compiling
  device = jax.local_devices()[0]
  x, feats, grids = (jax.device_put(jnp.asarray(batch[key], jnp.float32), device)
                     for key in step_lib.BATCH_KEYS)
  n, k = feats.shape[0] * feats.shape[1], int(config.psi.k)
  g = config.graph
  kernel_fn = lambda f, gr: graphs.batch_kernel_matmul(
      f, gr, k=int(g.k), alpha=float(g.alpha), n_neighbors=tuple(g.n_neighbors),
      distance_weights=tuple(g.distance_weights), block_size=g.block_size, form=g.form)
  reference = jax.jit(lambda f, gr: kernel_eigenpairs(kernel_fn(f, gr), n, k, method=method)
                      )(feats, grids)
  converged = float(np.mean(np.asarray(reference.converged)))  # 1.0 unless LOBPCG stalled
  psi = step_lib.psi_module(config)
  tau_fn = loss_lib.tau_schedule(int(config.train.num_steps), config.loss.tau_max,
                                 config.loss.tau_min)

  @jax.jit
  def compare(params, step, ref, x, f, gr):
    logits, _ = psi.apply({"params": params}, x)
    out = psi_outputs(logits, tau_fn(step), outputs).reshape(n, k)
    result = fidelity(out, ref, kernel_fn(f, gr))
    # How many of the K columns win the argmax (the inference clusters) on some token.
    counts = jnp.zeros(k, jnp.int32).at[jnp.argmax(logits.reshape(n, k), -1)].add(1)
    return result, jnp.sum(counts > 0)

  def local(a):
    return jax.device_put(a.addressable_data(0) if isinstance(a, jax.Array) else a, device)

  def probe(state):
    result, used = jax.device_get(compare(jax.tree.map(local, state.params), local(state.step),
                                          reference, x, feats, grids))
    return {**summary(result), "argmax_columns_used": float(used),
            "eigenpairs_converged": converged}, result

  return probe


__all__ = [
    "DEFAULT_CLUSTER_TOL", "DEFAULT_DIMS", "EIGH_MAX_TOKENS", "KernelEigenpairs", "PSI_OUTPUTS",
    "clusters", "dense_kernel", "fidelity", "fidelity_dims", "kernel_eigenpairs", "make_probe",
    "principal_angles", "psi_outputs", "summary",
]
