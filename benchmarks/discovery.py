"""Discovery methods per image against their reference formulations, at n = 1024 and 3600.

Keys: the offline DINOv2 ViT-S/14's last-block keys of bundled photos (square crops of 448 px
→ 32×32 = 1024 patches and 840 px → 60×60 = 3600 patches; ``--synthetic`` uses random
clustered features of the same sizes instead, no backbone). Per method and size, on a batch
of --batch images:

* ours: the jitted, vmapped library function on device — ``dsm.tokencut.tokencut``,
  ``dsm.tokencut.maskcut`` (N cuts as one ``lax.scan``), DSM's ``dsm.spectral_decomposition``
  (K = 20) + ``dsm.localise``; the eigensolver's "auto" path (LOBPCG above 450 nodes).
* reference: per image on the host, as the published code runs it — TokenCut / MaskCut: one
  dense float64 ``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])`` per cut
  (``testing.tokencut_reference`` / ``maskcut_reference``); DSM: ``scipy.sparse.linalg.eigsh``
  (``testing.dsm_eigsh_reference``) + ``scipy.ndimage.label``'s largest component.

Both sides use the same graph settings (TokenCut/MaskCut: τ as the --tau_quantile quantile of
the similarities, since the published fixed τ makes DINOv2's key graph complete). Prints
medians over --repeats (ours after a compile warm-up; the reference without warm-up), the
ratio reference / ours per image, and how many images' masks agree exactly.

Usage: PYTHONPATH=. python benchmarks/discovery.py [--batch 2] [--repeats 3] [--sizes 1024,3600]
  [--methods tokencut,maskcut,dsm] [--tau_quantile Q] [--synthetic]
"""

from __future__ import annotations

import argparse
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import backbones, dsm, testing
from spectral_jax.datasets import samples
from spectral_jax.dsm import tokencut as tc

PATCH = 14


def real_keys(n: int, batch: int) -> np.ndarray:
  """(batch, n, 384) keys of bundled photos cropped square to √n·14 px."""
  side = math.isqrt(n)
  backbone = backbones.load_pretrained("dinov2_vits14")
  images = jnp.asarray(samples.square_photos(side * PATCH, batch))
  feats = jax.jit(lambda b, x: backbones.extract_features(b, x, blocks=(-1,)).keys,
                  compiler_options=backbones.compiler_options() or None)(backbone, images)
  return np.asarray(feats, np.float32)


def synthetic_keys(n: int, batch: int, seed: int = 0) -> np.ndarray:
  """(batch, n, 64) features: a few smooth blobs on the √n × √n grid plus noise."""
  rng = np.random.default_rng(seed)
  side = math.isqrt(n)
  yy, xx = np.mgrid[:side, :side] / side
  out = []
  for _ in range(batch):
    f = rng.normal(size=(n, 64)) * 0.3 + rng.normal(size=64)
    for _ in range(3):
      cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
      blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).ravel()
      f[blob] += rng.normal(size=64)
    out.append(f)
  return np.stack(out).astype(np.float32)


def ours_fn(method: str, grid, q: float):
  valid = jnp.ones(grid, bool)
  # The graph settings the pipeline runs the method with (dsm.PipelineConfig, τ = q).
  config = dsm.PipelineConfig(discovery=method, tau_quantile=q)
  if method == "tokencut":
    one = lambda f: tc.tokencut(f, valid, **config.cut_settings())[1][None]
  elif method == "maskcut":
    one = lambda f: tc.maskcut(f, valid, num_cuts=config.max_objects,
                               **config.cut_settings())[1]
  else:
    def one(f):
      _, y = dsm.spectral_decomposition(f, num_eigenvectors=dsm.NUM_EIGENVECTORS)
      fiedler = dsm.fiedler_map(y, grid)
      return dsm.localise(dsm.foreground_patches(fiedler), patch_size=PATCH)[0][None]
  return jax.jit(jax.vmap(one))


def reference_fn(method: str, grid, q: float):
  q = q or None   # 0: the published fixed τ, as PipelineConfig.tau_quantile
  if method == "tokencut":
    return lambda f: testing.tokencut_reference(f, grid, tau_quantile=q)["component"][None]
  if method == "maskcut":
    return lambda f: testing.maskcut_reference(f, grid, tau_quantile=q)["masks"]

  def dsm_ref(f):
    _, y = testing.dsm_eigsh_reference(testing.dsm_affinity_np(f), dsm.NUM_EIGENVECTORS)
    return testing.largest_component_np((y[:, 1] > 0).reshape(grid))[None]
  return dsm_ref


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sizes", default="1024,3600")
  parser.add_argument("--methods", default="tokencut,maskcut,dsm")
  parser.add_argument("--tau_quantile", type=float, default=dsm.PipelineConfig().tau_quantile,
                      help="τ as this quantile of the similarities (0: the published τ)")
  parser.add_argument("--synthetic", action="store_true")
  args = parser.parse_args()
  print(f"discovery on {jax.devices()[0].platform}: batch {args.batch}, {args.repeats} repeats "
        f"(medians), τ = q{args.tau_quantile:g} of the similarities, "
        f"{'synthetic features' if args.synthetic else 'DINOv2 ViT-S/14 keys'}")
  print(f"{'method':<9} {'n':>5}  {'ours s/img':>10}  {'reference s/img':>15}  {'ratio':>7}  "
        "same masks")
  for n in (int(s) for s in args.sizes.split(",")):
    side = math.isqrt(n)
    if side * side != n:
      raise SystemExit(f"--sizes must be square patch counts; got {n}")
    grid = (side, side)
    feats = (synthetic_keys if args.synthetic else real_keys)(n, args.batch)
    dev = jax.device_put(feats)
    for method in args.methods.split(","):
      ours, ref = ours_fn(method, grid, args.tau_quantile), reference_fn(method, grid,
                                                                         args.tau_quantile)
      t_ours = testing.median_time(lambda: ours(dev), args.repeats, warmup=1)
      runs = [testing.timed_call(lambda: [ref(f) for f in feats]) for _ in range(args.repeats)]
      t_ref = statistics.median(t for _, t in runs)
      got = np.asarray(ours(dev))
      same = sum(np.array_equal(g, r) for g, r in zip(got, runs[-1][0]))
      b = args.batch
      print(f"{method:<9} {n:>5}  {t_ours / b:10.3f}  {t_ref / b:15.3f}  "
            f"{t_ref / t_ours:6.1f}×  {same}/{b}", flush=True)


if __name__ == "__main__":
  main()
