"""dsm.make_pipeline: one jitted program per batch shape; padding changes no result; no host
round trip inside; clear errors and flags for meaningless input.

A 1-block random ViT (the segment command's "test" backbone) on the bundled chelsea photo:
padded == unpadded holds whatever the weights, so random weights keep the test fast.
"""

import dataclasses
from unittest import mock

import jax
import numpy as np
import pytest
from PIL import Image

from spectral_jax import backbones, clustering, dsm, eigensolvers, testing
from spectral_jax.datasets import samples

P = 14
GRIDS = ((10, 13), (16, 9))  # two photos of different shapes, padded together to 16×16
PAD = 16


@pytest.fixture(scope="module")
def backbone():
  cfg = backbones.get_config("dinov2_vits14", depth=1, width=64, num_heads=2, mlp_dim=128)
  return backbones.init_backbone(cfg, seed=0)


@pytest.fixture(scope="module")
def photos():
  rgb = samples.skimage_photo("chelsea")
  return [np.asarray(Image.fromarray(rgb).resize((w * P, h * P), Image.BILINEAR))
          for h, w in GRIDS]


def _padded_batch(photos):
  images = np.zeros((len(photos), PAD * P, PAD * P, 3), np.uint8)
  valid = np.zeros((len(photos), PAD, PAD), bool)
  for i, (a, (h, w)) in enumerate(zip(photos, GRIDS)):
    images[i, :a.shape[0], :a.shape[1]] = a
    valid[i, :h, :w] = True
  return images, valid


CONFIGS = {  # "eigh": multi_region (K-means, semantic pass); "default": the default discovery
    "eigh": dsm.PipelineConfig(num_eigenvectors=6, num_segments=3, method="eigh", semantic=True,
                               semantic_num_segments=3, crop_size=28, discovery="multi_region",
                               segment_assign="kmeans"),
    "default": dsm.PipelineConfig(num_eigenvectors=6, num_segments=3),
    "lobpcg_border_adaptive": dsm.PipelineConfig(num_eigenvectors=6, method="lobpcg",
                                                 foreground="border", adaptive_segments=True,
                                                 connectivity=8, discovery="dsm",
                                                 segment_assign="kmeans"),
    "tokencut": dsm.PipelineConfig(num_eigenvectors=6, num_segments=3, method="eigh",
                                   discovery="tokencut", tau_quantile=0.5),
    "maskcut_lobpcg": dsm.PipelineConfig(num_eigenvectors=6, num_segments=3, method="lobpcg",
                                         discovery="maskcut", tau_quantile=0.5),
}


# The LOBPCG and discovery variants take 30–70 s each on the 2-core CPU: `pytest -m slow`.
_SLOW_CONFIGS = ("lobpcg_border_adaptive", "maskcut_lobpcg", "tokencut", "default")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_CONFIGS
                                  else n for n in sorted(CONFIGS)])
def test_padded_batch_equals_each_photo_alone(backbone, photos, name):
  segmenter = dsm.make_pipeline(backbone, CONFIGS[name])
  keys = jax.random.split(jax.random.key(1), len(photos))
  alone = [jax.device_get(segmenter(a[None], rngs=keys[i:i + 1])) for i, a in enumerate(photos)]
  images, valid = _padded_batch(photos)
  batch = jax.device_get(segmenter(images, valid, rngs=keys))
  assert segmenter._run._cache_size() == 3  # two photo shapes + the padded batch
  for i, ((h, w), one) in enumerate(zip(GRIDS, alone)):
    got = jax.tree.map(lambda x, i=i: x[i], batch.patches)
    ref = jax.tree.map(lambda x: x[0], one.patches)
    np.testing.assert_array_equal(batch.grid[i], (h, w))
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, atol=2e-5)
    np.testing.assert_allclose(got.fiedler[:h, :w], ref.fiedler, atol=1e-4)
    vectors = got.eigenvectors.reshape(PAD, PAD, -1)
    assert not vectors[h:].any() and not vectors[:, w:].any()  # zero on padding
    np.testing.assert_allclose(vectors[:h, :w].reshape(h * w, -1), ref.eigenvectors, atol=1e-4)
    for field in ("foreground", "component", "segments", "instances"):
      full = getattr(got, field)
      np.testing.assert_array_equal(full[:h, :w], getattr(ref, field), err_msg=field)
      assert not full[h:].any() and not full[:, w:].any(), field
    np.testing.assert_array_equal(got.box, ref.box)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.box_valid, ref.box_valid)
    np.testing.assert_array_equal(got.num_segments, ref.num_segments)
    if one.semantic_embeddings is not None:
      np.testing.assert_array_equal(batch.semantic_segments[i][:h, :w], one.semantic_segments[0])
      np.testing.assert_array_equal(batch.semantic_boxes[i], one.semantic_boxes[0])
      np.testing.assert_array_equal(batch.semantic_valid[i], one.semantic_valid[0])
      np.testing.assert_allclose(batch.semantic_embeddings[i], one.semantic_embeddings[0],
                                 atol=1e-5)


