"""TokenCut and MaskCut (dsm.tokencut) against their reference formulations (testing.py: one
SciPy ``eigh(D − A, D)`` per cut in float64), on real DINOv2 keys of the bundled VOC photo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import backbones, image_ops, regions, testing
from spectral_jax.datasets import samples
from spectral_jax.dsm import tokencut as tc

GRID = (12, 16)


@pytest.fixture(scope="module")
def voc_keys():
  """(192, 384) last-block keys of the VOC photo at 224 px (12×16 patches), offline DINOv2."""
  backbone = backbones.load_pretrained("dinov2_vits14")
  p = backbone.config.patch_size
  x = image_ops.resize_longer_side(samples.labelled_photo("voc").rgb, 224)
  x = x[:GRID[0] * p, :GRID[1] * p].astype(np.float32)[None] / 255
  return np.asarray(backbones.extract_features(backbone, x, blocks=(-1,)).keys[0])


def test_similarity_quantile_is_numpys_inverted_cdf(rng):
  f = rng.normal(size=(40, 8))
  sim = np.asarray(tc.cosine_similarity(jnp.asarray(f, jnp.float32)))
  nodes = np.arange(40) % 7 != 3
  off = sim[np.ix_(nodes, nodes)][~np.eye(nodes.sum(), dtype=bool)]
  for q in (0.1, 0.37, 0.5, 0.9):
    got = float(tc.similarity_quantile(jnp.asarray(sim), q, jnp.asarray(nodes)))
    assert got == np.quantile(off, q, method="inverted_cdf")


@pytest.mark.parametrize("case", ["one_bin", "ties", "signs"])
def test_similarity_quantile_radix_edge_cases(rng, case):
  """Values sharing their high 16 bits (the second histogram decides), heavy ties, both signs
  and exact zeros, at extreme and middle quantiles."""
  n = 60
  if case == "one_bin":     # all within a few hundred ulps of 0.85: one high-bits bin
    sim = np.float32(0.85) + rng.integers(-300, 300, (n, n)).astype(np.float32) * np.float32(6e-8)
  elif case == "ties":
    sim = rng.choice(np.array([-0.5, 0.0, 0.25, 0.9], np.float32), (n, n))
  else:
    sim = rng.normal(size=(n, n)).astype(np.float32)
    sim[rng.random((n, n)) < 0.2] = 0.0
    sim[rng.random((n, n)) < 0.1] = -0.0
  sim = np.triu(sim) + np.triu(sim, 1).T     # symmetric, as a graph's
  nodes = rng.random(n) > 0.25
  off = sim[np.ix_(nodes, nodes)][~np.eye(nodes.sum(), dtype=bool)]
  for q in (1e-4, 0.01, 0.5, 0.77, 0.999):
    got = np.float32(tc.similarity_quantile(jnp.asarray(sim), q, jnp.asarray(nodes)))
    assert got == np.quantile(off, q, method="inverted_cdf"), q


@pytest.mark.parametrize("kwargs", [dict(tau=0.85), dict(tau_quantile=0.5)])
def test_tokencut_matches_scipy_eigh(voc_keys, kwargs):
  ref = testing.tokencut_reference(voc_keys, GRID, **kwargs)
  a, tau = tc.binary_graph(jnp.asarray(voc_keys), **kwargs)
  np.testing.assert_allclose(float(tau), ref["tau"], rtol=1e-6)
  # Same graph: float32 cosines may put a pair within rounding of τ on the other side.
  exact = testing.ncut_eigh_reference(np.asarray(a, np.float64))
  v = np.asarray(tc.second_eigenvector(a)[0])
  np.testing.assert_allclose(np.sign(v @ exact) * v, exact, atol=1e-5 * np.abs(exact).max())
  ref_graph, _ = testing.tokencut_graph_np(voc_keys, **kwargs)
  assert np.sum(np.asarray(a) != ref_graph.astype(np.float32)) <= 2
  oriented, component, ok = jax.jit(lambda f, m: tc.tokencut(f, m, **kwargs))(
      voc_keys, np.ones(GRID, bool))
  assert bool(ok)
  np.testing.assert_array_equal(np.asarray(oriented) > 0, ref["foreground"])
  np.testing.assert_array_equal(np.asarray(component), ref["component"])
  assert 0 < ref["component"].sum() < ref["foreground"].sum()  # a real choice was made
  np.testing.assert_array_equal(np.asarray(regions.mask_to_box(component, patch_size=14)),
                                testing.box_np(ref["component"], 14))


@pytest.mark.parametrize("kwargs", [dict(tau_quantile=0.5), dict(tau_quantile=0.8)])
def test_maskcut_masks_match_scipy_eigh_per_cut(voc_keys, kwargs):
  ref = testing.maskcut_reference(voc_keys, GRID, **kwargs)
  _, masks, ok = jax.jit(lambda f, m: tc.maskcut(f, m, **kwargs))(voc_keys, np.ones(GRID, bool))
  assert bool(ok)
  np.testing.assert_array_equal(np.asarray(masks), ref["masks"])
  assert sum(int(m.any()) for m in ref["masks"]) >= 2  # more than one object found


def test_maskcut_corner_prior_reverses_the_seed_side(voc_keys):
  """At q = 0.8 the seed's side of the first cut holds ≥ 3 corners, so MaskCut takes the other
  side where TokenCut keeps the seed's."""
  ref = testing.tokencut_reference(voc_keys, GRID, tau_quantile=0.8)
  side = ref["foreground"]
  assert int(side[0, 0]) + int(side[0, -1]) + int(side[-1, 0]) + int(side[-1, -1]) >= 3
  _, masks, _ = tc.maskcut(jnp.asarray(voc_keys), jnp.ones(GRID, bool), tau_quantile=0.8)
  assert not np.any(np.asarray(masks[0]) & side)


