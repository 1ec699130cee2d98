"""Progress of long loops, on a terminal and off it.

On a terminal, a tqdm bar. Off a terminal (``nohup``, a job scheduler, a CI log, a pipe),
tqdm with ``disable=None`` prints nothing for hours; `progress` prints instead one line at a
bounded rate, when the done share crosses another ``every_percent`` or ``every_s`` seconds have
passed since the last line (and at the end)::

  segment: 120/4952 (2%), 3.1 photo/s, ETA 26 min

  for item in progress(items, desc="segment", unit="photo"):
    ...
  bar = progress(total=steps, initial=step, desc="train", unit="step")
  bar.update(1); bar.set_postfix(loss="-0.01"); bar.close()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

EVERY_PERCENT = 10.0   # a line each time another 10% is done ...
EVERY_S = 30.0         # ... or after 30 s without one, whichever comes first


def format_duration(seconds: float) -> str:
  """``42 s``, ``7.5 min``, ``3.2 h``."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 5400:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


class LineProgress:
  """tqdm's counting interface (iteration, ``update``, ``set_postfix``, ``write``, ``close``)
  printing plain lines at a bounded rate; see the module docstring."""

  def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
               initial: int = 0, desc: str = "", unit: str = "it",
               every_percent: float = EVERY_PERCENT, every_s: float = EVERY_S,
               file: TextIO | None = None, clock=time.monotonic):
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      total = len(iterable)
    self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
    self.every_percent, self.every_s = every_percent, every_s
    self.file = file
    self._clock = clock
    self._start_n, self._start = initial, clock()
    self._last_t, self._last_n = self._start, initial
    self._postfix = ""
    self._closed = False

  def __iter__(self) -> Iterator[Any]:
    try:
      for item in self.iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def __len__(self) -> int:
    return self.total or 0

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def set_postfix(self, **values) -> None:
    self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

  def write(self, text: str, file: TextIO | None = None) -> None:
    print(text, file=file or self.file or sys.stderr, flush=True)

  def _due(self, now: float) -> bool:
    if now - self._last_t >= self.every_s:
      return True
    if self.total:
      step = self.total * self.every_percent / 100.0
      return int(self.n / step) > int(self._last_n / step)
    return False

  def line(self, now: float | None = None) -> str:
    """The progress line for the current count."""
    now = self._clock() if now is None else now
    done = self.n - self._start_n
    rate = done / (now - self._start) if now > self._start and done else 0.0
    text = f"{self.desc}: {self.n}"
    if self.total:
      text += f"/{self.total} ({100.0 * self.n / self.total:.0f}%)"
    text += f" {self.unit}" if not self.total else ""
    if rate:
      text += f", {rate:.3g} {self.unit}/s" if rate >= 1 else f", {1 / rate:.3g} s/{self.unit}"
      if self.total and self.n < self.total:
        text += f", ETA {format_duration((self.total - self.n) / rate)}"
    if self._postfix:
      text += f", {self._postfix}"
    return text

  def update(self, n: int = 1) -> None:
    self.n += n
    now = self._clock()
    if self._due(now):
      self.write(self.line(now))
      self._last_t, self._last_n = now, self.n

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self.n != self._last_n:
      self.write(self.line() + " (done)" if self.total and self.n >= self.total else self.line())


def progress(iterable: Iterable | None = None, *, enabled: bool = True, file: TextIO | None = None,
             **kwargs):
  """A tqdm bar on a terminal, a `LineProgress` off one, nothing when not ``enabled``.

  Args:
    iterable: what to loop over (None: count with ``update``).
    enabled: False returns a silent counter (tqdm disabled), for library callers that asked
      for no progress.
    file: the stream (default stderr); its ``isatty()`` decides the form.
    **kwargs: total, initial, desc, unit (and for lines: every_percent, every_s).
  """
  stream = file or sys.stderr
  if not enabled:
    return tqdm(iterable, disable=True, **_tqdm_args(kwargs))
  if getattr(stream, "isatty", lambda: False)():
    return tqdm(iterable, file=stream, **_tqdm_args(kwargs))
  return LineProgress(iterable, file=stream, **kwargs)


def _tqdm_args(kwargs: dict) -> dict:
  return {k: v for k, v in kwargs.items() if k not in ("every_percent", "every_s")}


def write(text: str, file: TextIO | None = None) -> None:
  """A message that does not break a running bar (``tqdm.write``); ONE copy, on ``file``
  (default stderr)."""
  tqdm.write(text, file=file or sys.stderr)


__all__ = ["EVERY_PERCENT", "EVERY_S", "LineProgress", "format_duration", "progress", "write"]
