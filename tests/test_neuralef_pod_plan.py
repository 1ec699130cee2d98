"""Tests for spectral_jax.neuralef.pod_plan: collectives parsed from compiled HLO.

References: closed-form sizes of a hand-made shard_map program (an all-gather of a known block
and a psum of a known matrix) compiled for 4 fake CPU devices in a subprocess, and a
hand-written HLO excerpt.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from spectral_jax.neuralef import pod_plan

REPO = pathlib.Path(__file__).resolve().parents[1]

HLO = textwrap.dedent("""\
    HloModule jit_f, num_partitions=4

    ENTRY %main (param.1: f32[4,3]) -> (f32[3,3], f32[16,3]) {
      %param.1 = f32[4,3]{1,0} parameter(0), sharding={devices=[4,1]<=[4]}
      %dot.3 = f32[3,3]{1,0} dot(%param.1, %param.1), lhs_contracting_dims={0}
      %all_gather.3 = f32[16,3]{1,0} all-gather(%param.1), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
      %psum.7 = f32[3,3]{1,0} all-reduce(%dot.3), channel_id=2, replica_groups=[1,4]<=[4], to_apply=%add
      %ags = (bf16[4,3]{1,0}, bf16[16,3]{1,0}) all-gather-start(bf16[4,3]{1,0} %x), replica_groups={{0,1,2,3}}
      %agd = bf16[16,3]{1,0} all-gather-done(%ags)
      ROOT %t = (f32[3,3]{1,0}, f32[16,3]{1,0}) tuple(%psum.7, %all_gather.3)
    }
""")


def test_collectives_of_a_hand_written_module():
  found = pod_plan.collectives(HLO, num_devices=4)
  assert [c.op for c in found] == ["all-gather", "all-reduce", "all-gather"]
  gather, psum, async_gather = found
  assert (gather.result_bytes, gather.operand_bytes, gather.group_size) == (16 * 3 * 4, 4 * 3 * 4, 4)
  assert gather.moved_bytes == pytest.approx(3 / 4 * 16 * 3 * 4)
  assert (psum.result_bytes, psum.operand_bytes, psum.group_size) == (36, 36, 4)
  assert psum.moved_bytes == pytest.approx(2 * 3 / 4 * 36)
  # the async pair is counted once, its start's tuple result less the operand
  assert async_gather.result_bytes == 16 * 3 * 2 and async_gather.result_shapes[-1] == (16, 3)
  assert pod_plan.shape_bytes("(f32[2,3]{1,0}, s32[5]{0}, pred[])") == 24 + 20 + 1


_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from spectral_jax.neuralef import pod_plan
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    def f(x):                                          # x: (5, 3) rows per device
      return jax.lax.psum(x.T @ x, "data"), jax.lax.all_gather(x, "data", tiled=True)
    fn = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("data"), out_specs=(P(), P()),
                               check_vma=False))
    x = jax.ShapeDtypeStruct((20, 3), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    found = pod_plan.collectives(fn.lower(x).compile().as_text(), mesh.size)
    print(json.dumps([[c.op, c.result_bytes, c.operand_bytes, c.group_size, c.moved_bytes]
                      for c in found]))
""")


def test_collectives_of_a_compiled_shard_map_program():
  """4 devices, 5 × 3 float32 rows each: the all-gather returns 20 × 3 (240 bytes, each device
  sends 3/4 of it), the psum reduces a 3 × 3 matrix (36 bytes, 2 · 3/4 · 36 sent)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = sorted(json.loads(proc.stdout.strip().splitlines()[-1]))
  assert found == [["all-gather", 240, 60, 4, pytest.approx(180.0)],
                   ["all-reduce", 36, 36, 4, pytest.approx(54.0)]]


LOOP_HLO = textwrap.dedent("""\
    HloModule jit_ring, num_partitions=4

    %inner_body (p.0: (s32[], f32[8,3])) -> (s32[], f32[8,3]) {
      %p.0 = (s32[], f32[8,3]{1,0}) parameter(0)
      %x.1 = f32[8,3]{1,0} get-tuple-element(%p.0), index=1
      %ppermute.1 = f32[8,3]{1,0} collective-permute(%x.1), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
      %i.1 = s32[] get-tuple-element(%p.0), index=0
      ROOT %t.1 = (s32[], f32[8,3]{1,0}) tuple(%i.1, %ppermute.1)
    }

    %inner_cond (p.1: (s32[], f32[8,3])) -> pred[] {
      %p.1 = (s32[], f32[8,3]{1,0}) parameter(0)
      ROOT %c.1 = pred[] constant(true)
    }

    %outer_body (p.2: (s32[], f32[8,3])) -> (s32[], f32[8,3]) {
      %p.2 = (s32[], f32[8,3]{1,0}) parameter(0)
      ROOT %while.1 = (s32[], f32[8,3]{1,0}) while(%p.2), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"3"}}
    }

    ENTRY %main (param.1: f32[8,3]) -> f32[8,3] {
      %param.1 = f32[8,3]{1,0} parameter(0)
      %zero = s32[] constant(0)
      %init = (s32[], f32[8,3]{1,0}) tuple(%zero, %param.1)
      %while.2 = (s32[], f32[8,3]{1,0}) while(%init), condition=%inner_cond, body=%outer_body, backend_config={"known_trip_count":{"n":"2"}}
      %last = f32[8,3]{1,0} get-tuple-element(%while.2), index=1
      ROOT %ppermute.2 = f32[8,3]{1,0} collective-permute(%last), channel_id=2, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
    }