@pytest.mark.parametrize("method", ["eigh", "lobpcg"])
def test_padding_changes_nothing(voc_keys, rng, method):
  """The same image padded to 14×18 with junk features (valid marks the 12×16 patches) gives
  the unpadded masks, with both eigensolver paths."""
  h, w = GRID
  feats = rng.normal(size=(14, 18, voc_keys.shape[1])).astype(np.float32)
  feats[:h, :w] = voc_keys.reshape(h, w, -1)
  valid = np.zeros((14, 18), bool)
  valid[:h, :w] = True
  kw = dict(tau_quantile=0.5, method=method)
  _, comp, _ = tc.tokencut(jnp.asarray(feats.reshape(14 * 18, -1)), jnp.asarray(valid), **kw)
  _, masks, _ = tc.maskcut(jnp.asarray(feats.reshape(14 * 18, -1)), jnp.asarray(valid), **kw)
  ref_t = testing.tokencut_reference(voc_keys, GRID, tau_quantile=0.5)
  ref_m = testing.maskcut_reference(voc_keys, GRID, tau_quantile=0.5)
  np.testing.assert_array_equal(np.asarray(comp)[:h, :w], ref_t["component"])
  np.testing.assert_array_equal(np.asarray(masks)[:, :h, :w], ref_m["masks"])
  assert not np.asarray(comp)[~valid].any() and not np.asarray(masks)[:, ~valid].any()


def test_border_rule_takes_the_side_away_from_the_frame():
  """A centred blob (v = 1) in a frame of v = −3: the seed rule follows |v| to the frame, the
  border rule takes the blob."""
  v = np.full((8, 10), -3.0)
  v[2:6, 3:7] = 1.0
  valid = jnp.ones((8, 10), bool)
  seed_side, _ = tc.orient(jnp.asarray(v), valid)
  border_side, seed = tc.orient(jnp.asarray(v), valid, rule="border")
  np.testing.assert_array_equal(np.asarray(seed_side) > 0, v < 0)
  np.testing.assert_array_equal(np.asarray(border_side) > 0, v > 0)
  assert v.ravel()[int(seed)] > 0
