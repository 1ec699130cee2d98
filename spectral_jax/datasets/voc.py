"""PASCAL VOC 2007 / 2012 from the official ``VOCdevkit`` layout (no download).

Extract into one folder (``--data_dir``):

* VOC2007: ``VOCtrainval_06-Nov-2007.tar`` (trainval; ``VOCtest_06-Nov-2007.tar`` for test).
* VOC2012: ``VOCtrainval_11-May-2012.tar``.

which gives ``VOCdevkit/VOC20xx/{JPEGImages, Annotations, ImageSets/{Main,Segmentation},
SegmentationClass, SegmentationObject}``. ``data_dir`` may be the folder holding
``VOCdevkit/``, ``VOCdevkit/`` itself, or ``VOC20xx/``.

Ground truth per image id (:class:`~spectral_jax.datasets.core.Record`):

* boxes from ``Annotations/ID.xml``: VOC's ``xmin..xmax`` are 1-based inclusive pixel indices;
  as LOST (``extract_gt_VOC``, whose CorLoc DSM reuses, SPEC §8) the record holds
  ``[xmin − 1, ymin − 1, xmax, ymax]``: 0-based with x1/y1 exclusive, so ``xmin=1, xmax=W``
  spans the whole image. Every object is kept; ``difficult`` / ``truncated`` are kept as flags
  (LOST's default evaluation keeps all boxes; ``--no_hard`` would drop them).
* ``class_mask`` / ``instance_mask`` from ``SegmentationClass/ID.png`` /
  ``SegmentationObject/ID.png`` (palette PNGs of indices, 255 = void), for the images of the
  segmentation subset; None for the others.
"""

from __future__ import annotations

import math
import pathlib
import xml.etree.ElementTree as ET

import numpy as np

from spectral_jax.datasets import core

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
ARCHIVES = {"2007": "VOCtrainval_06-Nov-2007.tar (test: VOCtest_06-Nov-2007.tar)",
            "2012": "VOCtrainval_11-May-2012.tar"}
TASKS = {"detection": "Main", "segmentation": "Segmentation"}


def parse_annotation(path: pathlib.Path, archive: str = "the VOC archive") -> dict:
  """Objects of one VOC XML file.

  Returns:
    dict with "boxes" (N, 4) int32 0-based exclusive, "labels" (N,) int32 (index into
    CLASS_NAMES), "difficult" / "truncated" (N,) bool, "size" (H, W) from ``<size>``.
  Raises:
    ValueError: malformed XML, an unknown class name, or a box outside its image.
  """
  try:
    root = ET.parse(core.need(path, archive)).getroot()
  except ET.ParseError as e:
    raise ValueError(f"cannot parse {str(path)!r} as VOC XML: {e}") from e

  def number(node, tag):
    child = node.find(tag)
    if child is None or child.text is None:
      raise ValueError(f"{str(path)!r}: <{tag}> missing in <{node.tag}>")
    try:
      value = float(child.text)
    except ValueError:
      value = math.nan
    if not math.isfinite(value) or abs(value) > 2**31 - 1:
      raise ValueError(f"{str(path)!r}: <{tag}>{child.text.strip()}</{tag}> in <{node.tag}> is "
                       "not a finite pixel coordinate")
    return value

  size = root.find("size")
  hw = (int(number(size, "height")), int(number(size, "width"))) if size is not None else None
  boxes, labels, difficult, truncated = [], [], [], []
  for obj in root.findall("object"):
    name = (obj.findtext("name") or "").strip()
    if name not in CLASS_NAMES[1:]:
      raise ValueError(f"{str(path)!r}: unknown VOC class {name!r}")
    bb = obj.find("bndbox")
    if bb is None:
      raise ValueError(f"{str(path)!r}: an object without <bndbox>")
    xmin, ymin, xmax, ymax = (int(round(number(bb, t))) for t in ("xmin", "ymin", "xmax", "ymax"))
    box = [xmin - 1, ymin - 1, xmax, ymax]
    if box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1] or (
        hw is not None and (box[2] > hw[1] or box[3] > hw[0])):
      raise ValueError(f"{str(path)!r}: box {[xmin, ymin, xmax, ymax]} (1-based inclusive) is "
                       f"empty or outside the {hw} image")
    boxes.append(box)
    labels.append(CLASS_NAMES.index(name))
    difficult.append(obj.findtext("difficult", "0").strip() == "1")
    truncated.append(obj.findtext("truncated", "0").strip() == "1")
  return {"boxes": np.asarray(boxes, np.int32).reshape(-1, 4),
          "labels": np.asarray(labels, np.int32), "difficult": np.asarray(difficult, bool),
          "truncated": np.asarray(truncated, bool), "size": hw}


