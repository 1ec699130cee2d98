r"""Deep Spectral Methods on a folder of photos: object box, mask, segments, report page.

  python -m experiments.segment                       # the bundled photos → ./segment_output
  python -m experiments.segment --images=DIR --out=DIR [--image_size=448] [--k=20]
      [--image_weight=0.0] [--crf | --bilateral] [--num_segments=4] [--batch_size=4] [--semantic]

For every photo DIR/REL/NAME.ext it writes OUT/photos/REL/NAME.mask.png (object 255 /
background 0, at the photo's size), NAME.segments.png (multi-region labels, palette PNG,
0 = background), NAME.eigenvectors.png (y₁..y₄ heat maps), NAME.overlay.png, NAME.json (box
[x0, y0, x1, y1] in pixels, eigenvalues, warnings, timings) and, with --semantic,
NAME.semantic.png (0 = background, dataset cluster c as c + 1); once: OUT/summary.json and
OUT/index.html (open it in a browser). Photo outputs live under photos/, so no photo can take a
run-level name; an OUT holding files is refused unless --config.overwrite=True.

The work is `spectral_jax.dsm`: photos stream through a bounded prefetch into padded batches of
a few grid shapes (`dsm.batching`), and each batch is one call of the jitted pipeline
(`dsm.make_pipeline`); each photo's answer at its own size is `dsm.outputs.photo_result`, the
function `dsm.segment` (one photo from Python) returns. The defaults are the library's
(`dsm.PipelineConfig()`, `dsm.RenderSettings()`). Unreadable, too small or too large photos
are reported and skipped; the exit code is 0 when at least one photo succeeded, 1 when none
did, 2 for a usage error. Where
ground truth exists (the bundled VOC and ARC2017 photos) the foreground IoU and CorLoc are
printed and stored in summary.json next to a centred-box baseline (quality: BUILD_NOTES.md).
"""

from __future__ import annotations

import html
import pathlib
import time

import ml_collections
import numpy as np
from absl import flags

from experiments import common
from spectral_jax import _cli, backbones, dsm, progress, strict_json, viz
from spectral_jax.datasets import images as image_io
from spectral_jax.datasets import samples
from spectral_jax.dsm import batching, outputs

DEFAULT_OUT = "segment_output"
PHOTOS = "photos"  # OUT/photos/... holds the per-photo files; run-level files sit beside it
OWNED = (PHOTOS, "summary.json", "index.html")   # what an overwrite replaces
# The recorded comparison of every discovery method on every labelled photo (issue 21),
# written by benchmarks/discovery_quality.py --labelled; shown in the report page's legend.
COMPARISON_FILE = pathlib.Path(__file__).with_name("discovery_comparison.md")
OVERWRITE_HINT = "--overwrite"
# The largest --image_size: at P = 14 its longer side alone is 585 patches. Each photo is
# also checked against the memory budget from its header, before it is decoded or resized.
MAX_IMAGE_SIZE = 8192

_CONFIG = _cli.define_config_file(
    "config", str(pathlib.Path(__file__).parent / "configs" / "segment.py"),
    "ml_collections config (experiments/configs/segment.py[:preset]); fields can be overridden "
    "with --config.<field>=value.", lock_config=True)
