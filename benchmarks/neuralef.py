"""One NeuralEF training step: this project (jit) vs the PyTorch reference formulation.

A step is everything between two updates of ψ (SPEC §2, §5): the batch kernel (top-k cosine
feature graph over all B·N tokens, per-image pixel graph, normalisations), ψ's forward pass, the
Gumbel-softmax, the L2 batch normalisation, the loss, its gradient and the Adam update. Default
problem: B·N = 9216 tokens (16 crops × 24×24 patches), K = 256, ψ input 1152-d, graph features
384-d, k = 256 (the reference's Pascal Context settings).

* JAX: ``spectral_jax.neuralef.train.make_train_step`` on one device (jit), kernel form
  ``--form`` ("dense" rows of G, or "knn" neighbour lists), top-k in blocks of ``--block_size``.
* PyTorch: the reference step written out: dense (B·N)² cosine similarity, diagonal to −∞,
  clamp ≥ 0, ``topk``, ``scatter``, ``(A + Aᵀ)/2``, ``D^-½ A D^-½``; per-image pixel graph
  (``cdist`` + ``topk`` for k₁ = 10 / k₂ = 5, binary OR, symmetric, normalised) placed by
  ``block_diag``; the same ψ (linear-attention blocks, orthogonal head via
  ``torch.nn.utils.parametrizations.orthogonal``); ``F.gumbel_softmax``; the loss with autograd
  (R̂ from ``psi.detach()``); ``torch.optim.Adam``.

Printed: median step time over ``--repeats`` (after one warm-up call each, whose time is printed:
compilation is not in the medians), tokens/s, the ratio of the medians and the per-repeat
ratios (the two steps alternate within each repeat, so a change of load on a shared machine
hits both sides of a ratio alike), the machine's load average, and XLA's
compiled memory analysis of the kernel construction alone with and without blockwise top-k
(temp bytes: the working set beyond inputs and outputs). Same machine, same run. Flags set the
sizes, so it runs unchanged on a GPU (``--torch_device cuda``).

``--backbone`` times the **full step** instead, the frozen backbone inside the jitted step:
augmented uint8 crops in → the frozen DINOv2 ViT-S/14 (offline weights) → ψ inputs (blocks 0 and
6, last-block keys), graph features (last-block keys) and pixel grids → the step above. JAX:
``make_image_train_step`` (one jitted program with the backbone inside); PyTorch: Hugging Face
``Dinov2Model`` (the same weights, ``sdpa`` attention, ``inference_mode``) with hooks for the
keys, ``F.interpolate`` for the grids, then the reference step. Crops are ``--grid``·14 px (336
at the reference grid).

``--device gpu`` runs both on the GPU (JAX's CUDA backend, torch ``cuda``) and fails, naming
what to install, where either sees none; ``--dtype bfloat16`` computes the backbone in bfloat16
on both sides (JAX ``backbone.dtype``; torch ``autocast``), ψ, the kernel and the loss staying
float32; ``--json PATH`` writes the figures (``benchmarks/accelerator.sh`` tabulates them).

Run: PYTHONPATH=. python benchmarks/neuralef.py [--images 16 --grid 24 --repeats 3]
     PYTHONPATH=. python benchmarks/neuralef.py --backbone [--images 16 --grid 24]
     PYTHONPATH=. python benchmarks/neuralef.py --backbone --device gpu --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import neuralef as configs
from spectral_jax import backbones
from spectral_jax import graphs
from spectral_jax import testing
from spectral_jax.backbones import reference
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import psi as psi_lib
from spectral_jax.neuralef import step as step_lib

MIB = 2**20


def _config(args):
  config = configs.get_config("reference")
  config.psi.k = args.K
  config.graph.k = args.k
  config.graph.block_size = args.block_size
  config.graph.form = args.form
  config.train.batch_size = args.images
  config.backbone.dtype = args.dtype
  config_lib.check(config, tokens=args.images * args.grid * args.grid, data=False)
  return config


def _inputs(args, seed=0):
  rng = np.random.default_rng(seed)
  n = args.grid * args.grid
  return {
      "psi_inputs": rng.normal(size=(args.images, n, args.psi_dim)).astype(np.float32),
      "graph_features": rng.normal(size=(args.images, n, args.graph_dim)).astype(np.float32),
      "image_grids": rng.uniform(size=(args.images, args.grid, args.grid, 3)).astype(np.float32),
  }


def jax_step_fn(args, batch):
  """One call = one jitted step (kernel + ψ + loss + grad + Adam), waiting for its result."""
  config = _config(args)
  step = step_lib.make_train_step(config)
  return _stepper(step, step_lib.init_state(config, args.psi_dim),
                  {k: jnp.asarray(v) for k, v in batch.items()})


def _stepper(step, state, batch):
  """``run()``: one step on ``batch`` from the previous call's state, waiting for its result."""
  holder = [state]

  def run():
    new, metrics = step(holder[0], batch)
    jax.block_until_ready((new, metrics))
    holder[0] = new
  return run


