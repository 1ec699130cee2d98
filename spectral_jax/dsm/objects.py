"""Object discovery on the DSM core: the method choice and the multi-object outputs (boxes with
a validity mask, best first, and an instance id map), batched and jit-able.

Methods (``DISCOVERY_METHODS``), all from one pipeline program:

* ``"dsm"`` (the reference): one object, the largest component of the oriented y₁'s positive
  side (``dsm.localisation``).
* ``"tokencut"``: one object, TokenCut's seed component (``dsm.tokencut.tokencut``).
* ``"maskcut"``: up to N objects by MaskCut's repeated cuts (``dsm.tokencut.maskcut``), in cut
  order.
* ``"tokencut+maskcut"`` (the default, ``PipelineConfig.discovery``): the single best object
  and the object mask are exactly ``"tokencut"``'s, the multi-object outputs (``boxes``,
  ``box_valid``, ``instances``) exactly ``"maskcut"``'s. Chosen by the protocol fixed before
  the labelled-photo comparison (BUILD_NOTES "The protocol that chooses the DSM default"):
  TokenCut has the best published single-object CorLoc of the methods that pass the
  determinism and stability gates, MaskCut the published multi-object rule.
* ``"multi_region"``: one object per non-background DSM multi-region segment (the segment's
  largest component), ordered by the share of its patches on the image border, lowest first
  (``region_objects``); its object mask is the segments with at most ``max_border_share`` of
  their patches on the border (``region_mask``: backdrops run off the frame, objects rarely).

Every method gives ``(object_map, objects)``: ``object_map`` (h, w) float is positive exactly
on the object mask (so ``object_map > 0`` is the mask wherever the pipeline's ``fiedler`` is
read), and ``objects`` (M, h, w) bool disjoint masks, best first, empty slots last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spectral_jax import regions

DISCOVERY_METHODS = ("dsm", "tokencut", "maskcut", "multi_region", "tokencut+maskcut")
DEFAULT_DISCOVERY = "tokencut+maskcut"  # TokenCut's box and mask, MaskCut's boxes (protocol)
MAX_OBJECTS = 3          # box slots per image (MaskCut's N = 3)
# multi_region's mask: segments with at most this share of their patches on the border
# (measured on the bundled photos, BUILD_NOTES "Object discovery"; 1 = every segment).
MAX_BORDER_SHARE = 0.1
_TINY = 1e-6             # keeps an object map strictly positive on the mask


def object_map(score: jax.Array, mask: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """A map positive exactly on ``mask``: ``±(|score| + 1e-6)``, 0 on padding.

  Args:
    score: (..., h, w) any map (e.g. the oriented cut vector; its magnitude is kept for
      pictures and bilinear upsampling).
    mask: (..., h, w) bool.
    valid: optional (..., h, w) bool real patches.
  Returns:
    (..., h, w) float32.
  """
  mag = jnp.abs(score).astype(jnp.float32) + _TINY
  out = jnp.where(mask, mag, -mag)
  return out if valid is None else jnp.where(valid, out, 0.0)


def best_first(masks: jax.Array) -> jax.Array:
  """(M, h, w) masks with the non-empty ones first, each group in its given order."""
  empty = ~jnp.any(masks, axis=(-2, -1))
  order = jnp.argsort(empty, stable=True)
  return masks[order]


def boxes_of(objects: jax.Array, *, patch_size: int,
             image_size: tuple[int, int] | None = None) -> tuple[jax.Array, jax.Array]:
  """Pixel boxes of object masks.

  Args:
    objects: (..., M, h, w) bool.
    patch_size: P.
    image_size: (H', W') clip (default (h·P, w·P)).
  Returns:
    ``(boxes (..., M, 4) int32 [x0, y0, x1, y1], 0 for empty slots; present (..., M) bool)``.
  """
  present = jnp.any(objects, axis=(-2, -1))
  boxes = regions.mask_to_box(objects, patch_size=patch_size, image_size=image_size)
  return jnp.where(present[..., None], boxes, 0), present


def instance_map(objects: jax.Array) -> jax.Array:
  """(..., h, w) int32: object m (of (..., M, h, w) disjoint masks) gets id m + 1, else 0."""
  ids = jnp.arange(1, objects.shape[-3] + 1, dtype=jnp.int32)[:, None, None]
  return jnp.max(jnp.where(objects, ids, 0), axis=-3)


def pad_objects(masks: jax.Array, max_objects: int) -> jax.Array:
  """(K, h, w) → (max_objects, h, w): the first max_objects, empty slots appended."""
  k = masks.shape[0]
  if k >= max_objects:
    return masks[:max_objects]
  return jnp.concatenate([masks, jnp.zeros((max_objects - k,) + masks.shape[1:], bool)])


def region_objects(segments: jax.Array, num_segments: int, max_objects: int = MAX_OBJECTS,
                   connectivity: int = 4, valid: jax.Array | None = None) -> jax.Array:
  """One object per non-background multi-region segment: its largest component, best first.

  The score: the share of the component's patches on the image border (the frame cuts
  backdrops, not objects), lowest first; ties by area, largest first, then by label.

  Args:
    segments: (h, w) int32 labels, 0 = background (and padding).
    num_segments: S (labels 1..S−1 are regions).
    max_objects: M slots (the M best components are kept).
    connectivity: of the components.
    valid: optional (h, w) bool real patches (the border is theirs).
  Returns:
    (M, h, w) bool disjoint masks, best first, empty last.
  """
  labels = jnp.arange(1, num_segments, dtype=segments.dtype)[:, None, None]
  comps = regions.largest_component(segments[None] == labels, connectivity)
  areas = jnp.sum(comps, axis=(-2, -1))
  inside = jnp.ones(segments.shape, bool) if valid is None else valid
  ring = regions.border_weights(inside) > 0
  on_border = jnp.sum(comps & ring, axis=(-2, -1)) / jnp.maximum(areas, 1)
  score = jnp.where(areas > 0, on_border, 2.0)  # empty components last
  order = jnp.lexsort((-areas, score))
  return pad_objects(comps[order], max_objects)


def region_mask(segments: jax.Array, objects: jax.Array, num_segments: int,
                max_border_share: float = MAX_BORDER_SHARE,
                valid: jax.Array | None = None) -> jax.Array:
  """multi_region's object mask: the non-background segments that barely touch the border.

  A segment is kept when at most ``max_border_share`` of its patches lie on the image's
  border ring; when none is, the mask is the best object (``objects[0]``), so that an image
  always has one.

  Args:
    segments: (h, w) int32 labels, 0 = background (and padding).
    objects: (M, h, w) bool the image's objects, best first (:func:`region_objects`).
    num_segments: S (labels 1..S−1 are regions).
    max_border_share: in [0, 1]; 1 keeps every non-background segment.
    valid: optional (h, w) bool real patches (the border is theirs).
  Returns:
    (h, w) bool.
  """
  inside = jnp.ones(segments.shape, bool) if valid is None else valid
  ring = regions.border_weights(inside) > 0
  labels = jnp.arange(1, num_segments, dtype=segments.dtype)[:, None, None]
  member = (segments[None] == labels) & inside
  areas = jnp.sum(member, axis=(-2, -1))
  share = jnp.sum(member & ring, axis=(-2, -1)) / jnp.maximum(areas, 1)
  keep = (areas > 0) & (share <= max_border_share)
  mask = jnp.any(member & keep[:, None, None], axis=0)
  return jnp.where(jnp.any(keep), mask, objects[0])


__all__ = [
    "DEFAULT_DISCOVERY", "DISCOVERY_METHODS", "MAX_BORDER_SHARE", "MAX_OBJECTS", "best_first", "boxes_of",
    "instance_map", "object_map", "pad_objects", "region_mask", "region_objects",
]
