"""Tests for spectral_jax.neuralef.loss: the NeuralEF objective and its output transforms.

References: PyTorch autograd of the reference formula (``cal_neuralef_loss``), NumPy,
``numpy.linalg.eigh`` + the Nyström extension, the Gumbel-max law, and the single-device
numbers for shard_map / pmap (8 fake CPU devices in a subprocess).
"""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse

from spectral_jax.neuralef import loss as nef

N, K = 24, 5
BETA, T = 0.3, 0.01


def _symmetric(rng, n):
  a = rng.normal(size=(n, n))
  return ((a + a.T) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  return rng.normal(size=(N, K)).astype(np.float32), _symmetric(rng, N)


def _kernel_forms(g):
  """The same symmetric kernel as a dense array, a BCOO matrix and a matmul callable."""
  gj = jnp.asarray(g)
  return {"dense": gj, "bcoo": sparse.BCOO.fromdense(gj), "callable": lambda p: gj @ p}


def _loss_and_grad(psi, kernel, beta=BETA, t=T):
  (loss, aux), grad = jax.value_and_grad(
      lambda p: nef.neuralef_loss(p, kernel, beta, t=t), has_aux=True)(jnp.asarray(psi))
  return loss, aux, grad


def _torch_reference(torch, psi, g, beta, t):
  """Reference ``cal_neuralef_loss`` written out in PyTorch: loss and d loss / d psi."""
  psi_t = torch.tensor(psi, dtype=torch.float64, requires_grad=True)
  scaled = psi_t * np.sqrt(t)
  g_t = torch.tensor(g, dtype=torch.float64)
  r = scaled.T @ g_t @ scaled
  r_hat = scaled.T.detach() @ g_t @ scaled
  k = psi.shape[1]
  loss = -r.diagonal().sum() / k + beta * (r_hat**2).triu(1).sum() / k
  loss.backward()
  return loss.item(), psi_t.grad.numpy()


@pytest.mark.parametrize("form", ["dense", "bcoo", "callable"])
def test_loss_and_grad_match_torch_reference(problem, form, torch):
  psi, g = problem
  loss, _, grad = _loss_and_grad(psi, _kernel_forms(g)[form])
  ref_loss, ref_grad = _torch_reference(torch, psi, g, BETA, T)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())


def test_loss_terms_have_their_own_gradients(problem, torch):
  psi, g = problem
  term_grad = lambda name: jax.grad(
      lambda p: jnp.sum(nef.neuralef_loss(p, jnp.asarray(g), BETA, t=T)[1][name]))(
          jnp.asarray(psi))
  _, ref_eig = _torch_reference(torch, psi, g, 0.0, T)  # β = 0 leaves −tr(R)/K alone
  _, ref_total = _torch_reference(torch, psi, g, BETA, T)
  scale = np.abs(ref_total).max()
  np.testing.assert_allclose(term_grad("loss_eig"), ref_eig, atol=1e-5 * scale)
  np.testing.assert_allclose(term_grad("loss_orth"), ref_total - ref_eig, atol=1e-5 * scale)
  np.testing.assert_array_equal(term_grad("eigenvalues"), 0.0)


