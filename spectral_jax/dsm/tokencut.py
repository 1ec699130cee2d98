"""TokenCut and MaskCut: normalised cuts of a binarised key graph (SPEC §7), on this project's
eigensolver, jit-able, per image (``jax.vmap`` them over a batch).

* TokenCut (Wang et al., CVPR 2022; ``object_discovery.ncut``): ``A_ij = 1`` if
  ``cos(k_i, k_j) > τ`` else ε (τ = 0.2, ε = 1e-5, self-loops included), the second smallest
  generalised eigenvector v of ``(D − A) x = λ D x``, the bipartition ``v > mean(v)``; the side
  holding the patch of largest |v| (the seed) is the foreground, and the object is the seed's
  4-connected component (``scipy.ndimage.label``'s default structure) with its box.
* MaskCut (CutLER, Wang et al., CVPR 2023; ``maskcut_forward``): N = 3 such cuts at τ = 0.15.
  Before cut i the features of every patch found so far are set to 0 (so those patches'
  similarities are 0 and their edges ε); the seed's side is reversed when it holds 3 or more
  of the image's 4 corner patches (object-centric prior; see :func:`orient` for the reference's
  sign dependence); the seed is then the oriented vector's argmax. A cut's mask is dropped (all zero) when its IoU
  with the previous cut's mask exceeds 0.5 or it covers at most 1% of the patches, and each
  kept mask loses the patches of the masks before it. The cuts run as a ``lax.scan`` on device.
* The scale-free threshold (not in the papers): ``τ`` = the ``tau_quantile`` quantile of the
  image's off-diagonal similarities (``similarity_quantile``), because a fixed τ tuned on DINO
  v1 makes the graph of DINOv2 keys (cosines 0.73–0.98) complete. ``tau_quantile=None`` keeps
  the published fixed τ.

Padding: ``valid`` (h, w) marks an image's real patches (a top-left rectangle); padded nodes take
no part in the graph (the eigensolver's ``valid``), the mean, the seed, the corners, the areas
or the quantile, and every map is 0/False there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spectral_jax import eigensolvers, regions

TAU = 0.2                 # TokenCut's published threshold (DINO ViT-S/16 keys)
MASKCUT_TAU = 0.15        # MaskCut's (CutLER README: DINO ViT-B/8 keys)
EPS = 1e-5                # weight of a non-edge
NUM_CUTS = 3              # MaskCut's N
CORNER_REVERSE = 3        # MaskCut reverses a cut with at least this many corners on its side
MAX_OVERLAP = 0.5         # MaskCut drops a mask with IoU above this with the previous one
MIN_AREA = 0.01           # ... or covering at most this fraction of the patches
CONNECTIVITY = 4          # scipy.ndimage.label's default, as both references call it
CUT_RULES = ("seed", "border")  # which side of a cut is the object (see orient)
_NORM_EPS = 1e-12         # torch.nn.functional.normalize's eps
_RADIX_BITS = 16          # similarity_quantile's two histogram passes of 2¹⁶ bins


def cosine_similarity(features: jax.Array) -> jax.Array:
  """``F̂ F̂ᵀ`` of L2-normalised rows (a zero row stays zero, as ``F.normalize``).

  Args:
    features: (..., n, d).
  Returns:
    (..., n, n) float32.
  """
  f = features.astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), _NORM_EPS)
  return jnp.einsum("...id,...jd->...ij", f, f, precision=jax.lax.Precision.HIGHEST)


def _sortable(x: jax.Array) -> jax.Array:
  """float32 → uint32 keys in the same order (sign bit set: all bits flipped; else sign set)."""
  u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))


def _unsortable(u: jax.Array) -> jax.Array:
  bits = jnp.where(u >> 31 == 1, u & jnp.uint32(0x7FFFFFFF), ~u)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def similarity_quantile(sim: jax.Array, q: float, nodes: jax.Array | None = None) -> jax.Array:
  """The q-quantile of one graph's off-diagonal similarities among ``nodes``.

  Exactly ``np.quantile(values, q, method="inverted_cdf")`` (the r-th smallest value,
  r = ⌈q·M⌉ of the M off-diagonal pairs, rank rounded in float32), by a two-pass radix select
  over the float bit patterns: a 65 536-bin histogram of the keys' high 16 bits finds the bin
  holding rank r, a second one of the low 16 bits within that bin finds the value. Two
  scatter-adds over the n² entries, no sort (a bisection needs 32 counting passes: 3× slower
  at n = 3600 on the CPU).

  Args:
    sim: (n, n) symmetric similarities.
    q: in (0, 1).
    nodes: optional (n,) bool nodes taking part (real, not masked out); None: all.
  Returns:
    () float32 τ.
  """
  n = sim.shape[-1]
  nodes = jnp.ones((n,), bool) if nodes is None else nodes
  pairs = (nodes[:, None] & nodes[None, :] & ~jnp.eye(n, dtype=bool)).astype(jnp.int32).ravel()
  keys = _sortable(sim).ravel()
  bins = 1 << _RADIX_BITS
  high = (keys >> _RADIX_BITS).astype(jnp.int32)
  hist = jnp.zeros((bins,), jnp.int32).at[high].add(pairs)
  below = jnp.cumsum(hist)
  count = below[-1]
  rank = jnp.maximum(jnp.ceil(q * count.astype(jnp.float32)).astype(jnp.int32), 1)
  top = jnp.searchsorted(below, rank, side="left").astype(jnp.int32)
  before = jnp.where(top > 0, below[jnp.maximum(top - 1, 0)], 0)
  low = (keys & jnp.uint32(bins - 1)).astype(jnp.int32)
  hist = jnp.zeros((bins,), jnp.int32).at[low].add(jnp.where(high == top, pairs, 0))
  bottom = jnp.searchsorted(before + jnp.cumsum(hist), rank, side="left").astype(jnp.uint32)
  return _unsortable((top.astype(jnp.uint32) << _RADIX_BITS) | bottom)


def binary_graph(features: jax.Array, tau: float = TAU, eps: float = EPS, *,
                 tau_quantile: float | None = None, nodes: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """TokenCut's graph of one image: ``A_ij = 1`` if ``cos(f_i, f_j) > τ`` else ε.

  Args:
    features: (n, d) patch features (zero rows for masked-out patches).
    tau: the fixed threshold (used when ``tau_quantile`` is None).
    eps: non-edge weight.
    tau_quantile: τ = this quantile of the off-diagonal similarities among ``nodes``
      (:func:`similarity_quantile`); None: the fixed ``tau``.
    nodes: optional (n,) bool nodes in the graph; the rows and columns of the others are ε
      (the reference's zeroed features give that whenever τ ≥ 0).
  Returns:
    ``(A (n, n) float32, τ () float32)``.
  """
  sim = cosine_similarity(features)
  if tau_quantile is None:
    t = jnp.asarray(tau, jnp.float32)
  else:
    t = similarity_quantile(sim, tau_quantile, nodes)
  a = jnp.where(sim > t, 1.0, eps).astype(jnp.float32)
  if nodes is not None:
    a = jnp.where(nodes[:, None] & nodes[None, :], a, eps)
  return a, t


def second_eigenvector(a: jax.Array, valid: jax.Array | None = None, method: str = "auto",
                       tol: float | None = None) -> tuple[jax.Array, jax.Array]:
  """The second smallest generalised eigenpair of ``(D − A) x = λ D x`` (``xᵀ D x = 1``).

  ``eigensolvers.laplacian_eigenvectors(A, 2)``: the normalised form ``D^-½ A D^-½`` with its
  top eigenvector deflated (dense ``eigh`` up to 450 nodes, LOBPCG above for "auto").

  Args:
    a: (n, n) symmetric affinity.
    valid: optional (n,) bool real nodes.
    method: "auto", "eigh" or "lobpcg".
    tol: LOBPCG's relative-residual tolerance; None: ``eigensolvers.default_tol``.
  Returns:
    ``(v (n,) with 0 on padding, converged () bool)``; its sign is arbitrary.
  """
  lam, y, info = eigensolvers.laplacian_eigenvectors(a, 2, method=method, tol=tol, valid=valid,
                                                     return_info=True)
  del lam
  return y[:, 1], jnp.all(info.converged)


def orient(v: jax.Array, valid: jax.Array, corner_rule: bool = False, rule: str = "seed"
           ) -> tuple[jax.Array, jax.Array]:
  """The foreground side of a cut: ``s·(v − mean) > 0`` with s = ±1 as the references choose.

  TokenCut: s puts the seed (argmax |v|) on the foreground side. MaskCut (``corner_rule``):
  then s is flipped when that side holds 3 or more of the image's 4 corner patches.

  The MaskCut code tests the corners on ``v > mean`` for the sign its ``eigh`` happened to
  return, so its result depends on that arbitrary sign: with the seed on the ``v > mean`` side
  it is the rule above; with the other sign the corner test never fires (a seed side with ≥ 3
  corners is kept). This function is sign-invariant and gives the first case, the prior the
  CutLER paper states (``testing.maskcut_reference`` fixes eigh's sign to match).

  Args:
    v: (h, w) cut vector (any sign).
    valid: (h, w) bool real patches (a top-left rectangle).
    corner_rule: MaskCut's object-centric reversal.
    rule: "seed" (the references, above) or "border" (not in the papers): the side of the mean
      split covering at most half of the image's border patches is the foreground, as
      ``dsm.border_side`` for DSM; ``corner_rule`` is then not used.
  Returns:
    ``(oriented (h, w) = s·(v − mean), 0 on padding; seed () int32 flat index)``; the
    foreground is ``oriented > 0`` and the seed (the argmax of s·v) lies in it.
  """
  if rule not in CUT_RULES:
    raise ValueError(f"rule must be one of {CUT_RULES}; got {rule!r}")
  count = jnp.maximum(jnp.sum(valid), 1)
  mean = jnp.sum(jnp.where(valid, v, 0)) / count
  seed_abs = jnp.argmax(jnp.where(valid, jnp.abs(v), -1.0).ravel())
  s = jnp.where(v.ravel()[seed_abs] > mean, 1.0, -1.0)
  if rule == "border":
    ring = regions.border_weights(valid) > 0
    above = jnp.sum(ring & (v > mean))
    s = jnp.where(above > jnp.sum(ring) / 2, -1.0, 1.0)
  elif corner_rule:
    side = valid & (s * (v - mean) > 0)
    rows, cols = jnp.sum(valid[:, 0]), jnp.sum(valid[0, :])
    corners = (side[0, 0].astype(jnp.int32) + side[0, cols - 1] + side[rows - 1, 0]
               + side[rows - 1, cols - 1])
    s = jnp.where(corners >= CORNER_REVERSE, -s, s)
  oriented = jnp.where(valid, s * (v - mean), 0.0)
  seed = jnp.argmax(jnp.where(valid, s * v, -jnp.inf).ravel()).astype(jnp.int32)
  return oriented, seed


def seed_component(foreground: jax.Array, seed: jax.Array,
                   connectivity: int = CONNECTIVITY) -> jax.Array:
  """The connected component of ``foreground`` (h, w) holding the flat index ``seed``
  (empty if the seed is not foreground)."""
  labels = regions.label_components(foreground, connectivity)
  at_seed = labels.ravel()[seed]
  return foreground & (labels == at_seed) & (at_seed >= 0)


def tokencut(features: jax.Array, valid: jax.Array, *, tau: float = TAU, eps: float = EPS,
             tau_quantile: float | None = None, method: str = "auto", tol: float | None = None,
             connectivity: int = CONNECTIVITY, rule: str = "seed"):
  """TokenCut on one image.

  Args:
    features: (n, d) patch features (TokenCut: last-block keys), n = h·w.
    valid: (h, w) bool real patches.
    tau, eps, tau_quantile: see :func:`binary_graph`.
    method, tol: eigensolver and LOBPCG tolerance, see :func:`second_eigenvector`.
    connectivity: of the seed's component (4 as the reference).
    rule: the foreground side, "seed" (TokenCut) or "border" (:func:`orient`).
  Returns:
    ``(oriented (h, w) float, component (h, w) bool, converged () bool)``: the foreground side
    is ``oriented > 0``; the object is ``component``.
  """
  h, w = valid.shape
  flat = valid.reshape(h * w)
  a, _ = binary_graph(features, tau, eps, tau_quantile=tau_quantile, nodes=flat)
  v, ok = second_eigenvector(a, flat, method, tol)
  oriented, seed = orient(v.reshape(h, w), valid, rule=rule)
  return oriented, seed_component(oriented > 0, seed, connectivity), ok


def _iou(a: jax.Array, b: jax.Array) -> jax.Array:
  union = jnp.sum(a | b)
  return jnp.where(union > 0, jnp.sum(a & b) / jnp.maximum(union, 1), 0.0)


def maskcut(features: jax.Array, valid: jax.Array, *, num_cuts: int = NUM_CUTS,
            tau: float = MASKCUT_TAU, eps: float = EPS, tau_quantile: float | None = None,
            method: str = "auto", tol: float | None = None, connectivity: int = CONNECTIVITY,
            rule: str = "seed"):
  """MaskCut on one image: ``num_cuts`` cuts, each on the graph without the patches found.

  Args:
    features: (n, d) patch features (MaskCut: last-block keys), n = h·w.
    valid: (h, w) bool real patches.
    num_cuts: N (static).
    tau, eps, tau_quantile: see :func:`binary_graph` (the quantile counts the patches still
      in the graph).
    method, tol: eigensolver and LOBPCG tolerance (:func:`second_eigenvector`).
    connectivity: of each seed's component.
    rule: the foreground side, "seed" (MaskCut: seed and corner prior) or "border"
      (:func:`orient`).
  Returns:
    ``(oriented (N, h, w) float per cut, masks (N, h, w) bool, converged () bool)``; a dropped
    cut's mask is empty; masks are disjoint, in cut order.
  """
  h, w = valid.shape
  flat = valid.reshape(h * w)
  real = jnp.maximum(jnp.sum(valid), 1)

  def cut(carry, i):
    painting, previous, ok = carry
    nodes = flat & ~painting.reshape(h * w)
    feats = jnp.where(painting.reshape(h * w, 1), 0.0, features.astype(jnp.float32))
    a, _ = binary_graph(feats, tau, eps, tau_quantile=tau_quantile, nodes=nodes)
    v, converged = second_eigenvector(a, flat, method, tol)
    oriented, seed = orient(v.reshape(h, w), valid, corner_rule=True, rule=rule)
    mask = seed_component(oriented > 0, seed, connectivity)
    drop = (i > 0) & ((_iou(previous, mask) > MAX_OVERLAP) | (jnp.sum(mask) / real <= MIN_AREA))
    mask = mask & ~drop
    return (painting | mask, mask, ok & converged), (oriented, mask & ~painting)

  empty = jnp.zeros((h, w), bool)
  (_, _, ok), (oriented, masks) = jax.lax.scan(cut, (empty, empty, jnp.bool_(True)),
                                               jnp.arange(num_cuts))
  return oriented, masks, ok


__all__ = [
    "CONNECTIVITY", "CORNER_REVERSE", "CUT_RULES", "EPS", "MASKCUT_TAU", "MAX_OVERLAP", "MIN_AREA",
    "NUM_CUTS", "TAU", "binary_graph", "cosine_similarity", "maskcut", "orient",
    "second_eigenvector", "seed_component", "similarity_quantile", "tokencut",
]
