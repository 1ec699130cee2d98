"""The fast bilateral solver (spectral_jax.bilateral) against an independent float64 NumPy /
SciPy transcription of TokenCut's ``bilateral_solver.py`` (testing.bilateral_reference: dict
hashing, scipy.sparse matrices, scipy ``cg`` / ``spsolve``), on crops of bundled photos."""

import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import bilateral, metrics, testing
from spectral_jax.datasets import samples

PARAMS = bilateral.BilateralParams()


@pytest.fixture(scope="module", params=["chelsea", "coffee"])
def crop(request):
  """(80, 120, 3) uint8 crop of a bundled photo and a blocky 0/1 target on it."""
  img = np.ascontiguousarray(samples.skimage_photo(request.param)[60:140, 100:220])
  target = np.zeros(img.shape[:2], np.float32)
  target[20:60, 30:90] = 1
  return img, target


def _vertex_map(ours, ref):
  """ours vertex id → reference vertex id, asserting the two partitions of the pixels agree."""
  pairs = set(zip(np.asarray(ours).tolist(), ref.tolist()))
  assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
  out = np.full(int(np.max(ours)) + 1, -1)
  for a, b in pairs:
    out[a] = b
  return out


def test_grid_blur_and_bistochastisation_match_reference(crop):
  img, target = crop
  ref = testing.bilateral_reference(img, target)
  grid = bilateral.bilateral_grid(jnp.asarray(img, jnp.int32), PARAMS)
  nv = int(grid.num_vertices)
  assert nv == len(ref["n"])
  to_ref = _vertex_map(grid.vertex, ref["vertex"])[:nv]
  x = np.random.default_rng(0).normal(size=nv)
  ours_x = np.zeros(grid.vertex.shape[0], np.float32)
  ours_x[:nv] = x
  blurred = np.asarray(bilateral.blur(grid, jnp.asarray(ours_x)))[:nv]
  ref_x = np.zeros(nv)
  ref_x[to_ref] = x
  np.testing.assert_allclose(blurred, (ref["blur"] @ ref_x)[to_ref], rtol=1e-5, atol=1e-5)
  n, m = (np.asarray(v)[:nv] for v in bilateral.bistochastize(grid))
  np.testing.assert_allclose(n, ref["n"][to_ref], rtol=1e-5)
  np.testing.assert_allclose(m, ref["m"][to_ref], rtol=1e-5)


def test_solve_matches_scipy_cg(crop):
  img, target = crop
  ref = testing.bilateral_reference(img, target)["output"]
  ours = np.asarray(bilateral.bilateral_solve(img, target))
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  assert ours.std() > 0.1          # not a constant: the solve did something


def test_converged_solve_is_the_exact_solution(crop):
  img, target = crop
  exact = testing.bilateral_reference(img, target, exact=True)["output"]
  params = PARAMS._replace(cg_maxiter=2000, cg_tol=1e-7)
  np.testing.assert_allclose(np.asarray(bilateral.bilateral_solve(img, target, params=params)),
                             exact, atol=5e-5)


def test_float64_solve_matches_scipy_cg_closely(crop, x64):
  img, target = crop
  ref = testing.bilateral_reference(img, target)["output"]
  ours = np.asarray(bilateral.bilateral_solve(img, target.astype(np.float64)))
  assert ours.dtype == np.float64
  np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_colour_cells_are_exact_on_boundaries():
  """Grey pixels whose luma is exactly a multiple of σₗ = 16 sit in the upper cell; U = V = 128
  exactly (cell 16 at σ_c = 8)."""
  img = np.array([[[16, 16, 16], [15, 15, 15], [32, 32, 32], [255, 255, 255]]], np.uint8)
  cells = np.asarray(bilateral.grid_coordinates(jnp.asarray(img), PARAMS))[0]
  np.testing.assert_array_equal(cells[:, 2], [1, 0, 2, 15])
  np.testing.assert_array_equal(cells[:, 3:], 16)
  np.testing.assert_array_equal(cells[:, 0], 0)


def test_refinement_moves_a_mask_onto_the_colour_edge():
  """A two-colour photo with a mask overshooting the edge by 12 px: the refined mask follows
  the colour edge (TokenCut's use: the patch mask is blocky, the photo's edges are not)."""
  rng = np.random.default_rng(0)
  h, w = 96, 128
  img = np.zeros((h, w, 3), np.float64)
  img[:, :60] = (200, 40, 40)
  img[:, 60:] = (40, 60, 200)
  img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
  truth = np.zeros((h, w), bool)
  truth[:, :60] = True
  mask = np.zeros((h, w), bool)
  mask[:, :72] = True
  score, refined = bilateral.refine_mask(img, mask)
  score, refined = np.asarray(score), np.asarray(refined)
  assert score.min() >= 0 and score.max() <= 1
  assert metrics.mask_iou(refined, truth) > 0.97 > metrics.mask_iou(mask, truth) + 0.1


@pytest.mark.parametrize("bad, match", [
    (dict(target=np.zeros((4, 5), np.float32)), "same size"),
    (dict(target=np.full((4, 4), np.nan, np.float32)), "NaN"),
    (dict(params=PARAMS._replace(sigma_luma=0.0)), "sigma_luma"),
    (dict(params=PARAMS._replace(cg_maxiter=0)), "cg_maxiter"),
    (dict(params=PARAMS._replace(confidence=1.5)), "confidence"),
])
def test_bad_input_is_refused(bad, match):
  args = dict(image=np.zeros((4, 4, 3), np.uint8), target=np.zeros((4, 4), np.float32),
              params=PARAMS)
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    bilateral.bilateral_solve(args["image"], args["target"], params=args["params"])


def test_grid_too_large_for_int32_keys_is_refused():
  params = PARAMS._replace(sigma_spatial=0.05, sigma_luma=0.1, sigma_chroma=0.1)
  with pytest.raises(ValueError, match="int32"):
    bilateral.bilateral_solve(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.float32),
                              params=params)


def test_whole_photo_matches_reference_with_integer_cells():
  """The VOC photo (375×500): with the colour cells in exact integers on both sides the outputs
  agree; TokenCut's float64 cells move only the pixels exactly on a cell boundary."""
  photo = samples.labelled_photo("voc")
  target = photo.foreground.astype(np.float32)
  exact = testing.bilateral_reference(photo.rgb, target, integer_cells=True)
  published = testing.bilateral_reference(photo.rgb, target)
  ours = np.asarray(bilateral.bilateral_solve(photo.rgb, target))
  np.testing.assert_allclose(ours, exact["output"], atol=1e-4)
  assert 0 < np.mean(np.any(published["cells"] != exact["cells"], axis=1)) < 0.005


def test_compacted_grid_gives_the_uncompacted_solve(crop):
  img, target = crop
  grid = bilateral.bilateral_grid(jnp.asarray(img, jnp.int32), PARAMS)
  conf = np.full(target.shape, PARAMS.confidence, np.float32)
  slots = bilateral.vertex_slots(int(grid.num_vertices), target.size)
  assert int(grid.num_vertices) <= slots < 2 * int(grid.num_vertices)
  np.testing.assert_allclose(
      np.asarray(bilateral.solve(bilateral.compact(grid, slots), target, conf, PARAMS)),
      np.asarray(bilateral.solve(grid, target, conf, PARAMS)), atol=1e-5)  # float32 sums
