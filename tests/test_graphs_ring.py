"""The ring form of the global batch kernel (issue 24 item 2) equals today's gathering form.

Each test runs a child process with 8 fake CPU devices (``run_on_cpu_devices``) and compares,
on meshes of the first D = 2, 4, 8 devices, ``graph.global_form = "ring"`` against "gather":
the top-k rows (same indices, ties included), the kernel products, the loss, aux and gradients
of ``make_loss_and_grad`` and a whole train step, for both kernel forms.
"""

import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from experiments.configs import neuralef as configs
    from spectral_jax import graphs
    from spectral_jax.neuralef import step as step_lib
    sys.path.insert(0, "tests")
    from test_neuralef_train import synthetic_features

    MODE, DEVICES, FORMS, BLOCKS = {mode!r}, {devices!r}, {forms!r}, {blocks!r}
    norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree))))

    def rel(a, b):
      return float(max(np.abs(np.asarray(x) - np.asarray(y)).max()
                       / max(np.abs(np.asarray(y)).max(), 1e-30)
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))

    config = configs.get_config("test")
    batch = synthetic_features(8).batch(np.arange(8))
    out = {{}}
    for d in DEVICES:
      mesh = step_lib.data_mesh(jax.devices()[:d])
      smap = lambda fn, outs: jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("data"),
                                                    out_specs=outs))
      if MODE == "topk":
        # 2-d features: about half of the other tokens have a negative cosine (clamped to an
        # exact 0), so with k = n - 1 every row lists tied zeros, which must come in the
        # gathering form's order (lower global index first); one token repeated on another
        # device ties exactly too.
        rng = np.random.default_rng(d)
        f = rng.normal(size=(8 * 16, 2)).astype(np.float32)
        f[-1] = f[0]
        for k, block in ((8 * 16 - 1, None), (5, 3)):
          def gather(x):
            keys = jax.lax.all_gather(x, "data", tiled=True)
            return graphs.topk_cosine_rows(x, keys, k, block_size=block,
                                           row_offset=jax.lax.axis_index("data") * x.shape[0])
          ring = lambda x: graphs.ring_topk_cosine_rows(x, k, axis_name="data",
                                                         block_size=block)
          (gv, gi), (rv, ri) = smap(gather, P("data"))(f), smap(ring, P("data"))(f)
          out[f"{{d}}_{{k}}"] = {{"same_indices": bool(np.array_equal(gi, ri)),
                               "values": rel(rv, gv), "zeros": int((np.asarray(gv) == 0).sum())}}
      elif MODE == "kernel":
        p = np.random.default_rng(d).normal(size=(8 * 16, 5)).astype(np.float32)
        for form in FORMS:
          for block in BLOCKS:  # 4: several edge chunks per ring step; None: one
            def product(ring):
              def fn(f, g, p):
                km = graphs.batch_kernel_matmul(f, g, k=8, alpha=0.3, n_neighbors=(4, 2),
                                                block_size=block, form=form,
                                                axis_name="data", ring=ring)
                return km(p if ring else jax.lax.all_gather(p, "data", tiled=True))
              return smap(fn, P("data"))(batch["graph_features"], batch["image_grids"], p)
            out[f"{{d}}_{{form}}_{{block}}"] = rel(product(True), product(False))
      else:
        state = step_lib.init_state(config, batch["psi_inputs"].shape[-1]).replace(
            step=jnp.asarray(3, jnp.int32))
        for form in FORMS:
          config.graph.form = form
          results = {{}}
          for global_form in ("gather", "ring"):
            config.graph.global_form = global_form
            if MODE == "loss":
              fn = step_lib.make_loss_and_grad(config, axis_name="data")
              results[global_form] = jax.jit(jax.shard_map(
                  fn, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P(), P())))(
                      state, batch)
            elif MODE == "pmap":
              fn = step_lib.make_loss_and_grad(config, axis_name="data", sum_grads=True)
              split = {{key: v.reshape(d, -1, *v.shape[1:]) for key, v in batch.items()}}
              results[global_form] = jax.pmap(fn, axis_name="data", in_axes=(None, 0),
                                              devices=jax.devices()[:d])(state, split)
            else:
              new, metrics = step_lib.make_train_step(config, mesh)(state, batch)
              results[global_form] = (new.params, metrics)
          out[f"{{d}}_{{form}}"] = rel(results["ring"], results["gather"])
          # The ring really ran: its loss program sends blocks and gathers nothing.
          text = jax.jit(jax.shard_map(
              step_lib.make_loss_and_grad(config, axis_name="data"), mesh=mesh,
              in_specs=(P(), P("data")), out_specs=(P(), P(), P()))).lower(
                  state, batch).as_text()
          out[f"{{d}}_{{form}}_ring_ops"] = ["collective_permute" in text,
                                            "all_gather" in text]
          if MODE != "step":
            out[f"{{d}}_{{form}}_grad_norm"] = norm(results["gather"][2])
    print(json.dumps(out))