# Short flags for the common settings; when given they override the config (one default each:
# the config's).
_SHORT_FLAGS = {
    "images": ("images", flags.DEFINE_string, "folder of photos (default: the bundled photos)"),
    "out": ("out", flags.DEFINE_string, f"output folder (default: ./{DEFAULT_OUT})"),
    "overwrite": ("overwrite", flags.DEFINE_boolean,
                  "replace the outputs of an earlier run in --out (as evaluate_dsm --overwrite)"),
    "recursive": ("recursive", flags.DEFINE_boolean, "also read the sub-folders of --images"),
    "samples": ("samples", flags.DEFINE_string, "comma-separated subset of the bundled photos"),
    "backbone": ("backbone.name", flags.DEFINE_string, "backbone name, e.g. dinov2_vits14"),
    "weights": ("backbone.weights", flags.DEFINE_string,
                "weights path, 'random', or empty for the offline pretrained weights"),
    "backbone_overrides": ("backbone.overrides", flags.DEFINE_string,
                           "for --weights=random: backbone config fields, 'depth=2,width=96'"),
    "image_size": ("image_size", flags.DEFINE_integer,
                   "longer side after resizing (0: native size cropped to a multiple of P)"),
    "k": ("dsm.num_eigenvectors", flags.DEFINE_integer, "number of eigenvectors K"),
    "image_weight": ("dsm.image_weight", flags.DEFINE_float,
                     "λ, weight of the colour graph (0: features only, the reference)"),
    "crf": ("crf.enabled", flags.DEFINE_boolean, "refine the object mask with a dense CRF"),
    "bilateral": ("bilateral.enabled", flags.DEFINE_boolean,
                  "refine the object mask with TokenCut's bilateral solver"),
    "num_segments": ("dsm.num_segments", flags.DEFINE_integer, "segments per photo"),
    "batch_size": ("batch_size", flags.DEFINE_integer, "photos per batch"),
    "semantic": ("semantic.enabled", flags.DEFINE_boolean,
                 "semantic segmentation across the run's photos"),
    "upsample": ("dsm.upsample", flags.DEFINE_enum,
                 "object-mask upsampling: nearest (reference) or bilinear"),
    "connectivity": ("dsm.connectivity", flags.DEFINE_integer,
                     "largest component: 4 (SPEC) or 8 (the DSM code)"),
}
for _flag, (_field, _define, _help) in _SHORT_FLAGS.items():
  if _define is flags.DEFINE_enum:
    _define(_flag, None, list(dsm.UPSAMPLE_METHODS), _help)
  else:
    _define(_flag, None, _help)


# ----------------------------------------------------------------------------- inputs


def collect_sources(cfg, out: pathlib.Path) -> tuple[list[batching.Source], dict[str, str]]:
  """The photos to process, and {file: reason} for files skipped as non-images.

  Raises:
    _cli.UsageError: the folder does not exist, no photo to process, unknown sample names.
  """
  if not cfg.images:
    names = list(samples.LABELLED_SAMPLES + samples.SKIMAGE_PHOTOS)
    if cfg.samples:
      wanted = [s.strip() for s in cfg.samples.split(",") if s.strip()]
      unknown = sorted(set(wanted) - set(names))
      if unknown:
        raise _cli.UsageError(f"unknown bundled photos {unknown}; choose from {names}")
      names = wanted
    return [batching.Source(n, f"bundled:{n}", _bundled_loader(n)) for n in names], {}
  root = pathlib.Path(cfg.images).expanduser().resolve()
  if not root.exists():   # the command names a folder that is not there: fix the command
    raise _cli.UsageError(f"--images {cfg.images!r} does not exist; pass a folder of photos")
  paths, names, skipped = image_io.collect_images(root, recursive=cfg.recursive, exclude=out)
  if not paths:
    raise _cli.UsageError(f"no image files in {str(root)!r} (looked for "
                          f"{', '.join(image_io.IMAGE_SUFFIXES)}); point --images at a folder "
                          "of photos")
  # A file over the decode budget is read at reduced size when it is resized anyway
  # (image_size > 0; its longer side stays ≥ image_size), refused at native size.
  side = max(int(cfg.image_size), 0)
  sources = [batching.Source(n, image_io.display_path(p),
                             (lambda p=p: image_io.read_image(p, min_side=side)),
                             size=(lambda p=p: image_io.image_size(p, min_side=side)))
             for n, p in zip(names, paths)]
  return sources, skipped


def _bundled_loader(name: str):
  if name in samples.LABELLED_SAMPLES:
    return lambda: samples.labelled_photo(name).rgb
  return lambda: samples.skimage_photo(name)


def ground_truth(source: batching.Source):
  """The bundled labelled photo behind ``source``, or None."""
  if source.origin.startswith("bundled:") and source.name in samples.LABELLED_SAMPLES:
    return samples.labelled_photo(source.name)
  return None


# ----------------------------------------------------------------------------- summary


