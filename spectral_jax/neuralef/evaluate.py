"""Evaluating the NeuralEF segmentor: clusters per pixel, cluster → class matching, mIoU (SPEC §5).

Inference (paper §3.6): no Gumbel noise, no normalisation; ψ's logits divided by τ_min are
bilinearly upsampled to the image (PyTorch ``F.interpolate(align_corners=False)``, via
``image_ops.resize_to_grid(convention="torch")``) and the argmax is the cluster id of every pixel.

Baselines (paper §4.2), scored by the same upsample-then-argmax rule on the negative squared
distance to each centroid:

* **K-means** on the backbone's high-level features (the graph features), fit on the training
  views, predicting the evaluation images;
* **Ours\\*** K-means on ψ's features before the head (``pre_logits``), fit the same way.

Each is run with K clusters (ψ's number of eigenfunctions) and with C clusters (the number of
ground-truth classes of the evaluation set, the setting of Hungarian matching in DSM).

Matching on the confusion pooled over the dataset (rows classes, columns clusters):
majority voting (``clustering.majority_vote_match``: each cluster to the class of highest IoU)
and Hungarian matching (one cluster per class, maximising the summed IoU; when there are more
clusters than classes the unmatched clusters predict no class, so their pixels count as errors).
Then mIoU over the classes present in the ground truth or the prediction and pixel accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.optimize
from PIL import Image

from spectral_jax import clustering
from spectral_jax import image_ops
from spectral_jax import metrics
from spectral_jax.neuralef import features as features_lib
from spectral_jax.neuralef import train as train_lib

MATCHINGS = ("majority", "hungarian")
CONFUSION_CHUNK = 1 << 20  # pixels per confusion-matrix call
UNMATCHED = -1


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class LabelledImage:
  """An evaluation image with its semantic labels in the dataset's compact class ids.

  Attributes:
    name: e.g. "voc".
    rgb: (H, W, 3) uint8.
    label: (H, W) int32 in [0, C), or ``metrics.IGNORE_INDEX`` for ignored pixels.
  """
  name: str
  rgb: np.ndarray
  label: np.ndarray


def labelled_samples(names: Sequence[str] = ("voc", "arc2017")
                     ) -> tuple[list[LabelledImage], list[str]]:
  """The bundled labelled photos as one dataset with a shared, compact label space.

  Classes are named ``"<sample>/<class>"``; the background (class 0 of every sample) is one class
  ``"background"``. Only classes that occur in the labels are kept, numbered in order of
  appearance, so the confusion matrices have no empty rows.

  Returns:
    ``(images, class_names)``.
  """
  from spectral_jax.data import samples  # pylint: disable=import-outside-toplevel

  class_names: list[str] = []
  ids: dict[str, int] = {}
  images = []
  for name in names:
    photo = samples.labelled_photo(name)
    label = np.full(photo.class_label.shape, metrics.IGNORE_INDEX, np.int32)
    for value in np.unique(photo.class_label):
      if value == metrics.IGNORE_INDEX:
        continue
      key = "background" if value == 0 else f"{name}/{photo.class_names[value]}"
      if key not in ids:
        ids[key] = len(class_names)
        class_names.append(key)
      label[photo.class_label == value] = ids[key]
    images.append(LabelledImage(name=name, rgb=photo.rgb, label=label))
  return images, class_names


def eval_resize(rgb: np.ndarray, short_side: int, patch_size: int) -> np.ndarray:
  """Resizes (PIL bilinear) so the short side is about ``short_side`` and both sides are
  multiples of ``patch_size`` (at least one patch). Returns (H', W', 3) uint8."""
  h, w = rgb.shape[:2]
  s = short_side / min(h, w)
  nh = max(patch_size, int(round(h * s / patch_size)) * patch_size)
  nw = max(patch_size, int(round(w * s / patch_size)) * patch_size)
  return image_ops.resize_to(rgb, (nh, nw))


# ----------------------------------------------------------------------------- inference


def psi_inference(config: ml_collections.ConfigDict, params: Any,
                  psi_inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ψ at inference: ``(logits / τ_min, pre_logits)`` of (B, N, D) inputs (SPEC §5).

  Returns:
    (B, N, K) float32 scaled logits (no Gumbel noise, no normalisation) and (B, N, D') ψ's
    features before the head (for "Ours*").
  """
  logits, out = train_lib.psi_module(config).apply({"params": params}, psi_inputs)
  return logits / config.loss.tau_min, out["pre_logits"]


