"""NeuralEF objective and the output transforms it is trained with (SPEC §5).

Deng & Luo, "Learning Neural Eigenfunctions for Unsupervised Semantic Segmentation", eq. (5)-(7):
ψ's K outputs approximate the K principal eigenfunctions of a kernel ``G`` by maximising
``Σⱼ Rⱼⱼ − β Σ_{i<j} R̂ᵢⱼ²`` with ``R = ΨᵀGΨ`` and ``R̂ = stop_gradient(Ψ)ᵀGΨ``.

Pieces, in the order a training step composes them::

  logits = psi.apply(params, features)[0]                 # (B, N, K)
  soft = gumbel_softmax(key, logits, tau_schedule(T)(step))
  psi_n = l2_batch_normalize(soft, axis_name="data")        # columns over all B·N tokens
  loss, aux = neuralef_loss(psi_n.reshape(-1, K), G, beta_for(K), t=REFERENCE_T,
                            axis_name="data")

``neuralef_loss``'s own default ``t = 1/β`` (β·t = 1) orders the eigenfunctions; the segmentor's
``t = 0.01`` (``REFERENCE_T``) does not on a free matrix (SPEC §6) and is passed explicitly by
its training step. Other objectives, side by side: ``spectral_jax.neuralef.objectives``.

The original (kernel-agnostic) NeuralEF instead normalises by the batch RMS and keeps EMAs of
the RMS and of the eigenvalues for evaluation: ``rms_batch_normalize``, ``ema_init``,
``ema_update``.

Every function is pure and jit-able. Functions that reduce over the batch take ``axis_name``:
inside ``jax.shard_map`` or ``jax.pmap`` each device holds its rows and the result equals the
single-device result on the global batch.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse

# β·K of the reference runs (K=256 → β=0.08, K=512 → 0.04; SPEC §5).
BETA_TIMES_K = 20.48
# ψ is multiplied by √t before forming R: the reference ``neuralef_loss_cfg['t']``. Not
# ``neuralef_loss``'s default (that is t = 1/β): at this t the loss has no ordered optimum on a
# free matrix unless β·t·λᵢ > 1 − λᵢ₊₁/λᵢ (SPEC §6).
REFERENCE_T = 0.01
# EMA momentum of the original NeuralEF (RMS norms and eigenvalues).
DEFAULT_MOMENTUM = 0.9

AxisName = Union[str, tuple[str, ...], None]
Kernel = Union[jax.Array, np.ndarray, sparse.BCOO, Callable[[jax.Array], jax.Array]]


def beta_for(k: int, beta_times_k: float = BETA_TIMES_K) -> float:
  """β for K eigenfunctions, holding β·K fixed as the reference runs do (SPEC §5).

  Args:
    k: number of eigenfunctions K (> 0).
    beta_times_k: the product β·K; 20.48 gives β = 0.08 at K = 256 and 0.04 at K = 512.
  Returns:
    β = beta_times_k / k, a Python float.
  """
  if isinstance(k, bool) or int(k) != k or k < 1:
    raise ValueError(f"beta_for needs a positive integer K, got {k!r}.")
  return float(beta_times_k) / int(k)


def tau_schedule(total_steps: int, tau_max: float = 1.0, tau_min: float = 0.3) -> optax.Schedule:
  """Cosine schedule of the Gumbel-softmax temperature, per step (SPEC §5).

  ``τ(s) = τ_min + (τ_max − τ_min)·(1 + cos(π·s/T))/2`` for ``0 ≤ s ≤ T``, then ``τ_min``
  (the reference formula, which would rise again after T; here it stays at τ_min).

  Args:
    total_steps: T, the number of training steps (epochs × steps per epoch).
    tau_max: temperature at step 0.
    tau_min: temperature from step T on (also the inference divisor of the logits).
  Returns:
    An optax schedule ``step -> τ`` (float32 scalar), jit-able.
  """
  if int(total_steps) != total_steps or total_steps < 1:
    raise ValueError(f"tau_schedule needs total_steps ≥ 1, got {total_steps!r}.")
  if not 0.0 < tau_min <= tau_max:
    raise ValueError(f"tau_schedule needs 0 < tau_min ≤ tau_max, got {tau_min}, {tau_max}.")
  return optax.cosine_decay_schedule(
      init_value=tau_max, decay_steps=int(total_steps), alpha=tau_min / tau_max)


def gumbel_softmax(key: jax.Array, logits: jax.Array, tau: float | jax.Array,
                   axis: int = -1) -> jax.Array:
  """Soft Gumbel-softmax sample ``softmax((logits + g)/τ)``, g ~ Gumbel(0, 1) i.i.d.

  The relaxation of Jang et al. that the segmentor applies to ψ's logits during training
  (paper §3.5, SPEC §5; ``torch.nn.functional.gumbel_softmax(hard=False)``). Under
  ``shard_map``/``pmap`` give each device its own noise, e.g.
  ``jax.random.fold_in(key, jax.lax.axis_index("data"))``.

  Args:
    key: a PRNG key.
    logits: (..., K) float logits.
    tau: temperature τ > 0 (scalar; may be traced, e.g. from ``tau_schedule``).
    axis: the class axis.
  Returns:
    Array of ``logits``' shape, float32 at least, non-negative, summing to 1 along ``axis``.
  """
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"gumbel_softmax needs float logits, got dtype {logits.dtype}.")
  if isinstance(tau, (int, float)) and not tau > 0:
    raise ValueError(f"gumbel_softmax needs a temperature τ > 0, got {tau}.")
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  g = jax.random.gumbel(key, logits.shape, dtype)
  return jax.nn.softmax((logits.astype(dtype) + g) / tau, axis=axis)


def _batch_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
  """Sum over every axis but the last, and over devices when ``axis_name`` is given."""
  s = jnp.sum(x, axis=tuple(range(x.ndim - 1)))
  return jax.lax.psum(s, axis_name) if axis_name is not None else s


def _check_columns(psi: jax.Array, name: str) -> None:
  if psi.ndim < 2:
    raise ValueError(f"{name} needs psi of shape (..., K) with at least one batch axis, "
                     f"got shape {psi.shape}.")
  if not jnp.issubdtype(psi.dtype, jnp.floating):
    raise TypeError(f"{name} needs a float psi, got dtype {psi.dtype}.")


def l2_batch_normalize(psi: jax.Array, *, axis_name: AxisName = None,
                       min_norm: float = 1.0) -> jax.Array:
  """Divides each output column by its L2 norm over the batch, clamped at ``min_norm``.

  The "L2 batch normalisation" that enforces eq. (5)'s constraint in the segmentor (SPEC §5;
  reference: ``ret / ret.norm(dim=[0, 1]).clamp(min=1)``). Columns whose norm is below
  ``min_norm`` are divided by ``min_norm``. The norm is differentiated through, as in the
  reference.

  Args:
    psi: (..., K) outputs, all leading axes are the batch (e.g. (B, N, K) over B·N tokens).
    axis_name: with ``shard_map``/``pmap``, the mapped axis holding the rest of the batch; the
      norm is then taken over the global batch (``psum`` of the squared sums).
    min_norm: the clamp (reference 1.0).
  Returns:
    Array of ``psi``'s shape and dtype.
  """
  psi = jnp.asarray(psi)
  _check_columns(psi, "l2_batch_normalize")
  sq = _batch_sum(jnp.square(psi.astype(jnp.promote_types(psi.dtype, jnp.float32))), axis_name)
  # sqrt(max(s, m²)) equals max(sqrt(s), m) but has a finite gradient at s = 0.
  norm = jnp.sqrt(jnp.maximum(sq, min_norm**2))
  return (psi / norm).astype(psi.dtype)


def rms_batch_normalize(psi: jax.Array, *, axis_name: AxisName = None,
                        eps: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """Divides each output column by its root-mean-square over the batch (original NeuralEF).

  Training-time normalisation of thudzj/NeuralEigenFunction (``norm / sqrt(batch size)``),
  which makes ``E[ψ(x)²] = 1`` over the batch (eq. (5)'s constraint). Keep an EMA of the
  returned RMS with ``ema_update`` and divide by it at evaluation (SPEC §5).

  Args:
    psi: (..., K) outputs; all leading axes are the batch.
    axis_name: mapped axis of the rest of the batch (RMS over the global batch).
    eps: lower bound on the RMS, so an all-zero column gives zeros, never NaN.
  Returns:
    ``(psi / rms, rms)``: the normalised outputs (``psi``'s shape and dtype) and the (K,)
    per-column RMS (float32 at least).
  """
  psi = jnp.asarray(psi)
  _check_columns(psi, "rms_batch_normalize")
  dtype = jnp.promote_types(psi.dtype, jnp.float32)
  count = _batch_sum(jnp.ones(psi.shape[:-1] + (1,), dtype), axis_name)
  sq = _batch_sum(jnp.square(psi.astype(dtype)), axis_name)
  rms = jnp.sqrt(jnp.maximum(sq / count, eps**2))
  return (psi / rms).astype(psi.dtype), rms


class EMAState(NamedTuple):
  """Exponential moving average; ``count`` = number of updates so far (int32 scalar)."""
  value: jax.Array
  count: jax.Array


def ema_init(shape: int | tuple[int, ...], dtype=jnp.float32) -> EMAState:
  """An empty EMA of the given shape (e.g. (K,) for RMS norms or eigenvalues)."""
  shape = (shape,) if isinstance(shape, int) else tuple(shape)
  return EMAState(jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def ema_update(state: EMAState, x: jax.Array, momentum: float = DEFAULT_MOMENTUM) -> EMAState:
  """``value ← momentum·value + (1 − momentum)·x``; the first update copies ``x``.

  The original NeuralEF's running RMS (``eigennorm``) and eigenvalue estimates (SPEC §5).
  ``x`` is treated as data (stop-gradient).

  Args:
    state: the current ``EMAState``.
    x: a new observation of ``state.value``'s shape.
    momentum: weight of the old value (reference 0.9).
  Returns:
    The updated ``EMAState``.
  """
  chex.assert_equal_shape([state.value, x])
  x = jax.lax.stop_gradient(jnp.asarray(x, state.value.dtype))
  mixed = momentum * state.value + (1.0 - momentum) * x
  return EMAState(jnp.where(state.count == 0, x, mixed), state.count + 1)


def _kernel_matmul(kernel: Kernel, dtype) -> Callable[[jax.Array], jax.Array]:
  """A function ``psi_global -> kernel @ psi_global`` for a dense, BCOO or callable kernel."""
  if isinstance(kernel, sparse.BCOO):
    return lambda p: kernel @ p
  if callable(kernel):
    return kernel
  kernel = jnp.asarray(kernel)
  if not jnp.issubdtype(kernel.dtype, jnp.floating):
    raise TypeError(f"the kernel must be a float array, got dtype {kernel.dtype}.")
  return lambda p: kernel.astype(dtype) @ p


def _global_rows(n_local: int, axis_name: AxisName) -> int:
  return n_local * (jax.lax.axis_size(axis_name) if axis_name is not None else 1)


def _check_psi(psi: jax.Array, name: str) -> jax.Array:
  """psi as a float (n, K) array, or a clear error naming ``name``."""
  psi = jnp.asarray(psi)
  if psi.ndim != 2:
    raise ValueError(f"{name} needs psi of shape (n, K), got shape {psi.shape}; "
                     "flatten the batch first, e.g. psi.reshape(-1, K).")
  if not jnp.issubdtype(psi.dtype, jnp.floating):
    raise TypeError(f"{name} needs a float psi, got dtype {psi.dtype}.")
  return psi


def _kernel_product(psi: jax.Array, kernel: Kernel, axis_name: AxisName) -> jax.Array:
  """This device's rows of ``G·stop_gradient(ψ)`` for the global ψ, after shape checks.

  Args:
    psi: (n_local, K) float rows (already checked by ``_check_psi``, in the compute dtype).
    kernel: dense / BCOO (n_local, n) rows of G, or a callable (n, K) -> (n_local, K).
    axis_name: the mapped axis holding the rest of the batch (ψ is ``all_gather``ed), or None.
  Returns:
    (n_local, K) array of psi's dtype, stop-gradient (G is a constant of every objective).
  """
  n_local, k = psi.shape
  n = _global_rows(n_local, axis_name)
  where = " per device (rows of this device × global batch)" if axis_name is not None else ""
  if not callable(kernel) or isinstance(kernel, sparse.BCOO):
    shape = tuple(kernel.shape)
    if len(shape) != 2 or shape[0] != n_local:
      raise ValueError(f"kernel rows must match psi's {n_local} rows{where}: kernel shape "
                       f"{shape}, psi shape {psi.shape}.")
    if shape[1] != n:
      raise ValueError(f"kernel must be {'square ' if axis_name is None else ''}"
                       f"({n_local}, {n}){where}, got shape {shape}.")
  if k > n:
    raise ValueError(f"K = {k} eigenfunctions exceed the batch of n = {n} rows: R = ψᵀGψ would "
                     "have rank < K; use a larger batch or fewer eigenfunctions.")
  full = jax.lax.stop_gradient(psi)
  if axis_name is not None and not getattr(kernel, "takes_local_rows", False):
    full = jax.lax.all_gather(full, axis_name, tiled=True)
  kpsi = _kernel_matmul(kernel, psi.dtype)(full)
  if tuple(kpsi.shape) != (n_local, k):
    raise ValueError(f"kernel_matmul must map {full.shape} to ({n_local}, {k}){where}, got "
                     f"{tuple(kpsi.shape)}.")
  return jax.lax.stop_gradient(kpsi.astype(psi.dtype))


def _objective(r: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(−tr(R)/K + β Σ_{i<j} Rᵢⱼ²/K, −tr(R)/K, β Σ_{i<j} Rᵢⱼ²/K)`` of a (K, K) R."""
  k = r.shape[0]
  eig = -jnp.trace(r) / k
  orth = beta * jnp.sum(jnp.square(jnp.triu(r, 1))) / k
  return eig + orth, eig, orth


def _gram(psi: jax.Array, kpsi: jax.Array, axis_name: AxisName) -> jax.Array:
  r = psi.T @ kpsi
  return jax.lax.psum(r, axis_name) if axis_name is not None else r


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def symmetric_gram(psi: jax.Array, kpsi: jax.Array, axis_name: AxisName,
                   hat: bool) -> jax.Array:
  """``R = ΨᵀGΨ`` (global batch) from this device's rows of Ψ and of ``kpsi = GΨ``.

  Differentiated as a function of Ψ alone, with G symmetric and constant (``kpsi`` gets no
  gradient): ``hat=False`` gives ``∂⟨C, R⟩/∂Ψ = GΨ(C + Cᵀ)`` (R = ΨᵀGΨ); ``hat=True`` the
  gradient of ``R̂ = stop_gradient(Ψ)ᵀGΨ``, ``GΨ·C``, under which R̂ᵢⱼ moves column j only.
  For the Gram ΨᵀΨ pass ``kpsi = stop_gradient(psi)`` (G = I). The backward pass is local
  (no collective transposed), so the gradient w.r.t. the local rows is the single-device one
  under ``shard_map`` and ``pmap`` alike, as in ``neuralef_loss``.

  Args:
    psi: (n_local, K) rows of Ψ.
    kpsi: (n_local, K) the same rows of GΨ (from ``_kernel_product``).
    axis_name: the mapped axis holding the rest of the batch (R is ``psum``med), or None.
    hat: whether to differentiate R̂ = sg(Ψ)ᵀGΨ instead of R.
  Returns:
    (K, K) R, replicated across devices.
  """
  del hat
  return _gram(psi, kpsi, axis_name)


def _symmetric_gram_fwd(psi, kpsi, axis_name, hat):
  del hat
  return _gram(psi, kpsi, axis_name), kpsi


def _symmetric_gram_bwd(axis_name, hat, kpsi, cotangent):
  del axis_name
  c = cotangent if hat else cotangent + cotangent.T
  return (kpsi @ c).astype(kpsi.dtype), jnp.zeros_like(kpsi)


symmetric_gram.defvjp(_symmetric_gram_fwd, _symmetric_gram_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _loss_core(psi, kpsi, beta, axis_name):
  """Loss of (already √t-scaled) rows ``psi`` given their kernel products ``kpsi = (Gψ)_rows``."""
  r = _gram(psi, kpsi, axis_name)
  return _objective(r, beta), jnp.diagonal(r)


def _loss_core_fwd(psi, kpsi, beta, axis_name):
  r = _gram(psi, kpsi, axis_name)
  return (_objective(r, beta), jnp.diagonal(r)), (kpsi, jnp.triu(r, 1), beta)


def _loss_core_bwd(axis_name, residuals, cotangents):
  # For symmetric G and L = −tr(R)/K + β Σ_{i<j} R̂ᵢⱼ²/K, with R = ΨᵀGΨ, R̂ = sg(Ψ)ᵀGΨ:
  #   ∂L/∂Ψ = (2/K)·(−GΨ + β·GΨ·triu(R̂, 1)).
  # Only this device's rows of GΨ are needed (G is symmetric, so the column factor's share
  # equals the row factor's), and no collective is transposed: the gradient is the same
  # under shard_map (psum ↦ identity) and pmap (psum ↦ psum). The two parts get their own
  # share of the formula; diag(R) is a reported value (stop-gradient in ``neuralef_loss``).
  del axis_name
  kpsi, upper, beta = residuals
  (g_total, g_eig, g_orth), _ = cotangents
  k = kpsi.shape[1]
  g_psi = (2.0 / k) * ((-(g_total + g_eig)) * kpsi + (g_total + g_orth) * beta * (kpsi @ upper))
  return g_psi.astype(kpsi.dtype), jnp.zeros_like(kpsi), jnp.zeros_like(beta)


_loss_core.defvjp(_loss_core_fwd, _loss_core_bwd)


def neuralef_loss(psi: jax.Array, kernel: Kernel, beta: float | jax.Array, *,
                  t: float | jax.Array | None = None,
                  axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NeuralEF loss ``−tr(R)/K + β·Σ_{i<j} R̂ᵢⱼ²/K`` (paper eq. (5)-(7), SPEC §5).

  With Ψ = √t·psi: ``R = ΨᵀGΨ`` and ``R̂ = stop_gradient(Ψ)ᵀGΨ``. Only the strict upper
  triangle of R̂ is penalised, so R̂ᵢⱼ (i < j) sends gradient into column j alone: each
  eigenfunction j is pushed away from the earlier ones i < j and never the reverse, which
  orders them by eigenvalue. This is the reference ``cal_neuralef_loss``; eq. (7)'s 1/B² is
  replaced by the L2 batch normalisation of ψ's columns and the √t scale.

  Optimum and scale: for unit columns (``l2_batch_normalize``) column j maximises
  ``t·ψⱼᵀ(G − β·t·Σ_{i<j} λᵢ² uᵢuᵢᵀ)ψⱼ``: the gain scales with t, the penalty with β·t², and
  eigenfunction i is deflated from λᵢ to ``λᵢ(1 − β·t·λᵢ)``. The optimum is u₁…u_K in order
  iff ``λᵢ(1 − β·t·λᵢ) < λⱼ`` for all i < j ≤ K (for adjacent pairs: β·t·λᵢ > 1 − λᵢ₊₁/λᵢ),
  so it depends on G's scale. The default ``t = 1/β`` (β·t = 1) meets it whenever G's top K−1
  eigenvalues exceed 1 (deflated ≤ 0) and λ_K > 0, and it orders on the segmentor's
  normalised DINOv2 batch kernels (λ₁ ≈ 1.3; BUILD_NOTES, issue 22). The segmentor's ``t = REFERENCE_T = 0.01`` with β = ``beta_for(K)`` gives
  β·t ≈ 8e-4 (K = 256) to 6e-3 (K = 32): columns copy u₁ (SPEC §6); pass it explicitly to
  reproduce the reference. Loss value and gradient scale with t (β·t fixed).

  The kernel is a constant of the loss (the reference builds it without gradient) and must be
  **symmetric**: the gradient is the closed form ``(2t/K)·(−Gψ + β·Gψ·triu(R̂, 1))``
  (reverse mode only; forward-mode ``jvp`` is not defined), which needs just this device's
  rows of Gψ and saves the second kernel product autodiff would make.

  Sharding: with ``axis_name``, call inside ``jax.shard_map`` (or ``jax.pmap``) where each
  device holds its ``n_local`` rows of psi and the same rows of the kernel, (n_local, n). The
  loss ``all_gather``s psi for the kernel's columns, forms ``(Gψ)_rows = G_rows ψ``, and
  ``psum``s the partial products ``ψ_rowsᵀ(Gψ)_rows`` into R. The loss, aux and the gradient
  w.r.t. the local rows equal the single-device numbers on the global batch, under both
  shard_map and pmap. Gradients of replicated parameters (ψ's weights): shard_map already
  sums them over devices (add no ``pmean``); under pmap each device gets its partial sum, so
  ``psum`` them (not ``pmean``: the loss is already the global one).

  Args:
    psi: (n, K) float outputs ψ(x) of the batch (n_local rows per device with ``axis_name``),
      as given: the caller normalises (``l2_batch_normalize``). K ≤ n (global).
    kernel: the symmetric kernel G over the batch as one of
      - a dense (n, n) array ((n_local, n) rows with ``axis_name``);
      - a ``jax.experimental.sparse.BCOO`` of the same shape;
      - a callable ``kernel_matmul(p) -> G_rows @ p`` mapping (n, K) to (n, K) ((n, K) to
        (n_local, K) with ``axis_name``), for blockwise products at large n; one with the
        attribute ``takes_local_rows = True`` gets this device's (n_local, K) rows of p
        instead (no all-gather: it fetches the rest itself, e.g. ``batch_kernel_matmul``'s
        ring form).
    beta: β ≥ 0, the weight of the orthogonality penalty (``beta_for(K)``: β·K = 20.48).
    t: the scale: ψ is multiplied by √t. None (default): t = 1/β, i.e. β·t = 1 (t = 1 if
      β = 0), which orders eigenfunctions (above). The reference value is ``REFERENCE_T``.
    axis_name: the mapped axis (or tuple of axes) holding the rest of the batch, or None.
  Returns:
    ``(loss, aux)``: the float32 (at least) scalar loss, replicated across devices, and a dict
    - ``"diag_R"``: (K,) diagonal of R (as scaled by t);
    - ``"eigenvalues"``: (K,) ``diag(R)/t = ψⱼᵀGψⱼ``, the eigenvalue estimates of G when ψ's
      columns have unit norm (as after ``l2_batch_normalize`` once norms exceed 1);
    - ``"loss_eig"``: ``−tr(R)/K``; ``"loss_orth"``: ``β·Σ_{i<j} R̂ᵢⱼ²/K`` (the two terms
      of the loss, differentiable like it; diag_R and eigenvalues are stop-gradient).
  Raises:
    ValueError: psi not 2-D, kernel rows/columns not matching psi's rows (or not square
      without ``axis_name``), K > n, β < 0 or t ≤ 0.
    TypeError: non-float psi or kernel.
  """
  psi = _check_psi(psi, "neuralef_loss")
  if isinstance(beta, (int, float)) and beta < 0:
    raise ValueError(f"neuralef_loss needs β ≥ 0, got {beta}.")
  if isinstance(t, (int, float)) and not t > 0:
    raise ValueError(f"neuralef_loss needs t > 0, got {t}.")
  dtype = jnp.promote_types(psi.dtype, jnp.float32)
  beta = jnp.asarray(beta, dtype)
  if t is None:  # β·t = 1; without a penalty (β = 0) nothing orders anyway: t = 1
    t = jnp.where(beta > 0, 1.0 / jnp.where(beta > 0, beta, 1.0), 1.0)
  scaled = psi.astype(dtype) * jnp.sqrt(jnp.asarray(t, dtype))
  kpsi = _kernel_product(scaled, kernel, axis_name)
  (loss, eig, orth), diag_r = _loss_core(scaled, kpsi, beta, axis_name)
  diag_r = jax.lax.stop_gradient(diag_r)
  return loss, {"diag_R": diag_r, "eigenvalues": diag_r / t, "loss_eig": eig, "loss_orth": orth}


__all__ = [
    "BETA_TIMES_K", "DEFAULT_MOMENTUM", "REFERENCE_T", "AxisName", "EMAState", "Kernel",
    "beta_for", "ema_init", "ema_update", "gumbel_softmax", "l2_batch_normalize",
    "neuralef_loss", "rms_batch_normalize", "symmetric_gram", "tau_schedule",
]
