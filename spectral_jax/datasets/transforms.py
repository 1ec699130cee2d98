"""Every training and evaluation crop, as named NumPy / PIL transforms.

Two training augmentations, different by design:

* `train_augment` (`TrainAugment`): the reference's fresh augmentation, drawn again every epoch
  by the grain pipeline (``datasets.pipeline``); steps 1-5 below.
* `fixed_views` (`FixedViews`): a fixed set of square views per image, a pure function of
  ``(seed, image, view)``, for the NeuralEF feature cache (``neuralef.feature_cache``): the
  backbone's features of these views are computed once and stored, so they cannot change.

The reference's training augmentation and evaluation resize:

NeuralEF's segmentation training (Deng & Luo) uses mmsegmentation's Pascal Context pipeline;
each step there is one function here, with its defaults (``configs/_base_/datasets/
pascal_context_59.py``: ``img_scale = (520, 520)``, ``ratio_range = (0.5, 2.0)``,
``cat_max_ratio = 0.75``, flip ``prob = 0.5``, ``PhotoMetricDistortion()``, pad to the crop):

1. `random_resize`: ratio r ~ U(0.5, 2.0); the image is rescaled, keeping its aspect ratio, to
   fit in ``(r·520, r·520)`` (mmcv's ``rescale_size`` rule, `rescale_size`); labels nearest.
2. `random_crop`: a ``crop_size`` window at uniform offsets (mmseg's ``RandomCrop``: offsets in
   ``[0, H − crop]``, a smaller image is taken whole); with labels and ``cat_max_ratio < 1`` up
   to 10 draws until no class covers ``cat_max_ratio`` of the crop's labelled pixels.
3. `random_flip`: horizontal, probability 0.5.
4. `photometric_distortion`: mmseg's ``PhotoMetricDistortion`` in its order — brightness
   (+U(−32, 32)), contrast (×U(0.5, 1.5)) first or last (a coin), saturation (×U(0.5, 1.5)) and
   hue (+randint(−18, 18) in OpenCV's half-degree units), each applied with probability ½ and
   each rounding back to uint8. Saturation and hue go through a float HSV here (OpenCV
   quantises H, S, V to uint8 in between; these differ from it by at most a grey level or so).
5. `pad_to`: up to the crop size (image 0, labels 255), bottom / right.

`eval_resize` is the evaluation protocol (mmseg's test ``Resize(scale=(520, 520),
keep_ratio=True)``). Every random transform takes an explicit ``np.random.Generator`` and
returns what it drew, so a draw is reproducible from its seed and inspectable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from spectral_jax import image_ops, metrics

IGNORE = metrics.IGNORE_INDEX  # the one ignore label (VOC void, padding)

# mmseg configs/_base_/datasets/pascal_context_59.py
REFERENCE_SCALE = (520, 520)
REFERENCE_RATIO_RANGE = (0.5, 2.0)
REFERENCE_CAT_MAX_RATIO = 0.75
# mmseg PhotoMetricDistortion defaults
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """The training augmentation's parameters (reference values as defaults).

  Attributes:
    crop_size: side of the square training crop in pixels.
    scale: (a, b) of the random resize: the image fits in (r·a, r·b) (keep ratio).
    ratio_range: (lo, hi) of r ~ U(lo, hi).
    cat_max_ratio: crop re-draws while one class covers at least this share of the crop's
      labelled pixels (needs labels; 1.0 disables).
    flip_prob: probability of a horizontal flip.
    photometric: apply `photometric_distortion`.
    brightness_delta, contrast_range, saturation_range, hue_delta: its parameters.
  """
  crop_size: int = 336
  scale: tuple[int, int] = REFERENCE_SCALE
  ratio_range: tuple[float, float] = REFERENCE_RATIO_RANGE
  cat_max_ratio: float = REFERENCE_CAT_MAX_RATIO
  flip_prob: float = 0.5
  photometric: bool = True
  brightness_delta: float = BRIGHTNESS_DELTA
  contrast_range: tuple[float, float] = CONTRAST_RANGE
  saturation_range: tuple[float, float] = SATURATION_RANGE
  hue_delta: int = HUE_DELTA

  def __post_init__(self):
    if int(self.crop_size) < 1:
      raise ValueError(f"crop_size must be ≥ 1; got {self.crop_size}")
    if len(self.scale) != 2 or min(self.scale) < 1:
      raise ValueError(f"scale must be two sides ≥ 1; got {self.scale}")
    lo, hi = self.ratio_range
    if not 0 < lo <= hi:
      raise ValueError(f"ratio_range must satisfy 0 < lo ≤ hi; got {self.ratio_range}")
    if not 0 < self.cat_max_ratio <= 1:
      raise ValueError(f"cat_max_ratio must be in (0, 1]; got {self.cat_max_ratio}")
    if not 0 <= self.flip_prob <= 1:
      raise ValueError(f"flip_prob must be in [0, 1]; got {self.flip_prob}")


# ----------------------------------------------------------------------------- geometry


def rescale_size(hw: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
  """(h, w) of an image rescaled with kept aspect ratio to fit ``scale`` (mmcv's rule).

  factor = min(max(scale) / max(h, w), min(scale) / min(h, w)); each side
  ``int(side · factor + 0.5)``. ``scale = (520, 520)`` puts the long side at 520;
  ``(2048, 512)`` the short side at 512 unless the long one would pass 2048.
  """
  h, w = int(hw[0]), int(hw[1])
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) uint8 label map (no new label values)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  h, w = shape
  return np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))


def resize(image: np.ndarray, shape: tuple[int, int],
           labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """(h, w) bilinear image (``image_ops.resize_to``) and nearest labels."""
  if tuple(image.shape[:2]) == tuple(shape):
    return image, labels
  out = image_ops.resize_to(image, shape)
  return out, None if labels is None else _resize_labels(labels, shape)


def random_resize(image: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None,
                  *, scale: tuple[int, int] = REFERENCE_SCALE,
                  ratio_range: tuple[float, float] = REFERENCE_RATIO_RANGE):
  """Resize to fit ``(r·scale[0], r·scale[1])``, r ~ U(ratio_range), aspect ratio kept.

  Args:
    image: (H, W, 3) uint8. labels: optional (H, W) uint8.
    rng: the draw's generator.
  Returns:
    ``(image, labels, r)`` at `rescale_size`'s size for ``int(scale · r)``.
  """
  ratio = float(rng.uniform(*ratio_range))
  target = (int(scale[0] * ratio), int(scale[1] * ratio))
  image, labels = resize(image, rescale_size(image.shape[:2], target), labels)
  return image, labels, ratio


def crop_offsets(hw: tuple[int, int], crop_size: int, rng: np.random.Generator) -> tuple[int, int]:
  """(y0, x0) uniform in ``[0, max(H − crop, 0)] × [0, max(W − crop, 0)]`` (mmseg)."""
  y0 = int(rng.integers(0, max(hw[0] - crop_size, 0) + 1))
  x0 = int(rng.integers(0, max(hw[1] - crop_size, 0) + 1))
  return y0, x0


def random_crop(image: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None,
                *, crop_size: int = 336, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE,
                max_tries: int = 10):
  """A ``crop_size`` window (smaller images: the whole side), mmseg's ``RandomCrop``.

  With ``labels`` and ``cat_max_ratio < 1``, up to ``max_tries`` offsets are drawn until the
  crop holds ≥ 2 classes and none covers ``cat_max_ratio`` of its non-ignored pixels (the last
  draw is kept otherwise). Labels choose the window only; they are not part of the crop's
  pixels.

  Returns:
    ``(image crop, labels crop or None, (y0, x0))``.
  """
  def window(a, y0, x0):
    return a[y0:y0 + crop_size, x0:x0 + crop_size]

  y0, x0 = crop_offsets(image.shape[:2], crop_size, rng)
  if labels is not None and cat_max_ratio < 1.0:
    for _ in range(max_tries - 1):
      seg = window(labels, y0, x0)
      _, counts = np.unique(seg[seg != ignore_index], return_counts=True)
      if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
        break
      y0, x0 = crop_offsets(image.shape[:2], crop_size, rng)
  crop = np.ascontiguousarray(window(image, y0, x0))
  return crop, None if labels is None else np.ascontiguousarray(window(labels, y0, x0)), (y0, x0)


def random_flip(image: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None,
                *, prob: float = 0.5):
  """Horizontal flip with probability ``prob``. Returns ``(image, labels, flipped)``."""
  flipped = bool(rng.uniform() < prob)
  if not flipped:
    return image, labels, False
  return (np.ascontiguousarray(image[:, ::-1]),
          None if labels is None else np.ascontiguousarray(labels[:, ::-1]), True)


def pad_to(image: np.ndarray, size: int, labels: np.ndarray | None = None, *, pad_val: int = 0,
           seg_pad_val: int = IGNORE):
  """Pads bottom / right up to ``size × size`` (mmseg ``Pad``). Returns ``(image, labels)``."""
  ph, pw = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
  if ph == pw == 0:
    return image, labels
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=pad_val)
  if labels is not None:
    labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=seg_pad_val)
  return image, labels


def eval_resize(image: np.ndarray, labels: np.ndarray | None = None, *,
                scale: tuple[int, int] = REFERENCE_SCALE):
  """The evaluation resize: keep ratio, fit ``scale`` (`rescale_size`); ``(image, labels)``.

  The reference scores predictions at the original label resolution: pass ``labels=None`` and
  upsample the prediction to the label map instead.
  """
  return resize(image, rescale_size(image.shape[:2], scale), labels)


# ----------------------------------------------------------------------------- photometric


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """mmseg's ``convert``: ``uint8(clip(image · alpha + beta, 0, 255))`` (truncating)."""
  return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """(..., 3) RGB in [0, 1] → HSV in [0, 1] (hue as a fraction of a turn; ``colorsys``)."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(-1)
  c = v - rgb.min(-1)
  s = np.where(v > 0, c / np.where(v > 0, v, 1), 0.0)
  safe = np.where(c > 0, c, 1)
  h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
  h = np.where(c > 0, (h / 6.0) % 1.0, 0.0)
  return np.stack([h, s, v], -1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """(..., 3) HSV in [0, 1] → RGB in [0, 1] (the inverse of `rgb_to_hsv`)."""
  hsv = np.asarray(hsv, np.float64)
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(np.int64) % 6
  choices = [np.stack(x, -1) for x in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                       (v, p, q))]
  return np.select([(i == k)[..., None] for k in range(6)], choices)


def _through_hsv(image: np.ndarray, fn) -> np.ndarray:
  hsv = fn(rgb_to_hsv(image / 255.0))
  return np.clip(np.round(hsv_to_rgb(hsv) * 255.0), 0, 255).astype(np.uint8)


def adjust_saturation(image: np.ndarray, alpha: float) -> np.ndarray:
  """S ← clip(S · alpha, 0, 1) in HSV; uint8 in and out."""
  def f(hsv):
    hsv[..., 1] = np.clip(hsv[..., 1] * alpha, 0, 1)
    return hsv
  return _through_hsv(image, f)


def adjust_hue(image: np.ndarray, delta: int) -> np.ndarray:
  """H ← H + delta half-degrees (OpenCV's uint8 hue unit, 180 per turn), modulo a turn."""
  def f(hsv):
    hsv[..., 0] = (hsv[..., 0] + delta / 180.0) % 1.0
    return hsv
  return _through_hsv(image, f)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, *,
                           brightness_delta: float = BRIGHTNESS_DELTA,
                           contrast_range: tuple[float, float] = CONTRAST_RANGE,
                           saturation_range: tuple[float, float] = SATURATION_RANGE,
                           hue_delta: int = HUE_DELTA) -> tuple[np.ndarray, dict[str, Any]]:
  """mmseg's ``PhotoMetricDistortion`` (see the module docstring for the order).

  Args:
    image: (H, W, 3) uint8 RGB.
    rng: the draw's generator (draws in mmseg's order: brightness coin [and delta], contrast
      mode, [contrast coin and alpha], saturation coin [alpha], hue coin [delta], [contrast]).
  Returns:
    ``(image, params)``; params: ``brightness`` (delta or None), ``contrast`` (alpha or None),
    ``contrast_first`` (bool), ``saturation`` (alpha or None), ``hue`` (delta or None).
  """
  params: dict[str, Any] = {"brightness": None, "contrast": None, "saturation": None,
                            "hue": None}
  out = image
  if rng.integers(2):
    params["brightness"] = float(rng.uniform(-brightness_delta, brightness_delta))
    out = _convert(out, beta=params["brightness"])
  contrast_first = bool(rng.integers(2))
  params["contrast_first"] = contrast_first

  def contrast(img):
    if rng.integers(2):
      params["contrast"] = float(rng.uniform(*contrast_range))
      img = _convert(img, alpha=params["contrast"])
    return img

  if contrast_first:
    out = contrast(out)
  if rng.integers(2):
    params["saturation"] = float(rng.uniform(*saturation_range))
    out = adjust_saturation(out, params["saturation"])
  if rng.integers(2):
    params["hue"] = int(rng.integers(-hue_delta, hue_delta))
    out = adjust_hue(out, params["hue"])
  if not contrast_first:
    out = contrast(out)
  return out, params


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass(frozen=True)
class FixedViews:
  """The fixed views of the feature cache: every image gives ``views_per_image`` square crops
  of ``image_size`` pixels (`fixed_views`). The field names are part of the feature cache's
  key (``neuralef.feature_cache.cache_key`` hashes ``dataclasses.asdict`` of this): keep them.

  Attributes:
    image_size: side of the square crops in pixels (a multiple of the patch size is best:
      the backbone crops the rest away).
    views_per_image: V ≥ 1 crops per image; view 0 is the centre crop.
    min_scale, max_scale: range of the short-side scale s of views ≥ 1 (1 ≤ min ≤ max).
    flip: random horizontal flips for views ≥ 1.
    seed: seed of the crop draws.
  """
  image_size: int = 336
  views_per_image: int = 4
  min_scale: float = 1.0
  max_scale: float = 2.0
  flip: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.image_size < 1 or self.views_per_image < 1:
      raise ValueError(f"image_size and views_per_image must be ≥ 1; got {self.image_size}, "
                       f"{self.views_per_image}")
    if not 1.0 <= self.min_scale <= self.max_scale:
      raise ValueError(f"need 1 ≤ min_scale ≤ max_scale; got {self.min_scale}, {self.max_scale}")


def fixed_views(rgb: np.ndarray, image_id: int, views: FixedViews) -> np.ndarray:
  """The ``views.views_per_image`` square crops of one image.

  View 0 is the centre crop after resizing the short side to ``image_size``; the others resize
  the short side to ``s·image_size`` with ``s ~ U(min_scale, max_scale)``, crop a random square
  and flip it horizontally with probability ½ (the reference trains on random resized crops and
  flips). Draws come from ``np.random.default_rng([seed, image_id, view])``, so the views are a
  function of their arguments (and of the feature cache's key).

  Args:
    rgb: (H, W, 3) uint8 image.
    image_id: the image's index in the list (seeds its draws).
    views: the views to take.
  Returns:
    (V, S, S, 3) uint8 crops, S = ``views.image_size``.
  """
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
    raise ValueError(f"images must be (H, W, 3) uint8; got {rgb.shape} {rgb.dtype}")
  size = views.image_size
  h, w = rgb.shape[:2]
  out = []
  for v in range(views.views_per_image):
    rng = np.random.default_rng([views.seed, image_id, v])
    scale = 1.0 if v == 0 else rng.uniform(views.min_scale, views.max_scale)
    short = max(size, int(round(size * scale)))
    rh, rw = (short, max(short, round(w * short / h))) if h <= w else (
        max(short, round(h * short / w)), short)
    img, _ = resize(rgb, (rh, rw))
    if v == 0:
      y0, x0 = (rh - size) // 2, (rw - size) // 2
    else:
      y0, x0 = int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1))
    crop = img[y0:y0 + size, x0:x0 + size]
    if v > 0 and views.flip and rng.uniform() < 0.5:
      crop = crop[:, ::-1]
    out.append(np.ascontiguousarray(crop))
  return np.stack(out)


