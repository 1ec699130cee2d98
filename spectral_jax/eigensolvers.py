"""Symmetric eigensolvers: a robust LOBPCG and DSM's graph-Laplacian eigenvectors (SPEC §3).

`lobpcg` solves ``A x = λ B x`` (A symmetric, B symmetric positive definite) for the smallest or
largest eigenpairs of a dense array, a ``jax.experimental.sparse.BCOO`` matrix or a matvec
callable, with an optional preconditioner. It is a fixed-shape ``lax.while_loop`` (jit, vmap,
any backend) following Duersch, Shao, Yang & Gu (2018), "A robust and efficient implementation
of LOBPCG", SIAM J. Sci. Comput. 40(5):C655-C676:

* the search space ``S = [X, P, W]`` is kept B-orthonormal: ``X`` and ``P`` come out of the
  Rayleigh-Ritz step orthonormal by construction, and only the new block ``W`` is orthogonalised
  against them (two rounds of projection + SVQB, Stathopoulos & Wu 2002);
* directions that become numerically dependent are dropped (zeroed and masked out of the
  Rayleigh-Ritz problem) instead of being divided by ~0, so dependent columns never make NaN;
  ``P`` restarts direction by direction in the same way;
* soft locking: converged columns stay in the Rayleigh-Ritz basis but get no new search
  directions; convergence is re-checked at every iteration;
* ``A X``, ``B X``, ``A P``, ``B P`` are updated implicitly, so one iteration applies A (and B)
  to the new block(s) only. The reported residuals are recomputed explicitly at the end;
* optionally (``krylov_blocks = s > 1``) the search space holds s residual blocks
  ``W₁ = M R``, ``W_{j+1} = M (A W_j − B W_j W_jᵀ A W_j)``: a block-Krylov extension that needs
  far fewer iterations, and fewer operator applications, when the wanted eigenvalues sit in a
  cluster (DSM graphs: the top of ``D^-½ W D^-½`` is often a near-continuum).

`laplacian_eigenvectors` solves DSM's ``(D − W) y = λ D y`` for the k smallest eigenpairs through
the equivalent standard form (SPEC §3): the k largest eigenpairs of ``N = D^-½ W D^-½``
(eigenvalue ``1 − λ``), ``y = D^-½ u``. The top eigenvector ``u₀ ∝ D^½ 1`` is known exactly and
deflated (Hotelling shift), so the iteration only looks for ``k − 1`` vectors (plus guard
vectors), with 3 residual blocks per iteration. Small graphs (n <= `EIGH_MAX_NODES`) use dense
``eigh``.

Input checks run on concrete (non-traced) inputs only: under ``jit``/``vmap`` only shapes,
dtypes and k vs n are checked; NaN/Inf, symmetry, non-negative W and positive definiteness of
B are not (an indefinite B then stops the iteration and shows as ``converged == False``).

CPU note: the small dense eigensolves inside LOBPCG call LAPACK through SciPy's OpenBLAS; on a
CPU shared with other busy processes its threads stall (10-100× slower ``eigh`` of a 100×100
matrix). ``OPENBLAS_NUM_THREADS=1`` avoids that (and speeds up SciPy's ``eigsh`` there too).

JAX's own ``jax.experimental.sparse.linalg.lobpcg_standard`` handles only the largest
eigenpairs of a standard problem, without preconditioner, and its default tolerance stops
float32 runs early (subspace errors of degrees); `lobpcg` lifts these limits.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple
import warnings

import jax
from jax.experimental import sparse as jsparse
import jax.numpy as jnp
import numpy as np

from spectral_jax import graphs
from spectral_jax._checks import is_traced

# Matvec callables map an (n, m) block to an (n, m) block.
Operator = Any  # jax.Array | np.ndarray | jsparse.BCOO | Callable[[jax.Array], jax.Array]

# Every product inside the solvers runs at full precision: on GPUs the default float32 matmul
# precision (TF32) would cap the attainable accuracy near 1e-3.
PRECISION = jax.lax.Precision.HIGHEST

# laplacian_eigenvectors(method="auto") solves densely (eigh) up to this many nodes and with
# LOBPCG above. Measured on the 2-core CPU (k = 20, float32, OPENBLAS_NUM_THREADS=1): eigh vs
# LOBPCG 3 vs 10 ms at n = 196, 18 vs 20 ms (photo graph) and 13 vs 27 ms (random graph) at
# n = 400, 36-63 vs 24-37 ms at n = 576, 150-215 vs 37-56 ms at n = 1024. With OpenBLAS's
# default threads on a loaded machine eigh degrades sharply above ~500 nodes.
EIGH_MAX_NODES = 450

# Extra block columns LOBPCG carries in laplacian_eigenvectors beyond the k − 1 it must find:
# guard vectors widen the gap that governs convergence of the last wanted eigenpairs.
DEFAULT_GUARD = 8
# Residual blocks per LOBPCG iteration in laplacian_eigenvectors (block-Krylov search space).
DEFAULT_KRYLOV_BLOCKS = 3


class LobpcgResult(NamedTuple):
  """What `lobpcg` returns (a pytree: works under jit and vmap).

  Attributes:
    eigenvalues: (k,) ascending for ``largest=False``, descending for ``largest=True``.
    eigenvectors: (n, k) B-orthonormal columns (``Xᵀ B X = I``).
    residual_norms: (k,) relative residuals
      ``‖A x − λ B x‖ / ((‖A‖ + |λ| ‖B‖) ‖x‖)``, recomputed explicitly from the returned
      vectors (``‖A‖``, ``‖B‖``: lower estimates gathered during the iteration).
    iterations: () int32, LOBPCG iterations performed.
    converged: (k,) bool, ``residual_norms <= tol``. ``converged.all()`` is the overall flag.
  """

  eigenvalues: jax.Array
  eigenvectors: jax.Array
  residual_norms: jax.Array
  iterations: jax.Array
  converged: jax.Array


def default_tol(dtype) -> float:
  """Default relative-residual tolerance of `lobpcg`: ``eps ** 0.7``.

  float32: 1.4e-5 (eigenvalues of a unit-norm operator to ~1e-8 once gaps are resolved,
  eigenvectors to ~1e-5/gap); float64: 1.1e-11.
  """
  return float(jnp.finfo(dtype).eps) ** 0.7


# ----------------------------------------------------------------------------------------------
# Operators.


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=PRECISION)


def _apply(op: Operator, x: jax.Array) -> jax.Array:
  """Applies a dense array, a BCOO matrix or a callable (wrapped as `Partial`) to x."""
  if isinstance(op, jsparse.BCOO):
    return jsparse.bcoo_dot_general(
        op, x, dimension_numbers=(([1], [0]), ([], [])), precision=PRECISION)
  if isinstance(op, jax.tree_util.Partial):
    return op(x)
  return _dot(op, x)


def _as_pytree_operator(op: Operator) -> Operator:
  """Dense arrays and BCOO are pytrees already; callables are wrapped so jit can take them."""
  if op is None or isinstance(op, (jsparse.BCOO, jax.tree_util.Partial)):
    return op
  if callable(op) and not hasattr(op, "shape"):
    return jax.tree_util.Partial(op)
  return jnp.asarray(op)


# ----------------------------------------------------------------------------------------------
# Input checks (on concrete values only).


def _check_iteration_args(tol, max_iters) -> None:
  """tol (None for the default) a finite number >= 0, max_iters an integer >= 1 (when
  concrete; traced values are not checked)."""
  if tol is not None and not is_traced(tol):
    t = np.asarray(tol)
    if t.ndim or not np.issubdtype(t.dtype, np.number) or not np.isfinite(t) or t < 0:
      raise ValueError(f"tol must be a finite number >= 0 (or None for the default); got {tol!r}.")
  if not is_traced(max_iters):
    m = np.asarray(max_iters)
    if m.ndim or not np.issubdtype(m.dtype, np.integer) or m < 1:
      raise ValueError(f"max_iters must be an integer >= 1; got {max_iters!r}.")


def _check_dtype(name: str, dtype) -> None:
  if dtype not in (jnp.float32, jnp.float64):
    raise TypeError(f"{name} must be float32 or float64 (float64 needs jax_enable_x64); "
                    f"got {dtype}.")


def _symmetry_rtol(dtype) -> float:
  return 1e3 * float(jnp.finfo(dtype).eps)


def _check_operator(name: str, op: Operator, n: int, dtype, *, symmetric: bool,
                    positive_definite: bool = False, values: bool = True) -> None:
  """Validates one operator; raises ValueError/TypeError naming the problem.

  Shapes and dtypes are always checked; with ``values`` also (on concrete inputs) NaN/Inf,
  symmetry and positive definiteness.
  """
  if isinstance(op, jax.tree_util.Partial):
    if not values:
      return
    probe = jnp.asarray(
        np.random.default_rng(0).standard_normal((n, 2)), dtype=dtype)
    out = op(probe)
    if getattr(out, "shape", None) != (n, 2):
      raise ValueError(
          f"{name} as a callable must map an (n, m) block to (n, m); for n={n}, m=2 it "
          f"returned shape {getattr(out, 'shape', None)}.")
    if is_traced(out):
      return
    out = np.asarray(out, np.float64)
    if not np.all(np.isfinite(out)):
      raise ValueError(f"{name} returned NaN/Inf for a finite input block.")
    probe = np.asarray(probe, np.float64)
    if symmetric:
      lhs, rhs = probe[:, 0] @ out[:, 1], probe[:, 1] @ out[:, 0]
      scale = np.linalg.norm(probe[:, 0]) * np.linalg.norm(out, axis=0).max()
      if abs(lhs - rhs) > 10 * _symmetry_rtol(dtype) * max(scale, 1e-30):
        raise ValueError(
            f"{name} (callable) is not symmetric: u·({name}v) = {lhs:.6g} but "
            f"v·({name}u) = {rhs:.6g}. LOBPCG needs a symmetric operator.")
    if positive_definite and np.any(np.sum(probe * out, axis=0) <= 0):
      raise ValueError(f"{name} is not positive definite: x·({name}x) <= 0 for a random x.")
    return
  shape = tuple(op.shape)
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"{name} must be a square (n, n) matrix; got shape {shape}.")
  if shape[0] != n:
    raise ValueError(f"{name} is {shape} but X has n={n} rows.")
  if not jnp.issubdtype(op.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype; got {op.dtype}.")
  if op.dtype != dtype:
    raise TypeError(f"{name} is {op.dtype} but X is {dtype}; pass both in one dtype.")
  if not values or is_traced(op):
    return
  if isinstance(op, jsparse.BCOO):
    data = np.asarray(op.data)
    if not np.all(np.isfinite(data)):
      raise ValueError(f"{name} has NaN/Inf entries; clean or mask them first.")
    if symmetric:
      t = op.T
      rng = np.random.default_rng(0)
      u = jnp.asarray(rng.standard_normal((n, 1)), op.dtype)
      diff = np.abs(np.asarray(_apply(op, u) - _apply(t, u))).max()
      scale = np.abs(np.asarray(_apply(op, u))).max()
      if diff > _symmetry_rtol(op.dtype) * max(scale, 1e-30):
        raise ValueError(f"{name} (BCOO) is not symmetric: max |{name}u − {name}ᵀu| = {diff:.3g}.")
    if positive_definite:
      dense = np.asarray(op.todense(), np.float64)
      _check_positive_definite(name, dense)
    return
  a = np.asarray(op, np.float64)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} has NaN/Inf entries; clean or mask them first.")
  if symmetric:
    asym = np.abs(a - a.T).max()
    scale = np.abs(a).max()
    if asym > _symmetry_rtol(op.dtype) * max(scale, 1e-30):
      raise ValueError(
          f"{name} is not symmetric: max |{name} − {name}ᵀ| = {asym:.3g} (max |{name}| = "
          f"{scale:.3g}). Symmetrise it, e.g. ({name} + {name}ᵀ) / 2.")
  if positive_definite:
    _check_positive_definite(name, a)


def _check_positive_definite(name: str, a: np.ndarray) -> None:
  try:
    np.linalg.cholesky(a)
  except np.linalg.LinAlgError:
    raise ValueError(
        f"{name} is not positive definite (its Cholesky factorisation fails); the "
        f"generalised problem A x = λ B x needs an SPD B.") from None


# ----------------------------------------------------------------------------------------------
# Orthonormalisation.


def _sym(g: jax.Array) -> jax.Array:
  return 0.5 * (g + g.T)


def _svqb(v: jax.Array, bv: jax.Array | None, drop_tol: float, *, scaled: bool = True):
  """B-orthonormalises the columns of v by SVQB; numerically dependent directions are dropped.

  Args:
    v: (n, p) columns (zero columns allowed).
    bv: (n, p) ``B v``, or None for B = I.
    drop_tol: with ``scaled=True`` (Stathopoulos & Wu's SVQB: columns first scaled to unit
      B-norm) directions whose Gram eigenvalue is below ``drop_tol * p`` are dropped; with
      ``scaled=False`` directions whose unscaled Gram eigenvalue (squared B-norm) is below
      ``drop_tol`` are dropped.
  Returns:
    ``(q, bq, keep, b_ok)``: q (n, p) with ``qᵀ B q = diag(keep)`` (dropped columns are zero),
    bq ``= B q`` (None if bv is None), keep (p,) bool, b_ok: False if a nonzero column had
    ``vᵀ B v <= 0`` (B is not positive definite).
  """
  p = v.shape[1]
  g = _sym(_dot(v.T, v if bv is None else bv))
  d = jnp.diag(g)
  nonzero = jnp.sum(v * v, axis=0) > 0
  b_ok = jnp.all(jnp.where(nonzero, d > 0, True))
  if scaled:
    scale = jnp.where(d > 0, jax.lax.rsqrt(jnp.where(d > 0, d, 1)), 0)
    g = g * scale[:, None] * scale[None, :]
    threshold = drop_tol * p
  else:
    scale = jnp.ones_like(d)
    threshold = drop_tol
  mu, q = jnp.linalg.eigh(g)
  keep = mu > threshold
  coef = (scale[:, None] * q) * jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, mu, 1)), 0)
  return _dot(v, coef), None if bv is None else _dot(bv, coef), keep, b_ok


def _project_out(q, bq, w, bw):
  """w − q (qᵀ B w) for B-orthonormal q (zero columns allowed); keeps bw = B w in step."""
  c = _dot((q if bq is None else bq).T, w)
  w = w - _dot(q, c)
  if bw is not None:
    bw = bw - _dot(bq, c)
  return w, bw


def _orthonormalize_against(q, bq, w, bw, drop_tol):
  """Makes w B-orthonormal and B-orthogonal to q (B-orthonormal, zero columns allowed).

  Two rounds of projection + SVQB ("twice is enough"). After the first round w is
  orthonormal, so a direction that loses more than half of its squared norm to the second
  projection lay in span(q) up to rounding: normalising it would bring back components along
  q, so it is dropped instead (the second SVQB is unscaled with an absolute threshold).
  """
  w, bw = _project_out(q, bq, w, bw)
  w, bw, _, ok1 = _svqb(w, bw, drop_tol)
  w, bw = _project_out(q, bq, w, bw)
  w, bw, keep, ok2 = _svqb(w, bw, 0.5, scaled=False)
  return w, bw, keep, ok1 & ok2


# ----------------------------------------------------------------------------------------------
# LOBPCG core (one problem, fixed shapes).


def _masked_eigh(g: jax.Array, valid: jax.Array):
  """Ascending eigenpairs of the valid block of symmetric g; invalid directions sort last.

  Rows/columns of dropped (zero) basis vectors are replaced by a decoupled diagonal entry just
  above a Gershgorin bound of the valid block, so their eigenvalues come after every valid one
  without inflating ``‖g‖`` (which would cost accuracy).
  """
  both = valid[:, None] & valid[None, :]
  g = jnp.where(both, g, 0)
  bound = jnp.max(jnp.sum(jnp.abs(g), axis=1))
  sentinel = 1.5 * bound + 1.0
  g = g + jnp.diag(jnp.where(valid, 0, sentinel))
  return jnp.linalg.eigh(g)


class _State(NamedTuple):
  it: jax.Array
  x: jax.Array
  ax: jax.Array
  bx: Any
  p: jax.Array
  ap: jax.Array
  bp: Any
  p_valid: jax.Array
  theta: jax.Array
  res: jax.Array
  anorm: jax.Array
  bnorm: jax.Array
  b_ok: jax.Array


def _start_block(seed, n: int, m: int, dtype) -> jax.Array:
  """(n, m) Gaussian start/fill block. XLA's RngBitGenerator ("rbg") compiles in a fraction
  of threefry's time; a start block needs no cross-backend reproducibility."""
  return jax.random.normal(jax.random.key(seed, impl="rbg"), (n, m), dtype)


