"""DSM on the user's path against the reference pipeline, per stage, in one run.

Ours: ``dsm.batching.segment_photos`` over the bundled photos (resized so the shorter side is
--size and centre-cropped to --size², cycled to fill --batch) — the function the segment
command runs: bounded prefetch, padded batch, one call of the jitted ``dsm.make_pipeline``
program (backbone → graph → eigenvectors → mask, component, box, multi-region K-means), results
back to the host. Its stages are timed with the functions the program is made of, jitted alone
on the same batch: ``backbones.extract_features`` (masked as the pipeline runs it) and
``dsm.analyse`` (graph → eigenvectors → mask, component, box, segments). (Taking the spectral
stage as whole minus backbone fails: at 448 px it is ~10% of the whole, below the run-to-run
noise of the backbone.)

Reference (DSM's own recipe): Hugging Face ``Dinov2Model`` on PyTorch (SDPA attention, same
weights) for the last-block keys, then per image on the host: ``relu(F̂ F̂ᵀ)``, dense D,
``scipy.sparse.linalg.eigsh(D − W, k, sigma=0, M=D)``, the NumPy sign rule, the positive side's
largest ``scipy.ndimage.label`` component and its box, and scikit-learn ``KMeans`` (n_init=10)
on y₁..y_{k−1} for the multi-region segments with the border-majority background.

On a GPU (``--device gpu``) both backbones run on it (the reference's keys then come back to
the host for SciPy, as DSM's code does) and ``--dtype bfloat16`` computes both backbones in
bfloat16 (the reference's model and pixels cast, as ``benchmarks/backbone.py`` does); the
spectral stages stay float32. ``--json PATH`` writes the figures (``benchmarks/accelerator.sh``).

Usage: PYTHONPATH=. python benchmarks/dsm.py [--batch 4] [--size 448] [--repeats 3] [--k 20]
  [--no-torch] [--device cpu|gpu] [--dtype float32|bfloat16] [--json PATH]
Prints medians over --repeats after a warm-up (compiles) and the ratios reference / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from spectral_jax import backbones, dsm, testing
from spectral_jax.backbones import reference
from spectral_jax.datasets import samples
from spectral_jax.dsm import batching


def reference_spectral_stage(keys: np.ndarray, k: int, grid: tuple[int, int], patch_size: int,
                             num_segments: int = dsm.NUM_SEGMENTS, seed: int = 0):
  """DSM's host pipeline after the backbone for one image: (λ, box, segments)."""
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
  w = testing.dsm_affinity_np(keys)
  lam, y = testing.dsm_eigsh_reference(w, k)
  fg = (y[:, 1] > 0).reshape(grid)
  component = testing.largest_component_np(fg)
  box = testing.box_np(component, patch_size)
  labels = KMeans(num_segments, n_init=10, random_state=seed).fit_predict(y[:, 1:]).reshape(grid)
  border = np.concatenate([labels[:, 0], labels[:, -1], labels[0], labels[-1]])
  background = np.bincount(border, minlength=num_segments).argmax()
  segments = np.where(labels == background, 0, np.where(labels == 0, background, labels))
  return lam, box, segments


