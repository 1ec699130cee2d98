"""Per-photo outputs of the DSM pipeline at the photo's own size: the :class:`PhotoResult`
(:func:`photo_result`, what ``dsm.segment`` returns), its files, warnings, scores.

Host NumPy at the output edge (``dsm.batching`` yields a photo and its row of the batch's
``DSMResult``; everything here reads NumPy). Files for a photo with output stem ``STEM``:

* ``STEM.mask.png`` object mask 255 / 0; ``STEM.segments.png`` multi-region labels (palette
  PNG, 0 = background); ``STEM.instances.png`` one id per discovered object (palette PNG,
  id m + 1 = ``"boxes"[m]``, 0 = background); ``STEM.overlay.png`` mask, segments and boxes
  over the photo (longer side ≤ 1024); ``STEM.eigenvectors.png`` the photo and y₁..y_m as
  heat maps;
* ``STEM.json`` the record returned by :func:`write_photo`;
* ``STEM.semantic.png`` (:func:`write_semantic`) dataset clusters c + 1, 0 = background.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from spectral_jax import bilateral as bilateral_lib, crf, image_ops, metrics, protocols, viz
from spectral_jax import strict_json
from spectral_jax.datasets import images as image_io
from spectral_jax.dsm import localisation, masks, semantic

KINDS = ("overlay", "eigenvectors", "mask", "segments", "instances")
MAX_PANEL_HEIGHT = 2048      # px: the largest viz.panel_height accepted
# Pixels of one STEM.eigenvectors.png (tiles × height × width): a photo whose panel would be
# larger (a panorama at a tall panel_height) is refused from its size before any work.
MAX_PANEL_PIXELS = 2**25


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """How the files look: mask upsampling, the optional refinement (CRF or TokenCut's bilateral
  solver), the eigenvector panel."""
  upsample: str = "nearest"
  crf: crf.CRFParams | None = None       # None: no CRF
  crf_method: str = "grid"
  bilateral: bilateral_lib.BilateralParams | None = None   # None: no bilateral solver
  panel_height: int = 240               # pixels per tile of STEM.eigenvectors.png
  panel_eigenvectors: int = 4           # heat maps of y₁..y_m in it
  overlay_max_side: int = 1024

  @classmethod
  def from_config(cls, cfg) -> "RenderSettings":
    """From a DSM command's ml_collections config: ``dsm.upsample``, the ``crf`` and
    ``bilateral`` sections (``enabled`` and the parameters' fields; ``crf.method``) and ``viz``
    (``panel_height``, ``num_eigenvectors``); a section the config lacks (evaluate_dsm's has no
    ``crf`` or ``viz``) keeps the defaults. The one config → render settings function.

    Raises:
      ValueError: naming the bad field.
    """
    values = {name: cfg[section][key] for name, (section, key) in cls.config_keys().items()
              if cfg.get(section) is not None}
    c, b = cfg.get("crf"), cfg.get("bilateral")
    if c is not None and c.enabled:
      values["crf"] = crf.CRFParams(*(c[f] for f in crf.CRFParams._fields))
    if b is not None and b.enabled:
      values["bilateral"] = bilateral_lib.BilateralParams(
          *(b[f] for f in bilateral_lib.BilateralParams._fields))
    settings = cls(**values)
    settings.validate()
    return settings

  @classmethod
  def config_keys(cls) -> dict[str, tuple[str, str]]:
    """field → (section, key) of the plain fields in the commands' config (the CRF's and the
    bilateral solver's parameters sit in their own sections, ``enabled`` switching them)."""
    return {"upsample": ("dsm", "upsample"), "crf_method": ("crf", "method"),
            "panel_height": ("viz", "panel_height"),
            "panel_eigenvectors": ("viz", "num_eigenvectors")}

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and what it accepts."""
    if self.upsample not in masks.UPSAMPLE_METHODS:
      raise ValueError(f"dsm.upsample must be one of {masks.UPSAMPLE_METHODS}; got "
                       f"{self.upsample!r}")
    if self.crf is not None and self.bilateral is not None:
      raise ValueError("choose one mask refinement: crf.enabled or bilateral.enabled")
    if self.bilateral is not None:
      self.bilateral.validate()
    if self.crf is not None:
      for name, v in self.crf._asdict().items():   # NaN weights emptied every mask silently
        low, what = {"iterations": (1, "an int ≥ 1"), "w1": (0, "a finite number ≥ 0"),
                     "w2": (0, "a finite number ≥ 0")}.get(name, (0, "a finite number > 0"))
        if (not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool)
            or not np.isfinite(v) or v < low or (low == 0 and v == 0 and what.endswith("> 0"))
            or (name == "iterations" and v != int(v))):
          raise ValueError(f"crf.{name} must be {what}; got {v!r}")
    if self.panel_height < 1 or self.panel_eigenvectors < 1:
      raise ValueError(f"viz.panel_height and viz.num_eigenvectors must be ≥ 1; got "
                       f"{self.panel_height}, {self.panel_eigenvectors}")
    if self.panel_height > MAX_PANEL_HEIGHT:
      raise ValueError(f"viz.panel_height must be ≤ {MAX_PANEL_HEIGHT} px; got "
                       f"{self.panel_height}")

  def check_size(self, size: tuple[int, int]) -> None:
    """Refuses (ValueError) a photo of ``size`` (H, W) whose eigenvector panel would exceed
    ``MAX_PANEL_PIXELS``: checked from the size alone, before anything is allocated."""
    h, w = size
    width = max(1, round(w * self.panel_height / max(h, 1)))
    pixels = (self.panel_eigenvectors + 1) * self.panel_height * width
    if pixels > MAX_PANEL_PIXELS:
      raise ValueError(f"the photo's {self.panel_eigenvectors + 1} eigenvector panel tiles of "
                       f"{width}×{self.panel_height} px would hold {pixels / 1e6:.0f} MP, above "
                       f"the {MAX_PANEL_PIXELS / 1e6:.0f} MP panel budget: lower "
                       "viz.panel_height")


@dataclasses.dataclass(frozen=True, eq=False)
class PhotoResult:
  """DSM's answer for one photo at the photo's own size (H, W): what ``dsm.segment`` returns
  and what :func:`write_photo` writes (``STEM.mask.png`` is ``mask``, ``STEM.json``'s
  ``"box"``/``"boxes"`` are ``box``/``boxes``, ...). Made by :func:`photo_result`.

  Attributes:
    name: the photo's name (its output stem; results never depend on it).
    source: where it came from (a path, "bundled:<name>", "array").
    size: (H, W) of the photo.
    mask: (H, W) bool object mask (upsampled, refined when the settings say so).
    box: (4,) int [x0, y0, x1, y1] pixels of the photo, x1/y1 exclusive: the best object
      (CorLoc's box; the default discovery: TokenCut's object).
    boxes: (P, 4) int every discovered object's box, best first (P ≤ ``max_objects``; may be
      empty, then ``box`` is the whole answer; recall's boxes; the default: MaskCut's, whose
      first need not be ``box``).
    segments: (H, W) int32 multi-region labels, 0 = background.
    instances: (H, W) int32 object ids, id m + 1 = ``boxes[m]``, 0 = background.
    eigenvalues: (k,) ascending, λ₀ ≈ 0.
    eigenvectors: (h, w, k) the eigenvectors on the photo's patch grid (y₀..y_{k−1}).
    object_map: (h, w) the oriented object map (``PatchResult.fiedler``), > 0 on the object.
    foreground_fraction: the share of the photo's pixels in ``mask``.
    converged: the eigensolver reached its tolerance.
    num_segments: distinct segment labels on the photo's grid.
    warnings: why the answer may be meaningless (constant photo, upscaled, ...).
    input_hw: (H', W') the photo resized for the backbone; grid: (h, w) its patch grid;
    patch_size: P.
  """

  name: str
  source: str
  size: tuple[int, int]
  mask: np.ndarray
  box: np.ndarray
  boxes: np.ndarray
  segments: np.ndarray
  instances: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  object_map: np.ndarray
  foreground_fraction: float
  converged: bool
  num_segments: int
  warnings: tuple[str, ...]
  input_hw: tuple[int, int]
  grid: tuple[int, int]
  patch_size: int

  def overlay_boxes(self) -> np.ndarray:
    """(Q, 4) the boxes the overlay draws: ``box`` first (the best-box colour), then the
    boxes of ``boxes`` other than it."""
    others = [b for b in np.asarray(self.boxes).reshape(-1, 4) if not np.array_equal(b, self.box)]
    return np.asarray([np.asarray(self.box)] + others)


def ground_truth_scores(gt, mask: np.ndarray, box, fraction: float = 0.5,
                        boxes=None) -> dict:
  """Foreground IoU, CorLoc and the objects found of one photo, and the centred-box baseline's.

  Args:
    gt: a ``data.samples.LabelledPhoto`` (``foreground`` (H, W) bool, ``boxes`` (M, 4)).
    mask: (H, W) bool predicted object mask.
    box: (4,) predicted pixel box (CorLoc).
    fraction: side fraction of the centred-box baseline.
    boxes: (P, 4) every discovered object's box, best first (``protocols.object_recall``:
      labelled objects matched one-to-one at IoU ≥ 0.5); None: ``box`` alone.
  """
  boxes = np.asarray(box)[None] if boxes is None or not len(boxes) else np.asarray(boxes)
  base_box = localisation.centred_box(gt.foreground.shape, fraction)
  base_mask = localisation.box_mask(base_box, gt.foreground.shape)
  box_ious = np.asarray(metrics.box_iou(np.asarray(box)[None], gt.boxes))[0]
  base_ious = np.asarray(metrics.box_iou(base_box[None], gt.boxes))[0]
  found = protocols.object_recall([boxes.reshape(-1, 4)], [gt.boxes])
  base_found = protocols.object_recall([base_box[None]], [gt.boxes])
  return {
      "foreground_iou": float(metrics.mask_iou(mask, gt.foreground)),
      "corloc_hit": bool(metrics.corloc_hits(box, gt.boxes)),
      "best_box_iou": float(box_ious.max()),
      "objects_found": found["num_matched"], "objects": found["num_gt"],
      "baseline": {
          "objects_found": base_found["num_matched"],
          "box": base_box.tolist(),
          "foreground_iou": float(metrics.mask_iou(base_mask, gt.foreground)),
          "corloc_hit": bool(metrics.corloc_hits(base_box, gt.boxes)),
          "best_box_iou": float(base_ious.max()),
      },
  }


def summarise_ground_truth(records: list[dict]) -> dict | None:
  """Mean foreground IoU and CorLoc over the records with ``"ground_truth"``, and the
  baseline's; None when there are none."""
  rows = [r for r in records if "ground_truth" in r]
  if not rows:
    return None
  g = [r["ground_truth"] for r in rows]
  mean = lambda xs: float(np.mean(xs))
  objects = sum(x["objects"] for x in g)
  recall = lambda xs: sum(x["objects_found"] for x in xs) / max(objects, 1)
  return {
      "images": [r["name"] for r in rows],
      "foreground_iou": mean([x["foreground_iou"] for x in g]),
      "corloc": mean([x["corloc_hit"] for x in g]),
      "object_recall": recall(g), "objects": objects,   # recall@0.5 of all the boxes
      "baseline": {
          "name": "centred box (sides × fraction), its box as the mask",
          "foreground_iou": mean([x["baseline"]["foreground_iou"] for x in g]),
          "corloc": mean([x["baseline"]["corloc_hit"] for x in g]),
          "object_recall": recall([x["baseline"] for x in g]),
      },
  }


