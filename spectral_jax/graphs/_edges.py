"""Edge lists and the batching / row-blocking maps the graph builders share (private)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import sparse


def batched(fn: Callable, n_batch: int) -> Callable:
  """``fn`` vmapped over ``n_batch`` leading axes."""
  for _ in range(n_batch):
    fn = jax.vmap(fn)
  return fn


def map_rows(row_fn: Callable, xs, block_size: int | None):
  """Applies ``row_fn`` to every leading-axis slice of ``xs``: all at once (vmap) when
  ``block_size`` is None, else ``block_size`` rows at a time (``lax.map``), so that the per-row
  intermediates only ever exist for one block."""
  if block_size is None:
    return jax.vmap(row_fn)(xs)
  return jax.lax.map(row_fn, xs, batch_size=int(block_size))


def row_ids(shape) -> jax.Array:
  """Row index of every entry of (..., m, k) row lists, flattened to (..., m·k)."""
  *lead, m, k = shape
  rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], (*lead, m, k))
  return rows.reshape(*lead, m * k)


def flat_rows(a: jax.Array) -> jax.Array:
  return a.reshape(*a.shape[:-2], -1)


def both_directions(rows, cols, data):
  """Each edge (i, j) also as (j, i): the edges of ``E + Eᵀ``."""
  cat = lambda a, b: jnp.concatenate([a, b], axis=-1)
  return cat(rows, cols), cat(cols, rows), cat(data, data)


def edges_to_graph(rows, cols, data, n: int, output: str) -> jax.Array | sparse.BCOO:
  """Edges with leading batch dims (..., e) → (..., n, n) dense (repeats summed) or BCOO."""
  if output == "bcoo":
    return sparse.BCOO((data, jnp.stack([rows, cols], axis=-1)), shape=(*data.shape[:-1], n, n))
  scatter = lambda r, c, v: jnp.zeros((n, n), v.dtype).at[r, c].add(v)
  return batched(scatter, data.ndim - 1)(rows, cols, data)
