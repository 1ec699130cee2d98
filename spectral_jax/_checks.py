"""Private input-check helpers shared by the spectral_jax modules.

Value checks (NaN/Inf, ranges) need concrete arrays: a traced value cannot be inspected without
a host sync, so callers skip them under ``jit``/``vmap``/``shard_map`` tracing (``is_traced``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(*trees) -> bool:
  """True when any leaf of ``trees`` is a JAX tracer (we are inside a transformation)."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


@jax.jit
def _finite_and_range(x):
  return jnp.all(jnp.isfinite(x)), jnp.min(x), jnp.max(x)


def all_finite(x) -> bool:
  """Whether a concrete array has no NaN/Inf (NumPy data is checked on the host, no transfer)."""
  if isinstance(x, np.ndarray):
    return bool(np.isfinite(x).all())
  return bool(_finite_and_range(x)[0])


def value_range(x) -> tuple[float, float]:
  """(min, max) of a concrete, non-empty array."""
  if isinstance(x, np.ndarray):
    return float(x.min()), float(x.max())
  _, lo, hi = _finite_and_range(x)
  return float(lo), float(hi)