def test_adaptive_segments_use_the_eigengap_count(backbone, photos):
  segmenter = dsm.make_pipeline(backbone, CONFIGS["lobpcg_border_adaptive"])
  res = jax.device_get(segmenter(photos[0][None]))
  counts = np.asarray(clustering.num_segments_from_eigengap(res.patches.eigenvalues))
  np.testing.assert_array_equal(res.patches.num_segments, counts)
  assert len(np.unique(res.patches.segments[0])) <= counts[0]


@pytest.mark.parametrize("name", ["eigh",
                                  pytest.param("maskcut_lobpcg", marks=pytest.mark.slow)])
def test_no_host_round_trip_inside_the_program(backbone, photos, name):
  segmenter = dsm.make_pipeline(backbone, CONFIGS[name])
  images, valid = _padded_batch(photos)
  args = jax.device_put((images, valid, jax.random.split(jax.random.key(0), 2)))
  with jax.transfer_guard("disallow"):
    out = jax.block_until_ready(segmenter(*args))  # compiles and runs under the guard
    jax.block_until_ready(segmenter(*args))
  assert out.patches.box.shape == (2, 4)


def test_kmeans_with_fewer_active_clusters_equals_the_smaller_run():
  x = np.random.default_rng(0).normal(size=(2, 60, 3)).astype(np.float32)
  key = jax.random.key(3)
  small = clustering.kmeans(key, x, 3, n_local_trials=3)
  masked = clustering.kmeans(key, x, 6, n_local_trials=3, num_active=np.array([3, 3]))
  np.testing.assert_array_equal(masked.labels, small.labels)
  np.testing.assert_allclose(masked.inertia, small.inertia, rtol=1e-6)


def test_bad_images_are_refused_or_flagged(backbone, photos):
  segmenter = dsm.make_pipeline(backbone, CONFIGS["eigh"])
  a = photos[0][None]
  with pytest.raises(ValueError, match="divide by 255"):
    segmenter(a.astype(np.float32))
  with pytest.raises(ValueError, match="NaN"):
    segmenter(np.full(a.shape, np.nan, np.float32))
  with pytest.raises(ValueError, match="at least 7"):
    segmenter(a[:, :2 * P, :3 * P])
  with pytest.raises(TypeError, match="uint8"):
    segmenter(a.astype(np.int32))
  bad = np.zeros((1, 10, 13), bool)
  bad[0, 1:, :] = True
  with pytest.raises(ValueError, match="top-left rectangle"):
    segmenter(a, bad)
  grey = np.full(a.shape, 0.5, np.float32)
  nan = grey.copy()
  nan[0, 0, 0] = np.nan
  flags = jax.device_get(segmenter(jax.device_put(np.concatenate([grey, nan, a / 255.0 * 300]))
                                   .astype(np.float32)))
  np.testing.assert_array_equal(flags.constant, [True, True, False])
  np.testing.assert_array_equal(flags.nonfinite, [False, True, False])
  np.testing.assert_array_equal(flags.out_of_range, [False, False, True])
  assert np.all(np.isfinite(flags.patches.eigenvalues[:2]))  # NaN pixels were zeroed


@pytest.mark.parametrize("field, value, fragment", [
    ("num_eigenvectors", 1, "≥ 2"), ("features", "pixels", "features must be"),
    ("image_weight", float("nan"), "finite"), ("connectivity", 6, "4 or 8"),
    ("foreground", "left", "foreground must be"), ("num_segments", 1, "at least 2"),
    ("segment_eigenvectors", 30, "segment_eigenvectors"), ("method", "qr", "method must be"),
    ("discovery", "lost", "discovery must be one of"), ("tau_quantile", 1.0, "tau_quantile must lie"),
    ("tau", float("inf"), "tau must be"), ("graph_eps", 0.0, "graph_eps"),
    ("max_objects", 0, "max_objects must be"),
    ("region_border_share", 1.5, "region_border_share must"),
    ("solver_tol", -1e-5, "solver_tol must"),
    ("segment_assign", "spectral", "segment_assign must be one of"),
])
def test_bad_config_names_the_field(backbone, field, value, fragment):
  with pytest.raises(ValueError, match=fragment):
    dsm.make_pipeline(backbone, dsm.PipelineConfig(**{field: value}))


@pytest.mark.parametrize("fields", [{"adaptive_segments": True}, {"segment_eigenvectors": 3},
                                    {"num_segments": 21}])
def test_cluster_qr_refuses_what_it_cannot_do(backbone, fields):
  with pytest.raises(ValueError, match=r"segment_assign='cluster_qr' \(the default\) uses"):
    dsm.make_pipeline(backbone, dsm.PipelineConfig(segment_assign="cluster_qr", **fields))


def test_buckets_pad_the_shorter_side_only_up_to_the_longer():
  from spectral_jax.dsm import batching  # pylint: disable=import-outside-toplevel
  # 840 px / 14 = 60 patches on the longer side: it is never padded to 64.
  assert batching.bucket((60, 45), 8, max_side=60) == (60, 48)
  assert batching.bucket((60, 60), 8, max_side=60) == (60, 60)
  assert batching.bucket((57, 60), 8, max_side=60) == (60, 60)
  assert batching.bucket((21, 32), 8, max_side=32) == (24, 32)
  assert batching.bucket((13, 17), 8) == (16, 24)  # native sizes: no cap
  assert batching.bucket((13, 17), 1) == (13, 17)


