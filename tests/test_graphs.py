"""Tests for spectral_jax.graphs against brute-force NumPy, SciPy cKDTree and PyTorch."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from jax.experimental import sparse
from scipy.spatial import cKDTree

from spectral_jax import graphs
from spectral_jax import image_ops
from spectral_jax import testing

GRID = (23, 31)  # the VOC photo (375×500) at a ViT-S/16 patch grid
todense = jax.jit(lambda m: m.todense())  # one compile instead of many eager ops


@pytest.fixture(scope="module")
def voc_grid(voc_photo):
  """(23, 31, 3) float32 RGB in [0, 1], DSM's PIL-bilinear resize of the real photo."""
  return np.asarray(image_ops.resize_to_grid(voc_photo.rgb, GRID))


@pytest.fixture(scope="module")
def voc_grids(voc_photo):
  """Two small (6, 8, 3) grids from different crops of the photo (NeuralEF's torch resize)."""
  crops = np.stack([voc_photo.rgb[:300, :400], voc_photo.rgb[75:, 100:]])
  return np.asarray(image_ops.resize_to_grid(crops, (6, 8), convention="torch"))


@pytest.fixture(scope="module")
def feats():
  """(120, 8) random features with exact ties: rows 17 and 40 duplicate row 5; row 99 is zero
  (an isolated node)."""
  f = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
  f[17] = f[40] = f[5]
  f[99] = 0
  return f


# ----------------------------------------------------------------------------- references


def np_topk_cosine(f, k):
  """Reference A₀ rows: float64 cosine, clamp ≥ 0, self excluded, stable (lower index) top-k."""
  s = testing.dsm_affinity_np(f.astype(np.float64))
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, idx, 1), idx


def np_knn_graph(f, k):
  vals, idx = np_topk_cosine(f, k)
  a0 = np.zeros((len(f), len(f)))
  np.put_along_axis(a0, idx, vals, 1)
  return (a0 + a0.T) / 2


def np_colour_features(grid, weight):
  """The reference's node features [r, g, b, w·x, w·y], x, y from linspace(0, 1)."""
  h, w, _ = grid.shape
  x = np.tile(np.linspace(0, 1, w), h)
  y = np.repeat(np.linspace(0, 1, h), w)
  return np.column_stack([grid.reshape(-1, 3).astype(np.float64), weight * x, weight * y])


def np_sym_normalize(a):
  d = a.sum(1)
  d[d < 1e-12] = 1
  s = 1 / np.sqrt(d)
  return s[:, None] * a * s[None, :]


def assert_valid_knn(indices, points, k, include_self):
  """Every row's neighbours are *a* k-nearest set: their sorted distances equal cKDTree's."""
  indices = np.asarray(indices)
  assert indices.shape == (len(points), k)
  assert all(len(set(row)) == k for row in indices)
  n_query = k if include_self else k + 1
  ref_d, _ = cKDTree(points).query(points, k=n_query)
  ref_d = ref_d if include_self else ref_d[:, 1:]  # drop self (distance 0)
  ours = np.sort(np.linalg.norm(points[indices] - points[:, None], axis=-1), axis=1)
  np.testing.assert_allclose(ours, ref_d, atol=2e-6)
  self_in = (indices == np.arange(len(points))[:, None]).any(1)
  assert self_in.all() if include_self else not self_in.any()


# ----------------------------------------------------------------------------- feature k-NN


def test_topk_cosine_rows_matches_bruteforce_with_ties(feats):
  k = 10
  values, indices = graphs.topk_cosine_rows(feats, feats, k)
  ref_v, ref_i = np_topk_cosine(feats, k)
  np.testing.assert_allclose(values, ref_v, atol=1e-6)
  np.testing.assert_array_equal(indices, ref_i)  # includes the tie rule (lower index first)
  assert indices.dtype == jnp.int32
  # Duplicated rows 5, 17, 40 are exact ties for every other row: they appear in index order.
  for row in np.asarray(indices):
    hits = [j for j in row if j in (5, 17, 40)]
    assert hits == sorted(hits)
  # The zero row has no positive similarity: it lists the lowest other indices with value 0.
  np.testing.assert_array_equal(indices[99], np.arange(k))
  np.testing.assert_array_equal(values[99], 0)
  assert float(values.min()) >= 0 and float(values.max()) <= 1 + 1e-6