class VOC(core.DataSource):
  """One split of VOC2007 or VOC2012.

  Args:
    data_dir: the folder holding ``VOCdevkit/`` (or ``VOCdevkit/``, or ``VOC20xx/``).
    year: "2007" or "2012".
    split: a file of ``ImageSets/<Main|Segmentation>/``: "trainval" (CorLoc), "train",
      "val" (semantic segmentation), "test" (VOC2007 test archive).
    task: "detection" (``ImageSets/Main``) or "segmentation" (``ImageSets/Segmentation``).
    masks: read ``SegmentationClass`` / ``SegmentationObject`` where present.
  Raises:
    core.MissingDataError: the layout or the split file is missing (names the archive).
  """

  def __init__(self, data_dir, year: str = "2007", split: str = "trainval",
               task: str = "detection", masks: bool = True):
    year = str(year)
    if year not in ARCHIVES:
      raise ValueError(f"VOC year must be one of {sorted(ARCHIVES)}; got {year!r}")
    if task not in TASKS:
      raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}")
    self.year, self.task, self.masks = year, task, masks
    self.num_classes, self.class_names = len(CLASS_NAMES), CLASS_NAMES  # class_mask's labels
    self.archive = ARCHIVES[year]
    self.name, self.split = f"voc{year[2:]}", split
    self.root = core.find_root(data_dir, [f"VOCdevkit/VOC{year}", f"VOC{year}"],
                               marker="JPEGImages", dataset=f"VOC{year}",
                               archives=self.archive)
    split_file = self.root / "ImageSets" / TASKS[task] / f"{split}.txt"
    if not split_file.exists():
      have = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
      raise core.MissingDataError(
          f"no split {split!r} for VOC{year} {task}: {str(split_file)!r} is missing (splits "
          f"there: {have or 'none'}); extract {self.archive}")
    self.ids = core.read_split_file(split_file, self.archive)
    core.need(self.root / "Annotations", self.archive)

  def image_path(self, image_id: str) -> pathlib.Path:
    return self.root / "JPEGImages" / f"{image_id}.jpg"

  def read(self, image_id: str) -> core.Record:
    image = core.read_rgb(self.image_path(image_id), self.archive)
    ann = parse_annotation(self.root / "Annotations" / f"{image_id}.xml", self.archive)
    if ann["size"] is not None and ann["size"] != image.shape[:2]:
      raise ValueError(f"VOC{self.year} {image_id}: the XML says {ann['size']} (H, W) but the "
                       f"JPEG is {image.shape[:2]}")
    class_mask = instance_mask = None
    if self.masks:
      cls_path = self.root / "SegmentationClass" / f"{image_id}.png"
      obj_path = self.root / "SegmentationObject" / f"{image_id}.png"
      if self.task == "segmentation" or cls_path.exists():
        class_mask = self._label_map(cls_path, image.shape[:2])
      if obj_path.exists():
        instance_mask = self._label_map(obj_path, image.shape[:2])
    return core.Record(id=image_id, image=image, boxes=ann["boxes"], labels=ann["labels"],
                       difficult=ann["difficult"], truncated=ann["truncated"],
                       class_mask=class_mask, instance_mask=instance_mask,
                       path=str(self.image_path(image_id)))

  def _label_map(self, path: pathlib.Path, hw) -> np.ndarray:
    labels = core.read_label_png(path, self.archive)
    if labels.shape != tuple(hw):
      raise ValueError(f"{str(path)!r} is {labels.shape} but its image is {tuple(hw)}")
    bad = np.setdiff1d(np.unique(labels), np.r_[np.arange(len(CLASS_NAMES)), core.IGNORE])
    if "SegmentationClass" in str(path) and bad.size:
      raise ValueError(f"{str(path)!r} holds label values {bad.tolist()} outside VOC's 0..20 "
                       "and 255")
    return labels
