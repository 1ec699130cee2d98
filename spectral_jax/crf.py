"""Fully connected (dense) CRF post-processing in JAX (SPEC §4; Krähenbühl & Koltun 2011).

The model is the one of Krähenbühl's ``densecrf`` library as SimpleCRF's
``denseCRF.densecrf(image, prob, (w1, alpha, beta, w2, gamma, it))`` calls it in the DSM
reference:

* unary ``Uᵢ(l) = −log clip(pᵢ(l), 0.01, 0.99)`` from the given per-pixel probabilities;
* Potts pairwise terms with two Gaussian kernels, an appearance (bilateral) kernel
  ``w1 · exp(−|pᵢ − pⱼ|²/2α² − |Iᵢ − Iⱼ|²/2β²)`` and a smoothness kernel
  ``w2 · exp(−|pᵢ − pⱼ|²/2γ²)`` (p pixel positions, I RGB values in 0–255), each with
  symmetric normalisation ``D^-½ K D^-½`` (D = K·1) as the library's default;
* ``iterations`` parallel mean-field updates from ``Q = softmax(−U)``:
  ``Q ← softmax(−U + Σₖ wₖ D_k^-½ K_k D_k^-½ Q)``; the sums include j = i, as the library's.

Filtering, the only expensive part:

* smoothness kernel: exact, as two dense 1-D Gaussian matrices (``K_y Q K_xᵀ``, O(N·(H+W)·L));
* appearance kernel, ``method="grid"`` (default): a bilateral grid (Paris & Durand 2006; Chen et
  al. 2007) over (y/α, x/α, r/β, g/β, b/β) with node spacing ``grid_spacing`` (in kernel
  standard deviations): multilinear splat onto the 2⁵ surrounding nodes, an exact separable
  Gaussian blur along each grid axis, multilinear slice. The blur's standard deviation is
  reduced to ``sqrt(1 − s²/3)`` to undo the variance the two linear interpolations add.
  Cost O(32·N·L + G·Σ n_d·L) per filtering, G the number of grid nodes (≈ 0.44 M for a
  375×500 image at spacing 1), memory O(G·L). This replaces the library's permutohedral
  lattice (6 vertices per pixel and a hash table: far harder to express with static shapes);
  both are approximations of the same Gaussian sum at about one node per standard deviation.
* ``method="exact"``: the dense O(N²) sum, in row blocks; for small images, GPUs and tests.

:func:`dense_crf_pydensecrf` runs the same model through the ``pydensecrf2`` package (the
library's C++ code) when that optional dependency is installed.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PROB_CLIP = (0.01, 0.99)  # SimpleCRF's clamp before −log


class CRFParams(NamedTuple):
  """Dense CRF parameters, named and ordered as SimpleCRF's tuple; DSM's values by default.

  Attributes:
    w1: weight of the appearance (bilateral) kernel.
    alpha: its spatial standard deviation, pixels.
    beta: its colour standard deviation, RGB units (0–255).
    w2: weight of the smoothness (spatial) kernel.
    gamma: its spatial standard deviation, pixels.
    iterations: mean-field iterations.
  """

  w1: float = 10.0
  alpha: float = 80.0
  beta: float = 13.0
  w2: float = 3.0
  gamma: float = 3.0
  iterations: int = 5


def unary_from_probs(probs: jax.Array) -> jax.Array:
  """Unary energies ``−log clip(p, 0.01, 0.99)`` (SimpleCRF's ``computeUnary``).

  Args:
    probs: (..., L) label probabilities (or one-hot labels).
  Returns:
    (..., L) float32 energies.
  """
  return -jnp.log(jnp.clip(jnp.asarray(probs, jnp.float32), *PROB_CLIP))


# ----------------------------------------------------------------------------------------------
# Gaussian filtering of (N, L) values over pixel features.


def _gauss_matrix(n: int, sigma: float, step: float = 1.0) -> jax.Array:
  """(n, n) matrix exp(−½((a − b)·step/σ)²)."""
  d = (jnp.arange(n, dtype=jnp.float32)[:, None] - jnp.arange(n, dtype=jnp.float32)) * step
  return jnp.exp(-0.5 * (d / sigma) ** 2)


def _spatial_filter(values: jax.Array, sigma: float) -> jax.Array:
  """Exact ``Σⱼ exp(−|pᵢ − pⱼ|²/2σ²) vⱼ`` for (H, W, L) values on the pixel grid."""
  h, w = values.shape[:2]
  ky, kx = _gauss_matrix(h, sigma), _gauss_matrix(w, sigma)
  hi = jax.lax.Precision.HIGHEST
  return jnp.einsum("ab,bcl,dc->adl", ky, values, kx, precision=hi)


def _bilateral_features(image: jax.Array, alpha: float, beta: float) -> jax.Array:
  """(H, W, 5) features (y/α, x/α, r/β, g/β, b/β)."""
  h, w = image.shape[:2]
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  pos = jnp.stack([yy, xx], axis=-1) / alpha
  return jnp.concatenate([pos, image.astype(jnp.float32) / beta], axis=-1)


def _exact_filter(features: jax.Array, values: jax.Array, block: int = 1024) -> jax.Array:
  """Exact ``Σⱼ exp(−½|fᵢ − fⱼ|²) vⱼ`` for (N, d) features and (N, L) values, O(N²)."""
  n = features.shape[0]
  block = min(block, n)
  pad = (-n) % block
  f_rows = jnp.pad(features, ((0, pad), (0, 0))).reshape(-1, block, features.shape[1])
  sq = jnp.sum(features**2, axis=1)
  hi = jax.lax.Precision.HIGHEST

  def rows(f):
    d2 = jnp.sum(f**2, axis=1)[:, None] - 2.0 * jnp.dot(f, features.T, precision=hi) + sq
    return jnp.dot(jnp.exp(-0.5 * jnp.maximum(d2, 0.0)), values, precision=hi)

  return jax.lax.map(rows, f_rows).reshape(-1, values.shape[1])[:n]


class _Grid(NamedTuple):
  """Splat/slice stencil of a bilateral grid: 2^d nodes per pixel."""

  index: jax.Array  # (N, 2^d) int32 flat node index
  weight: jax.Array  # (N, 2^d) float32 multilinear weight
  shape: tuple[int, ...]  # grid shape (static)
  blurs: tuple[jax.Array, ...]  # one (n_d, n_d) Gaussian matrix per axis


def _grid_shape(extent: tuple[float, ...], spacing: float) -> tuple[int, ...]:
  """Nodes per axis covering features in [0, extent] at ``spacing``."""
  return tuple(int(math.floor(e / spacing)) + 2 for e in extent)


def _make_grid(features: jax.Array, shape: tuple[int, ...], spacing: float) -> _Grid:
  """Multilinear stencil of (N, d) non-negative features on a grid of node spacing ``spacing``."""
  g = features / spacing
  base = jnp.floor(g)
  frac = g - base
  base = base.astype(jnp.int32)
  strides = np.cumprod((1,) + shape[::-1][:-1])[::-1].astype(np.int32)
  corners = np.array(list(itertools.product((0, 1), repeat=len(shape))), np.int32)  # (2^d, d)
  index = jnp.einsum("nkd,d->nk", base[:, None, :] + corners[None], jnp.asarray(strides))
  weight = jnp.prod(jnp.where(corners[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :]),
                    axis=-1)
  sigma = math.sqrt(max(1.0 - spacing**2 / 3.0, 1e-3))
  blurs = tuple(_gauss_matrix(n, sigma, spacing) for n in shape)
  return _Grid(index, weight, shape, blurs)


def _grid_filter(grid: _Grid, values: jax.Array) -> jax.Array:
  """Approximate ``Σⱼ exp(−½|fᵢ − fⱼ|²) vⱼ``: splat, separable blur, slice."""
  n, corners = grid.index.shape
  num_labels = values.shape[1]
  size = math.prod(grid.shape)
  contrib = (grid.weight[:, :, None] * values[:, None, :]).reshape(n * corners, num_labels)
  nodes = jax.ops.segment_sum(contrib, grid.index.reshape(-1), num_segments=size)
  nodes = nodes.reshape(grid.shape + (num_labels,))
  hi = jax.lax.Precision.HIGHEST
  for axis, blur in enumerate(grid.blurs):
    nodes = jnp.moveaxis(jnp.tensordot(blur, nodes, axes=((1,), (axis,)), precision=hi), 0, axis)
  sliced = nodes.reshape(size, num_labels)[grid.index]  # (N, 2^d, L)
  return jnp.einsum("nk,nkl->nl", grid.weight, sliced, precision=hi)


# ----------------------------------------------------------------------------------------------
# Mean field.

METHODS = ("grid", "exact")


def _check_inputs(image, probs):
  image = jnp.asarray(image)
  probs = jnp.asarray(probs)
  if image.ndim < 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (..., H, W, 3) RGB in 0–255; got shape {image.shape}")
  if probs.shape[:-1] != image.shape[:-1] or probs.shape[-1] < 2:
    raise ValueError(f"probabilities must be (..., H, W, L≥2) matching the image "
                     f"{image.shape[:-1]}; got {probs.shape}")
  return image, probs


def dense_crf(image: jax.Array, probs: jax.Array, params: CRFParams = CRFParams(), *,
              method: str = "grid", grid_spacing: float = 1.0) -> jax.Array:
  """Mean-field marginals of the dense CRF (model in the module docstring).

  Args:
    image: (..., H, W, 3) RGB, uint8 or float in 0–255.
    probs: (..., H, W, L) initial label probabilities (L ≥ 2), e.g. one-hot labels or
      ``stack([1 − p, p])`` of an upsampled soft mask.
    params: kernel weights, widths and iterations; DSM's values by default.
    method: "grid" (bilateral grid, default) or "exact" (O(N²), small images / GPU).
    grid_spacing: bilateral-grid node spacing in kernel standard deviations (grid only);
      smaller is more accurate and costs ~spacing⁻⁵ memory.
  Returns:
    (..., H, W, L) float32 marginals Q (rows sum to 1); ``argmax(-1)`` gives the labels.
  """
  image, probs = _check_inputs(image, probs)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  if not 0.1 <= grid_spacing <= 1.5:
    raise ValueError(f"grid_spacing must be in [0.1, 1.5] standard deviations; got {grid_spacing}")
  params = CRFParams(*(float(v) for v in params[:5]), int(params.iterations))
  if min(params.alpha, params.beta, params.gamma) <= 0:
    raise ValueError(f"kernel widths must be positive; got {params}")
  return _dense_crf(image, probs, params, method, float(grid_spacing))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _dense_crf(image, probs, params, method, spacing):
  h, w = image.shape[-3:-1]
  batch = image.shape[:-3]
  image = image.reshape((-1, h, w, 3))
  probs = probs.reshape((-1, h, w, probs.shape[-1]))
  fn = lambda im, pr: _mean_field(im, pr, params, method, spacing)
  out = jax.vmap(fn)(image, probs)
  return out.reshape(batch + out.shape[1:])


def _kernels(image, params, method, spacing):
  """Returns ``filter(vb, vs) → (K_b vb, K_s vs)`` for (H, W, L) values on the image's pixels."""
  h, w = image.shape[:2]
  feats = _bilateral_features(image, params.alpha, params.beta).reshape(h * w, 5)
  if method == "grid":
    extent = ((h - 1) / params.alpha, (w - 1) / params.alpha) + (255.0 / params.beta,) * 3
    grid = _make_grid(jnp.clip(feats, 0.0, jnp.asarray(extent)), _grid_shape(extent, spacing),
                      spacing)
    bilateral = functools.partial(_grid_filter, grid)
  else:
    bilateral = functools.partial(_exact_filter, feats)

  def filter_both(vb, vs):
    return bilateral(vb.reshape(h * w, -1)).reshape(vb.shape), _spatial_filter(vs, params.gamma)

  return filter_both


def _message_loop(image, unary, q, params, method, spacing, steps, update):
  """Runs ``steps`` loop steps; returns (Q, message of the last step's input Q).

  Step 0 filters ones to get the normalisers ``D^-½ = (K·1)^-½``; every later step computes the
  message ``m = w1 D_b^-½ K_b D_b^-½ Q + w2 D_s^-½ K_s D_s^-½ Q`` and, if ``update``, the
  mean-field step ``Q ← softmax(−U + m)``. Keeping a single filtering call site in one loop body
  compiles the (large) bilateral filter once instead of twice.
  """
  filter_both = _kernels(image, params, method, spacing)

  def body(i, state):
    q, norm_b, norm_s, _ = state
    first = i == 0
    kb, ks = filter_both(jnp.where(first, 1.0, norm_b * q), jnp.where(first, 1.0, norm_s * q))
    norm_b = jnp.where(first, jax.lax.rsqrt(jnp.maximum(kb, 1e-20)), norm_b)
    norm_s = jnp.where(first, jax.lax.rsqrt(jnp.maximum(ks, 1e-20)), norm_s)
    message = params.w1 * norm_b * kb + params.w2 * norm_s * ks
    if update:
      q = jnp.where(first, q, jax.nn.softmax(-unary + message, axis=-1))
    return q, norm_b, norm_s, message

  ones = jnp.ones_like(q)
  q, _, _, message = jax.lax.fori_loop(0, steps, body, (q, ones, ones, jnp.zeros_like(q)))
  return q, message


def _mean_field(image, probs, params, method, spacing):
  unary = unary_from_probs(probs)
  q = jax.nn.softmax(-unary, axis=-1)
  return _message_loop(image, unary, q, params, method, spacing, params.iterations + 1, True)[0]


def mean_field_energy(image: jax.Array, probs: jax.Array, q: jax.Array,
                      params: CRFParams = CRFParams(), *, method: str = "exact",
                      grid_spacing: float = 1.0) -> jax.Array:
  """Mean-field free energy ``KL(Q ‖ P) − log Z`` of marginals ``q`` (up to a constant).

  ``E(Q) = Σᵢ Σ_l Qᵢₗ Uᵢₗ − ½ Σᵢ Σ_l Qᵢₗ mᵢₗ(Q) + Σᵢ Σ_l Qᵢₗ log Qᵢₗ``, m the pairwise message
  of :func:`dense_crf` (the Potts energy with the "same label" bonus written as a negative
  term). Lower is better; the mean-field updates aim to decrease it.

  Args:
    image: (H, W, 3); probs: (H, W, L) the initial probabilities; q: (H, W, L) marginals.
  Returns:
    () float32.
  """
  image, probs = _check_inputs(image, probs)
  params = CRFParams(*(float(v) for v in params[:5]), int(params.iterations))
  return _energy(image, probs, jnp.asarray(q, jnp.float32), params, method, float(grid_spacing))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _energy(image, probs, q, params, method, spacing):
  unary = unary_from_probs(probs)
  message = _message_loop(image, unary, q, params, method, spacing, 2, False)[1]
  entropy = jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0))
  return jnp.sum(q * unary) - 0.5 * jnp.sum(q * message) + entropy


