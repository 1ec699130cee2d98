"""The papers' dataset-level scoring protocols, on the host (SPEC §4–8).

Pure functions over NumPy arrays (pooled over a dataset; per-image, jit-able pieces are in
:mod:`spectral_jax.metrics`), each checked against hand-made cases and NumPy references:

* :func:`corloc` — LOST / DSM / TokenCut: one predicted box per image; a hit when its IoU with
  ANY ground-truth box of the image (difficult ones included) is ≥ 0.5
  (``metrics.corloc_hits``, :func:`corloc_per_image`); images without boxes count as misses
  (LOST's loop); CorLoc = hits / images.
* :func:`object_recall` — multi-object discovery: the fraction of ground-truth boxes matched
  one-to-one (greedy, predictions in their order) at IoU ≥ 0.5.
* :func:`ap50` — class-agnostic AP at IoU 0.5 by pycocotools' ``COCOeval`` (exclusive pixel
  boxes converted to COCO's xywh; ignored boxes as ``iscrowd``).
* :class:`SingleObjectScores` — DSM single-object segmentation (``object-segmentation/
  metrics.py``): per-image IoU (0 when both masks are empty) and pixel accuracy, averaged over
  images; maxFβ with β² = 0.3 over the 254 thresholds ``t = k/255, k = 1..254`` of a score map
  in [0, 1] (``pred > t``): precision (1 for an empty prediction) and recall (1 for an empty
  ground truth) per image (:func:`precision_recall`), Fβ = (1 + β²)PR / (β²P + R) (0 where
  undefined, :func:`f_beta`), averaged over images per threshold, then the maximum over
  thresholds. For a binary mask every threshold gives the same mask, so maxFβ is the mean Fβ.
* :func:`confusion_counts` — one image's (classes × clusters) confusion, checked, in int64
  (``metrics.confusion_matrix``; ``metrics.IGNORE_INDEX`` ignored): sum it over a dataset.
* :func:`semantic_scores` — THE matched mIoU of unsupervised semantic segmentation: clusters
  matched to classes on the pooled confusion (:func:`match_clusters`) by the Hungarian
  algorithm on IoU (DSM ``eval_utils.hungarian_match``; with more clusters than classes the
  clusters left over are `UNMATCHED` and their pixels count as errors, as the NeuralEF
  segmentor's evaluation does) or by majority vote (NeuralEF, many clusters to one class);
  then mIoU and pixel accuracy of the matched confusion.
* :func:`sliding_window` — dense prediction over overlapping crops of a large image
  (mmsegmentation's ``slide_inference``: last window flush with the border, logits averaged
  over the windows covering each pixel; :func:`window_starts`).

Boxes are pixel boxes ``[x0, y0, x1, y1]`` with x1, y1 exclusive. Running a method over a
dataset is elsewhere: ``dsm.evaluate`` (DSM) and ``neuralef.evaluate`` (NeuralEF).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from spectral_jax import clustering, metrics

__all__ = [
    "BETA_SQ", "CORLOC_THRESHOLD", "F_THRESHOLDS", "MATCHINGS", "UNMATCHED",
    "SingleObjectScores", "ap50", "confusion_counts", "corloc", "corloc_per_image", "f_beta",
    "match_clusters", "object_recall", "precision_recall", "semantic_scores", "sliding_window",
    "window_starts",
]

CORLOC_THRESHOLD = 0.5
BETA_SQ = 0.3
F_THRESHOLDS = np.arange(1, 255) / 255.0  # DSM's np.arange(0, 1, 1/255) without 0: 254 values
MATCHINGS = ("majority", "hungarian")
UNMATCHED = -1   # the class of a cluster Hungarian matching leaves over (its pixels are errors)


# ----------------------------------------------------------------------------- boxes


def corloc_per_image(pred_boxes: Sequence, gt_boxes: Sequence,
                     threshold: float = CORLOC_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
  """Each image's CorLoc hit (``metrics.corloc_hits``) and best box IoU, in one padded call.

  Args:
    pred_boxes: per image one box [x0, y0, x1, y1] (pixels, x1/y1 exclusive).
    gt_boxes: per image (G, 4) boxes in the same convention (G may be 0: a miss, IoU 0).
    threshold: the IoU a hit needs.
  Returns:
    ``(hits (N,) bool, best_iou (N,) float32)``.
  Raises:
    ValueError: different numbers of images, or malformed boxes.
  """
  gts = [_check_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
  preds = [_check_boxes(np.reshape(b, (1, -1)), f"pred_boxes[{i}]")
           for i, b in enumerate(_per_image("pred_boxes", pred_boxes, len(gts)))]
  if not gts:
    return np.zeros((0,), bool), np.zeros((0,), np.float32)
  most = max(1, max(len(g) for g in gts))
  padded = np.zeros((len(gts), most, 4), np.float32)
  valid = np.zeros((len(gts), most), bool)
  for i, g in enumerate(gts):
    padded[i, :len(g)], valid[i, :len(g)] = g, True
  boxes = np.concatenate(preds).astype(np.float32)
  hits = np.asarray(metrics.corloc_hits(boxes, padded, valid, threshold))
  ious = np.asarray(metrics.box_iou(boxes[:, None], padded))[:, 0]
  return hits, np.where(valid, ious, 0.0).max(axis=1).astype(np.float32)


def corloc(pred_boxes: Mapping[str, object], gt_boxes: Mapping[str, object],
           threshold: float = CORLOC_THRESHOLD) -> dict:
  """CorLoc over images (LOST's protocol): the mean of :func:`corloc_per_image`'s hits.

  Args:
    pred_boxes: image id → one box [x0, y0, x1, y1] (pixels, x1/y1 exclusive).
    gt_boxes: image id → (G, 4) boxes in the same convention (G may be 0: a miss); every id
      of ``pred_boxes`` must be present.
  Returns:
    {"corloc": hits / images (fraction), "num_images", "num_hits", "threshold"}.
  Raises:
    ValueError: no images, an image without ground truth, or malformed boxes.
  """
  missing = sorted(set(pred_boxes) - set(gt_boxes))
  if missing:
    raise ValueError(f"no ground truth for {len(missing)} predicted images (first: "
                     f"{missing[0]!r})")
  if not pred_boxes:
    raise ValueError("corloc of zero images is undefined")
  hits, _ = corloc_per_image(list(pred_boxes.values()), [gt_boxes[k] for k in pred_boxes],
                             threshold)
  num_hits = int(hits.sum())
  return {"corloc": num_hits / len(hits), "num_images": len(hits), "num_hits": num_hits,
          "threshold": threshold}


def _check_boxes(boxes, what: str) -> np.ndarray:
  b = np.asarray(boxes, np.float64)
  if b.size == 0:
    return b.reshape(0, 4)
  if b.ndim != 2 or b.shape[1] != 4:
    raise ValueError(f"{what} must be (N, 4) boxes [x0, y0, x1, y1]; got shape {b.shape}")
  if not np.all(np.isfinite(b)):
    raise ValueError(f"{what} holds NaN or Inf coordinates")
  return b


def _per_image(name: str, values, n: int) -> list:
  if len(values) != n:
    raise ValueError(f"{name} has {len(values)} images but the ground truth has {n}")
  return list(values)


def object_recall(pred_boxes: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                  iou_threshold: float = CORLOC_THRESHOLD) -> dict:
  """Multi-object recall: the fraction of ground-truth boxes found (issue #15's protocol).

  Per image, predictions are taken in their order (best first); each one is matched to the
  not yet matched ground-truth box of highest IoU, if that IoU is ≥ ``iou_threshold`` (greedy,
  one-to-one). Recall = matched ground-truth boxes / all ground-truth boxes over all images.

  Args:
    pred_boxes: per image a (P, 4) array of pixel boxes [x0, y0, x1, y1] (x1/y1 exclusive),
      best first (P may be 0).
    gt_boxes: per image a (G, 4) array in the same convention (G may be 0).
    iou_threshold: the IoU a match needs.
  Returns:
    {"recall", "num_gt", "num_matched", "iou_threshold"}.
  Raises:
    ValueError: different numbers of images, malformed boxes, or no ground-truth box at all
      (recall is undefined).
  """
  gts = [_check_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
  preds = [_check_boxes(p, f"pred_boxes[{i}]")
           for i, p in enumerate(_per_image("pred_boxes", pred_boxes, len(gts)))]
  num_gt = sum(len(g) for g in gts)
  if num_gt == 0:
    raise ValueError("object recall is undefined without ground-truth boxes")
  matched = 0
  for p, g in zip(preds, gts):
    if not len(p) or not len(g):
      continue
    ious = np.asarray(metrics.box_iou(p, g), np.float64)
    free = np.ones(len(g), bool)
    for row in ious:
      row = np.where(free, row, -1.0)
      j = int(np.argmax(row))
      if row[j] >= iou_threshold:
        free[j] = False
        matched += 1
  return {"recall": matched / num_gt, "num_gt": num_gt, "num_matched": matched,
          "iou_threshold": iou_threshold}


def ap50(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray],
         gt_boxes: Sequence[np.ndarray], *, gt_ignore: Sequence[np.ndarray] | None = None,
         max_detections: int = 100) -> float:
  """Class-agnostic average precision at IoU 0.5, computed by pycocotools' ``COCOeval``.

  Every box is one category; our exclusive pixel boxes [x0, y0, x1, y1] become COCO's
  continuous ``[x, y, w, h] = [x0, y0, x1 − x0, y1 − y0]`` (pixel x covers [x, x + 1), so a box
  of pixels x0..x1−1 spans [x0, x1)), with ``area = w·h``. COCO's rules then apply: per image
  the ``max_detections`` highest-scoring predictions are matched greedily by score to the
  unmatched ground truth of highest IoU ≥ 0.5; unmatched predictions are false positives;
  precision is interpolated (made non-increasing) and averaged over the 101 recall points
  0, 0.01, ..., 1 (area range "all"). Ignored ground truth (``gt_ignore``) is passed as
  ``iscrowd`` — COCOeval's only ignore mechanism: it counts for no recall, and a prediction
  whose intersection with it covers ≥ 0.5 of the prediction's own area is dropped rather than
  counted as a false positive (several may be).

  Args:
    pred_boxes: per image (P, 4) predicted boxes.
    pred_scores: per image (P,) their scores (higher = more confident).
    gt_boxes: per image (G, 4) ground-truth boxes (G may be 0: an image without objects).
    gt_ignore: per image (G,) bool, True for boxes to ignore (COCO ``iscrowd``); None: none.
    max_detections: COCO's maxDets for AP (100).
  Returns:
    AP50 as a fraction in [0, 1].
  Raises:
    ImportError: pycocotools missing. ValueError: mismatched lengths, malformed boxes or
    scores, or no ground-truth box that is not ignored (AP is undefined).
  """
  try:   # deferred: pycocotools is an optional dependency (the "data" extra)
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("ap50 needs pycocotools: pip install -e '.[data]' (or pip install "
                      "pycocotools)") from e
  gts = [_check_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
  n = len(gts)
  preds = [_check_boxes(p, f"pred_boxes[{i}]")
           for i, p in enumerate(_per_image("pred_boxes", pred_boxes, n))]
  scores = [np.asarray(s, np.float64).reshape(-1)
            for s in _per_image("pred_scores", pred_scores, n)]
  ignore = ([np.zeros(len(g), bool) for g in gts] if gt_ignore is None else
            [np.asarray(f, bool).reshape(-1) for f in _per_image("gt_ignore", gt_ignore, n)])
  for i in range(n):
    if len(scores[i]) != len(preds[i]) or len(ignore[i]) != len(gts[i]):
      raise ValueError(f"image {i}: {len(preds[i])} boxes but {len(scores[i])} scores, or "
                       f"{len(gts[i])} ground-truth boxes but {len(ignore[i])} ignore flags")
    if not np.all(np.isfinite(scores[i])):
      raise ValueError(f"image {i}: scores hold NaN or Inf")
  if not any((~f).any() for f in ignore):
    raise ValueError("AP is undefined without ground-truth boxes that are not ignored")
  if not any(len(p) for p in preds):
    return 0.0
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  anns = [{"image_id": i, "category_id": 1, "bbox": xywh(b), "area": xywh(b)[2] * xywh(b)[3],
           "iscrowd": int(f)} for i in range(n) for b, f in zip(gts[i], ignore[i])]
  for k, a in enumerate(anns):
    a["id"] = k + 1                                   # COCO ids start at 1
  dets = [{"image_id": i, "category_id": 1, "bbox": xywh(b), "score": float(s)}
          for i in range(n) for b, s in zip(preds[i], scores[i])]
  with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints its progress
    truth = COCO()
    truth.dataset = {"images": [{"id": i} for i in range(n)], "annotations": anns,
                     "categories": [{"id": 1, "name": "object"}]}
    truth.createIndex()
    result = truth.loadRes(dets)
    ev = COCOeval(truth, result, "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.maxDets = [int(max_detections)]
    ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
    ev.evaluate()
    ev.accumulate()
  precision = ev.eval["precision"][0, :, 0, 0, 0]   # (101,) recall points; −1: no ground truth
  return float(np.mean(np.maximum(precision, 0.0)))


# ----------------------------------------------------------------------------- masks


def precision_recall(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Precision and recall of binary masks (..., H, W) → (...), 1 where the denominator is 0."""
  p, t = np.asarray(pred, bool), np.asarray(target, bool)
  tp = np.sum(p & t, axis=(-2, -1)).astype(np.float64)
  area_p, area_t = p.sum(axis=(-2, -1)), t.sum(axis=(-2, -1))
  precision = np.where(area_p > 0, tp / np.maximum(area_p, 1), 1.0)
  recall = np.where(area_t > 0, tp / np.maximum(area_t, 1), 1.0)
  return precision, recall


def f_beta(precision, recall, beta_sq: float = BETA_SQ) -> np.ndarray:
  """(1 + β²)PR / (β²P + R), 0 where P = R = 0."""
  p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
  den = beta_sq * p + r
  return np.where(den > 0, (1 + beta_sq) * p * r / np.where(den > 0, den, 1.0), 0.0)


class SingleObjectScores:
  """Streaming single-object segmentation scores (IoU, accuracy, maxFβ); see the module doc.

  ``add(score, target)`` per image (score: (H, W) bool mask or float map in [0, 1]);
  ``result()`` the dataset figures. Memory: one running sum per threshold.
  """

  def __init__(self, thresholds: np.ndarray = F_THRESHOLDS, beta_sq: float = BETA_SQ):
    self.thresholds = np.asarray(thresholds, np.float64)
    self.beta_sq = beta_sq
    self.ious: list[float] = []
    self.accuracies: list[float] = []
    self._f_sum = np.zeros(len(self.thresholds))

  def add(self, score: np.ndarray, target: np.ndarray) -> dict:
    """Scores one image; returns its {"iou", "accuracy", "f_beta"} (f_beta at t = 0.5)."""
    s, t = np.asarray(score), np.asarray(target, bool)
    if s.shape != t.shape or s.ndim != 2:
      raise ValueError(f"prediction {s.shape} and ground truth {t.shape} must be one (H, W)")
    s = s.astype(np.float64)
    if np.any((s < 0) | (s > 1)) or not np.all(np.isfinite(s)):
      raise ValueError("scores must lie in [0, 1] (a bool mask or probabilities)")
    hard = s > 0.5
    iou = float(metrics.mask_iou(hard, t))
    acc = float(np.mean(hard == t))
    # pixels with score > th, overall and among the ground-truth pixels, for every threshold at
    # once: counts above each threshold in the sorted scores (exact, no (T, H, W) array).
    above = lambda v: v.size - np.searchsorted(np.sort(v, axis=None), self.thresholds, "right")
    area_p, tp, area_t = above(s), above(s[t]), int(t.sum())
    precision = np.where(area_p > 0, tp / np.maximum(area_p, 1), 1.0)
    recall = np.where(area_t > 0, tp / max(area_t, 1), 1.0)
    self._f_sum += f_beta(precision, recall, self.beta_sq)
    self.ious.append(iou)
    self.accuracies.append(acc)
    return {"iou": iou, "accuracy": acc,
            "f_beta": float(f_beta(*precision_recall(hard, t), self.beta_sq))}

  def result(self) -> dict:
    n = len(self.ious)
    if n == 0:
      raise ValueError("no image was scored")
    mean_f = self._f_sum / n
    return {"iou": float(np.mean(self.ious)), "accuracy": float(np.mean(self.accuracies)),
            "max_f_beta": float(mean_f.max()),
            "max_f_beta_threshold": float(self.thresholds[int(np.argmax(mean_f))]),
            "beta_sq": self.beta_sq, "num_thresholds": len(self.thresholds), "num_images": n}


# ----------------------------------------------------------------------------- semantic


def confusion_counts(target: np.ndarray, pred: np.ndarray, num_classes: int,
                     num_clusters: int, ignore: int = metrics.IGNORE_INDEX) -> np.ndarray:
  """One image's (num_classes, num_clusters) int64 counts of (class, cluster) pixel pairs.

  The counting is ``metrics.confusion_matrix``; here the labels are checked first (an id out of
  range is an error, not silently dropped) and the pixels are padded to a power of two with an
  uncounted label, so that images of many sizes share a few compiled programs. Sum the result
  over a dataset, then :func:`semantic_scores`.

  Args:
    target: (H, W) (any shape) int ground-truth classes in [0, num_classes), or ``ignore``.
    pred: int cluster ids of the same shape, in [0, num_clusters).
    num_classes, num_clusters: C and M.
    ignore: the target label not counted (``metrics.IGNORE_INDEX``).
  Returns:
    (C, M) int64.
  Raises:
    ValueError: shapes differ, or a label / cluster id is out of range.
  """
  if np.shape(target) != np.shape(pred):
    raise ValueError(f"target {np.shape(target)} and prediction {np.shape(pred)} differ")
  t = np.asarray(target).ravel().astype(np.int32)
  p = np.asarray(pred).ravel().astype(np.int32)
  keep = t != ignore
  if keep.any():
    lo, hi = t[keep].min(), t[keep].max()
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must be in [0, {num_classes}) or {ignore}; got {lo}..{hi}")
    lo, hi = p[keep].min(), p[keep].max()
    if lo < 0 or hi >= num_clusters:
      raise ValueError(f"clusters must be in [0, {num_clusters}); got {lo}..{hi}")
  size = 1 << max(10, int(t.size - 1).bit_length())     # ≥ t.size: few distinct shapes
  t = np.pad(np.where(keep, t, -1), (0, size - t.size), constant_values=-1)  # -1: not counted
  p = np.pad(p, (0, size - p.size))
  counts = metrics.confusion_matrix(t, p, int(num_classes), int(num_clusters), ignore_index=None)
  return np.asarray(counts, np.int64)


def match_clusters(confusion: np.ndarray, matching: str = "hungarian") -> np.ndarray:
  """Cluster → class lookup from a pooled (C classes, M clusters) confusion.

  Args:
    confusion: (C, M) counts; rows ground-truth classes, columns clusters.
    matching: "hungarian" (one-to-one, maximising the summed IoU,
      ``clustering.hungarian_match``; with M > C the M − C clusters left over get `UNMATCHED`)
      or "majority" (every cluster to its highest-IoU class, ``clustering.majority_vote_match``).
  Returns:
    (M,) int64 class per cluster, or `UNMATCHED`.
  Raises:
    ValueError: an unknown matching, or a malformed confusion.
  """
  c = np.asarray(confusion)
  if matching == "majority":
    return clustering.majority_vote_match(c)
  if matching != "hungarian":
    raise ValueError(f"matching must be one of {MATCHINGS}; got {matching!r}")
  if c.ndim != 2 or c.shape[1] <= c.shape[0]:
    return clustering.hungarian_match(c)
  # More clusters than classes: match classes to clusters one-to-one (the IoU matrix of the
  # transposed confusion is the transposed IoU matrix); the clusters no class took are left over.
  lookup = np.full(c.shape[1], UNMATCHED, np.int64)
  lookup[clustering.hungarian_match(c.T)] = np.arange(c.shape[0])
  return lookup


def semantic_scores(confusion: np.ndarray, matching: str = "hungarian",
                    absent: str = "skip") -> dict:
  """mIoU and pixel accuracy after matching clusters to classes: the one matched-mIoU protocol.

  The (C, M) confusion is folded into a (C + 1, C + 1) one: cluster j's column is added to
  column ``lookup[j]`` (:func:`match_clusters`), or to an extra column C for an `UNMATCHED`
  cluster, so that its pixels count as errors (false negatives of their class, and against
  pixel accuracy) without any class's prediction growing. IoU per class, mIoU
  (``metrics.mean_over_classes``) and pixel accuracy are then read on the C classes.

  Args:
    confusion: (num_classes, num_clusters) counts pooled over a dataset
      (:func:`confusion_counts`).
    matching: "hungarian" (one-to-one, DSM; more clusters than classes allowed) or "majority"
      (many-to-one, NeuralEF).
    absent: a class absent from ground truth and prediction: "skip" (NeuralEF, mmseg's
      ``nanmean``) or "zero" (IoU 0, the DSM evaluation script).
  Returns:
    {"miou", "pixel_accuracy" (fractions), "iou_per_class" ((C,) floats, NaN where absent),
    "lookup" ((M,) list: class per cluster, `UNMATCHED` for a cluster left over)}.
  Raises:
    ValueError: an unknown matching or absent rule.
  """
  c = np.asarray(confusion, np.int64)
  if absent not in metrics.ABSENT_RULES:
    raise ValueError(f"absent must be one of {metrics.ABSENT_RULES}; got {absent!r}")
  lookup = match_clusters(c, matching)
  num_classes = c.shape[0]
  matched = np.zeros((num_classes + 1, num_classes + 1), np.int64)
  np.add.at(matched[:num_classes].T, np.where(lookup == UNMATCHED, num_classes, lookup), c.T)
  # float32, not int32 (JAX's default ints): pooled counts of a large set overflow int32 in the
  # unions (Cityscapes val: 1.05e9 pixels); float32 keeps 7 significant digits.
  matched = matched.astype(np.float32)
  iou = np.asarray(metrics.iou_per_class(matched))[:num_classes]
  return {"miou": float(metrics.mean_over_classes(iou, absent=absent)),
          "pixel_accuracy": float(metrics.pixel_accuracy(matched)),
          "iou_per_class": [float(v) for v in iou],
          "lookup": lookup.tolist()}


# ----------------------------------------------------------------------------- sliding window


def _pair(v, name: str) -> tuple[int, int]:
  pair = (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(x) for x in v)
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or (height, width); got {v!r}")
  return pair


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Window offsets along one axis, mmsegmentation's ``slide_inference`` rule.

  ``ceil(max(size − window, 0) / stride) + 1`` windows at ``i·stride``, each clipped so that it
  ends inside the image: the last one is aligned to the border. An axis shorter than the
  window has one window, the whole axis.
  """
  n = max(size - window + stride - 1, 0) // stride + 1
  return [max(min(i * stride + window, size) - window, 0) for i in range(n)]


def sliding_window(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *,
                   window: int | tuple[int, int], stride: int | tuple[int, int]) -> np.ndarray:
  """A dense per-pixel predictor over overlapping crops (mmsegmentation's ``slide_inference``).

  The (H, W) image is covered by a grid of ``window`` crops ``stride`` apart per axis, the last
  row / column aligned to the bottom / right border (:func:`window_starts`); each crop's logits
  are added into place and every pixel divided by the number of windows covering it. An image
  smaller than the window (along an axis) is passed whole along that axis, as mmseg does.
  Sums are in float64, so a pointwise ``fn`` gives exactly ``fn(image)``.

  Args:
    fn: crop (h, w, ...) → logits (h, w, K...) at the crop's resolution (NumPy or JAX).
    image: (H, W, ...) e.g. (H, W, 3) pixels.
    window: crop (height, width), or one int for both (e.g. 448).
    stride: step (height, width) or one int; at most ``window`` so that no pixel is missed.
  Returns:
    (H, W, K...) float32 logits averaged over the windows covering each pixel.
  Raises:
    ValueError: a window or stride < 1, a stride larger than the window, a 0-pixel image, or
      ``fn`` returning logits of another height / width than its crop.
  """
  (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
  if sh > wh or sw > ww:
    raise ValueError(f"stride {(sh, sw)} larger than the window {(wh, ww)} would leave pixels "
                     "that no window covers")
  image = np.asarray(image)
  if image.ndim < 2 or min(image.shape[:2]) < 1:
    raise ValueError(f"image must be (H, W, ...) with H, W ≥ 1; got shape {image.shape}")
  height, width = image.shape[:2]
  total, count = None, np.zeros((height, width), np.int64)
  for y0 in window_starts(height, wh, sh):
    for x0 in window_starts(width, ww, sw):
      y1, x1 = min(y0 + wh, height), min(x0 + ww, width)
      logits = np.asarray(fn(image[y0:y1, x0:x1]))
      if logits.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"fn returned logits of shape {logits.shape} for a crop of "
                         f"{(y1 - y0, x1 - x0)} pixels: it must predict at the crop's size")
      if total is None:
        total = np.zeros((height, width) + logits.shape[2:], np.float64)
      total[y0:y1, x0:x1] += logits
      count[y0:y1, x0:x1] += 1
  return (total / count.reshape(count.shape + (1,) * (total.ndim - 2))).astype(np.float32)
