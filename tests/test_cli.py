"""spectral_jax._cli: the signal handling the training loop relies on."""

import os
import signal

import pytest

from spectral_jax import _cli


@pytest.fixture
def handlers():
  saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  _cli.install_signal_handlers()
  yield
  for sig, handler in saved.items():
    signal.signal(sig, handler)


def test_signal_raises_keyboard_interrupt_at_once(handlers):
  with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):   # the handler runs between bytecodes of the main thread
      pass


def test_deferred_interrupts_raise_when_the_block_ends(handlers):
  reached = []
  with pytest.raises(KeyboardInterrupt, match="SIGINT"):
    with _cli.deferred_interrupts():
      with _cli.deferred_interrupts():   # nested: only the outermost end raises
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
          pass
        reached.append("inner")
      reached.append("outer")   # the block runs to its end
  assert reached == ["inner", "outer"]
  with _cli.deferred_interrupts():   # nothing pending afterwards
    pass


def test_deferred_interrupts_let_an_exception_through(handlers):
  with pytest.raises(ValueError):
    with _cli.deferred_interrupts():
      raise ValueError("not an interrupt")
  with _cli.deferred_interrupts():   # the depth was restored
    pass


def test_exclusive_folder_refuses_a_second_holder_naming_its_pid(tmp_path):
  import subprocess
  import sys
  import textwrap
  folder = tmp_path / "out"
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from spectral_jax import _cli
          with _cli.exclusive_folder({str(folder)!r}):
            print("held", flush=True)
            sys.stdin.readline()
          """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(_cli.UsageError, match=f"in use by another run \\(PID {holder.pid}\\)"):
      with _cli.exclusive_folder(folder):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The holder was killed (-9): the kernel dropped its lock; the stale file blocks nothing.
  assert (folder / _cli.LOCK_NAME).exists()
  with _cli.exclusive_folder(folder):
    with pytest.raises(_cli.UsageError, match="in use"):   # same process, second open: refused
      with _cli.exclusive_folder(folder):
        pass


@pytest.mark.parametrize("text", ["depth=2,width=96,name=x,scale=0.5",
                                  '{"depth": 2, "width": 96, "name": "x", "scale": 0.5}',
                                  ' {"depth": 2, "width": 96, "name": "x", "scale": 0.5} '])
def test_parse_overrides_both_syntaxes(text):
  assert _cli.parse_overrides(text) == {"depth": 2, "width": 96, "name": "x", "scale": 0.5}


@pytest.mark.parametrize("text, match", [("depth", "is not key=value"),
                                         ("=3", "is not key=value"),
                                         ('{"depth": 2', "is not a JSON object"),
                                         ("{}x", "is not a JSON object")])
def test_parse_overrides_errors(text, match):
  with pytest.raises(_cli.UsageError, match=match):
    _cli.parse_overrides(text)
  assert _cli.parse_overrides("") == {}


def test_dotted_fields():
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({"data": {"dataset": "voc07", "split": ""}, "seed": 0})
  config.lock()
  assert _cli.get_field(config, "data.dataset") == "voc07"
  assert _cli.get_field(config, "data.missing") is None
  assert _cli.get_field(config, "seed.deeper", "d") == "d"
  _cli.set_field(config, "data.dataset", "ade20k")
  _cli.set_field(config, "eval.limit", 3)   # a missing section is created
  assert config.data.dataset == "ade20k" and config.eval.limit == 3
  _cli.del_field(config, "data.split")
  _cli.del_field(config, "data.absent")     # nothing to remove: no error
  assert "split" not in config.data
  with pytest.raises(AttributeError):       # still locked after the calls
    config.new_field = 1
