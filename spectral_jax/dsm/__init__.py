"""Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022): localisation and segmentation from
Laplacian eigenvectors of ViT patch features (SPEC §2–4).

One module per stage of the method:

* ``spectral`` (DSM §3.1): features (+ colours) → the k smallest eigenpairs of
  ``(D − W) y = λ D y``.
* ``localisation`` (§3.2): the oriented Fiedler vector y₁, its positive side, the largest
  connected component and its box; the centred-box baseline.
* ``masks``: patch maps at the photo's own resolution (host, as outputs are written).
* ``multi_region`` (§3.3): K-means on the eigenvectors, border-majority background, eigengap
  count.
* ``semantic`` (§3.4): a box per segment, crops, dataset-level clustering, semantic maps.
* ``tokencut``: TokenCut's and MaskCut's normalised cuts of the binarised key graph (SPEC §7).
* ``objects``: the discovery method's objects: boxes best first, instance maps; the default
  method ``DEFAULT_DISCOVERY`` = "tokencut+maskcut" (TokenCut's box and mask, MaskCut's boxes).
* ``pipeline``: all of it as one jitted program per batch shape —
  ``segmenter = dsm.make_pipeline(backbone, dsm.PipelineConfig()); segmenter(images, valid)``;
  ``PipelineConfig()`` holds the one set of DSM defaults (the segment command's).
* ``batching``: photos to padded batches of a few grid shapes, streamed.
* ``outputs``: per-photo results at the photo's size (``PhotoResult``) and the files.
* ``photo``: one call, ``dsm.segment(photo) -> PhotoResult`` (``PhotoSegmenter`` for many).
* ``evaluate``: the pipeline over a dataset, scored by ``spectral_jax.protocols``
  (``dsm.evaluate_dsm``).
"""

from spectral_jax.dsm.evaluate import Evaluation
from spectral_jax.dsm.evaluate import check_semantic_setup
from spectral_jax.dsm.evaluate import evaluate_dsm
from spectral_jax.dsm.evaluate import semantic_over_dataset
from spectral_jax.dsm.localisation import CONNECTIVITY
from spectral_jax.dsm.localisation import FOREGROUND_RULES
from spectral_jax.dsm.localisation import border_side
from spectral_jax.dsm.localisation import box_mask
from spectral_jax.dsm.localisation import centred_box
from spectral_jax.dsm.localisation import fiedler_map
from spectral_jax.dsm.localisation import foreground_patches
from spectral_jax.dsm.localisation import foreground_side
from spectral_jax.dsm.localisation import localise
from spectral_jax.dsm.localisation import scale_boxes
from spectral_jax.dsm.masks import UPSAMPLE_METHODS
from spectral_jax.dsm.masks import object_mask
from spectral_jax.dsm.masks import upsample_patch_map
from spectral_jax.dsm.multi_region import BACKGROUND
from spectral_jax.dsm.multi_region import NUM_SEGMENTS
from spectral_jax.dsm.multi_region import adaptive_num_segments
from spectral_jax.dsm.multi_region import multi_region_segments
from spectral_jax.dsm.objects import DEFAULT_DISCOVERY
from spectral_jax.dsm.objects import DISCOVERY_METHODS
from spectral_jax.dsm.objects import MAX_BORDER_SHARE
from spectral_jax.dsm.objects import MAX_OBJECTS
from spectral_jax.dsm.pipeline import GRAPH_FEATURES
from spectral_jax.dsm.pipeline import DSMResult
from spectral_jax.dsm.pipeline import PatchResult
from spectral_jax.dsm.pipeline import PipelineConfig
from spectral_jax.dsm.pipeline import Segmenter
from spectral_jax.dsm.pipeline import analyse
from spectral_jax.dsm.pipeline import check_valid_rectangles
from spectral_jax.dsm.pipeline import make_pipeline
from spectral_jax.dsm.outputs import PhotoResult
from spectral_jax.dsm.outputs import RenderSettings
from spectral_jax.dsm.photo import PhotoSegmenter
from spectral_jax.dsm.photo import segment
from spectral_jax.dsm.semantic import CROP_SIZE
from spectral_jax.dsm.semantic import NUM_DILATE
from spectral_jax.dsm.semantic import NUM_ERODE
from spectral_jax.dsm.semantic import SEMANTIC_NUM_SEGMENTS
from spectral_jax.dsm.semantic import cluster_embeddings
from spectral_jax.dsm.semantic import crop_and_resize
from spectral_jax.dsm.semantic import pca
from spectral_jax.dsm.semantic import segment_boxes
from spectral_jax.dsm.semantic import semantic_map
from spectral_jax.dsm.spectral import NUM_EIGENVECTORS
from spectral_jax.dsm.spectral import check_num_eigenvectors
from spectral_jax.dsm.spectral import spectral_decomposition

__all__ = [
    "BACKGROUND", "CONNECTIVITY", "CROP_SIZE", "DEFAULT_DISCOVERY", "DISCOVERY_METHODS",
    "FOREGROUND_RULES",
    "GRAPH_FEATURES", "MAX_BORDER_SHARE", "MAX_OBJECTS", "NUM_DILATE", "NUM_EIGENVECTORS",
    "NUM_ERODE", "NUM_SEGMENTS", "SEMANTIC_NUM_SEGMENTS", "UPSAMPLE_METHODS", "DSMResult",
    "Evaluation", "PatchResult", "PhotoResult", "PhotoSegmenter", "PipelineConfig",
    "RenderSettings", "Segmenter", "adaptive_num_segments", "analyse", "border_side",
    "box_mask", "centred_box", "check_num_eigenvectors", "check_semantic_setup",
    "check_valid_rectangles", "cluster_embeddings", "crop_and_resize", "evaluate_dsm",
    "fiedler_map", "foreground_patches", "foreground_side", "localise", "make_pipeline",
    "multi_region_segments", "object_mask", "pca", "scale_boxes", "segment", "segment_boxes",
    "semantic_map", "semantic_over_dataset", "spectral_decomposition", "upsample_patch_map",
]