MIN_SIDE_PATCHES = 8   # fewer patches than this across the shorter side: a warning


def photo_warnings(photo, res, image_size: int) -> list[str]:
  """Why a confident-looking answer for this photo may be meaningless.

  Args:
    photo: a ``dsm.batching.Photo``.
    res: its row of the ``DSMResult`` (NumPy).
    image_size: the longer side the photo was resized to (0: native).
  """
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
  shorter = min(photo.grid)
  if shorter < MIN_SIDE_PATCHES and min(photo.size) > min(photo.input_hw):
    warnings.append(f"the photo ({photo.size[1]}×{photo.size[0]} px) was shrunk to "
                    f"{photo.grid[0]}×{photo.grid[1]} patches: its shorter side has too few "
                    "patches to resolve objects; raise --image_size")
  if not res.patches.converged:
    warnings.append("the eigensolver did not reach its tolerance")
  return warnings


def photo_boxes(photo, res) -> np.ndarray:
  """(P, 4) int32 the discovered objects' boxes at the photo's size, best first (P ≤ M)."""
  pr = res.patches
  return localisation.scale_boxes(np.asarray(pr.boxes)[np.asarray(pr.box_valid, bool)],
                                  photo.input_hw, photo.size).reshape(-1, 4)


def photo_instances(photo, res, *, patch_size: int) -> np.ndarray:
  """(H, W) int32 instance ids at the photo's size (nearest, as the mask)."""
  h, w = photo.grid
  return masks.upsample_patch_map(res.patches.instances[:h, :w], patch_size=patch_size,
                                  input_hw=photo.input_hw, output_hw=photo.size)