def _col_norms(x):
  return jnp.sqrt(jnp.sum(x * x, axis=0))


def _relative_residuals(r, x, theta, anorm, bnorm):
  denom = (anorm + jnp.abs(theta) * bnorm) * _col_norms(x)
  return _col_norms(r) / jnp.maximum(denom, jnp.finfo(r.dtype).tiny)


def _lobpcg_core(a, b, m, x, tol, largest, max_iters, *, k: int, krylov_blocks: int = 1):
  """LOBPCG for the k smallest (or largest) eigenpairs; x: (n, bs) start, bs >= k.

  ``tol``, ``largest`` and ``max_iters`` may be traced (no recompilation when they change).

  Returns (LobpcgResult, b_ok).
  """
  n, bs = x.shape
  dtype = x.dtype
  eps = float(jnp.finfo(dtype).eps)
  drop_tol = 10 * eps
  sign = jnp.where(largest, -1.0, 1.0).astype(dtype)
  apply_a = lambda v: sign * _apply(a, v)
  apply_b = (lambda v: _apply(b, v)) if b is not None else None
  apply_m = (lambda v: _apply(m, v)) if m is not None else (lambda v: v)
  tol = jnp.asarray(tol, dtype)

  # Start: B-orthonormalise X; dependent columns are replaced by random ones.
  bx = apply_b(x) if b is not None else None
  x, bx, keep, b_ok = _svqb(x, bx, drop_tol)
  fill = _start_block(0, n, bs, dtype)
  x = jnp.where(keep[None, :], x, fill)
  bx = apply_b(x) if b is not None else None
  x, bx, _, ok = _svqb(x, bx, drop_tol)
  x, bx, _, ok2 = _svqb(x, bx, drop_tol)
  b_ok = b_ok & ok & ok2
  ax = apply_a(x)
  anorm = jnp.max(_col_norms(ax))
  bnorm = jnp.max(_col_norms(bx)) if b is not None else jnp.asarray(1.0, dtype)
  theta, c = jnp.linalg.eigh(_sym(_dot(x.T, ax)))
  x, ax = _dot(x, c), _dot(ax, c)
  bx = _dot(bx, c) if b is not None else None
  r = ax - (x if b is None else bx) * theta[None, :]
  res = _relative_residuals(r, x, theta, anorm, bnorm)

  zeros = jnp.zeros_like(x)
  state = _State(
      it=jnp.asarray(0, jnp.int32), x=x, ax=ax, bx=bx, p=zeros, ap=zeros,
      bp=zeros if b is not None else None, p_valid=jnp.zeros((bs,), bool), theta=theta,
      res=res, anorm=anorm, bnorm=bnorm, b_ok=b_ok)

  def wanted_converged(res):
    return jnp.all(res[:k] <= tol)

  def cond(s: _State):
    return (s.it < max_iters) & ~wanted_converged(s.res) & s.b_ok

  def body(s: _State):
    # Soft locking: converged wanted columns get no new direction (guards always do).
    active = (s.res > tol) | (jnp.arange(bs) >= k)
    bxv = s.x if b is None else s.bx
    raw = (s.ax - bxv * s.theta[None, :]) * active[None, :]
    basis, a_basis, b_basis = [s.x, s.p], [s.ax, s.ap], [s.bx, s.bp]
    valid = [jnp.ones((bs,), bool), s.p_valid]
    b_ok, anorm, bnorm = s.b_ok, s.anorm, s.bnorm
    for j in range(krylov_blocks):
      # W₁ = M R; W_{j+1} = M (A W_j − B W_j (W_jᵀ A W_j)): the block residual of W_j.
      w = apply_m(raw)
      bw = apply_b(w) if b is not None else None
      q = jnp.concatenate(basis, axis=1)
      bq = jnp.concatenate(b_basis, axis=1) if b is not None else None
      w, bw, w_valid, ok = _orthonormalize_against(q, bq, w, bw, drop_tol)
      aw = apply_a(w)
      anorm = jnp.maximum(anorm, jnp.max(_col_norms(aw)))
      if b is not None:
        bnorm = jnp.maximum(bnorm, jnp.max(_col_norms(bw)))
      basis.append(w), a_basis.append(aw), b_basis.append(bw), valid.append(w_valid)
      b_ok = b_ok & ok
      if j + 1 < krylov_blocks:
        raw = aw - _dot(w if b is None else bw, _sym(_dot(w.T, aw)))

    # Rayleigh-Ritz in the B-orthonormal basis S = [X, P, W₁, …, W_s].
    sb = jnp.concatenate(basis, axis=1)
    asb = jnp.concatenate(a_basis, axis=1)
    bsb = jnp.concatenate(b_basis, axis=1) if b is not None else None
    valid = jnp.concatenate(valid)
    theta, c = _masked_eigh(_sym(_dot(sb.T, asb)), valid)
    cx = c[:, :bs]
    # New P: the part of each (still active) old X column orthogonal to the new X, i.e.
    # c[:, bs:] c[:bs, bs:]ᵀ in coordinates; SVQB in coordinates drops dependent ones.
    cp = _dot(c[:, bs:], (c[:bs, bs:] * active[:, None]).T)
    cp = cp * valid[:, None]
    cp = cp * (_col_norms(cp) > 10 * eps)[None, :]
    cp, _, p_valid, _ = _svqb(cp, None, drop_tol)
    coef = jnp.concatenate([cx, cp], axis=1)
    xp = _dot(sb, coef)
    axp = _dot(asb, coef)
    x, p = xp[:, :bs], xp[:, bs:]
    ax, ap = axp[:, :bs], axp[:, bs:]
    if b is not None:
      bxp = _dot(bsb, coef)
      bx, bp = bxp[:, :bs], bxp[:, bs:]
    else:
      bx = bp = None
    theta = theta[:bs]
    r = ax - (x if b is None else bx) * theta[None, :]
    res = _relative_residuals(r, x, theta, anorm, bnorm)
    return _State(it=s.it + 1, x=x, ax=ax, bx=bx, p=p, ap=ap, bp=bp, p_valid=p_valid,
                  theta=theta, res=res, anorm=anorm, bnorm=bnorm, b_ok=b_ok)

  def refresh(s: _State) -> _State:
    # The loop updates A·X and B·X by recurrence; in float32 they drift from A applied to X,
    # so a pair can pass the loop's test while its true residual is above tol (seen on some
    # CPUs). Recompute them and the residuals; the outer loop resumes until the true
    # residuals pass (or max_iters / a failed B check stops it, reported as not converged).
    ax = apply_a(s.x)
    bx = apply_b(s.x) if b is not None else None
    bxv = s.x if b is None else bx
    theta = jnp.sum(s.x * ax, axis=0) / jnp.sum(s.x * bxv, axis=0)   # Rayleigh quotients
    r = ax - bxv * theta[None, :]
    return s._replace(ax=ax, bx=bx, theta=theta,
                      res=_relative_residuals(r, s.x, theta, s.anorm, s.bnorm))

  # The start state's A·X is fresh, and every exit of the inner loop is refreshed, so the
  # final state's residuals are those of A applied to the returned vectors.
  s = jax.lax.while_loop(cond, lambda s: refresh(jax.lax.while_loop(cond, body, s)),
                         refresh(state))

  # Honest report: Rayleigh quotients and residuals of the returned vectors (refresh above).
  x, theta, res = s.x[:, :k], s.theta[:k], s.res[:k]
  converged = (res <= tol) & s.b_ok
  result = LobpcgResult(
      eigenvalues=sign * theta, eigenvectors=x, residual_norms=res, iterations=s.it,
      converged=converged)
  return result, s.b_ok


