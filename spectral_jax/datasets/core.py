"""The common record, random-access data sources over official on-disk layouts, and iteration.

Every benchmark reader (``voc``, ``saliency``) is a :class:`DataSource`: ``len(ds)`` images,
``ds[i]`` one decoded :class:`Record` (NumPy / PIL only: no TensorFlow, no torch). Nothing is
downloaded: the user extracts the official archives and passes the folder.

Boxes everywhere are pixel boxes ``[x0, y0, x1, y1]``, 0-based, x1/y1 exclusive (as
``spectral_jax.metrics``). Label maps use 255 for "ignore" (VOC's void border).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from spectral_jax import metrics
from spectral_jax.datasets import images as image_io

IGNORE = metrics.IGNORE_INDEX  # excluded from every metric (VOC void / object borders)


class MissingDataError(FileNotFoundError):
  """A folder or file of a dataset's official layout is missing (names it and the archive)."""


@dataclasses.dataclass
class Record:
  """One image of a benchmark with whatever ground truth the benchmark has.

  Attributes:
    id: the dataset's image id (VOC ``2007_000027``, a saliency file stem, CUB ``class/name``).
    image: (H, W, 3) uint8 RGB (greyscale files are expanded to three channels).
    boxes: (N, 4) int32 ``[x0, y0, x1, y1]``, 0-based, x1/y1 exclusive; (0, 4) if none.
    labels: (N,) int32 class ids (VOC: 1..20 as in ``SegmentationClass``; 0 is background).
    difficult, truncated: (N,) bool flags from the annotation (False where the format has none).
    class_mask: (H, W) uint8 semantic labels, 255 = ignore; None where the image has none.
    instance_mask: (H, W) uint8 instance ids (0 background, 255 ignore); None where none.
    mask: (H, W) bool single-object (salient) foreground; None where none.
    instance_masks: (N, H, W) bool, one mask per box (overlaps kept); None where none.
    crowd: (N,) bool COCO ``iscrowd`` (a group of objects: an "ignore" region for AP); empty
      where the format has none.
    path: the image file.
  """

  id: str
  image: np.ndarray
  boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.int32))
  labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))
  difficult: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), bool))
  truncated: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), bool))
  class_mask: np.ndarray | None = None
  instance_mask: np.ndarray | None = None
  mask: np.ndarray | None = None
  instance_masks: np.ndarray | None = None
  crowd: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), bool))
  path: str = ""

  @property
  def size(self) -> tuple[int, int]:
    """(H, W) of the image."""
    return tuple(self.image.shape[:2])


class DataSource(Sequence):
  """Random access over one split of a benchmark: ``len(ds)``, ``ds[i] -> Record``.

  Subclasses fill ``self.ids`` (the split's image ids in order) and implement
  :meth:`read`. ``name``/``split`` describe the data; ``root`` is the dataset's own folder.
  Also usable as a ``grain`` random-access source (see :func:`iterate`).
  """

  name: str = ""
  split: str = ""
  root: pathlib.Path
  ids: list[str]

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images of {self.name}")
    return self.read(self.ids[index])

  def read(self, image_id: str) -> Record:  # pragma: no cover - abstract
    raise NotImplementedError

  def image_path(self, image_id: str) -> pathlib.Path:  # pragma: no cover - abstract
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, split={self.split!r}, {len(self)} images, " \
           f"root={str(self.root)!r})"


# ----------------------------------------------------------------------------- layout helpers


def find_root(data_dir, candidates: Sequence[str], *, marker: str, dataset: str,
              archives: str) -> pathlib.Path:
  """The dataset's own folder: ``data_dir`` itself or one of ``data_dir/candidate``.

  A folder qualifies when it holds ``marker`` (a sub-path). Users may pass either the folder
  the archives were extracted into or the dataset's folder; both work.

  Raises:
    MissingDataError: no candidate holds ``marker``; names what was tried and what to extract.
  """
  base = pathlib.Path(data_dir).expanduser()
  if not base.is_dir():
    raise MissingDataError(f"--data_dir {str(base)!r} is not a folder; extract {archives} "
                           f"for {dataset} there")
  tried = [base] + [base / c for c in candidates]
  for folder in tried:
    if (folder / marker).exists():
      return folder
  raise MissingDataError(
      f"no {dataset} in {str(base)!r}: looked for {marker!r} in "
      f"{', '.join(repr(str(t)) for t in tried)}; extract {archives} into {str(base)!r}")


