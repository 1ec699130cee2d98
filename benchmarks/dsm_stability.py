"""Stability of each DSM discovery method under perturbations at the eigensolver's tolerance
(issue 21 item 2).

A stage whose output flips when the eigenvectors move by the solver's own tolerance is not a
default. For each discovery method (``dsm.DISCOVERY_METHODS``, "dsm" with the border rule,
and multi_region with ``segment_assign="cluster_qr"``) this runs the segment command's
library path (``dsm.PhotoSegmenter`` with a ``dsm.PipelineConfig``, 448 px, nearest
upsampling, seed 0, the command's buckets) on the six bundled photos with the offline
DINOv2 ViT-S/14, once unperturbed (the command's settings: "auto" is LOBPCG at these sizes,
tolerance ``eigensolvers.default_tol``) and once per perturbation of the eigensolver:

  eigh     method="eigh" (dense float32, the other solver)
  tol/2    LOBPCG with the tolerance halved (``PipelineConfig.solver_tol``)
  tol*2    LOBPCG with the tolerance doubled
  eigh64   dense eigh in float64 (W cast to float64 inside the program): the "true" vectors
  (tol/10, tol*10 on request, ``--perturbations``)

and compares the photo-size outputs with the unperturbed run's: the share of pixels whose
object-mask label is kept; the share whose segment label is kept up to a permutation of the
segment ids (Hungarian matching on the confusion); whether the best box is the same (IoU ≥
0.9); the mean IoU of the boxes matched one-to-one (Hungarian, unmatched boxes count 0).
Prints, per photo and method, the minimum over the perturbations, a summary per method (the
minimum over photos) against the ≥ 99% criterion, and writes everything as JSON (``--out``).

  PYTHONPATH=. python benchmarks/dsm_stability.py [--out stability.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from spectral_jax import backbones, dsm, eigensolvers
from spectral_jax.datasets import samples
from spectral_jax.dsm import batching

SAME_BOX_IOU = 0.9   # boxes with at least this IoU count as the same box
CRITERION = 0.99     # the default must keep this share of pixels on every bundled photo
_LAPLACIAN = eigensolvers.laplacian_eigenvectors
TOL = eigensolvers.default_tol(jnp.float32)


def methods() -> dict[str, dsm.PipelineConfig]:
  """Each discovery method at the command's settings (TokenCut/MaskCut at the default
  tau_quantile), and reference DSM with the border rule."""
  out = {m: dsm.PipelineConfig(discovery=m) for m in dsm.DISCOVERY_METHODS}
  out["dsm_border"] = dsm.PipelineConfig(discovery="dsm", foreground="border")
  # multi_region with the deterministic discretisation (clustering.cluster_qr) for its segments
  out["multi_region_qr"] = dsm.PipelineConfig(discovery="multi_region",
                                              segment_assign="cluster_qr")
  return out


PERTURBATIONS = {  # name → PipelineConfig fields (eigh64: float64 eigh, see float64_solver)
    "eigh": dict(method="eigh"),
    "tol/2": dict(method="lobpcg", solver_tol=TOL / 2),
    "tol*2": dict(method="lobpcg", solver_tol=TOL * 2),
    "eigh64": dict(method="eigh"),
    "tol/10": dict(method="lobpcg", solver_tol=TOL / 10),   # not in the default run
    "tol*10": dict(method="lobpcg", solver_tol=TOL * 10),
}
DEFAULT_PERTURBATIONS = ("eigh", "tol/2", "tol*2", "eigh64")


def _float64_eigh(w, k, *, method="auto", tol=None, return_info=False, valid=None, **kwargs):
  """``eigensolvers.laplacian_eigenvectors`` by dense eigh in float64 (only inside
  :func:`float64_solver`): the library's own solve, run eagerly on the host through a
  ``pure_callback`` with x64 on (a float64 solve traced inside MaskCut's scan does not keep
  its dtype), its results cast to W's dtype."""
  del method, tol

  def solve(w_host, valid_host):
    with jax.enable_x64(True):
      out = _LAPLACIAN(np.asarray(w_host, np.float64), k, method="eigh", return_info=True,
                       valid=None if valid is None else valid_host, check_inputs=False,
                       **kwargs)
      return jax.tree.map(lambda x, s: np.asarray(x).astype(s.dtype), out, shapes)

  shapes = jax.eval_shape(lambda a, v: _LAPLACIAN(a, k, method="eigh", return_info=True,
                                                  valid=None if valid is None else v,
                                                  check_inputs=False, **kwargs),
                          w, w[..., 0] > 0 if valid is None else valid)
  lam, y, info = jax.pure_callback(solve, shapes, w, w[..., 0] > 0 if valid is None else valid,
                                   vmap_method="sequential")
  return (lam, y, info) if return_info else (lam, y)


