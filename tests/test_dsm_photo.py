"""DSM on one photo from Python (``dsm.segment``, ``dsm.PhotoSegmenter``) against the segment
command's files, and the one set of DSM defaults (``dsm.PipelineConfig()`` is the command's).

The command runs in-process with its "test" preset (a 1-block random ViT, 56-px photos) on the
six bundled photos; the library is called with the same backbone and the settings built from
the same config, photo by photo, and must give the command's files element for element.
"""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from experiments import common, segment
from experiments.configs import evaluate_dsm as evaluate_config
from experiments.configs import segment as segment_config
from spectral_jax import crf, dsm, viz
from spectral_jax.datasets import samples
from spectral_jax.dsm import batching, outputs

BUNDLED = tuple(samples.LABELLED_SAMPLES + samples.SKIMAGE_PHOTOS)
LABEL_FILES = ("mask", "segments", "instances")


def _bundled_rgb(name: str) -> np.ndarray:
  if name in samples.LABELLED_SAMPLES:
    return samples.labelled_photo(name).rgb
  return samples.skimage_photo(name)


@pytest.fixture(scope="module")
def command_run(tmp_path_factory):
  """The command's test preset on the bundled photos: (config, output folder, backbone)."""
  cfg = segment_config.get_config("test")
  cfg.out = str(tmp_path_factory.mktemp("segment_cmd"))
  summary = segment.run(cfg)
  assert summary["num_ok"] == len(BUNDLED), summary["failures"]
  return cfg, pathlib.Path(cfg.out) / segment.PHOTOS, common.load_backbone(cfg)


def _assert_result_is_the_commands(result: outputs.PhotoResult, photos, name: str):
  """``result`` equals the command's NAME.{mask,segments,instances}.png and NAME.json."""
  rec = json.loads((photos / f"{name}.json").read_text())
  mask = np.asarray(Image.open(photos / f"{name}.mask.png"))
  assert result.mask.dtype == bool and result.mask.shape == (rec["height"], rec["width"])
  np.testing.assert_array_equal(np.where(result.mask, 255, 0), mask, err_msg=name)
  np.testing.assert_array_equal(result.segments,
                                viz.read_label_png(photos / f"{name}.segments.png"), err_msg=name)
  np.testing.assert_array_equal(result.instances,
                                viz.read_label_png(photos / f"{name}.instances.png"), err_msg=name)
  assert result.box.tolist() == rec["box"], name
  assert result.boxes.reshape(-1, 4).tolist() == rec["boxes"], name
  assert result.foreground_fraction == pytest.approx(rec["foreground_fraction"], abs=1e-12)
  assert list(result.warnings) == rec["warnings"]
  assert result.num_segments == rec["num_segments"]
  assert result.converged == rec["eigensolver_converged"]
  assert list(result.size) == [rec["height"], rec["width"]]
  np.testing.assert_allclose(result.eigenvalues, rec["eigenvalues"], atol=1e-5)
  h, w = rec["grid"]
  assert result.eigenvectors.shape == (h, w, len(rec["eigenvalues"]))
  assert result.object_map.shape == (h, w)


def test_pipeline_config_defaults_are_the_commands():
  """One set of defaults: the command's default config builds ``PipelineConfig()`` and
  ``RenderSettings()`` field by field; evaluate_dsm's differs in the discovery method only."""
  cfg = segment_config.get_config("default")
  assert dsm.PipelineConfig.from_config(cfg) == dsm.PipelineConfig()
  assert dsm.RenderSettings.from_config(cfg) == dsm.RenderSettings()
  assert dsm.PipelineConfig().discovery == cfg.dsm.discovery == "tokencut+maskcut"
  # Every dsm.* field of the command is a pipeline or a render setting.
  keys = (set(dsm.PipelineConfig.config_keys().values())
          | set(dsm.RenderSettings.config_keys().values()))
  assert {("dsm", k) for k in cfg.dsm} <= keys
  assert (dsm.PipelineConfig.from_config(evaluate_config.get_config())
          == dataclasses.replace(dsm.PipelineConfig(), discovery="dsm"))
  # Each field is read from its own key (a changed key changes that field only).
  defaults = dsm.PipelineConfig()
  for name, (section, key) in dsm.PipelineConfig.config_keys().items():
    value = getattr(defaults, name)
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 0.25,
             str: lambda v: v + "_x"}[type(value)](value)
    changed = segment_config.get_config("default")
    changed[section][key] = other
    assert dsm.PipelineConfig.from_config(changed) == dataclasses.replace(defaults,
                                                                          **{name: other}), name


