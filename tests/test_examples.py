"""Every script in examples/ runs as a user would run it (a subprocess from the repository
root) and ends with its own checks passing."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def test_examples_exist():
  assert EXAMPLES, "examples/ holds no script"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "EXAMPLE_OUT": str(tmp_path)}
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert proc.stdout.strip(), "an example says what it checked"


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
