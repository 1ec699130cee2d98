"""SciPy/NumPy references and timing helpers shared by the tests and the benchmarks.

Host-side (NumPy, SciPy) yardsticks written once, so every test and benchmark measures the JAX
code against the same reference:

* DSM's spectral stage as its code runs it (SPEC §2–3): ``dsm_affinity_np`` (``W = relu(cos)``),
  ``dsm_eigsh_reference`` (``scipy.sparse.linalg.eigsh(D − W, k, sigma=0, which='LM', M=D)``),
  ``dsm_eigh_reference`` (all pairs, dense float64 LAPACK), ``degrees_np`` and ``sign_rule_np``.
* Mask geometry: ``largest_component_np`` (``scipy.ndimage.label``) and ``box_np``.
* Timing: ``median_time`` (median seconds after warm-up) and ``timed_call`` (one call, e.g. the
  first one including compilation). Both block on JAX outputs, so they time the work itself.
"""

from __future__ import annotations

from collections.abc import Callable
import statistics
import time
from typing import Any

import jax
import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse.linalg

from spectral_jax.graphs import MIN_DEGREE

# ----------------------------------------------------------------------------- DSM references


def dsm_affinity_np(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """DSM feature affinity ``W = max(0, F̂ F̂ᵀ)`` (SPEC §2), F̂ the L2-normalised rows.

  Args:
    features: (..., n, d) features; computed in their float dtype (integers in float64).
    eps: norms below it count as ``eps`` (zero rows give zero rows of W, never NaN).
  Returns:
    (..., n, n) symmetric, non-negative.
  """
  f = np.asarray(features)
  if not np.issubdtype(f.dtype, np.floating):
    f = f.astype(np.float64)
  f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), eps)
  return np.maximum(np.einsum("...id,...jd->...ij", f, f), 0)


def degrees_np(w: np.ndarray, min_degree: float = MIN_DEGREE) -> np.ndarray:
  """(..., n) float64 row sums of (..., n, n) ``w``; those below ``min_degree`` become 1."""
  d = np.asarray(w, np.float64).sum(axis=-1)
  return np.where(d < min_degree, 1.0, d)


def sign_rule_np(y: np.ndarray) -> np.ndarray:
  """SPEC §3 sign rule on (..., n, k) eigenvector columns.

  A column with more than 50% but not 100% positive entries is negated (its positive side is
  then the minority), as DSM does; a column with no positive entry is negated too (a one-signed
  y₀ comes out non-negative), as ``eigensolvers.apply_sign_rule`` does.
  """
  y = np.asarray(y)
  frac = (y > 0).mean(axis=-2, keepdims=True)
  return np.where(((frac > 0.5) & (frac < 1.0)) | (frac == 0.0), -y, y)


def dsm_eigsh_reference(w: np.ndarray, k: int, *, tol: float = 0.0
                        ) -> tuple[np.ndarray, np.ndarray]:
  """DSM's eigenproblem call on one dense graph (SPEC §3; DSM ``extract.py``).

  ``scipy.sparse.linalg.eigsh(D − W, k, sigma=0, which='LM', M=D)`` with ``D = diag(W 1)`` dense,
  in ``w``'s dtype, falling back to ``which='SM'`` when the shift-invert fails, as the reference.

  Args:
    w: (n, n) symmetric affinity with positive degrees.
    k: eigenpairs, k < n.
    tol: ARPACK's tolerance (0: machine precision).
  Returns:
    lam: (k,) ascending eigenvalues; y: (n, k) D-orthonormal eigenvectors, ``sign_rule_np``.
  """
  w = np.asarray(w)
  d = np.diag(w.sum(axis=1))
  try:
    lam, y = scipy.sparse.linalg.eigsh(d - w, k=k, sigma=0, which="LM", M=d, tol=tol)
  except (RuntimeError, np.linalg.LinAlgError):  # ArpackError is a RuntimeError
    lam, y = scipy.sparse.linalg.eigsh(d - w, k=k, which="SM", M=d, tol=tol)
  order = np.argsort(lam)
  return lam[order], sign_rule_np(y[:, order])


def dsm_eigh_reference(w: np.ndarray, k: int | None = None,
                       min_degree: float = MIN_DEGREE) -> tuple[np.ndarray, np.ndarray]:
  """The k smallest (default all) pairs of ``(D − W) y = λ D y``, dense float64 LAPACK.

  ``D = diag(degrees_np(w, min_degree))`` (isolated nodes get degree 1, as ``graphs.degrees``).
  Returns ascending (k,) λ and (n, k) D-orthonormal y with ``sign_rule_np``.
  """
  w = np.asarray(w, np.float64)
  d = np.diag(degrees_np(w, min_degree))
  subset = None if k is None else (0, k - 1)
  lam, y = scipy.linalg.eigh(d - w, d, subset_by_index=subset)
  return lam, sign_rule_np(y)


# ----------------------------------------------------------------------------- mask geometry


def largest_component_np(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
  """The largest 4- or 8-connected component of a (..., H, W) bool mask (``scipy.ndimage.label``;
  ties: the lowest label, i.e. the first in raster order). Empty masks stay empty."""
  mask = np.asarray(mask, bool)
  if mask.ndim > 2:
    return np.stack([largest_component_np(m, connectivity) for m in mask])
  structure = scipy.ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
  labels, num = scipy.ndimage.label(mask, structure)
  if num == 0:
    return np.zeros_like(mask)
  return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def box_np(mask: np.ndarray, patch_size: int, image_size: tuple[int, int] | None = None
           ) -> np.ndarray:
  """(4,) int ``[x0, y0, x1, y1]`` pixel box of a (h, w) patch mask's nonzero extent.

  Patch coordinates times ``patch_size``, clipped to ``image_size = (H, W)`` (default the grid's
  h·P × w·P); an empty mask gives the whole image.
  """
  mask = np.asarray(mask, bool)
  h, w = mask.shape
  img_h, img_w = image_size if image_size is not None else (h * patch_size, w * patch_size)
  ys, xs = np.nonzero(mask)
  if not len(ys):
    return np.array([0, 0, img_w, img_h])
  return np.array([xs.min() * patch_size, ys.min() * patch_size,
                   min((xs.max() + 1) * patch_size, img_w),
                   min((ys.max() + 1) * patch_size, img_h)])


# ----------------------------------------------------------------------------- timing


def timed_call(fn: Callable[[], Any]) -> tuple[Any, float]:
  """``(fn(), seconds)`` of one call, waiting for JAX outputs (``jax.block_until_ready``)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
  """Median seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones (compilation,
  allocator); each call waits for its JAX outputs."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1; got {repeats}")
  for _ in range(warmup):
    jax.block_until_ready(fn())
  return statistics.median(timed_call(fn)[1] for _ in range(repeats))


__all__ = [
    "dsm_affinity_np", "degrees_np", "sign_rule_np", "dsm_eigsh_reference", "dsm_eigh_reference",
    "largest_component_np", "box_np", "timed_call", "median_time",
]
