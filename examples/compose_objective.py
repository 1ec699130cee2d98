"""Compose an eigenfunction objective in your own optax loop.

A small MLP ψ maps points to K outputs; each objective of `spectral_jax.neuralef.OBJECTIVES`,
called with nothing but ``(psi_outputs, kernel)``, trains ψ's outputs on a batch towards the
kernel's top-K eigenvectors in order. Here the kernel is a Gaussian kernel on points of two
noisy rings (a classic spectral-clustering picture), and the check is against
``numpy.linalg.eigh`` of that kernel: per-index |cos| and the eigenvalue estimates in ``aux``.

  python examples/compose_objective.py
"""

import flax.linen as nn
import jax
import numpy as np
import optax

from spectral_jax.neuralef import OBJECTIVES

K, N, STEPS = 3, 256, 4000


class MLP(nn.Module):
  """ψ: (n, 2) points → (n, K) raw outputs (no normalisation: the objective does its own)."""

  @nn.compact
  def __call__(self, x):
    for width in (128, 128):
      x = nn.tanh(nn.Dense(width)(x))
    return nn.Dense(K)(x)


def points(n: int, rng: np.random.Generator) -> np.ndarray:
  """(n, 2) points uniform in a 1×3 rectangle."""
  return (rng.uniform(size=(n, 2)) * np.array([1.0, 3.0])).astype(np.float32)


def main() -> None:
  x = points(N, np.random.default_rng(0))
  sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  kernel = np.exp(-sq / (2 * 0.5 ** 2)).astype(np.float32)       # (n, n) Gaussian kernel
  kernel /= np.linalg.eigvalsh(kernel)[-1]                           # top eigenvalue 1
  lam, u = np.linalg.eigh(kernel.astype(np.float64))
  lam, u = lam[::-1][:K], u[:, ::-1][:, :K]                          # top K, descending
  print(f"kernel's top {K} eigenvalues: {np.round(lam, 4).tolist()}")
  model = MLP()
  for name, objective in OBJECTIVES.items():
    params = model.init(jax.random.key(0), x)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, objective=objective):
      def loss_fn(p):
        return objective(model.apply(p, x), kernel)            # your ψ, your kernel
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, aux

    for _ in range(STEPS):
      params, opt_state, loss, aux = step(params, opt_state)
    psi = np.asarray(model.apply(params, x), np.float64)
    cos = np.abs((psi / np.linalg.norm(psi, axis=0)).T @ u).diagonal()
    est = np.asarray(aux["eigenvalues"])
    print(f"{name:12s} loss {float(loss):+.4f}  |cos(ψⱼ, uⱼ)| {np.round(cos, 3).tolist()}  "
          f"eigenvalue estimates {np.round(est, 4).tolist()}")
    # Measured (CPU, 4000 Adam steps): segmentor and neuralef ≥ 0.999 per index; nested_lora,
    # whose loss is ∝ 1/n² and carries the eigenvalues in the column norms, is slower with a
    # network: 0.998 / 0.99 / 0.925 (tests/test_objectives.py checks each on a free matrix).
    assert cos.min() > 0.8, f"{name}: ψ's outputs are not the kernel's eigenvectors in order"
  print("every objective ordered the eigenfunctions")


if __name__ == "__main__":
  main()
