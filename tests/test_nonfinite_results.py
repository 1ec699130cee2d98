"""Non-finite results are never confident (issue 23): NaN/Inf in a photo's eigenpairs or
object map fails the photo with the reason, and the JSON the commands write is strict."""

import json

import jax
import numpy as np
import pytest

from experiments import common, segment
from experiments.configs import segment as segment_config
from spectral_jax import _cli, strict_json
from spectral_jax.dsm import batching


def _strict_loads(text):
  def refuse(word):
    raise ValueError(f"bare {word} in JSON")
  return json.loads(text, parse_constant=refuse)


def test_strict_json_maps_non_finite_floats_to_null():
  value = {"nan": float("nan"), "list": [np.float32(np.inf), 1.5, -np.inf],
           "array": np.array([np.nan, 2.0]), "int": np.int64(3), "name": "café"}
  text = strict_json.dumps(value, indent=1)
  assert _strict_loads(text) == {"nan": None, "list": [None, 1.5, None], "array": [None, 2.0],
                                 "int": 3, "name": "café"}
  assert "NaN" not in text and "Infinity" not in text


def _config(tmp_path):
  cfg = segment_config.get_config("test")
  cfg.out = str(tmp_path / "out")
  cfg.samples = "voc,arc2017"
  return cfg


def test_nan_features_fail_every_photo_with_the_reason(tmp_path, monkeypatch):
  """All-NaN weights (as a checkpoint gone wrong would give; the loaders refuse NaN files, so
  the backbone is poisoned after loading) used to give every photo the whole-image box with
  "eigenvalues": [NaN, ...] and "eigensolver_converged": true, exit 0. Now each photo fails
  naming the NaN, and no photo's files are written."""
  real = common.load_backbone

  def poisoned(cfg):
    backbone = real(cfg)
    return backbone.replace(params=jax.tree.map(lambda x: x * np.nan, backbone.params))

  monkeypatch.setattr(common, "load_backbone", poisoned)
  with pytest.raises(_cli.WorkError, match="no photo could be processed") as error:
    segment.run(_config(tmp_path))
  message = str(error.value)
  # the fields named depend on the discovery method (multi_region's object map comes from the
  # NaN eigenvectors too); every method's photo fails on its non-finite eigenpairs
  assert message.count("NaN/Inf in the eigenvalues, eigenvectors") == 2, message
  assert "bundled:voc" in message and "bundled:arc2017" in message
  out = tmp_path / "out"
  assert not list((out / segment.PHOTOS).glob("**/*.json"))
  assert not (out / "summary.json").exists() and (out / _cli.INCOMPLETE_NAME).exists()


def test_finite_run_writes_strict_json(tmp_path):
  """The same photos with the finite weights: both succeed and every JSON file is strict."""
  summary = segment.run(_config(tmp_path))
  assert sorted(summary["images"]) == ["arc2017", "voc"] and not summary["failures"]
  out = tmp_path / "out"
  for path in [out / "summary.json", *(out / segment.PHOTOS).glob("*.json")]:
    _strict_loads(path.read_text())


def test_nonfinite_reason_names_what_is_not_finite():
  """The check itself on a hand-made result row: finite → None; an Inf eigenvector on the
  photo's grid → named; NaN only in the padding → still None (padding is never read)."""
  from spectral_jax.dsm import pipeline   # pylint: disable=import-outside-toplevel
  grid = (2, 3)
  fiedler = np.zeros((3, 4), np.float32)
  vectors = np.zeros((12, 3), np.float32)
  patches = pipeline.PatchResult(*([None] * len(pipeline.PatchResult._fields)))._replace(
      eigenvalues=np.array([0.0, 0.1, 0.2]), eigenvectors=vectors, fiedler=fiedler)
  res = pipeline.DSMResult(patches, None, None, None, None)
  photo = batching.Photo(batching.Source("x", "x", lambda: None), (28, 42), (28, 42), grid, None)
  assert batching.nonfinite_reason(photo, res) is None
  fiedler[2, 3] = np.nan          # padding (row 2 is outside the 2×3 grid)
  assert batching.nonfinite_reason(photo, res) is None
  vectors[1, 2] = np.inf          # patch (0, 1) of the grid
  reason = batching.nonfinite_reason(photo, res)
  assert reason.startswith("NaN/Inf in the eigenvectors:"), reason
