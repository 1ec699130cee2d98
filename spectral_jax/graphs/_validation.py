"""Argument validation of the graph builders (private).

Ranks, dtypes and ``k`` are checked at trace time (ValueError/TypeError). NaN/Inf checks and the
[0, 1] range check of images run only on concrete inputs, i.e. in eager calls, not under
``jit``/``shard_map`` tracing (a traced value cannot be inspected without a host sync).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from spectral_jax._checks import all_finite, is_traced, value_range

OUTPUTS = ("dense", "bcoo")


def check_array(x, name: str, rank: int | None = None, min_rank: int | None = None,
                layout: str = "") -> None:
  """Rank and float-dtype checks (trace-time), NaN/Inf check (eager only)."""
  ndim = np.ndim(x)
  if rank is not None and ndim != rank:
    raise ValueError(f"{name} must have rank {rank} {layout}; got shape {np.shape(x)}")
  if min_rank is not None and ndim < min_rank:
    raise ValueError(f"{name} must have rank >= {min_rank} {layout}; got shape {np.shape(x)}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f"{name} must be a float array; got dtype {jnp.result_type(x)}. "
                    "Cast it with .astype(jnp.float32).")
  if not is_traced(x) and not all_finite(x):
    raise ValueError(f"{name} contains NaN or Inf values; clean the input before building a graph")


def check_unit_range(image, name: str) -> None:
  """Colour values must lie in [0, 1] (eager only)."""
  if not is_traced(image) and np.size(image):
    lo, hi = value_range(image)
    if lo < -1e-6 or hi > 1 + 1e-6:
      raise ValueError(
          f"{name} must hold RGB values in [0, 1]; got range [{lo:.4g}, {hi:.4g}]. "
          "Divide uint8 images by 255 (resize_to_grid does this).")


def check_k(k, n: int, *, self_excluded: bool, name: str = "k") -> None:
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"{name} must be a Python int (it fixes output shapes); got {k!r}")
  limit = n - 1 if self_excluded else n
  what = "n - 1 (self is excluded)" if self_excluded else "n (self counts as a neighbour)"
  if k < 1 or k > limit:
    raise ValueError(f"{name}={k} neighbours requested but n={n} nodes allow at most {what}; "
                     f"choose 1 <= {name} <= {limit}")


def check_output(output: str) -> None:
  if output not in OUTPUTS:
    raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")


def compute_dtype(x) -> jnp.dtype:
  """At least float32 (bf16/f16 features are compared in float32)."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def check_block_size(block_size) -> None:
  if block_size is not None and (not isinstance(block_size, (int, np.integer))
                                 or isinstance(block_size, bool) or block_size < 1):
    raise ValueError(f"block_size must be a positive int or None; got {block_size!r}")


def check_image_grid(image_grid, name: str, rank: int | None = None) -> None:
  layout = "(..., h, w, C)" if rank is None else "(B, h, w, C)"
  check_array(image_grid, name, rank=rank, min_rank=3, layout=layout)
  check_unit_range(image_grid, name)


def check_passes(n_neighbors, distance_weights, image_grid, *, self_excluded: bool):
  """Validated passes as a hashable tuple of (k, weight)."""
  if len(n_neighbors) != len(distance_weights) or not n_neighbors:
    raise ValueError("n_neighbors and distance_weights must be non-empty and of equal length; got "
                     f"{tuple(n_neighbors)} and {tuple(distance_weights)}")
  n = image_grid.shape[-3] * image_grid.shape[-2]
  for k in n_neighbors:
    check_k(k, n, self_excluded=self_excluded, name="n_neighbors entry")
  return tuple((int(k), float(w)) for k, w in zip(n_neighbors, distance_weights))
