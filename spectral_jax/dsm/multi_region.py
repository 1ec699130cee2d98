"""DSM §3.3 multi-region segmentation: K-means on the eigenvectors, background relabelled 0.

As DSM's ``extract_multi_region_segmentations`` (SPEC §4). ``assign="cluster_qr"`` replaces
K-means by the deterministic column-pivoted-QR discretisation (``clustering.cluster_qr``).
"""

from __future__ import annotations

import jax

from spectral_jax import clustering, regions

NUM_SEGMENTS = 4        # DSM extract_multi_region_segmentations default
ASSIGN_METHODS = ("kmeans", "cluster_qr")   # how eigenvectors become segment labels
BACKGROUND = 0          # label of the background in segment and semantic maps


def multi_region_segments(key: jax.Array, eigenvectors: jax.Array, grid: tuple[int, int],
                          num_segments: int = NUM_SEGMENTS, *,
                          num_eigenvectors: int | None = None, n_init: int = 10,
                          valid: jax.Array | None = None,
                          num_active: jax.Array | None = None,
                          assign: str = "kmeans") -> jax.Array:
  """Multi-region segmentation (SPEC §4): K-means on y₁..y_m, background relabelled 0.

  The points are the patches, their features the non-constant eigenvectors y₁..y_m (m = all
  k − 1 by default); the segment covering most of the image border becomes ``BACKGROUND`` (0),
  the others keep ids 1..S−1. ``assign="cluster_qr"``: instead of K-means, the S clusters of
  ``clustering.cluster_qr`` on y₀..y_{S−1} (scikit-learn's ``spectral_clustering`` with
  ``assign_labels="cluster_qr"`` on this embedding); ``key``, ``num_eigenvectors`` and
  ``n_init`` are then not used, and ``num_active`` must be None.

  Args:
    key: PRNG key (image b of the batch uses ``split(key, B)[b]``, see ``clustering.kmeans``).
    eigenvectors: (..., n, k).
    grid: (h, w), h·w = n.
    num_segments: S ≥ 2 (static).
    num_eigenvectors: m, 1 ≤ m ≤ k − 1; None: all k − 1.
    n_init: K-means restarts (scikit-learn's default 10, as the reference used).
    valid: optional (..., h, w) bool real patches of a padded grid: padding takes no part in
      the clustering or the border count, and is labelled 0.
    num_active: optional (...) int ≤ S: use only that many segments (the adaptive count,
      ``adaptive_num_segments``), traced, so one program serves every count.
    assign: "kmeans" (DSM) or "cluster_qr".
  Returns:
    (..., h, w) int32 in [0, S).
  """
  h, w = grid
  n, k = eigenvectors.shape[-2:]
  if n != h * w:
    raise ValueError(f"eigenvectors have n={n} rows but the grid is {h}×{w}")
  m = k - 1 if num_eigenvectors is None else int(num_eigenvectors)
  if not 1 <= m <= k - 1:
    raise ValueError(f"num_eigenvectors={m} must lie in [1, k − 1 = {k - 1}]")
  if not 2 <= num_segments <= n:
    raise ValueError(f"num_segments={num_segments} must lie in [2, n={n}]")
  if assign not in ASSIGN_METHODS:
    raise ValueError(f"assign must be one of {ASSIGN_METHODS}; got {assign!r}")
  weights = None if valid is None else valid.reshape(valid.shape[:-2] + (n,))
  if assign == "cluster_qr":
    if num_active is not None:
      raise ValueError("assign='cluster_qr' forms exactly num_segments clusters: num_active "
                       "(the adaptive count) is not supported")
    if num_segments > k:
      raise ValueError(f"cluster_qr needs num_segments={num_segments} ≤ k={k} eigenvectors")
    labels = clustering.cluster_qr(eigenvectors[..., :num_segments], weights)
  else:
    labels = clustering.kmeans(key, eigenvectors[..., 1:1 + m], int(num_segments),
                               n_init=n_init, weights=weights, num_active=num_active).labels
  labels = labels.reshape(labels.shape[:-1] + (h, w))
  return regions.background_to_zero(labels, int(num_segments), valid)


def adaptive_num_segments(eigenvalues: jax.Array) -> jax.Array:
  """DSM's adaptive number of segments per image: the largest eigengap after λ₁.

  Args:
    eigenvalues: (..., k) ascending.
  Returns:
    (...) int32 in [2, k − 1] (``clustering.num_segments_from_eigengap``).
  """
  return clustering.num_segments_from_eigengap(eigenvalues)
