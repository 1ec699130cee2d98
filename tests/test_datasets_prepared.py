"""The tfds builders (spectral_jax.datasets.builders): each fixture prepared to ArrayRecord, read
back with builder.as_data_source() and through grain gives exactly the file reader's records."""

import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from conftest import VOC_IDS, write_ade20k, write_cityscapes, write_pascal_context  # noqa: E402
from test_datasets import _write_cub  # noqa: E402
from test_datasets_coco import _write_coco  # noqa: E402

from spectral_jax import datasets  # noqa: E402
from spectral_jax.datasets import samples  # noqa: E402
from spectral_jax.datasets import builders  # noqa: E402

ROOT = pathlib.Path(__file__).absolute().parents[1]


@pytest.fixture(scope="module")
def trees(voc_tree, ecssd_tree, tmp_path_factory):
  """{dataset: (data_dir, split)} of format-true fixtures for every builder."""
  base = tmp_path_factory.mktemp("more")
  write_pascal_context(base)
  write_cityscapes(base)
  write_ade20k(base)
  rgb = samples.labelled_photo("voc").rgb
  soft = np.zeros(rgb.shape[:2], np.uint8)
  soft[:, 150:320] = 200
  _write_cub(base / "cub", soft, rgb)
  _write_coco(base / "coco")
  (base / "coco" / "coco_20k_filenames.txt").write_text("25\n9\n")
  return {"voc07": (voc_tree[0], "trainval"), "voc12": (voc_tree[0], "train"),
          "voc12_semantic": (voc_tree[0], "val"), "ecssd": (ecssd_tree[0], "test"),
          "cub": (base / "cub", "test"), "pascal_context": (base, "val"),
          "cityscapes": (base, "val"), "ade20k": (base, "val"), "coco20k": (base / "coco", None)}


@pytest.fixture(scope="module")
def tfds_dir(trees, tmp_path_factory):
  out = tmp_path_factory.mktemp("tfds")
  for name, (data_dir, split) in trees.items():
    datasets.prepare(name, data_dir, split=split, tfds_dir=out, progress=False)
  return out


