"""Object discovery methods side by side on the bundled photos, through the segment command.

Each variant (a discovery method with its threshold or foreground rule) is one run of
``experiments.segment.run`` on the six bundled photos (OUT/<variant>/), so the figures are the
command's own outputs. On the labelled photos (voc: 19 instances, arc2017) it reports the
foreground IoU of the object mask, CorLoc of the best box, and object recall@0.5 of all boxes
(labelled objects matched one-to-one, greedily, best box first), next to the centred-box
baseline in the same run; on every photo the box's share of the frame (a whole-frame box means
the backdrop was taken for the object). Writes OUT/index.html (the table and every variant's
overlays) and OUT/table.md.

``--labelled`` (issue 21's comparison) runs instead each method of ``COMPARISON`` once on every
labelled photo there is: the two bundled ones (voc, arc2017: masks and 27 boxes) and the
images of the dataset fixtures the tests build (``tests/conftest.py``: the VOC tree's photo as
a JPEG and mirrored as a greyscale JPEG, 19 boxes each; the ECSSD tree's voc JPEG and
greyscale arc2017 JPEG, masks; the COCO fixture's one labelled image is the same voc JPEG
with the same objects, so it is not counted twice), read back through ``spectral_jax.datasets``.
These fixtures are transformations of the two bundled photos, not new scenes. It reports per
method fg IoU, CorLoc and recall@0.5 on the bundled pair, on the fixtures and on all, next to
the centred box, and writes OUT/labelled.md and OUT/labelled.json.

Usage: PYTHONPATH=. python benchmarks/discovery_quality.py --out DIR [--variants a,b]
  [--image_size 448] [--test] [--labelled]
  (--test: the random 1-block ViT of the test preset, plumbing)
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import pathlib
import tempfile

import numpy as np
from PIL import Image

from experiments import segment
from experiments.configs import segment as segment_config
from spectral_jax import _cli, datasets, dsm, metrics, protocols, viz
from spectral_jax.datasets import samples

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name → (overrides of the segment config's dsm section, or of any field by its dotted path,
# description)
VARIANTS = {
    "dsm": ({"discovery": "dsm", "foreground": "minority"},
            "DSM reference: y₁ minority side, largest component"),
    "dsm_border": ({"discovery": "dsm", "foreground": "border"},
                   "DSM, side of y₁ touching the border least"),
    "tokencut": ({"discovery": "tokencut", "tau_quantile": 0.0},
                 "TokenCut, published τ = 0.2"),
    "tokencut_q0.3": ({"discovery": "tokencut", "tau_quantile": 0.3}, "TokenCut, τ = q0.3"),
    "tokencut_q0.5": ({"discovery": "tokencut", "tau_quantile": 0.5}, "TokenCut, τ = q0.5"),
    "tokencut_q0.7": ({"discovery": "tokencut", "tau_quantile": 0.7}, "TokenCut, τ = q0.7"),
    "maskcut": ({"discovery": "maskcut", "tau_quantile": 0.0},
                "MaskCut, published τ = 0.15, N = 3"),
    "maskcut_q0.3": ({"discovery": "maskcut", "tau_quantile": 0.3}, "MaskCut, τ = q0.3, N = 3"),
    "maskcut_q0.5": ({"discovery": "maskcut", "tau_quantile": 0.5}, "MaskCut, τ = q0.5, N = 3"),
    "maskcut_q0.7": ({"discovery": "maskcut", "tau_quantile": 0.7}, "MaskCut, τ = q0.7, N = 3"),
    "tokencut_q0.5_border": ({"discovery": "tokencut", "tau_quantile": 0.5,
                              "foreground": "border"},
                             "TokenCut, τ = q0.5, the side touching the border least"),
    "maskcut_q0.5_border": ({"discovery": "maskcut", "tau_quantile": 0.5,
                             "foreground": "border"},
                            "MaskCut, τ = q0.5, N = 3, the side touching the border least"),
    "multi_region": ({"discovery": "multi_region", "segment_assign": "kmeans"},
                     "DSM multi-region: a box per non-background K-means segment, least on the "
                     "border first; mask: the segments with ≤ 10% of their patches on the border "
                     "(the previous default)"),
    "multi_region_0.2": ({"discovery": "multi_region", "segment_assign": "kmeans",
                          "region_border_share": 0.2},
                         "multi_region, mask: segments with ≤ 20% on the border"),
    "multi_region_all": ({"discovery": "multi_region", "segment_assign": "kmeans",
                          "region_border_share": 1.0},
                         "multi_region, mask: every non-background segment (the rule before)"),
    "multi_region_bs": ({"discovery": "multi_region", "segment_assign": "kmeans",
                         "bilateral.enabled": True},
                        "multi_region, mask refined by TokenCut's bilateral solver"),
    "dsm_bs": ({"discovery": "dsm", "foreground": "minority", "bilateral.enabled": True},
               "DSM reference, mask refined by TokenCut's bilateral solver"),
    "tokencut_q0.5_bs": ({"discovery": "tokencut", "tau_quantile": 0.5,
                          "bilateral.enabled": True},
                         "TokenCut, τ = q0.5, with its bilateral solver"),
    "multi_region_qr": ({"discovery": "multi_region", "segment_assign": "cluster_qr"},
                        "multi_region with its segments by cluster_qr (no K-means)"),
    "default": ({"discovery": "tokencut+maskcut", "tau_quantile": 0.5},
                "the default: TokenCut's box and mask, MaskCut's boxes (N = 3), τ = q0.5"),
}
# Issue 21's comparison: every method at the constants the protocol fixed (BUILD_NOTES, "The
# protocol that chooses the DSM default"), plus the centred box.
COMPARISON = ("default", "dsm", "dsm_border", "tokencut_q0.5", "maskcut_q0.5", "multi_region",
              "multi_region_qr")


def score_run(out: pathlib.Path) -> dict:
  """Figures of one variant's outputs: labelled-photo means and per-photo box coverage."""
  recs = {p.stem: json.loads(p.read_text()) for p in sorted((out / segment.PHOTOS).glob("*.json"))}
  ious, hits, preds, gts = [], [], [], []
  base_ious, base_hits, base_preds = [], [], []
  for name in samples.LABELLED_SAMPLES:
    if name not in recs:
      continue
    r, gt = recs[name], samples.labelled_photo(name)
    g = r["ground_truth"]
    ious.append(g["foreground_iou"])
    hits.append(g["corloc_hit"])
    base_ious.append(g["baseline"]["foreground_iou"])
    base_hits.append(g["baseline"]["corloc_hit"])
    preds.append(np.asarray(r["boxes"]).reshape(-1, 4))
    base_preds.append(np.asarray([g["baseline"]["box"]]))
    gts.append(gt.boxes)
  cover = {n: (r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1])
           / (r["width"] * r["height"]) for n, r in recs.items()}
  recall = protocols.object_recall(preds, gts)
  return {"iou": float(np.mean(ious)), "corloc": float(np.mean(hits)),
          "recall": recall["recall"], "found": recall["num_matched"], "objects": recall["num_gt"],
          "baseline": {"iou": float(np.mean(base_ious)), "corloc": float(np.mean(base_hits)),
                       "recall": protocols.object_recall(base_preds, gts)["recall"]},
          "box_cover": cover, "boxes": {n: r["boxes"] for n, r in recs.items()}}