def test_render_settings_from_config_and_bad_fields():
  cfg = segment_config.get_config("test")
  cfg.crf.enabled, cfg.dsm.upsample = True, "bilinear"
  render = dsm.RenderSettings.from_config(cfg)
  assert render.crf == crf.CRFParams()   # the config's CRF fields are DSM's parameters
  assert render.upsample == "bilinear" and render.bilateral is None and render.panel_height == 64
  cfg.bilateral.enabled = True
  with pytest.raises(ValueError, match="choose one mask refinement"):
    dsm.RenderSettings.from_config(cfg)
  cfg.crf.enabled = cfg.bilateral.enabled = False
  cfg.dsm.upsample = "cubic"
  with pytest.raises(ValueError, match="dsm.upsample must be one of"):
    dsm.RenderSettings.from_config(cfg)
  # evaluate_dsm's config has no crf / viz sections: their defaults.
  assert dsm.RenderSettings.from_config(evaluate_config.get_config()) == dsm.RenderSettings()


def test_one_photo_api_equals_the_command_files(command_run, tmp_path):
  """PhotoSegmenter.from_config (the command's settings, its backbone) photo by photo: the same
  mask, segments, instances, box and boxes as the command's files, and write_photo of the
  result writes the same label PNGs byte for byte."""
  cfg, photos, backbone = command_run
  run = dsm.PhotoSegmenter.from_config(cfg, backbone)
  assert run.config == dsm.PipelineConfig.from_config(cfg)
  for name in BUNDLED:
    result = run(_bundled_rgb(name), name=name)
    assert result.name == name
    _assert_result_is_the_commands(result, photos, name)
    stem = tmp_path / name
    outputs.write_photo(result, _bundled_rgb(name), stem=stem, rel=name, settings=run.render,
                        timings={})
    for kind in LABEL_FILES:
      assert (tmp_path / f"{name}.{kind}.png").read_bytes() == (
          photos / f"{name}.{kind}.png").read_bytes(), (name, kind)
  # One compiled program per padded grid, reused across photos.
  assert len(run.segmenter.compiled_shapes) < len(BUNDLED)


def test_segment_with_default_config_fields_equals_the_command(command_run, tmp_path):
  """``dsm.segment`` on a file path with ``PipelineConfig()`` changed only where the test preset
  changes the command's config (K, segments) gives the command's files: the library's defaults
  are the command's."""
  cfg, photos, backbone = command_run
  config = dsm.PipelineConfig(num_eigenvectors=cfg.dsm.num_eigenvectors,
                              num_segments=cfg.dsm.num_segments)
  for name in ("voc", "coffee"):
    path = tmp_path / f"{name}.png"
    Image.fromarray(_bundled_rgb(name)).save(path)
    result = dsm.segment(path, backbone=backbone, config=config, image_size=cfg.image_size)
    assert result.name == name and result.source == str(path)  # the file's stem names it
    _assert_result_is_the_commands(result, photos, name)


def test_segment_input_kinds_and_errors(command_run):
  cfg, _, backbone = command_run
  run = dsm.PhotoSegmenter.from_config(cfg, backbone)
  rgb = _bundled_rgb("coffee")
  as_uint8 = run(rgb, name="coffee")
  as_float = run(rgb.astype(np.float32) / 255.0, name="coffee")   # quantised back exactly
  np.testing.assert_array_equal(as_float.mask, as_uint8.mask)
  np.testing.assert_array_equal(as_float.segments, as_uint8.segments)
  assert as_uint8.source == "array"
  # The overlay's boxes: "box" first (yellow), then the other boxes of "boxes", each once.
  r = dataclasses.replace(as_uint8, box=np.array([1, 2, 3, 4]),
                          boxes=np.array([[5, 6, 7, 8], [1, 2, 3, 4]]))
  assert r.overlay_boxes().tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
  r = dataclasses.replace(r, boxes=np.zeros((0, 4), np.int64))
  assert r.overlay_boxes().tolist() == [[1, 2, 3, 4]]
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    run(rgb[..., 0])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    run(rgb.astype(np.float32))
  with pytest.raises(TypeError, match="uint8"):
    run(rgb.astype(np.int32))
  with pytest.raises(batching.PhotoError, match="too small"):
    run(np.zeros((10, 10, 3), np.uint8))
  with pytest.raises(FileNotFoundError):
    run("/nonexistent/photo.png")
