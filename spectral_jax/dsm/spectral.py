"""DSM §3.1 spectral decomposition: the k smallest eigenpairs of the feature graph's Laplacian.

Per image, patch features F (last-block keys) give ``W = relu(F̂ F̂ᵀ) + λ·W_knn``
(``graphs.dsm_affinity``) and the k smallest eigenpairs of ``(D − W) y = λ D y``
(``eigensolvers.laplacian_eigenvectors``), with ``Yᵀ D Y = I`` and the SPEC §3 sign rule.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from spectral_jax import eigensolvers, graphs

NUM_EIGENVECTORS = 20   # K eigenpairs (DSM default)


def check_num_eigenvectors(k: int, n: int) -> None:
  """Validates the number of eigenpairs against the number of patches.

  Raises:
    TypeError: k is not an int.
    ValueError: unless 2 ≤ k < n (y₁ must exist; SciPy's ``eigsh``, the reference, needs k < n).
  """
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"the number of eigenvectors must be an int; got {k!r}")
  if k < 2:
    raise ValueError(f"num_eigenvectors={k}: need at least 2 (y₀ and the Fiedler vector y₁)")
  if k >= n:
    raise ValueError(f"num_eigenvectors={k} must be smaller than the number of patches n={n}: "
                     "lower num_eigenvectors or use larger images (more patches)")


def spectral_decomposition(features: jax.Array, image_grid: jax.Array | None = None, *,
                           num_eigenvectors: int = NUM_EIGENVECTORS, image_weight: float = 0.0,
                           method: str = "auto", tol: float | None = None,
                           solver: Callable | None = None,
                           return_info: bool = False, valid: jax.Array | None = None,
                           **affinity_kwargs):
  """The k smallest eigenpairs of ``(D − W) y = λ D y`` for DSM's affinity (SPEC §2–3).

  ``W = relu(F̂ F̂ᵀ) + λ·W_knn`` (``graphs.dsm_affinity``); ``λ = image_weight`` defaults to 0,
  the reference command line (features only). λ > 0 adds the colour–position "KNN matting" graph
  of ``image_grid`` (the paper's fusion of high-level and colour-level affinities); its entries
  are 0..4 per pair while feature affinities are ≤ 1, so λ of a few tenths already gives colour
  a large say. On the labelled sample photos λ ∈ {0.1, 0.3, 1} did not improve the masks
  (BUILD_NOTES), so the reference's 0 stays the default.

  Args:
    features: (B, n, d) or (n, d) float patch features (DSM: last-block keys).
    image_grid: (B, h, w, 3) / (h, w, 3) RGB in [0, 1] at the patch grid
      (``graphs.resize_to_grid`` of the uncropped photo); needed when image_weight > 0.
    num_eigenvectors: k, 2 ≤ k < n (DSM: 20).
    image_weight: λ (reference 0).
    method: passed to the solver ("auto", "eigh", "lobpcg").
    tol: LOBPCG's relative-residual tolerance, passed to the solver when given; None: the
      solver's default (``eigensolvers.default_tol``).
    solver: callable ``solver(W, k, *, method=..., return_info=..., valid=...)`` with the
      signature of ``eigensolvers.laplacian_eigenvectors`` (the default).
    return_info: also return the solver's info (residuals, convergence flags).
    valid: optional (B, n) / (n,) bool, the real patches of images padded to one grid: padded
      nodes take no part in the graph, and their eigenvector entries are 0. Only with λ = 0
      (the colour graph's neighbours are not masked).
    **affinity_kwargs: ``n_neighbors``, ``distance_weights``, ``block_size`` of the colour graph.
  Returns:
    ``(eigenvalues (..., k) ascending, eigenvectors (..., n, k))`` (+ info if asked).
  """
  if np.ndim(features) not in (2, 3):
    raise ValueError(f"features must be (B, n, d) or (n, d); got shape {np.shape(features)}")
  check_num_eigenvectors(num_eigenvectors, features.shape[-2])
  if valid is not None and not (isinstance(image_weight, (int, float)) and image_weight == 0):
    raise ValueError("padded images (valid=...) need image_weight=0: the colour graph of padded "
                     "grids is not masked; run such images unpadded")
  w = graphs.dsm_affinity(features, image_grid, image_weight=image_weight, **affinity_kwargs)
  solver = solver or eigensolvers.laplacian_eigenvectors
  kwargs = {} if valid is None else {"valid": valid}
  if tol is not None:
    kwargs["tol"] = tol
  return solver(w, int(num_eigenvectors), method=method, return_info=return_info, **kwargs)