def _crops(args, patch: int, seed=0) -> np.ndarray:
  """(B, S, S, 3) uint8 crops, S = grid·patch (random pixels: no cost here depends on content)."""
  side = args.grid * patch
  return np.random.default_rng(seed).integers(0, 256, (args.images, side, side, 3), np.uint8)


def jax_full_step_fn(args, backbone, crops):
  """One call = one jitted step with the frozen backbone inside (`make_image_train_step`)."""
  config = _config(args)
  step = step_lib.make_image_train_step(config, backbone)
  return _stepper(step, step_lib.init_state(config, 3 * int(backbone.config.width)),
                  {"images": jnp.asarray(crops)})


def paired_times(fns: dict, repeats: int) -> dict[str, list[float]]:
  """Seconds of each function per repeat, the functions called in turn within every repeat
  (so a change of machine load hits both sides of a ratio alike); after one untimed warm-up
  call each, whose time (compilation included) is returned under ``"<name>_first"``."""
  times = {}
  for name, fn in fns.items():
    times[f"{name}_first"] = [testing.timed_call(fn)[1]]
    times[name] = []
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(testing.timed_call(fn)[1])
  return times


def kernel_memory(args, batch, form: str, block_size) -> dict:
  """XLA memory analysis of building the kernel and applying it once (no ψ, no loss)."""
  feats, grids = jnp.asarray(batch["graph_features"]), jnp.asarray(batch["image_grids"])
  p = jax.ShapeDtypeStruct((feats.shape[0] * feats.shape[1], args.K), jnp.float32)

  def fn(f, g, x):
    return graphs.batch_kernel_matmul(f, g, k=args.k, alpha=0.3, block_size=block_size,
                                      form=form)(x)
  compiled = jax.jit(fn).lower(feats, grids, p).compile()
  mem = compiled.memory_analysis()
  return {"temp_mib": mem.temp_size_in_bytes / MIB, "output_mib": mem.output_size_in_bytes / MIB}


# ----------------------------------------------------------------------------- PyTorch reference