""")


def test_collectives_in_loops_count_once_per_iteration():
  """A collective-permute in a 3-trip loop nested in a 2-trip loop is sent 6 times per step
  (the ring form's ppermutes), the one outside the loops once."""
  assert pod_plan.loop_trips(LOOP_HLO) == {"main": 1, "outer_body": 2, "inner_body": 6}
  inner, outer = pod_plan.collectives(LOOP_HLO, num_devices=4)
  assert (inner.op, inner.trips, outer.trips) == ("collective-permute", 6, 1)
  assert inner.moved_bytes == 6 * 8 * 3 * 4 and outer.moved_bytes == 8 * 3 * 4


def test_similarity_flops_left_out_is_the_loop_body_counted_once():
  """lax.map over 4 full blocks of 1024 rows: XLA counts one block, so 3 blocks' 2·rows·n·C
  are added; one full block (or none) runs outside any loop and nothing is added."""
  assert pod_plan.similarity_flops_left_out(4096, 8192, 64, 1024) == 2 * 3 * 1024 * 8192 * 64
  assert pod_plan.similarity_flops_left_out(4500, 10, 3, 1000) == 2 * 3 * 1000 * 10 * 3
  assert pod_plan.similarity_flops_left_out(1500, 8192, 64, 1024) == 0
  assert pod_plan.similarity_flops_left_out(4096, 8192, 64, None) == 0


def test_projected_step_time_at_stated_rates():
  """1 TFLOP at 100 TFLOP/s is 10 ms; 2 GB at 100 GB/s is 20 ms: 30 ms serial, 20 overlapped."""
  t = pod_plan.project_step_seconds(1e12, 2e9, tflops=100, link_gbps=100)
  assert t == pytest.approx({"compute_s": 0.01, "comm_s": 0.02, "serial_s": 0.03,
                             "overlap_s": 0.02})


def test_the_scopes_metric_mean_is_named():
  """The device/group scopes' pmean of the loss (step.py) is not a kernel or loss psum."""
  c = pod_plan.Collective(op="all-reduce", name="ar", result_bytes=4, operand_bytes=4,
                          group_size=8, source="step.py:200", op_name="pmean")
  assert pod_plan.name_collective(c) == "metric mean"
  assert pod_plan.name_collective(dataclasses.replace(c, source="loss.py:90")) == (
      "degree/norm psum")
  assert pod_plan.name_collective(dataclasses.replace(c, source="")) == "gradient reduction"


def test_replica_groups_of_a_sub_axis_in_either_hlo_form():
  """A collective over 'member' of a (2, 4) mesh: 4 devices per group, whether XLA prints the
  groups ({{0,1,2,3},{4,5,6,7}}, jax 0.10) or the mesh form (jax 0.12)."""
  line = ("  %ag = f32[32,3]{1,0} all-gather(f32[8,3]{1,0} %p), channel_id=1, replica_groups=GROUPS, "
          "dimensions={0}, use_global_device_ids=true")
  for groups in ("{{0,1,2,3},{4,5,6,7}}", "mesh['group'=2,'member'=4] {'member'}",
                 "[2,4]<=[8]"):
    hlo = "ENTRY %main {\n" + line.replace("GROUPS", groups) + "\n}"
    (c,) = pod_plan.collectives(hlo, num_devices=8)
    assert c.group_size == 4, groups
    assert c.moved_bytes == pytest.approx(3 / 4 * 32 * 3 * 4)
  both = line.replace("GROUPS", "mesh['group'=2,'member'=4] {'group', 'member'}")
  assert pod_plan.collectives("ENTRY %main {\n" + both + "\n}", 8)[0].group_size == 8
