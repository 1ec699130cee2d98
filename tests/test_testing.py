"""The shared references of spectral_jax.testing against hand-made cases and each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import eigensolvers, testing


def test_dsm_affinity_np_by_hand():
  f = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]], np.float32)
  w = testing.dsm_affinity_np(f)
  c = 1 / np.sqrt(2)
  want = np.array([[1, 0, c, 0, 0], [0, 1, c, 0, 0], [c, c, 1, 0, 0], [0, 0, 0, 1, 0],
                   [0, 0, 0, 0, 0]], np.float32)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, want, atol=1e-7)
  np.testing.assert_array_equal(testing.dsm_affinity_np(np.stack([f, f]))[1], w)  # batched


def test_degrees_np_guards_isolated_nodes():
  w = np.array([[0.0, 2.0, 0.0], [2.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(testing.degrees_np(w), [2.0, 2.5, 1.0])


def test_sign_rule_np_matches_apply_sign_rule():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(3, 40, 6)).astype(np.float32)
  y[:, :, 0] = np.abs(y[:, :, 0])   # one-signed positive: kept
  y[:, :, 1] = -np.abs(y[:, :, 1])  # one-signed negative: made positive
  y[:, :20, 2], y[:, 20:, 2] = 1.0, -1.0  # exactly 50%: kept
  got = testing.sign_rule_np(y)
  np.testing.assert_array_equal(got, np.asarray(eigensolvers.apply_sign_rule(jnp.asarray(y))))
  frac = (got > 0).mean(axis=-2)
  assert np.all((frac <= 0.5) | (frac == 1.0))
  np.testing.assert_array_equal(got[..., 2], y[..., 2])


@pytest.fixture(scope="module")
def graph():
  f = np.random.default_rng(1).normal(size=(80, 16)) + 0.3
  return testing.dsm_affinity_np(f)


def test_dsm_eigsh_and_eigh_references_agree(graph):
  k = 6
  lam_s, y_s = testing.dsm_eigsh_reference(graph, k)
  lam_e, y_e = testing.dsm_eigh_reference(graph, k)
  assert lam_s.shape == lam_e.shape == (k,) and y_s.shape == y_e.shape == (80, k)
  assert np.all(np.diff(lam_s) > 0) and abs(lam_s[0]) < 1e-10
  np.testing.assert_allclose(lam_s, lam_e, atol=1e-10)
  d = testing.degrees_np(graph)
  for y in (y_s, y_e):
    np.testing.assert_allclose(y.T @ (d[:, None] * y), np.eye(k), atol=1e-8)
    np.testing.assert_allclose((np.diag(d) - graph) @ y, d[:, None] * y * lam_e, atol=1e-8)
    frac = (y > 0).mean(axis=0)
    assert np.all((frac <= 0.5) | (frac == 1.0)), frac
  # Simple eigenvalues and the same sign rule: the same vectors (up to an exactly-50% column).
  cos = np.sum(y_s * d[:, None] * y_e, axis=0)
  np.testing.assert_allclose(np.abs(cos), 1.0, atol=1e-8)
  balanced = (y_e > 0).mean(axis=0) == 0.5
  assert np.all((cos > 0) | balanced)


def test_dsm_eigh_reference_all_pairs(graph):
  lam, y = testing.dsm_eigh_reference(graph)
  assert lam.shape == (80,) and y.shape == (80, 80)
  np.testing.assert_allclose(lam[:6], testing.dsm_eigh_reference(graph, 6)[0], atol=1e-12)


def test_largest_component_np_by_hand():
  mask = np.zeros((2, 5, 6), bool)
  mask[0, 3:5, 0:2] = True  # 4 pixels, later in raster order
  mask[0, 0:2, 4:6] = True  # 4 pixels, first: wins the tie
  mask[1, :3, :3] = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]  # diagonal touch
  four = testing.largest_component_np(mask)
  want = np.zeros((5, 6), bool)
  want[0:2, 4:6] = True
  np.testing.assert_array_equal(four[0], want)
  assert four[1].sum() == 4 and testing.largest_component_np(mask[1], connectivity=8).sum() == 5
  assert not testing.largest_component_np(np.zeros((3, 3), bool)).any()


def test_box_np_by_hand():
  mask = np.zeros((4, 5), bool)
  mask[1:3, 2] = True
  mask[2, 3] = True
  np.testing.assert_array_equal(testing.box_np(mask, 16), [32, 16, 64, 48])
  np.testing.assert_array_equal(testing.box_np(mask, 16, image_size=(40, 60)), [32, 16, 60, 40])
  np.testing.assert_array_equal(testing.box_np(np.zeros((4, 5), bool), 16), [0, 0, 80, 64])
  np.testing.assert_array_equal(testing.box_np(np.zeros((4, 5), bool), 16, image_size=(60, 70)),
                                [0, 0, 70, 60])


def test_median_time_calls_and_median(monkeypatch):
  calls = []
  clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # three timed calls: 1 s, 3 s, 2 s
  monkeypatch.setattr(testing.time, "perf_counter", lambda: next(clock))
  assert testing.median_time(lambda: calls.append(1) or jnp.ones(2), repeats=3, warmup=2) == 2.0
  assert len(calls) == 5  # 2 warm-up + 3 timed
  monkeypatch.undo()
  out, seconds = testing.timed_call(lambda: jnp.zeros(3))
  assert seconds >= 0 and out.shape == (3,)
  with pytest.raises(ValueError, match="repeats"):
    testing.median_time(lambda: None, repeats=0)


# ----------------------------------------------------------------------------- eigenpairs


@pytest.mark.parametrize("problem", ["path", "grid"])
def test_closed_form_spectra_match_scipy(problem):
  import scipy.linalg
  lap, lam, vec = testing.path_laplacian(9) if problem == "path" else testing.grid_laplacian(4, 4)
  ref_lam, ref_vec = scipy.linalg.eigh(lap)
  np.testing.assert_allclose(lam, ref_lam, atol=1e-12)
  np.testing.assert_allclose(lap @ vec, vec * lam, atol=1e-12)
  rep = testing.assert_eigenpairs_close(lam, vec, ref_lam, ref_vec, eigenvalue_atol=1e-12,
                                        max_angle_deg=1e-5, orthonormality_atol=1e-12)
  if problem == "grid":   # a square grid has degenerate clusters: compared up to rotation
    assert max(b - a for a, b in rep.clusters) >= 2


def test_ring_generalised_spectrum_matches_scipy():
  import scipy.linalg
  w, d, lam = testing.ring_normalised_laplacian(10, weight=0.7, self_loop=0.4)
  np.testing.assert_allclose(scipy.linalg.eigh(d - w, d, eigvals_only=True), lam, atol=1e-12)


def test_compare_eigenpairs_ignores_sign_and_rotation_inside_a_cluster():
  lap, lam, vec = testing.grid_laplacian(4, 4)
  (a, b), = [c for c in testing.eigenvalue_clusters(lam) if c[1] - c[0] == 2][:1]
  rotated = vec.copy()
  t = 0.6
  rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  rotated[:, a:b] = vec[:, a:b] @ rot
  rotated[:, 0] *= -1
  rep = testing.compare_eigenpairs(lam, rotated, lam, vec)
  assert rep.angles_deg.max() < 1e-6 and rep.orthonormality_error < 1e-12
  # The same rotation across two DIFFERENT eigenvalues is an error, and it is reported.
  mixed = vec.copy()
  mixed[:, b - 1:b + 1] = vec[:, b - 1:b + 1] @ rot
  rep = testing.compare_eigenpairs(lam, mixed, lam, vec)
  assert rep.angles_deg.max() == pytest.approx(np.degrees(t), abs=1e-6)
  with pytest.raises(AssertionError, match=f"eigenvectors ({a}..{b - 1}|{b}..{b}): 34.4°"):
    testing.assert_eigenpairs_close(lam, mixed, lam, vec)


def test_compare_eigenpairs_b_inner_product():
  import scipy.linalg
  w, d, lam = testing.ring_normalised_laplacian(12)
  ref_lam, ref_vec = scipy.linalg.eigh(d - w, d)
  scaled = ref_vec * np.array([-1.0] * 12)     # signs flipped: still D-orthonormal
  rep = testing.assert_eigenpairs_close(ref_lam, scaled, lam, ref_vec, B=d, eigenvalue_atol=1e-12,
                                        max_angle_deg=1e-5, orthonormality_atol=1e-10)
  assert rep.orthonormality_error < 1e-10
  # Euclidean-orthonormal vectors are not D-orthonormal: reported.
  with pytest.raises(AssertionError, match="VᵀBV"):
    testing.assert_eigenpairs_close(ref_lam, ref_vec, lam, ref_vec, B=2 * d,
                                    eigenvalue_atol=1e-12)


def test_compare_eigenpairs_refuses_bad_input():
  lam, vec = np.ones(3), np.eye(4)[:, :3]
  with pytest.raises(ValueError, match="eigenvectors must both"):
    testing.compare_eigenpairs(lam, vec, lam, np.eye(5)[:, :3])
  with pytest.raises(ValueError, match="NaN"):
    testing.compare_eigenpairs(lam * np.nan, vec, lam, vec)


def test_lobpcg_on_closed_form_spectra(x64):
  """The library's own LOBPCG against the closed forms: smallest pairs of a grid Laplacian
  (degenerate clusters) and the generalised ring problem."""
  lap, lam, vec = testing.grid_laplacian(6, 6)
  k = 6   # eigenvalue clusters (0), (1, 2), (3), (4, 5): whole clusters
  x0 = np.random.default_rng(0).normal(size=(36, 10))
  res = eigensolvers.lobpcg(jnp.asarray(lap), jnp.asarray(x0), k=k, tol=1e-10)
  assert bool(res.converged.all())
  testing.assert_eigenpairs_close(res.eigenvalues, res.eigenvectors, lam[:k], vec[:, :k],
                                  eigenvalue_atol=1e-8, max_angle_deg=1e-3)
  w, d, lam = testing.ring_normalised_laplacian(30)
  res = eigensolvers.lobpcg(jnp.asarray(d - w), jnp.asarray(x0[:30, :8]), B=jnp.asarray(d), k=5,
                            tol=1e-10)
  np.testing.assert_allclose(res.eigenvalues, lam[:5], atol=1e-8)


def test_benchmark_device_names_the_device_and_refuses_a_missing_gpu():
  torch_device, name = testing.benchmark_device("cpu", torch_peer=False)
  assert torch_device == "cpu" and name.startswith("cpu: JAX cpu")
  with pytest.raises(ValueError, match="device must be one of"):
    testing.benchmark_device("tpu", torch_peer=False)
  if jax.default_backend() == "gpu":
    pytest.skip("this machine has a GPU: the refusal is not testable here")
  with pytest.raises(RuntimeError, match=r"JAX sees no GPU.*\.\[cuda\]"):
    testing.benchmark_device("gpu", torch_peer=False)
