"""The error boundary of the command-line programs in experiments/.

An expected error (a bad flag or config value, a missing or unreadable file, a refused
checkpoint) ends a command with ONE line on stderr, ``error: <what was wrong and what to do>``,
and exit status 2 for usage errors (`UsageError`, unparsable flags) or 1 for work that failed.
A traceback is printed too only with ``--verbosity=1`` (or higher); any other exception type is
a bug and propagates with its traceback.

  from spectral_jax import _cli
  def main(argv): ...          # raises _cli.UsageError for bad flags / config values
  if __name__ == "__main__":
    _cli.run(main)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import pickle
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
  """A bad flag or config value: the command prints it as one line and exits with status 2."""


class WorkError(RuntimeError):
  """The command was right but its work failed as a whole (e.g. no input could be
  processed): one line, exit status 1."""


# Expected failures of the work itself (exit 1); UsageError (a ValueError) exits 2.
EXPECTED_ERRORS = (ValueError, OSError, pickle.UnpicklingError, WorkError)


def parse_overrides(text: str) -> dict:
  """A backbone's config overrides, in either syntax every command accepts:

  * ``"depth=2,width=96"`` → ``{"depth": 2, "width": 96}`` (ints, floats, else strings);
  * a JSON object, ``'{"depth": 2, "width": 96}'`` (text starting with ``{``).

  ``""`` → ``{}``. The text itself is what configs and checkpoints store.

  Raises:
    UsageError: an item is not ``key=value``, or the JSON is not an object.
  """
  if text.strip().startswith("{"):
    try:
      out = json.loads(text)
    except ValueError as e:
      raise UsageError(f"overrides {text!r} is not a JSON object ({e}); write "
                       "'{\"depth\": 2}' or 'depth=2,width=96'") from e
    if not isinstance(out, dict):
      raise UsageError(f"overrides {text!r} is not a JSON object")
    return out
  out = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise UsageError(f"override {item!r} is not key=value (e.g. 'depth=2,width=96')")
    value = value.strip()
    for kind in (int, float):
      try:
        out[key.strip()] = kind(value)
        break
      except ValueError:
        continue
    else:
      out[key.strip()] = value
  return out


def get_field(config, dotted: str, default=None):
  """``config``'s field at a dotted path (``"data.dataset"``), or ``default`` where a part of
  the path is missing."""
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "get") or part not in node:
      return default
    node = node[part]
  return node


def set_field(config, dotted: str, value) -> None:
  """Sets ``config``'s field at a dotted path (an ``ml_collections.ConfigDict``, unlocked for
  the call); missing sections on the way are created."""
  *parents, leaf = dotted.split(".")
  with config.unlocked():
    node = config
    for part in parents:
      if part not in node:
        node[part] = type(config)()
      node = node[part]
    node[leaf] = value


def del_field(config, dotted: str) -> None:
  """Removes ``config``'s field at a dotted path, if present."""
  parent, _, leaf = dotted.rpartition(".")
  node = get_field(config, parent) if parent else config
  if node is not None and hasattr(node, "get") and leaf in node:
    with config.unlocked():
      del node[leaf]


_DEFERRED = {"depth": 0, "pending": None}   # see deferred_interrupts


def _raise_interrupt(signum, frame):
  del frame
  name = signal.Signals(signum).name
  if _DEFERRED["depth"]:   # inside deferred_interrupts: raised when the block ends
    _DEFERRED["pending"] = name
    return
  raise KeyboardInterrupt(name)


@contextlib.contextmanager
def deferred_interrupts():
  """A block that the signals of `install_signal_handlers` do not cut in half: a SIGINT /
  SIGTERM arriving inside raises KeyboardInterrupt when the block ends (normally), not in the
  middle of, say, a checkpoint write or a device dispatch holding a library's lock."""
  _DEFERRED["depth"] += 1
  try:
    yield
  finally:
    _DEFERRED["depth"] -= 1
  if not _DEFERRED["depth"] and _DEFERRED["pending"]:
    name, _DEFERRED["pending"] = _DEFERRED["pending"], None
    raise KeyboardInterrupt(name)


def install_signal_handlers(handler=_raise_interrupt) -> None:
  """SIGINT and SIGTERM call ``handler`` (default: raise KeyboardInterrupt), whatever the
  process inherited: a command started with SIGINT ignored (``nohup``, ``cmd &`` in a script)
  still stops cleanly on Ctrl-C / kill."""
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, handler)


def one_line(message: str) -> str:
  """``message`` on one line: the last line of an embedded traceback (the exception itself),
  other line breaks folded into spaces."""
  text = str(message).strip()
  if "Traceback (most recent call last)" in text:
    head = text.split("\n", 1)[0].rstrip(": \n")
    text = f"{head}: {text.splitlines()[-1].strip()}"
  return " ".join(text.split())


def _verbose() -> bool:
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return int(flags.FLAGS["verbosity"].value) >= 1
  except (KeyError, flags.Error, TypeError, ValueError):
    return False


