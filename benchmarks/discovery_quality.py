"""Object discovery methods side by side on the bundled photos, through the segment command.

Each variant (a discovery method with its threshold or foreground rule) is one run of
``experiments.segment.run`` on the six bundled photos (OUT/<variant>/), so the figures are the
command's own outputs. On the labelled photos (voc: 19 instances, arc2017) it reports the
foreground IoU of the object mask, CorLoc of the best box, and object recall@0.5 of all boxes
(labelled objects matched one-to-one, greedily, best box first), next to the centred-box
baseline in the same run; on every photo the box's share of the frame (a whole-frame box means
the backdrop was taken for the object). Writes OUT/index.html (the table and every variant's
overlays) and OUT/table.md.

Usage: PYTHONPATH=. python benchmarks/discovery_quality.py --out DIR [--variants a,b]
  [--image_size 448] [--test]   (--test: the random 1-block ViT of the test preset, plumbing)
"""

from __future__ import annotations

import argparse
import html
import json
import pathlib

import numpy as np

from experiments import segment
from experiments.configs import segment as segment_config
from spectral_jax import _cli, protocols
from spectral_jax.datasets import samples

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
    "multi_region": ({"discovery": "multi_region"},
                     "DSM multi-region: a box per non-background segment, least on the border "
                     "first; mask: the segments with ≤ 10% of their patches on the border (the "
                     "default)"),
    "multi_region_0.2": ({"discovery": "multi_region", "region_border_share": 0.2},
                         "multi_region, mask: segments with ≤ 20% on the border"),
    "multi_region_all": ({"discovery": "multi_region", "region_border_share": 1.0},
                         "multi_region, mask: every non-background segment (the rule before)"),
    "multi_region_bs": ({"discovery": "multi_region", "bilateral.enabled": True},
                        "multi_region, mask refined by TokenCut's bilateral solver"),
    "dsm_bs": ({"discovery": "dsm", "foreground": "minority", "bilateral.enabled": True},
               "DSM reference, mask refined by TokenCut's bilateral solver"),
    "tokencut_q0.5_bs": ({"discovery": "tokencut", "tau_quantile": 0.5,
                          "bilateral.enabled": True},
                         "TokenCut, τ = q0.5, with its bilateral solver"),
}


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
           "</p><table border=1 cellpadding=4>"]
  for i, line in enumerate(l for l in md.splitlines() if not l.startswith("|---")):
    cells = [c.strip() for c in line.strip("|").split("|")]
    tag = "th" if i == 0 else "td"
    parts.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
  parts.append("</table>")
  for key in results:
    parts.append(f"<h2>{html.escape(key)}: {html.escape(VARIANTS[key][1])}</h2><div>")
    for name in results[key]["box_cover"]:
      src = f"{key}/{segment.PHOTOS}/{name}.overlay.png"
      parts.append(f"<a href='{src}'><img src='{src}' height=180 title='{name}'></a>")
    parts.append("</div>")
  (out / "index.html").write_text("\n".join(parts), encoding="utf-8")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--image_size", type=int, default=448)
  parser.add_argument("--test", action="store_true", help="random 1-block ViT (plumbing only)")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = {}
  for key in args.variants.split(","):
    overrides, _ = VARIANTS[key]
    cfg = segment_config.get_config("test" if args.test else "default")
    cfg.out, cfg.overwrite = str(out / key), True
    if not args.test:
      cfg.image_size = args.image_size
    for field, value in overrides.items():
      _cli.set_field(cfg, field if "." in field else f"dsm.{field}", value)
    segment.run(cfg)
    results[key] = score_run(out / key)
  md = table(results)
  (out / "table.md").write_text(md + "\n")
  (out / "results.json").write_text(json.dumps(results, indent=1))
  write_report(out, results, md)
  print(md)


if __name__ == "__main__":
  main()
