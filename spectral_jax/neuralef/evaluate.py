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

Scoring goes through :mod:`spectral_jax.protocols`: the confusion pooled over the dataset
(rows classes, columns clusters; ``protocols.confusion_counts``), then ``protocols.
semantic_scores`` with majority voting (each cluster to the class of highest IoU) and with
Hungarian matching (one cluster per class, maximising the summed IoU; when there are more
clusters than classes the unmatched clusters predict no class, so their pixels count as
errors), mIoU over the classes present in the ground truth or the prediction ("skip") and pixel
accuracy. Sliding windows are ``protocols.sliding_window``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from spectral_jax import clustering
from spectral_jax import image_ops
from spectral_jax import metrics
from spectral_jax import progress as progress_lib
from spectral_jax import protocols
from spectral_jax import strict_json
from spectral_jax import viz
from spectral_jax.backbones import vit
from spectral_jax.datasets import samples
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import feature_cache
from spectral_jax.neuralef import features as features_lib
from spectral_jax.neuralef import step as step_lib


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
  logits, out = step_lib.psi_module(config).apply({"params": params}, psi_inputs)
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


# ----------------------------------------------------------------------------- scores


def confusion_scores(confusion: np.ndarray) -> dict[str, Any]:
  """Both matchings of a pooled (C classes, M clusters) confusion (``protocols.semantic_scores``,
  classes absent from ground truth and prediction skipped).

  Returns:
    ``{"clusters": M, "clusters_used": (clusters predicted on labelled pixels), "majority":
    {...}, "hungarian": {...}, "lookup": {matching: (M,) class per cluster, or
    protocols.UNMATCHED}}``, each matching's ``miou``, ``pixel_accuracy`` and per-class ``iou``
    (None where absent).
  """
  confusion = np.asarray(confusion, np.int64)
  out: dict[str, Any] = {"clusters": int(confusion.shape[1]),
                         "clusters_used": int((confusion.sum(axis=0) > 0).sum()), "lookup": {}}
  for matching in protocols.MATCHINGS:
    s = protocols.semantic_scores(confusion, matching, absent="skip")
    out[matching] = {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
                     "iou": [None if np.isnan(v) else v for v in s["iou_per_class"]]}
    out["lookup"][matching] = np.asarray(s["lookup"], np.int64)
  return out


def score_predictions(labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                      num_classes: int, num_clusters: int) -> dict[str, Any]:
  """Pools the confusion over a dataset (``protocols.confusion_counts``) and scores both
  matchings (`confusion_scores`).

  Args:
    labels: per image (H, W) int class ids (``metrics.IGNORE_INDEX`` ignored).
    predictions: per image (H, W) int cluster ids in [0, num_clusters).
    num_classes, num_clusters: C and M.
  Returns:
    `confusion_scores` of the pooled (C, M) confusion.
  """
  confusion = np.zeros((num_classes, num_clusters), np.int64)
  for label, pred in zip(labels, predictions):
    confusion += protocols.confusion_counts(label, pred, num_classes, num_clusters)
  return confusion_scores(confusion)


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


def _pre_logits(infer, params, psi_inputs: np.ndarray, batch: int = 16
                ) -> tuple[np.ndarray, np.ndarray]:
  """ψ's pre-head features (B, N, D') and cluster ids (B, N) (the argmax of its logits) of
  ``psi_inputs`` in batches; ``infer`` is the jitted inference."""
  outs = [infer(params, jnp.asarray(psi_inputs[s:s + batch], jnp.float32))
          for s in range(0, len(psi_inputs), batch)]
  return (np.concatenate([np.asarray(pre) for _, pre in outs]),
          np.concatenate([np.asarray(jnp.argmax(logits, axis=-1)) for logits, _ in outs]))


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
             train_features: feature_cache.FeatureSet, *,
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
    mIoU, pixel accuracy and per-class IoU; K-means and Ours* with K, C and ψ's used clusters
    on the training views (``"kmeans_fit"``); the training ``"objective"``.
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

  # Baselines: K-means fit on the training views, with K, C and as many clusters as ψ uses on
  # those views (majority voting rewards clusters used: the fair comparison at ψ's granularity).
  train_pre, train_psi = _pre_logits(infer, params, train_features.psi_inputs)
  used = int(len(np.unique(train_psi)))
  centroids = {}
  for name, points, feat in (("kmeans", train_features.graph_features, "feats"),
                             ("ours_star", train_pre, "pre")):
    for count in dict.fromkeys((k, num_classes, used)):
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
      "objective": str(config.loss.get("objective", "segmentor")),
      "kmeans_fit": {"tokens": int(np.prod(train_psi.shape)), "psi_clusters_used": used},
      "results": {name: {key_: value for key_, value in r.items() if key_ != "lookup"}
                  for name, r in results.items()},
      **(extra or {}),
  }
  if output_dir is not None:
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(strict_json.dumps(report, indent=1))
    if ev.overlays:
      _write_overlays(output_dir / "overlays", images, methods, results)
  return report


