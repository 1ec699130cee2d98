"""tensorflow-datasets builders of the benchmarks: prepared once to ArrayRecord, read with NumPy.

    datasets.prepare("voc07", "/data", tfds_dir="/prepared")          # once (progress on stderr)
    ds = datasets.load("voc07", split="trainval", tfds_dir="/prepared")  # a PreparedSource
    ds[0]   # the same Record as datasets.load("voc07", "/data")[0]

One builder per name of ``datasets.DATASETS`` (:func:`builder_class`), each with its own
name, version, description and manual-download instructions naming the archives to extract
(a manual download: nothing is fetched). Its examples come from the file reader of
``datasets.load`` (one source of truth for the layouts, ground-truth parsing and label
reductions), so preparing and reading stay TensorFlow-free (measured with tfds 4.9.10: its
``Image`` feature imports TensorFlow to encode; these features do not):

* ``image``: the image file's own encoded bytes (JPEG / PNG; not re-encoded), decoded with PIL
  exactly as the file reader decodes the file; ``window`` (4,) int32 ``[y0, x0, y1, x1]`` is
  the part of the decoded file that is the record's image (CUB's centre crop; the whole image
  elsewhere). A record image that is no window of its file is stored as a lossless PNG.
* ``size`` (2,) int32 (H, W) of the record's image; ``id``.
* datasets with boxes (VOC, COCO20k): ``boxes`` (N, 4) int32, ``labels`` (N,) int32,
  ``difficult`` / ``truncated`` (N,) bool.
* ``class_mask`` / ``instance_mask`` / ``mask``: lossless PNG bytes of the record's uint8
  (bool for ``mask``) arrays, where the dataset has them; ``b""`` for a record without one.

Each split is a builder config: ``TFDS_DIR/<name>/<split>/<version>/``. tfds writes into an
``incomplete.*`` folder and renames it when done, so an interrupted preparation is never read
as complete; preparing again after completion is a no-op. Every shard's record count, size
and SHA-256 are written into the folder's ``metadata.json`` while it is prepared (inside the
``incomplete.*`` folder, so they are renamed into place with the shards); a prepared copy is
verified against them before it is read or reported ready (:func:`verify_prepared`), so a
truncated, altered or missing shard is one error naming the file, never a Riegeli traceback or
records read silently from changed bytes. Reading uses
``builder.as_data_source()`` (not ``tfds.data_source``, which does not find local data,
tfds issue #5665).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import pathlib
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format
from PIL import Image

from spectral_jax import datasets
from spectral_jax import progress as progress_lib
from spectral_jax.datasets import images as image_io
from spectral_jax.datasets import coco, core, saliency, semantic, voc

VERSION = "1.0.0"
RELEASE_NOTES = {"1.0.0": "First release: encoded image bytes, ground truth of the file reader."}
MASK_FIELDS = ("class_mask", "instance_mask", "mask")
# The digest written for every shard at prepare time and checked before a prepared copy is used.
CHECKSUM = "sha256"
# What check_prepared requires in a prepared folder's metadata.json ("shards": the checksums).
REQUIRED_METADATA = ("dataset", "split", "ids", "paths", "root", "name", "shards")


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a benchmark's builder says about it: archives to extract, their layout, its fields."""
  description: str
  archives: str
  layout: str
  fields: tuple[str, ...]  # "boxes" and / or the MASK_FIELDS the records carry


_VOC_LAYOUT = ("VOCdevkit/VOC{year}/{{JPEGImages, Annotations, ImageSets/{{Main,Segmentation}}, "
               "SegmentationClass, SegmentationObject}}")
