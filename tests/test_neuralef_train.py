"""Tests for spectral_jax.neuralef.train and .features: the data-parallel step, resumption,
checkpoint config checks, the label leak, data order and the backbone-feature cache.

References: ``graphs.neuralef_kernel`` (dense kernel on the global batch), the single-device step
for shard_map / pmap on 8 fake CPU devices and for 2 processes (subprocesses), an uninterrupted
run for resumption.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import neuralef as configs
from spectral_jax.datasets.images import NamedImage
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import checkpoint as ckpt
from spectral_jax.neuralef import feature_cache
from spectral_jax.neuralef import loss as loss_lib
from spectral_jax.neuralef import step as step_lib
from spectral_jax.neuralef import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
GRID, C, D = (4, 4), 4, 12  # the shapes of TINY_BACKBONE's features at 56 px (shared compiles)
TINY_BACKBONE = dict(depth=2, width=4, num_heads=2, mlp_dim=8)


def synthetic_features(num_views=16, seed=0) -> feature_cache.FeatureSet:
  """Views whose tokens come from 4 clusters in feature space (a kernel with structure)."""
  rng = np.random.default_rng(seed)
  n = GRID[0] * GRID[1]
  centres = rng.normal(size=(4, C))
  member = rng.integers(0, 4, size=(num_views, n))
  graph = centres[member] + 0.3 * rng.normal(size=(num_views, n, C))
  psi_in = np.concatenate([graph, graph @ rng.normal(size=(C, D - C))], axis=-1)
  return feature_cache.FeatureSet(
      psi_inputs=psi_in.astype(np.float32), graph_features=graph.astype(np.float32),
      image_grids=rng.uniform(size=(num_views, *GRID, 3)).astype(np.float32),
      image_index=np.arange(num_views, dtype=np.int32), view_index=np.zeros(num_views, np.int32),
      grid=GRID, names=tuple(f"im{i}" for i in range(num_views)), key="synthetic")


@pytest.fixture(scope="module")
def config():
  return configs.get_config("test")


@pytest.fixture(scope="module")
def features():
  return synthetic_features()


# ----------------------------------------------------------------------------- noise
# (the batch kernel's rows, graphs.batch_kernel_matmul: tests/test_graphs.py)


def test_gumbel_noise_is_per_image_and_position_keyed():
  key = jax.random.key(3)
  logits = jnp.zeros((4, 16, 8))
  draw = jax.jit(step_lib.per_image_gumbel_softmax)
  full = draw(key, logits, 0.5)
  # images differ from each other
  assert not np.allclose(full[0], full[1])
  # a device holding global images 2, 3 draws exactly what one device draws for them
  part = draw(key, logits[2:], 0.5, 2)
  np.testing.assert_array_equal(part, full[2:])


# ----------------------------------------------------------------------------- sharding

_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from experiments.configs import neuralef as configs
    from spectral_jax.neuralef import step as step_lib
    sys.path.insert(0, "tests")
    from test_neuralef_train import synthetic_features

    forms, with_step, with_pmap = sys.argv[1].split(","), sys.argv[2] == "1", sys.argv[3] == "1"
    config = configs.get_config("test")
    batch = synthetic_features(8).batch(np.arange(8))
    state = step_lib.init_state(config, batch["psi_inputs"].shape[-1]).replace(
        step=jnp.asarray(3, jnp.int32))
    mesh = step_lib.data_mesh()

    def rel(a, b):
      errs = [np.abs(np.asarray(x) - np.asarray(y)).max() / max(np.abs(np.asarray(y)).max(), 1e-30)
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
      return float(max(errs))

    out = {}
    for form in forms:
      config.graph.form = form
      ref = jax.jit(step_lib.make_loss_and_grad(config))(state, batch)
      sm = jax.jit(jax.shard_map(step_lib.make_loss_and_grad(config, axis_name="data"),
                                 mesh=mesh, in_specs=(P(), P("data")),
                                 out_specs=(P(), P(), P())))(state, batch)
      out[f"shard_map_{form}"] = [rel(a, b) for a, b in zip(sm, ref)]
      if with_pmap:
        pm = jax.pmap(step_lib.make_loss_and_grad(config, axis_name="data", sum_grads=True),
                      axis_name="data", in_axes=(None, 0))(
            state, {k: v.reshape(8, -1, *v.shape[1:]) for k, v in batch.items()})
        out[f"pmap_{form}"] = [rel(jax.tree.map(lambda x: x[0], a), b) for a, b in zip(pm, ref)]
      if with_step:
        one = step_lib.make_train_step(config)(state, batch)
        eight = step_lib.make_train_step(config, mesh)(state, batch)
        # Adam moves each parameter by about the learning rate whatever its gradient's size, so
        # a parameter whose gradient lies below float32 summation noise moves by a noisy
        # fraction of a step (measured: the worst differences sit where |g| ≈ 4e-5 max|g|);
        # parameters are compared in units of the step, the metrics relatively.
        worst = max(float(jnp.abs(a - b).max()) for a, b in
                    zip(jax.tree.leaves(eight[0].params), jax.tree.leaves(one[0].params)))
        out[f"train_step_{form}"] = [worst / config.optim.learning_rate, rel(eight[1], one[1])]
    grad_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(ref[2]))))
    print(json.dumps({"devices": jax.device_count(), "rel_err": out, "grad_norm": grad_norm}))
""")


