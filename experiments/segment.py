r"""Deep Spectral Methods on a folder of photos: object box, mask, segments, report page.

  python -m experiments.segment                       # the bundled photos → ./segment_output
  python -m experiments.segment --images=DIR --out=DIR [--image_size=448] [--k=20]
      [--image_weight=0.0] [--crf] [--num_segments=4] [--batch_size=4] [--semantic]

For every photo DIR/REL/NAME.ext it writes OUT/photos/REL/NAME.mask.png (object 255 /
background 0, at the photo's size), NAME.segments.png (multi-region labels, palette PNG,
0 = background), NAME.eigenvectors.png (y₁..y₄ heat maps), NAME.overlay.png, NAME.json (box
[x0, y0, x1, y1] in pixels, eigenvalues, warnings, timings) and, with --semantic,
NAME.semantic.png (0 = background, dataset cluster c as c + 1); once: OUT/summary.json and
OUT/index.html (open it in a browser). Photo outputs live under photos/, so no photo can take a
run-level name; an OUT holding files is refused unless --config.overwrite=True.

The work is `spectral_jax.dsm`: photos stream through a bounded prefetch into padded batches of
a few grid shapes (`dsm.batching`), and each batch is one call of the jitted pipeline
(`dsm.make_pipeline`). Unreadable, too small or too large photos are reported and skipped; the
exit code is 0 when at least one photo succeeded, 1 when none did, 2 for a usage error. Where
ground truth exists (the bundled VOC and ARC2017 photos) the foreground IoU and CorLoc are
printed and stored in summary.json next to a centred-box baseline (quality: BUILD_NOTES.md).
"""

from __future__ import annotations

import html
import json
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from spectral_jax import _cli, backbones, crf, dsm, image_ops, metrics, viz
from spectral_jax.data import images as image_io
from spectral_jax.data import samples
from spectral_jax.dsm import batching

DEFAULT_OUT = "segment_output"
PHOTOS = "photos"  # OUT/photos/... holds the per-photo files; run-level files sit beside it

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).parent / "configs" / "segment.py"),
    "ml_collections config (experiments/configs/segment.py[:preset]); fields can be overridden "
    "with --config.<field>=value.", lock_config=True)