def table(results: dict) -> str:
  """A markdown table of the variants (rows) and the baseline."""
  names = next(iter(results.values()))["box_cover"].keys()
  head = ("| variant | fg IoU | CorLoc | recall@0.5 | " + " | ".join(f"{n} box" for n in names)
          + " |")
  rows = [head, "|" + "---|" * (4 + len(names))]
  for key, r in results.items():
    rows.append(f"| {key} | {r['iou']:.3f} | {r['corloc']:.2f} | {r['recall']:.3f} "
                f"({r['found']}/{r['objects']}) | "
                + " | ".join(f"{100 * r['box_cover'][n]:.0f}%" for n in names) + " |")
  b = next(iter(results.values()))["baseline"]
  rows.append(f"| centred box (baseline) | {b['iou']:.3f} | {b['corloc']:.2f} | "
              f"{b['recall']:.3f} | " + " | ".join("25%" for _ in names) + " |")
  return "\n".join(rows)


def write_report(out: pathlib.Path, results: dict, md: str) -> None:
  """OUT/index.html: the table and each variant's overlays (links into OUT/<variant>/)."""
  parts = ["<!doctype html><meta charset='utf-8'><title>Object discovery on the bundled "
           "photos</title><h1>Object discovery: methods side by side</h1>",
           "<p>fg IoU and CorLoc on the labelled photos (voc, arc2017); recall@0.5 of all "
           "boxes over their labelled objects; per photo the best box's share of the frame."
           "</p>", viz.markdown_html(md).replace("<table>", "<table border=1 cellpadding=4>")]
  for key in results:
    parts.append(f"<h2>{html.escape(key)}: {html.escape(VARIANTS[key][1])}</h2><div>")
    for name in results[key]["box_cover"]:
      src = f"{key}/{segment.PHOTOS}/{name}.overlay.png"
      parts.append(f"<a href='{src}'><img src='{src}' height=180 title='{name}'></a>")
    parts.append("</div>")
  (out / "index.html").write_text("\n".join(parts), encoding="utf-8")


