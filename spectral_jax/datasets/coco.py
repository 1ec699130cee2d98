"""COCO20k (LOST's 19 817 COCO 2014 train images, SPEC §8) from the official COCO layout.

Extract ``train2014.zip`` and ``annotations_trainval2014.zip`` into one folder (``--data_dir``):
``train2014/COCO_train2014_<12-digit id>.jpg`` and ``annotations/instances_train2014.json``.
The image list is a file passed by path (``ids_file``; LOST ships it as
``coco_20k_filenames.txt``; without ``ids_file``, that name is looked for in the COCO folder,
which is what ``datasets.load("coco20k", data_dir)`` uses): one image per line,
either the numeric id or the file name (``COCO_train2014_000000000009.jpg``, with or without
a folder); its order is kept.

Boxes: COCO's float ``[x, y, w, h]`` → ``[floor(x), floor(y), ceil(x + w), ceil(y + h)]``
(0-based, x1/y1 exclusive, clipped to the image), so the integer box covers the float one.
Every annotation of the image is kept (crowd ones too); ``labels`` are COCO category ids
(1..90) and ``crowd`` the ``iscrowd`` flags.

Masks (``masks=True``, needs pycocotools: ``pip install -e '.[data]'``), decoded as COCO's
``annToMask``: a polygon list is rasterised with ``mask.frPyObjects`` and its parts merged
(polygons of fewer than 3 points have no area and are dropped), an uncompressed RLE (``counts``
a list, how COCO stores ``iscrowd`` regions) goes through ``frPyObjects``, a compressed RLE is
decoded as it is. pycocotools' rasteriser covers a pixel by where the polygon passes through it
(a 0..10 square covers pixels 0..9: area 100), not by PIL's rule (``ImageDraw.polygon`` also
fills the pixels the outline touches: 0..10); the two differ only on boundary pixels.

* ``instance_masks`` (N, H, W) bool: one per annotation, in the order of ``boxes``.
* ``instance_mask`` (H, W) uint8: annotation k as k + 1 (painted in order, later over earlier),
  crowd regions 255 (ignore, as COCO's evaluation ignores them) where no single instance lies.
* ``class_mask`` (H, W) uint8: the category id (1..90) of the instance painted there, crowd
  regions 255 where no single instance lies, 0 = background.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import warnings

import numpy as np

from spectral_jax.datasets import core

ARCHIVE = "train2014.zip and annotations_trainval2014.zip"
IDS_FILE = "coco_20k_filenames.txt"  # LOST's name for the 19 817-image list


def read_ids(path) -> list[int]:
  """Image ids of an id-list file (numbers or COCO file names, one per line)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise core.MissingDataError(f"COCO20k image list {str(path)!r} does not exist; pass the "
                                "19 817-image list (LOST's coco_20k_filenames.txt) by path")
  ids = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    m = re.fullmatch(r"(?:.*/)?(?:COCO_train2014_)?0*(\d+)(?:\.jpg)?", line)
    if m is None:
      raise ValueError(f"{str(path)!r} line {n}: {line!r} is neither an image id nor a COCO "
                       "train2014 file name")
    ids.append(int(m.group(1)))
  if not ids:
    raise ValueError(f"COCO20k image list {str(path)!r} lists no images")
  return ids


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _by_id(entries: list, what: str, key: str, skipped: dict[str, str]):
  """``(entry[key], entry)`` for the dict entries whose ``key`` is an integer; the others are
  recorded in ``skipped`` as ``"what[k]"`` → why."""
  for k, entry in enumerate(entries):
    value = entry.get(key) if isinstance(entry, dict) else None
    if _is_int(value):
      yield value, entry
    else:
      skipped[f"{what}[{k}]"] = f"not an entry with an integer {key!r}: {str(entry)[:80]}"