def test_loss_value_and_aux_match_numpy_formula(problem):
  psi, g = problem
  p, g64 = psi.astype(np.float64), g.astype(np.float64)
  r = T * p.T @ g64 @ p
  eig = -np.trace(r) / K
  orth = BETA * sum(r[i, j]**2 for i in range(K) for j in range(i + 1, K)) / K
  loss, aux, _ = _loss_and_grad(psi, jnp.asarray(g))
  np.testing.assert_allclose(loss, eig + orth, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_eig"], eig, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_orth"], orth, rtol=1e-5)
  np.testing.assert_allclose(aux["diag_R"], np.diag(r), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux["eigenvalues"], np.einsum("ni,nm,mi->i", p, g64, p),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("i", range(K - 1))
def test_stop_gradient_asymmetry(problem, i):
  """Column i's gradient ignores every later column j > i; later columns feel column i."""
  psi, g = problem
  _, _, grad = _loss_and_grad(psi, jnp.asarray(g))
  later = psi.copy()
  later[:, i + 1:] += np.random.default_rng(i).normal(size=(N, K - i - 1)).astype(np.float32)
  _, _, grad_later = _loss_and_grad(later, jnp.asarray(g))
  np.testing.assert_allclose(grad_later[:, :i + 1], grad[:, :i + 1], rtol=1e-6, atol=1e-9)
  earlier = psi.copy()
  earlier[:, i] += np.random.default_rng(i).normal(size=N).astype(np.float32)
  _, _, grad_earlier = _loss_and_grad(earlier, jnp.asarray(g))
  change = np.abs(grad_earlier[:, i + 1:] - grad[:, i + 1:]).max(axis=0)
  assert np.all(change > 1e-3 * np.abs(grad).max()), change


@pytest.mark.parametrize("psi_shape, kernel_shape, match", [
    ((N,), (N, N), "shape \\(n, K\\)"),
    ((N, K), (N + 1, N + 1), "rows must match"),
    ((N, K), (N, N + 1), "must be square"),
    ((N, K), (N,), "rows must match"),
    ((4, 6), (4, 4), "exceed the batch"),
])
def test_bad_shapes_raise(psi_shape, kernel_shape, match):
  with pytest.raises(ValueError, match=match):
    nef.neuralef_loss(jnp.ones(psi_shape), jnp.ones(kernel_shape), BETA)


def test_bad_values_raise(problem):
  psi, g = problem
  with pytest.raises(ValueError, match="kernel_matmul must map"):
    nef.neuralef_loss(psi, lambda p: p[:-1], BETA)
  with pytest.raises(TypeError, match="float psi"):
    nef.neuralef_loss(psi.astype(np.int32), g, BETA)
  with pytest.raises(ValueError, match="β ≥ 0"):
    nef.neuralef_loss(psi, g, -1.0)
  with pytest.raises(ValueError, match="t > 0"):
    nef.neuralef_loss(psi, g, BETA, t=0.0)


def test_l2_batch_normalize_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 7, 4)).astype(np.float32)
  x[..., 1] *= 0.05  # column norm < 1: left as is (clamp at 1)
  out = nef.l2_batch_normalize(jnp.asarray(x))
  norms = np.sqrt(np.sum(x.astype(np.float64)**2, axis=(0, 1)))
  np.testing.assert_allclose(out, x / np.maximum(norms, 1.0), rtol=1e-6)
  assert norms[1] < 1.0 and norms[0] > 1.0


def test_rms_normalize_and_ema():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(10, 3)).astype(np.float32)
  out, rms = nef.rms_batch_normalize(jnp.asarray(x))
  ref = np.sqrt(np.mean(x.astype(np.float64)**2, axis=0))
  np.testing.assert_allclose(rms, ref, rtol=1e-6)
  np.testing.assert_allclose(out, x / ref, rtol=1e-6)
  state = nef.ema_init(3)
  state = nef.ema_update(state, jnp.asarray([1.0, 2.0, 3.0]))  # first update copies
  state = nef.ema_update(state, jnp.asarray([2.0, 2.0, 0.0]))
  np.testing.assert_allclose(state.value, [1.1, 2.0, 2.7], rtol=1e-6)
  assert int(state.count) == 2


def test_gumbel_softmax_follows_gumbel_max_law():
  """argmax of a Gumbel-softmax sample is distributed as softmax(logits), at any τ."""
  logits = jnp.tile(jnp.log(jnp.asarray([0.5, 0.3, 0.15, 0.05])), (20000, 1))
  sample = jax.jit(nef.gumbel_softmax)
  samples = sample(jax.random.key(0), logits, 0.7)
  np.testing.assert_allclose(samples.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(samples) >= 0)
  freq = np.bincount(np.argmax(samples, -1), minlength=4) / 20000
  p = np.asarray([0.5, 0.3, 0.15, 0.05])
  assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 20000)), freq
  again = sample(jax.random.key(0), logits, 0.7)
  np.testing.assert_array_equal(samples, again)


