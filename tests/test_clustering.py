"""K-means against scikit-learn; matching against brute force and the reference formulas."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.cluster
import sklearn.metrics
from sklearn.datasets import make_blobs

from spectral_jax import clustering

# One point-set shape for every K-means test: each new shape is a new XLA compile.
N, D, K = 240, 5, 5


def _blobs(std, seed):
  x, y = make_blobs(N, n_features=D, centers=K, cluster_std=std, random_state=seed)
  return x.astype(np.float32), y


@pytest.mark.parametrize("seed", [0, 1])
def test_inertia_matches_sklearn_on_overlapping_blobs(seed):
  x, _ = _blobs(std=3.0, seed=seed)
  ours = clustering.kmeans(jax.random.key(seed), x, K, n_init=10)
  ref = sklearn.cluster.KMeans(K, n_init=10, random_state=seed).fit(x)
  # Same algorithm, different seeds: both should reach the same (best) local optimum.
  assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=2e-3)
  # The reported inertia is the one of the returned centroids and labels.
  d2 = ((x - np.asarray(ours.centroids)[np.asarray(ours.labels)]) ** 2).sum()
  assert float(ours.inertia) == pytest.approx(d2, rel=1e-4)
  np.testing.assert_array_equal(ours.labels, clustering.kmeans_predict(x, ours.centroids))


def test_identical_partition_on_separated_blobs():
  x, y = _blobs(std=0.3, seed=3)
  ours = clustering.kmeans(jax.random.key(0), x, K, n_init=3)
  ref = sklearn.cluster.KMeans(K, n_init=3, random_state=0).fit(x)
  assert sklearn.metrics.adjusted_rand_score(y, np.asarray(ours.labels)) == 1.0
  assert sklearn.metrics.adjusted_rand_score(ref.labels_, np.asarray(ours.labels)) == 1.0
  # Centroids equal the blob means, up to the label permutation.
  for j in range(K):
    np.testing.assert_allclose(ours.centroids[j], x[np.asarray(ours.labels) == j].mean(0),
                               atol=1e-4)


def test_batched_equals_per_item():
  xs = np.stack([_blobs(std=1.5, seed=s)[0] for s in (4, 5)])
  key = jax.random.key(7)
  batched = clustering.kmeans(key, xs, K, n_init=10)
  for b, item_key in enumerate(jax.random.split(key, 2)):
    single = clustering.kmeans(item_key, xs[b], K, n_init=10)
    np.testing.assert_array_equal(batched.labels[b], single.labels)
    np.testing.assert_allclose(batched.centroids[b], single.centroids, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched.inertia[b], single.inertia, rtol=1e-5)


def test_padding_is_ignored():
  x, _ = _blobs(std=2.0, seed=6)
  n_real = N - 40
  padded = x.copy()
  padded[n_real:] = 1e3  # far away: would capture a centroid if it were counted
  mask = np.arange(N) < n_real
  ours = clustering.kmeans(jax.random.key(1), padded, K, n_init=10, weights=mask)
  ref = sklearn.cluster.KMeans(K, n_init=10, random_state=0).fit(x[:n_real])
  assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=2e-3)
  assert np.all(np.abs(np.asarray(ours.centroids)) < 100)


def test_sample_weights_match_sklearn():
  x, _ = _blobs(std=2.5, seed=8)
  w = np.random.default_rng(0).uniform(0.2, 3.0, N).astype(np.float32)
  ours = clustering.kmeans(jax.random.key(2), x, K, n_init=10, weights=w)
  ref = sklearn.cluster.KMeans(K, n_init=10, random_state=0).fit(x, sample_weight=w)
  assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=2e-3)


def test_kmeans_plusplus_picks_distinct_weighted_points():
  x, _ = _blobs(std=0.3, seed=3)
  w = np.ones(N, np.float32)
  w[::2] = 0.0
  centers = np.asarray(clustering.kmeans_plusplus(jax.random.key(0), x, K, weights=w))
  rows = [int(np.flatnonzero((x == c).all(1))[0]) for c in centers]
  assert len(set(rows)) == K and all(w[r] > 0 for r in rows)
  # Greedy D² seeding on well-separated blobs puts one centre in every blob.
  _, y = _blobs(std=0.3, seed=3)
  assert len({int(y[r]) for r in rows}) == K


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((3, 2)), k=4), "cannot form 4 clusters"),
    (dict(x=np.full((5, 2), np.nan), k=2), "NaN or Inf"),
    (dict(x=np.zeros((5, 2)), k=2, weights=np.array([1, 0, 0, 0, 0])), "fewer than 2"),
    (dict(x=np.zeros(5), k=2), r"\(\.\.\., n, d\)"),
])
def test_kmeans_rejects_bad_input(bad, match):
  with pytest.raises(ValueError, match=match):
    clustering.kmeans(jax.random.key(0), bad["x"], bad["k"], weights=bad.get("weights"))


def _ref_iou(flat_pred, flat_gt, cluster, cls):
  """The reference's per-pair Jaccard, written out on label arrays."""
  p, g = flat_pred == cluster, flat_gt == cls
  return (p & g).sum() / max((p | g).sum(), 1e-8)