_VOC_FIELDS = ("boxes", "class_mask", "instance_mask")
SPECS = {
    "voc07": Spec("PASCAL VOC2007: object boxes (CorLoc), class and object masks.",
                  voc.ARCHIVES["2007"], _VOC_LAYOUT.format(year=2007), _VOC_FIELDS),
    "voc12": Spec("PASCAL VOC2012: object boxes (CorLoc), class and object masks.",
                  voc.ARCHIVES["2012"], _VOC_LAYOUT.format(year=2012), _VOC_FIELDS),
    "voc12_semantic": Spec("PASCAL VOC2012 segmentation subset (ImageSets/Segmentation): 21-class "
                      "semantic masks, object masks and boxes.",
                      voc.ARCHIVES["2012"], _VOC_LAYOUT.format(year=2012), _VOC_FIELDS),
    "ecssd": Spec("ECSSD: 1 000 images with salient-object masks.", saliency.ARCHIVES["ecssd"],
                  "ECSSD/{images/*.jpg, ground_truth_mask/*.png}", ("mask",)),
    "duts": Spec("DUTS-TE: 5 019 images with salient-object masks.", saliency.ARCHIVES["duts"],
                 "DUTS-TE/{DUTS-TE-Image/*.jpg, DUTS-TE-Mask/*.png}", ("mask",)),
    "dut_omron": Spec("DUT-OMRON: 5 168 images with salient-object masks.",
                      saliency.ARCHIVES["dut_omron"],
                      "DUT-OMRON/{DUT-OMRON-image/*.jpg, pixelwiseGT-new-PNG/*.png}", ("mask",)),
    "cub": Spec("CUB-200-2011 with its bird segmentations, centre-cropped to squares as DSM.",
                saliency.ARCHIVES["cub"],
                "CUB_200_2011/{images/, images.txt, train_test_split.txt} and segmentations/",
                ("mask",)),
    "pascal_context": Spec("Pascal Context, 59 classes (mmseg's reduction; 255 = ignore).",
                           semantic.PascalContext.archive,
                           "VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, "
                           "ImageSets/SegmentationContext}", ("class_mask",)),
    "cityscapes": Spec("Cityscapes fine annotations, STEGO / NeuralEF's 27 classes.",
                       semantic.Cityscapes.archive,
                       "cityscapes/{leftImg8bit, gtFine}/<split>/<city>/", ("class_mask",)),
    "coco20k": Spec("COCO20k: LOST's 19 817 COCO 2014 train images with their boxes, crowd "
                    "flags, instance masks and class / instance-id maps.",
                    f"{coco.ARCHIVE}, plus LOST's {coco.IDS_FILE}",
                    f"train2014/, annotations/instances_train2014.json, {coco.IDS_FILE}",
                    ("boxes", "class_mask", "instance_mask", "instance_masks")),
    "ade20k": Spec("ADE20K (SceneParsing), 150 classes (0 ignored).", semantic.ADE20K.archive,
                   "ADEChallengeData2016/{images, annotations}/{training, validation}/",
                   ("class_mask",)),
}


def _png(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img, dtype=np.uint8).copy()


def features(spec: Spec) -> tfds.features.FeaturesDict:
  """The tfds features of ``spec``'s records (bytes, tensors and text: no TensorFlow)."""
  blob = lambda: tfds.features.Scalar(dtype=np.object_)
  f = {"id": tfds.features.Text(), "image": blob(),
       "window": tfds.features.Tensor(shape=(4,), dtype=np.int32),
       "size": tfds.features.Tensor(shape=(2,), dtype=np.int32)}
  if "boxes" in spec.fields:
    f.update(boxes=tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
             labels=tfds.features.Tensor(shape=(None,), dtype=np.int32),
             difficult=tfds.features.Tensor(shape=(None,), dtype=np.bool_),
             truncated=tfds.features.Tensor(shape=(None,), dtype=np.bool_),
             crowd=tfds.features.Tensor(shape=(None,), dtype=np.bool_))
  f.update({k: blob() for k in MASK_FIELDS if k in spec.fields})
  if "instance_masks" in spec.fields:  # (N, H, W) bool as one 0/1 PNG of N·H rows
    f["instance_masks"] = blob()
  return tfds.features.FeaturesDict(f)