""")

def _run(run_on_cpu_devices, mode: str, devices=(2, 4, 8), forms=("dense", "knn"),
         blocks=(4,)) -> dict:
  script = _SCRIPT.format(mode=mode, devices=tuple(devices), forms=tuple(forms),
                          blocks=tuple(blocks))
  return run_on_cpu_devices(script, 8)


def test_ring_topk_rows_equal_gathered_ones_ties_included(run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "topk")
  assert set(out) == {f"{d}_{k}" for d in (2, 4, 8) for k in (127, 5)}
  for name, row in out.items():
    assert row["same_indices"], name
    assert row["values"] < 1e-6, (name, row)
  assert all(out[f"{d}_127"]["zeros"] > 1000 for d in (2, 4, 8))  # ties were exercised


def test_ring_kernel_products_equal_gathered_ones_on_8_devices(run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "kernel", devices=(8,))
  assert set(out) == {"8_dense_4", "8_knn_4"}
  assert max(out.values()) < 1e-5, out


@pytest.mark.slow  # ~30 s of compiles on the 2-core CPU
def test_ring_kernel_products_equal_gathered_ones_on_2_and_4_devices(run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "kernel", devices=(2, 4), blocks=(4, None))
  assert set(out) == {f"{d}_{f}_{b}" for d in (2, 4) for f in ("dense", "knn")
                      for b in (4, None)}
  assert max(out.values()) < 1e-5, out


def test_ring_loss_and_gradients_equal_gathered_ones_on_8_devices(run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "loss", devices=(8,), forms=("knn",))
  assert out["8_knn"] < 1e-5, out
  assert out["8_knn_grad_norm"] > 0  # the comparison is not between zeros
  assert out["8_knn_ring_ops"] == [True, False]  # ppermutes, no all-gather


@pytest.mark.slow  # ~1.5 min on the 2-core CPU: ten more sharded steps compiled
def test_ring_loss_and_gradients_equal_gathered_ones_both_forms_on_2_4_8_devices(
    run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "loss", devices=(2, 4, 8))
  for d in (2, 4, 8):
    for form in ("dense", "knn"):
      assert out[f"{d}_{form}"] < 1e-5, out
      assert out[f"{d}_{form}_grad_norm"] > 0
      assert out[f"{d}_{form}_ring_ops"] == [True, False]


@pytest.mark.slow  # ~40 s: four pmapped steps compiled
def test_ring_loss_and_gradients_equal_gathered_ones_under_pmap(run_on_cpu_devices):
  out = _run(run_on_cpu_devices, "pmap", devices=(8,))
  for form in ("dense", "knn"):
    assert out[f"8_{form}"] < 1e-5, out
    assert out[f"8_{form}_grad_norm"] > 0
    assert out[f"8_{form}_ring_ops"] == [True, False]


@pytest.mark.slow  # ~1 min: four whole train steps compiled
def test_ring_train_step_equals_gathered_one(run_on_cpu_devices):
  """One whole step (Adam update included) from the ring and the gathering form: parameters
  and metrics equal to float tolerance (parameters relative to their largest entry)."""
  out = _run(run_on_cpu_devices, "step", devices=(8,))
  assert out["8_dense_ring_ops"] == out["8_knn_ring_ops"] == [True, False]
  assert max(out["8_dense"], out["8_knn"]) < 1e-5, out