def refine_mask(image: jax.Array, mask: jax.Array, params: CRFParams = CRFParams(),
                **kwargs) -> jax.Array:
  """Dense-CRF refinement of a binary or soft foreground mask (DSM object segmentation).

  Args:
    image: (..., H, W, 3) RGB in 0–255.
    mask: (..., H, W) bool mask, or float foreground probability in [0, 1] (e.g. a bilinearly
      upsampled patch mask).
    params: CRF parameters (DSM's by default).
    **kwargs: ``method`` / ``grid_spacing`` of :func:`dense_crf`.
  Returns:
    (..., H, W) bool refined mask.
  """
  p = jnp.asarray(mask, jnp.float32)
  q = dense_crf(image, jnp.stack([1.0 - p, p], axis=-1), params, **kwargs)
  return q[..., 1] > q[..., 0]


def refine_labels(image: jax.Array, labels: jax.Array, num_labels: int,
                  params: CRFParams = CRFParams(), **kwargs) -> jax.Array:
  """Dense-CRF refinement of a label map given as one-hot probabilities (DSM semantic maps).

  Args:
    image: (..., H, W, 3) RGB in 0–255.
    labels: (..., H, W) int labels in [0, num_labels).
    num_labels: L ≥ 2.
    params: CRF parameters (DSM's by default).
    **kwargs: ``method`` / ``grid_spacing`` of :func:`dense_crf`.
  Returns:
    (..., H, W) int32 refined labels.
  """
  probs = jax.nn.one_hot(jnp.asarray(labels), num_labels, dtype=jnp.float32)
  return jnp.argmax(dense_crf(image, probs, params, **kwargs), axis=-1).astype(jnp.int32)


