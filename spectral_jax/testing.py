"""SciPy/NumPy references and timing helpers shared by the tests and the benchmarks.

Host-side (NumPy, SciPy) yardsticks written once, so every test and benchmark measures the JAX
code against the same reference:

* DSM's spectral stage as its code runs it (SPEC §2–3): ``dsm_affinity_np`` (``W = relu(cos)``),
  ``dsm_eigsh_reference`` (``scipy.sparse.linalg.eigsh(D − W, k, sigma=0, which='LM', M=D)``),
  ``dsm_eigh_reference`` (all pairs, dense float64 LAPACK), ``degrees_np`` and ``sign_rule_np``.
* Mask geometry: ``largest_component_np`` (``scipy.ndimage.label``) and ``box_np``.
* TokenCut and MaskCut as their code runs them (SPEC §7): ``tokencut_graph_np`` (the binarised
  key graph, fixed τ or a quantile of the similarities), ``ncut_eigh_reference``
  (``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])``), ``tokencut_reference`` and
  ``maskcut_reference`` (one SciPy ``eigh`` per cut).
* TokenCut's fast bilateral solver: ``bilateral_reference`` (SciPy sparse matrices and ``cg``).
* Eigensolvers against known spectra: ``compare_eigenpairs`` / ``assert_eigenpairs_close``
  (eigenvalues, and eigenvectors up to sign and to rotation inside clusters of equal
  eigenvalues, by principal angles), and problems with closed-form spectra:
  ``path_laplacian``, ``grid_laplacian`` (degenerate pairs), ``ring_normalised_laplacian`` (a
  generalised ``L y = λ D y`` problem).
* Timing: ``median_time`` (median seconds after warm-up) and ``timed_call`` (one call, e.g. the
  first one including compilation). Both block on JAX outputs, so they time the work itself.
  ``benchmark_device`` puts a benchmark and its PyTorch peer on the same device (CPU or GPU)
  and names it.
"""

from __future__ import annotations

from collections.abc import Callable
import statistics
import time
from typing import Any, NamedTuple

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


# ----------------------------------------------------------------------------- TokenCut / MaskCut


def tokencut_graph_np(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5, *,
                      tau_quantile: float | None = None) -> tuple[np.ndarray, float]:
  """TokenCut's ``A = where(cos > τ, 1, ε)`` in float64 (``object_discovery.ncut``).

  ``tau_quantile``: τ = ``np.quantile(off-diagonal cos of the non-zero rows, q,
  method="inverted_cdf")`` instead of the fixed ``tau`` (this project's scale-free form). Zero
  feature rows (MaskCut's masked patches) have cos 0 with every patch, as ``F.normalize`` gives.
  Returns ``(A (n, n), τ)``.
  """
  f = np.asarray(features, np.float64)
  norms = np.linalg.norm(f, axis=1, keepdims=True)
  f = f / np.maximum(norms, 1e-12)
  sim = f @ f.T
  if tau_quantile is not None:
    live = norms[:, 0] > 0
    off = sim[np.ix_(live, live)][~np.eye(int(live.sum()), dtype=bool)]
    tau = float(np.quantile(off, tau_quantile, method="inverted_cdf"))
  return np.where(sim > tau, 1.0, eps), tau


def ncut_eigh_reference(a: np.ndarray) -> np.ndarray:
  """(n,) second smallest generalised eigenvector of ``(D − A) x = λ D x``, ``D = diag(A 1)``:
  ``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])[1][:, 0]`` as TokenCut and MaskCut call
  it (arbitrary sign, ``xᵀ D x = 1``)."""
  a = np.asarray(a, np.float64)
  d = np.diag(a.sum(axis=1))
  return scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])[1][:, 0]


def _seed_component_np(bipartition: np.ndarray, seed: int) -> np.ndarray:
  objects, _ = scipy.ndimage.label(bipartition)  # 4-connected, the references' call
  label = objects[np.unravel_index(seed, bipartition.shape)]
  return (objects == label) & (label > 0)