def _conftest():
  """tests/conftest.py as a module (its fixture writers ``write_voc``, ``write_ecssd``)."""
  spec = importlib.util.spec_from_file_location("_fixture_writers", ROOT / "tests" / "conftest.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def labelled_photos() -> dict[str, dict]:
  """Every labelled photo: name → {"rgb", "mask" (H, W) bool or None, "boxes" (N, 4) or None,
  "group" ("bundled" or "fixtures")}. The fixtures are written by the tests' own writers and
  read back through ``spectral_jax.datasets`` (JPEG and greyscale round trips included)."""
  items = {}
  for name in samples.LABELLED_SAMPLES:
    gt = samples.labelled_photo(name)
    items[name] = dict(rgb=gt.rgb, mask=gt.foreground, boxes=gt.boxes, group="bundled")
  fixtures = _conftest()
  with tempfile.TemporaryDirectory() as tmp:
    base = pathlib.Path(tmp)
    fixtures.write_voc(base, "2012")
    voc = datasets.load("voc12", base, split="trainval")
    for image_id in voc.ids:
      rec = voc.read(image_id)
      if len(rec.boxes):   # the coffee image has no object: CorLoc is undefined there
        items[f"vocfix_{image_id}"] = dict(rgb=rec.image, mask=None, boxes=rec.boxes,
                                           group="fixtures")
    fixtures.write_ecssd(base)
    ecssd = datasets.load("ecssd", base)
    for image_id in ecssd.ids:
      rec = ecssd.read(image_id)
      if rec.mask.any():   # the all-background mask: IoU is 0 whatever is predicted
        items[f"ecssdfix_{image_id}"] = dict(rgb=rec.image, mask=rec.mask, boxes=None,
                                             group="fixtures")
  return items


def score_labelled(out: pathlib.Path, items: dict) -> dict:
  """fg IoU, CorLoc and recall@0.5 of one run's outputs per group ("bundled", "fixtures",
  "all") and of the centred box, from the files the command wrote."""
  per = {}
  for name, gt in items.items():
    rec = json.loads((out / segment.PHOTOS / f"{name}.json").read_text())
    mask = np.asarray(Image.open(out / segment.PHOTOS / f"{name}.mask.png")) > 0
    hw = gt["rgb"].shape[:2]
    base = dsm.centred_box(hw, 0.5)
    row = {"group": gt["group"]}
    if gt["mask"] is not None:
      row["iou"] = float(metrics.mask_iou(mask, gt["mask"]))
      row["base_iou"] = float(metrics.mask_iou(dsm.box_mask(base, hw), gt["mask"]))
    if gt["boxes"] is not None:
      row["hit"] = bool(metrics.corloc_hits(np.asarray(rec["box"]), gt["boxes"]))
      row["base_hit"] = bool(metrics.corloc_hits(base, gt["boxes"]))
      row["boxes"] = np.asarray(rec["boxes"]).reshape(-1, 4)
      row["base_boxes"] = base[None]
      row["gt"] = gt["boxes"]
    per[name] = row

  def figures(rows, prefix=""):
    ious = [r[prefix + "iou"] for r in rows if "iou" in r]
    hits = [r[prefix + "hit"] for r in rows if "hit" in r]
    boxed = [r for r in rows if "gt" in r]
    rec = protocols.object_recall([r[prefix + "boxes"] for r in boxed], [r["gt"] for r in boxed])
    return {"iou": float(np.mean(ious)), "masks": len(ious), "corloc": float(np.mean(hits)),
            "hits": int(np.sum(hits)), "boxed": len(hits), "recall": rec["recall"],
            "found": rec["num_matched"], "objects": rec["num_gt"]}

  groups = {"bundled": [r for r in per.values() if r["group"] == "bundled"],
            "fixtures": [r for r in per.values() if r["group"] == "fixtures"],
            "all": list(per.values())}
  return {"method": {g: figures(rows) for g, rows in groups.items()},
          "baseline": {g: figures(rows, "base_") for g, rows in groups.items()},
          "per_photo": {n: {k: v for k, v in r.items() if k in ("iou", "hit")}
                        for n, r in per.items()}}


def labelled_table(results: dict) -> str:
  """Markdown: a row per method and the centred box; fg IoU · CorLoc · recall per group."""
  groups = ("bundled", "fixtures", "all")
  head = ["method"] + [f"{g}: {m}" for g in groups for m in ("fg IoU", "CorLoc", "recall@0.5")]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def cells(f):
    return [f"{f['iou']:.3f}", f"{f['hits']}/{f['boxed']}", f"{f['found']}/{f['objects']}"]

  for key, r in results.items():
    rows.append("| " + " | ".join([key] + [c for g in groups for c in cells(r["method"][g])])
                + " |")
  b = next(iter(results.values()))["baseline"]
  rows.append("| centred box (baseline) | "
              + " | ".join(c for g in groups for c in cells(b[g])) + " |")
  return "\n".join(rows)


def run_labelled(out: pathlib.Path, variants, image_size: int, test: bool) -> str:
  """Each variant once on every labelled photo (OUT/labelled/<variant>/); the table."""
  items = labelled_photos()
  photos = out / "labelled" / "photos"
  photos.mkdir(parents=True, exist_ok=True)
  for name, gt in items.items():
    Image.fromarray(gt["rgb"]).save(photos / f"{name}.png")
  results = {}
  for key in variants:
    cfg = _variant_config(key, out / "labelled" / key, image_size, test)
    cfg.images = str(photos)
    segment.run(cfg)
    results[key] = score_labelled(out / "labelled" / key, items)
  md = labelled_table(results)
  (out / "labelled.md").write_text(md + "\n")
  (out / "labelled.json").write_text(json.dumps(results, indent=1))
  return md


def _variant_config(key: str, out: pathlib.Path, image_size: int, test: bool):
  overrides, _ = VARIANTS[key]
  cfg = segment_config.get_config("test" if test else "default")
  cfg.out, cfg.overwrite = str(out), True
  if not test:
    cfg.image_size = image_size
  for field, value in overrides.items():
    _cli.set_field(cfg, field if "." in field else f"dsm.{field}", value)
  return cfg


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--image_size", type=int, default=448)
  parser.add_argument("--test", action="store_true", help="random 1-block ViT (plumbing only)")
  parser.add_argument("--labelled", action="store_true",
                      help="issue 21's comparison: COMPARISON (or --variants) on every "
                           "labelled photo, bundled and fixtures")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.labelled:
    variants = COMPARISON if args.variants == ",".join(VARIANTS) else args.variants.split(",")
    print(run_labelled(out, variants, args.image_size, args.test))
    return
  results = {}
  for key in args.variants.split(","):
    cfg = _variant_config(key, out / key, args.image_size, args.test)
    segment.run(cfg)
    results[key] = score_run(out / key)
  md = table(results)
  (out / "table.md").write_text(md + "\n")
  (out / "results.json").write_text(json.dumps(results, indent=1))
  write_report(out, results, md)
  print(md)


if __name__ == "__main__":
  main()