def _config_text(cfg, backbone) -> str:
  d = cfg.dsm
  size = cfg.image_size or "native"
  if d.discovery == "dsm":
    method = f"object side {d.foreground}"
  elif d.discovery in ("tokencut", "maskcut", "tokencut+maskcut"):
    tau = (f"τ = q{d.tau_quantile:g} of the similarities" if d.tau_quantile
           else f"τ={'published' if d.tau < 0 else d.tau}")
    cuts = {"maskcut": f", {d.max_objects} cuts",
            "tokencut+maskcut": f"; best box and mask: TokenCut, boxes: MaskCut's "
                                f"{d.max_objects} cuts"}.get(d.discovery, "")
    method = f"{tau}{cuts}"
  else:
    method = f"≤ {d.max_objects} boxes"
  return (f"{d.discovery} ({method}), backbone {cfg.backbone.name} "
          f"({cfg.backbone.weights or 'pretrained'}), image size "
          f"{size}, P={backbone.config.patch_size}, graph on {d.features}, K={d.num_eigenvectors}, "
          f"λ={d.image_weight}, connectivity {d.connectivity}, upsample {d.upsample}, CRF "
          f"{'on' if cfg.crf.enabled else 'off'}, bilateral solver "
          f"{'on' if cfg.bilateral.enabled else 'off'}, segments "
          f"{'eigengap' if d.adaptive_segments else d.num_segments} ({d.segment_assign})")


def print_report(records: list[dict], summary: dict, out: pathlib.Path) -> None:
  print(f"\n{'photo':<16} {'size':>9}  {'box [x0, y0, x1, y1]':<22} {'fg':>4}  {'λ₁':>6}  "
        f"{'s/img':>6}")
  for r in records:
    box = ", ".join(str(v) for v in r["box"])
    print(f"{r['name'][:16]:<16} {r['width']:>4}×{r['height']:<4}  [{box}]".ljust(51)
          + f"{100 * r['foreground_fraction']:3.0f}%  {r['eigenvalues'][1]:6.3f}  "
          f"{r['timings_s']['total']:6.2f}")
  gt = summary.get("ground_truth")
  if gt:
    b = gt["baseline"]
    n = len(gt["images"])
    print(f"\nGround truth ({', '.join(gt['images'])}): foreground IoU {gt['foreground_iou']:.3f}, "
          f"CorLoc {gt['corloc']:.2f} ({round(gt['corloc'] * n)}/{n}), object recall@0.5 "
          f"{gt['object_recall']:.3f} of {gt['objects']}; centred-box baseline: "
          f"IoU {b['foreground_iou']:.3f}, CorLoc {b['corloc']:.2f}, recall "
          f"{b['object_recall']:.3f}")
  if summary["failures"]:   # each was reported on stderr when it happened
    print(f"{len(summary['failures'])} photo(s) skipped (see above and summary.json "
          "\"failures\")")
  t = summary["timings_s"]
  print(f"\n{summary['num_ok']} photos in {t['wall']:.1f} s (compiles included); outputs, "
        f"summary.json and index.html in {out}/ (open {out / 'index.html'})")


