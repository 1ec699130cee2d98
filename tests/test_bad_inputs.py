"""Bad inputs to the commands: each is ONE ``error: ...`` line on stderr, no traceback, and
exit status 2 (bad flag / config value) or 1 (the work failed: files, refused checkpoints).

Every row runs the command as a subprocess (``python -m <command> <args>`` with cwd = the repo
and PYTHONPATH = the repo). Rows are cheap: the errors they provoke come before any backbone
features are computed, so a row costs the Python start-up (~2-4 s). To add a command, add rows
to `CASES`: ``pytest.param(command, args, exit_code, message_fragment, id=...)``; ``{name}``
in an argument is replaced by the path of `paths`' entry ``name``.
"""

import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from conftest import child_processes

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = "experiments.train_neuralef"
EVAL = "experiments.evaluate_neuralef"
SEG = "experiments.segment"
EVAL_DSM = "experiments.evaluate_dsm"
SEG_TEST = "--config={repo}/experiments/configs/segment.py:test"
TEST_CONFIG = "--config={repo}/experiments/configs/neuralef.py:test"
# The checkpointed run of the `paths` fixture: the test preset, 2 steps, a checkpoint each.
RUN = (TEST_CONFIG, "--config.train.num_steps=2")

CASES = [
    # train_neuralef: flags and config values (exit 2)
    pytest.param(TRAIN, ["--stop_at=abc"], 2, "--stop_at=abc", id="train-flag-not-int"),
    pytest.param(TRAIN, ["--no_such_flag=1"], 2, "no_such_flag", id="train-unknown-flag"),
    pytest.param(TRAIN, ["positional"], 2, "unexpected arguments", id="train-positional"),
    pytest.param(TRAIN, ["--stop_at=0", "--workdir={tmp}/w"], 2, "--stop_at must be ≥ 1",
                 id="train-stop-at-0"),
    pytest.param(TRAIN, ["--config={tmp}/missing.py"], 2, "cannot load --config",
                 id="train-config-missing"),
    pytest.param(TRAIN, ["--config={syntax_error}"], 2, "SyntaxError", id="train-config-syntax"),
    pytest.param(TRAIN, ["--config={raises}"], 2, "ZeroDivisionError", id="train-config-raises"),
    pytest.param(TRAIN, [TEST_CONFIG.replace(":test", ":bogus")], 2, "unknown preset 'bogus'",
                 id="train-config-preset"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.train.batch_size=abc"], 2,
                 "--config.train.batch_size=abc", id="train-config-not-int"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.train.nope=1"], 2, "nope",
                 id="train-config-unknown-field"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.train.batch_size=0", "--workdir={tmp}/w"], 2,
                 "train.batch_size must be ≥ 1", id="train-batch-size-0"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.optim.learning_rate=-1", "--workdir={tmp}/w"],
                 2, "optim.learning_rate must be a finite number > 0; got -1.0",
                 id="train-lr-negative"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.optim.learning_rate=nan", "--workdir={tmp}/w"],
                 2, "optim.learning_rate must be a finite number > 0; got nan", id="train-lr-nan"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.graph.form=sparse", "--workdir={tmp}/w"], 2,
                 "graph.form must be one of", id="train-graph-form"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.log.fidelity_every=-1", "--workdir={tmp}/w"],
                 2, "log.fidelity_every must be ≥ 0", id="train-fidelity-every-negative"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.log.fidelity_outputs=probs",
                         "--workdir={tmp}/w"], 2, "log.fidelity_outputs must be",
                 id="train-fidelity-outputs-unknown"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.graph.k=1000", "--workdir={tmp}/w"], 2,
                 "graph.k = 1000 neighbours need more than the 128 tokens", id="train-graph-k"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.cache_dtype=int8", "--workdir={tmp}/w"], 2,
                 "data.cache_dtype", id="train-cache-dtype"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.backbone.name=resnet", "--workdir={tmp}/w"], 2,
                 "Unknown backbone 'resnet'", id="train-backbone-name"),
    pytest.param(TRAIN, [TEST_CONFIG, "--workdir={a_file}"], 2, "is a file, not a folder",
                 id="train-workdir-is-file"),
    pytest.param(TRAIN, [*RUN, "--config.psi.k=4", "--workdir={run}"], 2,
                 "was written with another config: psi.k: checkpoint 8 vs now 4",
                 id="train-resume-config-mismatch"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.train.batch_size=5", "--workdir={tmp}/w",
                         "--config.data.images={one_image}"], 2,
                 "a batch of 5 needs at least that many training views; got 2",
                 id="train-batch-exceeds-views"),
    # train_neuralef from a dataset (the grain pipeline): config values (exit 2)
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=coco", "--workdir={tmp}/w"], 2,
                 "data.dataset must be one of pascal_context, cityscapes, ade20k, folder",
                 id="train-dataset-unknown"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=ade20k", "--workdir={tmp}/w"], 2,
                 "data.data_dir must name the folder holding ade20k", id="train-dataset-no-dir"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=cityscapes", "--workdir={tmp}/w",
                         "--config.data.data_dir={tmp}/nowhere"], 2, "is not a folder",
                 id="train-dataset-dir-missing"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=folder", "--workdir={tmp}/w",
                         "--config.data.num_workers=-1"], 2, "data.num_workers must be ≥ 0",
                 id="train-dataset-workers"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=folder", "--workdir={tmp}/w",
                         "--config.data.ratio_range=(2.0, 1.0)"], 2, "ratio_range",
                 id="train-dataset-ratio"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=folder", "--workdir={tmp}/w",
                         "--config.backbone.overrides={{\"depth\": 1}}"], 2,
                 "needs backbone.weights=random", id="train-overrides-not-random"),
    # train_neuralef from a dataset: files (exit 1)
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.dataset=pascal_context", "--workdir={tmp}/w",
                         "--config.data.data_dir={empty}"], 1, "no Pascal Context in",
                 id="train-dataset-layout-missing"),
    # train_neuralef: files (exit 1)
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.images={tmp}/nowhere", "--workdir={tmp}/w"],
                 1, "does not exist or is not a folder", id="train-images-missing"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.images={empty}", "--workdir={tmp}/w"], 1,
                 "no images", id="train-images-empty"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.images={unreadable}", "--workdir={tmp}/w"],
                 1, "none of the 1 image files", id="train-images-unreadable"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.data.images={one_image}", "--workdir={tmp}/w",
                         "--config.train.batch_size=2", "--config.backbone.weights={evil}"], 1,
                 "Refusing to load posix.system", id="train-unsafe-weights"),
    # evaluate_neuralef
    pytest.param(EVAL, ["--step=abc"], 2, "--step=abc", id="eval-flag-not-int"),
    pytest.param(EVAL, ["positional"], 2, "unexpected arguments", id="eval-positional"),
    pytest.param(EVAL, ["--workdir={tmp}/nowhere"], 1, "no checkpoints in", id="eval-no-workdir"),
    pytest.param(EVAL, ["--workdir={a_file}"], 2, "is a file, not a folder",
                 id="eval-workdir-is-file"),
    pytest.param(EVAL, ["--workdir={run}", "--output_dir={a_file}"], 2,
                 "--output_dir=", id="eval-output-is-file"),
    pytest.param(EVAL, ["--workdir={run}", "--step=7"], 2,
                 "no checkpoint at step 7", id="eval-step-missing"),
    pytest.param(EVAL, ["--workdir={run}", "--config={tmp}/missing.py"], 2,
                 "cannot load --config", id="eval-config-missing"),
    pytest.param(EVAL, ["--workdir={run}", *RUN, "--config.psi.k=4"], 2,
                 "was written with another config: psi.k: checkpoint 8 vs now 4",
                 id="eval-config-mismatch"),
    pytest.param(EVAL, ["--workdir={run}", *RUN, "--config.optim.learning_rate=nan"], 2,
                 "optim.learning_rate must be a finite number > 0", id="eval-config-value"),
    # segment: flags and config values (exit 2), checked before the backbone loads
    pytest.param(SEG, [SEG_TEST, "positional"], 2, "unexpected arguments", id="seg-positional"),
    pytest.param(SEG, [SEG_TEST, "--config.dsm.nope=1"], 2, "nope", id="seg-unknown-field"),
    pytest.param(SEG, [SEG_TEST.replace(":test", ":bogus")], 2, "unknown preset 'bogus'",
                 id="seg-unknown-preset"),
    pytest.param(SEG, [SEG_TEST, "--upsample=cubic"], 2, "upsample", id="seg-bad-enum"),
    pytest.param(SEG, [SEG_TEST, "--k=1", "--out={tmp}/s"], 2, "num_eigenvectors must be ≥ 2",
                 id="seg-k-1"),
    pytest.param(SEG, [SEG_TEST, "--image_weight=nan", "--out={tmp}/s"], 2,
                 "image_weight (λ) must be a finite number", id="seg-lambda-nan"),
    pytest.param(SEG, [SEG_TEST, "--connectivity=6", "--out={tmp}/s"], 2, "4 or 8",
                 id="seg-connectivity"),
    pytest.param(SEG, [SEG_TEST, "--batch_size=0", "--out={tmp}/s"], 2, "batch_size",
                 id="seg-batch-size-0"),
    pytest.param(SEG, [SEG_TEST, "--image_size=-1", "--out={tmp}/s"], 2, "image_size",
                 id="seg-image-size"),
    # settings that size memory are bounded before any work (these rows run under a 6 GB
    # address-space limit: a regression fails instead of exhausting the machine)
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--image_size=100000", "--out={tmp}/s_huge"], 2,
                 "image_size must be ≤ 8192 px (0: native size); got 100000",
                 id="seg-image-size-huge"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--config.viz.panel_height=100000",
                       "--out={tmp}/s_panel"], 2, "viz.panel_height must be ≤ 2048 px; got 100000",
                 id="seg-panel-height-huge"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--config.viz.num_eigenvectors=0",
                       "--out={tmp}/s_panel0"], 2, "viz.num_eigenvectors must be ≥ 1",
                 id="seg-panel-eigenvectors-0"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--config.viz.num_eigenvectors=6",
                       "--out={tmp}/s_panelk"], 2,
                 "viz.num_eigenvectors must be ≤ dsm.num_eigenvectors − 1 = 5",
                 id="seg-panel-eigenvectors-above-k"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--crf", "--config.crf.w1=nan",
                       "--out={tmp}/s_crf"], 2, "crf.w1 must be a finite number ≥ 0; got nan",
                 id="seg-crf-weight-nan"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--crf", "--config.crf.alpha=0",
                       "--out={tmp}/s_crf0"], 2, "crf.alpha must be a finite number > 0; got 0",
                 id="seg-crf-sigma-0"),
    pytest.param(SEG, [SEG_TEST, "--samples=nope", "--out={tmp}/s"], 2, "unknown bundled photos",
                 id="seg-unknown-sample"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--images={one_image}", "--out={tmp}/s"], 2,
                 "cannot be combined", id="seg-images-and-samples"),
    pytest.param(SEG, [SEG_TEST, "--backbone_overrides=depth", "--out={tmp}/s"], 2,
                 "is not key=value", id="seg-overrides-syntax"),
    pytest.param(SEG, [SEG_TEST, "--backbone_overrides=nope=3", "--out={tmp}/s"], 2,
                 "bad backbone settings", id="seg-overrides-field"),
    pytest.param(SEG, [SEG_TEST, "--backbone=resnet", "--out={tmp}/s"], 2, "unknown backbone",
                 id="seg-backbone-name"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--out={a_file}"], 2, "is a file, not a folder",
                 id="seg-out-is-file"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--out={a_file}/sub"], 2, "is a file",
                 id="seg-out-under-file"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--out={run}"], 2, "already holds files",
                 id="seg-out-not-empty"),
    pytest.param(SEG, [SEG_TEST, "--images={one_image}", "--out={one_image}"], 2,
                 "must not be --out", id="seg-out-is-images"),
    pytest.param(SEG, [SEG_TEST, "--images={one_image}", "--out={tmp}",
                       "--config.overwrite=True"], 2, "must not be --out",
                 id="seg-images-inside-out"),
    pytest.param(SEG, [SEG_TEST, "--images={empty}", "--out={tmp}/s"], 2, "no image files",
                 id="seg-images-empty"),
    # segment: files and work (exit 1)
    pytest.param(SEG, [SEG_TEST, "--images={tmp}/nowhere", "--out={tmp}/s"], 2,
                 "nowhere' does not exist; pass a folder of photos", id="seg-images-missing"),
    pytest.param(SEG, [SEG_TEST, "--images={unreadable}", "--out={tmp}/s_unreadable"], 1,
                 "no photo could be processed", id="seg-all-unreadable"),
    pytest.param(SEG, [SEG_TEST, "--samples=voc", "--weights={evil}", "--backbone_overrides=",
                       "--out={tmp}/s_evil"], 1, "Refusing to load posix.system",
                 id="seg-unsafe-weights"),
    # An unknown field overriding the DEFAULT config (no --config): ml_collections raises while
    # the flag is defined, at import; every command answers in one line (exit 2).
    pytest.param(SEG, ["--config.dsm.no_such_field=3"], 2,
                 "--config.dsm.no_such_field: no such config field 'no_such_field'",
                 id="seg-default-config-unknown-field"),
    pytest.param(SEG, ["--config.dsm.num_eigenvector=3"], 2,
                 'Did you mean "num_eigenvectors"', id="seg-default-config-did-you-mean"),
    pytest.param(SEG, [SEG_TEST, "--config.dsm.num_eigenvector=3"], 2,
                 "no such config field 'num_eigenvector' in the --config file",
                 id="seg-config-unknown-field-named"),
    pytest.param(EVAL_DSM, ["--config.dsm.no_such_field=3"], 2,
                 "--config.dsm.no_such_field: no such config field 'no_such_field'",
                 id="evaldsm-default-config-unknown-field"),
    pytest.param(TRAIN, ["--config.train.no_such=3"], 2,
                 "--config.train.no_such: no such config field 'no_such'",
                 id="train-default-config-unknown-field"),
    pytest.param(EVAL, ["--config.nope.x=1"], 2, "--config.nope.x: no such config field 'nope'",
                 id="eval-default-config-unknown-field"),
    # issue 25 item 4 (settings no photo can satisfy, finished runs): refused before any work
    pytest.param(SEG, [SEG_TEST, "--k=100000", "--samples=voc", "--out={tmp}/s_k"], 2,
                 "--k=100000 (with --num_segments=3) needs photos of at least 100001 patches, "
                 "but at --image_size=56 no photo has more than 4×4 = 16 patches of 14 px",
                 id="seg-k-above-any-grid"),
    pytest.param(SEG, ["--k=1100", "--samples=voc", "--out={tmp}/s_k"], 2,
                 "at --image_size=448 no photo has more than 32×32 = 1024 patches",
                 id="seg-k-above-default-grid"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.train.num_steps=3", "--workdir={run}"], 2,
                 "train.num_steps: checkpoint 2 vs now 3. Resume with the checkpoint's settings "
                 "or use a new workdir. train.num_steps is the length of the run's learning-rate "
                 "and τ schedules (step 2 of 2 followed them), so a run cannot be extended or "
                 "shortened in place: for a 3-step training, start a new run with "
                 "--config.train.num_steps=3 and another --workdir.", id="train-extend-finished"),
    # issue 23's lesser defects: the field is named, every command answers --config=<folder>
    # with exit 2 (segment and evaluate_dsm exited 1)
    pytest.param(SEG, ["--config={empty}", "--out={tmp}/s_dir"], 2,
                 "cannot load --config: ", id="seg-config-is-a-folder"),
    pytest.param(EVAL_DSM, ["--config={empty}", "--out={tmp}/e_dir"], 2,
                 "cannot load --config: ", id="evaldsm-config-is-a-folder"),
    pytest.param(TRAIN, ["--config={empty}", "--workdir={tmp}/w_dir"], 2,
                 "cannot load --config: ", id="train-config-is-a-folder"),
    pytest.param(EVAL, ["--config={empty}", "--workdir={run}"], 2,
                 "cannot load --config: ", id="eval-config-is-a-folder"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.seed=-1", "--workdir={tmp}/w"], 2,
                 "seed must be an integer ≥ 0; got -1", id="train-seed-negative"),
    pytest.param(TRAIN, [TEST_CONFIG, "--config.graph.distance_weights=(nan, 0.1)",
                         "--workdir={tmp}/w"], 2,
                 "graph.distance_weights must be a tuple of finite numbers ≥ 0",
                 id="train-distance-weights-nan"),
    pytest.param(EVAL, ["--workdir={run}", *RUN, "--config.eval.image_size=0"], 2,
                 "eval.image_size must be an integer ≥ 1", id="eval-image-size-0"),
]