def _random_labels(rng, n_classes, n_clusters, n=3000):
  gt = rng.integers(0, n_classes, n)
  # Clusters correlated with the classes through a random permutation plus noise.
  perm = rng.permutation(max(n_classes, n_clusters))
  pred = np.where(rng.random(n) < 0.6, perm[gt] % n_clusters, rng.integers(0, n_clusters, n))
  confusion = sklearn.metrics.confusion_matrix(gt, pred, labels=range(max(n_classes, n_clusters)))
  return gt, pred, confusion[:n_classes, :n_clusters]


@pytest.mark.parametrize("score", ["iou", "counts"])
def test_hungarian_is_the_best_permutation(score):
  rng = np.random.default_rng(0)
  gt, pred, confusion = _random_labels(rng, 5, 5)
  lookup = clustering.hungarian_match(confusion, score=score)
  assert sorted(lookup.tolist()) == list(range(5))

  def total(perm):
    if score == "counts":
      return sum(confusion[perm[j], j] for j in range(5))
    return sum(_ref_iou(pred, gt, j, perm[j]) for j in range(5))

  best = max(itertools.permutations(range(5)), key=total)
  assert total(tuple(lookup)) == pytest.approx(total(best))


def test_majority_vote_matches_reference_formula():
  rng = np.random.default_rng(1)
  gt, pred, confusion = _random_labels(rng, 4, 9)
  lookup = clustering.majority_vote_match(confusion)
  for j in range(9):
    ious = [_ref_iou(pred, gt, j, c) for c in range(4)]
    assert lookup[j] == int(np.argmax(ious))
  raw = clustering.majority_vote_match(confusion, score="counts")
  np.testing.assert_array_equal(raw, [np.bincount(gt[pred == j], minlength=4).argmax()
                                      for j in range(9)])


def test_majority_vote_iou_differs_from_raw_counts():
  # Cluster 0 holds 60 of the 1000 pixels of class 0 and 40 of the 50 pixels of class 1:
  # most of its pixels are class 0, but its IoU with class 1 is higher.
  confusion = np.array([[60, 940], [40, 10]])
  assert clustering.majority_vote_match(confusion, score="counts")[0] == 0
  assert clustering.majority_vote_match(confusion)[0] == 1


def test_hungarian_rejects_more_clusters_than_classes():
  with pytest.raises(ValueError, match="majority_vote_match"):
    clustering.hungarian_match(np.ones((3, 4)))


@pytest.mark.parametrize("eigenvalues, expected", [
    ([0.0, 0.9, 0.91, 0.95, 0.96], 3),  # the first gap (λ₁ − λ₀) is skipped
    ([0.0, 0.1, 0.12, 0.5, 0.52], 3),
    ([0.0, 0.1, 0.12, 0.15, 0.52], 4),
    ([0.0, 0.25, 0.5, 0.75, 1.0], 4),  # exact ties: the larger count, as the reversed argsort
])
def test_eigengap(eigenvalues, expected):
  lam = np.asarray(eigenvalues)
  # The reference rule, written out.
  order = np.argsort(np.diff(lam), kind="stable")[::-1]
  assert order[order != 0][0] + 1 == expected
  assert int(clustering.num_segments_from_eigengap(jnp.asarray(lam))) == expected


def test_eigengap_batched():
  lam = np.sort(np.random.default_rng(0).random((6, 10)), axis=-1)
  got = np.asarray(clustering.num_segments_from_eigengap(jnp.asarray(lam)))
  want = [int(np.argmax(np.diff(row)[1:]) + 2) for row in lam]
  np.testing.assert_array_equal(got, want)


def test_cluster_qr_matches_sklearn_batched_and_padded():
  """clustering.cluster_qr equals scikit-learn's cluster_qr (Damle, Minden & Ying 2019) label
  for label: on blob-like embeddings and random vectors, batched, and with padded rows."""
  from sklearn.cluster._spectral import cluster_qr as reference  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  _, y = _blobs(1.0, 0)
  blobs = np.eye(K, dtype=np.float32)[y] + rng.normal(0, 0.1, (N, K)).astype(np.float32)
  vectors = np.stack([blobs, rng.standard_normal((N, K)).astype(np.float32)])
  labels = np.asarray(clustering.cluster_qr(vectors))
  assert labels.shape == (2, N) and labels.dtype == np.int32
  for v, got in zip(vectors, labels):
    np.testing.assert_array_equal(got, reference(v.astype(np.float64)))
  assert sklearn.metrics.adjusted_rand_score(y, labels[0]) > 0.99   # the blobs, recovered
  valid = np.arange(N) < N - 40
  padded = np.where(valid[:, None], vectors[1], 7.0)    # padding rows hold anything
  got = np.asarray(clustering.cluster_qr(padded, valid))
  np.testing.assert_array_equal(got[valid], reference(vectors[1][valid].astype(np.float64)))
  assert not got[~valid].any()
  with pytest.raises(ValueError, match="k ≤ n"):
    clustering.cluster_qr(np.zeros((3, 4)))