def encode(record: core.Record, spec: Spec) -> dict:
  """The example stored for ``record``: its image file's bytes and the window of the decoded
  file that is ``record.image`` (or a PNG of the image when it is no such window)."""
  unstored = [k for k in MASK_FIELDS if k not in spec.fields and getattr(record, k) is not None]
  if "boxes" not in spec.fields and len(record.boxes):
    unstored.append("boxes")
  if "instance_masks" not in spec.fields and record.instance_masks is not None:
    unstored.append("instance_masks")
  if unstored:
    raise ValueError(f"record {record.id!r} has {unstored}, which its builder does not store "
                     f"(fields {spec.fields}): the prepared copy would differ from the files")
  h, w = record.image.shape[:2]
  path = pathlib.Path(record.path) if record.path else None
  data, window = None, (0, 0, h, w)
  if path is not None and path.is_file():
    data = path.read_bytes()
    decoded = image_io.decode_image(data, str(path))
    for win in ((0, 0) + decoded.shape[:2], core.centre_window(*decoded.shape[:2])):
      y0, x0, y1, x1 = win
      if (y1 - y0, x1 - x0) == (h, w) and np.array_equal(decoded[y0:y1, x0:x1], record.image):
        window = win
        break
    else:
      data = None
  example = {"id": record.id, "image": data if data is not None else _png(record.image),
             "window": np.asarray(window, np.int32), "size": np.asarray([h, w], np.int32)}
  if "boxes" in spec.fields:
    example.update(boxes=np.asarray(record.boxes, np.int32).reshape(-1, 4),
                   labels=np.asarray(record.labels, np.int32),
                   difficult=np.asarray(record.difficult, bool),
                   truncated=np.asarray(record.truncated, bool),
                   crowd=np.asarray(record.crowd, bool))
  for k in MASK_FIELDS:
    if k in spec.fields:
      a = getattr(record, k)
      example[k] = b"" if a is None else _png(a)
  if "instance_masks" in spec.fields:
    m = record.instance_masks
    example["instance_masks"] = (b"" if m is None or not len(m) else
                                 _png(np.asarray(m, np.uint8).reshape(-1, w)))
  return example