def photo_mask_and_box(photo, res, *, patch_size: int, settings: RenderSettings):
  """(mask (H, W) bool, box (4,) int32, segments (H, W) int32) at the photo's size."""
  h, w = photo.grid
  up = dict(patch_size=patch_size, input_hw=photo.input_hw, output_hw=photo.size)
  mask = masks.object_mask(res.patches.fiedler[:h, :w], upsample=settings.upsample, **up)
  if settings.crf is not None:
    mask = np.asarray(crf.refine_mask(photo.original, mask, settings.crf,
                                      method=settings.crf_method))
  if settings.bilateral is not None:
    mask = np.asarray(bilateral_lib.refine_mask(photo.original, mask, settings.bilateral)[1])
  segments = masks.upsample_patch_map(res.patches.segments[:h, :w], **up)
  box = localisation.scale_boxes(res.patches.box, photo.input_hw, photo.size)
  return mask, box, segments


def photo_result(photo, res, *, patch_size: int, settings: RenderSettings,
                 image_size: int) -> PhotoResult:
  """One photo's :class:`PhotoResult` at its own size from its row of the batch's result: the
  one function behind ``dsm.segment`` and the segment command's files.

  Args:
    photo: a ``dsm.batching.Photo`` (``original`` kept when the settings refine the mask).
    res: its row of the ``DSMResult`` (NumPy; patch maps on the padded grid).
    patch_size: P.
    settings: :class:`RenderSettings`.
    image_size: the resize setting (for the upscaling warning).
  """
  h, w = photo.grid
  pr = res.patches
  mask, box, segments = photo_mask_and_box(photo, res, patch_size=patch_size, settings=settings)
  return PhotoResult(
      name=photo.source.name, source=photo.source.origin, size=tuple(photo.size),
      mask=np.asarray(mask, bool), box=np.asarray(box), boxes=photo_boxes(photo, res),
      segments=segments, instances=photo_instances(photo, res, patch_size=patch_size),
      eigenvalues=np.asarray(pr.eigenvalues),
      eigenvectors=np.asarray(pr.eigenvectors).reshape(pr.fiedler.shape + (-1,))[:h, :w],
      object_map=np.asarray(pr.fiedler)[:h, :w], foreground_fraction=float(mask.mean()),
      converged=bool(pr.converged), num_segments=int(len(np.unique(pr.segments[:h, :w]))),
      warnings=tuple(photo_warnings(photo, res, image_size)), input_hw=tuple(photo.input_hw),
      grid=(h, w), patch_size=patch_size)