_lobpcg_jit = jax.jit(_lobpcg_core, static_argnames=("k", "krylov_blocks"))


def lobpcg(
    A: Operator,
    X: jax.Array,
    *,
    B: Operator | None = None,
    M: Operator | None = None,
    k: int | None = None,
    largest: bool = False,
    tol: float | None = None,
    max_iters: int = 500,
    krylov_blocks: int = 1,
    check_inputs: bool = True,
) -> LobpcgResult:
  """Smallest (or largest) eigenpairs of ``A x = λ B x`` by LOBPCG (Knyazev 2001; Duersch 2018).

  Args:
    A: the symmetric (n, n) operator: a dense array, a ``jax.experimental.sparse.BCOO``
      matrix, or a callable mapping an (n, m) block to ``A @ block``.
    X: (n, m) starting block, m >= k; need not be orthonormal. Columns beyond ``k`` are guard
      vectors: they speed up convergence of the wanted ones and are not returned.
      Numerically dependent columns are replaced by random ones.
    B: symmetric positive definite (n, n) operator of the generalised problem (same kinds as
      A); None for ``B = I``.
    M: preconditioner applied to residual blocks (same kinds as A), ideally SPD and close to
      ``(A − σB)⁻¹`` for σ near the wanted eigenvalues; None for none.
    k: number of eigenpairs wanted, default m.
    largest: False for the smallest eigenvalues (ascending), True for the largest (descending).
    tol: relative residual tolerance: pair i is converged when
      ``‖A xᵢ − λᵢ B xᵢ‖ <= tol (‖A‖ + |λᵢ| ‖B‖) ‖xᵢ‖``; default `default_tol(X.dtype)`.
    max_iters: iteration cap; hitting it is reported in ``converged``, never hidden.
    krylov_blocks: number s of residual blocks in the search space ``[X, P, W₁, …, W_s]``:
      ``W₁ = M R`` (classical LOBPCG for s = 1) and ``W_{j+1} = M (A W_j − B W_j Θ_j)`` with
      ``Θ_j = W_jᵀ A W_j``, a block-Krylov extension. s > 1 costs s applications of A per
      iteration but needs far fewer iterations (and fewer applications in total) when the
      wanted eigenvalues sit in a cluster.
    check_inputs: also validate the values of concrete inputs: NaN/Inf, symmetry, positive
      definiteness of B (shapes, dtypes and k vs n are always checked). Under ``jit``/``vmap``
      the arrays are tracers and these value checks cannot run; an indefinite B then shows up
      as ``converged == False`` (the iteration stops when a B-Gram matrix has a non-positive
      diagonal). The dense-B check is a Cholesky factorisation (O(n³) on the host); callables
      and BCOO are probed with random vectors (a callable is evaluated eagerly once).

  Returns:
    `LobpcgResult`: eigenvalues (k,), eigenvectors (n, k) with ``Xᵀ B X = I``,
    residual_norms (k,), iterations, converged (k,).

  Raises:
    ValueError/TypeError naming the problem: non-square or mismatched A/B/M, k < 1, k > m,
    m > n, tol < 0 or NaN/Inf, max_iters < 1, dtypes other than float32/float64 or mixed, NaN/Inf, a non-symmetric A or B, a B
    that is not positive definite (eagerly: also when the iteration discovers it).

  Dtypes: float32 or float64 (the latter with ``jax_enable_x64``); all products run at
  ``Precision.HIGHEST``.
  """
  X = jnp.asarray(X)
  if X.ndim != 2:
    raise ValueError(f"X must be an (n, m) block; got shape {X.shape}. Use jax.vmap for batches.")
  _check_dtype("X", X.dtype)
  n, m = X.shape
  k = m if k is None else int(k)
  if k < 1:
    raise ValueError(f"k must be >= 1; got k={k}.")
  if k > m:
    raise ValueError(f"k={k} eigenpairs need a block X of at least k columns; X has {m}.")
  if krylov_blocks < 1:
    raise ValueError(f"krylov_blocks must be >= 1; got {krylov_blocks}.")
  _check_iteration_args(tol, max_iters)
  if m > n:
    raise ValueError(f"k too large for n: the block has m={m} columns but n={n} rows.")
  A, B, M = (_as_pytree_operator(op) for op in (A, B, M))
  if A is None:
    raise TypeError("A is required.")
  _check_operator("A", A, n, X.dtype, symmetric=True, values=check_inputs)
  if B is not None:
    _check_operator("B", B, n, X.dtype, symmetric=True, positive_definite=True,
                    values=check_inputs)
  if M is not None:
    _check_operator("M", M, n, X.dtype, symmetric=False, values=check_inputs)
  if check_inputs and not is_traced(X) and not np.all(np.isfinite(np.asarray(X))):
    raise ValueError("X has NaN/Inf entries.")
  if tol is None:
    tol = default_tol(X.dtype)
  result, b_ok = _lobpcg_jit(A, B, M, X, tol, largest, max_iters, k=k,
                             krylov_blocks=int(krylov_blocks))
  if B is not None and not is_traced(b_ok) and not bool(b_ok):
    raise ValueError("B is not positive definite: a B-Gram matrix of the search space had a "
                     "non-positive diagonal.")
  return result


