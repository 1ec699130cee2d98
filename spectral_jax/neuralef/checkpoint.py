"""NeuralEF checkpoints: orbax save/restore of the training state with its config beside it.

A checkpoint (``<workdir>/checkpoints/<step>``) holds two items: ``state`` (the `TrainState`,
StandardSave) and ``config`` (the run's config as JSON), and for runs fed by the grain pipeline
a third, ``data``: every process's input-iterator state at that step (JSON, gathered from all
processes; `restore_data_state` gives each process its own). Restoring compares the stored config
with the current one outside `RUNTIME_FIELDS` and refuses a different one
(`ConfigMismatchError`, listing every differing field), so a resumed run is the run it continues.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

# Config sections that may change between an interrupted run and its resumption.
RUNTIME_FIELDS = ("checkpoint", "log", "eval", "data.cache_dir", "data.extract_batch_size",
                  "data.num_threads", "data.prefetch", "psi.remat")
ITEMS = ("state", "config", "data")
# Training fields added after checkpoints were written, with the value that reproduces those
# runs: a saved config without the field is compared as if it held this value.
# (graph.group_size: neuralef.config.DEFAULT_GROUP_SIZE, read only by graph.scope "group"; a
# checkpoint from before psi.head existed has the QR head, and so on.)
ADDED_FIELDS = {"graph.scope": "global", "graph.group_size": 8, "graph.global_form": "gather",
                "psi.head": "qr", "loss.objective": "segmentor"}


class ConfigMismatchError(ValueError):
  """A checkpoint was written by a run with a different configuration."""


class OutOfSpaceError(OSError):
  """A training output (a checkpoint, metrics.jsonl) could not be written for lack of space:
  the message names what, the last intact checkpoint and what to do; no partial checkpoint is
  left behind."""


# errno values that mean "no room to write": a full disk, a quota, a file-size limit.
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How orbax's tmp folder of a step being written is named (``<step>.orbax-checkpoint-tmp``...).
TMP_MARK = ".orbax-checkpoint-tmp"


def out_of_space_errno(error: BaseException | None) -> int | None:
  """The `OUT_OF_SPACE_ERRNOS` value behind ``error`` or an exception it was raised from or
  during (orbax re-raises tensorstore's failures as ValueError text: ``[os_error_code='28']``);
  None for any other error."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, "errno", None) in OUT_OF_SPACE_ERRNOS:
      return error.errno
    text = str(error)
    for code in OUT_OF_SPACE_ERRNOS:
      if f"os_error_code='{code}'" in text or os.strerror(code) in text:
        return code
    error = error.__cause__ or error.__context__
  return None


def out_of_space(directory: str | pathlib.Path, error: BaseException, what: str = "") -> \
    OutOfSpaceError:
  """The `OutOfSpaceError` for ``error`` (which `out_of_space_errno` recognised) while the run
  wrote into checkpoint folder ``directory``: the partial step folders orbax left are removed
  (process 0), and the message names the step that failed, the last intact one and what to do.
  ``what``: the file that failed, when it is not a checkpoint."""
  directory = pathlib.Path(directory)
  code = out_of_space_errno(error)
  partial = sorted(directory.glob(f"*{TMP_MARK}*")) if directory.is_dir() else []
  if jax.process_index() == 0:
    for folder in partial:
      shutil.rmtree(folder, ignore_errors=True)
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []
  failed = sorted({p.name.split(".", 1)[0] for p in partial})
  target = what or (f"the checkpoint of step {', '.join(failed)}" if failed else "a checkpoint")
  kept = (f"the last intact checkpoint is step {steps[-1]}" if steps else
          "no checkpoint was saved")
  # (tensorstore may still finish a write into it: the manager removes it on resume)
  unfinished = " (unfinished: not a checkpoint, and removed)" if partial else ""
  error = OutOfSpaceError(
      f"cannot write {target}{unfinished} in {str(directory.parent)!r}: {os.strerror(code)} "
      f"[errno {code}: the disk is full, or a quota or file-size limit was reached]; "
      f"{kept}: free some space, then rerun the same command to resume")
  error.errno = code
  return error


# ----------------------------------------------------------------------------- config as data


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config`` as plain JSON data (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict(), default=list))


def with_added_fields(config_data: dict[str, Any]) -> dict[str, Any]:
  """A stored JSON config with each absent `ADDED_FIELDS` entry set to the value its run used
  (a checkpoint from before ``psi.head`` existed has the QR head, and so on)."""
  config_data = json.loads(json.dumps(config_data))
  for name, value in ADDED_FIELDS.items():
    section, field = name.split(".")
    if isinstance(config_data.get(section), dict):
      config_data[section].setdefault(field, value)
  return config_data