def write_index(records: list[dict], summary: dict, out: pathlib.Path, cfg) -> None:
  entries = []
  for r in records:
    meta = {"size": f"{r['width']}×{r['height']}", "box": r["box"],
            "boxes": "; ".join(str(b) for b in r["boxes"]),
            "λ₁": f"{r['eigenvalues'][1]:.3f}",
            "foreground": f"{100 * r['foreground_fraction']:.0f}%"}
    if "ground_truth" in r:
      g = r["ground_truth"]
      meta["IoU"] = f"{g['foreground_iou']:.3f} (baseline {g['baseline']['foreground_iou']:.3f})"
      meta["CorLoc hit"] = f"{g['corloc_hit']} (baseline {g['baseline']['corloc_hit']})"
      meta["objects found"] = (f"{g['objects_found']} of {g['objects']} (baseline "
                               f"{g['baseline']['objects_found']})")
    files = dict(r["files"])
    if cfg.semantic.enabled:
      files["semantic"] = f"{PHOTOS}/{r['name']}.semantic.png"
    entries.append({"name": r["name"], "files": files, "meta": meta})
  columns = [("overlay", "overlay: mask and boxes (left), segments (right)"),
             ("eigenvectors", "eigenvectors y₁, y₂, …"), ("mask", "mask"),
             ("segments", "segments"), ("instances", "objects (one id per box of \"boxes\")")]
  if cfg.semantic.enabled:
    columns.append(("semantic", "semantic"))
  intro = (f"<p>{html.escape(summary['settings'])}</p><p><small>"
           f"{html.escape(summary['backbone']['weights_note'])}</small></p>")
  gt = summary.get("ground_truth")
  if gt:
    b = gt["baseline"]
    intro += (f"<p>Ground truth ({html.escape(cfg.dsm.discovery)}): foreground IoU "
              f"{gt['foreground_iou']:.3f}, CorLoc {gt['corloc']:.2f}, object recall@0.5 "
              f"{gt['object_recall']:.3f} of {gt['objects']}; centred-box baseline IoU "
              f"{b['foreground_iou']:.3f}, CorLoc {b['corloc']:.2f}, recall "
              f"{b['object_recall']:.3f}. Every method side by side: "
              "benchmarks/discovery_quality.py (BUILD_NOTES.md).</p>")
  viz.write_index_html(out / "index.html", entries, columns=columns,
                       title="Deep Spectral Methods: localisation and segmentation", intro=intro,
                       failures=summary["failures"], legend=legend_html(cfg))


def _swatch(rgb) -> str:
  return f'<span class="swatch" style="background: rgb{tuple(int(v) for v in rgb)}"></span>'


def legend_html(cfg) -> str:
  """The report page's legend: the overlay's colours, the figures, and the recorded table of
  every discovery method on every labelled photo (``COMPARISON_FILE``)."""
  d = cfg.dsm.discovery
  sources = {"tokencut+maskcut": ("TokenCut's object", "MaskCut's cuts"),
             "multi_region": ("the best-placed segment's object", "one per DSM segment"),
             "maskcut": ("MaskCut's first cut", "MaskCut's cuts"),
             "tokencut": ("TokenCut's object", "TokenCut's object only"),
             "dsm": ("y₁'s largest component", "that box only")}
  best, several = sources.get(d, ("the best object", "every object"))
  items = [
      ("best box", f"{_swatch(viz.BOX_COLOUR)}the best object's box, <code>\"box\"</code> "
                   f"({html.escape(best)}); CorLoc scores it"),
      ("other boxes", f"{_swatch(viz.OTHER_BOX_COLOUR)}thinner: the other discovered objects "
                      f"of <code>\"boxes\"</code> ({html.escape(several)}); recall scores all "
                      "of <code>\"boxes\"</code>"),
      ("mask", f"{_swatch(viz.MASK_COLOUR)}tint and outline on the overlay's left panel: the "
               "object mask (<code>NAME.mask.png</code>); foreground IoU scores it"),
      ("segments", "the overlay's right panel and <code>NAME.segments.png</code>: the K-means "
                   "segments of the eigenvectors, one colour each, background (the border's "
                   "majority) untinted"),
      ("eigenvectors", "y₁, y₂, … as heat maps: blue &lt; 0 &lt; red; y₁'s sign splits the "
                       "graph in two"),
      ("λ₁", "the second smallest eigenvalue of the key graph's normalised Laplacian: near 0 a "
             "clean two-way split, near 1 nearly uniform affinities"),
      ("foreground", "the mask's share of the photo's pixels"),
      ("IoU, CorLoc, objects found (labelled photos)",
       "foreground IoU of the mask with the union of the labelled objects; CorLoc hit: the best "
       "box has IoU ≥ 0.5 with some labelled object; objects found (recall@0.5): labelled "
       "objects matched one-to-one, at IoU ≥ 0.5, by the boxes; each next to the centred box "
       "with half the photo's sides (baseline)"),
  ]
  parts = ['<div class="legend"><h2>Legend</h2><dl>']
  parts += [f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in items]
  parts.append("</dl>")
  if COMPARISON_FILE.exists():
    parts.append("<h3>Every discovery method on every labelled photo (recorded)</h3>"
                 + viz.markdown_html(COMPARISON_FILE.read_text(encoding="utf-8")))
  parts.append("</div>")
  return "".join(parts)


# ----------------------------------------------------------------------------- run


