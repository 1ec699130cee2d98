"""Benchmark protocols of the papers, and DSM evaluated over a dataset (SPEC §6, §8).

Protocols (each a small function over NumPy arrays, checked against hand-made cases):

* :func:`corloc` — LOST / DSM / TokenCut: one predicted box per image; a hit when its IoU with
  ANY ground-truth box of the image (difficult ones included) is ≥ 0.5; images without boxes
  count as misses (LOST's loop); CorLoc = hits / images.
* :class:`SingleObjectScores` — DSM single-object segmentation (``object-segmentation/
  metrics.py``): per-image IoU (0 when both masks are empty) and pixel accuracy, averaged over
  images; maxFβ with β² = 0.3 over the 254 thresholds ``t = k/255, k = 1..254`` of a score map
  in [0, 1] (``pred > t``): precision (1 for an empty prediction) and recall (1 for an empty
  ground truth) per image, Fβ = (1 + β²)PR / (β²P + R) (0 where undefined), averaged over
  images per threshold, then the maximum over thresholds. For a binary mask every threshold
  gives the same mask, so maxFβ is the mean Fβ.
* :func:`semantic_scores` — unsupervised semantic segmentation: a (classes × clusters)
  confusion pooled over the dataset (255 ignored), clusters matched to classes by the
  Hungarian algorithm on IoU (DSM ``eval_utils.hungarian_match``) or by majority vote
  (NeuralEF); mIoU and pixel accuracy of the matched confusion.

* :func:`object_recall` — multi-object discovery: the fraction of ground-truth boxes matched
  one-to-one (greedy, predictions in their order) at IoU ≥ 0.5.
* :func:`ap50` — class-agnostic AP at IoU 0.5 by pycocotools' ``COCOeval`` (exclusive pixel
  boxes converted to COCO's xywh; ignored boxes as ``iscrowd``).
* :func:`sliding_window` — dense prediction over overlapping crops of a large image
  (mmsegmentation's ``slide_inference``: last window flush with the border, logits averaged
  over the windows covering each pixel).

:func:`evaluate_dsm` runs the DSM pipeline over a :class:`~spectral_jax.datasets.DataSource`
(streamed through ``dsm.batching.segment_photos``: memory bounded by the prefetch depth) and
applies the protocol of the dataset's kind: CorLoc and object recall for box datasets,
single-object scores for mask datasets, and for semantic datasets (``voc12_semantic``) DSM's
semantic stage over the whole dataset (:func:`semantic_over_dataset`: one clustering of all
segment crops, then the pooled confusion; two passes, so only the small per-image segment maps
and crop embeddings are held). It never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from spectral_jax import clustering, metrics

__all__ = [
    "BETA_SQ", "CORLOC_THRESHOLD", "F_THRESHOLDS", "PAPER", "Evaluation", "SingleObjectScores",
    "ap50", "check_semantic_setup", "confusion_counts", "corloc", "corloc_hit", "evaluate_dsm",
    "f_beta", "object_recall", "precision_recall", "semantic_over_dataset", "semantic_scores",
    "sliding_window", "window_starts",
]

CORLOC_THRESHOLD = 0.5
BETA_SQ = 0.3
F_THRESHOLDS = np.arange(1, 255) / 255.0  # DSM's np.arange(0, 1, 1/255) without 0: 254 values

# The papers' figures beside which the command prints its measurements (SPEC §6–7; None where
# SPEC quotes no figure). CorLoc in %, single-object IoU as a fraction.
PAPER = {
    "voc07": {"corloc": 62.7, "source": "DSM (FOUND's table, SPEC §7)"},
    "voc12": {"corloc": 66.4, "source": "DSM (FOUND's table, SPEC §6–7)"},
    "ecssd": {"iou": 0.733, "source": "DSM single-object IoU (SPEC §6)"},
    "cub": {"iou": 0.769, "source": "DSM single-object IoU (SPEC §6)"},
    "duts": {"source": "not quoted in SPEC §6"},
    "dut_omron": {"source": "not quoted in SPEC §6"},
    "voc12_semantic": {"miou": 30.8,
                       "source": "DSM semantic mIoU before self-training (SPEC §6)"},
}


# ----------------------------------------------------------------------------- protocols


def corloc_hit(box, gt_boxes, threshold: float = CORLOC_THRESHOLD) -> tuple[bool, float]:
  """(hit, best IoU) of one predicted box against an image's (G, 4) ground-truth boxes."""
  gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
  if len(gt) == 0:
    return False, 0.0
  ious = np.asarray(metrics.box_iou(np.asarray(box, np.float32)[None], gt))[0]
  best = float(ious.max())
  return bool(best >= threshold), best


