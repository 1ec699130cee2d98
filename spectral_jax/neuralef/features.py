"""What ψ and the batch kernel see of an image: the frozen backbone's features (SPEC §1, §5).

* ``psi_inputs`` (B, N, 3C): ψ's input, the concatenation of block 0, block ``depth // 2`` and
  the high-level features (``psi.psi_features``; 1152 dims for ViT-S).
* ``graph_features`` (B, N, C): the high-level features the batch k-NN graph is built from:
  the last block's attention keys for DINO / DINOv2 backbones, the final normed tokens otherwise
  (SPEC §1).
* ``image_grids`` (B, h, w, 3): the crop bilinearly downsampled to the patch grid (PyTorch's
  ``F.interpolate`` convention, ``graphs.resize_to_grid(convention="torch")``), RGB in [0, 1]:
  the pixel graph's input.

`training_batch` computes the three on device (the grain path, inside the train step);
``neuralef.feature_cache`` computes them once for fixed views and stores them on disk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from spectral_jax import backbones
from spectral_jax import graphs
from spectral_jax.neuralef import psi as psi_lib

# Backbone families whose graph features are the last block's keys (SPEC §1).
KEY_FEATURE_FAMILIES = ("dino", "dinov2")


def high_level_features(features, family: str) -> jax.Array:
  """The graph's high-level features from a backbone's `Features` (SPEC §1).

  Args:
    features: ``backbones.Features`` of a batch.
    family: the backbone family (``backbone.config.family``).
  Returns:
    (B, N, C): last-block keys for DINO / DINOv2, the final normed tokens otherwise.
  """
  return features.keys if family in KEY_FEATURE_FAMILIES else features.tokens


def backbone_features(backbone, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ψ's input and the graph features of a batch of images (SPEC §1, §5).

  Args:
    backbone: a ``backbones.Backbone``.
    images: (B, H, W, 3) float RGB in [0, 1] (cropped by the backbone to multiples of P).
  Returns:
    ``(psi_inputs (B, N, 3C), graph_features (B, N, C))``, float32.
  """
  low, mid = psi_lib.feature_levels(backbone.config.depth)
  feats = backbones.extract_features(backbone, images, blocks=(low, mid))
  high = high_level_features(feats, backbone.config.family)
  return psi_lib.psi_features(feats.blocks[0], feats.blocks[1], high), high


def training_batch(backbone, images: jax.Array) -> dict[str, jax.Array]:
  """The training batch (`FeatureSet.batch`'s arrays) of crops, computed on device (SPEC §1, §5).

  What ``feature_cache.extract_feature_set`` stores for the same crops, as one traceable function: the frozen
  backbone's ψ inputs and graph features (`backbone_features`, under ``stop_gradient``) and
  the crops' pixel grids (``graphs.resize_to_grid(convention="torch")``).

  Args:
    backbone: a ``backbones.Backbone`` (its ``config.dtype`` is the compute dtype).
    images: (B, H, W, 3) uint8 crops, or floats in [0, 1]; cropped to multiples of the patch.
  Returns:
    ``{"psi_inputs": (B, N, 3C), "graph_features": (B, N, C), "image_grids": (B, h, w, 3)}``,
    float32.
  """
  p = backbone.config.patch_size
  grid = (images.shape[1] // p, images.shape[2] // p)
  crops = images[:, :grid[0] * p, :grid[1] * p]
  floats = crops.astype(jnp.float32) / 255.0 if crops.dtype == jnp.uint8 else crops
  psi_inputs, graph_feats = jax.lax.stop_gradient(backbone_features(backbone, floats))
  return {"psi_inputs": psi_inputs.astype(jnp.float32),
          "graph_features": graph_feats.astype(jnp.float32),
          "image_grids": graphs.resize_to_grid(crops, grid, convention="torch")}


def with_compute_dtype(backbone, dtype: str):
  """``backbone`` computing in ``dtype`` ("float32" or "bfloat16"; parameters unchanged)."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"backbone.dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
  if backbone.config.dtype == dtype:
    return backbone
  cfg = backbone.config.to_dict() if hasattr(backbone.config, "to_dict") else dict(backbone.config)
  return backbone.replace(config=ml_collections.FrozenConfigDict({**cfg, "dtype": dtype}))


def jitted_backbone_features():
  """`backbone_features` under `jax.jit` with the backbone's CPU compiler options (an outer jit
  decides them; see `backbones.compiler_options`): ``f(backbone, images)``."""
  return jax.jit(backbone_features, compiler_options=backbones.compiler_options())


__all__ = ["KEY_FEATURE_FAMILIES", "backbone_features", "high_level_features",
           "jitted_backbone_features", "training_batch", "with_compute_dtype"]