def test_topk_blockwise_offset_and_jit_agree(feats):
  k = 10
  full_v, full_i = graphs.topk_cosine_rows(feats, feats, k)
  for block in (7, 64):  # 7 does not divide 120: exercises the remainder block
    v, i = graphs.topk_cosine_rows(feats, feats, k, block_size=block)
    np.testing.assert_array_equal(i, full_i)
    np.testing.assert_allclose(v, full_v, atol=1e-7)
  # Rows 40..79 as a shard with a traced offset (as inside shard_map).
  fn = jax.jit(lambda q, kk, off: graphs.topk_cosine_rows(q, kk, k, row_offset=off,
                                                          block_size=16))
  v, i = fn(feats[40:80], feats, jnp.int32(40))
  np.testing.assert_array_equal(i, full_i[40:80])
  np.testing.assert_allclose(v, full_v[40:80], atol=1e-7)


def test_knn_feature_graph_dense_bcoo_batched(feats):
  k = 10
  dense = np.asarray(graphs.knn_feature_graph(feats, k))
  np.testing.assert_allclose(dense, np_knn_graph(feats, k), atol=1e-6)
  np.testing.assert_array_equal(dense, dense.T)
  assert np.all(np.diag(dense) == 0) and dense.min() >= 0
  bcoo = graphs.knn_feature_graph(feats, k, output="bcoo", block_size=32)
  assert bcoo.nse == 2 * len(feats) * k
  np.testing.assert_allclose(todense(bcoo), dense, atol=1e-7)
  # Batched == per item (dense and BCOO with a batch dim); jit == eager.
  other = feats[::-1].copy()
  batch = np.stack([feats, other])
  jitted = jax.jit(graphs.knn_feature_graph, static_argnames=("k", "block_size", "output"))
  np.testing.assert_allclose(jitted(batch, k=k, block_size=32)[0], dense, atol=1e-7)
  np.testing.assert_allclose(jitted(batch, k=k, block_size=32)[1],
                             graphs.knn_feature_graph(other, k), atol=1e-7)


def test_knn_degrees_and_rows_matmul_match_dense(feats, rng):
  k = 10
  values, indices = graphs.topk_cosine_rows(feats, feats, k)
  a = np_knn_graph(feats, k)
  ref = a.sum(1)
  ref[ref < 1e-12] = 1  # node 99 is isolated
  np.testing.assert_allclose(graphs.knn_degrees(values, indices, len(feats)), ref, rtol=1e-5)
  np.testing.assert_allclose(graphs.degrees(jnp.asarray(a)), ref, rtol=1e-5)
  x = rng.normal(size=(len(feats), 3)).astype(np.float32)
  a0 = np.zeros_like(a)
  np.put_along_axis(a0, np.asarray(indices), np.asarray(values), 1)
  np.testing.assert_allclose(graphs.knn_rows_matmul(values[20:50], indices[20:50], x),
                             a0[20:50] @ x, atol=1e-5)


SHARD_MAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from spectral_jax import graphs
    n, k, ndev = 64, 6, 4
    f = np.random.default_rng(1).normal(size=(n, 8)).astype(np.float32)
    psi = np.random.default_rng(2).normal(size=(n, 3)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()[:ndev]), ("data",))

    def local(q, f_all, psi_rows, psi_all):
      m = q.shape[0]
      off = jax.lax.axis_index("data") * m
      v, i = graphs.topk_cosine_rows(q, f_all, k, row_offset=off, block_size=5)
      d = graphs.knn_degrees(v, i, n, row_offset=off, axis_name="data")
      s = jax.lax.rsqrt(d)
      psi_t = psi_all * s[:, None]
      rows_t = jax.lax.dynamic_slice_in_dim(psi_t, off, m)
      mm = jax.lax.psum(rows_t.T @ graphs.knn_rows_matmul(v, i, psi_t), "data")
      return d, (mm + mm.T) / 2

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P(), P("data"), P()),
                               out_specs=(P(), P())))
    d, r = fn(f, f, psi, psi)
    g1 = graphs.normalize_symmetric(graphs.knn_feature_graph(f, k))
    np.testing.assert_allclose(d, graphs.degrees(graphs.knn_feature_graph(f, k)), rtol=1e-5)
    np.testing.assert_allclose(r, psi.T @ np.asarray(g1) @ psi, rtol=1e-4, atol=1e-4)
    print("OK")