class _Evil:
  """Pickles to a call of os.system: weights that would run code when unpickled."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  """The files and folders the rows name (see the module docstring)."""
  from PIL import Image

  from experiments.configs import neuralef as configs
  from spectral_jax.neuralef import train as train_lib

  tmp = tmp_path_factory.mktemp("bad_inputs")
  p = {"repo": REPO, "tmp": tmp, "a_file": tmp / "a_file", "empty": tmp / "empty",
       "unreadable": tmp / "unreadable", "one_image": tmp / "one_image", "evil": tmp / "evil.pth",
       "syntax_error": tmp / "syntax_error.py", "raises": tmp / "raises.py", "run": tmp / "run"}
  p["a_file"].write_text("not a folder\n")
  for name in ("empty", "unreadable", "one_image"):
    p[name].mkdir()
  (p["unreadable"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  rgb = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(p["one_image"] / "photo.png")
  with zipfile.ZipFile(p["evil"], "w") as archive:  # laid out like torch.save's zip
    archive.writestr("evil/data.pkl", pickle.dumps({"x": _Evil(tmp / "pwned")}, protocol=2))
    archive.writestr("evil/version", "3\n")
  p["syntax_error"].write_text("def get_config(:\n")
  p["raises"].write_text("def get_config():\n  return 1 / 0\n")
  config = configs.get_config("test")
  config.train.num_steps = 2
  config.checkpoint.every = 1
  train_lib.train(config, p["run"], _random_features())
  return p


def _random_features():
  from spectral_jax.neuralef import feature_cache
  rng = np.random.default_rng(0)
  return feature_cache.FeatureSet(
      psi_inputs=rng.normal(size=(8, 16, 12)).astype(np.float32),
      graph_features=rng.normal(size=(8, 16, 4)).astype(np.float32),
      image_grids=rng.uniform(size=(8, 4, 4, 3)).astype(np.float32),
      image_index=np.arange(8, dtype=np.int32), view_index=np.zeros(8, np.int32), grid=(4, 4),
      names=tuple(f"im{i}" for i in range(8)), key="random")


MEMORY_LIMIT = 6 << 30   # bytes of address space a segment run may map (RLIMIT_AS)


def run_command(command, args, cwd=REPO, timeout=120):
  """``python -m command args``; segment runs under `MEMORY_LIMIT` (a budget that regresses
  ends in a MemoryError there, not in the kernel killing the machine's processes)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  start = ["-m", command]
  if command == SEG:   # the limit is set by the child itself (no fork-time hook in a JAX parent)
    start = ["-c", f"import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, "
                   f"({MEMORY_LIMIT}, {MEMORY_LIMIT})); runpy.run_module({command!r}, "
                   "run_name='__main__', alter_sys=True)"]
  return subprocess.run([sys.executable, *start, *args], cwd=cwd, env=env, text=True,
                        capture_output=True, timeout=timeout)


@pytest.mark.parametrize("command, args, code, fragment", CASES)
def test_bad_input_is_one_line(paths, command, args, code, fragment):
  proc = run_command(command, [a.format(**paths) for a in args])
  err = proc.stderr
  assert proc.returncode == code, (proc.returncode, err[-2000:])
  assert "Traceback" not in err, err[-2000:]
  lines = [line for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0] == lines[-1], err[-2000:]
  assert fragment in errors[0], errors[0]
  # besides the error, only the images skipped on the way (training reports each one)
  assert all(line.startswith("skipping ") for line in lines[:-1]), err[-2000:]
  assert not (paths["tmp"] / "pwned").exists()  # the hostile pickle never ran


def test_unreadable_images_are_skipped_by_name(paths):
  proc = run_command(TRAIN, [TEST_CONFIG.format(**paths), f"--workdir={paths['tmp']}/w",
                             f"--config.data.images={paths['unreadable']}"])
  assert proc.stderr.splitlines()[0].startswith(
      f"skipping {paths['unreadable'] / 'broken.png'}: cannot read"), proc.stderr


def test_traceback_only_with_verbosity(paths):
  args = [TEST_CONFIG.format(**paths), "--config.train.batch_size=0",
          f"--workdir={paths['tmp']}/w"]
  proc = run_command(TRAIN, args + ["--verbosity=1"])
  assert proc.returncode == 2
  assert "Traceback" in proc.stderr
  # (--verbosity=1 also shows the libraries' log lines)
  assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
      "error: train.batch_size must be ≥ 1 (images per global batch); got 0"]


