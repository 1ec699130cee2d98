r"""Deep Spectral Methods on a benchmark: CorLoc (VOC07 / VOC12 / COCO20k), single-object
segmentation (ECSSD, DUTS-TE, DUT-OMRON, CUB-200-2011) or semantic segmentation (VOC2012 val),
beside the paper's number.

  python -m experiments.evaluate_dsm \
      --dataset=voc07|voc12|coco20k|ecssd|duts|dut_omron|cub|voc12_semantic \
      --data_dir=DIR --out=OUT [--split=SPLIT] [--limit=N] [--overwrite] [--config.*=...]

DIR is where the official archives were extracted (see spectral_jax/datasets/voc.py and
saliency.py for the archive names); nothing is downloaded. Writes OUT/metrics.json (CorLoc:
"corloc", "num_images", "num_hits", "object_recall"; masks: "iou", "accuracy", "max_f_beta",
"num_images"; semantic: "miou", "pixel_accuracy", "per_class_iou" (class → IoU), "num_images"),
OUT/boxes.json (image id → DSM box [x0, y0, x1, y1] in pixels, x1/y1 exclusive),
OUT/objects.json (image id → every discovered object's box, best first; --config.dsm.discovery),
OUT/per_image.json and, with --config.save_masks=True, OUT/masks/<id>.png (the object mask, or
the semantic map: 0 = background, cluster c as c + 1). The work is
``spectral_jax.dsm.evaluate.evaluate_dsm``; exit code 0 on success, 1 when the data is missing or
nothing could be evaluated, 2 for a usage error.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import flags

from experiments import common
from spectral_jax import _cli, backbones, datasets, dsm, progress, strict_json, viz
from spectral_jax.dsm import evaluate as dsm_evaluate
from spectral_jax.datasets import images as image_io

KINDS = ("boxes", "mask", "semantic")
OWNED = ("metrics.json", "boxes.json", "objects.json", "per_image.json", "masks")   # overwritten
NAMES = tuple(n for n in datasets.DATASETS if datasets.kind(n) in KINDS)

_CONFIG = _cli.define_config_file(
    "config", str(pathlib.Path(__file__).parent / "configs" / "evaluate_dsm.py"),
    "ml_collections config (experiments/configs/evaluate_dsm.py[:preset]); override fields "
    "with --config.<field>=value.", lock_config=True)
_SHORT_FLAGS = {
    "dataset": (flags.DEFINE_string, f"benchmark: {', '.join(NAMES)}"),
    "data_dir": (flags.DEFINE_string, "folder holding the extracted official archives"),
    "split": (flags.DEFINE_string, "split (default: trainval for VOC, test otherwise)"),
    "out": (flags.DEFINE_string, "output folder (must be empty unless --overwrite)"),
    "limit": (flags.DEFINE_integer, "evaluate the first N images only"),
    "overwrite": (flags.DEFINE_boolean, "replace the files of an earlier run in --out"),
}
for _name, (_define, _help) in _SHORT_FLAGS.items():
  _define(_name, None, _help)


def config_from_flags():
  """The --config file with the short flags that were given applied on top."""
  return common.apply_short_flags(_cli.config_from_flag(_CONFIG),
                                  {name: name for name in _SHORT_FLAGS})


def check_config(cfg) -> tuple[dsm.PipelineConfig, dsm.RenderSettings]:
  """Validates the settings before any work; returns the pipeline's and the masks' settings
  (``PipelineConfig.from_config``, ``RenderSettings.from_config``, as the segment command).

  Raises:
    _cli.UsageError: naming the field.
  """
  if datasets.canonical_name(cfg.dataset) not in NAMES:
    raise _cli.UsageError(f"--dataset must be one of {', '.join(NAMES)}; got {cfg.dataset!r}")
  cfg.dataset = datasets.canonical_name(cfg.dataset)  # an alias reports as its dataset
  cfg.semantic.enabled = datasets.kind(cfg.dataset) == "semantic"  # the crops it needs
  if not cfg.data_dir and not cfg.tfds_dir:
    raise _cli.UsageError("--data_dir is required: the folder the official archives were "
                          "extracted into (or --config.tfds_dir: a prepared copy)")
  if not cfg.out:
    raise _cli.UsageError("--out is required: a new folder for metrics.json and boxes.json")
  if cfg.limit < 0 or cfg.batch_size < 1 or cfg.image_size < 0 or cfg.prefetch < 1:
    raise _cli.UsageError(f"limit and image_size must be ≥ 0, batch_size and prefetch ≥ 1 (got "
                          f"{cfg.limit}, {cfg.image_size}, {cfg.batch_size}, {cfg.prefetch})")
  if cfg.semantic.matching not in ("hungarian", "majority") or cfg.semantic.absent not in (
      "zero", "skip"):
    raise _cli.UsageError("semantic.matching must be hungarian or majority and semantic.absent "
                          f"zero or skip (got {cfg.semantic.matching!r}, {cfg.semantic.absent!r})")
  if cfg.backbone.name not in backbones.BACKBONES:
    raise _cli.UsageError(f"unknown backbone {cfg.backbone.name!r}; choose one of "
                          f"{', '.join(backbones.BACKBONES)}")
  if cfg.backbone.overrides and cfg.backbone.weights != "random":
    raise _cli.UsageError("backbone.overrides only applies to backbone.weights='random'")
  try:
    pipeline = dsm.PipelineConfig.from_config(cfg)
    pipeline.validate()
    render = dsm.RenderSettings.from_config(cfg)
    backbones.get_config(cfg.backbone.name, dtype=cfg.backbone.dtype,
                         **_cli.parse_overrides(cfg.backbone.overrides))
  except (KeyError, TypeError, ValueError) as e:
    raise _cli.UsageError(f"bad setting: {e}") from e
  if render.bilateral is not None and datasets.kind(cfg.dataset) != "mask":
    raise _cli.UsageError("bilateral.enabled refines single-object masks: it applies to the "
                          "saliency / mask datasets only")
  return pipeline, render


def check_out(cfg) -> pathlib.Path:
  """The output folder (not created yet); refuses a file, or a folder holding files unless
  --overwrite, so that no run silently replaces another's results."""
  return _cli.output_folder(cfg.out, overwrite=cfg.overwrite, overwrite_hint="--overwrite")