def torch_backbone_inputs(backbone, crops, device: str, dtype: str = "float32"):
  """``inputs()`` → (ψ inputs, graph features, pixel grids) of ``crops`` by HF Dinov2Model: the
  backbone part of the reference step (run on every call, like the JAX full step); with
  ``dtype="bfloat16"`` the model runs under ``torch.autocast`` in bfloat16 and its outputs are
  returned in float32, as the JAX step casts them."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  cfg = backbone.config
  model = reference.hf_model(cfg, backbone.params, attn_implementation="sdpa").to(device)
  low, mid = psi_lib.feature_levels(cfg.depth)
  grid = (crops.shape[1] // cfg.patch_size, crops.shape[2] // cfg.patch_size)
  uint8 = torch.from_numpy(crops).to(device)

  autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")

  def inputs():
    rgb = uint8.permute(0, 3, 1, 2).float() / 255.0
    pixels = (rgb - torch.tensor(cfg.mean, device=device)[:, None, None]) / torch.tensor(
        cfg.std, device=device)[:, None, None]
    with autocast:
      out = reference.hf_features(model, pixels, cfg)
    x = torch.cat([out["blocks"][low], out["blocks"][mid], out["keys"]], dim=-1).float()
    grids = F.interpolate(rgb, grid, mode="bilinear", align_corners=False)
    return x, out["keys"].float().clone(), grids.permute(0, 2, 3, 1).contiguous()
  return inputs


def torch_step_fn(args, batch, device: str, inputs=None):
  """The reference step; ``inputs()`` (e.g. `torch_backbone_inputs`) gives each step's (ψ
  inputs, graph features, grids), else ``batch``'s arrays are used every step."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  heads, head_dim, mlp, blocks = 18, 64, 576, 2
  inner = heads * head_dim

  class Attention(nn.Module):
    def __init__(self, dim):
      super().__init__()
      self.qkv = nn.Linear(dim, 3 * inner, bias=False)
      self.out = nn.Linear(inner, dim)

    def forward(self, x):
      b, n, _ = x.shape
      q, k, v = self.qkv(x).view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
      q = q.softmax(dim=-1) * head_dim**-0.5
      k = k.softmax(dim=-2)
      context = torch.einsum("bhnd,bhne->bhde", k, v)
      out = torch.einsum("bhnd,bhde->bhne", q, context)
      return self.out(out.transpose(1, 2).reshape(b, n, inner))

  class Block(nn.Module):
    def __init__(self, dim):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
      self.attn = Attention(dim)
      self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class Psi(nn.Module):
    def __init__(self, dim, k):
      super().__init__()
      self.blocks = nn.Sequential(*[Block(dim) for _ in range(blocks)])
      self.norm = nn.LayerNorm(dim)
      self.head = nn.utils.parametrizations.orthogonal(nn.Linear(dim, k))

    def forward(self, x):
      return self.head(self.norm(self.blocks(x)))

  if inputs is None:
    fixed = tuple(torch.from_numpy(batch[k]).to(device)
                  for k in ("psi_inputs", "graph_features", "image_grids"))
    inputs = lambda: fixed
  x, feats, _ = inputs()
  psi = Psi(x.shape[-1], args.K).to(device)
  opt = torch.optim.Adam(psi.parameters(), lr=1e-3)
  b, n_img = feats.shape[:2]
  beta, t, alpha = 20.48 / args.K, 0.01, 0.3

  def pixel_block(grid):
    h, w, _ = grid.shape
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=device),
                            torch.linspace(0, 1, w, device=device), indexing="ij")
    adj = torch.zeros(h * w, h * w, device=device)
    for k, lam in ((10, 2.0), (5, 0.1)):
      f = torch.cat([grid.reshape(-1, 3), lam * xs.reshape(-1, 1), lam * ys.reshape(-1, 1)], 1)
      dist = torch.cdist(f, f)
      dist.fill_diagonal_(float("inf"))
      idx = dist.topk(k, dim=1, largest=False).indices
      adj.scatter_(1, idx, 1.0)
    adj = torch.maximum(adj, adj.T)
    d = adj.sum(1).rsqrt()
    return d[:, None] * adj * d[None, :]

  def step():
    x, feats, grids = inputs()
    with torch.no_grad():
      f = F.normalize(feats.reshape(b * n_img, -1), dim=-1)
      sim = f @ f.T
      sim.fill_diagonal_(float("-inf"))
      vals, idx = sim.clamp(min=0).topk(args.k, dim=1)
      a = torch.zeros_like(sim).scatter_(1, idx, vals)
      a = (a + a.T) / 2
      d = a.sum(1).rsqrt()
      kernel = d[:, None] * a * d[None, :]
      kernel = kernel + alpha * torch.block_diag(*[pixel_block(g) for g in grids])
    logits = psi(x)
    soft = F.gumbel_softmax(logits, tau=0.5, hard=False)
    soft = soft / soft.norm(dim=(0, 1)).clamp(min=1)
    p = soft.reshape(b * n_img, -1) * t**0.5
    r = p.T @ kernel @ p
    r_hat = p.detach().T @ kernel @ p
    loss = -torch.trace(r) / args.K + beta * torch.triu(r_hat, 1).pow(2).sum() / args.K
    opt.zero_grad()
    loss.backward()
    opt.step()
    if device != "cpu":
      torch.cuda.synchronize()
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--grid", type=int, default=24)
  parser.add_argument("--K", type=int, default=256)
  parser.add_argument("--k", type=int, default=256)
  parser.add_argument("--psi_dim", type=int, default=1152)
  parser.add_argument("--graph_dim", type=int, default=384)
  parser.add_argument("--block_size", type=int, default=1024)
  parser.add_argument("--form", choices=graphs.NEURALEF_KERNEL_FORMS, default="dense")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--torch_device", default="cpu")
  parser.add_argument("--device", choices=testing.BENCHMARK_DEVICES, default=None,
                      help="both sides on this device (sets --torch_device; gpu fails without "
                           "one); default: JAX's default device, torch on --torch_device")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="the backbone's compute dtype (--backbone), both sides")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--skip_memory", action="store_true",
                      help="skip the kernel's XLA memory analysis")
  parser.add_argument("--json", default="", help="also write the figures to this JSON file")
  parser.add_argument("--backbone", action="store_true",
                      help="the full step: uint8 crops through the frozen DINOv2 ViT-S/14 first")
  args = parser.parse_args()
  if args.dtype != "float32" and not args.backbone:
    parser.error("--dtype applies to the backbone: add --backbone")
  device_name = f"{jax.default_backend()} (JAX default)"
  if args.device:
    try:
      args.torch_device, device_name = testing.benchmark_device(args.device,
                                                                torch_peer=not args.skip_torch)
    except RuntimeError as e:
      parser.exit(2, f"error: {e}\n")

  batch = _inputs(args)
  tokens = args.images * args.grid * args.grid
  if args.backbone:
    net = backbones.load_pretrained("dinov2_vits14", dtype=args.dtype)
    crops = _crops(args, net.config.patch_size)
    args.psi_dim, args.graph_dim = 3 * net.config.width, net.config.width
  print(f"B·N = {args.images}×{args.grid}² = {tokens} tokens, K = {args.K}, k = {args.k}, "
        f"ψ input {args.psi_dim}, graph features {args.graph_dim}; JAX on "
        f"{jax.devices()[0].platform}, {args.repeats} repeats (median), device {device_name}"
        + (f"; full step from {crops.shape[1]}-px uint8 crops through the frozen "
           f"{net.config.name}" if args.backbone else ""))
  fns = {"jax": jax_full_step_fn(args, net, crops) if args.backbone else jax_step_fn(args, batch)}
  if not args.skip_torch:
    import torch  # pylint: disable=import-outside-toplevel
    inputs = (torch_backbone_inputs(net, crops, args.torch_device, args.dtype) if args.backbone
              else None)
    fns["torch"] = torch_step_fn(args, batch, args.torch_device, inputs)
  load_before = os.getloadavg()[0]
  times = paired_times(fns, args.repeats)
  t_jax = statistics.median(times["jax"])
  print(f"JAX  step ({args.form}, block {args.block_size}): {t_jax:8.3f} s  "
        f"{tokens / t_jax:10.0f} tokens/s  {args.images / t_jax:6.2f} images/s  (first call, with compilation: "
        f"{times['jax_first'][0]:.1f} s)")
  if not args.skip_torch:
    t_torch = statistics.median(times["torch"])
    ratios = [b / a for a, b in zip(times["jax"], times["torch"])]
    print(f"torch step (reference, {args.torch_device}, {torch.get_num_threads()} threads): "
          f"{t_torch:8.3f} s  {tokens / t_torch:10.0f} tokens/s  {args.images / t_torch:6.2f} "
          f"images/s  (first call "
          f"{times['torch_first'][0]:.1f} s)")
    print(f"speed-up JAX / torch: {t_torch / t_jax:.2f}× (ratio of medians); per interleaved "
          f"pair: {', '.join(f'{r:.2f}' for r in ratios)} (median "
          f"{statistics.median(ratios):.2f}×)")
  print(f"per-repeat seconds: {json.dumps({k: [round(t, 2) for t in v] for k, v in times.items()})}"
        f"; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
  if args.json:
    record = {"benchmark": "neuralef_full_step" if args.backbone else "neuralef_step",
              "device": device_name, "dtype": args.dtype, "images": args.images,
              "grid": args.grid, "K": args.K, "k": args.k, "repeats": args.repeats,
              "ours_images_per_s": args.images / t_jax,
              "reference_images_per_s": None if args.skip_torch else args.images / t_torch,
              "seconds": times}
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)
  if args.skip_memory:
    return
  print("kernel construction + one product, XLA memory analysis:")
  for form in graphs.NEURALEF_KERNEL_FORMS:
    for block in (None, args.block_size):
      mem = kernel_memory(args, batch, form, block)
      print(f"  form={form:5s} block_size={str(block):5s}  temp {mem['temp_mib']:9.1f} MiB  "
            f"output {mem['output_mib']:7.1f} MiB")


if __name__ == "__main__":
  main()