# The overlays' panel titles (short: a tile is as wide as the evaluation image).
OVERLAY_TITLES = {"psi": "ψ argmax", "kmeans": "K-means", "ours_star": "Ours*"}


def _write_overlays(folder: pathlib.Path, images, methods, results) -> None:
  """One PNG per image: image | ground truth | ψ | K-means | Ours* (clusters mapped to classes
  by majority voting, so the colours are comparable with the ground truth), each panel titled
  (`viz.caption`; a method's title ends with its cluster count)."""
  folder.mkdir(parents=True, exist_ok=True)
  shown = [m for m in ("psi", next(n for n in methods if n.startswith("kmeans")),
                       next(n for n in methods if n.startswith("ours_star")))]
  titles = [f"{OVERLAY_TITLES[m if m == 'psi' else m.rsplit('_', 1)[0]]} ({methods[m][0]})"
            for m in shown]
  for i, im in enumerate(images):
    tiles = [viz.caption(im.rgb.copy(), "image"),
             viz.caption(overlay(im.rgb, im.label), "ground truth")]
    for name, title in zip(shown, titles):
      lookup = results[name]["lookup"]["majority"]
      tiles.append(viz.caption(overlay(im.rgb, lookup[methods[name][1][i]].astype(np.int32)),
                               title))
    path = folder / f"{im.name}.png"   # a dataset id may hold folders (Cityscapes' city/)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


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




# ----------------------------------------------------------------------------- dataset evaluation