def tokencut_reference(features: np.ndarray, grid: tuple[int, int], tau: float = 0.2,
                       eps: float = 1e-5, tau_quantile: float | None = None) -> dict:
  """TokenCut's ``ncut`` on one image's (n, d) features, n = h·w (float64, SciPy).

  Returns a dict: ``vector`` (n,) as eigh gives it, ``foreground`` (h, w) bool (the side of the
  seed argmax |v| of the mean split), ``seed``, ``component`` (h, w) bool (the seed's
  4-connected component), ``tau``.
  """
  a, tau = tokencut_graph_np(features, tau, eps, tau_quantile=tau_quantile)
  v = ncut_eigh_reference(a)
  bipartition = v > v.mean()
  seed = int(np.argmax(np.abs(v)))
  if not bipartition[seed]:
    bipartition = ~bipartition
  fg = bipartition.reshape(grid)
  return {"vector": v, "foreground": fg, "seed": seed,
          "component": _seed_component_np(fg, seed), "tau": tau}


def maskcut_reference(features: np.ndarray, grid: tuple[int, int], num_cuts: int = 3,
                      tau: float = 0.15, eps: float = 1e-5,
                      tau_quantile: float | None = None) -> dict:
  """CutLER's ``maskcut_forward`` on one image's (n, d) features (float64, one SciPy eigh per
  cut): features of the patches found so far are zeroed; reversal when ≥ 3 corners are on the
  ``v > mean`` side, else when the seed argmax |v| is not; the seed's 4-connected component; a
  mask with IoU > 0.5 with the previous one or ≤ 1% of the patches is dropped; each mask minus
  the earlier ones.

  The reference's corner test depends on the arbitrary sign eigh returns (it fires only when
  the seed lies on ``v > mean``); each vector here is first signed so that ``v[argmax |v|] > 0``,
  the sign under which the reference applies the corner prior (``dsm.tokencut.orient``).

  Returns a dict: ``masks`` (N, h, w) bool, ``vectors`` (N, n), ``foreground`` (N, h, w) bool
  (each cut's oriented side).
  """
  feats = np.asarray(features, np.float64).copy()
  painting = np.zeros(grid, bool)
  previous = np.zeros(grid, bool)
  masks, vectors, sides = [], [], []
  for i in range(num_cuts):
    if i > 0:
      painting |= previous
      feats[painting.ravel()] = 0
    a, _ = tokencut_graph_np(feats, tau, eps, tau_quantile=tau_quantile)
    v = ncut_eigh_reference(a)
    v = v * np.sign(v[np.argmax(np.abs(v))])
    bipartition = v > v.mean()
    seed = int(np.argmax(np.abs(v)))
    side = bipartition.reshape(grid)
    corners = int(side[0, 0]) + int(side[0, -1]) + int(side[-1, 0]) + int(side[-1, -1])
    if corners >= 3 or not bipartition[seed]:
      bipartition, seed = ~bipartition, int(np.argmax(-v))
    else:
      seed = int(np.argmax(v))
    fg = bipartition.reshape(grid)
    mask = _seed_component_np(fg, seed)
    if i >= 1:
      union = (previous | mask).sum()
      iou = (previous & mask).sum() / union if union else 0.0
      if iou > 0.5 or mask.sum() / mask.size <= 0.01:
        mask = np.zeros(grid, bool)
    previous = mask
    masks.append(mask & ~painting)
    vectors.append(v)
    sides.append(fg)
  return {"masks": np.stack(masks), "vectors": np.stack(vectors), "foreground": np.stack(sides)}


# ----------------------------------------------------------------------------- bilateral solver


