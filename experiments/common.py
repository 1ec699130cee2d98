"""Pieces the DSM commands share: the backbone of a config, the XLA compilation cache."""

from __future__ import annotations

import pathlib

from spectral_jax import _cli, backbones


def apply_short_flags(cfg, short_flags: dict):
  """``cfg`` with each short flag that was given set at its dotted field: ``short_flags`` maps
  flag name → field path ("dsm.num_eigenvectors"). One place holds each default: the config."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  for flag, field in short_flags.items():
    value = flags.FLAGS[flag].value
    if value is not None:
      _cli.set_field(cfg, field, value)
  return cfg


def run_main(argv, config, run) -> None:
  """A DSM command's ``main``: no positional arguments, the compilation cache, ``run(config)``."""
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {argv[1:]}")
  enable_compilation_cache(config.compilation_cache)
  run(config)


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