def check_config(cfg) -> tuple[dsm.PipelineConfig, outputs.RenderSettings]:
  """Validates every setting before any work; returns the pipeline's and the files' settings.

  Raises:
    _cli.UsageError: naming the field and what it accepts.
  """
  try:
    pipeline = dsm.PipelineConfig.from_config(cfg)
    pipeline.validate()
    render = outputs.RenderSettings.from_config(cfg)
  except (TypeError, ValueError) as e:
    raise _cli.UsageError(f"bad setting: {e}") from e
  if cfg.batch_size < 1 or cfg.image_size < 0 or cfg.bucket_step < 1 or cfg.prefetch < 1:
    raise _cli.UsageError("batch_size, bucket_step and prefetch must be ≥ 1 and image_size ≥ 0 "
                          f"(got {cfg.batch_size}, {cfg.bucket_step}, {cfg.prefetch}, "
                          f"{cfg.image_size})")
  if cfg.image_size > MAX_IMAGE_SIZE:
    raise _cli.UsageError(f"image_size must be ≤ {MAX_IMAGE_SIZE} px (0: native size); got "
                          f"{cfg.image_size}")
  if render.panel_eigenvectors > pipeline.num_eigenvectors - 1:
    raise _cli.UsageError(f"viz.num_eigenvectors must be ≤ dsm.num_eigenvectors − 1 = "
                          f"{pipeline.num_eigenvectors - 1} (heat maps of y₁..y_m); got "
                          f"{render.panel_eigenvectors}")
  if cfg.images and cfg.samples:
    raise _cli.UsageError("samples selects bundled photos; it cannot be combined with images")
  if cfg.backbone.name not in backbones.BACKBONES:
    raise _cli.UsageError(f"unknown backbone {cfg.backbone.name!r}; choose one of "
                          f"{', '.join(backbones.BACKBONES)}")
  if cfg.backbone.overrides and cfg.backbone.weights != "random":
    raise _cli.UsageError("backbone.overrides only applies to weights='random'")
  overrides = _cli.parse_overrides(cfg.backbone.overrides)
  try:
    patch = backbones.get_config(cfg.backbone.name, dtype=cfg.backbone.dtype,
                                 **overrides).patch_size
  except (KeyError, TypeError, ValueError) as e:
    raise _cli.UsageError(f"bad backbone settings {cfg.backbone.overrides!r}: {e}") from e
  side = cfg.image_size // patch  # a square photo's grid: the most patches any photo gets
  if cfg.image_size and side * side < pipeline.min_patches():
    raise _cli.UsageError(
        f"--k={pipeline.num_eigenvectors} (with --num_segments={pipeline.num_segments}) needs "
        f"photos of at least {pipeline.min_patches()} patches, but at --image_size="
        f"{cfg.image_size} no photo has more than {side}×{side} = {side * side} patches of "
        f"{patch} px: lower --k or raise --image_size")
  return pipeline, render


def prepare_out(cfg) -> pathlib.Path:
  """The output folder; refuses --images equal to or inside it, a file, or a folder holding
  files (unless ``overwrite``), so that no run silently replaces another's outputs."""
  out = pathlib.Path(cfg.out or DEFAULT_OUT).expanduser()
  if cfg.images:
    root, resolved = pathlib.Path(cfg.images).expanduser().resolve(), out.resolve()
    if resolved == root or root.is_relative_to(resolved):
      raise _cli.UsageError(f"--images ({root}) must not be --out ({resolved}) or inside it: "
                            "the run would read its own outputs; choose another --out")
  return _cli.output_folder(str(out), overwrite=cfg.overwrite, overwrite_hint=OVERWRITE_HINT)


def run(cfg: ml_collections.ConfigDict) -> dict:
  """Runs the whole command; returns the summary (also written to summary.json).

  Raises:
    _cli.UsageError / FileNotFoundError: bad settings, folder, or no photos.
    RuntimeError: no photo could be processed (the reasons are listed).
  """
  t_start = time.perf_counter()
  pipeline_config, render = check_config(cfg)
  out = prepare_out(cfg)
  sources, skipped = collect_sources(cfg, out)
  with _cli.output_run(str(out), overwrite=cfg.overwrite, owned=OWNED,
                       overwrite_hint=OVERWRITE_HINT):
    return _segment(cfg, out, sources, skipped, pipeline_config, render, t_start)