def report_rows(name: str, measured: dict) -> list[tuple[str, str, str]]:
  """(metric, measured, paper) rows: CorLoc in %, segmentation scores as fractions."""
  paper = dsm_evaluate.PAPER.get(name, {})
  fmt = lambda v, pct: "—" if v is None else (f"{v:.1f}" if pct else f"{v:.3f}")
  if "miou" in measured:
    return [(label, fmt(100 * measured[key], True), fmt(paper.get(key), True))
            for key, label in (("miou", "mIoU (%)"), ("pixel_accuracy", "pixel acc. (%)"))]
  if "corloc" in measured:
    rows = [("CorLoc (%)", fmt(100 * measured["corloc"], True), fmt(paper.get("corloc"), True))]
    if "object_recall" in measured:
      rows.append(("recall@0.5 (%)", fmt(100 * measured["object_recall"]["recall"], True),
                   fmt(None, True)))
    if "ap50" in measured:
      rows.append(("AP50, class-agnostic (%)", fmt(100 * measured["ap50"], True), fmt(None, True)))
    return rows
  return [(label, fmt(measured[key], False), fmt(paper.get(key), False))
          for key, label in (("iou", "IoU"), ("accuracy", "accuracy"),
                             ("max_f_beta", "maxFβ (β²=0.3)"))]


def run(cfg) -> dict:
  t0 = time.perf_counter()
  pipeline_config, render = check_config(cfg)
  out = check_out(cfg)
  dataset = datasets.load(cfg.dataset, cfg.data_dir, cfg.split or None,  # before creating out
                          tfds_dir=cfg.tfds_dir or None)
  kind = datasets.kind(cfg.dataset)
  if kind == "semantic":
    with _cli.usage_errors():
      dsm_evaluate.check_semantic_setup(pipeline_config, dataset, cfg.semantic.num_clusters,
                                        cfg.semantic.matching)
  with _cli.output_run(str(out), overwrite=cfg.overwrite, owned=OWNED,
                       overwrite_hint="--overwrite"):
    return _evaluate(cfg, out, dataset, kind, pipeline_config, render, t0)