def test_tau_schedule_is_reference_cosine():
  total, tau_max, tau_min = 400, 1.0, 0.3
  schedule = nef.tau_schedule(total, tau_max, tau_min)
  steps = np.asarray([0, 1, 100, 200, 333, 400])
  ref = (np.cos(steps / total * np.pi) + 1) / 2 * (tau_max - tau_min) + tau_min
  np.testing.assert_allclose(schedule(jnp.asarray(steps)), ref, rtol=1e-6)
  np.testing.assert_allclose(schedule(total + 50), tau_min, rtol=1e-6)


@pytest.mark.parametrize("k, beta", [(256, 0.08), (512, 0.04), (64, 0.32)])
def test_beta_for_reference_runs(k, beta):
  assert nef.beta_for(k) == pytest.approx(beta)


def test_beta_for_rejects_bad_k():
  with pytest.raises(ValueError, match="positive integer"):
    nef.beta_for(0)


def _train(loss_fn, params, steps, learning_rate):
  """Adam on ``loss_fn`` for ``steps`` steps inside one compiled scan."""
  opt = optax.adam(learning_rate)

  def step(carry, _):
    p, s = carry
    updates, s = opt.update(jax.grad(loss_fn)(p), s)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
      (params, opt.init(params)))
  return params


def _top_eigenvectors(g, k):
  w, u = np.linalg.eigh(np.asarray(g, np.float64))
  return w[::-1][:k], u[:, ::-1][:, :k]


def _abs_cos(a, b):
  return np.abs(np.sum(a * b, 0)) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)


def test_free_psi_recovers_top_eigenvectors_in_order():
  """Free ψ with L2 batch normalisation and the reference t, β = beta_for(K).

  The penalty deflates eigenfunction i by β·t·λᵢ² in the objective of later ones, so the
  ordering needs β·t·λᵢ > 1 − λᵢ₊₁/λᵢ: the spectrum 40, 30, 20, 10 (rest in ±3) meets it.
  """
  n, k = 64, 4
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  g = (q * np.concatenate([[40.0, 30.0, 20.0, 10.0], rng.uniform(-3, 3, n - k)])) @ q.T
  g = jnp.asarray((g + g.T) / 2, jnp.float32)
  loss_fn = lambda p: nef.neuralef_loss(nef.l2_batch_normalize(p), g, nef.beta_for(k),
                                      t=nef.REFERENCE_T)[0]
  p = _train(loss_fn, jnp.asarray(0.1 * rng.normal(size=(n, k)), jnp.float32), 300, 1e-2)
  _, u = _top_eigenvectors(g, k)
  assert np.all(_abs_cos(np.asarray(nef.l2_batch_normalize(p)), u) >= 0.95)


class _MLP(nn.Module):
  k: int

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.tanh(nn.Dense(64)(x))
    return nn.Dense(self.k)(x)


def _rbf(a, b):
  return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / 2)


@pytest.fixture(scope="module")
def trained_mlp():
  """A small MLP ψ trained on the RBF kernel of 256 anisotropic 2-D points (K = 4), reference t."""
  n, k = 256, 4
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n + 128, 2)) * np.asarray([1.0, 0.5])  # anisotropy splits λ₂, λ₃
  x_train, x_test = x[:n], x[n:]
  g = jnp.asarray(_rbf(x_train, x_train), jnp.float32)
  net = _MLP(k)
  xj = jnp.asarray(x_train, jnp.float32)
  loss_fn = lambda p: nef.neuralef_loss(
      nef.l2_batch_normalize(net.apply(p, xj)), g, nef.beta_for(k), t=nef.REFERENCE_T)[0]
  params = _train(loss_fn, net.init(jax.random.key(0), xj[:1]), 3000, 3e-3)
  apply = lambda x: np.asarray(net.apply(params, jnp.asarray(x, jnp.float32)), np.float64)
  return x_train, x_test, apply, k


def test_mlp_psi_recovers_rbf_eigenvectors_in_order(trained_mlp):
  x_train, _, apply, k = trained_mlp
  _, u = _top_eigenvectors(_rbf(x_train, x_train), k)
  assert np.all(_abs_cos(apply(x_train), u) >= 0.95)