@pytest.mark.parametrize("discovery", dsm.DISCOVERY_METHODS)
def test_boxes_and_instances_agree_with_the_objects(backbone, photos, discovery):
  """Per method: slot m's box is the box of instance id m + 1, valid slots come first, the
  best box is ``box``, the object map's positive side is the object mask."""
  config = dsm.PipelineConfig(num_eigenvectors=6, num_segments=4, discovery=discovery,
                              tau_quantile=0.5)
  res = jax.device_get(dsm.make_pipeline(backbone, config)(photos[0][None])).patches
  h, w = GRIDS[0]
  boxes, present, inst = res.boxes[0], res.box_valid[0], res.instances[0]
  assert present[0] and list(present) == sorted(present, reverse=True)
  for m in range(dsm.MAX_OBJECTS):
    if present[m]:
      np.testing.assert_array_equal(boxes[m], testing.box_np(inst == m + 1, P))
    else:
      assert not (inst == m + 1).any() and not boxes[m].any()
  if discovery == "tokencut+maskcut":  # best box and mask: TokenCut's; boxes: MaskCut's
    for name, fields in (("tokencut", ("fiedler", "foreground", "component", "box")),
                         ("maskcut", ("boxes", "box_valid", "instances"))):
      alone = dsm.make_pipeline(backbone, dataclasses.replace(config, discovery=name))
      alone = jax.device_get(alone(photos[0][None])).patches
      for field in fields:
        np.testing.assert_array_equal(getattr(res, field), getattr(alone, field), err_msg=field)
  else:
    np.testing.assert_array_equal(res.box[0], boxes[0])
    np.testing.assert_array_equal(res.component[0], inst == 1)
  np.testing.assert_array_equal(res.box[0], testing.box_np(res.component[0], P))
  if discovery != "dsm":
    np.testing.assert_array_equal(res.fiedler[0] > 0, res.foreground[0])
  if discovery == "multi_region":  # each object: its segment's largest component, ordered by
    seg = res.segments[0]           # the share on the border (lowest first), then area
    comps = [testing.largest_component_np(seg == s) for s in range(1, 4)]
    ring = np.zeros((h, w), bool)
    ring[[0, -1]] = ring[:, [0, -1]] = True
    comps = sorted((c for c in comps if c.any()), key=lambda c: ((c & ring).sum() / c.sum(),
                                                                 -c.sum()))
    for m, c in enumerate(comps):
      np.testing.assert_array_equal(inst == m + 1, c)
    # the mask: segments with ≤ region_border_share of their patches on the ring, else object 1
    kept = [seg == s for s in range(1, 4)
            if (seg == s).any()
            and ((seg == s) & ring).sum() / (seg == s).sum() <= dsm.MAX_BORDER_SHARE]
    expected = np.any(kept, axis=0) if kept else inst == 1
    np.testing.assert_array_equal(res.foreground[0], expected)
    every = dsm.make_pipeline(backbone, dataclasses.replace(config, region_border_share=1.0))
    every = jax.device_get(every(photos[0][None])).patches
    np.testing.assert_array_equal(every.foreground[0], every.segments[0] > 0)
  assert inst.shape == (h, w)


@pytest.mark.parametrize("solver_tol, expected", [(0.0, None), (3e-4, 3e-4)])
def test_solver_tol_reaches_every_eigensolve(solver_tol, expected):
  """``PipelineConfig.solver_tol`` is the tolerance of the graph's eigensolve and of each
  MaskCut cut; 0 passes none, so the solver keeps its default (today's outputs)."""
  seen, solve = [], eigensolvers.laplacian_eigenvectors

  def spy(w, k, **kwargs):
    seen.append(kwargs.get("tol"))
    return solve(w, k, **kwargs)

  grid = (6, 7)
  feats = jax.random.normal(jax.random.key(0), (1, 42, 8))
  config = dsm.PipelineConfig(num_eigenvectors=4, num_segments=3, method="eigh",
                              discovery="maskcut", max_objects=2, solver_tol=solver_tol)
  with mock.patch.object(eigensolvers, "laplacian_eigenvectors", spy):
    dsm.analyse(feats, grid, patch_size=P, rngs=jax.random.split(jax.random.key(0), 1),
                config=config)
  assert seen == [expected] * 2  # the graph's and the cut's (traced once in the scan)


def test_solver_tol_zero_is_the_default_and_a_loose_tol_stops_early():
  feats = jax.random.normal(jax.random.key(1), (1, 120, 16))
  run = lambda tol: jax.device_get(dsm.spectral_decomposition(
      feats, num_eigenvectors=6, method="lobpcg", tol=tol, return_info=True))
  default, explicit = run(None), run(eigensolvers.default_tol(np.float32))
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(explicit)):
    np.testing.assert_array_equal(a, b)
  loose = run(0.05)
  assert loose[2].iterations.max() < default[2].iterations.max()
  assert not np.array_equal(loose[1], default[1])
