"""Training from datasets: the grain pipeline (per-host shards, resumable state) and the frozen
backbone inside the jitted step.

References: the cache path's step on features precomputed by the same backbone (with the
functions the cache uses), an uninterrupted run for resumption, one process running both
hosts' pipelines for the two-process run, the pipeline's own batches for worker counts.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_pascal_context
from experiments.configs import neuralef as configs
from spectral_jax import backbones
from spectral_jax import graphs
from spectral_jax.datasets.images import NamedImage
from spectral_jax.datasets import pipeline
from spectral_jax.datasets import transforms
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import features as feats_lib
from spectral_jax.neuralef import step as step_lib
from spectral_jax.neuralef import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(depth=2, width=4, num_heads=2, mlp_dim=8)  # as test_neuralef_train


def tiny_backbone():
  return backbones.init_backbone(backbones.get_config("dinov2_vits14", **TINY_BACKBONE), seed=0)


def photos(n=5, seed=0):
  rng = np.random.default_rng(seed)
  return [NamedImage(f"p{i}", rng.integers(0, 256, size=(40 + 7 * i, 70 - 5 * i, 3),
                                           dtype=np.uint8)) for i in range(n)]


def image_config(num_steps=6):
  config = configs.get_config("test")
  config.data.dataset = "folder"
  config.train.num_steps = num_steps
  config.checkpoint.every = 100
  return config


@pytest.fixture(scope="module")
def backbone():
  return tiny_backbone()


# ----------------------------------------------------------------------------- the pipeline


def test_pipeline_shards_shuffles_and_is_a_function_of_the_index():
  source = pipeline.ImageListSource(photos(7))
  aug = transforms.TrainAugment(crop_size=28, scale=(48, 48))
  take = lambda it, n: [next(it) for _ in range(n)]
  a = take(iter(pipeline.training_dataset(source, aug, batch_size=3, seed=1, shard_index=0,
                                          shard_count=1)), 7)
  # every image once per epoch (7 images = 21 elements = 3 epochs), a new order each epoch
  flat = np.concatenate([b["index"] for b in a])
  epochs = flat.reshape(3, 7)
  for e in epochs:
    assert sorted(e) == list(range(7))
  assert not np.array_equal(epochs[0], epochs[1])
  # two hosts: disjoint shards of equal size (7 → 3 each, image 6 unused), same count per host
  shards = [np.concatenate([b["index"] for b in take(iter(pipeline.training_dataset(
      source, aug, batch_size=3, seed=1, shard_index=i, shard_count=2)), 2)]) for i in (0, 1)]
  assert set(shards[0]) == {0, 2, 4} and set(shards[1]) == {1, 3, 5}
  # threads do not change a batch; the crop is the augmentation of that image with its params
  b = take(iter(pipeline.training_dataset(source, aug, batch_size=3, seed=1, shard_index=0,
                                          shard_count=1, num_threads=1, prefetch=0)), 7)
  for x, y in zip(a, b):
    for k in ("image", "index", "aug"):
      np.testing.assert_array_equal(x[k], y[k])
  assert a[0]["image"].shape == (3, 28, 28, 3) and a[0]["image"].dtype == np.uint8
  assert set(a[0]) == {"image", "index", "aug"}  # no labels leave the pipeline (SPEC §5)
  ratio = a[0]["aug"][:, 0]
  assert ((ratio >= 0.5) & (ratio < 2.0)).all()


def test_pipeline_state_round_trips_through_json():
  source = pipeline.ImageListSource(photos(5))
  aug = transforms.TrainAugment(crop_size=28, scale=(48, 48))
  make = lambda: iter(pipeline.training_dataset(source, aug, batch_size=2, seed=3,
                                                shard_index=0, shard_count=1))
  it = make()
  for _ in range(4):
    next(it)
  text = pipeline.encode_state(it.get_state())
  want = [next(it) for _ in range(3)]
  again = make()
  again.set_state(json.loads(text))
  for x, y in zip(want, (next(again) for _ in range(3))):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["index"], y["index"])


@pytest.fixture(scope="module")
def resource_tracker():
  """multiprocessing's resource tracker (grain's workers share memory through it), started
  before the test: it lives as long as this interpreter, by design, so it is not the test's
  leftover."""
  from multiprocessing import resource_tracker as tracker  # pylint: disable=import-outside-toplevel
  tracker.ensure_running()


def test_pipeline_workers_change_no_batch(resource_tracker):
  """A multiprocess worker (grain mp_prefetch) yields the batches the in-process pipeline does,
  and its iterator state resumes the same sequence."""
  del resource_tracker
  source = pipeline.ImageListSource(photos(5))
  aug = transforms.TrainAugment(crop_size=28, scale=(48, 48))
  make = lambda workers: iter(pipeline.training_dataset(
      source, aug, batch_size=2, seed=5, shard_index=0, shard_count=1, num_workers=workers))
  plain = make(0)
  want = [next(plain) for _ in range(5)]
  worker = make(1)
  try:
    got = [next(worker) for _ in range(3)]
    state = json.loads(pipeline.encode_state(worker.get_state()))
  finally:
    worker.close()
  resumed = make(1)
  try:
    resumed.set_state(state)
    got += [next(resumed) for _ in range(2)]
  finally:
    resumed.close()
  for x, y in zip(want, got):
    for k in ("image", "index", "aug"):
      np.testing.assert_array_equal(x[k], np.asarray(y[k]))


def test_pipeline_bad_input():
  source = pipeline.ImageListSource(photos(1))
  with pytest.raises(ValueError, match="cannot be split over 2 hosts"):
    pipeline.training_dataset(source, transforms.TrainAugment(), batch_size=1, seed=0,
                              shard_index=0, shard_count=2)
  with pytest.raises(ValueError, match="unknown training dataset 'voc07'"):
    pipeline.training_source("voc07", "/nonexistent")
  data = image_config().data
  data.dataset = "pascal_context"
  with pytest.raises(ValueError, match="data.data_dir must name"):
    config_lib.check_data(data)
  data.data_dir = "/nonexistent/dir"
  with pytest.raises(ValueError, match="is not a folder"):
    config_lib.check_data(data)


# ----------------------------------------------------------------------------- the step


@pytest.mark.parametrize("sharded", [pytest.param(False, id="one_device", marks=pytest.mark.slow),
                                     pytest.param(True, id="mesh")])
def test_image_step_equals_cache_step(backbone, sharded):
  """Images in → backbone inside the step equals the cache path's step on features that the
  cache's functions computed from the same images with the same backbone."""
  config = image_config()
  mesh = step_lib.data_mesh() if sharded else None
  images = np.random.default_rng(0).integers(0, 256, size=(8, 58, 57, 3), dtype=np.uint8)
  p = backbone.config.patch_size
  crops = images[:, :56, :56]
  psi_in, graph_feats = feats_lib.jitted_backbone_features()(
      backbone, jnp.asarray(crops, jnp.float32) / 255.0)
  cached = {"psi_inputs": np.asarray(psi_in), "graph_features": np.asarray(graph_feats),
            "image_grids": np.asarray(graphs.resize_to_grid(crops, (56 // p, 56 // p),
                                                            convention="torch"))}
  state = step_lib.replicate(step_lib.init_state(config, psi_in.shape[-1]), mesh)
  want = step_lib.make_train_step(config, mesh)(state, cached)
  got = step_lib.make_image_train_step(config, backbone, mesh)(state, {"images": images})
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Adam moves each parameter by about the learning rate whatever its gradient's size, so the
  # parameters are compared in units of the step (as test_neuralef_train's sharded step)
  worst = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(got[0].params), jax.tree.leaves(want[0].params)))
  assert worst / config.optim.learning_rate < 1e-3
  assert float(want[1]["grad_norm"]) > 0