def _run_sharded(forms: str, with_step: bool, with_pmap: bool) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, forms, str(int(with_step)),
                         str(int(with_pmap))],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["grad_norm"] > 0  # the comparison is not between zeros
  return report["rel_err"]


def test_sharded_step_equals_single_device():
  """shard_map over Mesh('data') and pmap on 8 fake CPU devices (one image each) give the
  single-device loss, aux (eigenvalues, τ, loss terms) and gradients on the same global batch,
  the same Gumbel noise included. Gradients are not pmean-ed under shard_map (DESIGN.md); under
  pmap they are psum-ed."""
  errs = _run_sharded("dense", with_step=False, with_pmap=True)
  assert set(errs) == {"shard_map_dense", "pmap_dense"}
  for name, values in errs.items():
    assert len(values) == 3 and max(values) < 1e-5, (name, values)


@pytest.mark.slow  # 80 s on the 2-core CPU; the dense form's check above stays in the default run
def test_sharded_step_equals_single_device_all_forms():
  """As above for the "knn" kernel form (psum_scatter of the transposed edges) and for the
  whole train step (Adam update included)."""
  errs = _run_sharded("dense,knn", with_step=True, with_pmap=True)
  assert set(errs) == {"shard_map_dense", "shard_map_knn", "pmap_dense", "pmap_knn",
                       "train_step_dense", "train_step_knn"}
  for name, values in errs.items():
    # train_step_*: [max |Δparams| / learning rate, metrics' relative error] (_SHARDED_SCRIPT)
    assert max(values) < (1e-3 if name.startswith("train_step") else 1e-5), (name, values)


class _FakeSharding:
  """Stands in for a NamedSharding of a process holding some rows of a batch of 8."""

  def __init__(self, blocks):
    self.blocks = blocks

  def addressable_devices_indices_map(self, shape):
    del shape
    return {i: (slice(a, b),) for i, (a, b) in enumerate(self.blocks)}


def test_process_rows():
  assert step_lib.process_rows(8, _FakeSharding([(4, 6), (6, 8)])) == slice(4, 8)
  with pytest.raises(ValueError, match="not one block"):
    step_lib.process_rows(8, _FakeSharding([(0, 2), (4, 6)]))
  sharding = jax.sharding.NamedSharding(step_lib.data_mesh(), jax.sharding.PartitionSpec("data"))
  assert step_lib.process_rows(8, sharding) == slice(0, 8)


_MULTIHOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    sys.path.insert(0, "tests")
    from experiments.configs import neuralef as configs
    from spectral_jax.neuralef import train as train_lib
    from test_neuralef_train import synthetic_features
    config = configs.get_config("test")
    config.train.num_steps = 3
    result = train_lib.train(config, workdir, synthetic_features())
    print(json.dumps({"pid": pid, "devices": jax.device_count(),
                      "local": jax.local_device_count(),
                      "losses": [r["loss"] for r in result.history]}))
