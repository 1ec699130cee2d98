"""Tests for spectral_jax.neuralef.fidelity: ψ against the batch kernel's eigenvectors.

References: kernels with a known spectrum G = U diag(λ) Uᵀ (closed-form cosines and angles),
``numpy.linalg.eigh`` in float64, ``scipy.linalg.subspace_angles``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from spectral_jax.neuralef import fidelity as fid

N, K = 96, 8


def known_kernel(eigenvalues, n=N, seed=0):
  """(G (n, n) float32, U (n, n) float64): G = U diag(λ) Uᵀ, λ padded with small values."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(n, n)))
  lam = np.concatenate([eigenvalues, np.linspace(0.2, -0.2, n - len(eigenvalues))])
  return jnp.asarray((u * lam) @ u.T, jnp.float32), u, lam


TOP = np.asarray([1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6])


@pytest.mark.parametrize("method", ["eigh", "lobpcg"])
def test_kernel_eigenpairs_match_float64_eigh(method):
  g, u, lam = known_kernel(TOP)
  kernel = g if method == "eigh" else (lambda p: g @ p)
  ref = fid.kernel_eigenpairs(kernel, N, K, method=method)
  np.testing.assert_allclose(ref.eigenvalues, lam[:K], atol=2e-6)
  assert bool(np.all(ref.converged))
  # Each computed vector spans the true one (simple eigenvalues, gaps 0.1).
  np.testing.assert_allclose(np.abs(np.sum(np.asarray(ref.eigenvectors) * u[:, :K], 0)), 1,
                             atol=1e-5)


def test_exact_eigenvectors_have_cosine_one_and_zero_angles():
  g, u, lam = known_kernel(TOP)
  ref = fid.kernel_eigenpairs(g, N, K, method="eigh")
  # Any column scale and sign: ψ's columns are normalised and compared by |cos|.
  scale = np.asarray([3.0, -0.5, 2.0, 1.0, -7.0, 0.1, 4.0, 1.0])
  psi = jnp.asarray(u[:, :K] * scale, jnp.float32)
  out = fid.fidelity(psi, ref, g)
  np.testing.assert_allclose(out["cos_in_order"], 1, atol=1e-5)
  np.testing.assert_allclose(out["cos_cluster"], 1, atol=1e-5)
  np.testing.assert_array_equal(out["best_index"], np.arange(K))
  np.testing.assert_allclose(out["rayleigh"], lam[:K], atol=1e-5)
  assert set(out["angles"]) == {1, 4, K}
  for m in (1, 4, K):
    np.testing.assert_allclose(out["angles"][m], 0, atol=1e-3)   # float32: sines ~ 1e-6
    np.testing.assert_allclose(out["within_span"][m], 0, atol=1e-3)
  s = fid.summary(out)
  assert s[f"angle_max_deg@{K}"] < 0.1 and s[f"best_in_place@{K}"] == 1.0
  np.testing.assert_allclose(s[f"rayleigh_over_lambda_mean@{K}"], 1, atol=1e-5)


def test_columns_of_tiny_values_are_normalised_not_blown_up():
  """A softmax column at ~1e-30 (its squares underflow in float32) is still a unit vector:
  cosines stay in [0, 1] and Rayleigh quotients at λ; an all-zero column gives zeros, not NaN
  (under jit, as training's probe runs it)."""
  g, u, lam = known_kernel(TOP)
  ref = fid.kernel_eigenpairs(g, N, K, method="eigh")
  psi = np.array(u[:, :K], np.float64)
  psi[:, 1] *= 1e-30
  psi[:, 2] = 0.0
  out = jax.jit(fid.fidelity)(jnp.asarray(psi, jnp.float32), ref, g)
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(out))
  np.testing.assert_allclose(np.asarray(out["cos_in_order"])[[0, 1, 3]], 1, atol=1e-5)
  assert float(out["cos_in_order"][2]) == 0.0 and float(out["rayleigh"][2]) == 0.0
  np.testing.assert_allclose(out["rayleigh"][1], lam[1], atol=1e-5)