def bilateral_reference(image: np.ndarray, target: np.ndarray, *, sigma_spatial: float = 16,
                        sigma_luma: float = 16, sigma_chroma: float = 8, lam: float = 256,
                        confidence: float = 0.999, cg_tol: float = 1e-5, cg_maxiter: int = 25,
                        a_diag_min: float = 1e-5, bistochastize_iters: int = 10,
                        exact: bool = False, integer_cells: bool = False) -> dict:
  """TokenCut's fast bilateral solver (``bilateral_solver.py``) in float64 NumPy / SciPy sparse.

  Pixels → YUV (float64, ``+128`` on U and V, as the reference's ``rgb2yuv``) → integer cells
  (truncation); vertices are the distinct cell tuples (a Python dict); the splat S and the
  ``[1 2 1]`` blur B are ``scipy.sparse`` matrices; bistochastisation as the reference; then
  ``scipy.sparse.linalg.cg`` (Jacobi preconditioner, ``rtol=cg_tol``) from ``S(c t) / S c``, or
  ``scipy.sparse.linalg.spsolve`` (the exact solution) with ``exact=True``.
  ``integer_cells=True`` computes the colour cells in exact integer arithmetic (Python ints of
  millionths, as spectral_jax.bilateral does) instead of the reference's float64, which rounds a
  pixel lying exactly on a cell boundary (e.g. grey, U = V = 128) either way.

  Returns a dict: ``output`` (H, W) ``Sᵀ y``; ``cells`` (H·W, 5) each pixel's cell;
  ``vertex`` (H·W,) each pixel's vertex (first-seen order); ``n``, ``m`` (V,) the
  bistochastisation; ``blur`` the (V, V) sparse B; ``A``, ``b``.
  """
  import scipy.sparse  # pylint: disable=import-outside-toplevel
  rgb = np.asarray(image, np.float64)
  h, w = rgb.shape[:2]
  yuv = np.tensordot(rgb, np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                                    [0.5, -0.418688, -0.081312]]), ([2], [1]))
  yuv = yuv + np.array([0.0, 128.0, 128.0])
  iy, ix = np.mgrid[:h, :w]
  colour = [(yuv[..., 0] / sigma_luma).astype(int), (yuv[..., 1] / sigma_chroma).astype(int),
            (yuv[..., 2] / sigma_chroma).astype(int)]
  if integer_cells:
    px = np.asarray(image).astype(object)        # Python ints: no rounding anywhere
    micro = [[299000, 587000, 114000], [-168736, -331264, 500000], [500000, -418688, -81312]]
    offset = [0, 128_000_000, 128_000_000]
    sigmas = [round(sigma_luma * 1e6), round(sigma_chroma * 1e6), round(sigma_chroma * 1e6)]
    colour = [((px[..., 0] * c[0] + px[..., 1] * c[1] + px[..., 2] * c[2] + o) // sg).astype(int)
              for c, o, sg in zip(micro, offset, sigmas)]
  cells = np.stack([(ix / sigma_spatial).astype(int), (iy / sigma_spatial).astype(int),
                    *colour], -1).reshape(-1, 5)
  index: dict[tuple, int] = {}
  vertex = np.array([index.setdefault(tuple(c), len(index)) for c in cells.tolist()])
  nv, npx = len(index), h * w
  s = scipy.sparse.csr_matrix((np.ones(npx), (vertex, np.arange(npx))), shape=(nv, npx))
  rows, cols = [], []
  for cell, v in index.items():
    for d in range(5):
      for step in (-1, 1):
        other = list(cell)
        other[d] += step
        u = index.get(tuple(other))
        if u is not None:
          rows.append(v)
          cols.append(u)
  b_mat = (scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(nv, nv))
           + 10.0 * scipy.sparse.identity(nv, format="csr"))
  m = np.asarray(s @ np.ones(npx))
  n = np.ones(nv)
  for _ in range(bistochastize_iters):
    n = np.sqrt(n * m / (b_mat @ n))
  m = n * (b_mat @ n)
  t = np.asarray(target, np.float64).ravel()
  c = np.full(npx, confidence)
  a_mat = (lam * (scipy.sparse.diags(m) - scipy.sparse.diags(n) @ b_mat @ scipy.sparse.diags(n))
           + scipy.sparse.diags(s @ c)).tocsr()
  rhs = s @ (c * t)
  if exact:
    y = scipy.sparse.linalg.spsolve(a_mat.tocsc(), rhs)
  else:
    precond = scipy.sparse.diags(1.0 / np.maximum(a_mat.diagonal(), a_diag_min))
    y, _ = scipy.sparse.linalg.cg(a_mat, rhs, x0=rhs / (s @ c), M=precond, maxiter=cg_maxiter,
                                  rtol=cg_tol)
  return {"output": (s.T @ y).reshape(h, w), "cells": cells, "vertex": vertex, "n": n, "m": m,
          "blur": b_mat, "A": a_mat, "b": rhs}


