"""Single-object (salient object) segmentation benchmarks from their official layouts.

Extract the archives into one folder (``--data_dir``); that folder or the dataset's own folder
is accepted:

* ECSSD: ``images.zip`` and ``ground_truth_mask.zip`` (CUHK) → ``ECSSD/images/*.jpg``,
  ``ECSSD/ground_truth_mask/*.png`` (1 000 images).
* DUTS-TE: ``DUTS-TE.zip`` → ``DUTS-TE/DUTS-TE-Image/*.jpg``, ``DUTS-TE/DUTS-TE-Mask/*.png``
  (5 019 images).
* DUT-OMRON: ``DUT-OMRON-image.zip`` and ``DUT-OMRON-gt-pixelwise.zip.zip`` →
  ``DUT-OMRON/DUT-OMRON-image/*.jpg``, ``DUT-OMRON/pixelwiseGT-new-PNG/*.png`` (5 168 images).
* CUB-200-2011: ``CUB_200_2011.tgz`` and ``segmentations.tgz`` → ``CUB_200_2011/{images/,
  images.txt, train_test_split.txt}`` and ``segmentations/<class>/<name>.png`` (beside or
  inside ``CUB_200_2011/``); split "test" = ``is_training_image == 0`` (5 794 images).

Masks are binarised as the DSM evaluation does (first channel > 127, i.e. ``ToTensor() > 0.5``);
CUB images and masks are centre-cropped to a square as in DSM's ``eval.yaml`` (``crop: True``
for CUB only; pass ``crop=False`` for the full images).
"""

from __future__ import annotations

import pathlib

from spectral_jax.datasets import images as image_io
from spectral_jax.datasets import core

# The archives each benchmark is extracted from (named in errors and in the tfds builders).
ARCHIVES = {"ecssd": "ECSSD's images.zip and ground_truth_mask.zip",
            "duts": "DUTS-TE.zip",
            "dut_omron": "DUT-OMRON-image.zip and DUT-OMRON-gt-pixelwise.zip.zip",
            "cub": "CUB_200_2011.tgz and segmentations.tgz"}


class FolderPairs(core.DataSource):
  """Images in one folder, masks ``STEM.png`` in another, paired by file stem (sorted).

  Raises:
    core.MissingDataError: a folder is missing, it holds no images, or an image has no mask.
  """

  def __init__(self, name: str, root: pathlib.Path, image_dir: str, mask_dir: str,
               archive: str, split: str = "test"):
    if split != "test":
      raise ValueError(f"{name} has one split, 'test' (the whole benchmark); got {split!r}")
    self.name, self.split, self.root, self.archive = name, split, root, archive
    self.image_dir = core.need(root / image_dir, archive)
    self.mask_dir = core.need(root / mask_dir, archive)
    paths = image_io.list_images(self.image_dir)
    if not paths:
      raise core.MissingDataError(f"no images in {str(self.image_dir)!r}; extract {archive}")
    self._paths = {p.stem: p for p in paths}
    self.ids = sorted(self._paths)
    missing = [i for i in self.ids if not (self.mask_dir / f"{i}.png").exists()]
    if missing:
      raise core.MissingDataError(
          f"{len(missing)} of {len(self.ids)} {name} images have no mask in "
          f"{str(self.mask_dir)!r} (first: {missing[0]}.png); extract {archive} completely")

  def image_path(self, image_id: str) -> pathlib.Path:
    return self._paths[image_id]

  def read(self, image_id: str) -> core.Record:
    image = core.read_rgb(self.image_path(image_id), self.archive)
    mask = core.read_binary_mask(self.mask_dir / f"{image_id}.png", self.archive)
    if mask.shape != image.shape[:2]:
      raise ValueError(f"{self.name} {image_id}: mask {mask.shape} and image "
                       f"{image.shape[:2]} differ in size")
    return core.Record(id=image_id, image=image, mask=mask, path=str(self.image_path(image_id)))


def ecssd(data_dir, split: str = "test") -> FolderPairs:
  archive = ARCHIVES["ecssd"]
  root = core.find_root(data_dir, ["ECSSD"], marker="images", dataset="ECSSD", archives=archive)
  return FolderPairs("ecssd", root, "images", "ground_truth_mask", archive, split)


def duts_te(data_dir, split: str = "test") -> FolderPairs:
  archive = ARCHIVES["duts"]
  root = core.find_root(data_dir, ["DUTS-TE", "DUTS/DUTS-TE"], marker="DUTS-TE-Image",
                        dataset="DUTS-TE", archives=archive)
  return FolderPairs("duts", root, "DUTS-TE-Image", "DUTS-TE-Mask", archive, split)


def dut_omron(data_dir, split: str = "test") -> FolderPairs:
  archive = ARCHIVES["dut_omron"]
  root = core.find_root(data_dir, ["DUT-OMRON", "DUT_OMRON"], marker="DUT-OMRON-image",
                        dataset="DUT-OMRON", archives=archive)
  return FolderPairs("dut_omron", root, "DUT-OMRON-image", "pixelwiseGT-new-PNG", archive, split)


class CUB(core.DataSource):
  """CUB-200-2011 with its segmentations; ids are ``<class folder>/<file stem>``.

  Args:
    data_dir: the folder holding ``CUB_200_2011/`` (and ``segmentations/``), or
      ``CUB_200_2011/`` itself.
    split: "test" (``is_training_image == 0``, DSM's table) or "train".
    crop: centre-crop image and mask to a square (DSM's protocol for CUB).
  """

  archive = ARCHIVES["cub"]

  def __init__(self, data_dir, split: str = "test", crop: bool = True):
    if split not in ("test", "train"):
      raise ValueError(f"CUB splits are 'test' and 'train'; got {split!r}")
    self.name, self.split, self.crop = "cub", split, crop
    self.root = core.find_root(data_dir, ["CUB_200_2011"], marker="images.txt",
                               dataset="CUB-200-2011", archives=self.archive)
    seg = [p for p in (self.root / "segmentations", self.root.parent / "segmentations")
           if p.is_dir()]
    if not seg:
      raise core.MissingDataError(
          f"no CUB segmentations: neither {str(self.root / 'segmentations')!r} nor "
          f"{str(self.root.parent / 'segmentations')!r} exists; extract segmentations.tgz")
    self.seg_dir = seg[0]
    names = {}
    for line in core.need(self.root / "images.txt", self.archive).read_text().splitlines():
      if line.strip():
        num, rel = line.split()
        names[num] = rel
    wanted = "0" if split == "test" else "1"
    ids = []
    for line in core.need(self.root / "train_test_split.txt",
                          self.archive).read_text().splitlines():
      if line.strip():
        num, is_train = line.split()
        if is_train == wanted:
          ids.append(names[num].rsplit(".", 1)[0])
    if not ids:
      raise ValueError(f"no {split} images in {str(self.root / 'train_test_split.txt')!r}")
    self.ids = ids

  def image_path(self, image_id: str) -> pathlib.Path:
    return self.root / "images" / f"{image_id}.jpg"

  def read(self, image_id: str) -> core.Record:
    image = core.read_rgb(self.image_path(image_id), self.archive)
    mask = core.read_binary_mask(self.seg_dir / f"{image_id}.png", self.archive)
    if mask.shape != image.shape[:2]:
      raise ValueError(f"CUB {image_id}: mask {mask.shape} and image {image.shape[:2]} differ")
    if self.crop:
      image, mask = core.centre_crop(image), core.centre_crop(mask)
    return core.Record(id=image_id, image=image, mask=mask, path=str(self.image_path(image_id)))