def decode(example: dict, spec: Spec, path: str = "") -> core.Record:
  """The :class:`~spectral_jax.datasets.core.Record` of a stored example (PIL decoding)."""
  image_id = example["id"].decode("utf-8") if isinstance(example["id"], bytes) else example["id"]
  y0, x0, y1, x1 = (int(v) for v in example["window"])
  image = image_io.decode_image(example["image"], f"{image_id} ({path})")[y0:y1, x0:x1]
  if tuple(image.shape[:2]) != tuple(int(v) for v in example["size"]):
    raise ValueError(f"prepared image {image_id!r} decodes to {image.shape[:2]}, not its stored "
                     f"size {tuple(example['size'])}: the prepared files are damaged")
  fields = {}
  if "boxes" in spec.fields:
    fields.update(boxes=np.asarray(example["boxes"], np.int32).reshape(-1, 4),
                  labels=np.asarray(example["labels"], np.int32),
                  difficult=np.asarray(example["difficult"], bool),
                  truncated=np.asarray(example["truncated"], bool),
                  crowd=np.asarray(example["crowd"], bool))
  for k in MASK_FIELDS:
    if k in spec.fields and len(example[k]):
      a = _unpng(example[k])
      fields[k] = a.astype(bool) if k == "mask" else a
  if "instance_masks" in spec.fields:
    h, w = image.shape[:2]
    blob = example["instance_masks"]
    fields["instance_masks"] = (_unpng(blob).reshape(-1, h, w).astype(bool) if len(blob) else
                                np.zeros((len(fields["boxes"]), h, w), bool))
  return core.Record(id=image_id, image=np.ascontiguousarray(image), path=path, **fields)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A benchmark's builder; ``builder_class(name)`` makes one per dataset. One config per split;
  examples from the file reader (``source=``, or ``datasets.load`` of the manual dir)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = RELEASE_NOTES
  spec: Spec

  def __init__(self, *, source: core.DataSource | None = None, progress: bool = True,
               **kwargs):
    self._source, self._progress = source, progress
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """None: these builders have no checksums file (nothing is downloaded). tfds 4.9.10's own
    code_path imports ``importlib_resources``, which it declares only for Python < 3.9."""
    return None

  def _log_download_bytes(self) -> None:
    """Silent: tfds prints "Downloading and preparing dataset Unknown size" here; nothing is
    downloaded, and our progress bar names the dataset and split."""

  def _log_download_done(self) -> None:
    """Silent (tfds prints "downloaded and prepared"); ``prepare`` returns the folder."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.spec.description,
                                 features=features(self.spec), disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    split = self.builder_config.name
    source = self._source or datasets.load(self.name, dl_manager.manual_dir, split)
    ids = list(source.ids)
    self.info.metadata.update(
        dataset=self.name, split=split, ids=ids, root=str(source.root), name=source.name,
        paths=[_relative(source.image_path(i), source.root) for i in ids],
        # a semantic source's label set (dsm.evaluate.semantic_over_dataset reads these)
        num_classes=getattr(source, "num_classes", None),
        class_names=list(getattr(source, "class_names", None) or []))
    return {split: self._generate_examples(source)}

  def _download_and_prepare(self, dl_manager, download_config):
    """tfds writes the shards (into its ``incomplete.*`` folder, ``self.data_dir`` here); then
    each shard's record count, size and checksum go into the metadata, which tfds writes
    next, before it renames the folder into place."""
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    info = self.info.splits[self.builder_config.name]
    folder = pathlib.Path(self.data_dir)
    self.info.metadata["shards"] = [shard_entry(folder / f, n)
                                    for f, n in zip(info.filenames, info.shard_lengths)]

  def _generate_examples(self, source):
    for index in progress_lib.progress(range(len(source)),
                                       desc=f"prepare {self.name} {source.split}", unit="img",
                                       enabled=self._progress):
      try:
        record = source[index]
      except (OSError, ValueError) as e:
        raise type(e)(f"{self.name} {source.split} image {source.ids[index]!r} cannot be "
                      f"read: {e}; fix or remove it, then prepare again") from e
      yield index, encode(record, self.spec)


def _relative(path, root) -> str:
  path, root = pathlib.Path(path), pathlib.Path(root)
  return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def builder_class(name: str) -> type:
  """The tfds builder class of dataset ``name`` (tfds name ``name``, version ``VERSION``)."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
  return BUILDERS[name]


def _make_builder_class(name: str) -> type:
  spec = SPECS[name]
  instructions = (f"Extract {spec.archives} (downloaded yourself from the benchmark's site) into "
                  f"one folder and pass it as the manual dir (spectral_jax: data_dir). The "
                  f"layout it must hold: {spec.layout}.")
  class_name = "".join(part.capitalize() for part in name.split("_"))
  # Not registered with tfds: "cityscapes" and others are names of tfds's own builders.
  with tfds.core.registered.skip_registration():
    return type(class_name, (_Builder,), {
        "name": name, "spec": spec, "MANUAL_DOWNLOAD_INSTRUCTIONS": instructions,
        "__doc__": f"{spec.description}\n\n{instructions}", "__module__": __name__})


# name → builder class; each is also a module attribute (Voc07, DutOmron, ...), so that
# builders and the data sources holding them pickle (grain's worker processes).
BUILDERS = {name: _make_builder_class(name) for name in SPECS}
globals().update({cls.__name__: cls for cls in BUILDERS.values()})


def canonical_split(name: str, split: str | None) -> str:
  """The split name the file reader uses (its default for None; ADE20K's "val" → "validation")."""
  if name not in datasets.DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(datasets.DATASETS)}")
  split = split or datasets.DATASETS[name][1]
  return semantic.ADE20K_SPLIT_ALIASES.get(split, split) if name == "ade20k" else split