def upsample_argmax(scores: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Cluster id per pixel: bilinear upsampling of per-patch scores to ``size``, then argmax.

  Args:
    scores: (..., h, w, K) float per-patch scores (logits, or negative distances); leading
      dims are independent maps (e.g. several methods, padded to one K with `PAD_SCORE`).
    size: (H, W) output size.
  Returns:
    (..., H, W) int32 in [0, K).
  """
  up = image_ops.resize_to_grid(jnp.asarray(scores, jnp.float32), tuple(size), convention="torch")
  return jnp.argmax(up, axis=-1).astype(jnp.int32)


# Score of the padding channels when maps with different K are upsampled together: finite (so
# the bilinear weights never form 0·∞) and far below any real score.
PAD_SCORE = -1e30


def _stack_scores(maps: Sequence[jax.Array]) -> jax.Array:
  """(h, w, K_i) maps → (len, h, w, max K_i), padded with `PAD_SCORE`."""
  k = max(m.shape[-1] for m in maps)
  return jnp.stack([jnp.pad(m, ((0, 0), (0, 0), (0, k - m.shape[-1])),
                            constant_values=PAD_SCORE) for m in maps])


def negative_sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """(…, n, d) points, (k, d) centroids → (…, n, k) scores ``−‖x − c‖²`` (argmax = nearest)."""
  return -clustering.squared_distances(x, centroids)


# ----------------------------------------------------------------------------- matching


def match_clusters(confusion: np.ndarray, method: str) -> np.ndarray:
  """Cluster → class lookup from a pooled (C classes, M clusters) confusion matrix.

  Args:
    confusion: (C, M) counts; rows ground-truth classes, columns clusters.
    method: "majority" (every cluster to its highest-IoU class) or "hungarian" (one-to-one,
      maximising the summed IoU; with M > C the M − C unmatched clusters get `UNMATCHED`).
  Returns:
    (M,) int64 class per cluster (or `UNMATCHED`).
  """
  confusion = np.asarray(confusion)
  c, m = confusion.shape
  if method == "majority":
    return clustering.majority_vote_match(confusion)
  if method != "hungarian":
    raise ValueError(f"method must be one of {MATCHINGS}; got {method!r}")
  if m <= c:
    return clustering.hungarian_match(confusion)
  classes, clusters = scipy.optimize.linear_sum_assignment(clustering.iou_matrix(confusion),
                                                           maximize=True)
  lookup = np.full(m, UNMATCHED, np.int64)
  lookup[clusters] = classes
  return lookup


def matched_scores(confusion: np.ndarray, lookup: np.ndarray) -> dict[str, Any]:
  """mIoU and pixel accuracy after mapping clusters to classes (SPEC §4-5).

  Args:
    confusion: (C, M) pooled counts (classes × clusters).
    lookup: (M,) class of each cluster, `UNMATCHED` for none (its pixels are errors).
  Returns:
    dict with ``miou`` (mean over classes present in the ground truth or the prediction),
    ``pixel_accuracy`` and ``iou`` (C,) per class (None where absent from both).
  """
  confusion = np.asarray(confusion, np.int64)
  c, m = confusion.shape
  if lookup.shape != (m,):
    raise ValueError(f"lookup must have one entry per cluster ({m}); got shape {lookup.shape}")
  square = np.zeros((c + 1, c + 1), np.int64)  # the extra class collects unmatched clusters
  target = np.where(lookup == UNMATCHED, c, lookup)
  np.add.at(square[:c].T, target, confusion.T)
  iou = np.asarray(metrics.iou_per_class(square))[:c]
  return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
          "pixel_accuracy": float(np.asarray(metrics.pixel_accuracy(square))),
          "iou": [None if np.isnan(v) else float(v) for v in iou]}


def score_predictions(labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                      num_classes: int, num_clusters: int) -> dict[str, Any]:
  """Pools the confusion over a dataset and scores both matchings.

  Args:
    labels: per image (H, W) int class ids (``metrics.IGNORE_INDEX`` ignored).
    predictions: per image (H, W) int cluster ids in [0, num_clusters).
    num_classes, num_clusters: C and M.
  Returns:
    ``{"clusters": M, "clusters_used": (clusters predicted on labelled pixels), "majority":
    {...}, "hungarian": {...}, "lookup": {...}}`` with the `matched_scores` of each matching.
  """
  target = np.concatenate([np.asarray(label, np.int32).ravel() for label in labels])
  pred = np.concatenate([np.asarray(p, np.int32).ravel() for p in predictions])
  # Fixed-size chunks (padded with ignored pixels): one compile, int64 pooling on the host.
  pad = -len(target) % CONFUSION_CHUNK
  target = np.pad(target, (0, pad), constant_values=metrics.IGNORE_INDEX)
  pred = np.pad(pred, (0, pad))
  confusion = np.zeros((num_classes, num_clusters), np.int64)
  for s in range(0, len(target), CONFUSION_CHUNK):
    confusion += np.asarray(metrics.confusion_matrix(
        jnp.asarray(target[s:s + CONFUSION_CHUNK]), jnp.asarray(pred[s:s + CONFUSION_CHUNK]),
        num_classes, num_clusters), np.int64)
  used = int((confusion.sum(axis=0) > 0).sum())
  out: dict[str, Any] = {"clusters": num_clusters, "clusters_used": used, "lookup": {}}
  for method in MATCHINGS:
    lookup = match_clusters(confusion, method)
    out[method] = matched_scores(confusion, lookup)
    out["lookup"][method] = lookup
  return out


# ----------------------------------------------------------------------------- K-means


def fit_kmeans(key: jax.Array, points: np.ndarray, num_clusters: int, *, max_points: int,
               n_init: int, max_iter: int) -> jax.Array:
  """K-means centroids of at most ``max_points`` of the (n, d) ``points`` (uniform subsample)."""
  points = np.asarray(points, np.float32).reshape(-1, points.shape[-1])
  if len(points) > max_points:
    keep = np.random.default_rng(0).choice(len(points), max_points, replace=False)
    points = points[np.sort(keep)]
  if num_clusters > len(points):
    raise ValueError(f"K-means with {num_clusters} clusters needs at least as many points; got "
                     f"{len(points)}")
  return clustering.kmeans(key, jnp.asarray(points), num_clusters, n_init=n_init,
                           max_iter=max_iter).centroids


# ----------------------------------------------------------------------------- report


def _pre_logits(infer, params, psi_inputs: np.ndarray, batch: int = 16) -> np.ndarray:
  """ψ's pre-head features of ``psi_inputs`` in batches; ``infer`` is the jitted inference."""
  return np.concatenate([np.asarray(infer(params, jnp.asarray(psi_inputs[s:s + batch],
                                                              jnp.float32))[1])
                         for s in range(0, len(psi_inputs), batch)])


def overlay(rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8: class/cluster ids (< 256) coloured over the greyed image; pixels labelled
  ``metrics.IGNORE_INDEX`` stay grey."""
  import imgviz  # pylint: disable=import-outside-toplevel

  gray = imgviz.rgb2gray(rgb)
  ignored = label == metrics.IGNORE_INDEX
  out = imgviz.label2rgb(np.where(ignored, 0, label), image=gray, alpha=0.6)
  out[ignored] = gray[ignored, None]
  return out


def evaluate(config: ml_collections.ConfigDict, params: Any, backbone,
             train_features: features_lib.FeatureSet, *,
             images: Sequence[LabelledImage] | None = None,
             class_names: Sequence[str] | None = None,
             output_dir: str | pathlib.Path | None = None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """ψ, K-means and Ours* on a labelled dataset: the report of `SPEC §5` evaluation.

  Args:
    config: the training config (``psi``, ``loss.tau_min``, ``eval``).
    params: ψ's trained parameters.
    backbone: the frozen backbone the training features came from.
    train_features: the training views (K-means are fit on them).
    images, class_names: the evaluation set; default `labelled_samples(config.eval.samples)`.
    output_dir: where ``report.json`` and overlays (``overlays/<image>.png``) go; None: nowhere.
    extra: more entries for the report (e.g. training facts).
  Returns:
    The report dict (see ``report.json``): per method its cluster count and, per matching,
    mIoU, pixel accuracy and per-class IoU.
  """
  if images is None:
    images, class_names = labelled_samples(tuple(config.eval.samples))
  if class_names is None:
    raise ValueError("class_names must be given with images")
  num_classes = len(class_names)
  k, p = int(config.psi.k), int(backbone.config.patch_size)
  ev = config.eval
  kmeans_args = dict(max_points=int(ev.kmeans_max_points), n_init=int(ev.kmeans_n_init),
                     max_iter=int(ev.kmeans_max_iter))
  key = jax.random.key(int(config.seed))

  # Per-image backbone features and ψ outputs at inference.
  per_image = []
  extract = features_lib.jitted_backbone_features()
  infer = jax.jit(lambda prm, x: psi_inference(config, prm, x))
  for im in images:
    resized = eval_resize(im.rgb, int(ev.image_size), p)
    grid = (resized.shape[0] // p, resized.shape[1] // p)
    psi_in, graph_feats = extract(backbone, jnp.asarray(resized[None], jnp.float32) / 255.0)
    logits, pre = infer(params, psi_in)
    per_image.append({"grid": grid, "logits": logits[0], "pre": pre[0], "feats": graph_feats[0]})

  # Baselines: K-means fit on the training views, K and C clusters.
  train_pre = _pre_logits(infer, params, train_features.psi_inputs)
  centroids = {}
  for name, points, feat in (("kmeans", train_features.graph_features, "feats"),
                             ("ours_star", train_pre, "pre")):
    for count in (k, num_classes):
      centroids[f"{name}_{count}"] = (feat, fit_kmeans(jax.random.fold_in(key, count), points,
                                                       count, **kmeans_args))

  methods: dict[str, tuple[int, list[np.ndarray]]] = {"psi": (k, [])}
  methods.update({name: (int(c.shape[0]), []) for name, (_, c) in centroids.items()})
  for im, out in zip(images, per_image):
    maps = [out["logits"]] + [negative_sq_distances(out[feat], c)
                              for feat, c in centroids.values()]
    preds = np.asarray(upsample_argmax(
        _stack_scores([m.reshape(*out["grid"], -1) for m in maps]), im.label.shape))
    for (_, found), pred in zip(methods.values(), preds):
      found.append(pred)

  labels = [im.label for im in images]
  results = {}
  for name, (count, preds) in methods.items():
    results[name] = score_predictions(labels, preds, num_classes, count)

  report = {
      "dataset": {"images": [im.name for im in images], "classes": list(class_names),
                  "pixels": int(sum((im.label != metrics.IGNORE_INDEX).sum() for im in images))},
      "backbone": {"name": backbone.config.name,
                   "weights_note": getattr(backbone.config, "weights_note", "")},
      "eval_image_size": int(ev.image_size),
      "results": {name: {key_: value for key_, value in r.items() if key_ != "lookup"}
                  for name, r in results.items()},
      **(extra or {}),
  }
  if output_dir is not None:
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=1))
    if ev.overlays:
      _write_overlays(output_dir / "overlays", images, methods, results)
  return report


def _write_overlays(folder: pathlib.Path, images, methods, results) -> None:
  """One PNG per image: image | ground truth | ψ | K-means | Ours* (clusters mapped to classes
  by majority voting, so the colours are comparable with the ground truth)."""
  folder.mkdir(parents=True, exist_ok=True)
  shown = [m for m in ("psi", next(n for n in methods if n.startswith("kmeans")),
                       next(n for n in methods if n.startswith("ours_star")))]
  for i, im in enumerate(images):
    tiles = [im.rgb, overlay(im.rgb, im.label)]
    for name in shown:
      lookup = results[name]["lookup"]["majority"]
      tiles.append(overlay(im.rgb, lookup[methods[name][1][i]].astype(np.int32)))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(folder / f"{im.name}.png")


METHOD_TITLES = {"psi": "NeuralEF ψ (argmax)", "kmeans": "K-means, backbone features",
                 "ours_star": "Ours*: K-means, ψ pre-logits"}


def format_report(report: dict[str, Any]) -> str:
  """The report's results as a plain-text table (mIoU and pixel accuracy in %)."""
  lines = [f"{'method':34s} {'clusters':>8s} {'used':>5s} {'mIoU maj':>9s} {'acc maj':>8s} "
           f"{'mIoU hung':>10s} {'acc hung':>9s}"]
  for name, r in report["results"].items():
    base = name.rsplit("_", 1)[0] if name != "psi" else name
    title = METHOD_TITLES.get(base, name)
    lines.append(f"{title:34s} {r['clusters']:8d} {r['clusters_used']:5d} "
                 f"{100 * r['majority']['miou']:9.1f} "
                 f"{100 * r['majority']['pixel_accuracy']:8.1f} "
                 f"{100 * r['hungarian']['miou']:10.1f} "
                 f"{100 * r['hungarian']['pixel_accuracy']:9.1f}")
  return "\n".join(lines)


__all__ = [
    "LabelledImage", "MATCHINGS", "UNMATCHED", "eval_resize", "evaluate", "fit_kmeans",
    "format_report", "labelled_samples", "match_clusters", "matched_scores",
    "negative_sq_distances", "overlay", "psi_inference", "score_predictions", "upsample_argmax",
]
