"""Pod plan: per-device FLOPs, memory and collective bytes of the sharded NeuralEF train step.

For each mesh size D (fake CPU devices: ``--xla_force_host_platform_device_count=D`` in a
subprocess per combination, so each has its own device count and a hard time limit), global
batch B and kernel form, `spectral_jax.neuralef.pod_plan.plan_step` compiles the step with
abstract inputs (no buffers) and reads XLA's cost and memory analysis and the collectives of
the compiled HLO. Reference settings otherwise (24×24 patches, K = 256, k = 256, top-k blocks of
1024 rows, ψ input 1152-d, graph features 384-d). Combinations whose batch is not a multiple of
D are recorded as such; a compile past ``--timeout`` or failing is recorded with the reason.
XLA's cost analysis counts the body of a while loop once, so the blockwise top-k similarity
(a loop over row blocks; 2·m·n·C FLOPs per device for m local and n global tokens) is printed
beside it in closed form.

Run: PYTHONPATH=. python benchmarks/pod_plan.py [--devices 8,64,256 --batches 16,128,1024
     --forms dense,knn --global_forms gather,ring --timeout 900]
(``--global_forms``: ``graph.global_form``; "ring" passes blocks around the device ring
instead of all-gathering, its ``ppermute``s counted once per loop iteration. ``--part kernel``
plans the batch kernel's product ``G_rows ψ`` alone (`kernel_step_builder`: top-k rows,
degrees, the product with a given ψ; no ψ network), to separate its memory from ψ's.
``--remat_psi_blocks`` is a what-if: each of ψ's blocks wrapped in ``flax.linen.remat`` (its
activations recomputed in the backward pass instead of kept), patched into ``neuralef.psi``
in the subprocess only; the library has no such option.)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from experiments.configs import neuralef as configs
from spectral_jax import graphs
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import pod_plan
from spectral_jax.neuralef import psi as psi_lib
from spectral_jax.neuralef import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
MIB, GIB = 2**20, 2**30
ROLES = ("feature all-gather", "edge all-gather", "ψ all-gather", "kNN reduce-scatter",
         "R psum", "degree/norm psum", "gradient reduction", "feature ring", "kernel ring")


def kernel_step_builder(config, mesh):
  """``(state, batch) -> G_rows ψ`` on each device of ``mesh`` (state unused): the loss's
  kernel product alone, ψ all-gathered first unless ``graph.global_form`` is "ring"."""
  g = config.graph
  ring = g.global_form == "ring"

  def local(batch):
    kernel = graphs.batch_kernel_matmul(
        batch["graph_features"], batch["image_grids"], k=int(g.k), alpha=float(g.alpha),
        n_neighbors=tuple(g.n_neighbors), distance_weights=tuple(g.distance_weights),
        block_size=g.block_size, form=g.form, axis_name=step_lib.AXIS, ring=ring)
    psi = batch["psi"].reshape(-1, batch["psi"].shape[-1])
    return kernel(psi if ring else jax.lax.all_gather(psi, step_lib.AXIS, tiled=True))

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(step_lib.AXIS),), out_specs=P(step_lib.AXIS))
  return lambda state, batch: fn(batch)


def plan_one(devices: int, batch: int, form: str, grid: int, psi_k: int, graph_k: int,
             block_size: int, global_form: str = "gather", part: str = "step",
             remat_psi_blocks: bool = False) -> dict:
  """Runs inside the subprocess: compile one combination, return a JSON-able row."""
  if remat_psi_blocks:  # the what-if of the module docstring (this subprocess only)
    psi_lib.Block = nn.remat(psi_lib.Block)

  assert jax.device_count() == devices, (jax.device_count(), devices)
  config = configs.get_config("reference")
  config.train.batch_size = batch
  config.data.image_size = grid * 14
  config.psi.k, config.graph.k = psi_k, graph_k
  config.graph.block_size, config.graph.form = block_size, form
  config.graph.global_form = global_form
  config_lib.check(config, patch_size=14, devices=devices, data=False)
  if part == "kernel":
    shapes = pod_plan.train_batch_shapes(config)
    shapes = {"graph_features": shapes["graph_features"], "image_grids": shapes["image_grids"],
              "psi": ((batch, grid * grid, psi_k), jnp.float32)}
    plan = pod_plan.plan_step(config, step_lib.data_mesh(), step_builder=kernel_step_builder,
                              batch_shapes=shapes, state_shapes={})
  else:
    plan = pod_plan.plan_step(config, step_lib.data_mesh())
  roles = pod_plan.summarise_collectives(plan["collectives"], feature_dim=384, k=psi_k)
  return {**{k: v for k, v in plan.items() if k != "collectives"}, "form": form,
          "global_form": global_form, "part": part, "remat_psi_blocks": remat_psi_blocks,
          "collectives": roles, "tokens_per_image": grid * grid, "graph_dim": 384}


def _run(args, devices: int, batch: int, form: str, global_form: str = "gather") -> dict:
  row = {"devices": devices, "batch": batch, "form": form, "global_form": global_form,
         "part": args.part, "remat_psi_blocks": args.remat_psi_blocks}
  if batch % devices:
    return {**row, "status": f"not runnable: {batch} images do not split over {devices} devices"}
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  cmd = [sys.executable, __file__, "--_one", json.dumps(
      [devices, batch, form, args.grid, args.K, args.k, args.block_size, global_form,
       args.part, args.remat_psi_blocks])]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return {**row, "status": f"compile did not finish in {args.timeout} s"}
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {**row, "status": f"failed (exit {proc.returncode}): {last[:200]}"}
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return {**out, "status": "ok", "wall_seconds": time.perf_counter() - start}


def format_row(r: dict) -> str:
  ring = " ring" if r.get("global_form", "gather") == "ring" else ""
  part = " (kernel only)" if r.get("part", "step") == "kernel" else ""
  part += " (ψ blocks remat)" if r.get("remat_psi_blocks") else ""
  head = f"| {r['devices']} | {r['batch']} | {r['form']}{ring}{part} |"
  if r["status"] != "ok":
    return head + f" {r['status']} |" + " |" * 12
  m, c = r["memory"], r["collectives"]
  mib = lambda role: c.get(role, {}).get("moved_bytes", 0.0) / MIB
  # XLA's cost analysis counts a while loop's body once: the blockwise top-k's similarity
  # (2·m·n·C per device) is a loop over row blocks, so it is added here in closed form.
  n = r["batch"] * r.get("tokens_per_image", 576)
  similarity = 2 * (n // r["devices"]) * n * r.get("graph_dim", 384)
  return (head + f" {r['batch'] // r['devices']} | {r['flops'] / 1e9:,.0f} | "
          f"{similarity / 1e9:,.0f} | "
          f"{m['peak'] / GIB:,.2f} ({m['argument'] / GIB:.2f} / {m['output'] / GIB:.2f} / "
          f"{m['temp'] / GIB:,.2f}) | {mib('feature all-gather'):,.1f} | "
          f"{mib('edge all-gather'):,.1f} | {mib('ψ all-gather'):,.1f} | "
          f"{mib('kNN reduce-scatter'):,.1f} | {mib('R psum'):,.2f} | "
          f"{mib('gradient reduction'):,.1f} | "
          f"{mib('feature ring'):,.1f} + {mib('kernel ring'):,.1f} | "
          f"{r['collective_bytes'] / MIB:,.1f} | "
          f"{r['compile_seconds']:.0f} |")


HEADER = ("| devices | batch | form | images/device | XLA GFLOP/device | + top-k similarity "
          "GFLOP | peak GiB (arg / out / temp) | feature AG MiB | edge AG MiB | ψ AG MiB "
          "| kNN RS MiB | R psum MiB | grad MiB | ring permutes MiB (feature + kernel) "
          "| all collectives MiB | compile s |\n|" + "---|" * 16)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="8,64,256")
  parser.add_argument("--batches", default="16,128,1024")
  parser.add_argument("--forms", default="dense,knn")
  parser.add_argument("--global_forms", default="gather", help="gather and/or ring")
  parser.add_argument("--part", default="step", choices=("step", "kernel"))
  parser.add_argument("--remat_psi_blocks", action="store_true",
                      help="what-if: ψ's blocks rematerialised (see the module docstring)")
  parser.add_argument("--grid", type=int, default=24, help="patches per side (24: 336 px)")
  parser.add_argument("--K", type=int, default=256)
  parser.add_argument("--k", type=int, default=256)
  parser.add_argument("--block_size", type=int, default=1024)
  parser.add_argument("--timeout", type=int, default=900, help="seconds per compile")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  parser.add_argument("--from_json", default="", help="print the table of a --json file")
  parser.add_argument("--_one", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._one:  # pylint: disable=protected-access
    print(json.dumps(plan_one(*json.loads(args._one))))  # pylint: disable=protected-access
    return
  if args.from_json:
    print(HEADER)
    for row in json.loads(pathlib.Path(args.from_json).read_text()):
      print(format_row(row))
    return
  rows = []
  print(f"{args.grid}×{args.grid} patches, K = {args.K}, k = {args.k}, block {args.block_size}; "
        "bytes moved per device per step (ring model); peak = argument + output + temp",
        flush=True)
  print(HEADER, flush=True)
  for devices in (int(d) for d in args.devices.split(",")):
    for batch in (int(b) for b in args.batches.split(",")):
      for form in args.forms.split(","):
        for global_form in args.global_forms.split(","):
          row = _run(args, devices, batch, form, global_form)
          rows.append(row)
          print(format_row(row), flush=True)
          if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
