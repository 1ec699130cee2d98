"""What the kernel scope does to the eigenfunctions: ψ trained with each ``graph.scope``.

On ``--devices`` fake CPU devices (``--xla_force_host_platform_device_count``, set here before
JAX starts), the same config, data, initialisation and steps are trained once per scope
(``neuralef.train.train`` on the cached DINOv2 ViT-S/14 features of the bundled photos: the
offline weights), and every ``--every`` steps ψ is compared on a fixed batch (step 0's views:
the training hook's ``neuralef.fidelity.make_probe``) with the top-K eigenvectors of that
batch's **global** kernel (all of the batch's tokens on one device, dense ``eigh``). The
``device`` scope never sees that kernel while training (each device's kernel couples its own
crops only); ``global`` trains on exactly that kind of kernel.

CPU-sized: ``--size`` px crops, ψ shrunk to ``--psi_heads`` × ``--psi_head_dim`` attention
dims and ``--psi_mlp`` MLP dims (the reference's is 18 × 64 and 576), K = ``--K``, k = ``--k``
neighbours; the loss, optimiser and schedules are the config's (``--loss_t`` overrides t).

Printed: one JSON line per logged fidelity record, then a Markdown table.

Run: PYTHONPATH=. python benchmarks/scope_fidelity.py [--devices 8 --batch 16 --size 112
     --K 16 --k 16 --steps 200 --every 50 --scopes device,global]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# The device count is fixed when JAX starts: set it before the first import of jax.
_DEVICES = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "8"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)

from experiments.configs import neuralef as configs  # noqa: E402
from spectral_jax.neuralef import config as config_lib  # noqa: E402
from spectral_jax.neuralef import feature_cache  # noqa: E402
from spectral_jax.neuralef import step as step_lib  # noqa: E402
from spectral_jax.neuralef import train as train_lib  # noqa: E402

COLUMNS = ("cos_in_order_mean@{K}", "cos_cluster_mean@{K}", "angle_max_deg@4",
           "within_span_max_deg@4", "within_span_max_deg@{K}", "rayleigh_over_lambda_mean@{K}",
           "argmax_columns_used")


def make_config(args):
  """The cpu preset shrunk as the flags say (module docstring)."""
  config = configs.get_config("cpu")
  config.data.image_size = args.size
  config.train.batch_size, config.train.num_steps = args.batch, args.steps
  config.psi.k, config.graph.k = args.K, args.k
  config.psi.num_heads, config.psi.head_dim = args.psi_heads, args.psi_head_dim
  config.psi.mlp_dim = args.psi_mlp
  if args.loss_t:
    config.loss.t = args.loss_t
  config.graph.group_size = args.group_size
  config.checkpoint.every = args.steps
  config.log.every, config.log.fidelity_every = args.every, args.every
  config.log.tensorboard = config.log.progress = False
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--batch", type=int, default=16, help="global batch (crops)")
  parser.add_argument("--size", type=int, default=112, help="crop size, px (112: 8×8 patches)")
  parser.add_argument("--K", type=int, default=16)
  parser.add_argument("--k", type=int, default=16)
  parser.add_argument("--psi_heads", type=int, default=4)
  parser.add_argument("--psi_head_dim", type=int, default=32)
  parser.add_argument("--psi_mlp", type=int, default=128)
  parser.add_argument("--loss_t", type=float, default=0.0, help="loss.t (0: the config's)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--scopes", default="device,global")
  parser.add_argument("--group_size", type=int, default=4)
  args = parser.parse_args()
  if jax.device_count() != args.devices:
    print(f"error: {jax.device_count()} devices, not --devices {args.devices} (XLA_FLAGS set "
          "elsewhere?)", file=sys.stderr)
    sys.exit(2)
  base = make_config(args)
  try:
    config_lib.check(base, patch_size=14, devices=args.devices)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  _, feats, hit = feature_cache.prepare_features(base, progress=False)
  print(f"{len(feats)} views of {len(feats.names)} photos, grid {feats.grid} (cache "
        f"{'hit' if hit else 'miss'}); {args.devices} devices, batch {args.batch}, "
        f"jax {jax.__version__}", flush=True)
  mesh = step_lib.data_mesh()
  rows = []
  for scope in args.scopes.split(","):
    config = base.copy_and_resolve_references()
    config.graph.scope = scope
    config_lib.check(config, patch_size=14, devices=args.devices)
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      result = train_lib.train(config, workdir, feats, mesh=mesh)
      seconds = time.perf_counter() - start
    for record in result.history:
      if any(key.startswith("fidelity/") for key in record):
        row = {"scope": scope if scope != "group" else f"group {args.group_size}",
               "step": record["step"], "loss": record["loss"],
               **{k[len("fidelity/"):]: v for k, v in record.items()
                  if k.startswith("fidelity/")}, "run_seconds": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
  cols = [c.format(K=args.K) for c in COLUMNS]
  print("\n| scope | step | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 2))
  for r in rows:
    print(f"| {r['scope']} | {r['step']} | " +
          " | ".join(f"{r[c]:.3g}" if c in r else "–" for c in cols) + " |")
  print(f"λ₁ = {rows[0]['lambda_1']:.3g}, λ_K = {rows[0]['lambda_K']:.3g}, "
        f"{rows[0][f'clusters@{args.K}']:.0f} eigenvalue clusters among the K")


if __name__ == "__main__":
  main()
