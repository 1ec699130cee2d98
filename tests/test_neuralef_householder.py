"""Tests for the reference's orthogonal head: torch's Householder map in JAX (SPEC §5).

Reference: ``torch.nn.utils.parametrizations.orthogonal`` itself (its map, trivialisation
base and gradients), on the same reflector parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.neuralef import psi as psi_lib


def _torch_head(torch, d, k, x_tall, base):
  """``orthogonal(nn.Linear(d, k))`` with its reflectors and base set to the given arrays."""
  torch.manual_seed(0)
  lin = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(d, k, bias=False).double())
  param = lin.parametrizations.weight
  transposed = d >= k  # torch's weight is (k, d): tall after transposing when d ≥ k
  with torch.no_grad():
    param.original.copy_(torch.tensor(x_tall.T if transposed else x_tall))
    param[0].base.copy_(torch.tensor(base))
  return lin, transposed


@pytest.mark.parametrize("d, k", [(12, 5), (4, 7)])
def test_map_and_gradient_equal_torch(x64, torch, d, k):
  rng = np.random.default_rng(0)
  n, m = max(d, k), min(d, k)
  x = rng.normal(size=(n, m))
  x[np.arange(m), np.arange(m)] = rng.choice([-1.0, 1.0, -1.6, 0.7], size=m)  # int() truncates
  base, _ = np.linalg.qr(rng.normal(size=(n, n)))
  lin, transposed = _torch_head(torch, d, k, x, base)
  w_torch = lin.weight  # (k, d)
  c = rng.normal(size=(k, d))
  (w_torch * torch.tensor(c)).sum().backward()
  grad_torch = lin.parametrizations.weight.original.grad.numpy()
  grad_torch = grad_torch.T if transposed else grad_torch

  def weight(x):  # Flax (d, k) layout
    w = psi_lib.householder_orthonormal(x, jnp.asarray(base))
    return w if d >= k else w.T

  w = weight(jnp.asarray(x))
  np.testing.assert_allclose(w, w_torch.detach().numpy().T, atol=1e-12)
  grad = jax.grad(lambda x: jnp.sum(weight(x) * c.T))(jnp.asarray(x))
  np.testing.assert_allclose(grad, grad_torch, atol=1e-12 * max(1.0, np.abs(grad_torch).max()))
  assert np.abs(grad_torch).max() > 1e-3  # the strict lower triangle does get gradient


def test_reflectors_without_base_are_orthonormal_and_flip_by_diagonal():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 4)).astype(np.float32)
  x[np.arange(4), np.arange(4)] = [-1.0, 1.0, -1.0, 1.0]
  q = np.asarray(psi_lib.householder_orthonormal(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
  x[0, 0] = -0.5  # int(−0.5) = 0: torch zeroes that column
  q = np.asarray(psi_lib.householder_orthonormal(jnp.asarray(x)))
  np.testing.assert_array_equal(q[:, 0], 0.0)


def test_householder_dense_init_matches_torch_right_inverse(torch):
  """At init W = the orthonormalised default weight (torch: right_inverse sets X = −I)."""
  d, k = 10, 3
  head = psi_lib.HouseholderDense(k)
  params = head.init(jax.random.key(0), jnp.ones((1, d)))["params"]
  np.testing.assert_array_equal(params["kernel"], -np.eye(d, k))
  base = np.asarray(params["base"], np.float64)
  np.testing.assert_allclose(base.T @ base, np.eye(d), atol=1e-5)
  x = np.random.default_rng(2).normal(size=(5, d)).astype(np.float32)
  y = head.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(y, x @ base[:, :k], rtol=1e-5, atol=1e-6)
  # torch's own right_inverse on a weight whose orthonormalisation is base[:, :k] gives −I
  lin = torch.nn.Linear(d, k, bias=False)
  with torch.no_grad():
    lin.weight.copy_(torch.tensor(base[:, :k].T))
  torch.nn.utils.parametrizations.orthogonal(lin)
  np.testing.assert_array_equal(lin.parametrizations.weight.original.detach().numpy(),
                                -np.eye(k, d))
  np.testing.assert_allclose(lin.weight.detach().numpy().T, base[:, :k], atol=1e-5)


def test_psi_householder_head_gradients_leave_base_and_diagonal_fixed():
  net = psi_lib.Psi(k=4, num_blocks=0, head="householder")
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 8)), jnp.float32)
  params = net.init(jax.random.key(0), x)["params"]
  w = psi_lib.householder_orthonormal(params["head"]["kernel"], params["head"]["base"])
  np.testing.assert_allclose(np.asarray(w).T @ np.asarray(w), np.eye(4), atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, x)[0] ** 3))(params)
  np.testing.assert_array_equal(grads["head"]["base"], 0.0)
  g = np.asarray(grads["head"]["kernel"])
  np.testing.assert_array_equal(np.diagonal(g), 0.0)
  np.testing.assert_array_equal(np.triu(g), 0.0)
  assert np.abs(np.tril(g, -1)).max() > 0
  with pytest.raises(ValueError, match="head 'qr' or 'householder'"):
    psi_lib.Psi(k=4, num_blocks=0, head="cayley").init(jax.random.key(0), x)
