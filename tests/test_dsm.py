"""DSM stages against SciPy / scikit-learn / PyTorch references and synthetic scenes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.decomposition

from spectral_jax import dsm, graphs, image_ops, regions, testing

# One patch grid for (almost) every test: each new shape is a new XLA compile of K-means.
P, GRID = 4, (8, 10)
N = GRID[0] * GRID[1]
K = 6
SQUARE = (slice(2, 6), slice(3, 7))   # 4×4 patches = 16 of 80: the minority side
BLOB = (6, 7)                         # one patch touching the square's corner (5, 6) diagonally


def _scene(seed=0, blob=True):
  """A bright yellow square on a textured blue-grey background, (8·4)×(10·4) px, float [0, 1]."""
  rng = np.random.default_rng(seed)
  h, w = GRID[0] * P, GRID[1] * P
  img = np.stack([rng.uniform(0.1, 0.5, (h, w)), rng.uniform(0.1, 0.5, (h, w)),
                  rng.uniform(0.4, 0.8, (h, w))], axis=-1)
  obj = np.zeros(GRID, bool)
  obj[SQUARE] = True
  if blob:
    obj[BLOB] = True
  pix = np.kron(obj, np.ones((P, P), bool))
  img[pix] = np.array([0.95, 0.9, 0.2]) + rng.normal(0, 0.02, (pix.sum(), 3))
  return np.clip(img, 0, 1).astype(np.float32), obj


def _colour_features(img):
  """Per-patch mean colour as (n, 3) features: all similarities positive (a connected graph, as
  with real keys), higher within the square and within the background than across."""
  return jnp.asarray(img.reshape(GRID[0], P, GRID[1], P, 3).mean(axis=(1, 3)).reshape(N, 3))


def _square_box():
  return [SQUARE[1].start * P, SQUARE[0].start * P, SQUARE[1].stop * P, SQUARE[0].stop * P]


# ----------------------------------------------------------------------------- eigenvectors


@pytest.mark.parametrize("image_weight", [0.0, 0.5])
def test_spectral_decomposition_matches_scipy(image_weight):
  rng = np.random.default_rng(1)
  feats = jnp.asarray(rng.normal(size=(N, 16)).astype(np.float32) + 0.2)
  grid = jnp.asarray(rng.uniform(size=GRID + (3,)).astype(np.float32))
  lam, y = dsm.spectral_decomposition(feats, grid, num_eigenvectors=K, image_weight=image_weight)
  w = np.asarray(graphs.dsm_affinity(feats, grid, image_weight=image_weight), np.float64)
  d = np.diag(w.sum(1))
  ref, _ = testing.dsm_eigh_reference(w, K)
  np.testing.assert_allclose(np.asarray(lam), ref, atol=2e-4)
  y = np.asarray(y, np.float64)
  np.testing.assert_allclose(y.T @ d @ y, np.eye(K), atol=2e-3)
  np.testing.assert_allclose((d - w) @ y, d @ y * np.asarray(lam), atol=2e-3 * np.abs(d).max())


@pytest.mark.parametrize("k", [1, N, N + 5])
def test_num_eigenvectors_out_of_range_is_a_clear_error(k):
  feats = jnp.ones((N, 3))
  with pytest.raises(ValueError, match="num_eigenvectors"):
    dsm.spectral_decomposition(feats, num_eigenvectors=k)


def test_spectral_decomposition_needs_image_grid_for_colour_graph():
  with pytest.raises(ValueError, match="image_grid"):
    dsm.spectral_decomposition(jnp.ones((N, 3)), num_eigenvectors=K, image_weight=1.0)


# ----------------------------------------------------------------------------- sign rule


# One sign rule (eigensolvers.apply_sign_rule): a vector with no positive entry is negated too,
# as the solver does for y₀.
@pytest.mark.parametrize("positive, flipped", [(7, True), (5, False), (3, False), (10, False),
                                               (0, True)])
def test_foreground_side_rule(positive, flipped):
  y = jnp.concatenate([jnp.arange(1.0, positive + 1), -jnp.arange(1.0, 10 - positive + 1)])
  out = dsm.foreground_side(y)
  np.testing.assert_array_equal(out, -y if flipped else y)
  np.testing.assert_array_equal(dsm.foreground_side(out), out)  # idempotent


def test_sign_of_eigenvectors_does_not_change_the_result():
  img, obj = _scene()
  lam, y = dsm.spectral_decomposition(_colour_features(img), num_eigenvectors=K)
  for yy in (y, -y):
    fg = dsm.foreground_patches(dsm.fiedler_map(yy, GRID))
    np.testing.assert_array_equal(fg, obj)  # the minority side, whatever the solver's sign


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_border_rule_keeps_a_large_central_object(sign):
  """A centred object covering 60% of the grid: the minority rule (SPEC) takes the frame, the
  optional border rule takes the object, whatever the eigenvector's sign."""
  obj = np.zeros(GRID, bool)
  obj[1:-1, 1:-1] = True   # 6×8 = 48 of 80 patches
  y = jnp.zeros((N, 2)).at[:, 1].set(sign * jnp.where(jnp.asarray(obj.ravel()), 1.0, -1.0))
  minority = dsm.foreground_patches(dsm.fiedler_map(y, GRID))
  border = dsm.foreground_patches(dsm.fiedler_map(y, GRID, rule="border"))
  np.testing.assert_array_equal(minority, ~obj)
  np.testing.assert_array_equal(border, obj)
  with pytest.raises(ValueError, match="rule"):
    dsm.fiedler_map(y, GRID, rule="largest")