def _evaluate(cfg, out, dataset, kind, pipeline_config, render, t0) -> dict:
  """`run`'s work inside its locked, marked output folder."""
  backbone = common.load_backbone(cfg)
  segmenter = dsm.make_pipeline(backbone, pipeline_config)
  n = min(cfg.limit or len(dataset), len(dataset))
  print(f"DSM on {cfg.dataset} {dataset.split}: {n} of {len(dataset)} images from "
        f"{dataset.root} → {out}/\nbackbone {cfg.backbone.name} "
        f"({cfg.backbone.weights or 'pretrained'}), image size {cfg.image_size or 'native'}, "
        f"K={cfg.dsm.num_eigenvectors}\nweights: {backbone.config.weights_note}", flush=True)

  def skip(image_id, error):
    progress.write(f"skipping {image_id}: {error}")

  def save_mask(image_id, mask):
    path = out / "masks" / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask.dtype == bool:
      image_io.write_png(path, np.where(mask, 255, 0).astype(np.uint8))
    else:  # a semantic map: 0 = background, cluster c as c + 1
      viz.label_png(path, mask)

  result = dsm_evaluate.evaluate_dsm(
      segmenter, dataset, kind=kind, image_size=cfg.image_size, batch_size=cfg.batch_size,
      limit=cfg.limit or None, seed=cfg.seed, upsample=render.upsample, prefetch=cfg.prefetch,
      bucket_step=cfg.bucket_step, on_error=skip,
      on_mask=save_mask if cfg.save_masks else None, num_clusters=cfg.semantic.num_clusters,
      pca_dim=cfg.semantic.pca_dim, matching=cfg.semantic.matching,
      absent=cfg.semantic.absent, bilateral=render.bilateral)
  record = dict(result.metrics, dataset=cfg.dataset, split=dataset.split,
                paper=dsm_evaluate.PAPER.get(cfg.dataset), failures=result.failures,
                box_format="[x0, y0, x1, y1] pixels of the image, x1/y1 exclusive",
                config=cfg.to_dict(), wall_s=round(time.perf_counter() - t0, 2))
  (out / "metrics.json").write_text(strict_json.dumps(record, indent=1))
  (out / "boxes.json").write_text(strict_json.dumps(result.boxes, indent=1))
  (out / "objects.json").write_text(strict_json.dumps(result.objects, indent=1))
  (out / "per_image.json").write_text(strict_json.dumps(result.per_image, indent=1))
  rows = report_rows(cfg.dataset, result.metrics)
  print(f"\n{cfg.dataset} {dataset.split}, {result.metrics['num_images']} images"
        f"{f', {len(result.failures)} skipped' if result.failures else ''}:")
  width = max(len("metric"), *(len(metric) for metric, _, _ in rows))
  print(f"{'metric':<{width}} {'measured':>9} {'paper':>7}")
  for metric, measured, paper in rows:
    print(f"{metric:<{width}} {measured:>9} {paper:>7}")
  per_class = {k: v for k, v in result.metrics.get("per_class_iou", {}).items() if v is not None}
  if per_class:   # classes in neither ground truth nor prediction have no IoU: not listed
    print("IoU per class (%):")
    for name, iou in per_class.items():
      print(f"  {name:<14} {100 * iou:>9.1f}")
  print(f"(paper: {(dsm_evaluate.PAPER.get(cfg.dataset) or {}).get('source', '—')})\n"
        f"metrics.json, boxes.json, per_image.json in {out}/ ({record['wall_s']:.1f} s)")
  return record


def main(argv) -> None:
  common.run_main(argv, config_from_flags(), run)


if __name__ == "__main__":
  _cli.run(main)