# ----------------------------------------------------------------------------- eigenpairs


class EigenpairReport(NamedTuple):
  """What `compare_eigenpairs` measured.

  Attributes:
    eigenvalue_error: (k,) |λ − λ_ref|.
    clusters: index ranges ``(start, stop)`` of reference eigenvalues equal within
      ``cluster_rtol``; eigenvectors are compared per cluster.
    angles_deg: (num_clusters,) largest principal angle, in degrees, between the computed and
      the reference eigenvectors of each cluster (in the B inner product when B is given): 0
      for equal subspaces, whatever the signs or the rotation inside a degenerate cluster.
    orthonormality_error: max |Vᵀ B V − I| of the computed vectors.
  """

  eigenvalue_error: np.ndarray
  clusters: list[tuple[int, int]]
  angles_deg: np.ndarray
  orthonormality_error: float


def eigenvalue_clusters(eigenvalues, rtol: float = 1e-6) -> list[tuple[int, int]]:
  """Ranges ``(start, stop)`` of consecutive sorted eigenvalues within ``rtol·max|λ|`` of the
  previous one: the groups whose eigenvectors are only defined up to rotation."""
  lam = np.asarray(eigenvalues, np.float64)
  scale = max(float(np.max(np.abs(lam))), np.finfo(np.float64).tiny) if lam.size else 1.0
  out, start = [], 0
  for i in range(1, lam.size + 1):
    if i == lam.size or abs(lam[i] - lam[i - 1]) > rtol * scale:
      out.append((start, i))
      start = i
  return out


def compare_eigenpairs(eigenvalues, eigenvectors, ref_eigenvalues, ref_eigenvectors, *,
                       B=None, cluster_rtol: float = 1e-6) -> EigenpairReport:
  """Compares computed eigenpairs with reference ones, up to sign and rotation.

  Eigenvectors of a cluster of equal eigenvalues are any orthonormal basis of its eigenspace,
  and every eigenvector's sign is arbitrary, so vectors are compared per cluster of the
  reference eigenvalues by the largest principal angle between the two subspaces (computed
  as ``arccos`` of the smallest singular value of ``V_refᵀ B V``, both sides B-orthonormalised).
  A cluster cut by the end of the requested range (k ends inside it) is compared as far as it
  goes, which bounds the angle only loosely: ask for whole clusters.

  Args:
    eigenvalues: (k,) computed, in the reference's order.
    eigenvectors: (n, k) computed.
    ref_eigenvalues: (k,) reference.
    ref_eigenvectors: (n, k) reference.
    B: optional (n, n) SPD matrix of a generalised problem ``A x = λ B x``.
    cluster_rtol: eigenvalues closer than this times max |λ| form one cluster.
  Returns:
    An `EigenpairReport`.
  Raises:
    ValueError: mismatched shapes, NaN/Inf values.
  """
  lam, lam_ref = (np.asarray(a, np.float64) for a in (eigenvalues, ref_eigenvalues))
  v, v_ref = (np.asarray(a, np.float64) for a in (eigenvectors, ref_eigenvectors))
  if lam.shape != lam_ref.shape or lam.ndim != 1:
    raise ValueError(f"eigenvalues must both be (k,); got {lam.shape} and {lam_ref.shape}")
  if v.shape != v_ref.shape or v.shape[1:] != lam.shape:
    raise ValueError(f"eigenvectors must both be (n, k={lam.size}); got {v.shape} and "
                     f"{v_ref.shape}")
  for name, a in (("eigenvalues", lam), ("eigenvectors", v), ("ref_eigenvalues", lam_ref),
                  ("ref_eigenvectors", v_ref)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} holds NaN or Inf")
  b = np.eye(v.shape[0]) if B is None else np.asarray(B, np.float64)
  gram = v.T @ b @ v
  ortho = float(np.max(np.abs(gram - np.eye(lam.size)))) if lam.size else 0.0

  def b_orthonormal(x):
    chol = np.linalg.cholesky(x.T @ b @ x)
    return np.linalg.solve(chol, x.T).T          # x L⁻ᵀ: Bᵀ-orthonormal columns

  clusters = eigenvalue_clusters(lam_ref, cluster_rtol)
  angles = []
  for start, stop in clusters:
    q, q_ref = b_orthonormal(v[:, start:stop]), b_orthonormal(v_ref[:, start:stop])
    sv = np.linalg.svd(q_ref.T @ b @ q, compute_uv=False)
    angles.append(np.degrees(np.arccos(np.clip(sv.min(), -1.0, 1.0))))
  return EigenpairReport(np.abs(lam - lam_ref), clusters, np.asarray(angles), ortho)


