"""Kernel scopes of the sharded NeuralEF step (``graph.scope``: device / group / global).

References: D independent single-device steps written out here from the dense whole-batch
kernel (``graphs.neuralef_kernel``, not the sharded ``batch_kernel_matmul``), the Gumbel noise of
each image keyed by its global position, their losses and gradients averaged; the global
scope's own step for ``group`` with g = D; an uninterrupted run for resumption. 8 fake CPU
devices in a subprocess (the device count is fixed when JAX starts).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from experiments.configs import neuralef as configs
from spectral_jax.neuralef import checkpoint as ckpt
from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from experiments.configs import neuralef as configs
    from spectral_jax import graphs
    from spectral_jax.neuralef import loss as loss_lib
    from spectral_jax.neuralef import step as step_lib
    sys.path.insert(0, "tests")
    from test_neuralef_train import synthetic_features

    D = jax.device_count()
    config = configs.get_config("test")
    config.graph.k = 6                        # fewer than the 2·16 - 1 tokens of a g = 2 group
    batch = synthetic_features(16).batch(np.arange(16))        # 2 images per device
    state = step_lib.init_state(config, batch["psi_inputs"].shape[-1]).replace(
        step=jnp.asarray(3, jnp.int32))
    mesh = step_lib.data_mesh()

    def one_kernel(state, rows, first_image):
      # One device's own step on `rows`: the dense kernel of those rows alone, the noise of
      # image i drawn from fold_in(step key, first_image + i).
      g, lc = config.graph, config.loss
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      tau = loss_lib.tau_schedule(int(config.train.num_steps), lc.tau_max, lc.tau_min)(state.step)
      kernel = graphs.neuralef_kernel(rows["graph_features"], rows["image_grids"], k=g.k,
                                      alpha=g.alpha, n_neighbors=tuple(g.n_neighbors),
                                      distance_weights=tuple(g.distance_weights))
      def objective(params):
        logits, _ = step_lib.psi_module(config).apply({"params": params}, rows["psi_inputs"])
        soft = step_lib.per_image_gumbel_softmax(key, logits, tau, first_image)
        normed = loss_lib.l2_batch_normalize(soft).reshape(-1, config.psi.k)
        return loss_lib.neuralef_loss(normed, kernel, loss_lib.beta_for(config.psi.k,
                                      lc.beta_times_k), t=lc.t)
      (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
      return loss, aux["eigenvalues"], grads

    def averaged(devices_per_kernel):
      # The mean of the D / g independent kernels' losses, eigenvalues and gradients.
      per = 16 // D * devices_per_kernel
      outs = [jax.jit(one_kernel)(state, {k: v[i:i + per] for k, v in batch.items()}, i)
              for i in range(0, 16, per)]
      return jax.tree.map(lambda *xs: sum(xs) / len(xs), *outs)

    def rel(a, b):
      errs = [np.abs(np.asarray(x) - np.asarray(y)).max() / max(np.abs(np.asarray(y)).max(), 1e-30)
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
      return float(max(errs))

    full = sys.argv[1] == "full"
    out = {}
    for scope, g in (("device", 1), ("group", 2))[:2 if full else 1]:
      config.graph.scope, config.graph.group_size = scope, g
      step_mesh, axis = step_lib.scope_mesh(config, mesh)
      loss, aux, grads = jax.jit(jax.shard_map(
          step_lib.make_loss_and_grad(config, axis_name=axis), mesh=step_mesh,
          in_specs=(P(), P(axis)), out_specs=(P(), P(), P())))(state, batch)
      want = averaged(g)
      out[scope] = rel((loss, aux["eigenvalues"], grads), want)
      if not full:
        continue
      # the train step's metrics: the mean loss, the norm of the mean gradient
      _, metrics = step_lib.make_train_step(config, mesh)(state, batch)
      out[scope + "_step"] = rel((metrics["loss"], metrics["grad_norm"]),
                                 (want[0], jnp.sqrt(sum(jnp.sum(x ** 2)
                                                        for x in jax.tree.leaves(want[2])))))
      # not the global batch's loss (the scope changes the estimator)
      out[scope + "_vs_global_loss"] = rel(loss, averaged(D)[0])

    if full:
      config.graph.scope = "global"
      ref_state, ref_metrics = step_lib.make_train_step(config, mesh)(state, batch)
      config.graph.scope, config.graph.group_size = "group", D
      grp_state, grp_metrics = step_lib.make_train_step(config, mesh)(state, batch)
      out["group_D_vs_global"] = rel((grp_state, grp_metrics), (ref_state, ref_metrics))
    print(json.dumps({"devices": D, "rel_err": out}))
""")


def _run(script: str, *args: str, devices: int = 8) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_device_scope_averages_independent_single_device_steps():
  """On 8 fake devices, 2 images each: ``device`` scope's loss, eigenvalues and gradients are
  the mean of 8 single-device steps, each on its own 2 images."""
  report = _run(_SCRIPT, "fast")
  assert report["devices"] == 8
  assert set(report["rel_err"]) == {"device"}
  assert report["rel_err"]["device"] < 1e-5, report