def test_rotated_subspace_has_the_rotation_angles():
  """ψⱼ = cos θⱼ uⱼ + sin θⱼ u_{K+j}: the principal angles between span(ψ) and span(u₀…u_{K−1})
  are exactly the θⱼ, |cos(ψⱼ, uⱼ)| = cos θⱼ, and ψⱼᵀGψⱼ = cos²θⱼ λⱼ + sin²θⱼ λ_{K+j}."""
  g, u, lam = known_kernel(TOP)
  ref = fid.kernel_eigenpairs(g, N, K, method="eigh")
  theta = np.radians([0.5, 3.0, 10.0, 20.0, 35.0, 50.0, 70.0, 89.0])
  psi = jnp.asarray(np.cos(theta) * u[:, :K] + np.sin(theta) * u[:, K:2 * K], jnp.float32)
  out = jax.jit(lambda x: fid.fidelity(x, ref, lambda v: g @ v))(psi)  # jit-able, matmul form
  np.testing.assert_allclose(out["angles"][K], np.sort(theta), atol=1e-4)
  np.testing.assert_allclose(out["angles"][4], np.sort(theta[:4]), atol=1e-4)
  np.testing.assert_allclose(out["angles"][1], theta[:1], atol=1e-4)
  np.testing.assert_allclose(out["cos_in_order"], np.cos(theta), atol=1e-5)
  np.testing.assert_allclose(out["rayleigh"],
                             np.cos(theta)**2 * lam[:K] + np.sin(theta)**2 * lam[K:2 * K],
                             atol=1e-5)


def test_cluster_cosine_is_invariant_to_rotations_within_a_degenerate_eigenspace():
  """λ₁ = λ₂ (a 2-dim eigenspace): ψ rotated inside it by φ has per-index cosine |cos φ| (an
  arbitrary basis choice) but cluster cosine 1."""
  top = np.asarray([1.3, 1.2, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6])
  g, u, _ = known_kernel(top)
  ref = fid.kernel_eigenpairs(g, N, K, method="eigh")
  np.testing.assert_array_equal(fid.clusters(ref.eigenvalues), [0, 1, 1, 2, 3, 4, 5, 6])
  # Put ψ in the computed basis rotated by φ inside the pair (the computed pair is itself
  # some rotation of u's).
  phi = np.radians(40.0)
  v = np.asarray(ref.eigenvectors, np.float64)
  psi = v.copy()
  psi[:, 1] = np.cos(phi) * v[:, 1] + np.sin(phi) * v[:, 2]
  psi[:, 2] = -np.sin(phi) * v[:, 1] + np.cos(phi) * v[:, 2]
  out = fid.fidelity(jnp.asarray(psi, jnp.float32), ref, g)
  np.testing.assert_allclose(out["cos_in_order"][1:3], np.cos(phi), atol=1e-5)
  np.testing.assert_allclose(out["cos_cluster"], 1, atol=1e-5)
  np.testing.assert_allclose(out["angles"][K], 0, atol=1e-3)