# Short flags for the common settings; when given they override the config (one default each:
# the config's).
_SHORT_FLAGS = {
    "images": ("images", flags.DEFINE_string, "folder of photos (default: the bundled photos)"),
    "out": ("out", flags.DEFINE_string, f"output folder (default: ./{DEFAULT_OUT})"),
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


def _output_names(paths: list[pathlib.Path], root: pathlib.Path) -> list[str]:
  """Output stems that keep each photo's relative folder (``sub/x.png`` → ``sub/x``); within a
  folder, photos sharing a stem keep their suffix (``a.jpg``, ``a.png``). Unique by
  construction: two files never share a relative path."""
  rel = [p.relative_to(root) for p in paths]
  stems = [(r.parent, r.stem) for r in rel]
  return [str(r.parent / (r.stem if stems.count((r.parent, r.stem)) == 1 else r.name))
          for r in rel]


def collect_sources(cfg, out: pathlib.Path) -> tuple[list[batching.Source], dict[str, str]]:
  """The photos to process, and {file: reason} for files skipped as non-images.

  Raises:
    FileNotFoundError: the folder does not exist.
    _cli.UsageError: no photo to process, unknown sample names, --out and --images overlap.
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
  out = out.resolve()
  if out == root or root.is_relative_to(out):
    raise _cli.UsageError(f"--images ({root}) must not be --out ({out}) or inside it: the run "
                          "would read its own outputs; choose another --out")
  paths = image_io.list_images(root, recursive=cfg.recursive)
  paths = [p for p in paths if not p.resolve().is_relative_to(out)]  # earlier outputs
  pattern = "**/*" if cfg.recursive else "*"
  skipped = {str(p): f"not an image file (suffix not in {', '.join(image_io.IMAGE_SUFFIXES)})"
             for p in sorted(root.glob(pattern))
             if p.is_file() and p.suffix.lower() not in image_io.IMAGE_SUFFIXES
             and not p.name.startswith(".") and not p.resolve().is_relative_to(out)}
  if not paths:
    raise _cli.UsageError(f"no image files in {str(root)!r} (looked for "
                          f"{', '.join(image_io.IMAGE_SUFFIXES)}); point --images at a folder "
                          "of photos")
  sources = [batching.Source(n, str(p), (lambda p=p: image_io.read_image(p)))
             for n, p in zip(_output_names(paths, root), paths)]
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


def load_backbone(cfg) -> backbones.Backbone:
  """The backbone of ``cfg.backbone`` (pretrained offline, from a path, or random)."""
  name, weights = cfg.backbone.name, cfg.backbone.weights
  if weights == "random":
    overrides = _cli.parse_overrides(cfg.backbone.overrides)
    return backbones.init_backbone(backbones.get_config(name, dtype=cfg.backbone.dtype,
                                                        **overrides), seed=cfg.seed)
  return backbones.load_pretrained(name, weights or None, dtype=cfg.backbone.dtype)


# ----------------------------------------------------------------------------- outputs


def evaluate(gt, mask: np.ndarray, box: np.ndarray, fraction: float) -> dict:
  """Foreground IoU and CorLoc of one photo, and the centred-box baseline's (SPEC §4)."""
  base_box = dsm.centred_box(gt.foreground.shape, fraction)
  base_mask = dsm.box_mask(base_box, gt.foreground.shape)
  box_ious = np.asarray(metrics.box_iou(np.asarray(box)[None], gt.boxes))[0]
  base_ious = np.asarray(metrics.box_iou(base_box[None], gt.boxes))[0]
  return {
      "foreground_iou": float(metrics.mask_iou(mask, gt.foreground)),
      "corloc_hit": bool(box_ious.max() >= 0.5),
      "best_box_iou": float(box_ious.max()),
      "baseline": {
          "box": base_box.tolist(),
          "foreground_iou": float(metrics.mask_iou(base_mask, gt.foreground)),
          "corloc_hit": bool(base_ious.max() >= 0.5),
          "best_box_iou": float(base_ious.max()),
      },
  }


def photo_warnings(photo: batching.Photo, res, image_size: int) -> list[str]:
  """Why a confident-looking answer for this photo may be meaningless."""
  warnings = []
  if res.nonfinite:
    warnings.append("the photo has NaN/Inf pixels (set to 0): the result is meaningless")
  if res.constant:
    warnings.append("the photo is (nearly) one colour: there is no object to find; the mask "
                    "and box are meaningless")
  longer = max(photo.size)
  if image_size and longer * 2 < image_size:
    warnings.append(f"the photo ({photo.size[1]}×{photo.size[0]} px) was upscaled "
                    f"{image_size / longer:.1f}×: detail is invented")
  if not res.patches.converged:
    warnings.append("the eigensolver did not reach its tolerance")
  return warnings


def write_photo(photo: batching.Photo, res, cfg, patch_size: int, out: pathlib.Path,
                timings: dict) -> dict:
  """Writes the photo's PNGs and NAME.json; returns the record."""
  t0 = time.perf_counter()
  h, w = photo.grid
  pr = res.patches
  fiedler = pr.fiedler[:h, :w]
  rgb = photo.original
  up = dict(patch_size=patch_size, input_hw=photo.input_hw, output_hw=photo.size)
  mask = dsm.object_mask(fiedler, upsample=cfg.dsm.upsample, **up)
  if cfg.crf.enabled:
    params = crf.CRFParams(*(cfg.crf[f] for f in crf.CRFParams._fields))
    mask = np.asarray(crf.refine_mask(rgb, mask, params, method=cfg.crf.method))
  segments = dsm.upsample_patch_map(pr.segments[:h, :w], **up)
  box = dsm.scale_boxes(pr.box, photo.input_hw, photo.size)
  stem = out / photo.source.name
  stem.parent.mkdir(parents=True, exist_ok=True)
  rel = f"{PHOTOS}/{photo.source.name}"
  files = {k: f"{rel}.{k}.png" for k in ("overlay", "eigenvectors", "mask", "segments")}
  image_io.write_png(f"{stem}.mask.png", np.where(mask, 255, 0).astype(np.uint8))
  viz.label_png(f"{stem}.segments.png", segments)
  image_io.write_png(f"{stem}.overlay.png",
                     image_ops.limit_side(viz.overlay(rgb, mask, segments, box), 1024))
  shown = image_ops.resize_to_height(rgb, cfg.viz.panel_height)
  m = min(cfg.viz.num_eigenvectors, pr.eigenvectors.shape[-1] - 1)
  vectors = pr.eigenvectors.reshape(pr.fiedler.shape + (-1,))[:h, :w, 1:1 + m]
  ys = np.moveaxis(vectors, -1, 0).copy()
  ys[0] = fiedler  # y₁ as the mask sees it (the foreground rule may flip it)
  maps = dsm.upsample_patch_map(ys, patch_size=patch_size, input_hw=photo.input_hw,
                                output_hw=shown.shape[:2], method="bilinear")
  image_io.write_png(f"{stem}.eigenvectors.png",
                     viz.eigenvector_panel(shown, list(maps), pr.eigenvalues[1:1 + m]))
  timings = dict(timings, outputs=time.perf_counter() - t0)
  timings["total"] = sum(timings.values())
  record = {
      "name": photo.source.name, "source": photo.source.origin,
      "width": photo.size[1], "height": photo.size[0],
      "input_size": [photo.input_hw[1], photo.input_hw[0]], "grid": [h, w],
      "patch_size": patch_size,
      "box": [int(v) for v in box],
      "box_format": "[x0, y0, x1, y1] pixels of the photo, x1/y1 exclusive",
      "foreground_fraction": float(mask.mean()),
      "eigenvalues": [float(v) for v in pr.eigenvalues],
      "eigensolver_converged": bool(pr.converged),
      "num_segments": int(len(np.unique(pr.segments[:h, :w]))),
      "warnings": photo_warnings(photo, res, cfg.image_size),
      "files": files,
      "timings_s": {k: round(v, 4) for k, v in timings.items()},
  }
  gt = ground_truth(photo.source)
  if gt is not None:
    record["ground_truth"] = evaluate(gt, mask, box, cfg.baseline_box_fraction)
  pathlib.Path(f"{stem}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
  photo.original = None
  return record


def write_semantic(kept: list, cfg, patch_size: int, out: pathlib.Path) -> dict:
  """Dataset-level clusters of all segment crops → NAME.semantic.png (0 = background).

  ``kept``: per photo (photo, segments (h, w), valid (S,), embeddings (S, C)).
  """
  s = cfg.semantic
  embeddings = [e[v] for _, _, v, e in kept]
  all_emb = np.concatenate(embeddings)
  clusters = np.asarray(dsm.cluster_embeddings(jax.random.key(cfg.seed), all_emb,
                                               s.num_clusters, pca_dim=s.pca_dim))
  per_image = np.split(clusters, np.cumsum([len(e) for e in embeddings])[:-1])
  for (photo, seg, valid, _), cl in zip(kept, per_image):
    lookup = np.zeros(valid.shape, np.int32)
    lookup[valid] = cl
    labels = np.asarray(dsm.semantic_map(seg, lookup, valid))
    labels = dsm.upsample_patch_map(labels, patch_size=patch_size, input_hw=photo.input_hw,
                                    output_hw=photo.size)
    viz.label_png(out / f"{photo.source.name}.semantic.png", labels)
  return {"num_crops": int(len(all_emb)), "num_clusters": int(s.num_clusters),
          "cluster_sizes": np.bincount(clusters, minlength=s.num_clusters).tolist(),
          "labels": "0 = background, c + 1 = dataset cluster c"}
# ----------------------------------------------------------------------------- summary


def summarise_ground_truth(records: list[dict]) -> dict | None:
  """Mean foreground IoU and CorLoc over the photos with ground truth, and the baseline's."""
  rows = [r for r in records if "ground_truth" in r]
  if not rows:
    return None
  g = [r["ground_truth"] for r in rows]
  mean = lambda xs: float(np.mean(xs))
  return {
      "images": [r["name"] for r in rows],
      "foreground_iou": mean([x["foreground_iou"] for x in g]),
      "corloc": mean([x["corloc_hit"] for x in g]),
      "baseline": {
          "name": "centred box (sides × fraction), its box as the mask",
          "foreground_iou": mean([x["baseline"]["foreground_iou"] for x in g]),
          "corloc": mean([x["baseline"]["corloc_hit"] for x in g]),
      },
  }


def _config_text(cfg, backbone) -> str:
  d = cfg.dsm
  size = cfg.image_size or "native"
  return (f"backbone {cfg.backbone.name} ({cfg.backbone.weights or 'pretrained'}), image size "
          f"{size}, P={backbone.config.patch_size}, graph on {d.features}, K={d.num_eigenvectors}, "
          f"λ={d.image_weight}, "
          f"object side {d.foreground}, connectivity {d.connectivity}, upsample {d.upsample}, CRF "
          f"{'on' if cfg.crf.enabled else 'off'}, segments "
          f"{'eigengap' if d.adaptive_segments else d.num_segments}")


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
          f"CorLoc {gt['corloc']:.2f} ({round(gt['corloc'] * n)}/{n}); centred-box baseline: "
          f"IoU {b['foreground_iou']:.3f}, CorLoc {b['corloc']:.2f}")
  for src, why in summary["failures"].items():
    print(f"skipped {src}: {why}")
  t = summary["timings_s"]
  print(f"\n{summary['num_ok']} photos in {t['wall']:.1f} s (compiles included); outputs, "
        f"summary.json and index.html in {out}/ (open {out / 'index.html'})")


def write_index(records: list[dict], summary: dict, out: pathlib.Path, cfg) -> None:
  entries = []
  for r in records:
    meta = {"size": f"{r['width']}×{r['height']}", "box": r["box"],
            "λ₁": f"{r['eigenvalues'][1]:.3f}",
            "foreground": f"{100 * r['foreground_fraction']:.0f}%"}
    if "ground_truth" in r:
      g = r["ground_truth"]
      meta["IoU"] = f"{g['foreground_iou']:.3f} (baseline {g['baseline']['foreground_iou']:.3f})"
      meta["CorLoc hit"] = f"{g['corloc_hit']} (baseline {g['baseline']['corloc_hit']})"
    files = dict(r["files"])
    if cfg.semantic.enabled:
      files["semantic"] = f"{PHOTOS}/{r['name']}.semantic.png"
    entries.append({"name": r["name"], "files": files, "meta": meta})
  columns = [("overlay", "mask, box and segments"), ("eigenvectors", "eigenvectors"),
             ("mask", "mask"), ("segments", "segments")]
  if cfg.semantic.enabled:
    columns.append(("semantic", "semantic"))
  intro = (f"<p>{html.escape(summary['settings'])}</p><p><small>"
           f"{html.escape(summary['backbone']['weights_note'])}</small></p>")
  gt = summary.get("ground_truth")
  if gt:
    b = gt["baseline"]
    intro += (f"<p>Ground truth: foreground IoU {gt['foreground_iou']:.3f}, CorLoc "
              f"{gt['corloc']:.2f}; centred-box baseline IoU {b['foreground_iou']:.3f}, CorLoc "
              f"{b['corloc']:.2f}</p>")
  viz.write_index_html(out / "index.html", entries, columns=columns,
                       title="Deep Spectral Methods: localisation and segmentation", intro=intro,
                       failures=summary["failures"])


# ----------------------------------------------------------------------------- run


def check_config(cfg) -> dsm.PipelineConfig:
  """Validates every setting before any work; returns the pipeline's config.

  Raises:
    _cli.UsageError: naming the field and what it accepts.
  """
  try:
    pipeline = dsm.PipelineConfig.from_config(cfg)
    pipeline.validate()
  except (TypeError, ValueError) as e:
    raise _cli.UsageError(f"bad setting: {e}") from e
  d = cfg.dsm
  if d.upsample not in dsm.UPSAMPLE_METHODS:
    raise _cli.UsageError(f"dsm.upsample must be one of {dsm.UPSAMPLE_METHODS}; got "
                          f"{d.upsample!r}")
  if cfg.batch_size < 1 or cfg.image_size < 0 or cfg.bucket_step < 1 or cfg.prefetch < 1:
    raise _cli.UsageError("batch_size, bucket_step and prefetch must be ≥ 1 and image_size ≥ 0 "
                          f"(got {cfg.batch_size}, {cfg.bucket_step}, {cfg.prefetch}, "
                          f"{cfg.image_size})")
  if cfg.images and cfg.samples:
    raise _cli.UsageError("samples selects bundled photos; it cannot be combined with images")
  if cfg.backbone.name not in backbones.BACKBONES:
    raise _cli.UsageError(f"unknown backbone {cfg.backbone.name!r}; choose one of "
                          f"{', '.join(backbones.BACKBONES)}")
  if cfg.backbone.overrides and cfg.backbone.weights != "random":
    raise _cli.UsageError("backbone.overrides only applies to weights='random'")
  overrides = _cli.parse_overrides(cfg.backbone.overrides)
  try:
    backbones.get_config(cfg.backbone.name, dtype=cfg.backbone.dtype, **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise _cli.UsageError(f"bad backbone settings {cfg.backbone.overrides!r}: {e}") from e
  return pipeline


def prepare_out(cfg) -> pathlib.Path:
  """The output folder, created; refuses a file, or a folder holding files (unless
  ``overwrite``), so that no run silently replaces another's outputs."""
  out = pathlib.Path(cfg.out or DEFAULT_OUT).expanduser()
  for parent in [out, *out.parents]:
    if parent.exists() and not parent.is_dir():
      raise _cli.UsageError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder")
  if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
    raise _cli.UsageError(f"--out {str(out)!r} already holds files (an earlier run?); choose "
                          "another --out or pass --config.overwrite=True to replace them")
  return out


def run(cfg: ml_collections.ConfigDict) -> dict:
  """Runs the whole command; returns the summary (also written to summary.json).

  Raises:
    _cli.UsageError / FileNotFoundError: bad settings, folder, or no photos.
    RuntimeError: no photo could be processed (the reasons are listed).
  """
  t_start = time.perf_counter()
  pipeline_config = check_config(cfg)
  out = prepare_out(cfg)
  sources, skipped = collect_sources(cfg, out)
  backbone = load_backbone(cfg)
  patch_size = backbone.config.patch_size
  segmenter = dsm.make_pipeline(backbone, pipeline_config)
  photo_dir = out / PHOTOS
  photo_dir.mkdir(parents=True, exist_ok=True)
  failures: dict[str, str] = {}

  def skip(source, error):
    failures[source.origin] = str(error)
    tqdm.write(f"skipping {source.origin}: {error}", file=sys.stderr)

  where = cfg.images or "the bundled photos"
  print(f"DSM on {len(sources)} photos from {where} → {out}/\n{_config_text(cfg, backbone)}\n"
        f"weights: {backbone.config.weights_note}", flush=True)
  records, kept = [], []
  stream = batching.segment_photos(
      segmenter, sources, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
      bucket_step=cfg.bucket_step, prefetch=cfg.prefetch, keep_original=True, on_error=skip)
  for photo, res, timing in tqdm(stream, total=len(sources), desc="segment", unit="photo"):
    records.append(write_photo(photo, res, cfg, patch_size, photo_dir, timing))
    for w in records[-1]["warnings"]:
      tqdm.write(f"warning: {photo.source.origin}: {w}", file=sys.stderr)
    if cfg.semantic.enabled:
      h, w = photo.grid
      kept.append((photo, res.semantic_segments[:h, :w], res.semantic_valid,
                   res.semantic_embeddings))
  if not records:
    raise RuntimeError("no photo could be processed: " +
                       "; ".join(f"{k}: {v}" for k, v in failures.items()))
  summary = {
      "settings": _config_text(cfg, backbone),
      "config": cfg.to_dict(),
      "backbone": {"name": cfg.backbone.name, "patch_size": patch_size,
                   "weights_note": backbone.config.weights_note},
      "num_ok": len(records), "num_failed": len(failures),
      "images": {r["name"]: {k: r[k] for k in ("box", "foreground_fraction", "files",
                                                "warnings")} for r in records},
      "failures": failures, "skipped_non_images": skipped,
      "compiled_programs": len(segmenter.compiled_shapes),
      "batch_shapes": sorted(list(s) for s in segmenter.compiled_shapes),
  }
  if cfg.semantic.enabled:
    summary["semantic"] = write_semantic(kept, cfg, patch_size, photo_dir)
  gt = summarise_ground_truth(records)
  if gt:
    summary["ground_truth"] = gt
  per_image = [r["timings_s"]["total"] for r in records]
  summary["timings_s"] = {"wall": time.perf_counter() - t_start,
                          "median_per_image": float(np.median(per_image)),
                          "note": "per image: batch time / photos in it, compiles included"}
  (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
  write_index(records, summary, out, cfg)
  print_report(records, summary, out)
  return summary


def config_from_flags() -> ml_collections.ConfigDict:
  """The --config file with the short flags that were given applied on top."""
  cfg = _CONFIG.value
  with cfg.unlocked():
    for flag, (field, _, _) in _SHORT_FLAGS.items():
      value = flags.FLAGS[flag].value
      if value is not None:
        node = cfg
        *parents, leaf = field.split(".")
        for p in parents:
          node = node[p]
        node[leaf] = value
  return cfg


def enable_compilation_cache(setting: str) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache ("default", a folder, or "" for off)."""
  if not setting:
    return None
  folder = backbones.cache_dir() / "xla" if setting == "default" else pathlib.Path(setting)
  jax.config.update("jax_compilation_cache_dir", str(folder.expanduser()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return folder


def main(argv) -> None:
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise _cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = config_from_flags()
  enable_compilation_cache(cfg.compilation_cache)
  run(cfg)


if __name__ == "__main__":
  _cli.run(main)
