"""DSM evaluated on a benchmark (CorLoc or single-object segmentation): configuration.

  python -m experiments.evaluate_dsm --dataset=voc07 --data_dir=DIR --out=OUT
  python -m experiments.evaluate_dsm --dataset=ecssd --data_dir=DIR --out=OUT \
      --config.image_size=0 --config.dsm.upsample=bilinear

The backbone, DSM and batching fields are the segment command's (experiments/configs/
segment.py, same defaults: DINOv2 ViT-S/14 offline weights, K = 20, λ = 0, 448 px).

Presets: ``default``; ``test`` (a 1-block random ViT, 112-px images, K = 6: plumbing tests).
"""

import ml_collections

from experiments.configs import segment as segment_config


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The configuration for ``preset`` ("default" or "test")."""
  if preset not in ("default", "test"):
    raise ValueError(f"unknown preset {preset!r}; choose default or test")
  base = segment_config.get_config(preset)
  c = ml_collections.ConfigDict()
  c.dataset = ""             # voc07, voc12, ecssd, duts, dut_omron, cub (spectral_jax.datasets)
  c.data_dir = ""            # the folder the official archives were extracted into
  c.tfds_dir = ""            # read the copy experiments.prepare_dataset wrote there instead
  c.split = ""               # "" = the benchmark's split (VOC: trainval; saliency/CUB: test)
  c.out = ""                 # output folder (required)
  c.overwrite = False        # allow an --out that already holds files
  c.limit = 0                # evaluate the first N images only (0 = all)
  c.save_masks = False       # single-object: also write OUT/masks/<id>.png (255 = object)
  for field in ("image_size", "batch_size", "bucket_step", "prefetch", "seed",
                "compilation_cache", "backbone", "dsm", "semantic"):
    c[field] = base[field]
  c.semantic.enabled = False  # not used by these protocols
  if preset == "test":
    c.image_size = 112
  return c
