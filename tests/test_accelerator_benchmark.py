"""benchmarks/accelerator.sh: the prepared GPU run fails at once, naming what to install, where a
piece is missing; its --dry-run (CPU, tiny sizes) produces the whole table."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator.sh"


def _run(tmp_path, *args, env=None, timeout=60):
  env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
  return subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out"), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _one_error_line(proc, *words):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  for word in words:
    assert word in lines[0]


def test_no_gpu_fails_clearly(tmp_path):
  """A machine whose nvidia-smi finds no GPU (a stand-in on PATH, so the test means the same
  on every machine): exit 2 before anything is imported or written."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
  (fake / "nvidia-smi").chmod(0o755)
  proc = _run(tmp_path, env={"PATH": f"{fake}:{os.environ['PATH']}"})
  _one_error_line(proc, "nvidia-smi sees no GPU", "No devices were found")
  assert not (tmp_path / "out").exists()


def test_missing_torch_fails_clearly(tmp_path):
  """--dry-run needs no GPU but does need the PyTorch reference: without it (a torch that
  cannot be imported, shadowing any installed one), exit 2 with the extra to install."""
  shadow = tmp_path / "shadow" / "torch"
  shadow.mkdir(parents=True)
  (shadow / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
  proc = _run(tmp_path, "--dry-run", env={"PYTHONPATH": str(tmp_path / "shadow")})
  _one_error_line(proc, "torch and transformers", '.[reference]')


def test_unknown_argument_fails_clearly(tmp_path):
  _one_error_line(_run(tmp_path, "--bogus"), "unknown argument --bogus")


@pytest.mark.slow
def test_dry_run_produces_the_table(tmp_path, torch, transformers):
  """The whole script on the CPU at tiny sizes (~2 CPU-minutes; 5 min wall on a loaded 2-core
  machine): four benchmark runs, their JSON, and a table with four rows of positive rates."""
  del torch, transformers
  proc = _run(tmp_path, "--dry-run", timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "out"
  for name in ("neuralef", "dsm"):
    for dtype in ("float32", "bfloat16"):
      record = json.loads((out / f"{name}_{dtype}.json").read_text())
      assert record["dtype"] == dtype and record["device"].startswith("cpu")
      assert record["ours_images_per_s"] > 0 and record["reference_images_per_s"] > 0
  table = (out / "table.md").read_text().splitlines()
  assert table[0].startswith("Device: CPU")
  rows = [line for line in table if line.startswith("| NeuralEF") or line.startswith("| DSM")]
  assert len(rows) == 4 and all(line.rstrip().endswith("× |") for line in rows)
  assert "| NeuralEF full train step" in proc.stdout and "| DSM pipeline" in proc.stdout