@contextlib.contextmanager
def _tfds_warnings_off():
  """tfds's warnings about a split config ("custom data configuration") and about folders
  that are not prepared yet are expected here: absl logging at ERROR inside."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def _builder(name, tfds_dir, split, **kwargs):
  """(builder of ``name``'s ``split`` config over ``tfds_dir``, whether it is prepared).

  Raises:
    core.MissingDataError: the folder's dataset_info.json cannot be read (damaged).
  """
  with _tfds_warnings_off():
    try:
      builder = builder_class(name)(data_dir=str(tfds_dir),
                                    config=tfds.core.BuilderConfig(name=split), **kwargs)
    except (ValueError, OSError, json_format.Error) as e:
      folder = pathlib.Path(tfds_dir) / name / split / VERSION
      raise core.MissingDataError(
          f"the prepared copy {str(folder)!r} is damaged: "
          f"{str(folder / 'dataset_info.json')!r} cannot be read ({_one_line(e)}); "
          f"{_redo(name, split, tfds_dir, folder)}") from e
    return builder, builder.is_prepared()


def _one_line(error: BaseException) -> str:
  return " ".join(f"{type(error).__name__}: {error}".split())


def _prepare_command(name: str, split: str, tfds_dir) -> str:
  return (f"`python -m experiments.prepare_dataset --dataset={name} --split={split} "
          f"--data_dir=DIR --tfds_dir={tfds_dir}`")


def _redo(name: str, split: str, tfds_dir, folder) -> str:
  """What to do about a damaged prepared folder, as the end of a sentence."""
  return (f"delete {str(folder)!r} and prepare it again with "
          f"{_prepare_command(name, split, tfds_dir)}")


def _quiet_tfds_bars():
  """tfds's own progress bars off (ours counts the images), restored afterwards."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  was = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  return lambda: tfds.display_progress_bar(was)


def prepare(name: str, data_dir, *, split: str | None = None, tfds_dir,
            progress: bool = True) -> pathlib.Path:
  """Prepares ``split`` of ``name`` from the extracted archives in ``data_dir`` to ArrayRecord
  under ``tfds_dir``; a no-op when it is already prepared. Returns the prepared folder
  (``tfds_dir/name/split/VERSION``).

  Raises:
    ValueError: unknown dataset. core.MissingDataError: the layout is not under ``data_dir``,
      or the prepared copy already there is damaged (:func:`verify_prepared`; nothing is
      deleted: the message says what to do).
    OSError / ValueError: an image or annotation of the split cannot be read (names it).
  """
  split = canonical_split(name, split)
  tfds_dir = pathlib.Path(tfds_dir).expanduser()
  if tfds_dir.exists() and not tfds_dir.is_dir():
    raise core.MissingDataError(f"tfds_dir {str(tfds_dir)!r} is a file, not a folder")
  builder, prepared = _builder(name, tfds_dir, split)
  if prepared:   # the copy there must be whole before it is reported ready
    check_prepared(builder, name, split)
    verify_prepared(builder, split, tfds_dir)
    return pathlib.Path(builder.data_dir)
  if pathlib.Path(builder.data_dir).exists():   # tfds would reuse it as it is: damaged
    raise core.MissingDataError(_not_prepared(name, split, tfds_dir))
  source = datasets.load(name, data_dir, split)
  builder, _ = _builder(name, tfds_dir, split, source=source, progress=progress)
  restore = _quiet_tfds_bars()
  try:
    with tempfile.TemporaryDirectory() as downloads:  # tfds wants one; nothing is downloaded
      builder.download_and_prepare(
          download_dir=downloads, file_format="array_record",
          download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir)))
  finally:
    restore()
  return pathlib.Path(builder.data_dir)