def write_photo(result: PhotoResult, rgb: np.ndarray, *, stem: pathlib.Path, rel: str,
                settings: RenderSettings, timings: dict, started: float | None = None,
                ground_truth=None) -> dict:
  """Writes ``stem.{mask,segments,instances,overlay,eigenvectors}.png`` and ``stem.json``.

  Args:
    result: the photo's :class:`PhotoResult` (:func:`photo_result`).
    rgb: (H, W, 3) uint8 the photo (overlay and eigenvector panel).
    stem: output path without suffixes (its folder is created).
    rel: the same stem relative to the report page (for the record's links).
    settings: :class:`RenderSettings` (the panel's and overlay's sizes).
    timings: seconds so far for this photo (the record adds "outputs" and "total").
    started: ``time.perf_counter()`` when this photo's outputs began (default: now).
    ground_truth: optional ``LabelledPhoto``: adds IoU / CorLoc and the baseline's.
  Returns:
    The record written to ``stem.json``.
  """
  t0 = time.perf_counter() if started is None else started
  r = result
  h, w = r.grid
  stem.parent.mkdir(parents=True, exist_ok=True)
  image_io.write_png(f"{stem}.mask.png", np.where(r.mask, 255, 0).astype(np.uint8))
  viz.label_png(f"{stem}.segments.png", r.segments)
  viz.label_png(f"{stem}.instances.png", r.instances)
  shown_boxes = r.overlay_boxes()   # the default's "box" (TokenCut) need not be in "boxes"
  image_io.write_png(f"{stem}.overlay.png", image_ops.limit_side(
      viz.overlay(rgb, r.mask, r.segments, shown_boxes), settings.overlay_max_side))
  shown = image_ops.resize_to_height(rgb, settings.panel_height)
  m = min(settings.panel_eigenvectors, r.eigenvalues.shape[-1] - 1)
  ys = np.moveaxis(r.eigenvectors[..., 1:1 + m], -1, 0).copy()
  ys[0] = r.object_map  # y₁ as the mask sees it (the foreground rule may flip it)
  maps = masks.upsample_patch_map(ys, patch_size=r.patch_size, input_hw=r.input_hw,
                                  output_hw=shown.shape[:2], method="bilinear")
  image_io.write_png(f"{stem}.eigenvectors.png",
                     viz.eigenvector_panel(shown, list(maps), r.eigenvalues[1:1 + m]))
  timings = dict(timings, outputs=time.perf_counter() - t0)
  timings["total"] = sum(timings.values())
  record = {
      "name": r.name, "source": r.source,
      "width": r.size[1], "height": r.size[0],
      "input_size": [r.input_hw[1], r.input_hw[0]], "grid": [h, w],
      "patch_size": r.patch_size,
      "box": [int(v) for v in r.box],
      "boxes": [[int(v) for v in b] for b in r.boxes],
      "box_format": "[x0, y0, x1, y1] pixels of the photo, x1/y1 exclusive; \"boxes\": one "
                    "per discovered object, best first (instance id i + 1 in instances.png)",
      "foreground_fraction": r.foreground_fraction,
      "eigenvalues": [float(v) for v in r.eigenvalues],
      "eigensolver_converged": r.converged,
      "num_segments": r.num_segments,
      "warnings": list(r.warnings),
      "files": {k: f"{rel}.{k}.png" for k in KINDS},
      "timings_s": {k: round(v, 4) for k, v in timings.items()},
  }
  if ground_truth is not None:
    record["ground_truth"] = ground_truth_scores(ground_truth, r.mask, r.box, boxes=r.boxes)
  pathlib.Path(f"{stem}.json").write_text(strict_json.dumps(record, indent=1))
  return record