def corloc(pred_boxes: Mapping[str, object], gt_boxes: Mapping[str, object],
           threshold: float = CORLOC_THRESHOLD) -> dict:
  """CorLoc over images (LOST's protocol).

  Args:
    pred_boxes: image id → one box [x0, y0, x1, y1] (pixels, x1/y1 exclusive).
    gt_boxes: image id → (G, 4) boxes in the same convention; every id of ``pred_boxes``
      must be present.
  Returns:
    {"corloc": hits / images (fraction), "num_images", "num_hits", "threshold"}.
  """
  missing = sorted(set(pred_boxes) - set(gt_boxes))
  if missing:
    raise ValueError(f"no ground truth for {len(missing)} predicted images (first: "
                     f"{missing[0]!r})")
  if not pred_boxes:
    raise ValueError("corloc of zero images is undefined")
  hits = sum(corloc_hit(b, gt_boxes[k], threshold)[0] for k, b in pred_boxes.items())
  return {"corloc": hits / len(pred_boxes), "num_images": len(pred_boxes), "num_hits": hits,
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
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  try:
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


def confusion_counts(target: np.ndarray, pred: np.ndarray, num_classes: int,
                     num_clusters: int, ignore: int = 255) -> np.ndarray:
  """(num_classes, num_clusters) int64 counts of (class, cluster) pixel pairs, ``ignore``
  pixels excluded.

  Raises:
    ValueError: shapes differ, or a label / cluster id is out of range.
  """
  t, p = np.asarray(target).ravel(), np.asarray(pred).ravel()
  if np.shape(target) != np.shape(pred):
    raise ValueError(f"target {np.shape(target)} and prediction {np.shape(pred)} differ")
  keep = t != ignore
  t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
  if t.size and (t.min() < 0 or t.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}) or {ignore}; got {t.min()}..{t.max()}")
  if p.size and (p.min() < 0 or p.max() >= num_clusters):
    raise ValueError(f"clusters must be in [0, {num_clusters}); got {p.min()}..{p.max()}")
  return np.bincount(t * num_clusters + p, minlength=num_classes * num_clusters).reshape(
      num_classes, num_clusters)


