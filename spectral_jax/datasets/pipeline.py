"""The training input pipeline: grain over a dataset, fresh reference augmentation every epoch.

    source = pipeline.training_source("pascal_context", "/data")      # or "folder"
    ds = pipeline.training_dataset(source, aug, batch_size=16, seed=0)
    it = iter(ds)              # batches {"image": (b, S, S, 3) uint8, "index": (b,), "aug": (b, 8)}
    state = it.get_state()     # JSON data: restore with it.set_state(state)

Order of operations (grain ``MapDataset``): ``source`` → this host's shard (every host the same
number of records: ``source[i : n − n mod P : P]`` for host i of P) → a seeded shuffle that
changes every epoch → endless repetition → `AugmentRecord` (a ``random_map``: its generator is
grain's per-record Philox stream, a function of ``(seed, epoch · shard length + position)``,
never of timing, threads or worker count) → batches of the per-host batch size → an
``IterDataset`` with threaded reads (``ReadOptions``) and, with ``num_workers > 0``,
multiprocess prefetch (``mp_prefetch``). Batch ``s`` of a host is therefore a pure function of
``(seed, s, host)``; the iterator's state (``get_state()``, JSON data) is saved in the training
checkpoint so a resumed run continues the same sequence.

Labels never leave the pipeline: they only steer the crop (``cat_max_ratio``, SPEC §5).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spectral_jax import datasets
from spectral_jax.datasets import core
from spectral_jax.datasets import images as images_lib
from spectral_jax.datasets import samples
from spectral_jax.datasets import transforms

# the datasets the reference trains on (their training splits: datasets.DATASETS), or "folder"
TRAIN_SPLITS = {name: datasets.DATASETS[name].train_split
                for name in ("pascal_context", "cityscapes", "ade20k")}
TRAIN_DATASETS = (*TRAIN_SPLITS, "folder")


def training_images(folder: str = "", recursive: bool = False, *,
                    on_skip: Callable[[str, Exception], None] | None = None
                    ) -> list[images_lib.NamedImage]:
  """The training images of a folder (``datasets.images.read_folder``: unreadable files
  skipped and reported, collision-free names), or the bundled sample photos for ``""``.

  Raises:
    FileNotFoundError: ``folder`` is not a directory, or holds no readable image.
  """
  if not folder:
    return [images_lib.NamedImage(name, rgb) for name, rgb in samples.bundled_photos().items()]
  return images_lib.read_folder(
      folder, recursive=recursive, on_skip=on_skip,
      hint="point data.images (or data.data_dir) at a folder of readable images, \"\" for the "
           "bundled photos")


class ImageListSource(core.DataSource):
  """Random access over decoded images (a folder of photos, the bundled photos).

  Args:
    images: ``NamedImage``s (``name``, ``rgb`` (H, W, 3) uint8) with distinct names (as
      `training_images` gives them).
    name: the source's name.
  Raises:
    ValueError: two images share a name (one would hide the other).
  """

  def __init__(self, images: Sequence[Any], name: str = "folder"):
    self.name, self.split, self.root = name, "train", None
    self._images = {im.name: im.rgb for im in images}
    if len(self._images) != len(images):
      names = [im.name for im in images]
      twice = sorted({n for n in names if names.count(n) > 1})
      raise ValueError(f"training images share the names {twice}; each needs its own")
    self.ids = list(self._images)

  def read(self, image_id: str) -> core.Record:
    return core.Record(id=image_id, image=self._images[image_id])


def training_source(dataset: str, data_dir: str = "", split: str = "", *,
                    recursive: bool = False) -> core.DataSource:
  """The training split of ``dataset`` (one of `TRAIN_DATASETS`) under ``data_dir``.

  ``folder``: every readable image in ``data_dir`` (unreadable files are reported and skipped;
  ``""`` = the bundled photos). ``split`` "" = the dataset's training split (`TRAIN_SPLITS`).

  Raises:
    ValueError: unknown dataset. MissingDataError / FileNotFoundError: nothing to read there.
  """
  if dataset not in TRAIN_DATASETS:
    raise ValueError(f"unknown training dataset {dataset!r}; choose one of "
                     f"{', '.join(TRAIN_DATASETS)} (or \"\" for the feature cache)")
  if dataset == "folder":
    return ImageListSource(training_images(data_dir, recursive))
  if not data_dir:
    raise ValueError(f"data.data_dir must name the folder holding {dataset}")
  return datasets.load(dataset, data_dir, split or TRAIN_SPLITS[dataset])


@dataclasses.dataclass(frozen=True)
class AugmentRecord:
  """The grain ``random_map`` of the pipeline: record (index, `core.Record`) → training element.

  A picklable callable (multiprocess workers receive a copy). Returns ``{"image": (S, S, 3)
  uint8, "index": int64 source index, "aug": (8,) float32 the drawn parameters}``
  (`transforms.train_augment`).
  """
  aug: transforms.TrainAugment

  def __call__(self, item, rng: np.random.Generator) -> dict[str, np.ndarray]:
    index, record = item
    image, params = transforms.train_augment(record.image, rng, self.aug, record.class_mask)
    return {"image": image, "index": np.int64(index), "aug": params}


class _Indexed:
  """``source[i] -> (i, source[i])`` (the source index travels with the record)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return int(i), self.source[int(i)]