""")


def test_two_processes_match_one(tmp_path, config, features, spawn):
  """jax.distributed on 127.0.0.1: 2 processes × 2 CPU devices (gloo collectives), each feeding
  only its rows of the global batch, train like one process on one device."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  procs = [spawn([sys.executable, "-c", _MULTIHOST_SCRIPT, str(port), str(pid),
                  str(tmp_path / "multi")], env=env, cwd=REPO, text=True,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in (0, 1)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  single = config.copy_and_resolve_references()
  single.train.num_steps = 3
  want = [r["loss"] for r in train_lib.train(single, tmp_path / "single", features).history]
  for r in reports:
    assert r["devices"] == 4 and r["local"] == 2
    np.testing.assert_allclose(r["losses"], want, rtol=1e-5)


# ----------------------------------------------------------------------------- data order


def test_batch_indices_are_a_function_of_the_step():
  a = [train_lib.batch_indices(s, 20, 6, seed=1) for s in range(6)]
  b = [train_lib.batch_indices(s, 20, 6, seed=1) for s in range(6)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # 3 full batches per epoch, distinct views within an epoch, a new order next epoch
  assert train_lib.steps_per_epoch(20, 6) == 3
  assert len(set(np.concatenate(a[:3]))) == 18
  assert not np.array_equal(np.concatenate(a[:3]), np.concatenate(a[3:]))
  with pytest.raises(ValueError, match="batch of 6"):
    train_lib.steps_per_epoch(5, 6)


# ----------------------------------------------------------------------------- train loop


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, config, features):
  """An uninterrupted run of the test config (20 steps, checkpoints every 5)."""
  workdir = tmp_path_factory.mktemp("full")
  return workdir, train_lib.train(config, workdir, features)


