"""DSM throughput: the whole segment pipeline, and the spectral stage against DSM's SciPy path.

In one run, on a batch of real photos (the bundled ones, resized so the shorter side is --size
and centre-cropped to --size × --size, cycled to fill the batch):

* pipeline: backbone keys → affinity → K eigenpairs → Fiedler mask, largest component, box,
  multi-region K-means, mask at image resolution: one jitted call per batch; images/s.
* spectral stage alone (graph + eigenvectors): ``dsm.spectral_decomposition`` (jitted, batched)
  vs the DSM reference's path on the same features: NumPy ``relu(F̂ F̂ᵀ)``, dense ``D``, then
  ``scipy.sparse.linalg.eigsh(D − W, k, sigma=0, which='LM', M=D)`` image by image; with the
  largest eigenvalue difference between the two as a check.

Usage: PYTHONPATH=. python benchmarks/dsm.py [--batch 4] [--size 448] [--repeats 5] [--k 20]
  [--method auto] [--weights pretrained|random]
Runs unchanged on a GPU (JAX picks the device; SciPy stays on the CPU). Times are medians after
one warm-up call; the first call (compile) is reported separately.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from spectral_jax import backbones, dsm
from spectral_jax.data import samples


def _timings(fn, repeats):
  """(output, seconds of the first call incl. compile, median seconds of ``repeats`` more)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return out, first, float(np.median(times))


def _affinity_and_degree(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """DSM's dense graph for one image, in the features' dtype: W = max(0, f̂ f̂ᵀ) with unit-norm
  rows f̂, and D = diag(W 1)."""
  f = features / np.linalg.norm(features, axis=-1, keepdims=True)
  w = f @ f.T
  w = w * (w > 0)
  return w, np.diag(w.sum(axis=1))


def scipy_reference(features: np.ndarray, k: int) -> np.ndarray:
  """DSM's spectral stage for one image: dense W and D, shift-invert eigsh (SPEC §3)."""
  w, d = _affinity_and_degree(features)
  try:
    lam, _ = scipy.sparse.linalg.eigsh(d - w, k=k, sigma=0, which="LM", M=d)
  except Exception:  # pylint: disable=broad-except  # the reference's fallback
    lam, _ = scipy.sparse.linalg.eigsh(d - w, k=k, which="SM", M=d)
  return np.sort(lam)


def dense_float64_reference(features: np.ndarray, k: int) -> np.ndarray:
  """The k smallest eigenvalues of (D − W) y = λ D y for one image, dense float64 LAPACK: the
  yardstick for both solvers. eigsh's shift-invert at σ = 0 (D − W is singular) starts from a
  random vector and its error varies from run to run: 7.5e-7, 2e-5 and 2.5e-4 in three runs
  on the sample photos, while spectral_jax's stayed at 1.8e-7."""
  w, d = _affinity_and_degree(features.astype(np.float64))
  return scipy.linalg.eigh(d - w, d, eigvals_only=True, subset_by_index=[0, k - 1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--size", type=int, default=448)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--k", type=int, default=dsm.NUM_EIGENVECTORS)
  parser.add_argument("--method", default="auto", help="eigensolver: auto, eigh, lobpcg")
  parser.add_argument("--weights", default="pretrained", choices=("pretrained", "random"))
  parser.add_argument("--scipy_images", type=int, default=0,
                      help="images for the SciPy path (default: the whole batch)")
  args = parser.parse_args()

  name = "dinov2_vits14"
  if args.weights == "pretrained":
    backbone = backbones.load_pretrained(name)
  else:
    backbone = backbones.init_backbone(backbones.get_config(name))
  p = backbone.config.patch_size
  images = jnp.asarray(samples.square_photos(args.size, args.batch))
  grid = (args.size // p, args.size // p)
  n = grid[0] * grid[1]
  keys = jax.random.split(jax.random.key(0), args.batch)
  print(f"DSM benchmark on {jax.devices()[0].platform}: batch {args.batch} of {args.size}² px, "
        f"{name} ({args.weights}), grid {grid[0]}×{grid[1]} = {n} patches, K = {args.k}, "
        f"method {args.method}")

  @functools.partial(jax.jit, compiler_options=backbones.compiler_options())
  def pipeline(backbone, images, keys):  # parameters as an argument, not baked-in constants
    feats = backbones.extract_features(backbone, images, blocks=(-1,))
    res = dsm.analyse(feats.keys, grid, patch_size=p, rngs=keys, num_eigenvectors=args.k,
                      method=args.method)
    hw = images.shape[1:3]
    mask = dsm.object_mask(res.fiedler, patch_size=p, input_hw=hw, output_hw=hw)
    return res.box, mask, res.segments

  _, first, t_pipe = _timings(lambda: pipeline(backbone, images, keys), args.repeats)
  print(f"whole pipeline : {t_pipe:.3f} s / batch = {args.batch / t_pipe:.2f} images/s "
        f"(first call incl. compile {first:.1f} s)")

  feats = jax.block_until_ready(backbones.extract_features(backbone, images, blocks=(-1,)).keys)
  spectral = jax.jit(functools.partial(dsm.spectral_decomposition, num_eigenvectors=args.k,
                                       method=args.method))
  (lam, _), first, t_jax = _timings(lambda: spectral(feats), args.repeats)
  m = args.scipy_images or args.batch
  host = np.asarray(feats[:m], np.float32)
  ref, _, t_scipy = _timings(lambda: np.stack([scipy_reference(f, args.k) for f in host]),
                            args.repeats)
  t_scipy *= args.batch / m  # per batch of args.batch images
  err = float(np.max(np.abs(np.asarray(lam[:m]) - ref)))
  exact = np.stack([dense_float64_reference(f, args.k) for f in host])
  err_jax, err_scipy = (float(np.max(np.abs(x - exact))) for x in (np.asarray(lam[:m]), ref))
  print(f"spectral stage : spectral_jax {t_jax:.3f} s / batch ({args.batch / t_jax:.2f} img/s, "
        f"first call {first:.1f} s); SciPy eigsh {t_scipy:.3f} s / batch "
        f"({args.batch / t_scipy:.2f} img/s, timed on {m} image(s))")
  print(f"  ratio SciPy / spectral_jax: {t_scipy / t_jax:.2f}×; max |Δλ| = {err:.2e}; against "
        f"dense float64 eigh: spectral_jax {err_jax:.1e}, SciPy eigsh {err_scipy:.1e}")
  print(f"  the spectral stage is {t_jax / t_pipe:.0%} of the pipeline time")


if __name__ == "__main__":
  main()
