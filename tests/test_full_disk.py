"""A full disk during training (issue 23): one ``error:`` line naming what could not be written
and the last intact checkpoint, exit 1, no traceback, no unfinished checkpoint taken for the
latest, metrics.jsonl without a torn line; the rerun resumes.

The disk fills without root: the child lowers its own RLIMIT_FSIZE (SIGXFSZ ignored) once the
first checkpoint is written, so later writes past the limit fail with EFBIG in Python and in
tensorstore's C++ alike, the same path as ENOSPC (`checkpoint.OUT_OF_SPACE_ERRNOS`). The
child runs `_cli.run` (the commands' error boundary) around `train.train` on random features
(no backbone: a few seconds)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {tests!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
    from spectral_jax import _cli
    from spectral_jax.neuralef import checkpoint as ckpt
    from spectral_jax.neuralef import train as train_lib
    from experiments.configs import neuralef as configs
    from test_bad_inputs import _random_features

    LIMIT = {limit}
    first_save = ckpt.save_checkpoint

    def save_then_fill_the_disk(manager, *args, **kwargs):
      saved = first_save(manager, *args, **kwargs)
      if saved:                        # step 1 is whole on disk; from now on the disk is full
        manager.wait_until_finished()
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        ckpt.save_checkpoint = first_save
      return saved

    if LIMIT:
      ckpt.save_checkpoint = save_then_fill_the_disk

    def main(argv):
      config = configs.get_config("test")
      config.train.num_steps, config.checkpoint.every = 4, 1
      result = train_lib.train(config, {workdir!r}, _random_features())
      print("done at step", int(result.state.step))

    _cli.run(main)
""")


def run_child(workdir, limit):
  code = CHILD.format(tests=str(REPO / "tests"), limit=limit, workdir=str(workdir))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  # stdout/stderr are pipes: the file-size limit does not cut them
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                        capture_output=True, timeout=300)


def metrics_steps(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]   # every line whole


def checkpoint_folders(workdir):
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def assert_one_error_line(proc, *fragments):
  err = proc.stderr
  assert proc.returncode == 1, (proc.returncode, err[-3000:])
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
  line = err.strip()
  assert line.startswith("error: cannot write "), line
  for fragment in fragments:
    assert fragment in line, (fragment, line)
  return line


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_intact_step(tmp_path):
  """Checkpoint files (tens of KB) no longer fit; metrics lines (300 B) still do."""
  workdir = tmp_path / "run"
  proc = run_child(workdir, limit=16_000)
  assert_one_error_line(
      proc, "cannot write the checkpoint of step 2 (unfinished: not a checkpoint, and removed) "
      f"in '{workdir}': File too large [errno 27: the disk is full, or a quota or file-size "
      "limit was reached]; the last intact checkpoint is step 1: free some space, then rerun "
      "the same command to resume")
  # step 1 is the latest checkpoint orbax sees; nothing unfinished passes for one
  assert [p for p in checkpoint_folders(workdir) if p.isdigit()] == ["1"]
  assert metrics_steps(workdir)[0] == 1


@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_line_and_leaves_no_torn_line(tmp_path):
  """Not even a metrics line fits: the file is cut back to its last whole line."""
  workdir = tmp_path / "run"
  proc = run_child(workdir, limit=1)
  assert_one_error_line(proc, "cannot write step 2's metrics to metrics.jsonl in "
                        f"'{workdir}': File too large [errno 27",
                        "the last intact checkpoint is step 1")
  assert metrics_steps(workdir) == [1]
  assert [p for p in checkpoint_folders(workdir) if p.isdigit()] == ["1"]


@pytest.mark.slow
def test_the_rerun_after_a_full_disk_resumes_from_the_intact_step(tmp_path):
  workdir = tmp_path / "run"
  assert run_child(workdir, limit=16_000).returncode == 1
  again = run_child(workdir, limit=0)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "done at step 4" in again.stdout
  assert metrics_steps(workdir) == [1, 2, 3, 4]
  assert not [p for p in checkpoint_folders(workdir) if "tmp" in p], checkpoint_folders(workdir)