def shard_bounds(num_records: int, shard_index: int, shard_count: int) -> slice:
  """This host's records: ``slice(i, n − n mod P, P)``, the same count on every host.

  Raises:
    ValueError: fewer records than hosts, or a bad shard index.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
  if num_records < shard_count:
    raise ValueError(f"{num_records} training images cannot be split over {shard_count} hosts")
  return slice(shard_index, num_records - num_records % shard_count, shard_count)


def training_dataset(source, aug: transforms.TrainAugment, *, batch_size: int, seed: int,
                     shard_index: int | None = None, shard_count: int | None = None,
                     num_threads: int = 4, prefetch: int = 8, num_workers: int = 0):
  """The endless, per-host, augmented batch stream (see the module docstring).

  Args:
    source: a `core.DataSource` (``source[i]`` a `core.Record`).
    aug: the augmentation.
    batch_size: images per batch of this host (the global batch / number of hosts).
    seed: shuffle and augmentation seed.
    shard_index, shard_count: this host's shard (default ``jax.process_index()`` / count).
    num_threads, prefetch: grain ``ReadOptions`` (decode threads, elements read ahead).
    num_workers: multiprocess prefetch workers (0: threads only). Changes no batch.
  Returns:
    A ``grain.IterDataset`` of ``{"image": (b, S, S, 3) uint8, "index": (b,) int64,
    "aug": (b, 8) float32}``.
  """
  import grain  # pylint: disable=import-outside-toplevel  # optional (the `data` extra): deferred

  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be ≥ 1; got {batch_size}")
  ds = grain.MapDataset.source(_Indexed(source))
  ds = ds[shard_bounds(len(source), shard_index, shard_count)]
  ds = ds.shuffle(seed=int(seed)).repeat(None)
  ds = ds.random_map(AugmentRecord(aug), seed=int(seed))
  ds = ds.batch(int(batch_size), drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(num_threads),
                                            prefetch_buffer_size=int(prefetch)))
  if num_workers > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (a library caller has none)
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers)))
  return ds


def encode_state(state: Any) -> str:
  """A grain iterator state as JSON text (checked to round-trip)."""
  text = json.dumps(state, sort_keys=True)
  if json.loads(text) != state:
    raise ValueError(f"the data iterator's state does not survive JSON: {state!r}")
  return text


__all__ = ["AugmentRecord", "ImageListSource", "TRAIN_DATASETS", "TRAIN_SPLITS", "encode_state",
           "shard_bounds", "training_dataset", "training_images", "training_source"]
