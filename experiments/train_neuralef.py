r"""Train the NeuralEF segmentor's ψ on cached backbone features or a dataset (SPEC §2, §5).

  # the bundled sample photos, reference settings (batch 16 of 336-px crops, K = 256)
  python -m experiments.train_neuralef --workdir runs/neuralef
  # a CPU-sized run (batch 4 of 224-px crops, k = 64, 250 steps: 10-20 minutes on 2 cores)
  python -m experiments.train_neuralef --config experiments/configs/neuralef.py:cpu \
      --workdir runs/neuralef_cpu
  # any image folder; override any config field
  python -m experiments.train_neuralef --workdir runs/mine --config.data.images=/path/to/images \
      --config.train.num_steps=5000
  # a dataset through the grain pipeline (fresh augmentation every step, backbone in the step)
  python -m experiments.train_neuralef --workdir runs/pc --config.data.dataset=pascal_context \
      --config.data.data_dir=/data   # or cityscapes | ade20k | folder (any image folder)

Rerunning the same command resumes from the latest checkpoint in --workdir (Ctrl-C, SIGINT or
SIGTERM save one first and exit with status 130, also when the process was started with SIGINT
ignored); a checkpoint written with another config is refused, naming the differing fields. A
finished run is not extended in place (train.num_steps is the length of its learning-rate and τ
schedules): for a longer training, start a new run with another --workdir.
The config is checked whole before the backbone loads; an unreadable image is skipped with a
``skipping PATH: reason`` line. An expected error is one ``error: ...`` line on stderr, exit
status 2 for a bad flag or config value, 1 for failed work (--verbosity=1 adds the traceback).
Multi-host: start one process per host with --coordinator=HOST:PORT --num_processes=P
--process_id=I (calls jax.distributed.initialize).
"""

from __future__ import annotations

import pathlib

import jax
from absl import flags

from spectral_jax import _cli
from spectral_jax import backbones
from spectral_jax.datasets import pipeline
from spectral_jax.neuralef import checkpoint as ckpt
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import feature_cache
from spectral_jax.neuralef import train as train_lib

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "neuralef.py"
_CONFIG = _cli.define_config_file(
    "config", str(DEFAULT_CONFIG), "Training configuration (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/neuralef", "Checkpoints, metrics, TensorBoard.")
_STOP_AT = flags.DEFINE_integer("stop_at", None, "Stop after this step (resumable).")
_REFRESH = flags.DEFINE_bool("refresh_cache", False, "Extract the backbone features again.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (multi-host).")


def validated_config(workdir: pathlib.Path) -> config_lib.Checked:
  """The --config, checked whole, once, before anything is loaded (``neuralef.config.check``):
  its values (UsageError), the batch against the devices and the backbone's patch grid, and the
  workdir's checkpoint's config."""
  config = _cli.config_from_flag(_CONFIG)
  with _cli.usage_errors():
    if _STOP_AT.value is not None and _STOP_AT.value < 1:
      raise ValueError(f"--stop_at must be ≥ 1; got {_STOP_AT.value}")
    patch = backbones.get_config(config.backbone.name).patch_size
    checked = config_lib.check(config, patch_size=patch, devices=jax.device_count())
    ckpt.check_checkpoint_config(workdir, config)
  return checked


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments {argv[1:]}; this command takes flags only")
  # Explicitly, so a process started with SIGINT ignored (`cmd &` in a script) still saves.
  _cli.install_signal_handlers()
  workdir = _cli.directory_flag("workdir", _WORKDIR.value)
  if _COORDINATOR.value:
    # CPU collectives across processes need gloo (the setting only concerns the CPU backend;
    # importing the modules above initialises no backend, so it still applies here).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

  checked = validated_config(workdir)
  config = checked.config
  if config.data.dataset:
    return _train_from_dataset(checked, workdir)
  images = pipeline.training_images(config.data.images, config.data.recursive)
  with _cli.usage_errors():  # enough views for one batch, before the backbone runs
    train_lib.steps_per_epoch(len(images) * int(config.data.views_per_image),
                              int(config.train.batch_size))
  backbone, feats, hit = feature_cache.prepare_features(config, refresh=_REFRESH.value,
                                                        images=images)
  print(f"backbone {backbone.config.name}: {backbone.weights_note}")
  print(f"features: {len(feats)} views of {len(feats.names)} images, grid {feats.grid}, "
        f"cache {'hit' if hit else 'miss (extracted)'} [{feats.key[:12]}]")
  print(f"devices: {jax.device_count()} ({jax.process_count()} process(es)), global batch "
        f"{config.train.batch_size}", flush=True)
  result = train_lib.train(checked, workdir, feats, stop_at=_STOP_AT.value)
  return _report(config, result, workdir)


def _train_from_dataset(checked: config_lib.Checked, workdir):
  """--config.data.dataset=NAME: the grain pipeline, the backbone inside the step."""
  config = checked.config
  data = config.data
  source = pipeline.training_source(data.dataset, data.data_dir, data.split,
                                    recursive=data.recursive)
  with _cli.usage_errors():
    pipeline.shard_bounds(len(source), jax.process_index(), jax.process_count())
  backbone = backbones.load(config.backbone.name, config.backbone.weights,
                            overrides=checked.overrides)
  print(f"backbone {backbone.config.name} ({config.backbone.dtype}): {backbone.weights_note}")
  print(f"data: {data.dataset} {source.split!r}, {len(source)} images, fresh {data.image_size}-px "
        f"crops every step (grain, {data.num_workers} workers)")
  print(f"devices: {jax.device_count()} ({jax.process_count()} process(es)), global batch "
        f"{config.train.batch_size}", flush=True)
  result = train_lib.train(checked, workdir, source=source, backbone=backbone,
                           stop_at=_STOP_AT.value)
  return _report(config, result, workdir)


def _report(config, result, workdir):
  if result.resumed_from is not None:
    print(f"resumed from step {result.resumed_from}")
  if result.history:
    first, last = result.history[0], result.history[-1]
    print(f"loss {first['loss']:.5f} (step {first['step']}) -> {last['loss']:.5f} "
          f"(step {last['step']})")
  if result.fidelity is not None:
    f, k = result.fidelity, int(config.psi.k)
    print(f"fidelity (ψ vs the batch kernel's top-{k} eigenvectors, {workdir}/fidelity.json): "
          f"mean |cos| in order {f[f'cos_in_order_mean@{k}']:.3f}, largest principal angle "
          f"{f[f'angle_max_deg@{k}']:.1f}° (mean {f[f'angle_mean_deg@{k}']:.1f}°), Rayleigh/λ "
          f"{f[f'rayleigh_over_lambda_mean@{k}']:.3f}")
  step = int(jax.device_get(result.state.step))
  if result.interrupted:
    print(f"interrupted: checkpoint saved at step {step}; rerun the same command to resume")
    return _cli.EXIT_INTERRUPTED
  print(f"done at step {step}; checkpoints in {workdir}/checkpoints")
  return 0


if __name__ == "__main__":
  _cli.run(main)
