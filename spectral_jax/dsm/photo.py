"""DSM on one photo from Python: a photo in, its mask, boxes and segments at its own size out.

    result = dsm.segment("photo.jpg")          # offline DINOv2 ViT-S/14, dsm.PipelineConfig()
    result.mask, result.box, result.boxes      # (H, W) bool, [x0, y0, x1, y1], (P, 4)
    result.segments, result.instances          # (H, W) int32 label maps

The answer is made by the code the segment command writes its files with
(``dsm.batching.segment_photos`` → ``dsm.outputs.photo_result``): for the same pixels,
settings and seed (never the name), ``result.mask`` is the command's ``NAME.mask.png``,
``box``/``boxes`` are ``NAME.json``'s, ``segments``/``instances`` its label PNGs (tested).
For many photos build a :class:`PhotoSegmenter` once: its compiled programs (one per padded
patch grid, ``batching.bucket``) are reused from call to call; for batches of arrays use
``dsm.make_pipeline``.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from spectral_jax import backbones
from spectral_jax.datasets import images as image_io
from spectral_jax.dsm import batching, outputs, pipeline

BACKBONE = "dinov2_vits14"  # the default backbone (offline pretrained weights)


def photo_source(photo, name: str | None = None) -> batching.Source:
  """A ``batching.Source`` for a path or an (H, W, 3) array.

  Args:
    photo: a path to an image file, or an (H, W, 3) RGB array: uint8 (0–255), or floats in
      [0, 1] (quantised to uint8 as a decoded file would be; the command reads files).
    name: the photo's name (the command's output stem; results never depend on it: the
      K-means key comes from the pixels, ``batching.photo_key``); default: the file's stem,
      or "photo" for an array.
  Raises:
    ValueError / TypeError: not an (H, W, 3) RGB array of those kinds.
  """
  if isinstance(photo, (str, os.PathLike)):
    path = pathlib.Path(photo)
    return batching.Source(name or path.stem, str(path), lambda: image_io.read_image(path))
  rgb = np.asarray(photo)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"photo must be a path or an (H, W, 3) RGB array; got shape {rgb.shape}")
  pipeline.check_pixel_values(rgb, "photo")
  if rgb.dtype != np.uint8:
    rgb = np.round(rgb * 255).astype(np.uint8)
  return batching.Source(name or "photo", "array", lambda: rgb)


class PhotoSegmenter:
  """DSM on single photos at their own size; call it once per photo.

  Attributes:
    backbone, config, render, image_size, seed, bucket_step: what it runs with.
    segmenter: the underlying ``dsm.make_pipeline`` program (its ``compiled_shapes``).
  """

  def __init__(self, backbone: backbones.Backbone | None = None,
               config: pipeline.PipelineConfig | None = None,
               render: outputs.RenderSettings | None = None, *,
               image_size: int = batching.IMAGE_SIZE, seed: int = 0,
               bucket_step: int = batching.BUCKET_STEP):
    """
    Args:
      backbone: a ``backbones.Backbone``; None: ``backbones.load(BACKBONE)``, the offline
        pretrained DINOv2 ViT-S/14 (the command's default).
      config: the ``dsm.PipelineConfig``; None: ``PipelineConfig()`` (the command's defaults).
      render: the ``dsm.outputs.RenderSettings`` (mask upsampling, CRF / bilateral solver);
        None: ``RenderSettings()`` (the command's defaults).
      image_size: the longer side photos are resized to (0: their own size).
      seed: the K-means seed (folded with a hash of each photo's pixels,
        ``batching.photo_key``).
      bucket_step: patch grids are padded to multiples of this (fewer compiled programs; the
        padding changes no result).
    """
    self.render = outputs.RenderSettings() if render is None else render
    self.render.validate()
    if image_size < 0 or bucket_step < 1:
      raise ValueError(f"image_size must be ≥ 0 and bucket_step ≥ 1; got {image_size}, "
                       f"{bucket_step}")
    self.backbone = backbones.load(BACKBONE) if backbone is None else backbone
    self.config = pipeline.PipelineConfig() if config is None else config
    self.segmenter = pipeline.make_pipeline(self.backbone, self.config)
    self.image_size, self.seed, self.bucket_step = image_size, seed, bucket_step

  @classmethod
  def from_config(cls, cfg, backbone: backbones.Backbone) -> "PhotoSegmenter":
    """As the segment command runs with its ml_collections config ``cfg``: its DSM and render
    settings (``PipelineConfig.from_config``, ``RenderSettings.from_config``), image size, seed
    and bucket step, on ``backbone``."""
    return cls(backbone, pipeline.PipelineConfig.from_config(cfg),
               outputs.RenderSettings.from_config(cfg), image_size=cfg.image_size,
               seed=cfg.seed, bucket_step=cfg.bucket_step)

  def __call__(self, photo, *, name: str | None = None) -> outputs.PhotoResult:
    """The :class:`dsm.outputs.PhotoResult` of one photo (see :func:`photo_source` for
    ``photo`` and ``name``).

    Raises:
      batching.PhotoError: too small or too large a photo, or a result holding NaN/Inf (the
        message says why).
      FileNotFoundError, image_io.ImageReadError: an unreadable path.
    """
    source = photo_source(photo, name)
    refine = self.render.crf is not None or self.render.bilateral is not None
    (found, res, _), = list(batching.segment_photos(
        self.segmenter, [source], image_size=self.image_size, batch_size=1, seed=self.seed,
        bucket_step=self.bucket_step, prefetch=1, keep_original=refine))
    return outputs.photo_result(found, res, patch_size=self.segmenter.patch_size,
                                settings=self.render, image_size=self.image_size)


@functools.lru_cache(maxsize=1)
def _default_segmenter(config, render, image_size: int, seed: int) -> PhotoSegmenter:
  """The default backbone's segmenter, kept for the next call (loading and compiling cost
  seconds)."""
  return PhotoSegmenter(None, config, render, image_size=image_size, seed=seed)


def segment(photo, *, backbone: backbones.Backbone | None = None,
            config: pipeline.PipelineConfig | None = None,
            render: outputs.RenderSettings | None = None,
            image_size: int = batching.IMAGE_SIZE, seed: int = 0,
            name: str | None = None) -> outputs.PhotoResult:
  """DSM on one photo: its object mask, boxes, segments and instances at its own size.

  Args:
    photo: a path, or an (H, W, 3) uint8 / [0, 1] float RGB array (:func:`photo_source`).
    backbone: None: the offline DINOv2 ViT-S/14 (loaded once and kept, with its compiled
      programs, for the next call with the same settings).
    config: a ``dsm.PipelineConfig``; None: ``PipelineConfig()``, the command's defaults.
    render: ``dsm.outputs.RenderSettings``; None: the command's defaults (nearest, no CRF).
    image_size, seed: as :class:`PhotoSegmenter`.
    name: the photo's name (the result's ``name``; it does not change the result).
  Returns:
    A ``dsm.outputs.PhotoResult``; the same as the segment command's files for that photo.
  """
  config = pipeline.PipelineConfig() if config is None else config
  render = outputs.RenderSettings() if render is None else render
  if backbone is None:
    run = _default_segmenter(config, render, image_size, seed)
  else:
    run = PhotoSegmenter(backbone, config, render, image_size=image_size, seed=seed)
  return run(photo, name=name)
