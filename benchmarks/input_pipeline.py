"""Can the grain input pipeline feed the NeuralEF train step? Images/s of both, one run.

* Input: the bundled photos written as a Pascal Context tree (``VOCdevkit/VOC2010``: JPEGs and
  label PNGs, ``--records`` entries, photos cycled) in a temporary folder, read by
  ``datasets.load("pascal_context", ..., "train")``: every record decodes its JPEG and label PNG.
* Plain PIL loop: ``source[i]`` then ``transforms.train_augment`` (the reference augmentation:
  random resize 0.5-2.0, crop with cat_max_ratio, flip, photometric distortion, pad), one image
  after another in this process.
* grain: ``datasets.pipeline.training_dataset`` (the training command's pipeline) with 0, 1 and
  2 multiprocess workers (``--num_threads`` read threads each): images/s from the iterator's
  creation to the last of ``--batches`` batches (worker start-up included: the ratio uses it)
  and after the first batch (see `grain_rate` for its bias).
* Train step: ``neuralef.train.make_image_train_step`` (backbone inside the step, kernel, ψ,
  loss, Adam) at the same crop size, median of ``--repeats`` after one warm-up; the backbone is
  ``--backbone`` with random weights (the FLOPs of the pretrained one; ``--backbone_depth``
  shortens it for a smoke run).

Printed: images/s of each and the ratio pipeline / step (≥ 1: the pipeline keeps up).

Run: PYTHONPATH=. python benchmarks/input_pipeline.py [--image_size 336 --batch 16 --batches 24]
Smoke: PYTHONPATH=. python benchmarks/input_pipeline.py --image_size 56 --batch 4 --batches 3 \
    --records 12 --K 8 --k 8 --backbone_depth 1 --repeats 1
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from experiments.configs import neuralef as configs
from spectral_jax import backbones
from spectral_jax import datasets
from spectral_jax import testing
from spectral_jax.datasets import samples
from spectral_jax.datasets import pipeline
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import step as step_lib


def write_tree(base: pathlib.Path, records: int) -> None:
  """A Pascal Context tree of ``records`` JPEGs (bundled photos, cycled), all-background labels."""
  root = base / "VOCdevkit" / "VOC2010"
  for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
    (root / d).mkdir(parents=True, exist_ok=True)
  photos = list(samples.bundled_photos().values())
  ids = []
  for i in range(records):
    rgb = photos[i % len(photos)]
    image_id = f"2008_{i:06d}"
    Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
    labels = np.zeros(rgb.shape[:2], np.uint8)
    labels[: rgb.shape[0] // 2] = 1 + i % 59  # two classes, so cat_max_ratio has work to do
    Image.fromarray(labels, mode="L").save(root / "SegmentationClassContext" / f"{image_id}.png")
    ids.append(image_id)
  (root / "ImageSets/SegmentationContext/train.txt").write_text("\n".join(ids) + "\n")


def plain_loop_rate(source, aug, count: int) -> float:
  """Images/s of decode + augment in a plain loop."""
  start = time.perf_counter()
  for i in range(count):
    record = source[i % len(source)]
    transforms.train_augment(record.image, np.random.default_rng(i), aug, record.class_mask)
  return count / (time.perf_counter() - start)


def grain_rate(source, aug, args, workers: int) -> tuple[float, float, float]:
  """(images/s from the iterator's creation, images/s after the first batch, seconds to the
  first batch) over ``--batches`` batches of the training pipeline. The second rate counts
  batches that were read ahead while the first was awaited: it overstates the steady rate by
  at most (``--prefetch`` + workers) / ``--batches``."""
  start = time.perf_counter()
  it = iter(pipeline.training_dataset(source, aug, batch_size=args.batch, seed=0,
                                      shard_index=0, shard_count=1,
                                      num_threads=args.num_threads, prefetch=args.prefetch,
                                      num_workers=workers))
  try:
    np.asarray(next(it)["image"])
    first = time.perf_counter()
    for _ in range(args.batches - 1):
      np.asarray(next(it)["image"])
    end = time.perf_counter()
    steady = (args.batches - 1) * args.batch / (end - first) if args.batches > 1 else float("nan")
    return args.batches * args.batch / (end - start), steady, first - start
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()


def step_rate(args) -> float:
  """Images/s of the train step with the backbone inside (one device)."""
  config = configs.get_config("reference")
  config.data.image_size = args.image_size
  config.train.batch_size = args.batch
  config.psi.k = args.K
  config.graph.k = args.k
  overrides = {"depth": args.backbone_depth} if args.backbone_depth else None
  backbone = backbones.load(args.backbone, "random", overrides=overrides)
  config.backbone.dtype = args.dtype
  config_lib.check(config, patch_size=backbone.config.patch_size, data=False)
  step = step_lib.make_image_train_step(config, backbone)
  state = step_lib.init_state(config, 3 * backbone.config.width)
  images = np.random.default_rng(0).integers(0, 256, size=(args.batch, args.image_size,
                                                           args.image_size, 3), dtype=np.uint8)
  batch = {"images": jax.device_put(images)}
  holder = [state]

  def run():
    new, metrics = step(holder[0], batch)
    jax.block_until_ready(metrics["loss"])
    holder[0] = new
  return args.batch / testing.median_time(run, args.repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image_size", type=int, default=336, help="training crop side")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=24, help="timed batches per grain run")
  parser.add_argument("--records", type=int, default=48)
  parser.add_argument("--num_threads", type=int, default=4)
  parser.add_argument("--prefetch", type=int, default=4, help="batches read ahead (≥ threads)")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--backbone", default="dinov2_vits14")
  parser.add_argument("--backbone_depth", type=int, default=0, help="0: the backbone's own")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--K", type=int, default=256)
  parser.add_argument("--k", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  aug = transforms.TrainAugment(crop_size=args.image_size)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); crops "
        f"{args.image_size} px, batch {args.batch}, {args.records} Pascal-Context-format records "
        "(bundled photos)")
  with tempfile.TemporaryDirectory() as tmp:
    write_tree(pathlib.Path(tmp), args.records)
    source = datasets.load("pascal_context", tmp, "train")
    rates = {"plain PIL loop": plain_loop_rate(source, aug, args.batches * args.batch)}
    print(f"{'plain PIL loop':>24}: {rates['plain PIL loop']:8.1f} images/s")
    for workers in args.workers:
      total, steady, first = grain_rate(source, aug, args, workers)
      name = f"grain, {workers} workers"
      rates[name] = total
      print(f"{name:>24}: {total:8.1f} images/s with start-up; {steady:8.1f} after the first "
            f"batch ({first:.2f} s)")
  step = step_rate(args)
  depth = f", depth {args.backbone_depth}" if args.backbone_depth else ""
  print(f"{'train step':>24}: {step:8.1f} images/s  ({args.backbone}{depth}, {args.dtype}, "
        f"K={args.K}, k={args.k})")
  best = max((r, n) for n, r in rates.items() if n.startswith("grain"))
  threads = rates.get("grain, 0 workers", float("nan")) / rates["plain PIL loop"]
  print(f"ratio pipeline / step: {best[0] / step:.2f} ({best[1]}, start-up included); "
        f"grain 0 workers / plain loop: {threads:.2f}")


if __name__ == "__main__":
  main()
