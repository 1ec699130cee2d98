"""Semantic-segmentation benchmarks of NeuralEF (SPEC §8) from their official layouts.

Extract the archives into one folder (``--data_dir``); that folder or the dataset's own folder
is accepted. Every reader returns ``Record.class_mask`` (H, W) uint8 with classes 0..C−1 and
255 = ignore, already reduced to the evaluation's label space:

* Pascal Context (59 classes): VOC2010 ``JPEGImages`` plus the 59-class
  ``SegmentationClassContext`` PNGs in mmsegmentation's layout
  ``VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext,
  ImageSets/SegmentationContext/{train,val}.txt}``. Reduction as mmseg's
  ``PascalContextDataset59`` (``reduce_zero_label=True``): 0 (background) → 255, k → k − 1
  (0..58); 255 stays 255.
* Cityscapes (27 classes): ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
  ``gtFine/{split}/{city}/*_gtFine_labelIds.png``. The 27-class mapping of STEGO / NeuralEF
  (STEGO's ``CityscapesSeg``: ``target − first_nonvoid`` with ``first_nonvoid = 7``): labelIds
  7..33 → 0..26, every other labelId (the void ids 0..6, license plate, anything > 33) → 255.
  ``mapping="trainid"`` gives the official cityscapesScripts 19 trainIds instead.
* ADE20K (150 classes): ``ADEChallengeData2016/{images,annotations}/{training,validation}/``
  ``*.jpg`` / ``*.png``; 0 ("other") → 255, k → k − 1 (0..149), as mmseg's ``ADE20KDataset``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from spectral_jax.datasets import core

# cityscapesScripts labels.py: labelId → trainId (19 classes; 255 = ignore).
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_FIRST_NONVOID = 7  # STEGO / NeuralEF: labelIds 7..33 → 0..26
ADE20K_SPLIT_ALIASES = {"val": "validation", "train": "training"}


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
  """mmseg's ``reduce_zero_label``: 0 → 255, k → k − 1, 255 stays 255."""
  out = labels.astype(np.int32) - 1
  out[labels == 0] = core.IGNORE
  out[labels == core.IGNORE] = core.IGNORE
  return out.astype(np.uint8)


def _lut(pairs: dict[int, int]) -> np.ndarray:
  lut = np.full(256, core.IGNORE, np.uint8)
  for k, v in pairs.items():
    lut[k] = v
  return lut


CITYSCAPES_LUTS = {
    "stego27": _lut({i: i - CITYSCAPES_FIRST_NONVOID for i in range(7, 34)}),
    "trainid": _lut(CITYSCAPES_TRAIN_IDS),
}