def test_mlp_psi_out_of_sample_matches_nystrom(trained_mlp):
  """Held-out ψ(x)/‖ψ‖_train ≈ Nyström u(x) = (1/λ) Σⱼ k(x, xⱼ) uⱼ (unit u on the train set)."""
  x_train, x_test, apply, k = trained_mlp
  lam, u = _top_eigenvectors(_rbf(x_train, x_train), k)
  nystrom = _rbf(x_test, x_train) @ u / lam
  train_norm = np.linalg.norm(apply(x_train), axis=0)
  psi_test = apply(x_test) / train_norm
  assert np.all(_abs_cos(psi_test, nystrom) >= 0.95)
  np.testing.assert_allclose(np.linalg.norm(psi_test, axis=0), np.linalg.norm(nystrom, axis=0),
                             rtol=0.1)


_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from spectral_jax.neuralef import loss as nef

    D, N, K, F = 8, 64, 6, 5
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, F)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(F, K)), jnp.float32)
    a = rng.normal(size=(N, N))
    g = jnp.asarray((a + a.T) / 2, jnp.float32)
    beta = nef.beta_for(K)

    def objective(w, x, g, axis_name=None, matmul=False):
      psi = nef.l2_batch_normalize(x @ w, axis_name=axis_name)
      kernel = (lambda p: g @ p) if matmul else g
      return nef.neuralef_loss(psi, kernel, beta, axis_name=axis_name)

    def both_grads(w, x, g, axis_name=None, matmul=False):
      # gradient w.r.t. the replicated parameter w and w.r.t. psi's rows themselves
      (loss, aux), gw = jax.value_and_grad(objective, has_aux=True)(w, x, g, axis_name, matmul)
      gpsi = jax.grad(lambda p: nef.neuralef_loss(p, g, beta, axis_name=axis_name)[0])(x @ w)
      rms = nef.rms_batch_normalize(x @ w, axis_name=axis_name)[1]
      return loss, aux["eigenvalues"], gw, gpsi, rms

    ref = [np.asarray(v) for v in jax.jit(both_grads)(w, x, g)]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    results = {}
    for matmul in (False, True):
      fn = jax.shard_map(lambda w, x, g: both_grads(w, x, g, "data", matmul), mesh=mesh,
                         in_specs=(P(), P("data"), P("data")),
                         out_specs=(P(), P(), P(), P("data"), P()))
      results[f"shard_map{'_matmul' if matmul else ''}"] = jax.jit(fn)(w, x, g)
    pm = jax.pmap(lambda w, x, g: both_grads(w, x, g, "data"), axis_name="data",
                  in_axes=(None, 0, 0))
    loss, eig, gw, gpsi, rms = pm(w, x.reshape(D, -1, F), g.reshape(D, -1, N))
    # pmap: per-device gradients of the replicated w are partial sums (psum them)
    results["pmap"] = (loss[0], eig[0], gw.sum(0), gpsi.reshape(N, K), rms[0])
    err = {name: [float(np.abs(np.asarray(v) - r).max() / max(np.abs(r).max(), 1e-30))
                  for v, r in zip(vals, ref)] for name, vals in results.items()}
    print(json.dumps({"devices": jax.device_count(), "rel_err": err}))
""")


def test_sharded_loss_and_grads_equal_single_device(run_on_cpu_devices):
  """shard_map over Mesh('data') and pmap on 8 fake CPU devices give the 1-device numbers.

  Compared: loss, eigenvalues, d loss/d w of a replicated linear ψ = x w (through the L2 batch
  normalisation over the global batch), d loss/d ψ rows, and the global-batch RMS.
  """
  report = run_on_cpu_devices(_SHARDED_SCRIPT, 8)
  assert report["devices"] == 8
  assert set(report["rel_err"]) == {"shard_map", "shard_map_matmul", "pmap"}
  for name, errs in report["rel_err"].items():
    assert len(errs) == 5 and max(errs) < 1e-5, (name, errs)
