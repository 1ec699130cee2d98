r"""Train the NeuralEF segmentor's ψ on cached backbone features (SPEC §2, §5).

  # the bundled sample photos, reference settings (batch 16 of 336-px crops, K = 256)
  python -m experiments.train_neuralef --workdir runs/neuralef
  # a CPU-sized run (batch 4 of 224-px crops, k = 64, 250 steps: 10-20 minutes on 2 cores)
  python -m experiments.train_neuralef --config experiments/configs/neuralef.py:cpu \
      --workdir runs/neuralef_cpu
  # any image folder; override any config field
  python -m experiments.train_neuralef --workdir runs/mine --config.data.images=/path/to/images \
      --config.train.num_steps=5000

Rerunning the same command resumes from the latest checkpoint in --workdir (Ctrl-C saves one
first); a checkpoint written with another config is refused, naming the differing fields.
Multi-host: start one process per host with --coordinator=HOST:PORT --num_processes=P
--process_id=I (calls jax.distributed.initialize).
"""

from __future__ import annotations

import signal
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/neuralef.py", "Training configuration (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/neuralef", "Checkpoints, metrics, TensorBoard.")
_STOP_AT = flags.DEFINE_integer("stop_at", None, "Stop after this step (resumable).")
_REFRESH = flags.DEFINE_bool("refresh_cache", False, "Extract the backbone features again.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (multi-host).")


def _sigterm_to_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value:
    # CPU collectives across processes need gloo (the setting only concerns the CPU backend).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from spectral_jax.neuralef import features as features_lib  # pylint: disable=g-import-not-at-top
  from spectral_jax.neuralef import train as train_lib  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
  backbone, feats, hit = features_lib.prepare_features(config, refresh=_REFRESH.value)
  print(f"backbone {backbone.config.name}: {backbone.weights_note}")
  print(f"features: {len(feats)} views of {len(feats.names)} images, grid {feats.grid}, "
        f"cache {'hit' if hit else 'miss (extracted)'} [{feats.key[:12]}]")
  print(f"devices: {jax.device_count()} ({jax.process_count()} process(es)), global batch "
        f"{config.train.batch_size}")
  result = train_lib.train(config, _WORKDIR.value, feats, stop_at=_STOP_AT.value)
  if result.resumed_from is not None:
    print(f"resumed from step {result.resumed_from}")
  if result.history:
    first, last = result.history[0], result.history[-1]
    print(f"loss {first['loss']:.5f} (step {first['step']}) -> {last['loss']:.5f} "
          f"(step {last['step']})")
  step = int(jax.device_get(result.state.step))
  if result.interrupted:
    print(f"interrupted: checkpoint saved at step {step}; rerun the same command to resume")
    sys.exit(130)
  print(f"done at step {step}; checkpoints in {_WORKDIR.value}/checkpoints")


if __name__ == "__main__":
  app.run(main)