def assert_eigenpairs_close(eigenvalues, eigenvectors, ref_eigenvalues, ref_eigenvectors, *,
                            B=None, eigenvalue_atol: float = 1e-6, max_angle_deg: float = 0.1,
                            orthonormality_atol: float = 1e-5,
                            cluster_rtol: float = 1e-6) -> EigenpairReport:
  """`compare_eigenpairs`, raising AssertionError (naming the worst index or cluster) when an
  eigenvalue differs by more than ``eigenvalue_atol``, a cluster's eigenvectors lie more than
  ``max_angle_deg`` from the reference's, or ``Vᵀ B V`` differs from I by more than
  ``orthonormality_atol``. Returns the report."""
  rep = compare_eigenpairs(eigenvalues, eigenvectors, ref_eigenvalues, ref_eigenvectors, B=B,
                           cluster_rtol=cluster_rtol)
  worst = int(np.argmax(rep.eigenvalue_error)) if rep.eigenvalue_error.size else 0
  if rep.eigenvalue_error.size and rep.eigenvalue_error[worst] > eigenvalue_atol:
    raise AssertionError(f"eigenvalue {worst}: |λ − λ_ref| = {rep.eigenvalue_error[worst]:.3g} "
                         f"> {eigenvalue_atol:g}")
  if rep.angles_deg.size and rep.angles_deg.max() > max_angle_deg:
    c = int(np.argmax(rep.angles_deg))
    raise AssertionError(f"eigenvectors {rep.clusters[c][0]}..{rep.clusters[c][1] - 1}: "
                         f"{rep.angles_deg[c]:.3g}° from the reference subspace "
                         f"> {max_angle_deg:g}°")
  if rep.orthonormality_error > orthonormality_atol:
    raise AssertionError(f"max |VᵀBV − I| = {rep.orthonormality_error:.3g} > "
                         f"{orthonormality_atol:g}")
  return rep