class _Semantic(core.DataSource):
  """Common part: ``self._pairs[id] = (image path, label path)``; ``_reduce`` maps labels."""

  num_classes: int
  archive: str
  _pairs: dict

  def image_path(self, image_id: str) -> pathlib.Path:
    return self._pairs[image_id][0]

  def _reduce(self, labels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
    raise NotImplementedError

  def read(self, image_id: str) -> core.Record:
    image_path, label_path = self._pairs[image_id]
    image = core.read_rgb(image_path, self.archive)
    labels = core.read_label_png(label_path, self.archive)
    if labels.shape != image.shape[:2]:
      raise ValueError(f"{self.name} {image_id}: {str(label_path)!r} is {labels.shape} but the "
                       f"image is {image.shape[:2]}")
    class_mask = self._reduce(labels)
    bad = np.setdiff1d(np.unique(class_mask), np.r_[np.arange(self.num_classes), core.IGNORE])
    if bad.size:
      raise ValueError(f"{str(label_path)!r} holds label values outside {self.name}'s "
                       f"{self.num_classes} classes (after reduction: {bad.tolist()})")
    return core.Record(id=image_id, image=image, class_mask=class_mask, path=str(image_path))


class PascalContext(_Semantic):
  """Pascal Context, 59 classes (mmseg's ``PascalContextDataset59`` label reduction).

  Args:
    data_dir: the folder holding ``VOCdevkit/`` (or ``VOCdevkit/``, or ``VOC2010/``).
    split: "val" (5 105 images, the evaluation split) or "train" (4 996).
  """

  archive = ("VOCtrainval_03-May-2010.tar and the 59-class SegmentationClassContext PNGs with "
             "ImageSets/SegmentationContext (mmseg's Pascal Context preparation)")
  num_classes = 59

  def __init__(self, data_dir, split: str = "val"):
    self.name, self.split = "pascal_context", split
    self.root = core.find_root(data_dir, ["VOCdevkit/VOC2010", "VOC2010"],
                               marker="SegmentationClassContext", dataset="Pascal Context",
                               archives=self.archive)
    split_file = self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not split_file.exists():
      have = sorted(p.stem for p in split_file.parent.glob("*.txt"))
      raise core.MissingDataError(f"no split {split!r} for Pascal Context: {str(split_file)!r} "
                                  f"is missing (splits there: {have or 'none'}); extract "
                                  f"{self.archive}")
    self.ids = core.read_split_file(split_file, self.archive)
    core.need(self.root / "JPEGImages", self.archive)
    self._pairs = {i: (self.root / "JPEGImages" / f"{i}.jpg",
                       self.root / "SegmentationClassContext" / f"{i}.png") for i in self.ids}

  def _reduce(self, labels):
    return reduce_zero_label(labels)


class Cityscapes(_Semantic):
  """Cityscapes fine annotations; ids are ``<city>/<city>_<seq>_<frame>``.

  Args:
    data_dir: the folder holding ``leftImg8bit/`` and ``gtFine/`` (or its ``cityscapes/``).
    split: "val" (500 images, the evaluation split), "train" or "test".
    mapping: "stego27" (default: STEGO / NeuralEF's 27 classes, labelId − 7) or "trainid"
      (the 19 official trainIds).
  """

  archive = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"

  def __init__(self, data_dir, split: str = "val", mapping: str = "stego27"):
    if mapping not in CITYSCAPES_LUTS:
      raise ValueError(f"mapping must be one of {sorted(CITYSCAPES_LUTS)}; got {mapping!r}")
    self.name, self.split, self.mapping = "cityscapes", split, mapping
    self.num_classes = 27 if mapping == "stego27" else 19
    self.root = core.find_root(data_dir, ["cityscapes", "Cityscapes"], marker="leftImg8bit",
                               dataset="Cityscapes", archives=self.archive)
    image_dir = core.need(self.root / "leftImg8bit" / split, self.archive)
    label_dir = core.need(self.root / "gtFine" / split, self.archive)
    suffix = "_leftImg8bit.png"
    self._pairs = {}
    for p in sorted(image_dir.glob(f"*/*{suffix}")):
      image_id = f"{p.parent.name}/{p.name[:-len(suffix)]}"
      self._pairs[image_id] = (p, label_dir / f"{image_id}_gtFine_labelIds.png")
    if not self._pairs:
      raise core.MissingDataError(f"no *{suffix} in {str(image_dir)!r}/<city>/; extract "
                                  f"{self.archive}")
    self.ids = list(self._pairs)
    missing = [i for i in self.ids if not self._pairs[i][1].exists()]
    if missing:
      raise core.MissingDataError(
          f"{len(missing)} of {len(self.ids)} Cityscapes {split} images have no labels "
          f"(first: {str(self._pairs[missing[0]][1])!r}); extract gtFine_trainvaltest.zip")

  def _reduce(self, labels):
    return CITYSCAPES_LUTS[self.mapping][labels]


class ADE20K(_Semantic):
  """ADE20K (SceneParsing ``ADEChallengeData2016``), 150 classes, 0 ignored.

  Args:
    data_dir: the folder holding ``ADEChallengeData2016/`` (or that folder).
    split: "validation" (2 000 images, the evaluation split; "val" accepted) or "training".
  """

  archive = "ADEChallengeData2016.zip"
  num_classes = 150

  def __init__(self, data_dir, split: str = "validation"):
    split = ADE20K_SPLIT_ALIASES.get(split, split)
    if split not in ("training", "validation"):
      raise ValueError(f"ADE20K splits are 'training' and 'validation'; got {split!r}")
    self.name, self.split = "ade20k", split
    self.root = core.find_root(data_dir, ["ADEChallengeData2016"], marker="annotations",
                               dataset="ADE20K", archives=self.archive)
    image_dir = core.need(self.root / "images" / split, self.archive)
    label_dir = core.need(self.root / "annotations" / split, self.archive)
    self._pairs = {p.stem: (p, label_dir / f"{p.stem}.png")
                   for p in sorted(image_dir.glob("*.jpg"))}
    if not self._pairs:
      raise core.MissingDataError(f"no *.jpg in {str(image_dir)!r}; extract {self.archive}")
    self.ids = list(self._pairs)
    missing = [i for i in self.ids if not self._pairs[i][1].exists()]
    if missing:
      raise core.MissingDataError(
          f"{len(missing)} of {len(self.ids)} ADE20K {split} images have no annotation in "
          f"{str(label_dir)!r} (first: {missing[0]}.png); extract {self.archive} completely")

  def _reduce(self, labels):
    return reduce_zero_label(labels)