def check_prepared(builder, name: str, split: str) -> None:
  """Raises core.MissingDataError if a prepared folder's metadata is not ``name``'s ``split``
  (or cannot be read, or lacks the checksums this version writes)."""
  folder = pathlib.Path(builder.data_dir)
  try:
    meta = dict(builder.info.metadata or {})
  except (ValueError, OSError) as e:
    raise core.MissingDataError(
        f"the prepared copy {str(folder)!r} is damaged: {str(folder / 'metadata.json')!r} "
        f"cannot be read ({_one_line(e)}); "
        f"{_redo(name, split, folder.parents[2], folder)}") from e
  missing = sorted(set(REQUIRED_METADATA) - set(meta))
  if meta.get("dataset") != name or meta.get("split") != split or missing:
    raise core.MissingDataError(
        f"{builder.data_dir!r} was not prepared for {name} {split} by this spectral_jax (its "
        f"metadata says dataset={meta.get('dataset')!r}, split={meta.get('split')!r}"
        f"{f', and lacks {missing}' if missing else ''}); prepare it again into an empty "
        "tfds_dir")


def shard_entry(path: pathlib.Path, records: int) -> dict:
  """What is written about one shard at prepare time: its name, record count, size and
  checksum."""
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, CHECKSUM).hexdigest()
  return {"file": path.name, "records": int(records), "bytes": path.stat().st_size,
          CHECKSUM: digest}


