"""NeuralEF batch feature graph: dense (reference-style) vs blockwise, memory and time.

The reference builds the k-NN feature graph of a mini-batch by materialising the full
(B·N)×(B·N) cosine similarity, then top-k, then a dense scatter. `spectral_jax.graphs` computes
the same rows ``block_size`` query rows at a time. Default problem: 16 images × 24×24 patches
(n = 9216 tokens), d = 384, k = 256 (SPEC §2).

Measured per variant:
  * XLA's compiled memory analysis (``jit(...).lower(...).compile().memory_analysis()``):
    temporary bytes (the working set beyond arguments and outputs) and output bytes;
  * wall time, median of ``--repeats`` runs after one warm-up.
The PyTorch reference code (same steps as the NeuralEF segmenter, float32, on the same device
class as the run: CPU here) is timed as the peer.

Run: PYTHONPATH=. python benchmarks/graphs.py [--images 16 --grid 24 --dim 384 --k 256]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import graphs
from spectral_jax import testing

MIB = 2**20


def memory(fn, *args) -> tuple[float, float]:
  """(temp MiB, output MiB) of the compiled program."""
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  if stats is None:  # some backends do not report
    return float("nan"), float("nan")
  return stats.temp_size_in_bytes / MIB, stats.output_size_in_bytes / MIB


def torch_reference(features: np.ndarray, k: int, repeats: int) -> float | None:
  """Median time of the reference's steps in PyTorch (normalise, F Fᵀ, diagonal -inf, clamp,
  top-k, dense scatter, (A + Aᵀ)/2)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  x = torch.from_numpy(features)

  def run():
    f = torch.nn.functional.normalize(x, dim=-1)
    a = f @ f.T
    a.diagonal().fill_(float("-inf"))
    a.clamp_(min=0.0)
    top = torch.topk(a, k, dim=-1)
    res = torch.zeros_like(a).scatter_(-1, top.indices, top.values)
    return (res + res.T) / 2

  with torch.no_grad():
    return testing.median_time(run, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--grid", type=int, default=24, help="patches per side")
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--k", type=int, default=256)
  parser.add_argument("--block-size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  args = parser.parse_args()

  n = args.images * args.grid**2
  features = np.random.default_rng(0).normal(size=(n, args.dim)).astype(np.float32)
  x = jnp.asarray(features)
  k, block = args.k, args.block_size
  print(f"device: {jax.devices()[0].device_kind}; n = {args.images}×{args.grid}² = {n} tokens, "
        f"d = {args.dim}, k = {k}, block_size = {block}, repeats = {args.repeats}")

  variants = {
      # A₀ rows (values, indices): what the sharded trainer builds per device.
      "rows, dense (full n×n similarity)":
          lambda f: graphs.topk_cosine_rows(f, f, k, block_size=None),
      "rows, blockwise":
          lambda f: graphs.topk_cosine_rows(f, f, k, block_size=block),
      # The symmetrised graph A = (A₀ + A₀ᵀ)/2.
      "graph, dense in / dense out (reference-style)":
          lambda f: graphs.knn_feature_graph(f, k, block_size=None, output="dense"),
      "graph, blockwise / BCOO out":
          lambda f: graphs.knn_feature_graph(f, k, block_size=block, output="bcoo"),
  }
  results = {}
  print(f"{'variant':48s} {'temp MiB':>10s} {'out MiB':>9s} {'median s':>9s}")
  for name, fn in variants.items():
    temp, out = memory(fn, x)
    jitted = jax.jit(fn)
    seconds = testing.median_time(lambda: jitted(x), args.repeats)
    results[name] = (temp, out, seconds)
    print(f"{name:48s} {temp:10.1f} {out:9.1f} {seconds:9.3f}")

  def ratio(a, b, i):
    return results[a][i] / results[b][i]

  rows_d, rows_b = "rows, dense (full n×n similarity)", "rows, blockwise"
  graph_d, graph_b = "graph, dense in / dense out (reference-style)", "graph, blockwise / BCOO out"
  print(f"rows:  temp memory dense/blockwise = {ratio(rows_d, rows_b, 0):.1f}×, "
        f"time dense/blockwise = {ratio(rows_d, rows_b, 2):.2f}×")
  print(f"graph: (temp+out) memory dense/blockwise = "
        f"{(results[graph_d][0] + results[graph_d][1]) / (results[graph_b][0] + results[graph_b][1]):.1f}×, "
        f"time dense/blockwise = {ratio(graph_d, graph_b, 2):.2f}×")
  if not args.no_torch:
    t = torch_reference(features, k, args.repeats)
    if t is not None:
      print(f"PyTorch reference (dense, {'CPU'}): median {t:.3f} s; "
            f"JAX blockwise graph / PyTorch = {results[graph_b][2] / t:.2f}×")


if __name__ == "__main__":
  main()