AUG_PARAM_NAMES = ("ratio", "y0", "x0", "flip", "brightness", "contrast", "saturation", "hue")


def train_augment(image: np.ndarray, rng: np.random.Generator, aug: TrainAugment = TrainAugment(),
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Resize → crop → flip → photometric → pad: one training crop (steps 1-5 of the module).

  Args:
    image: (H, W, 3) uint8 RGB.
    rng: the draw's generator.
    aug: the parameters.
    labels: optional (H, W) uint8 labels, used only by ``cat_max_ratio`` to choose the crop.
  Returns:
    ``(crop, params)``: (S, S, 3) uint8, S = ``aug.crop_size``; params (8,) float32 in the
    order of `AUG_PARAM_NAMES`; a photometric step not applied has its identity value
    (brightness 0, contrast 1, saturation 1, hue 0: each of those leaves a uint8 image as is).
  """
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"images must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
  size = int(aug.crop_size)
  image, labels, ratio = random_resize(image, rng, labels, scale=tuple(aug.scale),
                                       ratio_range=tuple(aug.ratio_range))
  image, labels, (y0, x0) = random_crop(image, rng, labels, crop_size=size,
                                        cat_max_ratio=aug.cat_max_ratio)
  image, labels, flipped = random_flip(image, rng, labels, prob=aug.flip_prob)
  photo = {"brightness": None, "contrast": None, "saturation": None, "hue": None}
  if aug.photometric:
    image, photo = photometric_distortion(
        image, rng, brightness_delta=aug.brightness_delta,
        contrast_range=tuple(aug.contrast_range), saturation_range=tuple(aug.saturation_range),
        hue_delta=int(aug.hue_delta))
  image, _ = pad_to(image, size)
  value = lambda name, identity: identity if photo[name] is None else float(photo[name])
  params = np.asarray([ratio, y0, x0, float(flipped), value("brightness", 0.0),
                       value("contrast", 1.0), value("saturation", 1.0), value("hue", 0.0)],
                      np.float32)
  return image, params


__all__ = [
    "AUG_PARAM_NAMES", "FixedViews", "IGNORE", "REFERENCE_CAT_MAX_RATIO", "REFERENCE_RATIO_RANGE",
    "REFERENCE_SCALE", "TrainAugment", "adjust_hue", "adjust_saturation", "crop_offsets",
    "eval_resize", "fixed_views", "hsv_to_rgb", "pad_to", "photometric_distortion", "random_crop",
    "random_flip", "random_resize", "rescale_size", "resize", "rgb_to_hsv", "train_augment",
]
