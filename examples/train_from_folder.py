r"""Train NeuralEF's ψ on a folder of photos, then plot its loss and fidelity curves.

The calls of ``python -m experiments.train_neuralef`` (one library function per job): read the
images, check the config once, extract (and cache) the frozen backbone's features of fixed
crops, train ψ with ``neuralef.train.train`` (checkpoints, ``metrics.jsonl``, TensorBoard
summaries with the ``tensorboard`` extra), then plot from ``metrics.jsonl`` with
``viz.line_plot``: the loss and τ per logged step, and ψ's fidelity to the batch kernel's top-K
eigenvectors on a fixed batch (``neuralef.fidelity``: mean |cos(ψⱼ, uⱼ)|, the largest principal
angle between the leading subspaces, the Rayleigh quotients over the eigenvalues).

  # the bundled photos, the CPU preset (batch 4 of 224-px crops) for 40 steps (minutes on 2 cores)
  python examples/train_from_folder.py
  # your photos, longer (any config field can be overridden)
  python examples/train_from_folder.py --config.data.images=/path/to/photos --steps=500

Writes ``WORKDIR/curves.png`` (WORKDIR: --workdir, else $EXAMPLE_OUT/train_from_folder, else
runs/train_from_folder). Rerunning resumes from WORKDIR's checkpoint.
"""

import os
import pathlib
import sys

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from PIL import Image

from spectral_jax import backbones, viz
from spectral_jax.datasets import pipeline
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import feature_cache
from spectral_jax.neuralef import train as train_lib

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/neuralef.py:cpu",
                                          "Training configuration (file[:preset]).")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps (sets train.num_steps); the losses "
                              "and fidelity are logged at 8 evenly spaced steps.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Checkpoints, metrics.jsonl, curves.png.")


def curves_picture(records: list[dict], k: int) -> np.ndarray:
  """The loss, τ and fidelity records of a run (``train.read_metrics``) as one picture."""
  def curve(key):
    rows = [r for r in records if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]

  f = lambda name: f"fidelity/{name}@{k}"
  panels = [
      viz.line_plot({"loss": curve("loss")}, title="NeuralEF loss"),
      viz.line_plot({"τ (Gumbel temperature)": curve("tau")}, title="Gumbel-softmax τ"),
      viz.line_plot({f"mean |cos(ψⱼ, uⱼ)|, j < {k}": curve(f("cos_in_order_mean")),
                     f"mean Rayleigh quotient / λⱼ, j < {k}": curve(f("rayleigh_over_lambda_mean"))},
                    title="fidelity to the batch kernel's top-K eigenvectors (1 = exact)"),
      viz.line_plot({f"largest principal angle, top {k}": curve(f("angle_max_deg")),
                     f"mean principal angle, top {k}": curve(f("angle_mean_deg"))},
                    title="angles between span(ψ) and span(u), degrees (0 = exact)"),
  ]
  return np.concatenate([np.concatenate(panels[:2], 1), np.concatenate(panels[2:], 1)], 0)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax's per-checkpoint INFO lines
  config = _CONFIG.value
  config.train.num_steps = _STEPS.value
  config.log.every = config.log.fidelity_every = max(1, _STEPS.value // 8)
  workdir = pathlib.Path(_WORKDIR.value or pathlib.Path(os.environ.get("EXAMPLE_OUT", "runs"))
                         / "train_from_folder")

  try:  # a folder without images or a bad config value: one line, exit 2 (fix the command)
    images = pipeline.training_images(config.data.images, config.data.recursive)
    patch = backbones.get_config(config.backbone.name).patch_size
    checked = config_lib.check(config, patch_size=patch, devices=jax.device_count())
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  backbone, features, _ = feature_cache.prepare_features(config, images=images)
  print(f"{len(images)} images, {len(features)} views, backbone {backbone.config.name}")
  result = train_lib.train(checked, workdir, features)
  records = train_lib.read_metrics(workdir / "metrics.jsonl")
  first, last = records[0], records[-1]
  k = int(config.psi.k)
  print(f"loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
        f"(step {last['step']}); fidelity at step {last['step']}: mean |cos| in order "
        f"{last[f'fidelity/cos_in_order_mean@{k}']:.3f}, largest principal angle "
        f"{last[f'fidelity/angle_max_deg@{k}']:.1f}°")
  assert int(jax.device_get(result.state.step)) == config.train.num_steps

  out = workdir / "curves.png"
  Image.fromarray(curves_picture(records, k)).save(out)
  print(f"wrote {out} ({len(records)} logged steps); TensorBoard: tensorboard --logdir "
        f"{workdir / 'tensorboard'}")


if __name__ == "__main__":
  app.run(main)