# The paper's table (SPEC §6; NeuralEF segmentor, ViT-S): mIoU and pixel accuracy in %, None
# where the paper quotes no figure.
PAPER = {
    "pascal_context": {"psi": {"miou": 38.8, "pixel_accuracy": 70.4},
                       "kmeans": {"miou": 28.9, "pixel_accuracy": None},
                       "ours_star": {"miou": 39.6, "pixel_accuracy": None}},
    "cityscapes": {"psi": {"miou": 28.2, "pixel_accuracy": 83.4},
                   "kmeans": {"miou": 22.4, "pixel_accuracy": None},
                   "ours_star": {"miou": 30.0, "pixel_accuracy": None}},
    "ade20k": {"psi": {"miou": 21.6, "pixel_accuracy": 63.3},
               "kmeans": {"miou": 19.2, "pixel_accuracy": None},
               "ours_star": {"miou": 23.6, "pixel_accuracy": None}},
}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The reference evaluation resize and sliding window of one dataset.

  The NeuralEF segmentor (built on Segmenter) reads validation images through mmseg's test
  pipeline with ``img_scale = (max_ratio·short_side, short_side)``, ``keep_ratio=True`` (the
  short side becomes ``short_side`` unless the long side would exceed ``max_ratio·short_side``);
  inference then upsamples an image whose short side is below ``window`` to that size, slides
  ``window``-square crops ``stride`` apart, averages the logits, and resizes them bilinearly to
  the original image (config.yml: ``im_size``, ``window_size``, ``window_stride``).
  """
  short_side: int
  max_ratio: int
  window: int
  stride: int
  num_classes: int
  train_split: str


PROTOCOLS = {
    "pascal_context": Protocol(520, 4, 480, 320, 59, "train"),
    "cityscapes": Protocol(1024, 2, 768, 512, 27, "train"),
    "ade20k": Protocol(512, 4, 512, 512, 150, "training"),
}


def protocol(config: ml_collections.ConfigDict, dataset: str) -> Protocol:
  """``PROTOCOLS[dataset]`` with the non-zero ``config.eval`` overrides (short_side, max_ratio,
  window, stride, kmeans_split); also checks eval.limit, kmeans_train_images, num_overlays.

  Raises:
    ValueError: an unknown dataset, a negative value, or a stride larger than the window.
  """
  if dataset not in PROTOCOLS:
    raise ValueError(f"data.dataset must be one of {', '.join(PROTOCOLS)}; got {dataset!r}")
  ref, ev = PROTOCOLS[dataset], config.eval
  fields = {}
  for name in ("short_side", "max_ratio", "window", "stride"):
    value = int(ev.get(name, 0) or 0)
    if value < 0:
      raise ValueError(f"eval.{name} must be ≥ 0 (0: the reference value); got {value}")
    fields[name] = value or getattr(ref, name)
  for name, low in (("limit", 0), ("kmeans_train_images", 1), ("num_overlays", 0)):
    if int(ev.get(name, low)) < low:
      raise ValueError(f"eval.{name} must be ≥ {low}; got {ev.get(name)}")
  if fields["stride"] > fields["window"]:
    raise ValueError(f"eval.stride {fields['stride']} is larger than eval.window "
                     f"{fields['window']}: some pixels would be in no window")
  return dataclasses.replace(ref, train_split=ev.get("kmeans_split", "") or ref.train_split,
                             **fields)


def check_dataset(source, dataset: str) -> int:
  """The class count C of ``source``, checked against ``dataset``'s benchmark label set (59,
  27 or 150; Cityscapes' 19 trainIds accepted too).

  Raises:
    ValueError: not a semantic source, or another class count.
  """
  expected = (PROTOCOLS[dataset].num_classes,) + ((19,) if dataset == "cityscapes" else ())
  num_classes = int(getattr(source, "num_classes", 0) or 0)
  if num_classes not in expected:
    raise ValueError(f"{getattr(source, 'name', dataset)} has {num_classes} classes but the "
                     f"{dataset} benchmark has {' or '.join(map(str, expected))}: not its "
                     "label set")
  return num_classes


def reference_resize(rgb: np.ndarray, proto: Protocol) -> np.ndarray:
  """mmcv's ``imrescale`` to ``(max_ratio·short_side, short_side)`` (``datasets.transforms.
  rescale_size``, resized by ``transforms.resize``) then Segmenter's upsampling
  of a short side below the window (PIL bilinear; the reference uses cv2 / torch bilinear).

  Args:
    rgb: (H, W, 3) uint8.
  Returns:
    (H', W', 3) uint8.
  """
  h, w = transforms.rescale_size(rgb.shape[:2], (proto.max_ratio * proto.short_side,
                                                 proto.short_side))
  if min(h, w) < proto.window:   # Segmenter's ``resize(im, window_size)``
    ratio = max(h, w) / min(h, w)
    h, w = ((proto.window, int(ratio * proto.window)) if h < w else
            (int(ratio * proto.window), proto.window))
  return transforms.resize(rgb, (h, w))[0]


def _pad_to_patches(crop: np.ndarray, patch: int) -> np.ndarray:
  """(h, w, 3) float in [0, 1] → padded bottom / right to multiples of ``patch`` with the
  ImageNet mean (0 after normalisation, as Segmenter pads the normalised image with 0)."""
  h, w = crop.shape[:2]
  ph, pw = -h % patch, -w % patch
  if not ph and not pw:
    return crop
  out = np.empty((h + ph, w + pw, 3), np.float32)
  out[...] = np.asarray(vit.IMAGENET_MEAN, np.float32)
  out[:h, :w] = crop
  return out


class WindowModel:
  """Per-window outputs of the backbone and ψ, computed once per distinct crop.

  ``scores(crop, method)`` → (h, w, K_method) float32 scores at the crop's pixels: the crop is
  padded to whole patches, the backbone and ψ run once (memoised by the crop's bytes, so every
  method's sliding window reuses them), the per-patch scores (ψ logits / τ_min, or −‖x − c‖²
  to a method's centroids) are upsampled bilinearly to the padded size and the padding cut
  off (Segmenter's ``padding`` / ``unpadding``).
  """

  def __init__(self, config, params, backbone, centroids: dict[str, tuple[str, jax.Array]]):
    self.patch = int(backbone.config.patch_size)
    self._extract = features_lib.jitted_backbone_features()
    self._infer = jax.jit(lambda prm, x: psi_inference(config, prm, x))
    self._up = jax.jit(lambda s, size: image_ops.resize_to_grid(s, size, convention="torch"),
                       static_argnums=1)
    self.config, self.params, self.backbone, self.centroids = config, params, backbone, centroids
    self._memo: dict[tuple, dict[str, jax.Array]] = {}

  def patch_outputs(self, crop: np.ndarray) -> dict[str, jax.Array]:
    """(h, w, 3) uint8 → {"logits": (gh, gw, K), "pre": (gh, gw, D'), "feats": (gh, gw, C)}."""
    key = (crop.shape, hashlib.sha1(np.ascontiguousarray(crop).tobytes()).hexdigest())
    if key not in self._memo:
      if len(self._memo) > 64:
        self._memo.clear()
      x = _pad_to_patches(np.asarray(crop, np.float32) / 255.0, self.patch)
      grid = (x.shape[0] // self.patch, x.shape[1] // self.patch)
      psi_in, graph = self._extract(self.backbone, jnp.asarray(x[None]))
      logits, pre = self._infer(self.params, psi_in)
      self._memo[key] = {"logits": logits[0].reshape(*grid, -1), "pre": pre[0].reshape(*grid, -1),
                         "feats": graph[0].reshape(*grid, -1)}
    return self._memo[key]

  def scores(self, crop: np.ndarray, method: str) -> np.ndarray:
    out = self.patch_outputs(crop)
    if method == "psi":
      s = out["logits"]
    else:
      feat, centroids = self.centroids[method]
      s = negative_sq_distances(out[feat], centroids)
    gh, gw = s.shape[:2]
    up = self._up(s, (gh * self.patch, gw * self.patch))
    return np.asarray(up[:crop.shape[0], :crop.shape[1]])


def predict_image(model: WindowModel, rgb: np.ndarray, proto: Protocol,
                  methods: Sequence[str]) -> dict[str, np.ndarray]:
  """Cluster maps of one image at its own size, by the reference inference (`Protocol`).

  Args:
    model: the window model; rgb: (H, W, 3) uint8; methods: "psi" and names of
      ``model.centroids``.
  Returns:
    method → (H, W) int32 cluster ids (argmax of the window-averaged scores resized bilinearly
    to (H, W)).
  """
  resized = reference_resize(rgb, proto)
  out = {}
  for method in methods:
    merged = protocols.sliding_window(lambda crop, m=method: model.scores(crop, m), resized,
                                      window=proto.window, stride=proto.stride)
    out[method] = np.asarray(upsample_argmax(merged, rgb.shape[:2]))
  return out


def train_sample_features(model: WindowModel, source, proto: Protocol, *, max_images: int,
                          max_points: int, seed: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Backbone graph features and ψ pre-head features of a bounded sample of a training split.

  Up to ``max_images`` images (evenly spaced over the split), each resized as at evaluation
  (`reference_resize`) and centre-cropped to one window; at most ``max_points`` tokens kept
  (uniform subsample, ``seed``).

  Returns:
    ``(graph_features (n, C), pre_logits (n, D'), psi_clusters (n,))``: float32 features and
    ψ's argmax cluster of each kept token.
  """
  n = len(source)
  if n == 0:
    raise ValueError(f"the K-means split {source.split!r} of {source.name} has no images")
  picks = np.unique(np.linspace(0, n - 1, min(n, max(1, int(max_images)))).round().astype(int))
  feats, pres, psi = [], [], []
  for i in picks:
    img = reference_resize(source[int(i)].image, proto)
    h, w = img.shape[:2]
    y0, x0 = max(h - proto.window, 0) // 2, max(w - proto.window, 0) // 2
    out = model.patch_outputs(img[y0:y0 + proto.window, x0:x0 + proto.window])
    feats.append(np.asarray(out["feats"]).reshape(-1, out["feats"].shape[-1]))
    pres.append(np.asarray(out["pre"]).reshape(-1, out["pre"].shape[-1]))
    psi.append(np.asarray(jnp.argmax(out["logits"], axis=-1)).ravel())
  feats, pres, psi = np.concatenate(feats), np.concatenate(pres), np.concatenate(psi)
  if len(feats) > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(len(feats), max_points, replace=False))
    feats, pres, psi = feats[keep], pres[keep], psi[keep]
  return feats, pres, psi


def evaluate_dataset(config: ml_collections.ConfigDict, params: Any, backbone, source,
                     train_source, *, output_dir: str | pathlib.Path | None = None,
                     extra: dict[str, Any] | None = None, progress: bool = False
                     ) -> dict[str, Any]:
  """ψ, K-means and Ours* on a semantic dataset's split, streamed (SPEC §5–6).

  Per image: the reference resize and sliding-window inference (`predict_image`), then the
  (classes × clusters) confusion of every method is pooled (``protocols.confusion_counts``);
  only the pooled matrices and the first ``eval.num_overlays`` images' maps are kept. K-means
  (backbone graph features) and Ours* (ψ's pre-head features) are fit on
  `train_sample_features` of ``train_source``, with K (ψ's), C (the dataset's) and as many
  clusters as ψ uses on that sample (``report["kmeans_fit"]["psi_clusters_used"]``).

  Args:
    config: the training config with ``data.dataset`` and the ``eval`` section.
    params: ψ's parameters; backbone: the frozen backbone.
    source: the evaluation ``DataSource`` (``num_classes``, records with ``class_mask``).
    train_source: the ``DataSource`` the K-means baselines are fit on.
    output_dir: ``report.json``, ``metrics.json``, ``overlays/`` and (``eval.save_predictions``)
      ``predictions/<method>/<image id>.npy`` go there; None: nowhere.
    extra: more report entries.
  Returns:
    The report (as `evaluate`'s, plus ``"paper"`` and ``"protocol"``).
  Raises:
    ValueError: the dataset's class count differs from the protocol's, an image without a
      class mask, or too few training tokens for K-means.
  """
  name = str(config.data.dataset)
  proto = protocol(config, name)
  num_classes = check_dataset(source, name)
  ev, k = config.eval, int(config.psi.k)
  limit = int(ev.get("limit", 0) or 0)
  n = min(len(source), limit) if limit else len(source)
  if n == 0:
    raise ValueError(f"{name} split {source.split!r} has no images")
  key = jax.random.key(int(config.seed))
  model = WindowModel(config, params, backbone, {})
  train_feats, train_pre, train_psi = train_sample_features(
      model, train_source, proto, max_images=int(ev.kmeans_train_images),
      max_points=int(ev.kmeans_max_points), seed=int(config.seed))
  kmeans_args = dict(max_points=int(ev.kmeans_max_points), n_init=int(ev.kmeans_n_init),
                     max_iter=int(ev.kmeans_max_iter))
  # K-means also at the number of clusters ψ uses on the training sample: majority voting
  # rewards clusters used, so this is the fair comparison at ψ's granularity.
  used = int(len(np.unique(train_psi)))
  for base, points, feat in (("kmeans", train_feats, "feats"), ("ours_star", train_pre, "pre")):
    for count in dict.fromkeys((k, num_classes, used)):
      model.centroids[f"{base}_{count}"] = (feat, fit_kmeans(jax.random.fold_in(key, count),
                                                             points, count, **kmeans_args))
  methods = ["psi"] + list(model.centroids)
  clusters = {m: k if m == "psi" else int(model.centroids[m][1].shape[0]) for m in methods}
  confusion = {m: np.zeros((num_classes, clusters[m]), np.int64) for m in methods}
  out_dir = pathlib.Path(output_dir) if output_dir is not None else None
  shown, ids, pixels = [], [], 0
  for i in progress_lib.progress(range(n), desc=f"NeuralEF {name}", unit="img",
                                 enabled=progress):
    rec = source[i]
    if rec.class_mask is None:
      raise ValueError(f"{name} image {rec.id} has no class mask")
    preds = predict_image(model, rec.image, proto, methods)
    for m, pred in preds.items():
      confusion[m] += protocols.confusion_counts(rec.class_mask, pred, num_classes, clusters[m])
    pixels += int((rec.class_mask != metrics.IGNORE_INDEX).sum())
    ids.append(rec.id)
    if out_dir is not None and ev.get("save_predictions", False):
      for m, pred in preds.items():
        path = out_dir / "predictions" / m / f"{rec.id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, pred.astype(np.int32))
    if len(shown) < int(ev.get("num_overlays", 0) or 0):
      shown.append((LabelledImage(rec.id, rec.image, rec.class_mask.astype(np.int32)), preds))
  results = {m: confusion_scores(c) for m, c in confusion.items()}
  names = list(getattr(source, "class_names", None) or range(num_classes))
  report = {
      "dataset": {"name": name, "split": source.split, "images": ids,
                  "num_images": len(ids), "classes": [str(c) for c in names], "pixels": pixels},
      "protocol": dataclasses.asdict(proto),
      "objective": str(config.loss.get("objective", "segmentor")),
      "kmeans_fit": {"split": train_source.split, "tokens": int(len(train_feats)),
                     "psi_clusters_used": used},
      "backbone": {"name": backbone.config.name,
                   "weights_note": getattr(backbone.config, "weights_note", "")},
      "results": {m: {key_: v for key_, v in r.items() if key_ != "lookup"}
                  for m, r in results.items()},
      "paper": PAPER[name],
      **(extra or {}),
  }
  if out_dir is not None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(strict_json.dumps(report, indent=1))
    (out_dir / "metrics.json").write_text(strict_json.dumps(summary_metrics(report), indent=1))
    if shown:
      images = [im for im, _ in shown]
      per_method = {m: (clusters[m], [p[m] for _, p in shown]) for m in methods}
      _write_overlays(out_dir / "overlays", images, per_method, results)
  return report


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
  """The headline figures of a dataset report: per method mIoU and pixel accuracy (fractions)
  for both matchings, and ``num_images``."""
  return {"dataset": report["dataset"]["name"], "split": report["dataset"]["split"],
          "num_images": report["dataset"]["num_images"],
          **{m: {match: {"miou": r[match]["miou"], "pixel_accuracy": r[match]["pixel_accuracy"]}
                 for match in protocols.MATCHINGS} for m, r in report["results"].items()}}


def format_paper_table(report: dict[str, Any]) -> str:
  """The measured figures (majority voting, the paper's matching; %) beside the paper's."""
  paper = report.get("paper", {})
  fmt = lambda v: "—" if v is None else f"{v:.1f}"
  lines = [f"{'method':34s} {'mIoU':>6s} {'paper':>6s} {'acc':>6s} {'paper':>6s}"]
  k = report["results"]["psi"]["clusters"]
  for name, r in report["results"].items():   # the paper's baselines have ψ's K clusters
    base = name if name == "psi" else name.rsplit("_", 1)[0]
    ref = paper.get(base, {}) if r["clusters"] == k else {}
    title = f"{METHOD_TITLES.get(base, name)} ({r['clusters']})"
    lines.append(f"{title:34s} {100 * r['majority']['miou']:6.1f} {fmt(ref.get('miou')):>6s} "
                 f"{100 * r['majority']['pixel_accuracy']:6.1f} "
                 f"{fmt(ref.get('pixel_accuracy')):>6s}")
  return "\n".join(lines)


__all__ = [
    "PAPER", "PROTOCOLS", "LabelledImage", "Protocol", "WindowModel", "check_dataset",
    "confusion_scores", "eval_resize", "evaluate", "evaluate_dataset", "fit_kmeans",
    "format_paper_table", "format_report", "labelled_samples", "negative_sq_distances", "overlay",
    "predict_image", "protocol", "psi_inference", "reference_resize", "score_predictions",
    "summary_metrics", "train_sample_features", "upsample_argmax",
]
