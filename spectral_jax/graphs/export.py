"""Export of graphs to other libraries: ``to_graphs_tuple`` (jraph)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import sparse


def to_graphs_tuple(graph: sparse.BCOO, nodes: jax.Array | None = None):
  """A 2-D BCOO (n, n) affinity as a single-graph ``jraph.GraphsTuple``.

  Entry ``W[i, j]`` becomes an edge j → i (``senders = j``, ``receivers = i``) with
  ``edges = W[i, j]`` of shape (nse,), so summing ``edges · nodes[senders]`` per receiver is
  ``W @ nodes``. Repeated and zero-data entries are kept as edges.

  Args:
    graph: BCOO of shape (n, n) without batch dims.
    nodes: optional (n, ...) node features.
  Returns:
    ``jraph.GraphsTuple`` with n_node = [n], n_edge = [nse].
  """
  import jraph  # pylint: disable=import-outside-toplevel

  if not isinstance(graph, sparse.BCOO) or graph.ndim != 2 or graph.n_batch:
    raise ValueError("to_graphs_tuple needs a 2-D BCOO matrix without batch dims; for a batch, "
                     "index one graph or use neuralef_kernel's flattened output")
  n, nse = graph.shape[0], graph.nse
  return jraph.GraphsTuple(
      nodes=nodes, edges=graph.data, senders=graph.indices[:, 1], receivers=graph.indices[:, 0],
      n_node=jnp.array([n]), n_edge=jnp.array([nse]), globals=None)


__all__ = ["to_graphs_tuple"]
