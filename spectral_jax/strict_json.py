"""Strict JSON for the files the commands write: no bare ``NaN``/``Infinity``.

Python's ``json`` writes NaN and Inf as the bare words ``NaN``/``Infinity``, which strict
parsers (browsers' ``JSON.parse``, jq, most other languages) reject. Every JSON file the
commands write goes through :func:`dumps`: non-finite floats become ``null`` (the reader sees
"no value", never a number that was not computed), NumPy scalars and arrays become Python
numbers and lists, and ``json.dumps(..., allow_nan=False)`` guarantees the text is strict.

    path.write_text(strict_json.dumps(record, indent=1))
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> Any:
  """``value`` with every non-finite float (NaN, ±Inf) replaced by None, recursively through
  dicts, lists and tuples; NumPy scalars and arrays become Python numbers and lists; text that
  cannot be written as UTF-8 (a non-UTF-8 file name's surrogate escapes) gets U+FFFD there."""
  if isinstance(value, dict):
    return {finite_or_none(k): finite_or_none(v) for k, v in value.items()}
  if isinstance(value, str):
    return _utf8(value)
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  if isinstance(value, np.ndarray):
    return finite_or_none(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dumps(value: Any, **kwargs) -> str:
  """Strict JSON text of ``value`` (:func:`finite_or_none` first); keyword arguments as
  ``json.dumps`` (``ensure_ascii`` defaults to False: names stay readable).

  Raises:
    TypeError: a value JSON cannot hold.
  """
  kwargs.setdefault("ensure_ascii", False)
  return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def _utf8(text: str) -> str:
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


__all__ = [
    "dumps", "finite_or_none",
]