def cluster_segments(kept: list, *, num_clusters: int, pca_dim: int,
                     seed: int = 0) -> list[np.ndarray]:
  """Dataset-level clusters of every photo's segment crops (DSM §3.4, SPEC §4).

  Args:
    kept: per photo ``(photo, segments (h, w), valid (S,), embeddings (S, C))``.
    num_clusters, pca_dim: see ``semantic.cluster_embeddings``; seed: its PRNG seed.
  Returns:
    Per photo an (S,) int32 lookup, segment id → cluster in [0, C) (0 where not ``valid``).
  """
  embeddings = [e[v] for _, _, v, e in kept]
  clusters = np.asarray(semantic.cluster_embeddings(
      jax.random.key(seed), np.concatenate(embeddings), num_clusters, pca_dim=pca_dim))
  lookups = []
  for (_, _, valid, _), cl in zip(kept, np.split(clusters,
                                                 np.cumsum([len(e) for e in embeddings])[:-1])):
    lookup = np.zeros(valid.shape, np.int32)
    lookup[valid] = cl
    lookups.append(lookup)
  return lookups


def semantic_labels(photo, segments: np.ndarray, valid: np.ndarray, lookup: np.ndarray, *,
                    patch_size: int) -> np.ndarray:
  """(H, W) int32 semantic map of one photo at its own size: 0 = background, cluster c as c + 1.

  Args:
    photo: a ``dsm.batching.Photo`` (its ``input_hw`` and ``size``).
    segments: (h, w) its segment map; valid: (S,); lookup: (S,) from :func:`cluster_segments`.
  """
  labels = np.asarray(semantic.semantic_map(segments, lookup, valid))
  return masks.upsample_patch_map(labels, patch_size=patch_size, input_hw=photo.input_hw,
                                  output_hw=photo.size)


def write_semantic(kept: list, stems: list[pathlib.Path], *, num_clusters: int, pca_dim: int,
                   patch_size: int, seed: int = 0) -> dict:
  """Dataset-level clusters of all segment crops → ``stem.semantic.png`` (0 = background).

  Args:
    kept: per photo ``(photo, segments (h, w), valid (S,), embeddings (S, C))``.
    stems: per photo its output stem.
    num_clusters, pca_dim: see ``semantic.cluster_embeddings``.
  Returns:
    A summary: crops, clusters and their sizes.
  """
  lookups = cluster_segments(kept, num_clusters=num_clusters, pca_dim=pca_dim, seed=seed)
  for (photo, seg, valid, _), lookup, stem in zip(kept, lookups, stems):
    viz.label_png(f"{stem}.semantic.png",
                  semantic_labels(photo, seg, valid, lookup, patch_size=patch_size))
  clusters = np.concatenate([lk[v] for lk, (_, _, v, _) in zip(lookups, kept)])
  return {"num_crops": int(len(clusters)), "num_clusters": int(num_clusters),
          "cluster_sizes": np.bincount(clusters, minlength=num_clusters).tolist(),
          "labels": "0 = background, c + 1 = dataset cluster c"}