# ----------------------------------------------------------------------------------------------
# DSM: graph-Laplacian eigenvectors.


def positive_fraction(y: jax.Array, valid: jax.Array | None = None, axis: int = -1) -> jax.Array:
  """Fraction of positive entries along ``axis``, counting only ``valid`` entries.

  Args:
    y: (..., n, ...) values.
    valid: optional bool mask broadcastable to ``y`` (padding excluded); None counts all.
    axis: the node axis.
  Returns:
    ``y``'s shape with ``axis`` kept as 1.
  """
  if valid is None:
    return jnp.mean(y > 0, axis=axis, keepdims=True)
  pos = jnp.sum((y > 0) & valid, axis=axis, keepdims=True)
  return pos / jnp.maximum(jnp.sum(valid, axis=axis, keepdims=True), 1)


def apply_sign_rule(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """SPEC §3 sign rule on (..., n, k) eigenvectors (columns).

  A column with more than 50% but not 100% positive entries is negated, so its positive side
  is the minority (DSM's convention). Additionally a column with no positive entry (a one-signed
  ``y₀``) is negated to be non-negative, so both methods return the same ``y₀``. This is the
  one sign rule of the project (``dsm.foreground_side`` applies it to single vectors).

  Args:
    y: (..., n, k) eigenvectors.
    valid: optional (..., n) bool: the real nodes of a padded graph; fractions count only them.
  """
  frac = positive_fraction(y, None if valid is None else valid[..., :, None], axis=-2)
  flip = ((frac > 0.5) & (frac < 1.0)) | (frac == 0.0)
  return jnp.where(flip, -y, y)


def _deflated_start(u0, n, bs, dtype, seed, valid=None):
  """Random start block orthogonal to u₀. With padding, node i of rank r among the valid nodes
  takes row r of the block an unpadded graph of the valid nodes would get (the generator is
  prefix-consistent: the rows of an (n, m) draw begin every larger draw), and padded rows are 0,
  so a padded solve iterates exactly as the unpadded one."""
  x = _start_block(seed, n, bs, dtype)
  if valid is not None:
    rank = jnp.cumsum(valid) - 1
    x = jnp.where(valid[:, None], x[jnp.clip(rank, 0, n - 1)], 0)
  return x - u0[:, None] * _dot(u0[None, :], x)


# Padded nodes of a masked solve get this eigenvalue of N (μ ≤ 1 for the real ones, λ = 1 − μ ≥ 0),
# so they are never among the k largest μ.
_PAD_MU = -2.0


def _scaling(w: jax.Array, valid=None):
  """(s = D^-½ (n,), the true degrees W 1 (n,)). With padding, degrees sum real columns only
  (a matrix-vector product, not a masked copy of W) and s is 0 on padded nodes, so D^-½ W D^-½
  has zero padded rows and columns whatever W holds there (finite values)."""
  if valid is None:
    return jax.lax.rsqrt(graphs.degrees(w)), jnp.sum(w, axis=-1)
  d = _dot(w, valid.astype(w.dtype)[:, None])[:, 0]
  d = jnp.where(valid, d, 0)
  safe = jnp.where(d < graphs.MIN_DEGREE, jnp.ones_like(d), d)
  return jnp.where(valid, jax.lax.rsqrt(safe), 0), d


def _laplacian_eigh(w: jax.Array, k: int, valid=None):
  """Dense path: eigh of N = D^-½ W D^-½; returns (mu (k,) descending, U (n, k), s)."""
  s, _ = _scaling(w, valid)
  nmat = s[:, None] * w * s[None, :]
  if valid is not None:
    nmat = nmat + jnp.diag(jnp.where(valid, 0.0, _PAD_MU).astype(nmat.dtype))
  mu, u = jnp.linalg.eigh(nmat)
  return mu[::-1][:k], u[:, ::-1][:, :k], s


def _top_vector(d_true: jax.Array):
  """u₀ ∝ D^½ 1 on nodes with edges (degrees ``d_true``): the exact top eigenvector (μ = 1) of
  D^-½ W D^-½."""
  u0 = jnp.where(d_true >= graphs.MIN_DEGREE, jnp.sqrt(jnp.maximum(d_true, 0)), 0)
  u0 = jnp.where(jnp.any(u0 > 0), u0, jnp.ones_like(u0))  # no edges at all: N = 0
  return u0 / jnp.linalg.norm(u0)


def _laplacian_lobpcg(w, tol, seed, max_iters, *, k: int, guard: int, krylov_blocks: int,
                      valid=None):
  """LOBPCG on the deflated standard form; returns (mu, U, s, u₀ residual, rest's result)."""
  n = w.shape[-1]
  dtype = w.dtype
  s, d_true = _scaling(w, valid)
  u0 = _top_vector(d_true)
  pad = None if valid is None else jnp.where(valid, 0.0, _PAD_MU).astype(dtype)[:, None]

  def nmat(v):  # N v = D^-½ W D^-½ v (− 2 v on padded nodes)
    out = s[:, None] * _dot(w, s[:, None] * v)
    return out if pad is None else out + pad * v

  nu0 = nmat(u0[:, None])[:, 0]
  mu0 = jnp.vdot(u0, nu0)
  res0 = jnp.linalg.norm(nu0 - mu0 * u0) / (1.0 + jnp.abs(mu0))
  if k == 1:
    return mu0[None], u0[:, None], s, res0, None
  shift = mu0 + 3.0  # Hotelling deflation: u₀'s eigenvalue moves to mu0 − shift <= −2

  def deflated(v):
    return nmat(v) - shift * u0[:, None] * _dot(u0[None, :], v)

  bs = min(k - 1 + guard, n - 1)
  x0 = _deflated_start(u0, n, bs, dtype, seed, valid)
  res, _ = _lobpcg_core(jax.tree_util.Partial(deflated), None, None, x0, tol, True, max_iters,
                        k=k - 1, krylov_blocks=krylov_blocks)
  mu = jnp.concatenate([mu0[None], res.eigenvalues])
  u = jnp.concatenate([u0[:, None], res.eigenvectors], axis=1)
  return mu, u, s, res0, res


@functools.partial(jax.jit,
                   static_argnames=("k", "method", "guard", "krylov_blocks"))
def _laplacian_single(w, tol, seed, max_iters, valid, *, k, method, guard, krylov_blocks):
  if method == "eigh":
    mu, u, s = _laplacian_eigh(w, k, valid)
    nu = s[:, None] * _dot(w, s[:, None] * u)
    res = _col_norms(nu - u * mu[None, :]) / (1.0 + jnp.abs(mu))
    info = LobpcgResult(mu, u, res, jnp.asarray(0, jnp.int32), jnp.ones((k,), bool))
  else:
    mu, u, s, res0, rest = _laplacian_lobpcg(w, tol, seed, max_iters, k=k, guard=guard,
                                             krylov_blocks=krylov_blocks, valid=valid)
    if rest is None:
      res, it = res0[None], jnp.asarray(0, jnp.int32)
    else:
      res, it = jnp.concatenate([res0[None], rest.residual_norms]), rest.iterations
    info = LobpcgResult(mu, u, res, it, res <= jnp.maximum(tol, 10 * jnp.finfo(w.dtype).eps))
  lam = 1.0 - mu
  if valid is not None:
    u = jnp.where(valid[:, None], u, 0)
  y = apply_sign_rule(s[:, None] * u, valid)
  return lam, y, info._replace(eigenvalues=lam, eigenvectors=y)


def laplacian_eigenvectors(
    W: jax.Array,
    k: int,
    *,
    method: str = "auto",
    tol: float | None = None,
    max_iters: int = 500,
    guard: int = DEFAULT_GUARD,
    krylov_blocks: int = DEFAULT_KRYLOV_BLOCKS,
    seed: int = 0,
    return_info: bool = False,
    check_inputs: bool = True,
    valid: jax.Array | None = None,
):
  """The k smallest eigenpairs of DSM's ``(D − W) y = λ D y`` (SPEC §3; DSM §3.1).

  ``D = diag(W 1)`` with degrees below 1e-12 replaced by 1 (SPEC §2). Solved in the standard
  form: the k largest eigenpairs ``μ`` of ``D^-½ W D^-½``, ``λ = 1 − μ``, ``y = D^-½ u``.

  Args:
    W: (n, n) or (b, n, n) symmetric non-negative affinities, float32/float64.
    k: number of eigenpairs, 1 <= k <= n (DSM: 20; y₀ constant, y₁ the Fiedler vector).
    method: "eigh" (dense ``jnp.linalg.eigh``, O(n³)), "lobpcg" (`lobpcg` on the standard form
      with the known top eigenvector ``u₀ ∝ D^½ 1`` deflated, k − 1 + `guard` block columns),
      or "auto": "eigh" for n <= `EIGH_MAX_NODES`, else "lobpcg" (measured crossover).
    tol: LOBPCG relative residual tolerance (standard form, ``‖N‖ = 1``); default
      `default_tol(W.dtype)`.
    max_iters: LOBPCG iteration cap.
    guard: extra LOBPCG block columns (not returned).
    krylov_blocks: residual blocks per LOBPCG iteration (see `lobpcg`).
    seed: seed of the random LOBPCG start block.
    return_info: also return a `LobpcgResult` (λ, y, relative residuals of the standard form,
      iterations, converged flags) as a third output; for "eigh" iterations = 0 and
      converged = True (a direct method; ``tol`` is not used).
    check_inputs: validate concrete W (shape, k vs n, NaN/Inf, symmetry, negative entries).
    valid: optional (n,) / (b, n) bool, the real nodes of a graph padded to a common size:
      padded rows and columns of W are ignored (they must be finite), their entries of every
      eigenvector are 0, the
      sign rule counts only real nodes, and LOBPCG starts from the rows an unpadded graph of the
      real nodes would get, so the result equals the unpadded solve's (up to rounding). Needs
      k below the number of real nodes.

  Returns:
    ``(eigenvalues, eigenvectors)``: (..., k) ascending λ and (..., n, k) eigenvectors with
    ``Yᵀ D Y = I`` and SPEC §3's sign rule (`apply_sign_rule`); plus the info if requested.
    With ``return_info=False`` an eager call warns (RuntimeWarning) if LOBPCG did not converge;
    under jit ask for the info to see it.
  """
  W = jnp.asarray(W)
  if W.ndim not in (2, 3) or W.shape[-1] != W.shape[-2]:
    raise ValueError(f"W must be (n, n) or (b, n, n); got shape {W.shape}.")
  _check_dtype("W", W.dtype)
  n = W.shape[-1]
  k = int(k)
  if not 1 <= k <= n:
    raise ValueError(f"k must satisfy 1 <= k <= n = {n}; got k={k}.")
  if method == "auto":
    method = "eigh" if n <= EIGH_MAX_NODES else "lobpcg"
  if method not in ("eigh", "lobpcg"):
    raise ValueError(f"method must be 'auto', 'eigh' or 'lobpcg'; got {method!r}.")
  if krylov_blocks < 1:
    raise ValueError(f"krylov_blocks must be >= 1; got {krylov_blocks}.")
  _check_iteration_args(tol, max_iters)
  if method == "lobpcg" and k == n:
    method = "eigh"  # the deflated space has n − 1 dimensions: nothing to iterate on
  if check_inputs and not is_traced(W):
    _check_affinity(np.asarray(W))
  tol = default_tol(W.dtype) if tol is None else tol
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    if valid.shape != W.shape[:-1]:
      raise ValueError(f"valid must have shape {W.shape[:-1]} (one flag per node); got "
                       f"{valid.shape}.")
  fn = functools.partial(_laplacian_single, k=k, method=method, guard=max(int(guard), 0),
                         krylov_blocks=int(krylov_blocks))
  if W.ndim == 3:
    fn = jax.vmap(fn, in_axes=(0, None, None, None, None if valid is None else 0))
  lam, y, info = fn(W, tol, seed, max_iters, valid)
  if return_info:
    return lam, y, info
  if not is_traced(info.converged) and not bool(np.all(np.asarray(info.converged))):
    warnings.warn(
        f"laplacian_eigenvectors: LOBPCG did not reach tol={tol:.3g} in {max_iters} "
        f"iterations (max relative residual {float(np.max(np.asarray(info.residual_norms))):.3g});"
        " raise max_iters or tol, or use return_info=True.", RuntimeWarning, stacklevel=2)
  return lam, y


def _check_affinity(w: np.ndarray) -> None:
  if not np.all(np.isfinite(w)):
    raise ValueError("W has NaN/Inf entries; check the features it was built from.")
  if np.any(w < 0):
    raise ValueError(
        f"W has negative entries (min {w.min():.3g}); DSM affinities are non-negative "
        "(relu of cosine similarities, binary KNN edges).")
  asym = np.abs(w - np.swapaxes(w, -1, -2)).max()
  scale = np.abs(w).max()
  if asym > _symmetry_rtol(w.dtype) * max(scale, 1e-30):
    raise ValueError(f"W is not symmetric: max |W − Wᵀ| = {asym:.3g}; symmetrise it first.")


__all__ = [
    "DEFAULT_GUARD", "DEFAULT_KRYLOV_BLOCKS", "EIGH_MAX_NODES", "PRECISION", "LobpcgResult",
    "Operator", "apply_sign_rule", "default_tol", "laplacian_eigenvectors", "lobpcg",
    "positive_fraction",
]
