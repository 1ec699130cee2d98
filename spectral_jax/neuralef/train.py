"""Training the NeuralEF segmentor: the loop (data order, logging, checkpoints, resumption).

The pieces live in ``neuralef.step`` (state, optimiser, loss, the data-parallel shard_map step
and placement on the mesh; its docstring describes one step), ``neuralef.checkpoint`` (orbax
save/restore, config comparison) and ``neuralef.config`` (the config's one checker: `train`
checks a config it is given once, at its entry, unless it is already a ``config.Checked``).

Randomness and data order are functions of the state, so a resumed run repeats an uninterrupted
one exactly: step s draws its noise from ``fold_in(state.rng, s)`` (see ``neuralef.step``) and
its views are `batch_indices(s, …)`: epoch ``s // steps_per_epoch`` is a permutation seeded by
``(seed, epoch)``.

Multi-host: call ``jax.distributed.initialize`` first (``experiments.train_neuralef`` does it with
``--coordinator``; CPU processes also need ``jax_cpu_collectives_implementation="gloo"``); every
process holds the full feature set, builds the same state, and feeds only its own rows of the
global batch (`process_rows`, ``jax.make_array_from_process_local_data``); orbax writes the
checkpoints from all processes together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax import _cli
from spectral_jax import backbones
from spectral_jax import progress as progress_lib
from spectral_jax.datasets import pipeline
from spectral_jax.neuralef import checkpoint as ckpt
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import features as features_lib
from spectral_jax.neuralef import fidelity as fidelity_lib
from spectral_jax.neuralef import step as step_lib

# ----------------------------------------------------------------------------- data order


def steps_per_epoch(num_views: int, batch_size: int) -> int:
  """Full batches per pass over the views (the last partial batch is dropped)."""
  if batch_size < 1 or num_views < batch_size:
    raise ValueError(f"a batch of {batch_size} needs at least that many training views; got "
                     f"{num_views}. Lower train.batch_size or raise data.views_per_image.")
  return num_views // batch_size


def batch_indices(step: int, num_views: int, batch_size: int, seed: int) -> np.ndarray:
  """The view indices of the global batch of ``step`` (a pure function of its arguments).

  Epoch ``e = step // steps_per_epoch`` visits ``np.random.default_rng([seed, e])``'s
  permutation of the views in consecutive slices of ``batch_size``.
  """
  spe = steps_per_epoch(num_views, batch_size)
  epoch, i = divmod(int(step), spe)
  perm = np.random.default_rng([int(seed), epoch]).permutation(num_views)
  return perm[i * batch_size:(i + 1) * batch_size]


# ----------------------------------------------------------------------------- loop


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the final state, the logged metrics and how the run ended."""
  state: step_lib.TrainState
  history: list[dict[str, Any]]
  interrupted: bool
  resumed_from: int | None
  fidelity: dict[str, Any] | None = None  # the last `_FidelityHook` summary (process 0)