def report(error: BaseException | str) -> None:
  """Prints ``error: <one line>`` on stderr (after the traceback with ``--verbosity=1``)."""
  if isinstance(error, BaseException) and _verbose():
    traceback.print_exception(error, file=sys.stderr)
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)


def error_boundary(fn: Callable[[Sequence[str]], int | None], argv: Sequence[str],
                   expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS) -> int:
  """Runs ``fn(argv)``; returns its status (None → 0), or reports an expected error as one line
  and returns 2 (`UsageError`) or 1 (``expected``), or 130 after a KeyboardInterrupt. Other
  exceptions propagate."""
  try:
    return int(fn(argv) or 0)
  except UsageError as e:
    report(e)
    return EXIT_USAGE
  except expected as e:  # pylint: disable=catching-non-exception
    report(e)
    if not _verbose():
      silence_shutdown_noise()
    return EXIT_FAILED
  except KeyboardInterrupt:  # Ctrl-C, or a signal handler raising it, outside saved work
    report("interrupted")
    return EXIT_INTERRUPTED


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl ``flags_parser``: an unparsable flag, or a config file (``--config``) that does not
  load, is one line and exit 2. Flags and config files are the user's input, so any exception
  while parsing them is a usage error; the line names the file and line it came from."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    report(f"{one_line(e)} (see --help)")
  except (AttributeError, KeyError) as e:
    if not _raised_in_ml_collections(e):   # the --config file's own code failed
      _report_flag_exception(e)
    else:                                  # an override naming no field of --config's file
      report(config_override_error(e, "config", "the --config file"))
  except Exception as e:  # pylint: disable=broad-except
    _report_flag_exception(e)
  sys.exit(EXIT_USAGE)


def _raised_in_ml_collections(error: BaseException) -> bool:
  frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
  return bool(frames) and "ml_collections" in frames[-1].filename


def _report_flag_exception(e: BaseException) -> None:
  frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
  where = f" ({frame.filename}, line {frame.lineno})" if frame and frame.filename else ""
  where = "" if isinstance(e, (SyntaxError, OSError)) else where  # these name the file
  report(f"cannot parse the flags: {type(e).__name__}: {one_line(e)}{where}; fix the flag or "
         "the --config file")


@contextlib.contextmanager
def usage_errors():
  """Inside, a ValueError (a bad flag or config value being validated) becomes a `UsageError`."""
  try:
    yield
  except UsageError:
    raise
  except ValueError as e:
    raise UsageError(str(e)) from e


def config_from_flag(holder):
  """The value of an ``ml_collections`` config flag; a config file that cannot be loaded (the
  flag library defers that error to the first access) is a `UsageError`."""
  try:
    config = holder.value
    if config is not None:
      config.keys()
    return config
  except OSError as e:
    raise UsageError(f"cannot load --{holder.name}: {one_line(e)}; pass a readable config "
                     "file[:preset]") from e


def config_override_error(error: BaseException, name: str, config_file: str) -> str:
  """The one line for an exception raised while ``--name.field=value`` overrides were applied
  to ``config_file``: which flag named which missing field, with ml_collections' "did you
  mean" hint."""
  given = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith(f"--{name}.")]
  if not isinstance(error, (AttributeError, KeyError)):
    return (f"cannot apply {', '.join(given) or '--' + name}: {type(error).__name__}: "
            f"{one_line(error)}; fix the flag")
  text = error
  while isinstance(text, BaseException) and text.args:   # AttributeError(KeyError("'f'\n..."))
    text = text.args[0]
  first, _, hint = str(text).partition("\n")
  key = first.strip("'\" ")
  named = [a for a in given if a.rsplit(".", 1)[-1] == key] or given
  hint = f"{one_line(hint)} " if hint.strip() else ""
  return (f"{', '.join(named) or '--' + name}: no such config field {key!r} in {config_file}; "
          f"{hint}see that file for the fields it has")


def define_config_file(name: str, default: str, help_string: str, **kwargs):
  """``ml_collections.config_flags.DEFINE_config_file`` whose ``--name.field=value`` overrides
  of the DEFAULT config are a one-line usage error (exit 2) instead of a traceback.

  ml_collections parses the default config, and the overrides it finds in ``sys.argv``, while
  the flag is being defined (at import, before `run`'s error boundary exists): an unknown
  field raised from there.
  """
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    if not any(a.startswith(f"--{name}.") for a in sys.argv[1:]):
      raise   # not the user's override (e.g. the flag defined twice): a bug, with its traceback
    report(config_override_error(e, name, default))
    sys.exit(EXIT_USAGE)


def directory_flag(name: str, value: str) -> pathlib.Path:
  """``--name``'s folder; an existing path that is not a folder is a `UsageError`."""
  path = pathlib.Path(value)
  if path.exists() and not path.is_dir():
    raise UsageError(f"--{name}={value} is a file, not a folder; pass a folder path")
  return path