def verify_prepared(builder, split: str, tfds_dir) -> None:
  """Checks a prepared folder's shards against the record counts, sizes and checksums written
  when it was prepared (``metadata.json``'s ``shards``) and against tfds's own shard list.
  Reads every shard once (SHA-256: about 1.7 GB/s on this CPU).

  Raises:
    core.MissingDataError: a shard is missing, has another size or other bytes, or the record
      counts disagree; the message names the file and says how to prepare the copy again.
  """
  folder = pathlib.Path(builder.data_dir)
  meta = builder.info.metadata
  name = meta["dataset"]

  def damaged(what: str):
    return core.MissingDataError(f"the prepared copy {str(folder)!r} is damaged: {what}; "
                                 f"{_redo(name, split, tfds_dir, folder)}")

  info = builder.info.splits[split]
  listed = dict(zip(info.filenames, info.shard_lengths))
  shards = list(meta["shards"])
  if sorted(s["file"] for s in shards) != sorted(listed):
    raise damaged(f"its dataset_info.json lists the shards {sorted(listed)}, but "
                  f"{sorted(s['file'] for s in shards)} were written")
  for entry in shards:
    path = folder / entry["file"]
    if not path.is_file():
      raise damaged(f"{str(path)!r} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
      raise damaged(f"{str(path)!r} has {size} bytes, not the {entry['bytes']} written at "
                    "prepare time (truncated or replaced)")
    if listed[entry["file"]] != entry["records"]:
      raise damaged(f"its dataset_info.json counts {listed[entry['file']]} records in "
                    f"{str(path)!r}, not the {entry['records']} written at prepare time")
    if shard_entry(path, entry["records"])[CHECKSUM] != entry[CHECKSUM]:
      raise damaged(f"{str(path)!r} does not match its {CHECKSUM} checksum written at prepare "
                    "time (its bytes changed)")
  if sum(s["records"] for s in shards) != len(meta["ids"]):
    raise damaged(f"its shards hold {sum(s['records'] for s in shards)} records, but "
                  f"{len(meta['ids'])} ids were written")


def _not_prepared(name: str, split: str, tfds_dir: pathlib.Path) -> str:
  """Why ``tfds_dir`` holds no complete ``name``/``split``/VERSION, as one sentence."""
  how = f"prepare it with {_prepare_command(name, split, tfds_dir)}"
  if not tfds_dir.is_dir():
    return f"tfds_dir {str(tfds_dir)!r} does not exist; {how}"
  if not (tfds_dir / name).is_dir():
    have = sorted(p.name for p in tfds_dir.iterdir() if p.is_dir() and p.name in SPECS)
    return (f"tfds_dir {str(tfds_dir)!r} holds no prepared {name} (prepared datasets there: "
            f"{', '.join(have) or 'none'}); {how}")
  split_dir = tfds_dir / name / split
  if not split_dir.is_dir():
    have = sorted(p.name for p in (tfds_dir / name).iterdir()
                  if p.is_dir() and not p.name.startswith("."))
    return (f"no prepared split {split!r} of {name} in {str(tfds_dir)!r} (prepared splits: "
            f"{', '.join(have) or 'none'}); {how}")
  versions = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
  done = [v for v in versions if not v.startswith("incomplete")]
  if VERSION in done:   # the folder is there, but tfds does not see it as prepared
    folder = split_dir / VERSION
    return (f"the prepared copy {str(folder)!r} is damaged: "
            f"{str(folder / 'dataset_info.json')!r} is missing; "
            f"{_redo(name, split, tfds_dir, folder)}")
  if done:
    return (f"{str(split_dir)!r} holds {name} {split} version {', '.join(done)}, but this "
            f"spectral_jax reads version {VERSION}; {how}")
  return (f"the preparation of {name} {split} in {str(split_dir)!r} did not finish"
          f"{' (an incomplete.* folder is there)' if versions else ''}; {how}")


class PreparedSource(core.DataSource):
  """A prepared split read with ``builder.as_data_source()``: ``ds[i]`` is the file reader's
  Record (same id, pixels, boxes, masks, path). TensorFlow is not imported.

  Args:
    name: a dataset of ``datasets.DATASETS``.
    tfds_dir: the folder given to :func:`prepare`.
    split: the split (default: the benchmark's evaluation split).
    verify: check every shard against the counts and checksums written at prepare time
      (:func:`verify_prepared`; a copy unpickled in a worker process was verified by its
      parent and is not read again).
  Raises:
    core.MissingDataError: the split is not prepared there (with this version), the folder
      was prepared for another dataset, or it is damaged; the message says which and how to
      prepare it.
  """

  def __init__(self, name: str, tfds_dir, split: str | None = None, verify: bool = True):
    split = canonical_split(name, split)
    tfds_dir = pathlib.Path(tfds_dir).expanduser()
    builder, prepared = _builder(name, tfds_dir, split)
    if not prepared:
      raise core.MissingDataError(_not_prepared(name, split, tfds_dir))
    check_prepared(builder, name, split)
    if verify:
      verify_prepared(builder, split, tfds_dir)
    self.spec, self.dataset, self.tfds_dir = SPECS[name], name, tfds_dir
    meta = builder.info.metadata
    self.name, self.split = meta["name"], split   # the reader's name (voc12_semantic's is "voc12")
    self.root = pathlib.Path(meta["root"])
    self.ids = list(meta["ids"])
    if meta.get("num_classes") is not None:
      self.num_classes = int(meta["num_classes"])
      self.class_names = tuple(meta.get("class_names") or ()) or None
    self._paths = dict(zip(self.ids, meta["paths"]))
    self._index = {image_id: i for i, image_id in enumerate(self.ids)}
    self.prepared_dir = pathlib.Path(builder.data_dir)
    self._examples = builder.as_data_source(split=split)
    if len(self._examples) != len(self.ids):
      raise core.MissingDataError(f"{str(self.prepared_dir)!r} holds {len(self._examples)} "
                                  f"records but lists {len(self.ids)} ids: prepare it again")

  def __reduce__(self):
    # Pickles as its arguments (grain's worker processes open the files again, unverified:
    # this copy was verified when it was opened).
    return PreparedSource, (self.dataset, str(self.tfds_dir), self.split, False)

  def image_path(self, image_id: str) -> pathlib.Path:
    return self.root / self._paths[image_id]

  def read(self, image_id: str) -> core.Record:
    return decode(self._examples[self._index[image_id]], self.spec,
                  str(self.image_path(image_id)))


__all__ = ["BUILDERS", "CHECKSUM", "SPECS", "VERSION", "PreparedSource", "Spec", "builder_class",
           "canonical_split", "decode", "encode", "features", "prepare", "shard_entry",
           "verify_prepared"]