@pytest.mark.parametrize("p,q", [(5, 5), (7, 3), (3, 7), (1, 6)])
def test_principal_angles_match_scipy(p, q):
  rng = np.random.default_rng(p * 10 + q)
  a = rng.normal(size=(40, p))
  b = a[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + 0.3 * rng.normal(size=(40, q))
  want = np.sort(scipy.linalg.subspace_angles(a, b))
  got = jax.jit(fid.principal_angles)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  assert got.shape == (min(p, q),)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_principal_angles_of_a_rank_deficient_span():
  """A repeated column spans one dimension less: scipy's angles for the rank, 90° for the rest."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(30, 4))
  b = rng.normal(size=(30, 4))
  b[:, 3] = 2 * b[:, 0]
  want = np.sort(scipy.linalg.subspace_angles(a, b))
  assert want.shape == (3,)
  got = np.asarray(fid.principal_angles(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  np.testing.assert_allclose(got[:3], want, atol=2e-5)
  np.testing.assert_allclose(got[3], np.pi / 2, atol=1e-6)


def test_bad_inputs_are_named():
  g, _, _ = known_kernel(TOP)
  ref = fid.kernel_eigenpairs(g, N, K, method="eigh")
  with pytest.raises(ValueError, match="psi must be"):
    fid.fidelity(jnp.zeros((N, K + 1)), ref, g)
  with pytest.raises(ValueError, match="method"):
    fid.kernel_eigenpairs(g, N, K, method="arpack")
  with pytest.raises(ValueError, match="k = 0"):
    fid.kernel_eigenpairs(g, N, 0)


# ----------------------------------------------------------------------------- training hook


def test_training_logs_fidelity_against_an_independent_reference(tmp_path):
  """Steps 5 and 10 of a 10-step run carry ``fidelity/…`` keys; fidelity.json holds the last
  result, checked against the dense kernel of ``graphs.neuralef_kernel``, float64 eigh and ψ
  applied here; the probe leaves training unchanged."""
  import json  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
  from test_neuralef_train import synthetic_features  # pylint: disable=import-outside-toplevel
  from experiments.configs import neuralef as configs  # pylint: disable=import-outside-toplevel
  from spectral_jax import graphs  # pylint: disable=import-outside-toplevel
  from spectral_jax.neuralef import loss as loss_lib  # pylint: disable=import-outside-toplevel
  from spectral_jax.neuralef import step as step_lib  # pylint: disable=import-outside-toplevel
  from spectral_jax.neuralef import train as train_lib  # pylint: disable=import-outside-toplevel

  config = configs.get_config("test")
  config.log.tensorboard = False
  config.train.num_steps = 10
  feats = synthetic_features()
  mesh = step_lib.data_mesh(jax.devices()[:1])
  # The same steps without the probe (the loop's step function, compiled once for both).
  state = step_lib.replicate(step_lib.init_state(config, feats.psi_inputs.shape[-1]), mesh)
  step_fn, plain_losses = step_lib.make_train_step(config, mesh), []
  for i in range(config.train.num_steps):
    views = train_lib.batch_indices(i, len(feats), config.train.batch_size, config.seed)
    state, metrics = step_fn(state, step_lib.device_batch(feats.batch, views, mesh))
    plain_losses.append(float(metrics["loss"]))
  config.log.fidelity_every = 5
  run = train_lib.train(config, tmp_path / "probed", feats, mesh=mesh)
  lines = (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(ln) for ln in lines]
  k = config.psi.k
  assert [r["step"] for r in records if f"fidelity/angle_max_deg@{k}" in r] == [5, 10]
  assert [r["loss"] for r in records] == plain_losses
  saved = json.loads((tmp_path / "probed" / "fidelity.json").read_text())
  assert saved["step"] == 10 and saved["summary"] == run.fidelity

  batch = feats.batch(train_lib.batch_indices(0, len(feats), config.train.batch_size,
                                              config.seed))
  g = np.asarray(graphs.neuralef_kernel(
      jnp.asarray(batch["graph_features"]), jnp.asarray(batch["image_grids"]), k=config.graph.k,
      alpha=config.graph.alpha, n_neighbors=tuple(config.graph.n_neighbors),
      distance_weights=tuple(config.graph.distance_weights)), np.float64)
  lam, u = np.linalg.eigh(g)
  lam, u = lam[::-1], u[:, ::-1]
  assert lam[k - 1] - lam[k] > 1e-3  # the top-K eigenspace is well defined
  logits = step_lib.psi_module(config).apply({"params": run.state.params},
                                              jnp.asarray(batch["psi_inputs"]))[0]
  tau = loss_lib.tau_schedule(config.train.num_steps, config.loss.tau_max, config.loss.tau_min)
  p = np.asarray(jax.nn.softmax(logits / tau(10), axis=-1), np.float64).reshape(-1, k)
  p = p / np.linalg.norm(p, axis=0)
  used = np.unique(np.argmax(np.asarray(logits).reshape(-1, k), axis=-1))
  assert run.fidelity["argmax_columns_used"] == len(used)
  assert run.fidelity["eigenpairs_converged"] == 1.0
  np.testing.assert_allclose(saved["eigenvalues"], lam[:k], atol=1e-5)
  np.testing.assert_allclose(saved["rayleigh"], np.sum(p * (g @ p), 0), atol=1e-5)
  np.testing.assert_allclose(np.sort(saved["within_span_deg"][str(k)]),
                             np.degrees(np.sort(scipy.linalg.subspace_angles(p, u[:, :k]))),
                             atol=1e-2)
