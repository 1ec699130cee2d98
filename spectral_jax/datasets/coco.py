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
(1..90). Boxes only: no instance masks (they would need pycocotools' polygon / RLE decoding).
"""

from __future__ import annotations

import json
import math
import pathlib
import re

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
  Raises:
    core.MissingDataError: the images, the json or the list is missing, or a listed image is
      not in the json.
  """

  def __init__(self, data_dir, ids_file=None, split: str = "train"):
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
    self._images = {int(im["id"]): im for im in data["images"]}
    self._anns: dict[int, list] = {}
    for a in data["annotations"]:
      self._anns.setdefault(int(a["image_id"]), []).append(a)
    wanted = read_ids(ids_file)
    missing = [i for i in wanted if i not in self._images]
    if missing:
      raise core.MissingDataError(f"{len(missing)} of {len(wanted)} listed images (first: id "
                                  f"{missing[0]}) are not in {str(ann_path)!r}")
    self.ids = [str(i) for i in wanted]

  def image_path(self, image_id: str) -> pathlib.Path:
    return self.root / "train2014" / self._images[int(image_id)]["file_name"]

  def read(self, image_id: str) -> core.Record:
    info = self._images[int(image_id)]
    image = core.read_rgb(self.image_path(image_id), ARCHIVE)
    hw = image.shape[:2]
    if (int(info["height"]), int(info["width"])) != hw:
      raise ValueError(f"COCO {image_id}: the json says {(info['height'], info['width'])} "
                       f"(H, W) but the JPEG is {hw}")
    anns = self._anns.get(int(image_id), [])
    boxes = np.asarray([coco_box(a["bbox"], hw) for a in anns], np.int32).reshape(-1, 4)
    labels = np.asarray([a["category_id"] for a in anns], np.int32)
    flags = np.zeros(len(anns), bool)
    return core.Record(id=image_id, image=image, boxes=boxes, labels=labels, difficult=flags,
                       truncated=flags.copy(), path=str(self.image_path(image_id)))
