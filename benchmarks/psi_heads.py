"""The train step's time with each of ψ's orthonormal heads (``psi.HEADS``) at the CPU preset.

The CPU preset's sizes (K = 256, 4 crops of 16×16 tokens, 1152-d ψ inputs, 384-d graph
features, k = 64), random inputs; each head's jitted step is timed (median of ``--repeats``
after a warm-up) and the heads alternate ``--rounds`` times, so a change of load on a shared
machine hits both.

Run: PYTHONPATH=. python benchmarks/psi_heads.py [--repeats 5 --rounds 2]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from experiments.configs import neuralef as configs
from spectral_jax import testing
from spectral_jax.neuralef import psi as psi_lib
from spectral_jax.neuralef import step as step_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  batch = {"psi_inputs": rng.normal(size=(4, 256, 1152)).astype(np.float32),
           "graph_features": rng.normal(size=(4, 256, 384)).astype(np.float32),
           "image_grids": rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)}
  for _ in range(args.rounds):
    for head in psi_lib.HEADS:
      config = configs.get_config("cpu")
      config.psi.head = head
      state = step_lib.init_state(config, 1152)
      step = step_lib.make_train_step(config)
      t = testing.median_time(lambda: jax.block_until_ready(step(state, batch)), args.repeats)
      print(f"{head:12s} {t:.3f} s/step", flush=True)


if __name__ == "__main__":
  main()
