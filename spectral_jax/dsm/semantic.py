"""DSM §3.4 semantic segmentation over a dataset: a box per segment, crops, CLS features,
dataset-level clustering, per-image semantic maps (SPEC §4).

Labels are ``BACKGROUND = 0`` and ``cluster c ↦ c + 1``, so cluster 0 never merges into the
background (the DSM reference wrote cluster ids 0..C−1 over a background of 0: a collision).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from spectral_jax import clustering, graphs, regions
from spectral_jax.dsm.multi_region import BACKGROUND

SEMANTIC_NUM_SEGMENTS = 15  # DSM semantic-segmentation runs
NUM_ERODE, NUM_DILATE = 2, 5
CROP_SIZE = 224         # fixed crop size for the CLS features (the reference used native crops)


@functools.partial(jax.jit, static_argnames=("num_segments", "patch_size", "image_size",
                                             "num_erode", "num_dilate"))
def segment_boxes(segments: jax.Array, num_segments: int, *, patch_size: int,
                  image_size: tuple[int, int] | None = None, num_erode: int = NUM_ERODE,
                  num_dilate: int = NUM_DILATE,
                  valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One box per foreground segment (SPEC §4, DSM ``extract_bboxes``).

  Each segment's patch mask is eroded ``num_erode`` times (never to nothing) and dilated
  ``num_dilate`` times (``regions.erode_then_dilate``); its box is the extent (+1) times P,
  clipped to ``image_size``.

  Args:
    segments: (..., h, w) int segment maps, ``BACKGROUND`` = 0.
    num_segments: S, ids in [0, S) (static).
    patch_size: P.
    image_size: (H', W') of the backbone's input frame.
    num_erode, num_dilate: morphology steps (DSM: 2, 5).
    valid: optional (..., h, w) bool real patches of a padded grid (padding is outside).
  Returns:
    ``(boxes (..., S, 4) int32, valid (..., S) bool)``; ``valid`` is False for the background
    (segment 0) and for ids absent from the map; their boxes are the whole image.
  """
  ids = jnp.arange(num_segments)
  masks = segments[..., None, :, :] == ids[:, None, None]
  inside = None if valid is None else valid[..., None, :, :]
  if inside is not None:
    masks = masks & inside
  present = jnp.any(masks, axis=(-2, -1)) & (ids != BACKGROUND)
  grown = regions.erode_then_dilate(masks, num_erode, num_dilate, inside)
  boxes = regions.mask_to_box(grown, patch_size=patch_size, image_size=image_size)
  return boxes, present


@functools.partial(jax.jit, static_argnames=("size",))
def crop_and_resize(images: jax.Array, boxes: jax.Array, size: int = CROP_SIZE,
                    image_hw: jax.Array | None = None) -> jax.Array:
  """Crops boxes out of images and resizes each to size×size (bilinear, antialiased).

  The reference ran the backbone on every crop at its own size; a fixed size keeps one static
  shape (one compiled backbone call for all crops). Taps that fall outside the image are
  dropped and the rest renormalised (``jax.image.scale_and_translate``).

  Args:
    images: (B, H, W, C) float.
    boxes: (B, S, 4) pixel boxes [x0, y0, x1, y1] (non-empty).
    size: output side.
    image_hw: optional (B, 2) int real (height, width) of images padded to (H, W) at the
      bottom/right: padding is then outside the image too (the crop of the pixels divided by
      the crop of their mask), so a crop equals the unpadded image's.
  Returns:
    (B, S, size, size, C) float32.
  """
  chex.assert_rank(images, 4)
  chex.assert_rank(boxes, 3)

  def resample(image, box):
    box = box.astype(jnp.float32)
    scale = size / jnp.maximum(box[2:] - box[:2], 1.0)[::-1]      # (sy, sx)
    shift = -box[:2][::-1] * scale
    return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                         shift, method="linear", antialias=True)

  images = images.astype(jnp.float32)
  if image_hw is None:
    return jax.vmap(jax.vmap(resample, in_axes=(None, 0)))(images, boxes)
  h, w = images.shape[1:3]
  inside = ((jnp.arange(h)[None, :, None] < image_hw[:, :1, None])
            & (jnp.arange(w)[None, None, :] < image_hw[:, 1:, None]))[..., None]
  stacked = jnp.concatenate([jnp.where(inside, images, 0), inside.astype(jnp.float32)], -1)
  out = jax.vmap(jax.vmap(resample, in_axes=(None, 0)))(stacked, boxes)
  return out[..., :-1] / jnp.maximum(out[..., -1:], 1e-12)


def pca(x: jax.Array, dim: int) -> jax.Array:
  """Projects rows on their top ``dim`` principal components (scikit-learn's ``PCA`` up to signs).

  Args:
    x: (M, D) float.
    dim: 1 ≤ dim ≤ min(M, D).
  Returns:
    (M, dim) float32 centred projections.
  """
  x = jnp.asarray(x, jnp.float32)
  if not 1 <= dim <= min(x.shape):
    raise ValueError(f"pca_dim={dim} must lie in [1, min(M, D) = {min(x.shape)}]")
  xc = x - jnp.mean(x, axis=0)
  _, _, vt = jnp.linalg.svd(xc, full_matrices=False)
  return xc @ vt[:dim].T


def cluster_embeddings(key: jax.Array, embeddings: jax.Array, num_clusters: int, *,
                       pca_dim: int = 0, n_init: int = 10) -> jax.Array:
  """Dataset-level clustering of segment embeddings (SPEC §4, DSM ``extract_bbox_clusters``).

  L2-normalise, optionally project on ``pca_dim`` principal components, K-means into C clusters
  (the reference: MiniBatchKMeans; here full Lloyd with k-means++, ``clustering.kmeans``).

  Args:
    key: PRNG key.
    embeddings: (M, D) one row per segment crop (e.g. the CLS token).
    num_clusters: C ≤ M (VOC: 20).
    pca_dim: 0 = no PCA (reference default).
    n_init: K-means restarts.
  Returns:
    (M,) int32 cluster ids in [0, C).
  """
  x = jnp.asarray(embeddings)
  chex.assert_rank(x, 2)
  if num_clusters > x.shape[0]:
    raise ValueError(f"{num_clusters} clusters requested but only {x.shape[0]} segments were "
                     "found: lower the number of clusters or add images")
  x = graphs.l2_normalize(x.astype(jnp.float32))
  if pca_dim:
    x = pca(x, pca_dim)
  return clustering.kmeans(key, x, int(num_clusters), n_init=n_init).labels


def semantic_map(segments: jax.Array, segment_clusters: jax.Array,
                 valid: jax.Array | None = None) -> jax.Array:
  """Maps every segment to its dataset cluster, keeping the background distinct.

  Args:
    segments: (..., h, w) int segment maps, 0 = background.
    segment_clusters: (..., S) int cluster id in [0, C) of each segment id.
    valid: optional (..., S) bool; invalid segments (and segment 0) become background.
  Returns:
    (..., h, w) int32 semantic labels: ``BACKGROUND`` (0) or cluster + 1 in [1, C].
  """
  s = jnp.asarray(segments).astype(jnp.int32)
  c = jnp.asarray(segment_clusters).astype(jnp.int32)
  ids = jnp.arange(c.shape[-1])
  keep = ids != BACKGROUND
  if valid is not None:
    keep = keep & jnp.asarray(valid, bool)
  lookup = jnp.where(keep, c + 1, BACKGROUND)
  flat = s.reshape(s.shape[:-2] + (-1,))
  return jnp.take_along_axis(lookup, flat, axis=-1).reshape(s.shape)
