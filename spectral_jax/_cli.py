"""The commands' error boundary: an expected error is one line on stderr, never a traceback.

``run(main)`` replaces ``absl.app.run(main)``: flag and config errors (an unknown
``--config.*`` field, an unknown preset, a bad value) and :class:`UsageError` exit with 2;
failed work (missing or unreadable files, refused checkpoints, nothing processed) exits with 1;
Ctrl-C / SIGTERM exit with 130. ``--verbosity=1`` (or higher) shows the traceback too; errors of
other types are bugs and always show it. SIGINT and SIGTERM handlers are installed explicitly:
a process started with SIGINT ignored (``nohup``, ``cmd &`` in a script) still stops cleanly.
"""

from __future__ import annotations

import pickle
import signal
import sys
from collections.abc import Callable

from absl import app, flags


class UsageError(ValueError):
  """A bad flag, setting or argument: the user must change the command (exit code 2)."""


# Failed work: the command was fine but its inputs or their processing were not (exit code 1).
WORK_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError,
               ValueError, RuntimeError, pickle.UnpicklingError)


def parse_overrides(text: str) -> dict:
  """``"depth=2,width=96"`` → ``{"depth": 2, "width": 96}`` (ints, floats, else strings).

  Raises:
    UsageError: an item is not ``key=value``.
  """
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


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _fail(code: int, e: BaseException, verbose: bool):
  if verbose:
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exception(e, file=sys.stderr)
  print(f"error: {_one_line(e)}", file=sys.stderr)
  sys.exit(code)


def _interrupt(signum, frame):
  del frame
  raise KeyboardInterrupt(signal.Signals(signum).name)


def install_signal_handlers() -> None:
  """SIGINT and SIGTERM raise KeyboardInterrupt, whatever the process inherited."""
  signal.signal(signal.SIGINT, _interrupt)
  signal.signal(signal.SIGTERM, _interrupt)


def run(main: Callable[[list[str]], object], *,
        on_interrupt: Callable[[], None] | None = None) -> None:
  """``absl.app.run(main)`` inside the error boundary (see the module docstring)."""

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"error: {_one_line(e)} (see --helpfull)", file=sys.stderr)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except
      # A config file that refuses its preset or an override raises while flags are parsed.
      print(f"error: bad --config: {_one_line(e)}", file=sys.stderr)
      sys.exit(2)

  def guarded(argv):
    verbose = flags.FLAGS["verbosity"].value >= 1
    install_signal_handlers()
    try:
      return main(argv)
    except KeyboardInterrupt:
      if on_interrupt is not None:
        on_interrupt()
      print("interrupted: outputs written so far are kept", file=sys.stderr)
      sys.exit(130)
    except UsageError as e:
      _fail(2, e, verbose)
    except app.UsageError as e:
      _fail(2, e, verbose)
    except WORK_ERRORS as e:
      _fail(1, e, verbose)

  app.run(guarded, flags_parser=parse)
