"""Eigenfunction objectives on real ViT batch kernels: which ones learn ordered eigenvectors.

For each objective of ``neuralef.objectives.OBJECTIVES`` (plus the segmentor's reference
constants, ``segmentor@reference``) × each ψ:

- ``free``: a free matrix Ψ (n, K) on the training batch (evaluated on that batch: it has no
  held-out values);
- ``mlp``: a 2-hidden-layer tanh MLP on ψ's input features (per token);
- ``psi``: the segmentor's ψ network (``Psi``, linear-attention blocks and its default head,
  the reference's Householder map; the
  segmentor objectives see its Gumbel-softmax outputs at the reference τ schedule, the others
  its raw logits, as each objective calls for),

- ``ridge`` (no objective: an oracle): the training kernel's top-K eigenvectors regressed on
  ψ's input features (ridge, ``--ridge`` relative to the features' mean squared norm), read on
  the held-out batch: how much of the held-out eigenvectors any linear head on these fixed
  features could give when it fits the training eigenvectors,

trained with Adam on the NeuralEF batch kernel (``graphs.neuralef_kernel``, SPEC §2) of the
offline DINOv2 ViT-S/14 features of bundled photos, then measured on a fixed held-out batch of
other photos (``fidelity``; ``--eval_train`` adds a row measured on the training batch itself,
which separates fitting the training kernel from generalising to other photos): per-index |cos|
with the kernel's eigenvectors (top 4),
principal angles of the top 4/16/64 subspaces (those ≤ K), Rayleigh quotients over λ, the
number of columns the argmax uses, and seconds per training step (after compilation).

Printed: one JSON line per run, then a Markdown table.

Run: PYTHONPATH=. python benchmarks/eigenfunctions.py [--size 224 --train 4 --K 16
     --steps 600 --psi_steps 300 --variants free,mlp,psi --objectives segmentor,neuralef,...]
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_jax import backbones, graphs
from spectral_jax.data import samples
from spectral_jax.neuralef import features as features_lib
from spectral_jax.neuralef import fidelity as fid
from spectral_jax.neuralef import loss as loss_lib
from spectral_jax.neuralef import objectives as obj_lib
from spectral_jax.neuralef import psi as psi_lib

SEGMENTOR = ("segmentor", "segmentor@reference")


def objective_fn(name: str):
  """``fn(psi, kernel) -> (loss, aux)`` for a name of OBJECTIVES or ``segmentor@reference``."""
  if name == "segmentor@reference":
    return lambda p, g: obj_lib.segmentor_loss(p, g, **obj_lib.SEGMENTOR_REFERENCE)
  return obj_lib.OBJECTIVES[name]


class MLP(nn.Module):
  k: int
  hidden: int = 256

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(self.k)(x)


def batch_of(backbone, images: np.ndarray, graph_k: int) -> dict:
  """Features of a batch of photos, its dense NeuralEF kernel and the kernel's n."""
  batch = features_lib.training_batch(backbone, jnp.asarray(images))
  n = batch["psi_inputs"].shape[0] * batch["psi_inputs"].shape[1]
  g = graphs.neuralef_kernel(batch["graph_features"], batch["image_grids"],
                             k=min(graph_k, n - 1))
  return dict(batch, kernel=jnp.asarray(g, jnp.float32), n=n)


def _adam(lr: float, steps: int):
  return optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))


def _fit(loss_fn, params, steps: int, lr: float):
  """Adam on ``loss_fn(params, step)``; returns (params, seconds per step after compile)."""
  tx = _adam(lr, steps)

  @jax.jit
  def step(params, opt_state, i):
    grads = jax.grad(loss_fn)(params, i)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  params, opt_state = step(params, opt_state, 0)  # compile
  jax.block_until_ready(params)
  t0 = time.perf_counter()
  for i in range(1, steps):
    params, opt_state = step(params, opt_state, i)
  jax.block_until_ready(params)
  return params, (time.perf_counter() - t0) / max(steps - 1, 1)