def training_fields(config_data: dict[str, Any],
                    ignore: Sequence[str] = RUNTIME_FIELDS) -> dict[str, Any]:
  """The flattened (``"a.b": value``) fields of a JSON config that define a training run."""
  skip = lambda name: any(name == f or name.startswith(f + ".") for f in ignore)
  flat = traverse_util.flatten_dict(config_data, sep=".")
  return {name: v for name, v in flat.items() if not skip(name)}


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       ignore: Sequence[str] = RUNTIME_FIELDS) -> list[str]:
  """Human-readable differences between two JSON configs, ignoring runtime fields."""
  a, b = training_fields(saved, ignore), training_fields(current, ignore)
  a = {**{name: value for name, value in ADDED_FIELDS.items() if name not in ignore}, **a}
  missing = object()
  show = lambda v: "(absent)" if v is missing else json.dumps(v)
  return [f"{name}: checkpoint {show(a.get(name, missing))} vs now {show(b.get(name, missing))}"
          for name in sorted(set(a) | set(b)) if a.get(name, missing) != b.get(name, missing)]


def checkpoint_manager(directory: str | pathlib.Path, config: ml_collections.ConfigDict):
  """An orbax ``CheckpointManager`` saving every ``checkpoint.every`` steps, keeping
  ``checkpoint.keep``; items ``state`` (StandardSave) and ``config`` (JSON)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  # cleanup_tmp_directories: the unfinished step folders a failed save left (a full disk)
  # are removed when the run resumes.
  options = ocp.CheckpointManagerOptions(save_interval_steps=int(config.checkpoint.every),
                                         max_to_keep=int(config.checkpoint.keep), create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                               item_names=ITEMS)


class DivergedError(ValueError):
  """Training produced a non-finite loss or state: stopped, and never saved."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_finite(state, step: int, what: str = "state") -> None:
  """Raises `DivergedError` if any floating leaf of ``state`` holds NaN/Inf (one device
  reduction and one scalar read: called where a checkpoint is about to be written)."""
  if not bool(jax.device_get(_all_finite(state))):
    raise DivergedError(f"training diverged: the {what} at step {step} holds NaN/Inf and was "
                        "not saved; lower optim.learning_rate or check the kernel settings "
                        "(graph.alpha, graph.k), then resume from the last checkpoint")


def save_checkpoint(manager, state, config: ml_collections.ConfigDict, *,
                    force: bool = False, step: int | None = None,
                    data_state: Any = None) -> bool:
  """Saves ``state`` at its step (if due, or ``force``), with the config as JSON beside it.

  ``step``: ``state.step`` as a host int, if the caller knows it. Then a step that is not due
  returns False without touching ``state`` (no host-device sync, so the training loop keeps
  dispatching ahead); without it, ``state.step`` is read from the device.
  ``data_state``: this process's input-iterator state matching ``state`` (JSON data), saved
  as the ``data`` item with every other process's (all processes must pass one).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  if step is None:
    step = int(jax.device_get(state.step))
  if force and step in manager.all_steps():
    return False
  if not force and not manager.should_save(step):
    return False
  check_finite(state, step)   # a checkpoint is never non-finite
  items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json(config)))
  if data_state is not None:
    items["data"] = ocp.args.JsonSave({"processes": gather_process_json(data_state)})
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def gather_process_json(value: Any) -> list[Any]:
  """``value`` (JSON data) of every process, in process order (a collective: all call it)."""
  text = json.dumps(value, sort_keys=True)
  if jax.process_count() == 1:
    return [json.loads(text)]
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  raw = np.frombuffer(text.encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode()) for row, n in
          zip(rows.reshape(len(sizes.ravel()), -1), sizes.ravel())]


def restore_data_state(manager, step: int) -> Any:
  """This process's input-iterator state saved at ``step`` (None: the checkpoint has none).

  Raises:
    ValueError: it was saved by another number of processes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  if not (pathlib.Path(manager.directory) / str(step) / "data").exists():
    return None
  saved = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  states = saved["processes"]
  if len(states) != jax.process_count():
    raise ValueError(f"the checkpoint at step {step} holds the input state of {len(states)} "
                     f"process(es); this run has {jax.process_count()}: resume with "
                     f"{len(states)} process(es) or start a new workdir")
  return states[jax.process_index()]


def _check_same_config(saved: dict[str, Any], config: ml_collections.ConfigDict, step: int,
                       directory) -> None:
  diffs = config_differences(with_added_fields(saved), config_json(config))
  if diffs:
    raise ConfigMismatchError(
        f"the checkpoint at step {step} in {directory} was written with another config: "
        + "; ".join(diffs) + ". Resume with the checkpoint's settings or use a new workdir."
        + _num_steps_hint(saved, config, step))


def _num_steps_hint(saved: dict[str, Any], config: ml_collections.ConfigDict, step: int) -> str:
  """What to do instead of changing ``train.num_steps`` on resume ('' if it is unchanged).

  A run cannot be extended in place: ``num_steps`` is the length of its cosine learning-rate
  and τ schedules (`step.learning_rate_schedule`, `loss.tau_schedule`), which its checkpoints
  have already followed.
  """
  before = saved.get("train", {}).get("num_steps")
  now = int(config.train.num_steps)
  if before is None or int(before) == now:
    return ""
  hint = (f" train.num_steps is the length of the run's learning-rate and τ schedules (step "
          f"{step} of {before} followed them), so a run cannot be extended or shortened in "
          f"place: for a {now}-step training, start a new run with --config.train.num_steps="
          f"{now} and another --workdir")
  if step < now < int(before):
    hint += (f"; to stop this run early, keep num_steps={before} and pass --stop_at={now} "
             "(it resumes later)")
  return hint + "."


