"""DSM evaluated over a dataset: the command ``evaluate_dsm``'s library half (SPEC §6–8).

:func:`evaluate_dsm` runs the DSM pipeline over a :class:`~spectral_jax.datasets.DataSource`
(streamed through ``dsm.batching.segment_photos``: memory bounded by the prefetch depth) and
applies the protocol of the dataset's kind (:mod:`spectral_jax.protocols`): CorLoc, object
recall and AP50 for box datasets, single-object scores for mask datasets, and for semantic
datasets (``voc12_semantic``) DSM's semantic stage over the whole dataset
(:func:`semantic_over_dataset`: one clustering of all segment crops, then the pooled confusion
and the matched mIoU; two passes, so only the small per-image segment maps and crop embeddings
are held). It never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import numpy as np

from spectral_jax import bilateral as bilateral_lib, protocols
from spectral_jax import progress as progress_lib
from spectral_jax.dsm import batching, localisation, masks, outputs

__all__ = ["PAPER", "BadRecordError", "Evaluation", "check_semantic_setup", "evaluate_dsm",
           "semantic_over_dataset"]

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


@dataclasses.dataclass
class Evaluation:
  """What :func:`evaluate_dsm` measured."""
  metrics: dict                    # the protocol's dataset figures (+ "num_images")
  boxes: dict[str, list[int]]      # image id → [x0, y0, x1, y1] pixels, x1/y1 exclusive
  objects: dict[str, list[list[int]]]  # image id → every discovered object's box, best first
  per_image: dict[str, dict]       # image id → its scores (hit / IoU ...)
  failures: dict[str, str]         # image id → why it was skipped
  skipped_records: dict[str, str] = dataclasses.field(default_factory=dict)  # bad records:
  # id → why (malformed annotation, unreadable mask, ...; also in ``failures``)


class BadRecordError(ValueError):
  """A dataset record that cannot be read (a malformed annotation, a truncated mask): the
  record is skipped with its id and the reason, the run goes on."""


# What a reader raises on a malformed record (a non-number, a null where a list belongs, an
# out-of-range value, a truncated file): each becomes a BadRecordError for that record.
RECORD_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError,
                 SyntaxError)


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
    progress: progress on stderr (a bar on a terminal, bounded-rate lines off one).
    on_error: called with (image id, error) for an image that cannot be read or processed;
      it is skipped and listed in ``failures``. A record the dataset cannot read (a malformed
      annotation, a truncated mask: `RECORD_ERRORS`) is skipped the same way and also listed
      in ``skipped_records``, with the records the dataset itself skipped when it was opened
      (its ``skipped``: id → reason); ``metrics["skipped_records"]`` counts them.
    on_mask: called with (image id, (H, W) bool object mask) for kind "mask", or (image id,
      (H, W) int32 semantic map: 0 background, cluster c as c + 1) for kind "semantic".
    num_clusters, pca_dim: kind "semantic": the dataset-level clusters C (VOC: 20, + the
      background label) and the optional PCA (``dsm.cluster_embeddings``).
    matching, absent: kind "semantic": ``protocols.semantic_scores`` (DSM: Hungarian, absent
      classes count as IoU 0).
    bilateral: kind "mask": ``bilateral.BilateralParams`` to refine each mask with TokenCut's
      bilateral solver on the image; the scores then read the solver's soft output (IoU and
      accuracy at > 0.5, maxFβ over thresholds), as TokenCut's evaluation does. None: off.
  Raises:
    ValueError: unknown kind, a semantic run without semantic crops, or more labels than
      classes for Hungarian matching; RuntimeError: no image could be evaluated.
  """
  if kind not in ("boxes", "mask", "semantic"):
    raise ValueError(f"kind must be 'boxes', 'mask' or 'semantic'; got {kind!r}")
  if kind == "semantic":
    check_semantic_setup(segmenter.config, dataset, num_clusters, matching)
  n = len(dataset) if limit is None else min(int(limit), len(dataset))
  # Each record's ground truth waits here from the moment its image is decoded (a prefetch
  # thread) until its batch is done: at most prefetch + batch_size records are alive.
  pending: dict[str, object] = {}
  lock = threading.Lock()

  bad_records: dict[str, str] = dict(getattr(dataset, "skipped", None) or {})
  for image_id, reason in list(bad_records.items()):   # skipped when the dataset was opened
    if on_error is not None:
      on_error(image_id, BadRecordError(reason))

  def loader(i):
    def load():
      try:
        rec = dataset[i]
      except RECORD_ERRORS as e:   # one bad record never aborts the run
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        with lock:
          bad_records[dataset.ids[i]] = reason
        raise BadRecordError(reason) from e
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
  scores = protocols.SingleObjectScores()
  stream = batching.segment_photos(segmenter, sources, image_size=image_size,
                                   batch_size=batch_size, seed=seed, prefetch=prefetch,
                                   bucket_step=bucket_step, on_error=skip,
                                   keep_original=bilateral is not None and kind == "mask")
  for photo, res, _ in progress_lib.progress(stream, total=n, desc=f"DSM {dataset.name}",
                                             unit="img", enabled=progress):
    with lock:
      rec = pending.pop(photo.source.name)
    box = localisation.scale_boxes(res.patches.box, photo.input_hw, photo.size)
    boxes[rec.id] = [int(v) for v in box]
    found = outputs.photo_boxes(photo, res)
    objects[rec.id] = [[int(v) for v in b] for b in (found if len(found) else box[None])]
    if kind == "boxes":
      gt_boxes[rec.id] = rec.boxes
      gt_ignore[rec.id] = _ignored(rec)
      per_image[rec.id] = {"num_gt_boxes": int(len(rec.boxes)),
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
      mask = masks.object_mask(res.patches.fiedler[:h, :w], patch_size=segmenter.patch_size,
                               input_hw=photo.input_hw, output_hw=photo.size,
                               upsample=upsample)
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
    result = protocols.corloc(boxes, gt_boxes)
    ids = list(gt_boxes)
    hits, best = protocols.corloc_per_image([boxes[i] for i in ids], [gt_boxes[i] for i in ids])
    for i, hit, iou in zip(ids, hits, best):
      per_image[i] = {"hit": bool(hit), "best_iou": float(iou), **per_image[i]}
    found = [np.asarray(objects[i]).reshape(-1, 4) for i in ids]
    if any(len(g) for g in gt_boxes.values()):
      result["object_recall"] = protocols.object_recall(found, [gt_boxes[i] for i in ids])
    if any(len(g) and not np.all(gt_ignore[i]) for i, g in gt_boxes.items()):
      ranks = [np.arange(len(f), 0, -1, dtype=np.float64) for f in found]  # best first
      result["ap50"] = protocols.ap50(found, ranks, [gt_boxes[i] for i in ids],
                                      gt_ignore=[gt_ignore[i] for i in ids])
  elif kind == "semantic":
    result = semantic_over_dataset(
        dataset, kept, patch_size=segmenter.patch_size, num_clusters=num_clusters,
        pca_dim=pca_dim, seed=seed, matching=matching, absent=absent, on_map=on_mask,
        progress=progress)
  else:
    result = scores.result()
  for image_id, reason in bad_records.items():   # those found when the dataset was opened
    failures.setdefault(image_id, reason)
  result["num_failed"] = len(failures)
  result["skipped_records"] = len(bad_records)
  return Evaluation(metrics=result, boxes=boxes, objects=objects, per_image=per_image,
                    failures=failures, skipped_records=bad_records)


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
  if matching not in protocols.MATCHINGS:
    raise ValueError(f"matching must be one of {protocols.MATCHINGS}; got {matching!r}")


def semantic_over_dataset(dataset, kept: list, *, patch_size: int, num_clusters: int,
                          pca_dim: int = 0, seed: int = 0, matching: str = "hungarian",
                          absent: str = "zero",
                          on_map: Callable[[str, np.ndarray], None] | None = None,
                          progress: bool = False) -> dict:
  """DSM semantic segmentation of a dataset scored against its class masks (SPEC §4).

  One K-means over the segment crops of all images (``dsm.outputs.cluster_segments``, as the
  segment command's ``--semantic``), each image's semantic map at its own size (0 =
  background, cluster c as c + 1: C + 1 labels), the (classes × labels) confusion pooled over
  the dataset (``protocols.confusion_counts``), then ``protocols.semantic_scores``. Second
  pass: each image's class mask is read again from ``dataset`` (``dataset.read(id)``), so
  memory holds the small per-image segment maps and crop embeddings of ``kept``, never the
  images or their masks.

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
  num_classes = int(dataset.num_classes)
  names = list(getattr(dataset, "class_names", None) or range(num_classes))
  lookups = outputs.cluster_segments(kept, num_clusters=num_clusters, pca_dim=pca_dim, seed=seed)
  confusion = np.zeros((num_classes, num_clusters + 1), np.int64)
  for (photo, segments, valid, _), lookup in progress_lib.progress(
      list(zip(kept, lookups)), desc=f"score {dataset.name}", unit="img", enabled=progress):
    image_id = photo.source.name
    labels = outputs.semantic_labels(photo, segments, valid, lookup, patch_size=patch_size)
    target = dataset.read(image_id).class_mask
    if target is None:
      raise ValueError(f"{dataset.name} image {image_id} has no class mask")
    confusion += protocols.confusion_counts(target, labels, num_classes, num_clusters + 1)
    if on_map is not None:
      on_map(image_id, labels)
  scores = protocols.semantic_scores(confusion, matching=matching, absent=absent)
  per_class = {str(n): (None if np.isnan(v) else v)
               for n, v in zip(names, scores["iou_per_class"])}
  return {"miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
          "per_class_iou": per_class, "num_images": len(kept),
          "num_crops": int(sum(int(np.sum(v)) for _, _, v, _ in kept)),
          "num_clusters": int(num_clusters), "matching": matching, "absent": absent,
          "lookup": scores["lookup"], "labels": "0 = background, c + 1 = dataset cluster c"}
