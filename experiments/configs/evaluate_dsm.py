"""DSM evaluated on a benchmark (CorLoc, single-object or semantic segmentation): configuration.

  python -m experiments.evaluate_dsm --dataset=voc07 --data_dir=DIR --out=OUT
  python -m experiments.evaluate_dsm --dataset=ecssd --data_dir=DIR --out=OUT \
      --config.image_size=0 --config.dsm.upsample=bilinear
  python -m experiments.evaluate_dsm --dataset=voc12_semantic --data_dir=DIR --out=OUT \
      --config.semantic.matching=majority

The backbone, DSM and batching fields are the segment command's (experiments/configs/
segment.py, same defaults: DINOv2 ViT-S/14 offline weights, K = 20, λ = 0, 448 px), except
the discovery method: the reference DSM recipe (``dsm.discovery = "dsm"``), the method the
printed paper figures are for; ``--config.dsm.discovery=tokencut+maskcut`` evaluates segment's
default (also tokencut, maskcut, multi_region). Box datasets report CorLoc of the best box
and the recall and AP50 of every discovered object's box.

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
  c.dataset = ""             # voc07, voc12, coco20k, ecssd, ..., voc12_semantic
  #                            (the names in spectral_jax.datasets.DATASETS)
  c.data_dir = ""            # the folder the official archives were extracted into
  c.tfds_dir = ""            # read the copy experiments.prepare_dataset wrote there instead
  c.split = ""               # "" = the benchmark's split (VOC: trainval; saliency/CUB: test)
  c.out = ""                 # output folder (required)
  c.overwrite = False        # allow an --out that already holds files
  c.limit = 0                # evaluate the first N images only (0 = all)
  c.save_masks = False       # also write OUT/masks/<id>.png (single-object: 255 = object;
  #                            semantic: palette PNG, 0 = background, cluster c as c + 1)
  for field in ("image_size", "batch_size", "bucket_step", "prefetch", "seed",
                "compilation_cache", "backbone", "dsm", "semantic", "bilateral"):
    c[field] = base[field]
  c.dsm.discovery = "dsm"     # the paper's method (segment's default is tokencut+maskcut)
  c.semantic.enabled = False  # the command turns it on for the semantic datasets
  c.semantic.matching = "hungarian"   # DSM's one-to-one matching; "majority" (NeuralEF's)
  c.semantic.absent = "zero"          # classes in neither gt nor prediction: IoU 0 (DSM), "skip"
  if preset == "test":
    c.image_size = 112
  return c
