"""Pieces the DSM commands share: the backbone of a config, the XLA compilation cache."""

from __future__ import annotations

import pathlib

from spectral_jax import _cli, backbones


def load_backbone(cfg) -> backbones.Backbone:
  """The backbone of ``cfg.backbone`` (offline pretrained, from a path, or random)."""
  b = cfg.backbone
  return backbones.load(b.name, b.weights, overrides=_cli.parse_overrides(b.overrides),
                        dtype=b.dtype, seed=cfg.seed)


def enable_compilation_cache(setting: str) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache ("default", a folder, or "" for off)."""
  if not setting:
    return None
  import jax  # pylint: disable=import-outside-toplevel
  folder = backbones.cache_dir() / "xla" if setting == "default" else pathlib.Path(setting)
  jax.config.update("jax_compilation_cache_dir", str(folder.expanduser()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return folder
