"""Eigenfunction objectives side by side: losses whose minimiser is G's top-K eigenvectors.

Every objective is a pure, jit-able function ``fn(psi, kernel, **hyper) -> (loss, aux)``:

- ``psi``: (n, K) raw outputs ψ(x) of a batch (no normalisation needed: an objective that
  wants normalised columns normalises them itself);
- ``kernel``: the symmetric kernel G of the batch, dense (n, n), a ``BCOO`` or a matmul
  callable (n, K) -> (n, K), as ``neuralef_loss`` takes it (rows (n_local, n) per device with
  ``axis_name``); G is a constant (no gradient reaches it);
- ``aux["eigenvalues"]``: (K,) estimates of G's top-K eigenvalues, on the scale of
  ``numpy.linalg.eigh(G)`` (stop-gradient).

Called with nothing but ``(psi, kernel)``, each entry of ``OBJECTIVES`` is minimised, over a
free matrix ψ, by G's top-K eigenvectors in order (up to sign and per-column scale; an
objective's docstring states its optimum and the condition on G). They compose with ``jit``,
``grad`` and ``vmap``, and with ``jax.shard_map`` through ``axis_name`` (each device holds its
rows of ψ and of G; sums over the batch become ``psum``s; kernel terms differentiate without
transposing a collective, as in ``neuralef_loss``).

Entries of ``OBJECTIVES``:

- ``"segmentor"``: Deng & Luo's loss exactly as the segmentor computes it (L2 batch
  normalisation, then ``neuralef_loss``) with β = ``beta_for(K)`` and t = 1/β, which orders.
  The segmentor's reference constants are ``SEGMENTOR_REFERENCE`` (t = 0.01), passed
  explicitly: ``segmentor_loss(psi, G, **SEGMENTOR_REFERENCE)``; on a free matrix they have no
  ordered optimum (SPEC §6).
- ``"neuralef"``: the original NeuralEF (Deng, Shi & Zhu, ICML 2022): RMS batch
  normalisation and the EigenGame penalty R̂ᵢⱼ²/R̂ᵢᵢ; no weight to tune.
- ``"nested_lora"``: nested low-rank approximation with joint nesting (Ryu, Xu, Erol, Bu,
  Zheng & Wornell, ICML 2024, "Operator SVD with Neural Networks via Nested Low-Rank
  Approximation"; eigen-version of their ``NestedLoRALossFunctionEVD``); no normalisation, no
  weight to tune, the column norms carry the eigenvalues.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from spectral_jax.neuralef.loss import BETA_TIMES_K
from spectral_jax.neuralef.loss import REFERENCE_T
from spectral_jax.neuralef.loss import AxisName
from spectral_jax.neuralef.loss import Kernel
from spectral_jax.neuralef.loss import _check_psi
from spectral_jax.neuralef.loss import _global_rows
from spectral_jax.neuralef.loss import _kernel_product
from spectral_jax.neuralef.loss import beta_for
from spectral_jax.neuralef.loss import l2_batch_normalize
from spectral_jax.neuralef.loss import neuralef_loss
from spectral_jax.neuralef.loss import rms_batch_normalize
from spectral_jax.neuralef.loss import symmetric_gram

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

# The segmentor's reference constants (SPEC §5): t = 0.01, β = 20.48/K, L2 batch normalisation.
# A preset a caller passes explicitly (``segmentor_loss(psi, G, **SEGMENTOR_REFERENCE)``), not
# ``segmentor_loss``'s defaults: at β·t ≈ 8e-4..6e-3 columns copy u₁ (SPEC §6).
SEGMENTOR_REFERENCE = dict(beta_times_k=BETA_TIMES_K, t=REFERENCE_T, normalize="l2")


def _compute_dtype(psi: jax.Array):
  return jnp.promote_types(psi.dtype, jnp.float32)


def segmentor_loss(psi: jax.Array, kernel: Kernel, *, beta_times_k: float = BETA_TIMES_K,
                   t: float | jax.Array | None = None, normalize: str = "l2",
                   axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The segmentor's NeuralEF loss (Deng & Luo; SPEC §5): L2 batch norm, then ``neuralef_loss``.

  ``ψ̄ = l2_batch_normalize(psi)`` (columns divided by their batch norm clamped at 1), then
  ``−tr(R)/K + β·Σ_{i<j} R̂ᵢⱼ²/K`` with R = t·ψ̄ᵀGψ̄, R̂ = t·sg(ψ̄)ᵀGψ̄ and β = beta_times_k/K.
  With ``**SEGMENTOR_REFERENCE`` this is what the training step computes after its
  Gumbel-softmax.

  Optimum: column j maximises ``t·ψ̄ⱼᵀ(G − β·t·Σ_{i<j} λᵢ² uᵢuᵢᵀ)ψ̄ⱼ`` over unit columns
  (norms above the clamp), i.e. eigenfunction i is deflated to ``λᵢ(1 − β·t·λᵢ)``; the ordered
  eigenvectors u₁…u_K are the optimum iff ``λᵢ(1 − β·t·λᵢ) < λⱼ`` for all i < j ≤ K. Scale:
  gain ∝ t, penalty ∝ β·t², loss ∝ t at fixed β·t; the condition depends on G's scale
  (λ for unit columns), not on n or ψ's scale. The default t = 1/β (β·t = 1) meets it when G's
  top K−1 eigenvalues exceed 1 and λ_K > 0, and orders on the segmentor's normalised DINOv2
  batch kernels (λ₁ ≈ 1.3, measured); for a kernel of small eigenvalues (λᵢ − λᵢ² > λⱼ) scale
  it up or pass a larger t. ``SEGMENTOR_REFERENCE``'s
  t = 0.01 gives β·t = 0.2048/K: on a free matrix columns collapse onto u₁ (SPEC §6).

  Args:
    psi: (n, K) float raw outputs (n_local rows per device with ``axis_name``).
    kernel: symmetric G (dense, BCOO or matmul callable; see ``neuralef_loss``).
    beta_times_k: β·K (reference 20.48, ``beta_for``).
    t: the scale (ψ̄ multiplied by √t); None: t = 1/β.
    normalize: "l2" (the segmentor's batch normalisation) or "none" (psi used as given).
    axis_name: the mapped axis holding the rest of the batch, or None.
  Returns:
    ``(loss, aux)`` of ``neuralef_loss``: aux has "eigenvalues" (ψ̄ⱼᵀGψ̄ⱼ, G's eigenvalues for
    unit columns), "diag_R", "loss_eig", "loss_orth".
  """
  psi = _check_psi(psi, "segmentor_loss")
  if normalize == "l2":
    psi = l2_batch_normalize(psi, axis_name=axis_name)
  elif normalize != "none":
    raise ValueError(f"segmentor_loss needs normalize 'l2' or 'none', got {normalize!r}.")
  beta = beta_for(psi.shape[1], beta_times_k)
  return neuralef_loss(psi, kernel, beta, t=t, axis_name=axis_name)