@contextlib.contextmanager
def float64_solver():
  """Every eigensolve traced inside (the graph's and TokenCut/MaskCut's cuts) is float64 eigh.
  The programs must be traced inside: use a fresh PhotoSegmenter."""
  with mock.patch.object(eigensolvers, "laplacian_eigenvectors", _float64_eigh):
    yield


def box_iou(a, b) -> float:
  """IoU of two [x0, y0, x1, y1] boxes (x1, y1 exclusive); two empty boxes: 1."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  area = lambda r: max(r[2] - r[0], 0) * max(r[3] - r[1], 0)
  iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
  ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
  union = area(a) + area(b) - iw * ih
  return 1.0 if union == 0 else float(iw * ih / union)


def matched_box_iou(a, b) -> float:
  """Mean IoU of the boxes of two lists matched one-to-one (Hungarian), over the longer list
  (an unmatched box counts 0); two empty lists: 1."""
  a, b = np.reshape(a, (-1, 4)), np.reshape(b, (-1, 4))
  if len(a) == 0 and len(b) == 0:
    return 1.0
  if len(a) == 0 or len(b) == 0:
    return 0.0
  iou = np.array([[box_iou(x, y) for y in b] for x in a])
  rows, cols = optimize.linear_sum_assignment(iou, maximize=True)
  return float(iou[rows, cols].sum() / max(len(a), len(b)))


def labels_kept(a: np.ndarray, b: np.ndarray) -> float:
  """Share of pixels whose label in ``b`` is their label in ``a`` up to a one-to-one renaming
  of the labels (Hungarian matching on the confusion matrix)."""
  _, ia = np.unique(a, return_inverse=True)
  _, ib = np.unique(b, return_inverse=True)
  confusion = np.zeros((ia.max() + 1, ib.max() + 1), np.int64)
  np.add.at(confusion, (ia.ravel(), ib.ravel()), 1)
  rows, cols = optimize.linear_sum_assignment(confusion, maximize=True)
  return float(confusion[rows, cols].sum() / a.size)


def compare(base, other) -> dict:
  """The measures of one perturbed PhotoResult against the unperturbed one."""
  iou = box_iou(base.box, other.box)
  return {
      "mask_kept": float(np.mean(base.mask == other.mask)),
      "segments_kept": labels_kept(base.segments, other.segments),
      "box_iou": iou,
      "box_same": iou >= SAME_BOX_IOU,
      "boxes_matched_iou": matched_box_iou(base.boxes, other.boxes),
      "num_boxes": [len(base.boxes), len(other.boxes)],
      "fg": [base.foreground_fraction, other.foreground_fraction],
      "converged": bool(other.converged),
      # how far the graph's eigenpairs moved (λ₁..λ_{k−1}; y₁ relative to its max)
      "max_dlambda": float(np.max(np.abs(base.eigenvalues - other.eigenvalues))),
      "max_dy1": float(np.max(np.abs(base.eigenvectors[..., 1] - other.eigenvectors[..., 1]))
                       / max(np.max(np.abs(base.eigenvectors[..., 1])), 1e-30)),
  }


def run(backbone, config, photos, args, float64=False) -> dict:
  """PhotoResults of every photo under one config (one PhotoSegmenter: its programs are
  compiled once per padded grid)."""
  seg = dsm.PhotoSegmenter(backbone, config, image_size=args.image_size, seed=args.seed,
                           bucket_step=args.bucket_step)
  with float64_solver() if float64 else contextlib.nullcontext():
    return {name: seg(rgb, name=name) for name, rgb in photos.items()}


def _pct(x: float) -> str:
  return "100" if x == 1 else f"{100 * x:.2f}"


def report(results: dict, photos, perturbations) -> tuple[str, dict]:
  """The markdown tables (per photo × method; per method) and the summary."""
  names = list(results)
  head = "| photo | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
  rows = []
  for photo in photos:
    cells = []
    for m in names:
      per = results[m][photo]
      mask = min(per[p]["mask_kept"] for p in perturbations)
      segs = min(per[p]["segments_kept"] for p in perturbations)
      moved = [p for p in perturbations if not per[p]["box_same"]]
      box = "same" if not moved else "moved (" + ", ".join(moved) + ")"
      cells.append(f"{_pct(mask)} · {_pct(segs)} · {box}")
    rows.append(f"| {photo} | " + " | ".join(cells) + " |")
  summary = {}
  lines = ["| method | mask kept, min | segments kept, min | best box same | boxes matched IoU, "
           "min | worst perturbation (mask) | ≥ 99% mask on every photo |",
           "|---|---|---|---|---|---|---|"]
  for m in names:
    flat = [(photo, p, results[m][photo][p]) for photo in photos for p in perturbations]
    worst = min(flat, key=lambda t: t[2]["mask_kept"])
    s = {
        "mask_kept_min": worst[2]["mask_kept"],
        "mask_worst": f"{worst[0]}, {worst[1]}",
        "segments_kept_min": min(r["segments_kept"] for _, _, r in flat),
        "box_same_photos": sum(all(results[m][ph][p]["box_same"] for p in perturbations)
                               for ph in photos),
        "boxes_matched_iou_min": min(r["boxes_matched_iou"] for _, _, r in flat),
    }
    s["meets_criterion"] = s["mask_kept_min"] >= CRITERION
    summary[m] = s
    lines.append(f"| {m} | {_pct(s['mask_kept_min'])} | {_pct(s['segments_kept_min'])} | "
                 f"{s['box_same_photos']}/{len(photos)} | {s['boxes_matched_iou_min']:.3f} | "
                 f"{s['mask_worst']} | {'yes' if s['meets_criterion'] else 'no'} |")
  table = head + "\n".join(rows) + "\n\n" + "\n".join(lines)
  return table, summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=batching.IMAGE_SIZE,
                      help="longer side, pixels (the command's)")
  parser.add_argument("--seed", type=int, default=0, help="K-means seed (the command's)")
  parser.add_argument("--bucket_step", type=int, default=batching.BUCKET_STEP)
  parser.add_argument("--methods", default=",".join(methods()),
                      help="comma-separated subset of " + ",".join(methods()))
  parser.add_argument("--perturbations", default=",".join(DEFAULT_PERTURBATIONS),
                      help="comma-separated subset of " + ",".join(PERTURBATIONS))
  parser.add_argument("--samples", default=",".join(samples.LABELLED_SAMPLES
                                                    + samples.SKIMAGE_PHOTOS))
  parser.add_argument("--backbone", default="dinov2_vits14")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args()
  configs = {m: c for m, c in methods().items() if m in args.methods.split(",")}
  perturbations = args.perturbations.split(",")
  unknown = set(perturbations) - set(PERTURBATIONS) | set(args.methods.split(",")) - set(
      methods())
  if unknown:
    parser.error(f"unknown method or perturbation: {sorted(unknown)}")
  bundled = samples.bundled_photos()
  photos = {name: bundled[name] for name in args.samples.split(",")}
  backbone = backbones.load_pretrained(args.backbone)
  start = time.time()
  results = {}
  for m, config in configs.items():
    base = run(backbone, config, photos, args)
    results[m] = {photo: {} for photo in photos}
    for p in perturbations:
      other = run(backbone, dataclasses.replace(config, **PERTURBATIONS[p]), photos, args,
                  float64=p == "eigh64")
      for photo in photos:
        results[m][photo][p] = compare(base[photo], other[photo])
      print(f"[{time.time() - start:6.0f} s] {m} {p}: mask kept "
            + " ".join(f"{ph} {_pct(results[m][ph][p]['mask_kept'])}" for ph in photos),
            flush=True)
  table, summary = report(results, photos, perturbations)
  print(f"\nmask kept % · segments kept % · best box (min over {', '.join(perturbations)}; "
        f"LOBPCG tol {TOL:.3g}):\n")
  print(table)
  if args.out:
    meta = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
            "python": platform.python_version(), "device": str(jax.devices()[0]),
            "image_size": args.image_size, "seed": args.seed, "bucket_step": args.bucket_step,
            "backbone": args.backbone, "lobpcg_tol": TOL, "same_box_iou": SAME_BOX_IOU,
            "criterion": CRITERION, "seconds": time.time() - start}
    with open(args.out, "w") as f:
      json.dump({"meta": meta, "summary": summary, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