def need(path: pathlib.Path, archive: str) -> pathlib.Path:
  """``path`` if it exists, else a :class:`MissingDataError` naming it and its archive."""
  if not path.exists():
    raise MissingDataError(f"missing {str(path)!r}; it comes from {archive}: extract it "
                           "(the folder layout must be kept)")
  return path


def read_split_file(path: pathlib.Path, archive: str) -> list[str]:
  """Image ids, one per line (the first field of each non-empty line)."""
  lines = need(path, archive).read_text().split("\n")
  ids = [line.split()[0] for line in lines if line.strip()]
  if not ids:
    raise ValueError(f"split file {str(path)!r} lists no images; re-extract {archive}")
  return ids


def read_rgb(path: pathlib.Path, archive: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB of an image file (greyscale / palette converted)."""
  return image_io.read_image(need(path, archive))


def read_label_png(path: pathlib.Path, archive: str) -> np.ndarray:
  """(H, W) uint8 label indices of a palette ("P") or greyscale ("L") PNG, not its colours.

  Raises:
    ValueError: the PNG is in another mode (e.g. RGB, which would lose the indices).
  """
  try:
    with Image.open(need(path, archive)) as img:
      if img.mode not in ("P", "L"):
        raise ValueError(f"{str(path)!r} is a {img.mode} image; label maps must be palette or "
                         f"greyscale PNGs of class indices (as in {archive})")
      return np.asarray(img, dtype=np.uint8).copy()
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, not a PNG
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f"cannot read the label map {str(path)!r}: {e}") from e


def read_binary_mask(path: pathlib.Path, archive: str) -> np.ndarray:
  """(H, W) bool foreground of a saliency / segmentation mask: its first channel > 127.

  The DSM evaluation binarises ``ToTensor(mask.convert("RGB"))[0] > 0.5``, i.e. value ≥ 128
  of the red (or only) channel; soft masks (CUB averages annotators) are cut at the same level.
  """
  try:
    with Image.open(need(path, archive)) as img:
      a = np.asarray(img.convert("RGB"), dtype=np.uint8)[..., 0]
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, not an image
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f"cannot read the mask {str(path)!r}: {e}") from e
  return a > 127


def centre_window(h: int, w: int) -> tuple[int, int, int, int]:
  """(y0, x0, y1, x1) of the centred square of side min(h, w) (torchvision ``CenterCrop``)."""
  s = min(h, w)
  y0, x0 = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
  return y0, x0, y0 + s, x0 + s


def centre_crop(a: np.ndarray) -> np.ndarray:
  """The centred square of side min(H, W) of an (H, W, ...) array."""
  y0, x0, y1, x1 = centre_window(*a.shape[:2])
  return a[y0:y1, x0:x1]


# ----------------------------------------------------------------------------- iteration


def iterate(source: DataSource, *, shuffle: bool = False, seed: int = 0, num_epochs: int = 1,
            shard_index: int | None = None, shard_count: int | None = None,
            num_threads: int = 4, prefetch: int = 16) -> Iterator[Record]:
  """Records of ``source`` through grain: seeded shuffle, per-host shard, threaded prefetch.

  Each host reads ``source[shard_index::shard_count]`` of the (shuffled) order; the defaults
  are ``jax.process_index()`` / ``jax.process_count()``, so every record is read by exactly
  one host per epoch. The order depends only on ``seed`` (and the epoch), not on timing.

  Args:
    source: any :class:`DataSource` (or a sequence of records).
    shuffle, seed: shuffle each epoch with grain's seeded global shuffle.
    num_epochs: passes over the data (``None`` is not accepted: pass a number).
    shard_index, shard_count: this host's shard; None = JAX's process index / count.
    num_threads, prefetch: grain ``ReadOptions`` (decode threads, records buffered ahead).
  """
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("datasets.iterate needs grain: pip install -e '.[data]' "
                      "(or pip install grain)") from e
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be ≥ 1; got {num_epochs}")
  ds = grain.MapDataset.source(source)
  if num_epochs > 1:
    ds = ds.repeat(num_epochs)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[shard_index::shard_count]
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  yield from ds.to_iter_dataset(read_options=options)