def test_interrupted_run_resumes_exactly(tmp_path, config, features, full_run):
  """Ctrl-C at step 7 (KeyboardInterrupt from the callback) saves step 7; rerunning resumes
  there and gives bit-identical losses and final parameters."""
  _, full = full_run

  def interrupt(step, record):
    del record
    if step == 7:
      raise KeyboardInterrupt

  part = train_lib.train(config, tmp_path, features, callback=interrupt)
  assert part.interrupted and int(part.state.step) == 7
  assert 7 in sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                     if p.name.isdigit())
  rest = train_lib.train(config, tmp_path, features)
  assert rest.resumed_from == 7 and not rest.interrupted
  want = {r["step"]: r["loss"] for r in full.history}
  got = {r["step"]: r["loss"] for r in rest.history}
  assert min(got) == 8
  for step, loss in got.items():
    assert loss == want[step], step
  for a, b in zip(jax.tree.leaves(rest.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(a, b)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  logged = [json.loads(line)["step"] for line in lines]
  assert logged == sorted(set(logged)) and logged[-1] == 20


def test_run_writes_metrics_and_tensorboard(full_run, config):
  workdir, full = full_run
  assert [r["step"] for r in full.history] == list(range(1, 21))
  assert full.history[0]["tau"] == pytest.approx(config.loss.tau_max)
  # the step-20 record is the 20th update, made at schedule step 19
  tau = loss_lib.tau_schedule(20, config.loss.tau_max, config.loss.tau_min)
  assert full.history[-1]["tau"] == pytest.approx(float(tau(19)))
  assert full.history[0]["learning_rate"] == pytest.approx(config.optim.learning_rate)
  assert all(np.isfinite(r["loss"]) for r in full.history)
  if importlib.util.find_spec("tensorboardX") is not None:   # the tensorboard extra
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  saved = ckpt.saved_config(workdir)
  assert ckpt.config_differences(ckpt.config_json(saved),
                                      ckpt.config_json(config)) == []


def _tensorboard_scalars(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """tag → [(step, value)] of the event files in ``folder`` (TFRecord framing: length, its
  CRC, an ``Event`` proto, its CRC; read with tensorboardX's own proto classes)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, at = path.read_bytes(), 0
    while at < len(data):
      length = int.from_bytes(data[at:at + 8], "little")
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_logger_writes_tensorboard_scalars_with_the_extra(tmp_path):
  pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
  logger = train_lib._Logger(tmp_path, tensorboard=True, first_step=0, enabled=True)
  for step, loss in ((1, -0.5), (2, -0.75)):
    logger.write({"step": step, "loss": loss, "fidelity/angle_max_deg@8": 40.0 + step,
                  "eig_top4": [1.0, 0.5]})
  logger.close()
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars["train/loss"] == [(1, -0.5), (2, -0.75)]
  # tensorboardX's tag rule turns '@' into '_'
  assert scalars["train/fidelity/angle_max_deg_8"] == [(1, 41.0), (2, 42.0)]
  assert "train/eig_top4" not in scalars          # lists stay in metrics.jsonl only
  assert len(train_lib.read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_logger_without_tensorboardx_says_so_once_and_keeps_the_metrics(tmp_path, monkeypatch,
                                                                        capsys):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import tensorboardX → ImportError
  logger = train_lib._Logger(tmp_path, tensorboard=True, first_step=0, enabled=True)
  for step in (1, 2):
    logger.write({"step": step, "loss": -0.5})
  logger.close()
  err = capsys.readouterr().err.splitlines()
  notes = [line for line in err if "TensorBoard summaries skipped" in line]
  assert len(notes) == 1 and train_lib.TENSORBOARD_INSTALL in notes[0]
  assert not (tmp_path / "tensorboard").exists()
  assert [r["step"] for r in train_lib.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
  # log.tensorboard=False asks for none: no note
  train_lib._Logger(tmp_path / "off", tensorboard=False, first_step=0, enabled=True).close()
  assert "TensorBoard" not in capsys.readouterr().err


def test_checkpoint_of_another_config_is_rejected(full_run, config, features):
  workdir, _ = full_run
  other = config.copy_and_resolve_references()
  other.psi.k = 4
  other.loss.t = 0.1
  with pytest.raises(ckpt.ConfigMismatchError, match=r"loss\.t: checkpoint 0\.01 vs now "
                     r"0\.1; psi\.k: checkpoint 8 vs now 4"):
    train_lib.train(other, workdir, features)
  # runtime fields may change: a finished run resumes and does nothing
  runtime = config.copy_and_resolve_references()
  runtime.checkpoint.every = 7
  runtime.log.every = 3
  again = train_lib.train(runtime, workdir, features)
  assert again.resumed_from == 20 and again.history == []


def test_changed_num_steps_is_refused_with_what_to_do(full_run, config):
  """A finished run is not extended in place (its LR and τ schedules are num_steps long): the
  refusal names the flags of a new, longer run, and --stop_at where a shorter stop can still
  come (the 20-step run's step-10 checkpoint, 15 steps)."""
  workdir, _ = full_run
  longer = config.copy_and_resolve_references()
  longer.train.num_steps = 30
  with pytest.raises(ckpt.ConfigMismatchError) as e:
    ckpt.check_checkpoint_config(workdir, longer)
  assert ("train.num_steps: checkpoint 20 vs now 30" in str(e.value)
          and "cannot be extended or shortened in place: for a 30-step training, start a new run "
          "with --config.train.num_steps=30 and another --workdir." in str(e.value)), str(e.value)
  assert "--stop_at" not in str(e.value)
  shorter = config.copy_and_resolve_references()
  shorter.train.num_steps = 15
  with pytest.raises(ckpt.ConfigMismatchError,
                     match=r"keep num_steps=20 and pass --stop_at=15 \(it resumes later\)\.$"):
    ckpt.check_checkpoint_config(workdir, shorter, step=10)
  with pytest.raises(ckpt.ConfigMismatchError) as e:   # step 20 is past 15: no --stop_at
    ckpt.check_checkpoint_config(workdir, shorter)
  assert "--stop_at" not in str(e.value)


def test_labels_cannot_reach_the_step(config, features, full_run):
  """SPEC §5 leak: a batch carrying labels gives bit-identical updates whatever the labels, and
  the training batch never contains them."""
  del full_run  # the step below is the run's compiled step (same config and mesh)
  assert set(features.batch(np.arange(8))) == set(step_lib.BATCH_KEYS)
  mesh = step_lib.data_mesh()
  step = step_lib.make_train_step(config, mesh)
  state = step_lib.replicate(step_lib.init_state(config, D), mesh)
  batch = step_lib.device_batch(features.batch, np.arange(8), mesh)
  rng = np.random.default_rng(0)
  outs = [step(state, {**batch, "labels": jnp.asarray(rng.integers(0, 5, size=(8, 16)))})
          for _ in range(2)]
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_array_equal(a, b)


def test_bad_batch_size_is_rejected(tmp_path, config, features):
  bad = config.copy_and_resolve_references()
  bad.train.batch_size = 32
  with pytest.raises(ValueError, match="batch of 32"):
    train_lib.train(bad, tmp_path, features)
  bad.train.batch_size = 8
  bad.graph.k = 128  # a batch of 8 × 16 tokens allows at most 127 neighbours
  with pytest.raises(ValueError, match="graph.k = 128"):
    train_lib.train(bad, tmp_path, features)


class _Pending:
  """A metric whose value becomes ready 0.2 s after it is waited for (a slow device step)."""

  def __init__(self, value):
    self.value = value

  def block_until_ready(self):
    time.sleep(0.2)
    return self

  def __float__(self):
    return float(self.value)


def test_logged_seconds_time_the_step_not_its_dispatch(tmp_path, config, features, monkeypatch):
  """``seconds`` (TensorBoard train/seconds) waits for the logged step's result: a step whose
  result takes 0.2 s to be ready is logged as ≥ 0.2 s (dispatch alone took milliseconds)."""
  real = step_lib.make_train_step

  def slow_step(*args):
    step = real(*args)

    def run(state, batch):
      new_state, metrics = step(state, batch)
      return new_state, {**metrics, "loss": _Pending(metrics["loss"])}
    return run
  monkeypatch.setattr(step_lib, "make_train_step", slow_step)
  short = config.copy_and_resolve_references()
  short.train.num_steps = 4
  history = train_lib.train(short, tmp_path, features).history
  assert [r["step"] for r in history] == [1, 2, 3, 4]
  for r in history:
    assert r["seconds"] >= 0.2, history


class _Untouchable:
  """A state that fails the test if anything reads it (e.g. a device_get of its step)."""

  def __getattr__(self, name):
    raise AssertionError(f"the state's {name} was read")


def test_save_checkpoint_does_not_sync_when_not_due(tmp_path, config):
  manager = ckpt.checkpoint_manager(tmp_path, config)  # every 5 steps
  try:
    state = step_lib.init_state(config, D).replace(step=jnp.asarray(5, jnp.int32))
    assert ckpt.save_checkpoint(manager, state, config, step=5)
    for step in (6, 7, 9):  # orbax saves a run's first step, then multiples of 5
      assert not ckpt.save_checkpoint(manager, _Untouchable(), config, step=step)
    manager.wait_until_finished()
    assert manager.all_steps() == [5]
  finally:
    manager.close()


# ----------------------------------------------------------------------------- feature cache


@pytest.fixture(scope="module")
def tiny_backbone():
  from spectral_jax import backbones
  return backbones.init_backbone(backbones.get_config("dinov2_vits14", **TINY_BACKBONE), seed=0)


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [NamedImage("a", rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)),
          NamedImage("b", rng.integers(0, 256, size=(60, 45, 3), dtype=np.uint8))]


AUG = transforms.FixedViews(image_size=28, views_per_image=2)


def test_feature_cache_hit_miss_and_key(tmp_path, tiny_backbone):
  images = _images()
  first, hit = feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path)
  assert not hit and len(first) == 4 and first.grid == (2, 2)
  assert first.psi_inputs.shape == (4, 4, D) and first.graph_features.shape == (4, 4, C)
  # ψ's input is [block 0, block depth//2, last keys]; the graph uses the keys (DINOv2)
  np.testing.assert_array_equal(first.psi_inputs[..., 2 * C:], first.graph_features)
  second, hit = feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path)
  assert hit
  for name in ("psi_inputs", "graph_features", "image_grids", "image_index", "view_index"):
    np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
  ident = feature_cache.backbone_identity(tiny_backbone)
  def key(imgs=images, aug=AUG, bid=ident, dt="float32"):
    return feature_cache.cache_key(bid, imgs, aug, dt)
  assert key() == first.key
  changed_image = [images[0], NamedImage("b", images[1].rgb.copy())]
  changed_image[1].rgb[0, 0, 0] ^= 1
  other_weights = dict(ident, weights="0" * 64)
  variants = [key(imgs=changed_image), key(aug=dataclasses.replace(AUG, image_size=42)),
              key(aug=dataclasses.replace(AUG, seed=1)), key(bid=other_weights),
              key(dt="float16"), key(imgs=images[::-1])]
  assert len({key(), *variants}) == len(variants) + 1


def test_feature_cache_corrupt_and_partial(tmp_path, tiny_backbone):
  images = _images(1)
  feats, _ = feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path)
  entry = tmp_path / feats.key
  shard = entry / "shard_00000.npz"
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(feature_cache.FeatureCacheError, match="corrupt.*delete"):
    feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path)
  # refresh replaces it; an entry without meta.json (interrupted extraction) is a miss
  _, hit = feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path, refresh=True)
  assert not hit
  (entry / "meta.json").unlink()
  _, hit = feature_cache.cached_feature_set(tiny_backbone, images, AUG, tmp_path)
  assert not hit and (entry / "meta.json").is_file()
  meta = json.loads((entry / "meta.json").read_text())
  meta["num_views"] = 5
  (entry / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(feature_cache.FeatureCacheError, match="inconsistent"):
    feature_cache.load_cached(entry)


def test_augmented_views_are_seeded_crops():
  rgb = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
  aug = transforms.FixedViews(image_size=20, views_per_image=3)
  views = transforms.fixed_views(rgb, 0, aug)
  assert views.shape == (3, 20, 20, 3) and views.dtype == np.uint8
  np.testing.assert_array_equal(views, transforms.fixed_views(rgb, 0, aug))
  assert not np.array_equal(views, transforms.fixed_views(rgb, 1, aug))
  # view 0: the short side resized to 20, then the centre crop
  from PIL import Image
  centre = np.asarray(Image.fromarray(rgb).resize((27, 20), Image.BILINEAR))[:, 3:23]
  np.testing.assert_array_equal(views[0], centre)
  with pytest.raises(ValueError, match="min_scale"):
    transforms.FixedViews(min_scale=0.5)


# Starts a command with SIGINT ignored, as `cmd &` in a script does (a shell, not preexec_fn:
# forking the multithreaded pytest process to run Python code in the child can deadlock).
_SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


@pytest.mark.parametrize("prefix", [
    pytest.param([], id="plain"),
    pytest.param(_SIGINT_IGNORED, id="sigint_ignored", marks=pytest.mark.slow)])  # 55 s
def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path, spawn, prefix):
  """The training script under a real SIGINT: exit status 130 after saving the last completed
  step; the same command resumes from it (real bundled photos, offline DINOv2 weights). Also
  when the process was started with SIGINT ignored (``cmd &`` in a script, nohup): the script
  installs its own handler."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "experiments.train_neuralef",
         "--config", "experiments/configs/neuralef.py:test", "--workdir", str(tmp_path / "run"),
         f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.num_steps=100000"]
  proc = spawn(prefix + cmd, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT)
  for line in proc.stdout:
    if line.startswith("devices:"):
      break
  log = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 600
  while not (log.exists() and len(log.read_text().splitlines()) >= 3):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 130, out[-3000:]
  saved = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  assert saved >= 3 and (tmp_path / "run" / "checkpoints" / str(saved)).is_dir()
  again = subprocess.run(cmd + [f"--stop_at={saved + 2}"], env=env, cwd=REPO, text=True,
                         capture_output=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed from step {saved}" in again.stdout
  assert f"done at step {saved + 2}" in again.stdout


def test_torn_metrics_line_and_truncated_checkpoint_resume(tmp_path, config, features, full_run,
                                                           capfd):
  """What kill -9 or a full disk leaves: a torn last line of metrics.jsonl and a truncated
  newest checkpoint. Resume drops the line and falls back to the newest intact step (moving
  the broken one aside), and the losses from there equal the uninterrupted run's."""
  _, full = full_run
  train_lib.train(config, tmp_path, features, stop_at=10)   # checkpoints at 5 and 10
  log = tmp_path / "metrics.jsonl"
  log.write_text(log.read_text() + '{"step": 11, "loss": -0.0')          # torn
  step10 = tmp_path / "checkpoints" / "10"
  broken = [p for p in (step10 / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
  assert broken, "no state file to truncate"
  for p in broken:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
  capfd.readouterr()
  rest = train_lib.train(config, tmp_path, features)   # the full 20 steps
  err = capfd.readouterr().err
  assert "dropped an unreadable metrics line" in err and "metrics.jsonl:" in err
  assert "checkpoint step 10" in err and "10.corrupt" in err
  assert rest.resumed_from == 5
  assert (tmp_path / "checkpoints" / "10.corrupt").is_dir()
  want = {r["step"]: r["loss"] for r in full.history}
  assert {r["step"]: r["loss"] for r in rest.history} == {s: want[s] for s in range(6, 21)}
  steps = [r["step"] for r in train_lib.read_metrics(log)]
  assert steps == list(range(1, 21))


def test_divergence_stops_at_the_first_non_finite_loss_and_saves_nothing(tmp_path, config,
                                                                        features):
  """graph.alpha = 1e30 drives the loss to NaN: training stops with a DivergedError naming the
  step, and no checkpoint holds NaN (the interrupt path too)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.graph.alpha = 1e30
    cfg.log.every = 1
  with pytest.raises(ckpt.DivergedError,
                     match="diverged at step 1: loss (nan|inf); no checkpoint was saved"):
    train_lib.train(cfg, tmp_path, features)
  assert not [p for p in (tmp_path / "checkpoints").glob("[0-9]*")]
  # A state that is already non-finite is refused at the save itself.
  state = step_lib.init_state(cfg, features.psi_inputs.shape[-1])
  state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  manager = ckpt.checkpoint_manager(tmp_path / "ck", cfg)
  try:
    with pytest.raises(ckpt.DivergedError, match="at step 3 holds NaN/Inf and was not saved"):
      ckpt.save_checkpoint(manager, state, cfg, force=True, step=3)
  finally:
    manager.close()
  assert not list((tmp_path / "ck").glob("3*"))


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, config, features, hold_lock):
  """Two trainings on one workdir used to interleave metrics.jsonl and die in orbax: the
  second now refuses at once, naming the holder, and writes nothing."""
  pid = hold_lock(tmp_path)
  with pytest.raises(ValueError, match=f"workdir .* is in use by another run \\(PID {pid}\\)"):
    train_lib.train(config, tmp_path, features)
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_progress_off_a_terminal_is_one_line_per_logged_step(tmp_path, config, features, capfd):
  """Under nohup or a scheduler (stderr not a terminal) training prints a line at each logged
  step with the loss, τ, learning rate, rate and ETA, and nothing in between."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.log.progress = True
    cfg.log.every = 5
  train_lib.train(cfg, tmp_path, features, stop_at=10)
  lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("train: ")]
  logged = [r["step"] for r in train_lib.read_metrics(tmp_path / "metrics.jsonl")]
  assert logged == [1, 5, 10]
  assert [ln.split()[1] for ln in lines[:3]] == ["1/10", "5/10", "10/10"], lines   # stop_at
  assert all("loss " in ln and "tau " in ln and "lr " in ln for ln in lines[:3])
  assert "ETA" in lines[1] and "step" in lines[1]
  assert len(lines) <= 4      # plus at most the closing line