def assert_same_records(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    for field in dataclasses.fields(b):
      x, y = getattr(a, field.name), getattr(b, field.name)
      if y is None or isinstance(y, str):
        assert x == y, (b.id, field.name)
      else:
        assert x.dtype == y.dtype and x.shape == y.shape, (b.id, field.name, x.dtype, x.shape)
        np.testing.assert_array_equal(x, y, err_msg=f"{b.id} {field.name}")


def test_every_dataset_has_a_builder_with_instructions_naming_its_archives():
  assert set(builders.SPECS) == set(datasets.DATASETS)
  cls = builders.builder_class("duts")
  assert cls.name == "duts" and str(cls.VERSION) == builders.VERSION
  assert "DUTS-TE.zip" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "VOCtrainval_06-Nov-2007.tar" in builders.builder_class("voc07").MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "coco_20k_filenames.txt" in builders.builder_class("coco20k").MANUAL_DOWNLOAD_INSTRUCTIONS
  with pytest.raises(ValueError, match="unknown dataset 'voc2007'"):
    datasets.prepare("voc2007", "/nowhere", tfds_dir="/nowhere")


@pytest.mark.parametrize("name", ["voc07", "voc12", "voc12_semantic", "ecssd", "cub",
                                  "pascal_context", "cityscapes", "ade20k", "coco20k"])
def test_prepared_records_through_grain_equal_the_file_readers(trees, tfds_dir, name):
  data_dir, split = trees[name]
  files = datasets.load(name, data_dir, split)
  prepared = datasets.load(name, split=split, tfds_dir=tfds_dir)
  assert isinstance(prepared, builders.PreparedSource) and prepared.ids == files.ids
  assert (prepared.name, prepared.split, prepared.root) == (files.name, files.split, files.root)
  assert [prepared.image_path(i) for i in prepared.ids] == [files.image_path(i) for i in files.ids]
  for attribute in ("num_classes", "class_names"):  # a semantic source's label set
    assert getattr(prepared, attribute, None) == getattr(files, attribute, None), attribute
  order = dict(shuffle=True, seed=3, shard_index=0, shard_count=1)
  assert_same_records(list(datasets.iterate(prepared, **order)),
                      list(datasets.iterate(files, **order)))


def test_voc_prepared_holds_the_jpeg_bytes_and_the_written_ground_truth(voc_tree, tfds_dir):
  base, truth = voc_tree
  ds = datasets.load("voc07", split="trainval", tfds_dir=tfds_dir)
  raw = ds._examples[0]   # the ArrayRecord example, as builder.as_data_source() returns it
  root = base / "VOCdevkit" / "VOC2007"
  assert raw["image"] == (root / "JPEGImages" / f"{VOC_IDS[0]}.jpg").read_bytes()
  assert_same_records(pickle.loads(pickle.dumps(ds))[:], ds[:])   # for grain's worker processes
  for i, image_id in enumerate(VOC_IDS):
    rec, want = ds[i], truth[image_id]
    np.testing.assert_array_equal(rec.boxes, want["boxes"])
    np.testing.assert_array_equal(rec.difficult, want["difficult"])
    np.testing.assert_array_equal(rec.truncated, want["truncated"])
    for key in ("class_mask", "instance_mask"):
      if want[key] is None:
        assert getattr(rec, key) is None
      else:
        np.testing.assert_array_equal(getattr(rec, key), want[key])


def test_cub_prepared_keeps_the_jpeg_and_stores_the_centre_crop_window(trees, tfds_dir):
  ds = datasets.load("cub", split="test", tfds_dir=tfds_dir)
  raw = ds._examples[0]
  assert raw["image"] == ds.image_path(ds.ids[0]).read_bytes()
  x0 = int(round((500 - 375) / 2.0))
  assert raw["window"].tolist() == [0, x0, 375, x0 + 375] and raw["size"].tolist() == [375, 375]


def test_preparing_again_is_a_no_op(trees, tfds_dir):
  folder = tfds_dir / "ecssd" / "test" / builders.VERSION
  files = sorted(folder.iterdir())
  stamps = [p.stat().st_mtime_ns for p in files]
  again = datasets.prepare("ecssd", "/the/archives/are/not/needed/now", tfds_dir=tfds_dir)
  assert again == folder and [p.stat().st_mtime_ns for p in sorted(folder.iterdir())] == stamps


def test_a_failed_or_unfinished_preparation_is_never_read(voc_tree, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(voc_tree[0] / "VOCdevkit" / "VOC2012", data / "VOCdevkit" / "VOC2012")
  jpeg = data / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_IDS[2]}.jpg"
  good = jpeg.read_bytes()
  jpeg.write_bytes(good[: len(good) // 3])        # truncated: the third image fails mid-way
  out = tmp_path / "tfds"
  with pytest.raises(ValueError, match=f"voc12 trainval image '{VOC_IDS[2]}' cannot be read"):
    datasets.prepare("voc12", data, tfds_dir=out, progress=False)
  with pytest.raises(datasets.MissingDataError, match="did not finish"):
    datasets.load("voc12", split="trainval", tfds_dir=out)
  # A preparation killed before tfds renamed its folder leaves only incomplete.* behind.
  (out / "voc12" / "trainval" / f"incomplete.ABCDEF_{builders.VERSION}").mkdir(parents=True)
  with pytest.raises(datasets.MissingDataError, match="incomplete"):
    datasets.load("voc12", split="trainval", tfds_dir=out)
  jpeg.write_bytes(good)
  datasets.prepare("voc12", data, tfds_dir=out, progress=False)
  assert len(datasets.load("voc12", split="trainval", tfds_dir=out)) == 3


def test_wrong_missing_or_other_version_tfds_dir_is_a_clear_error(tfds_dir, tmp_path):
  with pytest.raises(datasets.MissingDataError, match="does not exist"):
    datasets.load("voc07", tfds_dir=tmp_path / "nothing")
  with pytest.raises(datasets.MissingDataError,
                     match=r"holds no prepared dut_omron \(prepared datasets there: ade20k, "):
    datasets.load("dut_omron", tfds_dir=tfds_dir)
  with pytest.raises(datasets.MissingDataError,
                     match=r"no prepared split 'test' of voc07 .*prepared splits: trainval"):
    datasets.load("voc07", split="test", tfds_dir=tfds_dir)
  old = tmp_path / "old"
  shutil.copytree(tfds_dir / "ecssd", old / "ecssd")
  (old / "ecssd" / "test" / builders.VERSION).rename(old / "ecssd" / "test" / "0.9.0")
  with pytest.raises(datasets.MissingDataError,
                     match=f"version 0.9.0, but this spectral_jax reads version {builders.VERSION}"):
    datasets.load("ecssd", tfds_dir=old)
  other = tmp_path / "other"                       # voc07's files under voc12's name
  shutil.copytree(tfds_dir / "voc07", other / "voc12")
  with pytest.raises(datasets.MissingDataError, match="dataset='voc07'"):
    datasets.load("voc12", split="trainval", tfds_dir=other)


def _command(args):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "experiments.prepare_dataset", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def test_prepare_dataset_command(ecssd_tree, tmp_path):
  out = tmp_path / "tfds"
  done = _command(["--dataset=ecssd", f"--data_dir={ecssd_tree[0]}", f"--tfds_dir={out}"])
  assert done.returncode == 0, done.stderr[-2000:]
  assert "ecssd test: 3 images ready in" in done.stdout
  assert len(datasets.load("ecssd", tfds_dir=out)) == 3
  bad = _command(["--dataset=voc2007", f"--data_dir={tmp_path}", f"--tfds_dir={out}"])
  assert bad.returncode == 2 and bad.stderr.startswith("error: --dataset must be one of")
  missing = _command(["--dataset=cub", f"--data_dir={tmp_path}", f"--tfds_dir={out}"])
  assert missing.returncode == 1 and "CUB_200_2011.tgz" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1 and not (out / "cub").exists()


def test_encode_decode_round_trip_and_refuses_fields_the_builder_does_not_store(voc_tree):
  rec = datasets.load("voc12", voc_tree[0])[0]     # the file-less fallback: a PNG of the image
  rec = dataclasses.replace(rec, path="")
  spec = builders.SPECS["voc12"]
  back = builders.decode(builders.encode(rec, spec), spec)
  assert_same_records([back], [rec])
  with pytest.raises(ValueError, match=r"has \['class_mask', 'instance_mask', 'boxes'\]"):
    builders.encode(rec, builders.SPECS["ecssd"])


def test_prepare_writes_every_shards_record_count_size_and_checksum(tfds_dir):
  folder = tfds_dir / "voc07" / "trainval" / builders.VERSION
  meta = json.loads((folder / "metadata.json").read_text())
  shards = sorted(folder.glob("*.array_record-*"))
  assert [s["file"] for s in meta["shards"]] == [p.name for p in shards] and shards
  for entry, path in zip(meta["shards"], shards):
    data = path.read_bytes()
    assert entry["bytes"] == len(data)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
  assert sum(s["records"] for s in meta["shards"]) == len(VOC_IDS) == len(meta["ids"])


def _shard(folder):
  return next(folder.glob("*.array_record-*"))


def _flip(path, where):
  data = bytearray(path.read_bytes())
  data[where(len(data))] ^= 0x10
  path.write_bytes(bytes(data))


def _relist(path):   # dataset_info.json counting 2 records in the shard instead of 3
  info = json.loads(path.read_text())
  info["splits"][0]["shardLengths"] = ["2"]
  path.write_text(json.dumps(info))


# How a prepared ecssd copy (3 records, one shard) is damaged, and what the error must name.
TAMPERED = [
    pytest.param(lambda f: _shard(f).write_bytes(_shard(f).read_bytes()[:150_000]),
                 r"ecssd-test\.array_record-00000-of-00001' has 150000 bytes, not the \d+ "
                 r"written at prepare time \(truncated or replaced\)", id="shard-truncated"),
    pytest.param(lambda f: _flip(_shard(f), lambda n: n // 2),
                 r"ecssd-test\.array_record-00000-of-00001' does not match its sha256 checksum",
                 id="shard-bit-flipped"),
    # a flip near the end that Riegeli itself does not notice: the records read back silently
    pytest.param(lambda f: _flip(_shard(f), lambda n: n - 100),
                 r"ecssd-test\.array_record-00000-of-00001' does not match its sha256 checksum",
                 id="shard-bit-flipped-unnoticed-by-riegeli"),
    pytest.param(lambda f: _shard(f).unlink(),
                 r"ecssd-test\.array_record-00000-of-00001' is missing", id="shard-deleted"),
    pytest.param(lambda f: _relist(f / "dataset_info.json"),
                 r"dataset_info.json counts 2 records in .*, not the 3 written at prepare time",
                 id="record-count-changed"),
    pytest.param(lambda f: (f / "dataset_info.json").unlink(),
                 r"dataset_info.json' is missing", id="dataset-info-deleted"),
    pytest.param(lambda f: (f / "dataset_info.json").write_text('{"name": "ecs'),
                 r"dataset_info.json' cannot be read \(ParseError", id="dataset-info-truncated"),
    pytest.param(lambda f: (f / "metadata.json").write_text('{"dataset": "ecs'),
                 r"metadata.json' cannot be read \(JSONDecodeError", id="metadata-truncated"),
]


@pytest.mark.parametrize("damage, message", TAMPERED)
def test_a_damaged_prepared_copy_is_one_error_naming_the_file(tfds_dir, tmp_path, damage,
                                                              message):
  """Before use (load) and when prepared again, a damaged copy is refused with the file and
  what to do; nothing there is deleted or rewritten."""
  out = tmp_path / "tfds"
  shutil.copytree(tfds_dir / "ecssd", out / "ecssd")
  folder = out / "ecssd" / "test" / builders.VERSION
  damage(folder)
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  redo = (rf"; delete '{folder}' and prepare it again with `python -m "
          rf"experiments.prepare_dataset --dataset=ecssd --split=test --data_dir=DIR "
          rf"--tfds_dir={out}`$")
  for attempt in (lambda: datasets.load("ecssd", tfds_dir=out),
                  lambda: datasets.prepare("ecssd", "/archives/not/needed", tfds_dir=out,
                                           progress=False)):
    with pytest.raises(datasets.MissingDataError) as error:
      attempt()
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"the prepared copy '{folder}' is damaged: ")
    assert re.search(message, text) and re.search(redo, text), text
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_copy_prepared_without_checksums_is_refused(tfds_dir, tmp_path):
  out = tmp_path / "tfds"
  shutil.copytree(tfds_dir / "ecssd", out / "ecssd")
  meta_path = out / "ecssd" / "test" / builders.VERSION / "metadata.json"
  meta = json.loads(meta_path.read_text())
  del meta["shards"]
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(datasets.MissingDataError, match=r"lacks \['shards'\]\); prepare it again"):
    datasets.load("ecssd", tfds_dir=out)


def test_prepare_dataset_over_a_damaged_copy_says_so_and_what_to_do(tfds_dir, tmp_path):
  """Run again over a bit-flipped copy, the command does not report the images ready: one
  line naming the shard, exit 1, the copy left as it was."""
  out = tmp_path / "tfds"
  shutil.copytree(tfds_dir / "ecssd", out / "ecssd")
  shard = _shard(out / "ecssd" / "test" / builders.VERSION)
  _flip(shard, lambda n: n // 2)
  damaged = shard.read_bytes()
  done = _command(["--dataset=ecssd", f"--data_dir={tmp_path}", f"--tfds_dir={out}"])
  assert done.returncode == 1 and "ready" not in done.stdout, (done.stdout, done.stderr)
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
  assert lines[0].startswith("error: the prepared copy ") and (
      f"'{shard}' does not match its sha256 checksum" in lines[0]), lines[0]
  assert shard.read_bytes() == damaged
