"""Segmentation and localisation metrics (SPEC §4–5), jit-able.

* Semantic segmentation: :func:`confusion_matrix` (``fast_hist``: one bincount; pool it over a
  dataset by summing), then :func:`iou_per_class`, :func:`mean_iou` (:func:`mean_over_classes`),
  :func:`pixel_accuracy`, :func:`mean_accuracy`. Confusion matrices have ground-truth classes on
  the rows and predictions on the columns (scikit-learn's convention); a (classes × clusters)
  confusion is matched and scored by ``protocols.semantic_scores``.
* Single-object segmentation: :func:`mask_iou`, :func:`mask_accuracy` per image.
* Localisation: :func:`box_iou` and :func:`corloc_hits` (the one CorLoc hit rule). Boxes are
  pixel boxes ``[x0, y0, x1, y1]`` with x1, y1 exclusive, so a box's area is
  ``(x1 − x0)·(y1 − y0)``.

Everything here is per image (or per batch of images) and jit-able; pooling over a dataset,
cluster → class matching and the papers' dataset figures are :mod:`spectral_jax.protocols`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Pixels labelled IGNORE_INDEX (VOC's object boundaries and "void", Pascal Context's and ADE20K's
# reduced-away class 0, Cityscapes' void ids, COCO crowds) count nowhere. The one definition:
# datasets, transforms and the protocols import it.
IGNORE_INDEX = 255


@functools.partial(jax.jit, static_argnames=("num_classes", "num_preds", "ignore_index"))
def confusion_matrix(target: jax.Array, pred: jax.Array, num_classes: int,
                     num_preds: int | None = None,
                     ignore_index: int | None = IGNORE_INDEX) -> jax.Array:
  """Confusion counts ``n[c, p]``: pixels of ground-truth class c predicted as p.

  The ``fast_hist`` of semantic segmentation code: one bincount over ``num_preds·c + p``.
  Pixels whose target is ``ignore_index`` or outside [0, num_classes), or whose prediction is
  outside [0, num_preds), are not counted. Sum the result over images to pool a dataset.

  Args:
    target: (...) int ground-truth labels (any shape: images, batches, flat pixels).
    pred: (...) int predictions, same shape (class ids, or cluster ids for matching).
    num_classes: number of ground-truth classes (static).
    num_preds: number of prediction ids (static); default ``num_classes``. Use the number of
      clusters to build the rectangular matrix that cluster → class matching takes.
    ignore_index: label skipped in ``target``; None keeps every in-range label.
  Returns:
    (num_classes, num_preds) int32 counts. Pool on the host in int64 (``np.add``) beyond 2³¹
    pixels.
  """
  target = jnp.asarray(target)
  pred = jnp.asarray(pred)
  if target.shape != pred.shape:
    raise ValueError(f"target and prediction shapes differ: {target.shape} vs {pred.shape}")
  if not (jnp.issubdtype(target.dtype, jnp.integer) and jnp.issubdtype(pred.dtype, jnp.integer)):
    raise TypeError(f"labels must be integers; got {target.dtype} and {pred.dtype}")
  num_preds = num_classes if num_preds is None else num_preds
  t = target.reshape(-1).astype(jnp.int32)
  p = pred.reshape(-1).astype(jnp.int32)
  valid = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_preds)
  if ignore_index is not None:
    valid &= t != ignore_index
  index = jnp.where(valid, t * num_preds + p, 0)
  counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes * num_preds)
  return counts.astype(jnp.int32).reshape(num_classes, num_preds)


def _square(confusion: jax.Array) -> jax.Array:
  c = jnp.asarray(confusion)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f"expected a square (C, C) confusion matrix of matched classes; got shape "
                     f"{c.shape}. Map clusters to classes first (spectral_jax.clustering).")
  return c.astype(jnp.promote_types(c.dtype, jnp.float32))


@jax.jit
def iou_per_class(confusion: jax.Array) -> jax.Array:
  """Jaccard index per class, ``n_cc / (n_c· + n_·c − n_cc)``.

  Args:
    confusion: (C, C) counts, rows ground truth, columns predictions.
  Returns:
    (C,) float. A class absent from both ground truth and prediction has no IoU: it is NaN
    there, on purpose, and :func:`mean_iou` skips (or zero-fills) it.
  """
  c = _square(confusion)
  tp = jnp.diagonal(c)
  union = c.sum(axis=0) + c.sum(axis=1) - tp
  return jnp.where(union > 0, tp / jnp.where(union > 0, union, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames=("absent",))
def mean_iou(confusion: jax.Array, absent: str = "skip") -> jax.Array:
  """Mean Jaccard index over classes (SPEC §4 semantic mIoU; §5 NeuralEF mIoU).

  Args:
    confusion: (C, C) counts pooled over the dataset.
    absent: "skip" averages over the classes present in the ground truth or the prediction
      (mmseg's ``nanmean``, used by the NeuralEF segmentor); "zero" averages over all C classes
      with IoU 0 for absent ones (the DSM evaluation script).
  Returns:
    () float; NaN only if the confusion matrix is all zeros (nothing was counted).
  """
  return mean_over_classes(iou_per_class(confusion), absent=absent)


ABSENT_RULES = ("skip", "zero")


@functools.partial(jax.jit, static_argnames=("absent",))
def mean_over_classes(values: jax.Array, absent: str = "skip") -> jax.Array:
  """Mean of per-class values that are NaN for classes with no value (:func:`iou_per_class`).

  Args:
    values: (C,) float per class, NaN where the class is absent.
    absent: "skip" (``nanmean``: the mean over classes with a value) or "zero" (NaN counts as 0,
      the mean is over all C classes).
  Returns:
    () float; NaN for "skip" when every value is NaN.
  """
  values = jnp.asarray(values)
  if absent == "skip":
    return jnp.nanmean(values)
  if absent == "zero":
    return jnp.mean(jnp.nan_to_num(values, nan=0.0))
  raise ValueError(f"absent must be one of {ABSENT_RULES}; got {absent!r}")


@jax.jit
def pixel_accuracy(confusion: jax.Array) -> jax.Array:
  """Fraction of counted pixels whose prediction equals the ground truth, ``Σ n_cc / Σ n``.

  Args:
    confusion: (C, C) counts.
  Returns:
    () float (NaN only for an all-zero matrix).
  """
  c = _square(confusion)
  return jnp.trace(c) / jnp.sum(c)


@jax.jit
def mean_accuracy(confusion: jax.Array) -> jax.Array:
  """Per-class recall ``n_cc / n_c·`` averaged over classes present in the ground truth."""
  c = _square(confusion)
  total = c.sum(axis=1)
  recall = jnp.where(total > 0, jnp.diagonal(c) / jnp.where(total > 0, total, 1.0), jnp.nan)
  return jnp.nanmean(recall)


@jax.jit
def mask_iou(pred: jax.Array, target: jax.Array, empty_value: float = 0.0) -> jax.Array:
  """Per-image IoU of binary masks (DSM single-object segmentation, SPEC §4).

  Args:
    pred: (..., H, W) bool (or 0/1) predicted foreground.
    target: (..., H, W) bool ground-truth foreground.
    empty_value: IoU when both masks are empty (0/0); the DSM reference reports 0.
  Returns:
    (...) float32 IoU per image; average over images for the dataset figure.
  """
  p, t = _binary_pair(pred, target)
  inter = jnp.sum(p & t, axis=(-2, -1))
  union = jnp.sum(p | t, axis=(-2, -1))
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), empty_value).astype(jnp.float32)


@jax.jit
def mask_accuracy(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-image fraction of pixels where the binary masks agree.

  Args:
    pred, target: (..., H, W) bool masks.
  Returns:
    (...) float32.
  """
  p, t = _binary_pair(pred, target)
  return jnp.mean(p == t, axis=(-2, -1), dtype=jnp.float32)


def _binary_pair(pred, target):
  p, t = jnp.asarray(pred), jnp.asarray(target)
  if p.shape != t.shape or p.ndim < 2:
    raise ValueError(f"masks must share a shape (..., H, W); got {p.shape} and {t.shape}")
  return p.astype(bool), t.astype(bool)


def box_area(boxes: jax.Array) -> jax.Array:
  """Area of (..., 4) boxes [x0, y0, x1, y1] (x1, y1 exclusive); 0 for degenerate boxes."""
  b = jnp.asarray(boxes)
  return jnp.maximum(b[..., 2] - b[..., 0], 0) * jnp.maximum(b[..., 3] - b[..., 1], 0)


@jax.jit
def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise IoU of pixel boxes.

  Args:
    boxes1: (..., N, 4) boxes [x0, y0, x1, y1], x1/y1 exclusive (any real dtype).
    boxes2: (..., M, 4) boxes, same leading dims.
  Returns:
    (..., N, M) float32 IoU; 0 where both boxes are empty.
  """
  b1 = jnp.asarray(boxes1, jnp.float32)[..., :, None, :]
  b2 = jnp.asarray(boxes2, jnp.float32)[..., None, :, :]
  if b1.shape[-1] != 4 or b2.shape[-1] != 4:
    raise ValueError(f"boxes must end in 4 coordinates; got {boxes1.shape} and {boxes2.shape}")
  w = jnp.maximum(jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0]), 0)
  h = jnp.maximum(jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1]), 0)
  inter = w * h
  union = box_area(b1) + box_area(b2) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


@jax.jit
def corloc_hits(pred_boxes: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array | None = None,
                threshold: float = 0.5) -> jax.Array:
  """CorLoc hit per image: IoU ≥ ``threshold`` with any ground-truth box (SPEC §4).

  Args:
    pred_boxes: (..., 4) one predicted box per image.
    gt_boxes: (..., G, 4) ground-truth boxes, padded to G per image.
    gt_valid: optional (..., G) bool, False for padding rows.
    threshold: IoU threshold, 0.5 in the DSM / LOST protocol.
  Returns:
    (...) bool; CorLoc is its mean over the dataset.
  """
  iou = box_iou(jnp.asarray(pred_boxes)[..., None, :], gt_boxes)[..., 0, :]
  hit = iou >= threshold
  if gt_valid is not None:
    hit &= jnp.asarray(gt_valid, bool)
  return jnp.any(hit, axis=-1)


__all__ = [
    "ABSENT_RULES", "IGNORE_INDEX", "box_area", "box_iou", "confusion_matrix", "corloc_hits",
    "iou_per_class", "mask_accuracy", "mask_iou", "mean_accuracy", "mean_iou",
    "mean_over_classes", "pixel_accuracy",
]