def check_annotation(ann: dict, where: str = "COCO annotation") -> None:
  """Refuses (ValueError, naming ``where``) an annotation whose ``bbox`` is not 4 finite
  numbers with w, h ≥ 0, whose ``category_id`` is not an integer in 1..254 (the class mask is
  uint8, 255 = ignore; COCO's ids are 1..90) or whose ``iscrowd`` is not 0/1."""
  bbox = ann.get("bbox")
  if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in bbox) or bbox[2] < 0 or bbox[3] < 0):
    raise ValueError(f"{where}: 'bbox' must be [x, y, w, h], 4 finite numbers with w, h ≥ 0; "
                     f"got {bbox!r}")
  category = ann.get("category_id")
  if not _is_int(category) or not 1 <= category <= core.IGNORE - 1:
    raise ValueError(f"{where}: 'category_id' must be an integer in 1..{core.IGNORE - 1}; got "
                     f"{category!r}")
  if ann.get("iscrowd", 0) not in (0, 1):
    raise ValueError(f"{where}: 'iscrowd' must be 0 or 1; got {ann.get('iscrowd')!r}")


def coco_box(bbox, hw) -> list[int]:
  """COCO float [x, y, w, h] → covering int [x0, y0, x1, y1], clipped to (H, W)."""
  x, y, w, h = (float(v) for v in bbox)
  return [max(0, math.floor(x)), max(0, math.floor(y)), min(hw[1], math.ceil(x + w)),
          min(hw[0], math.ceil(y + h))]


class COCO20k(core.DataSource):
  """The COCO 2014 train images of ``ids_file`` with their instance boxes.

  Args:
    data_dir: the folder holding ``train2014/`` and ``annotations/`` (or its ``coco/``).
    ids_file: the image list (see the module docstring); None: ``coco_20k_filenames.txt`` in
      the COCO folder.
    split: "train" (COCO20k is a subset of train2014).
    masks: decode the instance masks (pycocotools).
  Raises:
    core.MissingDataError: the images, the json or the list is missing, or a listed image is
      not in the json.
  """

  def __init__(self, data_dir, ids_file=None, split: str = "train", masks: bool = True):
    self.masks = masks
    if split != "train":
      raise ValueError(f"COCO20k is a subset of train2014; split must be 'train', got {split!r}")
    self.name, self.split = "coco20k", split
    self.root = core.find_root(data_dir, ["coco", "COCO"], marker="train2014",
                               dataset="COCO 2014", archives=ARCHIVE)
    if ids_file is None:
      ids_file = self.root / IDS_FILE
    ann_path = core.need(self.root / "annotations" / "instances_train2014.json", ARCHIVE)
    with open(ann_path) as f:
      data = json.load(f)
    lists = {key: data.get(key) if isinstance(data, dict) else None
             for key in ("images", "annotations")}
    for key, value in lists.items():
      if not isinstance(value, list):
        raise ValueError(f"{str(ann_path)!r}: {key!r} must be a list of entries; got "
                         f"{type(value).__name__}")
    # Entries without a usable id are skipped (listed in `skipped`, never an abort).
    self.skipped: dict[str, str] = {}
    self._images = dict(_by_id(lists["images"], "images", "id", self.skipped))
    self._anns: dict[int, list] = {}
    for image_id, a in _by_id(lists["annotations"], "annotations", "image_id", self.skipped):
      self._anns.setdefault(image_id, []).append(a)
    wanted = read_ids(ids_file)
    missing = [i for i in wanted if i not in self._images]
    if missing:
      raise core.MissingDataError(f"{len(missing)} of {len(wanted)} listed images (first: id "
                                  f"{missing[0]}) are not in {str(ann_path)!r}")
    self.ids = [str(i) for i in wanted]

  def image_path(self, image_id: str) -> pathlib.Path:
    name = self._images[int(image_id)].get("file_name")
    if not isinstance(name, str) or not name:
      raise ValueError(f"COCO {image_id}: 'file_name' {name!r} is not a file name")
    return self.root / "train2014" / name

  def read(self, image_id: str) -> core.Record:
    """The record of ``image_id``.

    Raises:
      ValueError: a malformed entry (a non-integer size, a ``bbox`` that is not 4 finite
        numbers, a category id outside 1..254), naming the image and the annotation.
    """
    info = self._images[int(image_id)]
    if not (_is_int(info.get("height")) and _is_int(info.get("width"))):
      raise ValueError(f"COCO {image_id}: height/width {info.get('height')!r}, "
                       f"{info.get('width')!r} are not integers")
    for a in self._anns.get(int(image_id), []):
      check_annotation(a, f"COCO {image_id} annotation {a.get('id')}")
    image = core.read_rgb(self.image_path(image_id), ARCHIVE)
    hw = image.shape[:2]
    if (int(info["height"]), int(info["width"])) != hw:
      raise ValueError(f"COCO {image_id}: the json says {(info['height'], info['width'])} "
                       f"(H, W) but the JPEG is {hw}")
    anns = self._anns.get(int(image_id), [])
    boxes = np.asarray([coco_box(a["bbox"], hw) for a in anns], np.int32).reshape(-1, 4)
    labels = np.asarray([a["category_id"] for a in anns], np.int32)
    flags = np.zeros(len(anns), bool)
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool)
    record = core.Record(id=image_id, image=image, boxes=boxes, labels=labels, difficult=flags,
                         truncated=flags.copy(), crowd=crowd,
                         path=str(self.image_path(image_id)))
    if self.masks:
      record.instance_masks = np.zeros((len(anns), *hw), bool)
      for k, a in enumerate(anns):
        record.instance_masks[k] = annotation_mask(a, hw, f"COCO {image_id} annotation "
                                                           f"{a.get('id')}")
      record.instance_mask, record.class_mask = label_maps(record.instance_masks, labels, crowd)
    return record


