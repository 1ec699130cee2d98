"""Every script in examples/ runs as a user would run it (a subprocess from the repository
root) and ends with its own checks passing."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from spectral_jax import viz

REPO = pathlib.Path(__file__).resolve().parents[1]
# train_from_folder runs at its own tiny settings in its own test (its default is minutes).
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.py") if p.stem != "train_from_folder")


def test_examples_exist():
  assert EXAMPLES, "examples/ holds no script"


def _run_example(script: pathlib.Path, tmp_path, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "EXAMPLE_OUT": str(tmp_path)}
  proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert proc.stdout.strip(), "an example says what it checked"
  return proc


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
  _run_example(script, tmp_path)


def test_train_from_folder_trains_and_plots_loss_and_fidelity(tmp_path):
  """The example at the test preset's sizes (56-px crops of the bundled photos through the
  offline DINOv2, a tiny ψ), 2 steps: the run's records hold the loss and the fidelity
  measures at both steps, and curves.png shows its four panels with their curves drawn."""
  _run_example(REPO / "examples" / "train_from_folder.py", tmp_path,
               "--config=experiments/configs/neuralef.py:test", "--steps=2",
               f"--config.data.cache_dir={tmp_path / 'cache'}")
  workdir = tmp_path / "train_from_folder"
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  for r in records:
    assert np.isfinite(r["loss"])
    assert 0 <= r["fidelity/cos_in_order_mean@8"] <= 1
    assert 0 <= r["fidelity/angle_max_deg@8"] <= 90
  picture = np.asarray(Image.open(workdir / "curves.png").convert("RGB"))
  assert picture.shape == (2 * viz.PLOT_SIZE[0], 2 * viz.PLOT_SIZE[1], 3)
  h, w = viz.PLOT_SIZE
  panels = [picture[i * h:(i + 1) * h, j * w:(j + 1) * w] for i in (0, 1) for j in (0, 1)]
  for panel, curves in zip(panels, (1, 1, 2, 2)):   # loss; τ; cos and Rayleigh; two angles
    for i in range(curves):
      painted = (panel == np.array(viz.SERIES_COLOURS[i], np.uint8)).all(-1)
      assert painted.sum() > 100, "a curve of the plot was not drawn"
  if importlib.util.find_spec("tensorboardX") is not None:
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_train_from_folder_bad_folder_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "examples" / "train_from_folder.py"),
       f"--config.data.images={tmp_path / 'missing'}"], cwd=REPO, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": str(REPO), "EXAMPLE_OUT": str(tmp_path)}, timeout=120,
      check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().startswith("error: ") and "missing" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_public_modules_curate_their_surface():
  """The package's public surface is curated, optax-style: every top-level module and every
  subpackage's ``__init__`` names its API in ``__all__`` (the modules inside a subpackage are
  reached through it), and every name listed exists."""
  import importlib   # pylint: disable=import-outside-toplevel
  import pkgutil   # pylint: disable=import-outside-toplevel
  import spectral_jax   # pylint: disable=import-outside-toplevel
  missing = []
  for info in pkgutil.iter_modules(spectral_jax.__path__, "spectral_jax."):
    if info.name.rsplit(".", 1)[-1].startswith("_"):
      continue
    module = importlib.import_module(info.name)
    names = getattr(module, "__all__", None)
    if names is None:
      missing.append(info.name)
      continue
    assert all(hasattr(module, n) for n in names), (info.name, [n for n in names
                                                                 if not hasattr(module, n)])
  assert not missing, f"modules without __all__: {missing}"