def test_nothing_positive_means_the_whole_image():
  fg = dsm.foreground_patches(-jnp.ones(GRID))
  assert bool(fg.all())
  _, box = dsm.localise(fg, patch_size=P)
  np.testing.assert_array_equal(box, [0, 0, GRID[1] * P, GRID[0] * P])


# ----------------------------------------------------------------------------- localisation


@pytest.mark.parametrize("connectivity", [4, 8])
def test_localises_bright_square_from_colour_features(connectivity):
  img, obj = _scene()
  _, y = dsm.spectral_decomposition(_colour_features(img), num_eigenvectors=K)
  fg = dsm.foreground_patches(dsm.fiedler_map(y, GRID))
  comp, box = dsm.localise(fg, patch_size=P, connectivity=connectivity)
  expected = _square_box()
  if connectivity == 8:  # the diagonal blob joins the square's component
    expected = [expected[0], expected[1], (BLOB[1] + 1) * P, (BLOB[0] + 1) * P]
  np.testing.assert_array_equal(box, expected)
  assert bool(comp[BLOB]) == (connectivity == 8)


def test_localises_square_from_colour_graph_alone():
  """λ > 0 with uninformative (constant) features: the KNN colour graph finds the object.

  One colour-dominated pass (k = 10, w = 0.1): on this 8×10 grid the reference's first pass
  (k = 20 of 80 nodes, w = 2) is mostly spatial and prefers a left/right cut.
  """
  img, obj = _scene(blob=False)
  grid = image_ops.resize_to_grid(jnp.asarray(img), GRID)
  _, y = dsm.spectral_decomposition(jnp.ones((N, 8)), grid, num_eigenvectors=K,
                                    image_weight=1.0, n_neighbors=(10,),
                                    distance_weights=(0.1,))
  fg = dsm.foreground_patches(dsm.fiedler_map(y, GRID))
  np.testing.assert_array_equal(fg, obj)
  _, box = dsm.localise(fg, patch_size=P)
  np.testing.assert_array_equal(box, _square_box())


def test_box_clipped_to_input_size_and_scaled_to_photo():
  fg = jnp.zeros(GRID, bool).at[:, -2:].set(True)
  _, box = dsm.localise(fg, patch_size=P, image_size=(30, 38))
  np.testing.assert_array_equal(box, [32, 0, 38, 30])
  scaled = dsm.scale_boxes(box, (30, 38), (60, 95))
  np.testing.assert_array_equal(scaled, [80, 0, 95, 60])


# ----------------------------------------------------------------------------- upsampling