@pytest.mark.slow  # 16 s
def test_image_step_bf16_backbone_is_close(backbone):
  """bf16 backbone compute: float32 loss and kernel, the loss near the float32 step's."""
  config = image_config()
  images = np.random.default_rng(1).integers(0, 256, size=(8, 56, 56, 3), dtype=np.uint8)
  state = step_lib.init_state(config, 3 * backbone.config.width)
  f32 = step_lib.make_image_train_step(config, backbone)(state, {"images": images})[1]
  config.backbone.dtype = "bfloat16"
  bf16 = step_lib.make_image_train_step(config, backbone)(state, {"images": images})[1]
  assert bf16["loss"].dtype == jnp.float32 and np.isfinite(float(bf16["loss"]))
  np.testing.assert_allclose(float(bf16["loss"]), float(f32["loss"]), rtol=0.05)


# ----------------------------------------------------------------------------- the loop


def test_interrupted_image_run_resumes_same_batches(tmp_path, backbone):
  """Ctrl-C at step 3 and a resume: the same images, augmentation draws, losses and final
  parameters as an uninterrupted run (the grain iterator's state is in the checkpoint)."""
  config = image_config(6)
  source = pipeline.ImageListSource(photos(5))
  full = train_lib.train(config, tmp_path / "full", source=source, backbone=backbone)

  def interrupt(step, record):
    del record
    if step == 3:
      raise KeyboardInterrupt

  part = train_lib.train(config, tmp_path / "part", source=source, backbone=backbone,
                         callback=interrupt)
  assert part.interrupted and int(part.state.step) == 3
  rest = train_lib.train(config, tmp_path / "part", source=source, backbone=backbone)
  assert rest.resumed_from == 3
  resumed = part.history + rest.history
  assert [r["step"] for r in resumed] == [r["step"] for r in full.history] == list(range(1, 7))
  for a, b in zip(resumed, full.history):
    assert a["image_index"] == b["image_index"] and a["aug"] == b["aug"], a["step"]
    assert a["loss"] == b["loss"], a["step"]
  for a, b in zip(jax.tree.leaves(rest.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(a, b)
  # 5 images, batches of 8: every image in every epoch, fresh crops (never a repeated draw)
  draws = [tuple(x) for r in full.history for x in r["aug"]]
  assert len(set(draws)) == len(draws)


@pytest.mark.slow  # 35 s: the image path's step equality and resume stay in the default run
def test_command_trains_from_pascal_context(tmp_path):
  """`experiments.train_neuralef --config.data.dataset=pascal_context` on the fixture tree, end
  to end (random tiny backbone). Resumption: the in-process test above and the cache path's
  Ctrl-C test; bad inputs: test_bad_inputs.py's train-dataset-* rows."""
  write_pascal_context(tmp_path / "data")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "experiments.train_neuralef",
         "--config", "experiments/configs/neuralef.py:test", "--config.backbone.weights=random",
         f"--config.backbone.overrides={json.dumps(TINY_BACKBONE)}",
         "--workdir", str(tmp_path / "run"), "--config.data.dataset=pascal_context",
         f"--config.data.data_dir={tmp_path / 'data'}", "--config.train.num_steps=3",
         "--config.log.fidelity_every=2"]   # the fidelity probe on the image path too
  done = subprocess.run(cmd, env=env, cwd=REPO, text=True, capture_output=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "data: pascal_context 'train', 1 images" in done.stdout
  assert "done at step 3" in done.stdout
  records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(r["image_index"] == [0] * 8 for r in records)   # the one training image
  assert all(np.isfinite(r["loss"]) for r in records)
  assert (tmp_path / "run" / "checkpoints" / "3" / "data").is_dir()  # the pipeline's state
  probed = [r["step"] for r in records if any(k.startswith("fidelity/") for k in r)]
  assert probed == [2, 3]   # every 2 steps and at the end, on the first crops' features
  fidelity = json.loads((tmp_path / "run" / "fidelity.json").read_text())
  assert fidelity["step"] == 3 and 0.0 <= fidelity["summary"]["eigenpairs_converged"] <= 1.0


# ----------------------------------------------------------------------------- two processes

_MULTIHOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, workdir, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    sys.path.insert(0, "tests")
    from spectral_jax.datasets import pipeline
    from spectral_jax.neuralef import train as train_lib
    from test_neuralef_train_images import image_config, photos, tiny_backbone
    config = image_config(3)
    config.psi.head = "qr"   # the head the step-3 bound was measured with (see _REFERENCE_SCRIPT)
    result = train_lib.train(config, workdir, source=pipeline.ImageListSource(photos()),
                             backbone=tiny_backbone(), stop_at=stop)
    print(json.dumps({"pid": pid, "devices": jax.device_count(), "resumed": result.resumed_from,
                      "losses": [r["loss"] for r in result.history],
                      "index": [r["image_index"] for r in result.history]}))
""")

# The reference: one process on a mesh of the pair's shape (4 devices, 2 images each), both
# hosts' pipelines, the global batch = host 0's rows then host 1's. Measured (jax 0.10/0.12 CPU):
# - a one-device reference with the whole batch is off from step 1 (3.5e-4 relative; 0.55 % at
#   step 3): the backbone's sums differ in the last bits and flip near-tied kNN neighbours;
# - this 4-device reference gives the pair's step-1 and step-2 losses bit for bit, but not
#   step 3's (5.5e-4 relative): XLA:CPU's arithmetic for the same 2 images on one device
#   depends on how many devices the process has (features up to 7e-7 apart, 2 vs 4 devices,
#   the same in every run), and step 3's crops have a near-tied kNN neighbour. With the SAME
#   (initial) parameters the step-3 batch's loss is already 1.6e-4 apart, so it is the graph,
#   not the update. No one-process run can repeat a 2-device process's arithmetic, so step 3
#   is checked at 2e-3 (4× the measured 5.5e-4; a lost update moves it far more: the step-3
#   batch at the initial parameters is 36 % away) and the resume against an uninterrupted pair,
#   bit for bit.
# - Those figures are the QR head's, so both scripts pin psi.head = "qr". With the Householder
#   head (the default since issue 22, which moves ~4× further per Adam step) the same near-tie
#   gave 3.0e-3 at step 3 (2026-12-07, jax 0.10.2); this test checks shards and resumption, and
#   the head's own dynamics are checked against PyTorch in test_neuralef_reference_step.py.
_REFERENCE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    sys.path.insert(0, "tests")
    from spectral_jax.datasets import pipeline
    from spectral_jax.neuralef import config as config_lib
    from spectral_jax.neuralef import step as step_lib
    from test_neuralef_train_images import image_config, photos, tiny_backbone
    assert jax.device_count() == 4, jax.devices()
    config, backbone = image_config(3), tiny_backbone()
    config.psi.head = "qr"
    source = pipeline.ImageListSource(photos())
    aug = config_lib.train_augment(config.data)
    its = [iter(pipeline.training_dataset(source, aug, batch_size=4, seed=config.seed,
                                          shard_index=i, shard_count=2)) for i in (0, 1)]
    mesh = step_lib.data_mesh()
    step = step_lib.make_image_train_step(config, backbone, mesh)
    state = step_lib.replicate(step_lib.init_state(config, 3 * backbone.config.width), mesh)
    losses, index = [], []
    for _ in range(3):
      parts = [next(it) for it in its]
      index.append([p["index"].tolist() for p in parts])
      state, metrics = step(state, {"images": np.concatenate([p["image"] for p in parts])})
      losses.append(float(metrics["loss"]))
    print(json.dumps({"losses": losses, "index": index}))
""")


@pytest.mark.slow  # 146-270 s on 2 shared cores (seven process starts)
def test_two_processes_read_their_shards_and_resume(tmp_path, spawn):
  """2 processes × 2 CPU devices (gloo): each reads its shard of the images, the global batch
  is assembled from both, the losses equal one process stepping on the same global batches on
  a mesh of the same shape (`_REFERENCE_SCRIPT`, which says why step 3 has a wider bound), and
  a resumed pair restores each process's iterator: stopping at 2 and resuming gives step 3 of
  an uninterrupted pair exactly."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))

  def run_pair(stop, workdir):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    procs = [spawn([sys.executable, "-c", _MULTIHOST_SCRIPT, str(port), str(pid),
                    str(tmp_path / workdir), str(stop)], env=env, cwd=REPO, text=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
      assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

  first, second = run_pair(2, "multi"), run_pair(3, "multi")
  whole = run_pair(3, "whole")
  ref = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT], cwd=REPO, text=True,
                       capture_output=True, timeout=900,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  assert ref.returncode == 0, ref.stderr[-3000:]
  reference = json.loads(ref.stdout.strip().splitlines()[-1])
  want_loss, want_index = reference["losses"], reference["index"]
  for pid in (0, 1):
    assert first[pid]["devices"] == 4 and first[pid]["resumed"] is None
    assert second[pid]["resumed"] == 2 and whole[pid]["resumed"] is None
    assert set(sum((w[pid] for w in want_index), [])) == {pid, pid + 2}  # 5 images: {0,2}, {1,3}
    index = first[pid]["index"] + second[pid]["index"]
    assert index == whole[pid]["index"] == [w[pid] for w in want_index]
    losses = first[pid]["losses"] + second[pid]["losses"]
    assert losses == whole[pid]["losses"]
    np.testing.assert_allclose(losses[:2], want_loss[:2], rtol=1e-5)
    np.testing.assert_allclose(losses[2], want_loss[2], rtol=2e-3)