@pytest.mark.slow  # ~50 s of CPU (100 s on the loaded 2-core machine; the case above: ~12 s)
def test_group_scopes_average_their_kernels_and_group_of_all_is_global():
  """As above, and ``group`` with g = 2 is the mean of 4 steps on 4 images each; the train
  step's loss and gradient norm are those of the averaged references; both differ from the
  global batch's loss (the scope changes the estimator, so the comparisons can fail); ``group``
  with g = D is the ``global`` step (state and metrics)."""
  report = _run(_SCRIPT, "full")
  assert report["devices"] == 8
  errs = report["rel_err"]
  for name in ("device", "group", "device_step", "group_step", "group_D_vs_global"):
    assert errs[name] < 1e-5, (name, errs)
  assert errs["device_vs_global_loss"] > 1e-3 and errs["group_vs_global_loss"] > 1e-3, errs


_RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, pathlib
    import jax, numpy as np
    from experiments.configs import neuralef as configs
    from spectral_jax.neuralef import step as step_lib
    from spectral_jax.neuralef import train as train_lib
    sys.path.insert(0, "tests")
    from test_neuralef_train import synthetic_features

    features = synthetic_features(16)
    seen = []
    real_device_batch = step_lib.device_batch
    def spy(fn, indices, mesh):
      seen.append([int(i) for i in indices])
      return real_device_batch(fn, indices, mesh)
    step_lib.device_batch = spy

    def run(scope, workdir, stop=None):
      config = configs.get_config("test")
      config.train.num_steps, config.checkpoint.every = 6, 3
      config.graph.k = 6                           # a device's 16 tokens
      config.graph.scope, config.graph.group_size = scope, 4
      return train_lib.train(config, workdir, features, stop_at=stop)

    out, order = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      for scope in ("global", "device", "group"):
        seen.clear()
        full = run(scope, tmp / scope)
        order[scope] = list(seen)
        run(scope, tmp / (scope + "_part"), stop=3)
        rest = run(scope, tmp / (scope + "_part"))
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rest.state),
                                                          jax.tree.leaves(full.state)))
        out[scope] = {"resumed_from": rest.resumed_from, "same_state": bool(same),
                      "losses_equal": [r["loss"] for r in rest.history] ==
                                      [r["loss"] for r in full.history[3:]],
                      "final_loss": full.history[-1]["loss"]}
    print(json.dumps({"devices": jax.device_count(), "runs": out, "order": order}))
""")


@pytest.mark.slow  # ~40 s on the 2-core CPU: three scopes, three runs each, 8 fake devices
def test_scopes_resume_exactly_and_keep_the_data_order():
  """With ``device`` and ``group`` scope, an interrupted run resumed from its step-3 checkpoint
  ends in the uninterrupted run's state, bit for bit; the views of every step are those of the
  global scope, and the scopes train differently (the final losses differ)."""
  report = _run(_RESUME_SCRIPT)
  assert report["devices"] == 8
  runs, order = report["runs"], report["order"]
  for scope, r in runs.items():
    assert r["resumed_from"] == 3 and r["same_state"] and r["losses_equal"], (scope, r)
  assert len(order["global"]) == 6 and order["device"] == order["global"] == order["group"]
  losses = {r["final_loss"] for r in runs.values()}
  assert len(losses) == 3, runs


@pytest.mark.parametrize("change, devices, match", [
    ({"scope": "node"}, None, r"graph.scope must be one of \('device', 'group', 'global'\)"),
    ({"scope": "group", "group_size": 0}, None, "graph.group_size must be an integer ≥ 1"),
    ({"scope": "group", "group_size": 3}, 8, "graph.group_size = 3 must divide the 8 devices"),
    ({"scope": "device", "k": 16}, 8, "graph.k = 16 neighbours need more than the 16 tokens of "
                                      "a device-scope kernel"),
    ({"scope": "group", "group_size": 2}, 8, None),
])
def test_scope_fields_are_checked(change, devices, match):
  """The scope fields fail with one line naming the field; a device-scope kernel's tokens are
  one device's (8 images of 4×4 patches on 8 devices: 16), a group's g devices'."""
  config = configs.get_config("test")
  for name, value in change.items():
    config.graph[name] = value
  if match is None:
    config_lib.check(config, patch_size=14, devices=devices)
    return
  with pytest.raises(ValueError, match=match) as err:
    config_lib.check(config, patch_size=14, devices=devices)
  assert "\n" not in str(err.value)


def test_scope_axes_and_the_default():
  assert configs.get_config("test").graph.scope == "global"
  assert step_lib.scope_axes("global", "data") == ("data", None)
  assert step_lib.scope_axes("device", "data") == (None, "data")
  assert step_lib.scope_axes("group", step_lib.GROUP_AXES) == ("member", "group")
  assert step_lib.scope_axes("device", None) == (None, None)
  with pytest.raises(ValueError, match="needs axis_name = \\(group axis, member axis\\)"):
    step_lib.scope_axes("group", "data")


def test_a_checkpoint_from_before_scopes_resumes_as_global():
  """A saved config without graph.scope / group_size (written before they existed) equals
  today's default config, and differs from one that sets another scope."""
  config = configs.get_config("test")
  old = ckpt.config_json(config)
  del old["graph"]["scope"], old["graph"]["group_size"]
  assert ckpt.config_differences(old, ckpt.config_json(config)) == []
  assert ckpt.ADDED_FIELDS["graph.group_size"] == config_lib.DEFAULT_GROUP_SIZE
  config.graph.scope = "device"
  assert ckpt.config_differences(old, ckpt.config_json(config)) == [
      'graph.scope: checkpoint "global" vs now "device"']