def _nearest_ref(values, input_hw, output_hw):
  """Brute force: each photo pixel's centre, mapped into the input frame, reads its patch."""
  h, w = values.shape
  out = np.empty(output_hw, values.dtype)
  for i in range(output_hw[0]):
    for j in range(output_hw[1]):
      yi = min(int((i + 0.5) * input_hw[0] / output_hw[0] // P), h - 1)
      xj = min(int((j + 0.5) * input_hw[1] / output_hw[1] // P), w - 1)
      out[i, j] = values[yi, xj]
  return out


@pytest.mark.parametrize("input_hw, output_hw", [((32, 40), (32, 40)), ((35, 43), (35, 43)),
                                                 ((35, 43), (70, 50)), ((34, 41), (17, 21))])
def test_upsample_nearest_matches_brute_force(input_hw, output_hw):
  values = np.arange(N, dtype=np.int32).reshape(GRID)
  out = dsm.upsample_patch_map(values, patch_size=P, input_hw=input_hw, output_hw=output_hw)
  np.testing.assert_array_equal(out, _nearest_ref(values, input_hw, output_hw))
  if input_hw == output_hw == (32, 40):
    np.testing.assert_array_equal(out, np.kron(values, np.ones((P, P), np.int32)))


def test_upsample_bilinear_reproduces_linear_ramps():
  ii, jj = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
  values = (0.5 * ii - 0.25 * jj).astype(np.float32)
  out = np.asarray(dsm.upsample_patch_map(values, patch_size=P, input_hw=(32, 40),
                                          output_hw=(32, 40), method="bilinear"))
  u = (np.arange(32) + 0.5) / P - 0.5  # grid coordinate of each pixel centre
  v = (np.arange(40) + 0.5) / P - 0.5
  ref = 0.5 * np.clip(u, 0, GRID[0] - 1)[:, None] - 0.25 * np.clip(v, 0, GRID[1] - 1)[None, :]
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_object_mask_nearest_and_bilinear():
  img, obj = _scene(blob=False)
  fiedler = jnp.where(jnp.asarray(obj), 1.0, -1.0)
  near = dsm.object_mask(fiedler, patch_size=P, input_hw=(32, 40), output_hw=(32, 40))
  np.testing.assert_array_equal(near, np.kron(obj, np.ones((P, P), bool)))
  bil = np.asarray(dsm.object_mask(fiedler, patch_size=P, input_hw=(32, 40),
                                   output_hw=(32, 40), upsample="bilinear"))
  # Along the edges the ±1 field crosses 0 halfway between patch centres, on the patch
  # boundary; only the square's corners are rounded off (pixels within P/2 of a corner).
  diff = np.argwhere(bil != np.asarray(near))
  corners = np.array([[y, x] for y in (SQUARE[0].start * P, SQUARE[0].stop * P)
                      for x in (SQUARE[1].start * P, SQUARE[1].stop * P)]) - 0.5
  assert len(diff) and not bil[~np.asarray(near)].any()
  assert (np.abs(diff[:, None, :] - corners[None]).max(-1).min(-1) <= P / 2).all()
  with pytest.raises(ValueError, match="method"):
    dsm.object_mask(fiedler, patch_size=P, input_hw=(32, 40), output_hw=(32, 40),
                    upsample="cubic")


def test_centred_box_baseline():
  box = dsm.centred_box((100, 200), 0.5)
  np.testing.assert_array_equal(box, [50, 25, 150, 75])
  m = dsm.box_mask(box, (100, 200))
  assert m.sum() == 100 * 50 and m[25, 50] and not m[24, 50]


# ----------------------------------------------------------------------------- multi-region


def _three_region_eigenvectors(rng):
  """Eigenvector-like rows: background (border), left and right blobs, one-hot + noise."""
  region = np.zeros(GRID, np.int32)
  region[2:6, 1:4] = 1
  region[2:6, 6:9] = 2
  y = np.zeros((N, K), np.float32)
  y[:, 0] = 1.0
  y[np.arange(N), 1 + region.ravel()] = 1.0
  y[:, 1:] += rng.normal(0, 0.05, (N, K - 1))
  return region, y


def test_multi_region_segments_recovers_regions_with_background_zero():
  rng = np.random.default_rng(2)
  region, y = _three_region_eigenvectors(rng)
  seg = np.asarray(dsm.multi_region_segments(jax.random.key(0), jnp.asarray(y), GRID, 3))
  assert (seg[region == 0] == dsm.BACKGROUND).all()  # the border segment
  ids = {int(seg[region == r][0]) for r in (1, 2)}
  assert ids == {1, 2}
  for r in (1, 2):
    assert (seg[region == r] == seg[region == r][0]).all()


def test_multi_region_bad_arguments():
  y = jnp.zeros((N, K))
  with pytest.raises(ValueError, match="num_eigenvectors"):
    dsm.multi_region_segments(jax.random.key(0), y, GRID, 3, num_eigenvectors=K)
  with pytest.raises(ValueError, match="grid"):
    dsm.multi_region_segments(jax.random.key(0), y, (3, 3), 3)


def test_adaptive_num_segments_picks_largest_gap():
  lam = jnp.array([[0.0, 0.1, 0.12, 0.15, 0.6, 0.65], [0.0, 0.05, 0.6, 0.62, 0.64, 0.66]])
  np.testing.assert_array_equal(dsm.adaptive_num_segments(lam), [4, 2])


def test_analyse_jitted_batch_is_per_image():
  """Swapping the images (and their keys) in a batch swaps the outputs: nothing mixes."""
  feats = jnp.stack([_colour_features(_scene(seed=s)[0]) for s in (0, 1)])
  keys = jax.random.split(jax.random.key(5), 2)
  config = dsm.PipelineConfig(num_eigenvectors=K, num_segments=3, discovery="dsm")
  fn = jax.jit(functools.partial(dsm.analyse, grid=GRID, patch_size=P, config=config))
  res = fn(feats, rngs=keys)
  swapped = fn(feats[::-1], rngs=keys[::-1])
  assert res.box.shape == (2, 4) and res.segments.shape == (2,) + GRID
  assert bool(res.converged.all())
  for field in ("box", "segments", "foreground", "component"):
    np.testing.assert_array_equal(getattr(res, field), getattr(swapped, field)[::-1])
  np.testing.assert_allclose(res.eigenvalues, swapped.eigenvalues[::-1], atol=1e-6)
  for b in range(2):
    np.testing.assert_array_equal(res.box[b], _square_box())
    assert int(regions.border_majority(res.segments[b], 3)) == dsm.BACKGROUND


# ----------------------------------------------------------------------------- semantic


def test_segment_boxes_erode_dilate_and_validity():
  seg = np.zeros(GRID, np.int32)
  seg[3:5, 3:5] = 1   # a 2×2 block; segment 2 is absent
  seg[0, :] = 3
  boxes, valid = dsm.segment_boxes(jnp.asarray(seg), 4, patch_size=P, num_erode=0,
                                   num_dilate=1)
  np.testing.assert_array_equal(valid, [False, True, False, True])
  np.testing.assert_array_equal(boxes[1], np.array([2, 2, 6, 6]) * P)  # cross dilation, once
  grown = regions.erode_then_dilate(jnp.asarray(seg == 3), 0, 1)
  np.testing.assert_array_equal(boxes[3], regions.mask_to_box(grown, patch_size=P))
  # The reference's defaults never erode a segment away entirely.
  boxes, _ = dsm.segment_boxes(jnp.asarray(seg), 4, patch_size=P)
  assert (boxes[1, 2:] > boxes[1, :2]).all()


def test_crop_and_resize_matches_torch_interior(torch):
  rng = np.random.default_rng(4)
  img = rng.uniform(size=(1, 40, 50, 3)).astype(np.float32)
  boxes = np.array([[[7, 5, 19, 14], [0, 0, 50, 40]]])
  out = np.asarray(dsm.crop_and_resize(jnp.asarray(img), jnp.asarray(boxes), 24))
  assert out.shape == (1, 2, 24, 24, 3)
  x0, y0, x1, y1 = boxes[0, 0]
  crop = torch.from_numpy(img[:, y0:y1, x0:x1]).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(crop, size=(24, 24), mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1).numpy()
  # Upscaling: identical away from the crop's edge (there JAX reads the pixels just outside
  # the crop, PyTorch repeats the edge).
  np.testing.assert_allclose(out[0, 0, 2:-2, 2:-2], ref[0, 2:-2, 2:-2], atol=1e-5)
  flat = np.asarray(dsm.crop_and_resize(jnp.full((1, 40, 50, 3), 0.25), jnp.asarray(boxes), 24))
  np.testing.assert_allclose(flat, 0.25, atol=1e-6)


def test_pca_matches_scikit_learn_up_to_sign():
  x = np.random.default_rng(5).normal(size=(40, 12)).astype(np.float32)
  ours = np.asarray(dsm.pca(jnp.asarray(x), 4))
  ref = sklearn.decomposition.PCA(4).fit_transform(x)
  signs = np.sign(np.sum(ours * ref, axis=0))
  np.testing.assert_allclose(ours * signs, ref, atol=1e-4)
  with pytest.raises(ValueError, match="pca_dim"):
    dsm.pca(jnp.asarray(x), 13)


@pytest.mark.parametrize("pca_dim", [0, 4])  # 4 = a rotation: same K-means shape, one compile
def test_cluster_embeddings_separates_groups(pca_dim):
  rng = np.random.default_rng(6)
  a = rng.normal([5, 0, 0, 0], 0.1, (10, 4))
  b = rng.normal([0, 0, 5, 0], 0.1, (12, 4))
  labels = np.asarray(dsm.cluster_embeddings(jax.random.key(0), jnp.asarray(np.vstack([a, b])),
                                             2, pca_dim=pca_dim))
  assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
  with pytest.raises(ValueError, match="clusters"):
    dsm.cluster_embeddings(jax.random.key(0), jnp.asarray(a), 11)


def test_semantic_map_keeps_background_distinct_from_cluster_zero():
  seg = np.zeros(GRID, np.int32)
  seg[1:3, 1:3] = 1
  seg[5:7, 5:9] = 2
  seg[7, 0] = 3
  # Segment 1 lands in cluster 0: the reference wrote 0 there, i.e. merged it with background.
  clusters = jnp.array([7, 0, 1, 0])     # entry 0 (background) is ignored whatever it holds
  valid = jnp.array([False, True, True, False])
  sem = np.asarray(dsm.semantic_map(jnp.asarray(seg), clusters, valid))
  assert (sem[seg == 0] == dsm.BACKGROUND).all()
  assert (sem[seg == 1] == 1).all() and (sem[seg == 2] == 2).all()
  assert (sem[seg == 3] == dsm.BACKGROUND).all()  # invalid segment → background
  batched = dsm.semantic_map(jnp.stack([seg, seg]), jnp.stack([clusters, clusters + 1]))
  assert (np.asarray(batched[1])[seg == 1] == 2).all()


def test_multi_region_cluster_qr_is_sklearns_and_needs_no_key():
  """assign="cluster_qr": scikit-learn's cluster_qr on y₀..y_{S−1}, the border's segment
  relabelled 0; the key plays no part; the adaptive count is refused."""
  from sklearn.cluster._spectral import cluster_qr as reference  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  region, y = _three_region_eigenvectors(rng)
  seg = [np.asarray(dsm.multi_region_segments(jax.random.key(s), jnp.asarray(y), GRID, 3,
                                              assign="cluster_qr")) for s in (0, 1)]
  np.testing.assert_array_equal(seg[0], seg[1])
  labels = reference(y[:, :3].astype(np.float64)).reshape(GRID)
  border = np.bincount(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]),
                       minlength=3).argmax()
  for lab in range(3):   # the same partition, the border's cluster as 0
    ids = np.unique(seg[0][labels == lab])
    assert len(ids) == 1 and (ids[0] == dsm.BACKGROUND) == (lab == border)
  assert (seg[0][region == 0] == dsm.BACKGROUND).all()
  with pytest.raises(ValueError, match="num_active"):
    dsm.multi_region_segments(jax.random.key(0), jnp.asarray(y), GRID, 3, assign="cluster_qr",
                              num_active=jnp.int32(2))
  with pytest.raises(ValueError, match="assign"):
    dsm.multi_region_segments(jax.random.key(0), jnp.asarray(y), GRID, 3, assign="qr")