""")


def test_feature_rows_inside_shard_map():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  out = subprocess.run([sys.executable, "-c", SHARD_MAP_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------- colour–position k-NN


@pytest.mark.parametrize("k,weight,include_self", [(20, 2.0, True), (5, 0.1, False)])
def test_colour_knn_indices_are_nearest_per_ckdtree(voc_grid, k, weight, include_self):
  idx = graphs.colour_knn_indices(voc_grid, k, weight, include_self=include_self, block_size=128)
  assert_valid_knn(idx, np_colour_features(voc_grid, weight), k, include_self)
  if include_self:  # self-loops come first
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], np.arange(idx.shape[0]))


@pytest.mark.parametrize("include_self", [True, False])
def test_colour_knn_ties_lower_index_wins(include_self):
  # A flat-colour 9×17 grid: neighbours tie by geometry. With w = 2 the grid steps are 1/4 and 1/8
  # (exact in float32 and float64), so the expected order is unambiguous.
  grid = np.full((9, 17, 3), 0.5, np.float32)
  k, weight = 7, 2.0
  p = np_colour_features(grid, weight)[:, 3:]
  d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, -1 if include_self else np.inf)
  ref = np.argsort(d2, axis=1, kind="stable")[:, :k]
  ours = graphs.colour_knn_indices(grid, k, weight, include_self=include_self, block_size=40)
  np.testing.assert_array_equal(ours, ref)


def test_colour_knn_affinity_matches_reference_assembly(voc_grid):
  w = np.asarray(graphs.colour_knn_affinity(voc_grid))
  n = voc_grid.shape[0] * voc_grid.shape[1]
  # The reference assembly: csr_matrix of ones at (i, j) and (j, i) for every pass; sums repeats.
  i_list, j_list = [], []
  for k, weight in zip(graphs.DSM_N_NEIGHBORS, graphs.DSM_DISTANCE_WEIGHTS):
    idx = np.asarray(graphs.colour_knn_indices(voc_grid, k, weight, include_self=True,
                                               block_size=128))
    i_list.append(np.repeat(np.arange(n), k))
    j_list.append(idx.reshape(-1))
  ij, ji = np.concatenate(i_list + j_list), np.concatenate(j_list + i_list)
  ref = scipy.sparse.csr_matrix((np.ones(len(ij)), (ij, ji)), (n, n)).toarray()
  np.testing.assert_array_equal(w, ref)
  assert set(np.unique(w)) <= {0, 1, 2, 3, 4} and w.max() == 4
  np.testing.assert_array_equal(np.diag(w), 4)
  np.testing.assert_array_equal(w, w.T)
  bcoo = graphs.colour_knn_affinity(voc_grid, output="bcoo", block_size=128)
  np.testing.assert_array_equal(todense(bcoo), w)
  batched = graphs.colour_knn_affinity(np.stack([voc_grid[::-1], voc_grid]))
  np.testing.assert_array_equal(batched[1], w)


def test_dsm_affinity(voc_grid, rng):
  f = rng.normal(size=(GRID[0] * GRID[1], 16)).astype(np.float32)
  w_feat = np.asarray(graphs.feature_affinity(f))
  np.testing.assert_allclose(w_feat, testing.dsm_affinity_np(f), atol=1e-6)
  np.testing.assert_array_equal(graphs.dsm_affinity(f), w_feat)  # λ = 0: features only
  w = graphs.dsm_affinity(f, voc_grid, image_weight=0.5)
  np.testing.assert_allclose(w, w_feat + 0.5 * np.asarray(graphs.colour_knn_affinity(voc_grid)),
                             atol=1e-6)
  with pytest.raises(ValueError, match="image_grid"):
    graphs.dsm_affinity(f, image_weight=0.5)
  with pytest.raises(ValueError, match="n=713"):
    graphs.dsm_affinity(f, voc_grid[:-1], image_weight=0.5)


# ----------------------------------------------------------------------------- NeuralEF


def np_pixel_graph(grid, n_neighbors, weights):
  """Reference per-image pixel graph: float64 distances, self excluded, binary OR, symmetric."""
  a = np.zeros((grid.shape[0] * grid.shape[1],) * 2, bool)
  for k, w in zip(n_neighbors, weights):
    p = np_colour_features(grid, w)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    res = np.zeros_like(a)
    np.put_along_axis(res, np.argsort(d, axis=1, kind="stable")[:, :k], True, 1)
    a |= res | res.T
  return a.astype(np.float64)


def test_pixel_graph(voc_grids):
  dense = np.asarray(graphs.pixel_graph(voc_grids, block_size=16))
  assert dense.shape == (2, 48, 48)
  for b in range(2):
    np.testing.assert_array_equal(dense[b], np_pixel_graph(voc_grids[b], (10, 5), (2.0, 0.1)))
  bcoo = graphs.pixel_graph(voc_grids, output="bcoo")
  assert bcoo.shape == (2, 48, 48) and bcoo.nse == 2 * 48 * 15
  np.testing.assert_array_equal(todense(bcoo), dense)


def test_neuralef_kernel_matches_reference(voc_grids, rng):
  b, n, k = 2, 48, 20
  f = rng.normal(size=(b, n, 16)).astype(np.float32)
  flat = f.reshape(b * n, -1)
  g1 = np_sym_normalize(np_knn_graph(flat, k))
  g2 = scipy.linalg.block_diag(*[np_sym_normalize(np_pixel_graph(g, (10, 5), (2.0, 0.1)))
                                 for g in voc_grids])
  ref = g1 + 0.3 * g2
  dense = np.asarray(graphs.neuralef_kernel(f, voc_grids, k=k))
  np.testing.assert_allclose(dense, ref, atol=1e-6)
  np.testing.assert_allclose(dense, dense.T, atol=1e-7)
  jitted = jax.jit(graphs.neuralef_kernel, static_argnames=("k", "block_size", "output"))
  bcoo = jitted(f, voc_grids, k=k, block_size=16, output="bcoo")
  np.testing.assert_allclose(todense(bcoo), dense, atol=1e-6)
  # As a jraph graph: aggregating edge-weighted sender features per receiver is G @ x.
  gt = graphs.to_graphs_tuple(bcoo)
  x = rng.normal(size=(b * n, 3)).astype(np.float32)
  agg = np.zeros_like(x)
  np.add.at(agg, np.asarray(gt.receivers), np.asarray(gt.edges)[:, None] * x[gt.senders])
  np.testing.assert_allclose(agg, dense @ x, atol=1e-5)


def test_normalize_symmetric_isolated_nodes_dense_and_bcoo():
  a = np.zeros((2, 5, 5), np.float32)
  a[:, 0, 1] = a[:, 1, 0] = 1.0  # graph 0: nodes 2..4 are isolated
  a[1, 2, 3] = a[1, 3, 2] = 2.0
  a[1, 4, 4] = 3.0               # graph 1: a self-loop
  dense = np.asarray(graphs.normalize_symmetric(jnp.asarray(a)))
  assert np.isfinite(dense).all()
  for b in range(2):
    np.testing.assert_allclose(dense[b], np_sym_normalize(a[b].astype(np.float64)), atol=1e-7)
  np.testing.assert_array_equal(dense[0, 2:], 0)
  np.testing.assert_array_equal(graphs.degrees(jnp.asarray(a))[0], [1, 1, 1, 1, 1])
  # The same graphs as BCOO with one batch dim; graph 0 pads with explicit zeros.
  idx = np.array([[[0, 1], [1, 0], [2, 2], [3, 3], [4, 4]],
                  [[0, 1], [1, 0], [2, 3], [3, 2], [4, 4]]])
  data = a[np.arange(2)[:, None], idx[..., 0], idx[..., 1]]
  sp = graphs.normalize_symmetric(sparse.BCOO((data, idx), shape=a.shape))
  np.testing.assert_allclose(todense(sp), dense, atol=1e-7)


# ----------------------------------------------------------------------------- validation


def test_k_too_large_names_k_and_n(feats, voc_grid):
  n = len(feats)
  # k = n - 1 (self excluded) and k = n (self included) are complete graphs: allowed. eval_shape
  # runs the validation and tracing without compiling.
  jax.eval_shape(lambda: graphs.topk_cosine_rows(feats[:6], feats[:6], 5))
  with pytest.raises(ValueError, match=r"k=6 .*n=6"):
    graphs.topk_cosine_rows(feats[:6], feats[:6], 6)
  with pytest.raises(ValueError, match=rf"k={n} .*n={n}"):
    graphs.knn_feature_graph(feats, n)
  tiny = voc_grid[:2, :3]  # 6 nodes: self-loops allow k = 6, not 7
  jax.eval_shape(lambda: graphs.colour_knn_affinity(tiny, n_neighbors=(6,),
                                                    distance_weights=(1.0,)))
  with pytest.raises(ValueError, match=r"=7 .*n=6"):
    graphs.colour_knn_affinity(tiny, n_neighbors=(7,), distance_weights=(1.0,))
  with pytest.raises(ValueError, match=r"=6 .*n=6"):
    graphs.pixel_graph(tiny, n_neighbors=(6,), distance_weights=(1.0,))


@pytest.mark.parametrize("call,error,match", [
    (lambda f, g: graphs.topk_cosine_rows(f[0], f, 3), ValueError, "rank"),
    (lambda f, g: graphs.knn_feature_graph(f.astype(np.int32), 3), TypeError, "float"),
    (lambda f, g: graphs.knn_feature_graph(np.where(f == f[0, 0], np.nan, f), 3), ValueError,
     "NaN"),
    (lambda f, g: graphs.knn_feature_graph(f, 3, output="csr"), ValueError, "output"),
    (lambda f, g: graphs.knn_feature_graph(f, 3, block_size=0), ValueError, "block_size"),
    (lambda f, g: graphs.colour_knn_affinity(g * 255), ValueError, r"\[0, 1\]"),
    (lambda f, g: graphs.pixel_graph(g[..., 0]), ValueError, "rank"),
    (lambda f, g: graphs.neuralef_kernel(f[None], g[None], k=3), ValueError, "h·w"),
    (lambda f, g: graphs.resize_to_grid(g, (2, 2), convention="cv2"), ValueError, "convention"),
])
def test_bad_inputs_raise_clearly(feats, voc_grid, call, error, match):
  with pytest.raises(error, match=match):
    call(feats, voc_grid)


@pytest.mark.parametrize("form", graphs.NEURALEF_KERNEL_FORMS)
def test_batch_kernel_matmul_equals_dense_kernel(form):
  """One device's rows of G as a matmul (all rows without an axis) equal the dense
  ``neuralef_kernel`` times p, in both forms (the sharded form: tests/test_neuralef_train.py)."""
  rng = np.random.default_rng(1)
  f = jnp.asarray(rng.normal(size=(4, 16, 4)), jnp.float32)
  grids = jnp.asarray(rng.uniform(size=(4, 4, 4, 3)), jnp.float32)
  p = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
  want = graphs.neuralef_kernel(f, grids, k=7, alpha=0.3, n_neighbors=(4, 2)) @ p
  got = graphs.batch_kernel_matmul(f, grids, k=7, alpha=0.3, n_neighbors=(4, 2),
                                   block_size=16, form=form)(p)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="form must be one of"):
    graphs.batch_kernel_matmul(f, grids, k=7, alpha=0.3, form="csr")