def path_laplacian(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The combinatorial Laplacian of the path graph on n nodes, with its closed-form spectrum.

  Returns:
    ``(L, eigenvalues, eigenvectors)``: L (n, n) float64; eigenvalues
    ``2 − 2 cos(π j / n)``, j = 0..n−1 (ascending, simple); eigenvectors (n, n) with columns
    ``cos(π j (i + ½) / n)`` normalised.
  """
  if n < 2:
    raise ValueError(f"path_laplacian needs n ≥ 2; got {n}")
  lap = 2.0 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
  lap[0, 0] = lap[-1, -1] = 1.0
  j = np.arange(n)
  vec = np.cos(np.pi * np.outer(np.arange(n) + 0.5, j) / n)
  return lap, 2.0 - 2.0 * np.cos(np.pi * j / n), vec / np.linalg.norm(vec, axis=0)


def grid_laplacian(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The Laplacian of the h×w grid graph (4-neighbours): the Kronecker sum of two path
  Laplacians, with eigenvalues ``μ_a + ν_b`` and eigenvectors ``u_a ⊗ v_b`` (sorted
  ascending). A square grid has degenerate pairs (a ≠ b), which is what a comparison up to
  rotation is for.

  Returns:
    ``(L, eigenvalues, eigenvectors)``: (n, n), (n,), (n, n) with n = h·w, row-major nodes.
  """
  lh, mu, u = path_laplacian(h)
  lw, nu, v = path_laplacian(w)
  lap = np.kron(lh, np.eye(w)) + np.kron(np.eye(h), lw)
  lam = (mu[:, None] + nu[None, :]).ravel()
  vec = np.einsum("ia,jb->ijab", u, v).reshape(h * w, h * w)
  order = np.argsort(lam, kind="stable")
  return lap, lam[order], vec[:, order]


def ring_normalised_laplacian(n: int, weight: float = 1.0, self_loop: float = 1.0
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The generalised problem ``(D − W) y = λ D y`` (DSM's, SPEC §3) of a ring of n nodes with
  edge weight ``weight`` and a self-loop ``self_loop`` on every node. Every degree is
  d = 2·weight + self_loop, so the eigenvalues are ``(2 weight / d)(1 − cos(2π j / n))``:
  simple for j = 0 (and j = n/2), doubly degenerate otherwise.

  Returns:
    ``(W, D, eigenvalues)``: W (n, n), D = diag(degrees) (n, n), the n eigenvalues ascending.
  """
  if n < 3:
    raise ValueError(f"ring_normalised_laplacian needs n ≥ 3; got {n}")
  w_mat = weight * (np.eye(n, k=1) + np.eye(n, k=-1))
  w_mat[0, -1] = w_mat[-1, 0] = weight
  w_mat += self_loop * np.eye(n)
  d = 2.0 * weight + self_loop
  lam = np.sort(2.0 * weight / d * (1.0 - np.cos(2.0 * np.pi * np.arange(n) / n)))
  return w_mat, np.diag(w_mat.sum(1)), lam


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


BENCHMARK_DEVICES = ("cpu", "gpu")
CUDA_INSTALL = ('pip install -e ".[cuda]" (JAX on NVIDIA GPUs) and torch with CUDA (the '
                '`reference` extra: torch==2.13.0 from the index is the CUDA build on Python 3.12+)')


def benchmark_device(device: str, *, torch_peer: bool = True) -> tuple[str, str]:
  """Puts JAX on ``device`` ("cpu" or "gpu") and gives the matching PyTorch device for the
  benchmark's reference, so both sides run on the same chip. Call before JAX's first
  computation (it sets ``jax_platforms``).

  Returns:
    ``(torch_device, description)``: "cpu" or "cuda", and the device's name as both libraries
    report it (e.g. ``"gpu: NVIDIA H100 80GB HBM3 (JAX cuda:0; torch cuda:0 ...)"``).
  Raises:
    ValueError: an unknown ``device``.
    RuntimeError: "gpu" where JAX or (with ``torch_peer``) PyTorch sees no GPU, naming what to
      install.
  """
  if device not in BENCHMARK_DEVICES:
    raise ValueError(f"device must be one of {BENCHMARK_DEVICES}; got {device!r}")
  if device == "cpu":
    jax.config.update("jax_platforms", "cpu")
  elif jax.default_backend() != "gpu":   # JAX takes a GPU first wherever its CUDA plugin finds one
    raise RuntimeError(f"JAX sees no GPU (its backend is {jax.default_backend()!r}): "
                       f"{CUDA_INSTALL}")
  chip = jax.devices()[0]
  jax_name = f"JAX {chip.platform}:{chip.id} {getattr(chip, 'device_kind', '')}".strip()
  if not torch_peer:
    return ("cuda" if device == "gpu" else "cpu"), f"{device}: {jax_name}"
  import torch  # pylint: disable=import-outside-toplevel  (optional: the reference extra)
  if device == "cpu":
    return "cpu", f"cpu: {jax_name}; torch cpu, {torch.get_num_threads()} threads"
  if not torch.cuda.is_available():
    raise RuntimeError(f"PyTorch {torch.__version__} sees no CUDA GPU: {CUDA_INSTALL}")
  return "cuda", (f"gpu: {torch.cuda.get_device_name(0)} ({jax_name}; torch "
                  f"{torch.__version__} cuda:0, CUDA {torch.version.cuda})")


__all__ = [
    "BENCHMARK_DEVICES", "CUDA_INSTALL", "benchmark_device", "dsm_affinity_np", "degrees_np", "sign_rule_np", "dsm_eigsh_reference", "dsm_eigh_reference",
    "largest_component_np", "box_np", "tokencut_graph_np", "ncut_eigh_reference",
    "tokencut_reference", "maskcut_reference", "bilateral_reference", "EigenpairReport",
    "eigenvalue_clusters", "compare_eigenpairs", "assert_eigenpairs_close", "path_laplacian",
    "grid_laplacian", "ring_normalised_laplacian", "timed_call", "median_time",
]