def dense_crf_pydensecrf(image: np.ndarray, probs: np.ndarray,
                         params: CRFParams = CRFParams()) -> np.ndarray:
  """The same CRF through ``pydensecrf2`` (Krähenbühl's C++ code, permutohedral lattice).

  Reproduces SimpleCRF's ``denseCRF.densecrf(image, probs, params)`` call of the DSM reference
  (same clamp, kernels, normalisation and iteration count), on the host.

  Args:
    image: (H, W, 3) uint8 RGB.
    probs: (H, W, L) probabilities.
    params: CRF parameters.
  Returns:
    (H, W, L) float32 marginals.
  Raises:
    ImportError: ``pydensecrf2`` is not installed (``pip install pydensecrf2``; it builds from
      source and needs a C++ compiler).
  """
  try:
    import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("dense_crf_pydensecrf needs the optional pydensecrf2 package: "
                      "pip install pydensecrf2 (builds from source with a C++ compiler)") from e
  image = np.ascontiguousarray(np.asarray(image, np.uint8))
  probs = np.asarray(probs, np.float32)
  h, w, num_labels = probs.shape
  unary = -np.log(np.clip(probs, *PROB_CLIP)).reshape(-1, num_labels).T
  crf = dcrf.DenseCRF2D(w, h, num_labels)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  crf.addPairwiseBilateral(sxy=params.alpha, srgb=params.beta, rgbim=image, compat=params.w1)
  crf.addPairwiseGaussian(sxy=params.gamma, compat=params.w2)
  q = np.asarray(crf.inference(int(params.iterations)), np.float32)
  return q.T.reshape(h, w, num_labels)


__all__ = [
    "METHODS", "PROB_CLIP", "CRFParams", "dense_crf", "dense_crf_pydensecrf",
    "mean_field_energy", "refine_labels", "refine_mask", "unary_from_probs",
]