def restore_checkpoint(manager, template, config: ml_collections.ConfigDict,
                       step: int | None = None):
  """Restores the latest (or given) step into ``template``'s structure and shardings.

  Raises:
    FileNotFoundError: no checkpoint in the manager's directory.
    ValueError: ``step`` is not one of the saved steps (the message lists them).
    ConfigMismatchError: the checkpoint's config differs from ``config`` outside
      `RUNTIME_FIELDS`; the message lists every difference.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  step = _resolve_step(manager, step)
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  _check_same_config(saved, config, step, manager.directory)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      template)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
  return restored


CORRUPT_SUFFIX = ".corrupt"


def restore_latest_intact(manager, template, config: ml_collections.ConfigDict,
                          warn: Callable[[str], None] | None = None) -> tuple[Any, int | None]:
  """Restores the newest checkpoint that reads back whole: ``(state, step)``, or
  ``(template, None)`` when there is none.

  A step whose files are truncated or unreadable (what kill -9 or a full disk can leave) is
  moved aside to ``<step>.corrupt`` (process 0; kept for inspection, never deleted), named in
  a warning, and the next older step is tried, so a run resumes from the last intact state
  instead of refusing to start.

  Raises:
    ConfigMismatchError: the newest readable checkpoint was written with another config
      (that is not corruption: nothing is moved).
  """
  warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore_checkpoint(manager, template, config, step), step
    except ConfigMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore errors vary
      where = pathlib.Path(manager.directory) / str(step)
      aside = where.with_name(f"{step}{CORRUPT_SUFFIX}")
      if jax.process_index() == 0 and where.exists():
        if aside.exists():
          shutil.rmtree(aside)
        where.rename(aside)
      warn(f"checkpoint step {step} in {manager.directory} is unreadable "
           f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); moved to {aside.name}, "
           "resuming from the step before it")
      manager.reload()
  return template, None


def _resolve_step(manager, step: int | None) -> int:
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"no checkpoints in {str(manager.directory)!r}; train first")
  if step is None:
    return steps[-1]
  if int(step) not in steps:
    raise ValueError(f"no checkpoint at step {step} in {str(manager.directory)!r}; saved steps: "
                     + ", ".join(map(str, steps)))
  return int(step)


def _read_only_manager(workdir: str | pathlib.Path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints in {str(directory)!r}; train first")
  return ocp.CheckpointManager(directory, item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True))


def resolve_step(workdir: str | pathlib.Path, step: int | None = None) -> int:
  """``step`` (default: the latest) if ``workdir`` holds a checkpoint of it.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
    ValueError: ``step`` is not one of the saved steps (the message lists them).
  """
  manager = _read_only_manager(workdir)
  try:
    return _resolve_step(manager, step)
  finally:
    manager.close()


def saved_config(workdir: str | pathlib.Path,
                 step: int | None = None) -> ml_collections.ConfigDict:
  """The config stored with ``workdir``'s latest (or given) checkpoint (errors as
  `resolve_step`), with the `ADDED_FIELDS` it predates (`with_added_fields`)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager = _read_only_manager(workdir)
  try:
    step = _resolve_step(manager, step)
    data = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  finally:
    manager.close()
  return ml_collections.ConfigDict(with_added_fields(data))


def check_checkpoint_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                            step: int | None = None) -> int | None:
  """The checkpoint step of ``workdir`` that ``config`` is checked against (``step``, default
  the latest, the one `train` resumes from; None: no checkpoint), without loading any state.

  Raises:
    ConfigMismatchError: that checkpoint was written with another config (as `train`).
    ValueError: ``step`` is not one of the saved steps.
  """
  if step is None and not (pathlib.Path(workdir) / "checkpoints").is_dir():
    return None
  manager = _read_only_manager(workdir)
  try:
    if step is None and not manager.all_steps():
      return None
    step = _resolve_step(manager, step)
  finally:
    manager.close()
  _check_same_config(config_json(saved_config(workdir, step)), config, step,
                     pathlib.Path(workdir).absolute() / "checkpoints")
  return step


__all__ = [
    "ADDED_FIELDS", "ConfigMismatchError", "DivergedError", "ITEMS", "OUT_OF_SPACE_ERRNOS",
    "OutOfSpaceError", "RUNTIME_FIELDS", "check_checkpoint_config", "check_finite",
    "checkpoint_manager", "config_differences", "config_json", "gather_process_json",
    "resolve_step", "restore_checkpoint", "restore_data_state", "restore_latest_intact",
    "out_of_space", "out_of_space_errno", "save_checkpoint", "saved_config", "training_fields",
    "with_added_fields",
]
