r"""Prepare a benchmark once with its tensorflow-datasets builder (ArrayRecord, no TensorFlow).

  python -m experiments.prepare_dataset --dataset=NAME --data_dir=DIR --tfds_dir=OUT \
      [--split=SPLIT]

DIR is where the official archives were extracted (the builder's manual dir; the archive names
are in ``spectral_jax.datasets.builders.SPECS``); the split (default: the benchmark's evaluation
split) is written to OUT/NAME/SPLIT/VERSION/. Preparing a split that is already there does
nothing. Afterwards ``--config.tfds_dir=OUT`` makes ``experiments.evaluate_dsm`` read the
prepared copy. The work is ``spectral_jax.datasets.prepare``; exit code 0 on success, 1 when the
data is missing or unreadable, 2 for a usage error.
"""

from __future__ import annotations

import time

from absl import flags

from spectral_jax import _cli, datasets

_DATASET = flags.DEFINE_string("dataset", None, f"one of {', '.join(datasets.DATASETS)}")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "folder holding the extracted archives")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "folder for the prepared datasets")
_SPLIT = flags.DEFINE_string("split", None, "split (default: the benchmark's evaluation split)")


def main(argv) -> None:
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {argv[1:]}")
  name = _DATASET.value
  if name not in datasets.DATASETS:
    raise _cli.UsageError(f"--dataset must be one of {', '.join(datasets.DATASETS)}; got "
                          f"{name!r}")
  for flag in (_DATA_DIR, _TFDS_DIR):
    if not flag.value:
      raise _cli.UsageError(f"--{flag.name} is required")
  _cli.directory_flag("tfds_dir", _TFDS_DIR.value)
  t0 = time.perf_counter()
  try:
    folder = datasets.prepare(name, _DATA_DIR.value, split=_SPLIT.value,
                              tfds_dir=_TFDS_DIR.value)
  except ImportError as e:  # tensorflow-datasets not installed: a set-up problem, one line
    raise _cli.WorkError(str(e)) from e
  ds = datasets.load(name, split=_SPLIT.value, tfds_dir=_TFDS_DIR.value)
  size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
  print(f"{name} {ds.split}: {len(ds)} images ready in {folder} ({size / 2**20:.1f} MiB, "
        f"{time.perf_counter() - t0:.1f} s); evaluate with --config.tfds_dir={_TFDS_DIR.value}")


if __name__ == "__main__":
  _cli.run(main)