def test_default_config_is_found_from_another_directory(paths, tmp_path):
  """The default --config is the package's file, not ./experiments/configs (cwd elsewhere)."""
  proc = run_command(TRAIN, ["--config.train.batch_size=0", f"--workdir={tmp_path}/w"],
                     cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip() == (
      "error: train.batch_size must be ≥ 1 (images per global batch); got 0")


def test_leftover_children_are_detected():
  """The /proc reading behind conftest's no-leftover-processes check sees a live child, and
  no longer sees it once it is killed and waited for."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    assert proc.pid in child_processes()
  finally:
    proc.kill()
    proc.wait()
  assert proc.pid not in child_processes()


def write_png(path, width, height, rows=None):
  """A PNG declaring ``width``×``height`` RGB, written without holding its pixels: all
  ``height`` rows of zeros (a legitimate file), or only the first ``rows`` (the rest missing:
  a compression bomb's header on a small file)."""
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data)))
  packer = zlib.compressobj(1)
  row = bytes(1 + 3 * width)
  body = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
  body += packer.flush()
  pathlib.Path(path).write_bytes(
      b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
      + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_segment_skips_photos_over_the_budgets_from_their_headers(paths, tmp_path):
  """A compression bomb (20000×20000 declared), a 12000×9000 scan (above the decode budget),
  an 8000×6000 photo at its native size (its dense graph would not fit) and a panorama whose
  eigenvector panel would be 146 MP are each skipped with their reason, found from the file's
  header before any decode or resize (the run is under a 6 GB address-space limit); the good
  photo beside them is processed."""
  from PIL import Image
  photos = tmp_path / "photos"
  photos.mkdir()
  rgb = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(photos / "good.png")
  write_png(photos / "bomb.png", 20000, 20000, rows=8)
  write_png(photos / "scan.png", 12000, 9000)
  write_png(photos / "native.png", 8000, 6000)
  Image.fromarray(np.tile(rgb[:28, :1], (1, 2000, 1))).save(photos / "panorama.png")
  out = tmp_path / "out"
  proc = run_command(SEG, [SEG_TEST.format(**paths), f"--images={photos}", f"--out={out}",
                           "--image_size=0", "--config.viz.panel_height=2048"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert list(summary["images"]) == ["good"]
  reasons = {pathlib.Path(k).name: v for k, v in summary["failures"].items()}
  assert "declares 400000000 pixels, above the decode budget of 67 MP" in reasons[
      "bomb.png"], reasons
  assert "declares 12000×9000 px (108 MP), above the decode budget" in reasons["scan.png"]
  assert "patches would need" in reasons["native.png"], reasons
  assert "panel budget: lower viz.panel_height" in reasons["panorama.png"], reasons
  for name in reasons:
    assert f"skipping {photos / name}: {reasons[name]}" in proc.stderr
  assert sorted(p.name for p in (out / "photos").iterdir()) == sorted(
      f"good.{k}" for k in ("json", "mask.png", "segments.png", "instances.png", "overlay.png",
                            "eigenvectors.png"))
  assert not (out / "RUN_INCOMPLETE").exists()


def test_training_folder_reader_skips_a_compression_bomb(tmp_path):
  """The training's folder reader (`read_folder`) and `decode_image` refuse a bomb by its
  header, with the reason, and keep the good image."""
  from PIL import Image

  from spectral_jax.datasets import images as image_io
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "good.png")
  write_png(tmp_path / "bomb.png", 20000, 20000, rows=8)
  skipped = []
  images = image_io.read_folder(tmp_path, on_skip=lambda path, e: skipped.append((path, str(e))))
  assert [im.name for im in images] == ["good"]
  assert len(skipped) == 1 and skipped[0][0].endswith("bomb.png")
  assert "declares 400000000 pixels, above the decode budget" in skipped[0][1]
  with pytest.raises(image_io.ImageReadError, match="declares 400000000 pixels"):
    image_io.decode_image((tmp_path / "bomb.png").read_bytes(), "bomb")
  assert image_io.image_size(tmp_path / "good.png") == (20, 30)


def test_segment_processes_non_utf8_file_names(paths, tmp_path):
  """Files whose names are not UTF-8 (b"caf\\xe9.png", made with os.fsencode's inverse) are
  processed, not an abort: their outputs are named with U+FFFD for the bad bytes (two such
  names that would then repeat are told apart by ~2), and every printed line and JSON file is
  valid UTF-8. A FIFO and a link to /dev/zero named like photos are listed as skipped, never
  opened (the run would block or never end)."""
  from PIL import Image
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(1)
  for raw in (b"caf\xe9.png", b"caf\xe8.png", b"good.png"):
    rgb = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photos / os.fsdecode(raw))
  (photos / os.fsdecode(b"notes\xff.txt")).write_text("not a photo\n")
  os.mkfifo(photos / "pipe.jpg")                     # reading it would block the run
  (photos / "zero.png").symlink_to("/dev/zero")      # reading it would never end
  out = tmp_path / "out"
  proc = run_command(SEG, [SEG_TEST.format(**paths), f"--images={photos}", f"--out={out}"],
                     timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_bytes().decode("utf-8"))
  assert sorted(summary["images"]) == ["caf\ufffd", "caf\ufffd~2", "good"], summary["images"]
  assert not summary["failures"]
  skipped = {pathlib.Path(k).name: v for k, v in summary["skipped_non_images"].items()}
  assert sorted(skipped) == ["notes\ufffd.txt", "pipe.jpg", "zero.png"], skipped
  assert skipped["pipe.jpg"] == "not a regular file (a FIFO); not read"
  assert skipped["zero.png"] == "not a regular file (a character device); not read"
  for name in summary["images"]:
    record = json.loads((out / "photos" / f"{name}.json").read_bytes().decode("utf-8"))
    assert record["name"] == name and "\ufffd" in record["source"] or name == "good"
    assert (out / "photos" / f"{name}.mask.png").is_file()
  assert "caf\ufffd" in proc.stdout


def test_memory_settings_are_refused_before_anything_is_written(paths):
  """The bounded settings are checked before the output folder is made: nothing is left on
  disk, so the corrected command runs without --overwrite (the killed runs left OUT/photos/
  behind and the rerun was refused)."""
  for args in (["--image_size=100000"], ["--config.viz.panel_height=100000"],
               ["--config.viz.num_eigenvectors=6"], ["--crf", "--config.crf.w1=nan"]):
    out = paths["tmp"] / "refused_before_work"
    proc = run_command(SEG, [SEG_TEST.format(**paths), "--samples=voc", f"--out={out}", *args])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists(), args


def test_the_budget_check_predicts_the_resize_exactly():
  """`batching.resized_shape` (the budgets' size, computed before any resize) equals the
  shape `image_ops.resize_longer_side` gives, over odd sizes and image sizes."""
  from spectral_jax import image_ops
  from spectral_jax.dsm import batching
  rng = np.random.default_rng(0)
  for _ in range(40):
    h, w = (int(v) for v in rng.integers(1, 300, size=2))
    size = int(rng.choice([0, 1, 56, 97, 448]))
    image = np.zeros((h, w, 3), np.uint8)
    assert batching.resized_shape((h, w), size) == image_ops.resize_longer_side(
        image, size).shape[:2], (h, w, size)


# ----------------------------------------------------------------------------- reduced decoding

# A 12000×9000 scan (108 MP, over the 64 MP decode budget) read for --image_size=56: decoded
# at half size (6000×4500), never whole for a JPEG. Address space the read may add (RLIMIT_AS
# in a child, so a regression is a MemoryError there): measured need 500 MB (JPEG) and 900 MB
# (PNG, decoded whole then reduced); the whole-decode path needs more than each limit.
SCAN_LIMITS_MB = {"jpg": 700, "png": 1200}
READ_UNDER_LIMIT = """
import json, resource, sys
from spectral_jax.datasets import images
vm = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1])
limit = vm() * 1024 + int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
rgb = images.read_image(sys.argv[1], min_side=56)
print(json.dumps({"shape": rgb.shape, "header": images.image_size(sys.argv[1], min_side=56),
                  "spread": int((rgb.max((0, 1)) - rgb.min((0, 1))).max()),
                  "mean": rgb.mean((0, 1)).tolist()}))
"""


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
  from PIL import Image
  folder = tmp_path_factory.mktemp("scans")
  write_png(folder / "scan.png", 12000, 9000)                   # black, rows written one by one
  Image.new("RGB", (12000, 9000), (90, 120, 30)).save(folder / "scan.jpg", quality=90)
  return folder


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_a_huge_scan_is_decoded_at_reduced_size_within_a_memory_limit(scans, suffix):
  proc = subprocess.run(
      [sys.executable, "-c", READ_UNDER_LIMIT, str(scans / f"scan.{suffix}"),
       str(SCAN_LIMITS_MB[suffix])], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout)
  assert got["shape"] == [4500, 6000, 3] and got["header"] == [4500, 6000]
  want = (90, 120, 30) if suffix == "jpg" else (0, 0, 0)
  np.testing.assert_allclose(got["mean"], want, atol=2)
  assert got["spread"] <= 6   # a flat image stays flat in each channel (JPEG rounding only)


def test_reduced_decoding_is_the_box_reduction_with_exif_applied(tmp_path):
  """Over the budget with min_side: the smallest integer factor that fits, applied as PIL's
  box reduce to the oriented image; within the budget, or at min_side 0, as before."""
  from PIL import Image, ImageOps

  from spectral_jax.datasets import images as image_io
  rgb = np.random.default_rng(0).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6                                  # rotated: a transpose on reading
  path = tmp_path / "photo.png"
  Image.fromarray(rgb).save(path, exif=exif.tobytes())
  whole = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
  # 2000 pixels: 100×80 does not fit, 50×40 does (k = 2)
  got = image_io.read_image(path, max_pixels=2000, min_side=40)
  np.testing.assert_array_equal(got, np.asarray(whole.reduce(2)))
  assert image_io.image_size(path, max_pixels=2000, min_side=40) == got.shape[:2] == (50, 40)
  # k = 3 (34×27 = 918 ≤ 1000)
  assert image_io.read_image(path, max_pixels=1000, min_side=30).shape[:2] == (34, 27)
  np.testing.assert_array_equal(image_io.read_image(path), np.asarray(whole))
  for max_pixels, min_side, why in ((2000, 0, "declares 100×80 px"),     # native size asked
                                    (2000, 51, "declares 100×80 px")):   # 50 px < 51
    with pytest.raises(image_io.ImageReadError, match=why):
      image_io.read_image(path, max_pixels=max_pixels, min_side=min_side)
    with pytest.raises(image_io.ImageReadError, match=why):
      image_io.image_size(path, max_pixels=max_pixels, min_side=min_side)


def test_a_non_jpeg_too_large_to_decode_whole_is_still_refused(tmp_path, monkeypatch):
  from PIL import Image

  from spectral_jax.datasets import images as image_io
  Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(tmp_path / "big.png")
  monkeypatch.setattr(image_io, "MAX_FULL_DECODE_PIXELS", 5000)
  with pytest.raises(image_io.ImageReadError,
                     match="more than the 0 MP a PNG may be decoded whole to be reduced"):
    image_io.read_image(tmp_path / "big.png", max_pixels=2000, min_side=10)


def test_special_files_named_like_photos_are_listed_as_skipped_unopened(tmp_path):
  """`collect_images` (segment's listing) names a FIFO, a character device (a link to
  /dev/zero), a socket and a broken link with their kind, from stat alone: a FIFO with no
  writer would block any open() (the alarm fails the test instead of hanging it)."""
  import signal
  import socket

  from spectral_jax.datasets import images as image_io
  os.mkfifo(tmp_path / "pipe.jpg")
  (tmp_path / "zero.png").symlink_to("/dev/zero")
  (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
  server = socket.socket(socket.AF_UNIX)
  server.bind(str(tmp_path / "sock.png"))
  (tmp_path / "notes.txt").write_text("text\n")
  signal.alarm(20)
  try:
    paths, names, skipped = image_io.collect_images(tmp_path)
  finally:
    signal.alarm(0)
    server.close()
  assert paths == [] and names == []
  reasons = {pathlib.Path(k).name: v for k, v in skipped.items()}
  assert reasons == {"pipe.jpg": "not a regular file (a FIFO); not read",
                     "zero.png": "not a regular file (a character device); not read",
                     "sock.png": "not a regular file (a socket); not read",
                     "gone.png": "not a regular file (a broken link); not read",
                     "notes.txt": reasons["notes.txt"]}
  assert reasons["notes.txt"].startswith("not an image file")