def semantic_scores(confusion: np.ndarray, matching: str = "hungarian",
                    absent: str = "skip") -> dict:
  """mIoU and pixel accuracy after mapping clusters to classes.

  Args:
    confusion: (num_classes, num_clusters) pooled counts (:func:`confusion_counts`).
    matching: "hungarian" (one-to-one, DSM) or "majority" (many-to-one, NeuralEF).
    absent: classes absent from ground truth and prediction: "skip" or "zero"
      (``metrics.mean_iou``).
  Returns:
    {"miou", "pixel_accuracy", "iou_per_class", "lookup" (cluster → class)}; mIoU and
    accuracy as fractions.
  """
  c = np.asarray(confusion, np.int64)
  if matching == "hungarian":
    lookup = clustering.hungarian_match(c)
  elif matching == "majority":
    lookup = clustering.majority_vote_match(c)
  else:
    raise ValueError(f"matching must be 'hungarian' or 'majority'; got {matching!r}")
  matched = np.zeros((c.shape[0], c.shape[0]), np.int64)
  np.add.at(matched.T, lookup, c.T)   # column j of c goes to column lookup[j]
  # float32, not int32 (JAX's default ints): pooled counts of a large set overflow int32 in the
  # unions (Cityscapes val: 1.05e9 pixels); float32 keeps 7 significant digits.
  matched = matched.astype(np.float32)
  return {"miou": float(metrics.mean_iou(matched, absent=absent)),
          "pixel_accuracy": float(metrics.pixel_accuracy(matched)),
          "iou_per_class": [float(v) for v in np.asarray(metrics.iou_per_class(matched))],
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


# ----------------------------------------------------------------------------- DSM over a dataset


@dataclasses.dataclass
class Evaluation:
  """What :func:`evaluate_dsm` measured."""
  metrics: dict                    # the protocol's dataset figures (+ "num_images")
  boxes: dict[str, list[int]]      # image id → [x0, y0, x1, y1] pixels, x1/y1 exclusive
  objects: dict[str, list[list[int]]]  # image id → every discovered object's box, best first
  per_image: dict[str, dict]       # image id → its scores (hit / IoU ...)
  failures: dict[str, str]         # image id → why it was skipped


def evaluate_dsm(segmenter, dataset, *, kind: str, image_size: int = 448, batch_size: int = 4,
                 limit: int | None = None, seed: int = 0, upsample: str = "nearest",
                 prefetch: int = 8, bucket_step: int = 8, progress: bool = True,
                 on_error: Callable[[str, Exception], None] | None = None,
                 on_mask: Callable[[str, np.ndarray], None] | None = None,
                 num_clusters: int = 20, pca_dim: int = 0, matching: str = "hungarian",
                 absent: str = "zero", bilateral=None) -> Evaluation:
  """Runs ``segmenter`` (``dsm.make_pipeline``) over ``dataset`` and scores it.

  Args:
    segmenter: the jitted DSM pipeline.
    dataset: a ``datasets.DataSource`` (``len``, ``[i] -> Record``).
    kind: "boxes" (CorLoc of the best box vs the record's boxes; multi-object recall and
      class-agnostic AP50 of all the discovered objects' boxes, ranked best first, VOC's
      ``difficult`` and COCO's crowd boxes ignored for AP), "mask" (single-object
      scores of the DSM object mask at the image's size vs ``record.mask``) or "semantic"
      (DSM §3.4 over the whole dataset, :func:`semantic_over_dataset`; the segmenter must be
      built with ``PipelineConfig(semantic=True)``).
    image_size, batch_size, seed, prefetch, bucket_step: as ``dsm.batching.segment_photos``.
    limit: evaluate the first ``limit`` images only (None: all).
    upsample: the object mask's upsampling ("nearest", the reference, or "bilinear").
    progress: a tqdm bar on stderr.
    on_error: called with (image id, error) for an image that cannot be read or processed;
      it is skipped and listed in ``failures``.
    on_mask: called with (image id, (H, W) bool object mask) for kind "mask", or (image id,
      (H, W) int32 semantic map: 0 background, cluster c as c + 1) for kind "semantic".
    num_clusters, pca_dim: kind "semantic": the dataset-level clusters C (VOC: 20, + the
      background label) and the optional PCA (``dsm.cluster_embeddings``).
    matching, absent: kind "semantic": :func:`semantic_scores` (DSM: Hungarian, absent
      classes count as IoU 0).
    bilateral: kind "mask": ``bilateral.BilateralParams`` to refine each mask with TokenCut's
      bilateral solver on the image; the scores then read the solver's soft output (IoU and
      accuracy at > 0.5, maxFβ over thresholds), as TokenCut's evaluation does. None: off.
  Raises:
    ValueError: unknown kind, a semantic run without semantic crops, or more labels than
      classes for Hungarian matching; RuntimeError: no image could be evaluated.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from spectral_jax import dsm  # pylint: disable=import-outside-toplevel
  from spectral_jax.dsm import batching  # pylint: disable=import-outside-toplevel
  from spectral_jax.dsm import outputs  # pylint: disable=import-outside-toplevel
  from spectral_jax import bilateral as bilateral_lib  # pylint: disable=import-outside-toplevel
  if kind not in ("boxes", "mask", "semantic"):
    raise ValueError(f"kind must be 'boxes', 'mask' or 'semantic'; got {kind!r}")
  if kind == "semantic":
    check_semantic_setup(segmenter.config, dataset, num_clusters, matching)
  n = len(dataset) if limit is None else min(int(limit), len(dataset))
  # Each record's ground truth waits here from the moment its image is decoded (a prefetch
  # thread) until its batch is done: at most prefetch + batch_size records are alive.
  pending: dict[str, object] = {}
  lock = threading.Lock()

  def loader(i):
    def load():
      rec = dataset[i]
      with lock:
        pending[rec.id] = dataclasses.replace(rec, image=None)
      return rec.image
    return load

  sources = [batching.Source(dataset.ids[i], str(dataset.image_path(dataset.ids[i])), loader(i))
             for i in range(n)]
  failures: dict[str, str] = {}

  def skip(source, error):
    failures[source.name] = str(error)
    with lock:
      pending.pop(source.name, None)
    if on_error is not None:
      on_error(source.name, error)

  boxes, objects, per_image, gt_boxes, kept = {}, {}, {}, {}, []
  gt_ignore = {}
  scores = SingleObjectScores()
  stream = batching.segment_photos(segmenter, sources, image_size=image_size,
                                   batch_size=batch_size, seed=seed, prefetch=prefetch,
                                   bucket_step=bucket_step, on_error=skip,
                                   keep_original=bilateral is not None and kind == "mask")
  for photo, res, _ in tqdm(stream, total=n, desc=f"DSM {dataset.name}", unit="img",
                            disable=not progress):
    with lock:
      rec = pending.pop(photo.source.name)
    box = dsm.scale_boxes(res.patches.box, photo.input_hw, photo.size)
    boxes[rec.id] = [int(v) for v in box]
    found = outputs.photo_boxes(photo, res)
    objects[rec.id] = [[int(v) for v in b] for b in (found if len(found) else box[None])]
    if kind == "boxes":
      gt_boxes[rec.id] = rec.boxes
      gt_ignore[rec.id] = _ignored(rec)
      hit, best = corloc_hit(box, rec.boxes)
      per_image[rec.id] = {"hit": hit, "best_iou": best, "num_gt_boxes": int(len(rec.boxes)),
                           "num_objects": len(objects[rec.id])}
    elif kind == "semantic":   # small per-image state only: segments (h, w), (S, C) crops
      h, w = photo.grid
      kept.append((photo, res.semantic_segments[:h, :w].copy(), res.semantic_valid.copy(),
                   res.semantic_embeddings.copy()))   # copies: no view keeps a batch alive
      per_image[rec.id] = {"num_segments": int(np.sum(res.semantic_valid))}
    else:
      if rec.mask is None:
        raise ValueError(f"{dataset.name} image {rec.id} has no ground-truth mask")
      h, w = photo.grid
      mask = dsm.object_mask(res.patches.fiedler[:h, :w], patch_size=segmenter.patch_size,
                             input_hw=photo.input_hw, output_hw=photo.size, upsample=upsample)
      score = mask
      if bilateral is not None:
        soft, mask = bilateral_lib.refine_mask(photo.original, mask, bilateral)
        score, mask = np.asarray(soft), np.asarray(mask)
        photo.original = None
      per_image[rec.id] = scores.add(score, rec.mask)
      if on_mask is not None:
        on_mask(rec.id, mask)
  if not boxes:
    raise RuntimeError(f"no image of {dataset.name} could be evaluated: " +
                       "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:5]))
  if kind == "boxes":
    result = corloc(boxes, gt_boxes)
    ids = list(gt_boxes)
    found = [np.asarray(objects[i]).reshape(-1, 4) for i in ids]
    if any(len(g) for g in gt_boxes.values()):
      result["object_recall"] = object_recall(found, [gt_boxes[i] for i in ids])
    if any(len(g) and not np.all(gt_ignore[i]) for i, g in gt_boxes.items()):
      ranks = [np.arange(len(f), 0, -1, dtype=np.float64) for f in found]  # best first
      result["ap50"] = ap50(found, ranks, [gt_boxes[i] for i in ids],
                            gt_ignore=[gt_ignore[i] for i in ids])
  elif kind == "semantic":
    result = semantic_over_dataset(
        dataset, kept, patch_size=segmenter.patch_size, num_clusters=num_clusters,
        pca_dim=pca_dim, seed=seed, matching=matching, absent=absent, on_map=on_mask,
        progress=progress)
  else:
    result = scores.result()
  result["num_failed"] = len(failures)
  return Evaluation(metrics=result, boxes=boxes, objects=objects, per_image=per_image,
                    failures=failures)


def _ignored(record) -> np.ndarray:
  """(N,) bool: the record's boxes AP ignores (VOC ``difficult``, COCO ``iscrowd``)."""
  n = len(record.boxes)
  flags = np.zeros((n,), bool)
  for field in (record.difficult, record.crowd):
    if len(field) == n:
      flags |= np.asarray(field, bool)
  return flags


def check_semantic_setup(pipeline_config, dataset, num_clusters: int, matching: str) -> None:
  """Refuses a semantic evaluation that cannot run, before any image is processed.

  Args:
    pipeline_config: the segmenter's ``dsm.PipelineConfig``; dataset: the semantic
      ``DataSource``; num_clusters, matching: as :func:`evaluate_dsm`.
  Raises:
    ValueError: saying which setting to change.
  """
  if not pipeline_config.semantic:
    raise ValueError("the segmenter computes no semantic crops: build it with "
                     "PipelineConfig(semantic=True)")
  num_classes = getattr(dataset, "num_classes", None)
  if num_classes is None:
    raise ValueError(f"{dataset.name} has no num_classes: it is not a semantic dataset")
  if matching == "hungarian" and num_clusters + 1 > num_classes:
    raise ValueError(f"{num_clusters} clusters + background = {num_clusters + 1} labels cannot "
                     f"map one-to-one onto {dataset.name}'s {num_classes} classes: use at most "
                     f"{num_classes - 1} clusters or majority matching")
  if matching not in ("hungarian", "majority"):
    raise ValueError(f"matching must be 'hungarian' or 'majority'; got {matching!r}")


def semantic_over_dataset(dataset, kept: list, *, patch_size: int, num_clusters: int,
                          pca_dim: int = 0, seed: int = 0, matching: str = "hungarian",
                          absent: str = "zero",
                          on_map: Callable[[str, np.ndarray], None] | None = None,
                          progress: bool = False) -> dict:
  """DSM semantic segmentation of a dataset scored against its class masks (SPEC §4).

  One K-means over the segment crops of all images (``dsm.outputs.cluster_segments``, as the
  segment command's ``--semantic``), each image's semantic map at its own size (0 =
  background, cluster c as c + 1: C + 1 labels), the (classes × labels) confusion pooled over
  the dataset, then :func:`semantic_scores`. Second pass: each image's class mask is read again
  from ``dataset`` (``dataset.read(id)``), so memory holds the small per-image segment maps and
  crop embeddings of ``kept``, never the images or their masks.

  Args:
    dataset: a semantic ``DataSource`` (``num_classes``; optional ``class_names``).
    kept: per image ``(photo, segments (h, w), valid (S,), embeddings (S, C))`` in order,
      ``photo.source.name`` its image id.
    patch_size: P; num_clusters, pca_dim, seed: the clustering; matching, absent: the scores.
    on_map: called with (image id, (H, W) int32 semantic map).
  Returns:
    {"miou", "pixel_accuracy" (fractions), "per_class_iou" (class name → IoU, None for a
    class in neither ground truth nor prediction), "num_images", "num_crops",
    "num_clusters", "matching", "absent", "lookup" (label → class)}.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from spectral_jax.dsm import outputs  # pylint: disable=import-outside-toplevel
  num_classes = int(dataset.num_classes)
  names = list(getattr(dataset, "class_names", None) or range(num_classes))
  lookups = outputs.cluster_segments(kept, num_clusters=num_clusters, pca_dim=pca_dim, seed=seed)
  confusion = np.zeros((num_classes, num_clusters + 1), np.int64)
  for (photo, segments, valid, _), lookup in tqdm(
      list(zip(kept, lookups)), desc=f"score {dataset.name}", unit="img", disable=not progress):
    image_id = photo.source.name
    labels = outputs.semantic_labels(photo, segments, valid, lookup, patch_size=patch_size)
    target = dataset.read(image_id).class_mask
    if target is None:
      raise ValueError(f"{dataset.name} image {image_id} has no class mask")
    confusion += confusion_counts(target, labels, num_classes, num_clusters + 1)
    if on_map is not None:
      on_map(image_id, labels)
  scores = semantic_scores(confusion, matching=matching, absent=absent)
  per_class = {str(n): (None if np.isnan(v) else v)
               for n, v in zip(names, scores["iou_per_class"])}
  return {"miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
          "per_class_iou": per_class, "num_images": len(kept),
          "num_crops": int(sum(int(np.sum(v)) for _, _, v, _ in kept)),
          "num_clusters": int(num_clusters), "matching": matching, "absent": absent,
          "lookup": scores["lookup"], "labels": "0 = background, c + 1 = dataset cluster c"}