def neuralef_original_loss(psi: jax.Array, kernel: Kernel, *,
                           axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Original NeuralEF (Deng, Shi & Zhu, ICML 2022): EigenGame penalty, RMS batch norm.

  ``ψ̂ = psi / rms(psi)`` per column over the batch (``rms_batch_normalize``, differentiated
  through, as thudzj/NeuralEigenFunction), ``R = ψ̂ᵀGψ̂/n²`` (the empirical
  ``E_{x,x'}[ψ̂(x) k(x, x') ψ̂(x')]``), ``R̂ = sg(ψ̂)ᵀGψ̂/n²`` and

    ``loss = Σⱼ [ −Rⱼⱼ + Σ_{i<j} R̂ᵢⱼ² / sg(R̂ᵢᵢ) ]``,

  the paper's per-eigenfunction objective summed over j (R̂ᵢⱼ, i < j, moves column j only).

  Optimum: column j maximises ``ψ̂ⱼᵀ(G − Σ_{i<j} λᵢ uᵢuᵢᵀ)ψ̂ⱼ/n²`` given ψ̂ᵢ = √n·uᵢ for i < j:
  the earlier eigenvalues are deflated exactly (EigenGame), so ψ̂ⱼ = ±√n·uⱼ in order for any
  scale of G, provided the top K eigenvalues are distinct and positive (R̂ᵢᵢ > 0). Scale:
  invariant to ψ's scale (RMS norm); loss, gain and penalty all ∝ G's scale and ∝ 1/n (as
  operator eigenvalues λ/n); Rⱼⱼ estimates the operator eigenvalue λⱼ/n.

  Args:
    psi: (n, K) float raw outputs (n_local rows per device with ``axis_name``).
    kernel: symmetric G (dense, BCOO or matmul callable).
    axis_name: the mapped axis holding the rest of the batch, or None.
  Returns:
    ``(loss, aux)``: aux has "eigenvalues" (n·Rⱼⱼ = ψ̂ⱼᵀGψ̂ⱼ/n, G's eigenvalue estimates),
    "operator_eigenvalues" (Rⱼⱼ), "rms" (K,) the batch RMS (keep an EMA for evaluation,
    ``ema_update``), "loss_eig" (−Σ Rⱼⱼ) and "loss_orth" (the penalty).
  """
  psi = _check_psi(psi, "neuralef_original_loss")
  psi, rms = rms_batch_normalize(psi.astype(_compute_dtype(psi)), axis_name=axis_name)
  n = _global_rows(psi.shape[0], axis_name)
  kpsi = _kernel_product(psi, kernel, axis_name)
  r = symmetric_gram(psi, kpsi, axis_name, False) / n**2
  r_hat = symmetric_gram(psi, kpsi, axis_name, True) / n**2
  diag = jnp.diagonal(r)
  loss_eig = -jnp.sum(diag)
  loss_orth = jnp.sum(jnp.square(jnp.triu(r_hat, 1)) / jax.lax.stop_gradient(diag)[:, None])
  diag = jax.lax.stop_gradient(diag)
  aux = {"eigenvalues": n * diag, "operator_eigenvalues": diag, "rms": rms,
         "loss_eig": loss_eig, "loss_orth": loss_orth}
  return loss_eig + loss_orth, aux


def joint_nesting_weights(k: int, weights: jax.Array | None = None,
                          dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Masks of joint nesting: ``m_l = Σ_{k ≥ l} w_k`` and ``M_lm = m_{max(l, m)}``.

  Ryu et al.'s ``get_joint_nesting_masks``: Σ_k w_k·(loss of the first k columns) regrouped per
  entry. Their default (step 1) is w_k = 1/K, giving m_l = (K − l)/K (0-based l).

  Args:
    k: number of eigenfunctions K.
    weights: (K,) positive weights w_k of the prefixes 1..K, or None for 1/K each.
    dtype: the masks' dtype.
  Returns:
    ``(m, M)``: (K,) vector mask and (K, K) matrix mask.
  """
  w = jnp.full((k,), 1.0 / k, dtype) if weights is None else jnp.asarray(weights, dtype)
  chex.assert_shape(w, (k,))
  m = jnp.cumsum(w[::-1])[::-1]
  return m, jnp.minimum(m[:, None], m[None, :])


def nested_lora_loss(psi: jax.Array, kernel: Kernel, *, weights: jax.Array | None = None,
                     axis_name: AxisName = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Nested low-rank approximation, joint nesting (Ryu et al., ICML 2024), eigen-version.

  With empirical means over the batch as in the paper (``Tψ = Gψ/n``, ``Λ = ψᵀψ/n``):

    ``loss = Σ_k w_k·[ −2·tr(Ψ₍:ₖ₎ᵀGΨ₍:ₖ₎)/n² + ‖Ψ₍:ₖ₎ᵀΨ₍:ₖ₎‖_F²/n² ]
           = −2·Σ_l m_l·ψ_lᵀGψ_l/n² + Σ_{l,m} M_lm·(ψ_lᵀψ_m)²/n²``

  (``joint_nesting_weights``). Each bracket is ``(‖G − Ψ₍:ₖ₎Ψ₍:ₖ₎ᵀ‖_F² − ‖G‖_F²)/n²``, the
  error of the rank-k approximation of G by its first k columns, so the loss is minimised by
  every prefix being the best rank-k approximation at once.

  Optimum (PSD G, or any symmetric G whose top K eigenvalues are positive and distinct, w > 0):
  ``ψ_l = ±√λ_l·u_l`` in order (‖ψ_l‖² = λ_l; as functions ψ_l = √μ_l·φ_l with operator
  eigenvalue μ_l = λ_l/n and E[φ_l²] = 1). Needs no normalisation and no penalty weight. Scale:
  both terms ∝ 1/n²; the loss is quadratic in G's scale (ψ ∝ √scale); plain autodiff gradient
  (the paper's custom backward is the same gradient).

  Args:
    psi: (n, K) float raw outputs (n_local rows per device with ``axis_name``).
    kernel: symmetric G (dense, BCOO or matmul callable).
    weights: (K,) positive prefix weights w_k; None: 1/K each (the paper's default).
    axis_name: the mapped axis holding the rest of the batch, or None.
  Returns:
    ``(loss, aux)``: aux has "eigenvalues" (‖ψ_l‖², G's eigenvalue estimates),
    "operator_eigenvalues" (Λ_ll = ‖ψ_l‖²/n), "loss_eig" (the −2·… term) and "loss_orth"
    (the ‖·‖_F² term).
  """
  psi = _check_psi(psi, "nested_lora_loss")
  psi = psi.astype(_compute_dtype(psi))
  n_local, k = psi.shape
  n = _global_rows(n_local, axis_name)
  m, mm = joint_nesting_weights(k, weights, psi.dtype)
  kpsi = _kernel_product(psi, kernel, axis_name)
  r = symmetric_gram(psi, kpsi, axis_name, False) / n**2
  lam = symmetric_gram(psi, jax.lax.stop_gradient(psi), axis_name, False) / n
  loss_eig = -2.0 * jnp.sum(m * jnp.diagonal(r))
  loss_orth = jnp.sum(mm * jnp.square(lam))
  diag = jax.lax.stop_gradient(jnp.diagonal(lam))
  aux = {"eigenvalues": n * diag, "operator_eigenvalues": diag,
         "loss_eig": loss_eig, "loss_orth": loss_orth}
  return loss_eig + loss_orth, aux


OBJECTIVES: dict[str, Objective] = {
    "segmentor": segmentor_loss,
    "neuralef": neuralef_original_loss,
    "nested_lora": nested_lora_loss,
}
