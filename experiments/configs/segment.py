"""DSM object localisation and segmentation of a folder of photos: configuration (SPEC §2–4).

Reference values are the defaults (λ = 0, K = 20, 4-connected largest component, nearest
upsampling of the patch mask, no CRF), except the object discovery method: "multi_region" (a
box per DSM segment, best first) was measured better than reference DSM on the bundled photos;
``--config.dsm.discovery=dsm`` is the reference recipe. The documented options are fields
below.

  python -m experiments.segment                                   # the bundled photos
  python -m experiments.segment --images=DIR --out=DIR
  python -m experiments.segment --config=experiments/configs/segment.py \
      --config.dsm.image_weight=0.5 --config.crf.enabled=True

Presets (the string after ``:``): ``default``; ``test`` (a 1-block random ViT, 56-px images,
k = 6: for unit tests of the command's plumbing, not of quality).
"""

import ml_collections

from spectral_jax import bilateral, crf, dsm


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
  c.image_size = 448         # longer side after resizing; 0 = native size (DSM: no resize)
  c.batch_size = 4           # photos per jitted call
  c.bucket_step = 8          # patch grids padded up to multiples of this (few compiled shapes)
  c.prefetch = 8             # photos decoded ahead of the running batch (bounded memory)
  c.seed = 0
  # Persistent XLA compilation cache (the command line only; compiles dominate a CPU run):
  # "default" = <backbones.cache_dir()>/xla, "" = off, else a folder.
  c.compilation_cache = "default"

  c.backbone = ml_collections.ConfigDict()
  c.backbone.name = "dinov2_vits14"
  c.backbone.weights = ""    # "" = offline pretrained; "random" = random init; else a path
  c.backbone.overrides = ""  # for weights="random": "depth=2,width=96,..." config fields
  c.backbone.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

  # Graph, eigenvectors, localisation and multi-region segments (spectral_jax.dsm).
  c.dsm = ml_collections.ConfigDict()
  c.dsm.num_eigenvectors = dsm.NUM_EIGENVECTORS   # K = 20
  c.dsm.features = "keys"    # graph features: "keys" (DSM), "queries", "values" or "tokens"
  c.dsm.image_weight = 0.0   # λ of the colour graph; 0 = features only (reference command line)
  c.dsm.method = "auto"      # eigensolver: "auto", "eigh", "lobpcg"
  c.dsm.foreground = "minority"  # side of y₁ that is the object: "minority" (SPEC) or "border";
  # TokenCut/MaskCut: "minority" = their published seed rule, "border" = the border rule
  c.dsm.connectivity = dsm.CONNECTIVITY           # 4 (SPEC); the DSM code's skimage uses 8
  c.dsm.upsample = "nearest" # object mask: "nearest" patch mask or "bilinear" y₁ then threshold
  c.dsm.num_segments = dsm.NUM_SEGMENTS           # multi-region segments per image
  c.dsm.adaptive_segments = False                 # per-image count from the largest eigengap
  c.dsm.segment_eigenvectors = 0                  # m eigenvectors for K-means; 0 = all K − 1
  # Object discovery (spectral_jax.dsm.objects): "dsm" (reference DSM: one box from y₁),
  # "tokencut", "maskcut" (N = max_objects cuts) or "multi_region" (a box per segment, the
  # default: the best of them on the bundled photos, BUILD_NOTES "Object discovery").
  c.dsm.discovery = "multi_region"
  c.dsm.tau = -1.0           # TokenCut/MaskCut fixed τ; < 0 = published (0.2 / 0.15)
  c.dsm.tau_quantile = 0.5   # τ = this quantile of each image's similarities; 0 = the
                             # published fixed τ (a complete graph on DINOv2 keys)
  c.dsm.graph_eps = 1e-5     # ε, the binarised graph's non-edge weight
  c.dsm.max_objects = dsm.MAX_OBJECTS             # boxes per photo ("boxes"); MaskCut's N
  # multi_region's object mask: the segments with at most this share of their patches on the
  # photo's border (0.1, measured: BUILD_NOTES "Object discovery"); 1 = every segment.
  c.dsm.region_border_share = dsm.MAX_BORDER_SHARE

  # Dense CRF on the object mask (spectral_jax.crf; DSM's parameters).
  c.crf = ml_collections.ConfigDict()
  c.crf.enabled = False
  for name, value in crf.CRFParams()._asdict().items():
    setattr(c.crf, name, value)
  c.crf.method = "grid"

  # TokenCut's fast bilateral solver on the object mask (spectral_jax.bilateral; its saliency
  # defaults: σ 16 px / 16 luma / 8 chroma, λ 256, 25 PCG iterations); the mask becomes the
  # solver's output > 0.5. One refinement at a time: not with the CRF.
  c.bilateral = ml_collections.ConfigDict()
  c.bilateral.enabled = False
  for name, value in bilateral.BilateralParams()._asdict().items():
    setattr(c.bilateral, name, value)

  # Semantic segmentation across the run's photos (NAME.semantic.png).
  c.semantic = ml_collections.ConfigDict()
  c.semantic.enabled = False
  c.semantic.num_segments = dsm.SEMANTIC_NUM_SEGMENTS  # 15 segments per image
  c.semantic.num_clusters = 20                    # C (VOC: 20 + background)
  c.semantic.pca_dim = 0                          # 0 = no PCA (reference default)
  c.semantic.crop_size = dsm.CROP_SIZE
  c.semantic.num_erode = dsm.NUM_ERODE
  c.semantic.num_dilate = dsm.NUM_DILATE
  c.semantic.crop_batch_size = 16

  # Pictures and the evaluation baseline.
  c.viz = ml_collections.ConfigDict()
  c.viz.num_eigenvectors = 4                      # heat maps of y₁..y₄
  c.viz.panel_height = 240                        # pixels per tile in NAME.eigenvectors.png
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