def _mask_api():
  try:
    from pycocotools import mask  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("COCO instance masks need pycocotools: pip install -e '.[data]' (or pip "
                      "install pycocotools), or read boxes only with masks=False") from e
  # pycocotools 2.0.11's decode passes copy=False to np.array on NumPy 2 (a DeprecationWarning
  # per mask, harmless: the result is a copy); silenced for that module and message only.
  warnings.filterwarnings("ignore", message="__array__ implementation doesn.t accept a copy",
                          category=DeprecationWarning, module="pycocotools")
  return mask


def annotation_mask(ann: dict, hw, where: str = "COCO annotation") -> np.ndarray:
  """(H, W) bool mask of one COCO annotation's ``segmentation`` (see the module docstring).

  Raises:
    ValueError: no segmentation, one in neither the polygon nor the RLE format, or a polygon
      whose coordinates are not finite numbers (NaN would rasterise to an arbitrary mask).
  """
  mask_api = _mask_api()
  h, w = int(hw[0]), int(hw[1])
  segm = ann.get("segmentation")
  if isinstance(segm, list):
    for poly in segm:
      if not isinstance(poly, list) or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          for v in poly):
        raise ValueError(f"{where}: a 'segmentation' polygon must be a list of finite "
                         f"numbers; got {str(poly)[:80]}")
    polygons = [[float(v) for v in poly] for poly in segm if len(poly) >= 6]
    if not polygons:
      return np.zeros((h, w), bool)
    rle = mask_api.merge(mask_api.frPyObjects(polygons, h, w))
  elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
    if [int(v) for v in segm["size"]] != [h, w]:
      raise ValueError(f"{where}: RLE size {segm['size']} is not the image's {[h, w]}")
    rle = mask_api.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
  else:
    raise ValueError(f"{where}: 'segmentation' must be a polygon list or an RLE dict; got "
                     f"{type(segm).__name__}")
  return mask_api.decode(rle).astype(bool)


def label_maps(instance_masks: np.ndarray, labels: np.ndarray,
               crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(instance_mask, class_mask) (H, W) uint8 from (N, H, W) masks (see the module docstring).

  Raises:
    ValueError: more than 254 annotations (ids must stay below the ignore value 255).
  """
  n = len(instance_masks)
  if n > core.IGNORE - 1:
    raise ValueError(f"{n} annotations in one image: instance ids would reach the ignore value "
                     f"{core.IGNORE}")
  instance = np.zeros(instance_masks.shape[1:], np.uint8)
  classes = np.zeros(instance_masks.shape[1:], np.uint8)
  for k in np.flatnonzero(crowd):
    instance[instance_masks[k]] = classes[instance_masks[k]] = core.IGNORE
  for k in np.flatnonzero(~np.asarray(crowd, bool)):
    instance[instance_masks[k]] = k + 1
    classes[instance_masks[k]] = labels[k]
  return instance, classes