def _segment(cfg, out, sources, skipped, pipeline_config, render, t_start) -> dict:
  """`run`'s work inside its locked, marked output folder."""
  backbone = common.load_backbone(cfg)
  patch_size = backbone.config.patch_size
  segmenter = dsm.make_pipeline(backbone, pipeline_config)
  photo_dir = out / PHOTOS
  photo_dir.mkdir(parents=True, exist_ok=True)
  failures: dict[str, str] = {}

  def skip(source, error):
    failures[source.origin] = str(error)
    progress.write(f"skipping {source.origin}: {error}")

  where = image_io.display_path(cfg.images) if cfg.images else "the bundled photos"
  print(f"DSM on {len(sources)} photos from {where} → {out}/\n{_config_text(cfg, backbone)}\n"
        f"weights: {backbone.config.weights_note}", flush=True)
  records, kept = [], []
  stream = batching.segment_photos(
      segmenter, sources, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
      bucket_step=cfg.bucket_step, prefetch=cfg.prefetch, keep_original=True, on_error=skip,
      check=render.check_size)
  for photo, res, timing in progress.progress(stream, total=len(sources), desc="segment",
                                             unit="photo"):
    name, started = photo.source.name, time.perf_counter()
    result = outputs.photo_result(photo, res, patch_size=patch_size, settings=render,
                                  image_size=cfg.image_size)
    records.append(outputs.write_photo(
        result, photo.original, stem=photo_dir / name, rel=f"{PHOTOS}/{name}", settings=render,
        timings=timing, started=started, ground_truth=ground_truth(photo.source)))
    photo.original = None
    for w in records[-1]["warnings"]:
      progress.write(f"warning: {photo.source.origin}: {w}")
    if cfg.semantic.enabled:
      h, w = photo.grid
      kept.append((photo, res.semantic_segments[:h, :w], res.semantic_valid,
                   res.semantic_embeddings))
  if not records:
    raise _cli.WorkError("no photo could be processed: " +
                       "; ".join(f"{k}: {v}" for k, v in failures.items()))
  summary = {
      "settings": _config_text(cfg, backbone),
      "config": cfg.to_dict(),
      "backbone": {"name": cfg.backbone.name, "patch_size": patch_size,
                   "weights_note": backbone.config.weights_note},
      "num_ok": len(records), "num_failed": len(failures),
      "images": {r["name"]: {k: r[k] for k in ("box", "boxes", "foreground_fraction", "files",
                                                "warnings")} for r in records},
      "failures": failures, "skipped_non_images": skipped,
      "compiled_programs": len(segmenter.compiled_shapes),
      "batch_shapes": sorted(list(s) for s in segmenter.compiled_shapes),
  }
  if cfg.semantic.enabled:
    summary["semantic"] = outputs.write_semantic(
        kept, [photo_dir / p.source.name for p, *_ in kept], num_clusters=cfg.semantic.num_clusters,
        pca_dim=cfg.semantic.pca_dim, patch_size=patch_size, seed=cfg.seed)
  gt = outputs.summarise_ground_truth(records)
  if gt:
    summary["ground_truth"] = gt
  per_image = [r["timings_s"]["total"] for r in records]
  summary["timings_s"] = {"wall": time.perf_counter() - t_start,
                          "median_per_image": float(np.median(per_image)),
                          "note": "per image: batch time / photos in it, compiles included"}
  (out / "summary.json").write_text(strict_json.dumps(summary, indent=1))
  write_index(records, summary, out, cfg)
  print_report(records, summary, out)
  return summary


def config_from_flags() -> ml_collections.ConfigDict:
  """The --config file with the short flags that were given applied on top."""
  return common.apply_short_flags(_cli.config_from_flag(_CONFIG),
                                  {flag: field for flag, (field, _, _) in _SHORT_FLAGS.items()})


def main(argv) -> None:
  common.run_main(argv, config_from_flags(), run)


if __name__ == "__main__":
  _cli.run(main)