def _median(fn, repeats: int) -> float:
  return testing.median_time(fn, repeats, warmup=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--size", type=int, default=448)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--k", type=int, default=dsm.NUM_EIGENVECTORS)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch backbone")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
  parser.add_argument("--device", choices=testing.BENCHMARK_DEVICES, default=None,
                      help="both backbones on this device (gpu fails without one); default: "
                           "JAX's default device, torch on the CPU")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="both backbones' compute dtype")
  parser.add_argument("--json", default="", help="also write the figures to this JSON file")
  args = parser.parse_args()
  torch_device, device_name = "cpu", f"{jax.default_backend()} (JAX default)"
  if args.device:
    try:
      torch_device, device_name = testing.benchmark_device(args.device,
                                                           torch_peer=not args.no_torch)
    except RuntimeError as e:
      parser.exit(2, f"error: {e}\n")

  backbone = backbones.load_pretrained("dinov2_vits14", dtype=args.dtype)
  p = backbone.config.patch_size
  images = samples.square_photos(args.size, args.batch)  # (B, S, S, 3) float32 in [0, 1]
  photos = np.round(images * 255).astype(np.uint8)        # as decoded files arrive
  grid = (args.size // p, args.size // p)
  n = grid[0] * grid[1]
  # The reference recipe (one box from y₁): the figures compare its box with DSM's own code.
  config = dsm.PipelineConfig(num_eigenvectors=args.k, discovery="dsm")
  segmenter = dsm.make_pipeline(backbone, config)
  sources = [batching.Source(f"photo{i}", f"bench:{i}", (lambda a=a: a))
             for i, a in enumerate(photos)]

  def ours():
    return list(batching.segment_photos(segmenter, sources, image_size=args.size,
                                        batch_size=args.batch))

  print(f"DSM on {jax.devices()[0].platform}: batch {args.batch} of {args.size}² px, grid "
        f"{grid[0]}×{grid[1]} = {n} patches, K = {args.k}, backbones in {args.dtype}, "
        f"{args.repeats} repeats (medians); device {device_name}")
  t0 = time.perf_counter()
  results = ours()
  print(f"  first call (compiles) {time.perf_counter() - t0:.1f} s")
  t_ours = _median(ours, args.repeats)
  images = jax.device_put(photos.astype(np.float32) / 255.0)  # the pipeline's own pixels
  valid = jax.device_put(np.ones((args.batch,) + grid, bool))
  backbone_only = lambda: jax.block_until_ready(
      backbones.extract_features(backbone, images, blocks=(-1,), patch_valid=valid).keys)
  t_backbone = _median(backbone_only, args.repeats)
  rngs = jax.random.split(jax.random.key(0), args.batch)
  stage = jax.jit(lambda keys, r, v: dsm.analyse(
      keys, grid, patch_size=p, rngs=r, config=config, valid=v))
  keys_dev = backbone_only()
  t_spectral = _median(lambda: stage(keys_dev, rngs, valid), args.repeats)

  keys = np.asarray(backbone_only(), np.float32)
  if args.no_torch:
    t_torch = float("nan")
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = reference.hf_model(backbone.config, backbone.params, attn_implementation="sdpa")
    model = model.to(device=torch_device, dtype=dtype)
    pixels = reference.hf_pixels(photos.astype(np.float32) / 255.0, backbone.config,
                                 device=torch_device, dtype=dtype)
    # the keys on the host, where the reference's SciPy stage reads them (waits for the GPU)
    torch_keys = lambda: reference.hf_features(model, pixels, backbone.config)["keys"].float(
        ).cpu().numpy()
    t_torch = _median(torch_keys, args.repeats)
    keys_diff = float(np.abs(torch_keys() - keys).max())
  ref = lambda: [reference_spectral_stage(f, args.k, grid, p) for f in keys]
  t_ref_spectral = _median(ref, args.repeats)
  ref_out = ref()

  lam = np.stack([r.patches.eigenvalues for _, r, _ in results])
  boxes = np.stack([r.patches.box for _, r, _ in results])
  exact = np.stack([testing.dsm_eigh_reference(testing.dsm_affinity_np(f), args.k)[0]
                    for f in keys])
  err_ours = float(np.abs(lam - exact).max())
  err_ref = float(np.abs(np.stack([r[0] for r in ref_out]) - exact).max())
  same_boxes = int(sum(np.array_equal(b, r[1]) for b, r in zip(boxes, ref_out)))

  per = lambda t: f"{t / args.batch:.3f} s/img"
  print(f"  ours (segment_photos)   whole {per(t_ours)}  {args.batch / t_ours:.2f} img/s; "
        f"backbone {per(t_backbone)}, spectral stage {per(t_spectral)} (dsm.analyse)")
  if not args.no_torch:
    t_ref = t_torch + t_ref_spectral
    print(f"  reference (HF + SciPy)  whole {per(t_ref)}  {args.batch / t_ref:.2f} img/s; "
          f"backbone {per(t_torch)} (torch, {torch.get_num_threads()} threads), spectral "
          f"stage {per(t_ref_spectral)}; |Δkeys| = {keys_diff:.1e}")
    print(f"  ratio reference / ours: whole {t_ref / t_ours:.2f}×, backbone "
          f"{t_torch / t_backbone:.2f}×, spectral stage {t_ref_spectral / t_spectral:.2f}×")
  else:
    print(f"  reference spectral stage {per(t_ref_spectral)}; ratio {t_ref_spectral / t_spectral:.2f}×")
  print(f"  eigenvalues vs dense float64 eigh: ours {err_ours:.1e}, SciPy eigsh {err_ref:.1e}; "
        f"boxes equal to the reference's on {same_boxes}/{args.batch} images")
  if args.json:
    record = {"benchmark": "dsm_pipeline", "device": device_name, "dtype": args.dtype,
              "images": args.batch, "size": args.size, "k": args.k, "repeats": args.repeats,
              "ours_images_per_s": args.batch / t_ours,
              "reference_images_per_s": None if args.no_torch else args.batch / t_ref,
              "ours_backbone_s_per_image": t_backbone / args.batch,
              "ours_spectral_s_per_image": t_spectral / args.batch,
              "reference_spectral_s_per_image": t_ref_spectral / args.batch,
              "eigenvalue_error_ours": err_ours, "eigenvalue_error_reference": err_ref,
              "same_boxes": same_boxes}
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