def measure(out: jax.Array, batch: dict, k: int) -> dict:
  """ψ's outputs (n, K) against ``batch``'s kernel: |cos| of the top 4 in order, largest
  principal angles of the top 4/16/64 subspaces, Rayleigh quotient over λ, columns used."""
  # cosines ignore column scales; rescaling by the largest entry keeps squares of a column the
  # argmax never picks (softmax values ~1e-20) from underflowing to a 0/0 norm
  out = out / jnp.maximum(jnp.max(jnp.abs(out), axis=0), 1e-30)
  ref = fid.kernel_eigenpairs(batch["kernel"], batch["n"], k, method="eigh")
  res = fid.fidelity(out, ref, batch["kernel"], dims=(4, 16, 64))
  lam = np.linalg.eigvalsh(np.asarray(batch["kernel"], np.float64))[::-1]
  summ = fid.summary(res)
  cos = np.asarray(res["cos_in_order"])
  return {"n_eval": batch["n"], "cos_top4": [round(float(c), 3) for c in cos[:4]],
          "angle_max_deg": {m: round(summ[f"angle_max_deg@{m}"], 1)
                            for m in fid.fidelity_dims(k, (4, 16, 64))},
          "rayleigh_over_lambda@K": round(summ[f"rayleigh_over_lambda_mean@{k}"], 3),
          "columns_used": int(np.unique(np.argmax(np.asarray(out), axis=-1)).size),
          # the kernel's spectrum: how well separated the eigenvectors ψ is compared with are
          "lambda_top5": [round(float(v), 4) for v in lam[:5]],
          "lambda_k_k+1": [round(float(v), 4) for v in lam[k - 1:k + 1]]}


def ridge_oracle(train: dict, test: dict, k: int, alpha: float) -> list[dict]:
  """The ``ridge`` rows: [X, 1]·W fit to the training kernel's top-K eigenvectors."""
  u = np.asarray(fid.kernel_eigenpairs(train["kernel"], train["n"], k, method="eigh")
                 .eigenvectors, np.float64)
  design = lambda b: np.concatenate([np.asarray(b["psi_inputs"], np.float64).reshape(b["n"], -1),
                                     np.ones((b["n"], 1))], axis=1)
  x = design(train)
  lam = alpha * np.mean(np.sum(x * x, axis=1))
  w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ u)
  return [{"variant": "ridge", "objective": f"oracle (ridge {alpha:g})", "K": k,
           "n_train": train["n"], "eval": name,
           **measure(jnp.asarray(design(b) @ w, jnp.float32), b, k), "sec_per_step": 0.0}
          for name, b in (("held-out", test), ("train", train))]


def run(variant: str, objective: str, train: dict, test: dict, k: int, args) -> list[dict]:
  """Trains one (ψ, objective) pair; returns its measurements on the held-out batch (and, with
  ``args.eval_train`` for a network, on the training batch)."""
  fn = objective_fn(objective)
  g = train["kernel"]
  key = jax.random.key(args.seed)
  tau_fn = loss_lib.tau_schedule(args.psi_steps)
  segmentor = objective in SEGMENTOR
  if variant == "free":
    p0 = 0.1 * jax.random.normal(key, (train["n"], k), jnp.float32)
    params, sec = _fit(lambda p, i: fn(p, g)[0], p0, args.steps, args.free_lr)
    outs = {"train": (params, train)}
  else:
    if variant == "mlp":
      net = MLP(k)
      x_train = train["psi_inputs"].reshape(train["n"], -1)
      x_test = test["psi_inputs"].reshape(test["n"], -1)
      apply = lambda p, x: net.apply(p, x)
      steps = args.steps
    else:
      net = psi_lib.Psi(k=k, head=args.head)
      x_train, x_test = train["psi_inputs"], test["psi_inputs"]
      apply = lambda p, x: net.apply(p, x)[0].reshape(-1, k)
      steps = args.psi_steps
    params = net.init(key, x_train[:1])

    def loss(p, i):
      logits = apply(p, x_train)
      if segmentor:  # the segmentor's training transform: Gumbel-softmax at τ(step)
        logits = loss_lib.gumbel_softmax(jax.random.fold_in(key, i), logits, tau_fn(i))
      return fn(logits, g)[0]

    params, sec = _fit(loss, params, steps, args.net_lr)
    # evaluation: the segmentor's ψ is softmax(logits/τ_min) (no noise); the others' raw
    read = lambda x: fid.psi_outputs(apply(params, x), 0.3, "softmax" if segmentor else "logits")
    outs = {"held-out": (read(x_test), test)}
    if args.eval_train:
      outs["train"] = (read(x_train), train)
  return [{"variant": variant, "objective": objective, "K": k, "n_train": train["n"],
           "eval": name, **measure(out, batch, k), "sec_per_step": round(sec, 4)}
          for name, (out, batch) in outs.items()]