def read_metrics(path: str | pathlib.Path,
                 warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl``. A line that is not a whole JSON record with a
  ``step`` (the torn last line that kill -9 or a full disk leaves) is dropped with a warning
  naming the file and line, instead of blocking resume or evaluation."""
  warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
  path = pathlib.Path(path)
  records = []
  for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a record with an integer step")
    except ValueError as e:
      warn(f"{path}:{number}: dropped an unreadable metrics line ({e}): {line[:60]!r}")
      continue
    records.append(record)
  return records


# The extra that brings TensorBoard summaries (tensorboardX writes them, tensorboard views them).
TENSORBOARD_INSTALL = 'pip install -e ".[tensorboard]"'


class _Logger:
  """Metrics to ``metrics.jsonl`` and, with ``log.tensorboard`` and the ``tensorboard`` extra
  (tensorboardX) installed, TensorBoard summaries; without the extra, one line on stderr says
  the summaries are skipped and how to get them."""

  def __init__(self, workdir: pathlib.Path, tensorboard: bool, first_step: int, enabled: bool):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self.writer = None
    if not enabled:
      return
    if self.path.exists():  # drop lines past the restored step (written after its checkpoint)
      keep = [r for r in read_metrics(self.path) if r["step"] <= first_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    if tensorboard:
      try:  # an optional dependency (the tensorboard extra): imported only when asked for
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      except ImportError:
        print(f"note: TensorBoard summaries skipped: tensorboardX is not installed "
              f"({TENSORBOARD_INSTALL}); the metrics are in {self.path}", file=sys.stderr,
              flush=True)
      else:
        self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=first_step + 1)

  def write(self, record: dict[str, Any]) -> None:
    """Appends ``record`` as one line. Raises ckpt.OutOfSpaceError (the file back at its
    previous length: no torn line) when the disk is full."""
    if not self.enabled:
      return
    size = self.path.stat().st_size if self.path.exists() else 0
    try:
      with self.path.open("ab") as f:
        f.write((json.dumps(record) + "\n").encode())
    except OSError as e:
      if ckpt.out_of_space_errno(e) is None:
        raise
      os.truncate(self.path, size)   # shrinking needs no space
      raise ckpt.out_of_space(self.path.parent / "checkpoints", e,
                              what=f"step {record['step']}'s metrics to {self.path.name}") from e
    if self.writer is not None:
      for name, value in record.items():
        if name != "step" and isinstance(value, float):
          self.writer.add_scalar(f"train/{name}", value, record["step"])

  def close(self) -> None:
    """Closes the TensorBoard writer. When its last events do not fit on the disk, that is a
    ckpt.OutOfSpaceError, unless an error is already on its way out (the first is reported)."""
    writer, self.writer = self.writer, None
    if writer is None:
      return
    failing = sys.exc_info()[1]
    try:
      writer.close()
    except OSError as e:
      if ckpt.out_of_space_errno(e) is None:
        raise
      if failing is None:
        raise ckpt.out_of_space(self.path.parent / "checkpoints", e,
                                what="the TensorBoard events") from e


def _record(step: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
  m = jax.device_get(metrics)
  eig = np.asarray(m.pop("eigenvalues"))
  record = {"step": step, **{k: float(v) for k, v in m.items()}, "seconds": seconds}
  record.update({"eig_max": float(eig.max()), "eig_mean": float(eig.mean()),
                 "eig_min": float(eig.min()), "eig_top4": [float(x) for x in eig[:4]]})
  return record


class FeatureFeeder:
  """Batches of cached features: step s's views are `batch_indices` (a function of s)."""

  def __init__(self, config: ml_collections.ConfigDict, features, mesh: Mesh):
    self.features, self.mesh = features, mesh
    self.batch_size, self.seed = int(config.train.batch_size), int(config.seed)
    num_views, _, self.input_dim = features.psi_inputs.shape
    steps_per_epoch(num_views, self.batch_size)

  def make_step(self, config):
    return step_lib.make_train_step(config, self.mesh)

  def restore(self, manager, step):  # the order is a function of the step: nothing to restore
    del manager, step

  def batch(self, step: int):
    indices = batch_indices(step, len(self.features), self.batch_size, self.seed)
    return step_lib.device_batch(self.features.batch, indices, self.mesh), {}

  def state(self):
    return None

  def fidelity_batch(self):
    """Step 0's views (host arrays): the fixed batch of `_FidelityHook`."""
    return self.features.batch(batch_indices(0, len(self.features), self.batch_size, self.seed))

  def close(self):
    pass


class ImageFeeder:
  """Batches of augmented crops from the grain pipeline; the backbone runs in the step.

  Each process draws its own rows of the global batch from its shard
  (``datasets.pipeline.training_dataset``) and the global ``images`` array is assembled with
  ``jax.make_array_from_process_local_data`` over the ``'data'`` axis. The iterator's state is
  checkpointed (``data`` item) and restored on resume.
  """

  def __init__(self, checked: config_lib.Checked, source, backbone, mesh: Mesh):
    config = checked.config
    self.config, self.backbone, self.mesh = config, backbone, mesh
    self.batch_size = int(config.train.batch_size)
    self.input_dim = 3 * int(backbone.config.width)
    self.sharding = NamedSharding(mesh, P(step_lib.AXIS))
    rows = step_lib.process_rows(self.batch_size, self.sharding)
    if rows.stop - rows.start != self.batch_size // jax.process_count():
      raise ValueError(f"each of the {jax.process_count()} processes must hold the same number "
                       f"of devices (this one holds rows {rows} of the batch)")
    self.dataset = pipeline.training_dataset(
        source, checked.augment, batch_size=rows.stop - rows.start, seed=int(config.seed),
        **config_lib.pipeline_settings(config.data))
    self.iterator = iter(self.dataset)
    self._encode = pipeline.encode_state

  def make_step(self, config):
    return step_lib.make_image_train_step(config, self.backbone, self.mesh)

  def restore(self, manager, step):
    saved = ckpt.restore_data_state(manager, step)
    if saved is None:
      raise ValueError(f"the checkpoint at step {step} holds no input-pipeline state (it was "
                       "written by a feature-cache run); resume with the same data settings")
    self.iterator.set_state(saved)

  def batch(self, step: int):
    del step  # the iterator's position is the step's (restored with the checkpoint)
    local = next(self.iterator)
    images = np.asarray(local["image"])
    batch = {step_lib.IMAGE_KEY: jax.make_array_from_process_local_data(
        self.sharding, images, (self.batch_size, *images.shape[1:]))}
    return batch, {"image_index": [int(i) for i in np.asarray(local["index"])],
                   "aug": np.asarray(local["aug"]).tolist()}

  def state(self):
    return json.loads(self._encode(self.iterator.get_state()))

  def fidelity_batch(self):
    """The features of this process's first batch of the run (a fresh iterator, so the
    training iterator's position is untouched): the fixed batch of `_FidelityHook`."""
    images = np.asarray(next(iter(self.dataset))["image"])
    fn = jax.jit(features_lib.training_batch, compiler_options=backbones.compiler_options() or None)
    return jax.device_get(fn(self.backbone, images))

  def close(self):
    close = getattr(self.iterator, "close", None)
    if close is not None:
      close()


class _FidelityHook:
  """ψ against the batch kernel's eigenvectors on a fixed batch (``neuralef.fidelity``), every
  ``log.fidelity_every`` steps (0: never) and at the last step: its summary goes into that
  step's record (``fidelity/…`` keys) and the last full result to ``workdir/fidelity.json``.
  The fixed batch is the feeder's ``fidelity_batch()`` (step 0's views, or the features of this
  process's first crops); the hook runs on process 0 only, on logged steps only."""

  def __init__(self, config, feeder, workdir: pathlib.Path, enabled: bool):
    self.every = int(config.log.get("fidelity_every", 0)) if enabled else 0
    self.path, self.summary, self.probe = workdir / "fidelity.json", None, None
    if self.every:
      self.probe = fidelity_lib.make_probe(config, feeder.fidelity_batch())

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def __call__(self, step: int, state: step_lib.TrainState, record: dict[str, Any]) -> None:
    self.summary, result = self.probe(state)
    record.update({f"fidelity/{k}": v for k, v in self.summary.items()})
    arrays = {k: np.asarray(v).tolist() for k, v in result.items() if not isinstance(v, dict)}
    arrays.update({f"{k}_deg": {str(m): np.degrees(np.asarray(a)).tolist() for m, a in v.items()}
                   for k, v in result.items() if isinstance(v, dict)})
    self.path.write_text(json.dumps({"step": step, "summary": self.summary, **arrays}) + "\n")


def train(config: ml_collections.ConfigDict | config_lib.Checked, workdir: str | pathlib.Path,
          features=None, *,
          mesh: Mesh | None = None, stop_at: int | None = None,
          callback: Callable[[int, dict[str, Any]], None] | None = None,
          source=None, backbone=None) -> TrainResult:
  """Trains ψ, resuming from ``workdir``'s latest checkpoint.

  Two inputs: ``features`` (a `features.FeatureSet` of cached views; step s reads
  `batch_indices`), or ``source`` with ``backbone`` (a dataset, ``datasets.pipeline``: fresh
  augmented crops every step from the grain pipeline, the frozen backbone inside the jitted
  step, `make_image_train_step`; the pipeline's state is checkpointed with the run, and each
  logged record also holds this process's ``image_index`` and drawn ``aug`` parameters).

  Checkpoints (orbax) go to ``workdir/checkpoints`` every ``checkpoint.every`` steps, at the end,
  and when the run is interrupted (KeyboardInterrupt, e.g. Ctrl-C or a SIGTERM turned into one):
  the last completed step is saved before returning with ``interrupted=True``. Metrics go to
  ``workdir/metrics.jsonl`` and ``workdir/tensorboard`` every ``log.every`` steps; a record's
  ``seconds`` (TensorBoard ``train/seconds``) is the wall time per step averaged over the steps
  since the previous record, the clock read after the logged step's result is ready (step 1's
  includes compiling the step). Steps between records are dispatched without waiting, so only
  logged steps (and due checkpoints) synchronise with the devices.

  Args:
    config: the training config (experiments/configs/neuralef.py), checked here
      (``neuralef.config.check`` against the features' tokens or the backbone's patch grid and
      the mesh), or a ``config.Checked`` its caller already checked the same way (not rechecked).
    workdir: output directory.
    features: the cached backbone features of the training views.
    mesh: the data mesh (default: all devices); its size must divide ``train.batch_size``.
    stop_at: stop after this step (a shorter run of the same schedule; resumable).
    callback: called as ``callback(step, record)`` after every logged step; raising
      KeyboardInterrupt there behaves like Ctrl-C.
    source, backbone: a ``datasets`` source of training images and the frozen backbone
      (instead of ``features``).
  Returns:
    A `TrainResult`.
  Raises:
    ConfigMismatchError: ``workdir`` holds a checkpoint of another config.
    _cli.UsageError: another run holds ``workdir`` (its PID is named).
    ckpt.OutOfSpaceError: a checkpoint or metrics.jsonl could not be written for lack of space
      (names the step and the last intact checkpoint; no partial checkpoint is left).
    ValueError: a batch that does not fit the data or the devices.
  """
  if (features is None) == (source is None) or (source is not None and backbone is None):
    raise ValueError("train needs either features, or source and backbone")
  mesh = step_lib.data_mesh() if mesh is None else mesh
  if isinstance(config, config_lib.Checked):
    checked = config
  elif source is None:
    checked = config_lib.check(
        config, tokens=int(config.train.batch_size) * features.psi_inputs.shape[1],
        devices=mesh.size)
  else:
    checked = config_lib.check(config, patch_size=int(backbone.config.patch_size),
                               devices=mesh.size)
  config = checked.config
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # One run per workdir (process 0 holds the lock: the other processes of a multi-host run
  # share it): a second run refuses instead of interleaving metrics.jsonl and checkpoints.
  with (_cli.exclusive_folder(workdir, what="workdir") if jax.process_index() == 0
        else contextlib.nullcontext()):
    feeder = (FeatureFeeder(config, features, mesh) if source is None
              else ImageFeeder(checked, source, backbone, mesh))
    try:
      return _loop(config, workdir, feeder, mesh, stop_at, callback)
    except Exception as e:  # pylint: disable=broad-except
      # A full disk (orbax saves asynchronously: it surfaces at a later save or at the final
      # wait): one error naming the step and the last intact checkpoint, partial folders
      # removed. Any other error propagates as it is.
      if isinstance(e, ckpt.OutOfSpaceError) or ckpt.out_of_space_errno(e) is None:
        raise
      raise ckpt.out_of_space(workdir / "checkpoints", e) from e
    finally:
      feeder.close()


def _loop(config, workdir, feeder, mesh, stop_at, callback) -> TrainResult:
  total = int(config.train.num_steps)
  stop = total if stop_at is None else min(int(stop_at), total)
  is_main = jax.process_index() == 0

  state = step_lib.replicate(step_lib.init_state(config, feeder.input_dim), mesh)
  manager = ckpt.checkpoint_manager(workdir / "checkpoints", config)
  state, resumed_from = ckpt.restore_latest_intact(manager, state, config)
  if resumed_from is not None:
    feeder.restore(manager, resumed_from)
  step = int(jax.device_get(state.step))
  data_state = feeder.state()
  logger = _Logger(workdir, bool(config.log.tensorboard), step, is_main)
  train_step = feeder.make_step(config)
  hook = _FidelityHook(config, feeder, workdir, is_main and step < stop)
  history, interrupted = [], False
  bar = None
  if is_main and config.log.progress and step < stop:
    # Off a terminal: one line per logged step (below), none in between.
    bar = progress_lib.progress(total=stop, initial=step, desc="train", unit="step",
                                every_percent=100.0, every_s=float("inf"))
  clock, clock_step = time.perf_counter(), step
  try:
    while step < stop:
      # Ctrl-C / SIGTERM take effect between steps, never inside a dispatch or a save.
      with _cli.deferred_interrupts():
        batch, info = feeder.batch(step)
        new_state, metrics = train_step(state, batch)
        state, step, data_state = new_state, step + 1, feeder.state()
        if bar is not None:
          bar.update(1)
        probe = hook.probe is not None and (hook.due(step) or step == stop)
        if step % int(config.log.every) == 0 or step == stop or step == 1 or probe:
          jax.block_until_ready(metrics)  # only here: between logged steps dispatch runs ahead
          now = time.perf_counter()
          record = _record(step, metrics, (now - clock) / (step - clock_step))
          record.update(info)
          if not np.isfinite(record["loss"]):
            last = manager.latest_step()
            saved = "no checkpoint was saved" if last is None else (
                f"the last checkpoint is step {last}")
            raise ckpt.DivergedError(
                f"training diverged at step {step}: loss {record['loss']}; {saved}. Lower "
                "optim.learning_rate or check the kernel settings (graph.alpha, graph.k)")
          if probe:  # not timed as a step
            hook(step, state, record)
            now = time.perf_counter()
          clock, clock_step = now, step
          history.append(record)
          logger.write(record)
          if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4g}", tau=f"{record['tau']:.3f}",
                            lr=f"{record['learning_rate']:.3g}")
            if isinstance(bar, progress_lib.LineProgress):
              bar.write(bar.line())
          if callback is not None:
            callback(step, record)
        ckpt.save_checkpoint(manager, state, config, force=step == stop, step=step,
                        data_state=data_state)
  except KeyboardInterrupt:
    interrupted = True
    ckpt.save_checkpoint(manager, state, config, force=True, data_state=data_state)
  finally:
    try:
      manager.wait_until_finished()
    finally:
      manager.close()
      logger.close()
      if bar is not None:
        bar.close()
  return TrainResult(state=state, history=history, interrupted=interrupted,
                     resumed_from=resumed_from, fidelity=hook.summary)


def load_trained(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                 input_dim: int, step: int | None = None) -> step_lib.TrainState:
  """The state saved in ``workdir/checkpoints`` (latest step by default), on one device."""
  manager = ckpt.checkpoint_manager(pathlib.Path(workdir) / "checkpoints", config)
  try:
    return ckpt.restore_checkpoint(manager, step_lib.init_state(config, input_dim), config, step)
  finally:
    manager.close()


__all__ = ["FeatureFeeder", "ImageFeeder", "TENSORBOARD_INSTALL", "TrainResult", "batch_indices", "load_trained",
           "read_metrics", "steps_per_epoch", "train"]
