"""spectral_jax.progress: lines at a bounded rate off a terminal, a tqdm bar on one."""

import io

from tqdm import tqdm

from spectral_jax import progress


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_lines_every_ten_percent_with_rate_and_eta():
  out, clock = io.StringIO(), _Clock()
  bar = progress.LineProgress(total=100, desc="segment", unit="photo", file=out, clock=clock)
  for _ in range(100):
    clock.t += 0.5
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert len(lines) == 10, lines          # 10%, 20%, ... 100%: bounded, not 100 lines
  assert lines[0] == "segment: 10/100 (10%), 2 photo/s, ETA 45 s"
  assert lines[-1].startswith("segment: 100/100 (100%)")


def test_a_line_after_every_s_without_one():
  out, clock = io.StringIO(), _Clock()
  bar = progress.LineProgress(total=10_000, desc="train", unit="step", file=out, clock=clock,
                              every_s=30)
  clock.t = 31.0
  bar.update(3)                           # 0.03%: no percent step crossed, but 31 s passed
  assert out.getvalue().splitlines() == ["train: 3/10000 (0%), 10.3 s/step, ETA 28.7 h"]


def test_postfix_initial_and_final_line():
  out, clock = io.StringIO(), _Clock()
  bar = progress.LineProgress(total=40, initial=30, desc="train", unit="step", file=out,
                              clock=clock, every_percent=50)
  bar.set_postfix(loss="-0.0100", tau="0.300")
  clock.t = 10.0
  bar.update(5)
  bar.close()
  # No 50% step crossed and < 30 s: the only line is close()'s, with the postfix.
  assert out.getvalue().splitlines() == [
      "train: 35/40 (88%), 2 s/step, ETA 10 s, loss -0.0100, tau 0.300"]


def test_iteration_and_unknown_total():
  out = io.StringIO()
  got = list(progress.LineProgress(iter(range(5)), desc="x", file=out, every_s=0))
  assert got == list(range(5))
  assert out.getvalue().splitlines()[-1].startswith("x: 5 it")


def test_progress_picks_the_form_by_the_stream():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  assert isinstance(progress.progress(range(3), file=io.StringIO()), progress.LineProgress)
  bar = progress.progress(range(3), file=Tty())
  assert isinstance(bar, tqdm) and not bar.disable
  bar.close()
  silent = progress.progress(range(3), enabled=False)
  assert isinstance(silent, tqdm) and silent.disable and list(silent) == [0, 1, 2]