def table(rows: list[dict]) -> str:
  dims = sorted({m for r in rows for m in r["angle_max_deg"]})
  head = ("| ψ | objective | measured on | abs cos u₁…u₄ | " + " | ".join(f"∠max top {m} (°)" for m in dims)
          + " | ψᵀGψ/λ | columns used | s/step |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    angles = " | ".join(str(r["angle_max_deg"].get(m, "")) for m in dims)
    lines.append(f"| {r['variant']} | {r['objective']} | {r['eval']} "
                 f"| {', '.join(map(str, r['cos_top4']))} "
                 f"| {angles} | {r['rayleigh_over_lambda@K']} | {r['columns_used']} "
                 f"| {r['sec_per_step']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=224, help="square photo side (px)")
  parser.add_argument("--train", type=int, default=4, help="photos in the training batch")
  parser.add_argument("--K", type=int, default=16)
  parser.add_argument("--graph_k", type=int, default=256, help="feature neighbours of G")
  parser.add_argument("--steps", type=int, default=600, help="Adam steps, free matrix / MLP")
  parser.add_argument("--psi_steps", type=int, default=300, help="Adam steps, segmentor ψ")
  parser.add_argument("--free_lr", type=float, default=3e-2)
  parser.add_argument("--net_lr", type=float, default=1e-3, help="MLP and ψ (reference 1e-3)")
  parser.add_argument("--variants", default="free,mlp,psi", help="free, mlp, psi, ridge")
  parser.add_argument("--objectives", default=",".join(list(obj_lib.OBJECTIVES)
                                                       + ["segmentor@reference"]))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ridge", type=float, default=1e-3,
                      help="ridge variant: penalty relative to the mean squared feature norm")
  parser.add_argument("--eval_train", action="store_true",
                      help="networks: also measure on the training batch")
  parser.add_argument("--head", default="householder", choices=psi_lib.HEADS,
                      help="the segmentor ψ's head")
  args = parser.parse_args()

  photos = samples.square_photos(args.size, len(samples.bundled_photos()))
  if not 1 <= args.train < len(photos):
    raise SystemExit(f"--train must leave held-out photos: 1 ≤ train < {len(photos)}")
  backbone = backbones.load_pretrained("dinov2_vits14")
  train = batch_of(backbone, photos[:args.train], args.graph_k)
  test = batch_of(backbone, photos[args.train:], args.graph_k)
  rows = []
  for variant in args.variants.split(","):
    if variant == "ridge":
      for row in ridge_oracle(train, test, args.K, args.ridge):
        print(json.dumps(row), flush=True)
        rows.append(row)
      continue
    for objective in args.objectives.split(","):
      for row in run(variant, objective, train, test, args.K, args):
        print(json.dumps(row), flush=True)
        rows.append(row)
  print(table(rows))


if __name__ == "__main__":
  main()