def output_folder(value: str, *, overwrite: bool, overwrite_hint: str,
                  what: str = "--out") -> pathlib.Path:
  """An output folder (not created): a `UsageError` if it, or a folder above it, is a file, or
  if it already holds files and ``overwrite`` is False — no run silently replaces another's
  outputs. ``overwrite_hint`` names the flag that allows it. A folder whose run did not finish
  (`output_run`'s marker) says so. The cheap check a command makes before loading anything;
  `output_run` makes it again under the folder's lock."""
  out = pathlib.Path(value).expanduser()
  for parent in [out, *out.parents]:
    if parent.exists() and not parent.is_dir():
      raise UsageError(f"{what} {str(out)!r}: {str(parent)!r} is a file, not a folder")
  existing = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
  if existing and not overwrite:
    if INCOMPLETE_NAME in existing:
      raise UsageError(f"{what} {str(out)!r} holds an earlier run that did not finish "
                       f"({INCOMPLETE_NAME}); pass {overwrite_hint} to replace it or choose "
                       f"another {what}")
    raise UsageError(f"{what} {str(out)!r} already holds files (an earlier run?); choose "
                     f"another {what} or pass {overwrite_hint} to replace them")
  return out


LOCK_NAME = ".spectral_jax.lock"


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, *, what: str = "--out"):
  """Holds an advisory lock on ``folder`` (created if missing) for the block: a second run on
  the same folder, in this or another process, is a `UsageError` naming the holder's PID,
  instead of two runs interleaving their files. The lock is a ``flock`` on
  ``folder/.spectral_jax.lock``, so the kernel releases it when the holder exits, however it
  ends (kill -9 included): a stale lock file never blocks a later run.

  Raises:
    UsageError: another process holds the folder.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise UsageError(f"{what} {str(folder)!r} is in use by another run (PID {holder}); wait "
                       f"for it to finish or choose another {what}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield folder
  finally:
    os.close(fd)   # releases the flock


INCOMPLETE_NAME = "RUN_INCOMPLETE"


@contextlib.contextmanager
def output_run(value: str, *, overwrite: bool, owned: Sequence[str], overwrite_hint: str,
               what: str = "--out"):
  """An output folder for one run, transactional and exclusive.

  Inside the block the folder is locked (`exclusive_folder`: a second run refuses, naming the
  holder's PID) and marked ``RUN_INCOMPLETE``; the marker is removed only when the block ends
  normally, so a killed or failed run's folder is recognisable as such. A folder holding files
  is refused unless ``overwrite``; an overwrite first removes the entries the command owns
  (``owned``: the names its runs write, e.g. ``photos``, ``summary.json``), so no file of the
  earlier run survives beside the new ones; files it does not own are left alone.

  Raises:
    UsageError: the folder (or a folder above it) is a file, it holds files and ``overwrite``
      is False, or another run holds it.
  """
  out = output_folder(value, overwrite=overwrite, overwrite_hint=overwrite_hint, what=what)
  with exclusive_folder(out, what=what):
    output_folder(value, overwrite=overwrite, overwrite_hint=overwrite_hint, what=what)
    existing = {p.name for p in out.iterdir()}
    for name in {*owned, INCOMPLETE_NAME} & existing:
      path = out / name
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      else:
        path.unlink()
    marker = out / INCOMPLETE_NAME
    marker.write_text(f"pid {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                      "removed when the run finishes\n")
    yield out
    marker.unlink()


def _not_from_orbax(record) -> bool:
  return f"{os.sep}orbax{os.sep}" not in (record.pathname or "")


def _closed_loop_callback(unraisable) -> bool:
  """An ignored exception of a tensorstore write completing after orbax closed the event loop
  of a failed save (one per pending write: hundreds of tracebacks after a full disk)."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def quiet_library_noise() -> None:
  """Without ``--verbosity``: orbax's own error log lines are dropped (each failure it logs,
  with a traceback per thread, is also raised to the command, which reports it as one line),
  and so are the ignored "Event loop is closed" exceptions its failed saves leave behind."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().addFilter(_not_from_orbax)
  default = sys.unraisablehook

  def hook(unraisable):
    if not _closed_loop_callback(unraisable):
      default(unraisable)
  sys.unraisablehook = hook


def silence_shutdown_noise() -> None:
  """After the one error line, the process prints nothing more: exceptions that library
  threads and finalizers raise and Python ignores while it shuts down (a TensorBoard writer
  flushing onto the full disk that failed the run, its queue thread) are dropped."""
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None


def run(main: Callable[[Sequence[str]], int | None]) -> None:
  """``absl.app.run`` of ``main`` inside `error_boundary`, flags parsed by `parse_flags`.

  Library log lines (orbax, JAX) are shown from ERROR up unless ``--verbosity`` is given, and
  orbax's not at all (`quiet_library_noise`), so an error is the one line on stderr.
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel

  def boundary(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.ERROR)
      quiet_library_noise()
    install_signal_handlers()
    return error_boundary(main, argv)
  app.run(boundary, flags_parser=parse_flags)
