"""DSM object localisation and segmentation of a folder of photos: configuration (SPEC §2–4).

Reference values are the defaults (λ = 0, K = 20, 4-connected largest component, nearest
upsampling of the patch mask, no CRF), except the object discovery method, "tokencut+maskcut":
the best box and the mask from TokenCut, the multi-object boxes from MaskCut (N = 3 cuts), both
with τ the median of each photo's key similarities, chosen by the protocol BUILD_NOTES fixed
before the labelled-photo comparison. ``--config.dsm.discovery=dsm`` is the reference recipe;
``tokencut``, ``maskcut`` and ``multi_region`` give each method alone. The DSM fields and
their defaults are ``spectral_jax.dsm.PipelineConfig``'s and ``RenderSettings``' (the
library's defaults are the command's: one set); the others are documented below.

  python -m experiments.segment                                   # the bundled photos
  python -m experiments.segment --images=DIR --out=DIR
  python -m experiments.segment --config=experiments/configs/segment.py \
      --config.dsm.image_weight=0.5 --config.crf.enabled=True

Presets (the string after ``:``): ``default``; ``test`` (a 1-block random ViT, 56-px images,
k = 6: for unit tests of the command's plumbing, not of quality).
"""

import ml_collections

from spectral_jax import bilateral, crf, dsm
from spectral_jax.dsm import batching, photo


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The configuration for ``preset`` ("default" or "test")."""
  if preset not in ("default", "test"):
    raise ValueError(f"unknown preset {preset!r}; choose default or test")
  c = ml_collections.ConfigDict()
  c.images = ""              # a folder of photos; "" = the bundled photos (data.samples)
  c.samples = ""             # with images == "": comma-separated subset of the bundled names
  c.recursive = False        # look into sub-folders of `images`
  c.out = ""                 # "" = ./segment_output
  c.overwrite = False        # allow an --out that already holds files (replaces them)
  c.image_size = batching.IMAGE_SIZE  # longer side after resizing (448); 0 = native size
  c.batch_size = 4           # photos per jitted call
  c.bucket_step = batching.BUCKET_STEP  # grids padded to multiples of this (few compiled shapes)
  c.prefetch = batching.PREFETCH  # photos decoded ahead of the running batch (bounded memory)
  c.seed = 0
  # Persistent XLA compilation cache (the command line only; compiles dominate a CPU run):
  # "default" = <backbones.cache_dir()>/xla, "" = off, else a folder.
  c.compilation_cache = "default"

  c.backbone = ml_collections.ConfigDict()
  c.backbone.name = photo.BACKBONE  # "dinov2_vits14"
  c.backbone.weights = ""    # "" = offline pretrained; "random" = random init; else a path
  c.backbone.overrides = ""  # for weights="random": "depth=2,width=96,..." config fields
  c.backbone.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

  # Graph, eigenvectors, localisation, multi-region segments and object discovery: the fields
  # of spectral_jax.dsm.PipelineConfig (documented there), with its defaults — the one set of
  # DSM defaults (the discovery method "tokencut+maskcut": TokenCut's best box and mask,
  # MaskCut's boxes, BUILD_NOTES "The protocol that chooses the DSM default";
  # --config.dsm.discovery=dsm is the reference). The semantic pass's fields sit in the
  # "semantic" section below.
  for section in ("dsm", "semantic", "crf", "viz"):
    c[section] = ml_collections.ConfigDict()
  pipeline_defaults = dsm.PipelineConfig()
  for name, (section, key) in dsm.PipelineConfig.config_keys().items():
    c[section][key] = getattr(pipeline_defaults, name)
  # How the files look (spectral_jax.dsm.RenderSettings, its defaults): dsm.upsample (object
  # mask: "nearest" patch mask or "bilinear" y₁ then threshold), crf.method, viz.panel_height
  # (pixels per tile in NAME.eigenvectors.png), viz.num_eigenvectors (heat maps of y₁..y_m).
  render_defaults = dsm.RenderSettings()
  for name, (section, key) in dsm.RenderSettings.config_keys().items():
    c[section][key] = getattr(render_defaults, name)

  # Dense CRF on the object mask (spectral_jax.crf; DSM's parameters).
  c.crf.enabled = False
  for name, value in crf.CRFParams()._asdict().items():
    setattr(c.crf, name, value)

  # TokenCut's fast bilateral solver on the object mask (spectral_jax.bilateral; its saliency
  # defaults: σ 16 px / 16 luma / 8 chroma, λ 256, 25 PCG iterations); the mask becomes the
  # solver's output > 0.5. One refinement at a time: not with the CRF.
  c.bilateral = ml_collections.ConfigDict()
  c.bilateral.enabled = False
  for name, value in bilateral.BilateralParams()._asdict().items():
    setattr(c.bilateral, name, value)

  # Semantic segmentation across the run's photos (NAME.semantic.png): enabled,
  # num_segments (15 per image), crop_size, num_erode, num_dilate come from PipelineConfig
  # above; the dataset-level clustering's settings:
  c.semantic.num_clusters = 20                    # C (VOC: 20 + background)
  c.semantic.pca_dim = 0                          # 0 = no PCA (reference default)
  c.semantic.crop_batch_size = 16

  # The evaluation baseline.
  c.baseline_box_fraction = 0.5                   # centred box with sides half the image's

  if preset == "test":
    c.compilation_cache = ""
    c.image_size = 56
    c.backbone.weights = "random"
    c.backbone.overrides = "depth=1,width=64,num_heads=2,mlp_dim=128"
    c.dsm.num_eigenvectors = 6
    c.dsm.num_segments = 3
    c.semantic.num_segments = 3
    c.semantic.num_clusters = 2
    c.semantic.crop_size = 28
    c.viz.panel_height = 64
  return c
