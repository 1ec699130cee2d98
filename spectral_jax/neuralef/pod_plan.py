"""Pod plan from compiled programs: what one sharded NeuralEF train step costs each device.

`plan_step` lowers and compiles the data-parallel train step for a mesh with **abstract
inputs** (``jax.ShapeDtypeStruct`` with shardings: no buffer is allocated, so a 1024-image batch
compiles on a laptop) and reads from XLA:

- ``compiled.cost_analysis()``: FLOPs and bytes accessed of the per-device (SPMD) program;
- ``compiled.memory_analysis()``: argument, output, temp (working set) and generated-code
  bytes per device; peak = argument + output + temp (an upper bound: XLA may alias outputs
  with donated arguments, none are donated here);
- the compiled HLO text: every collective (`collectives`), its result and operand shapes,
  replica groups and the source line it came from, so each is named: the all-gather of the
  graph features for the kernel, the ψ all-gather and the ``psum`` of R in the loss, the
  degree and column-norm ``psum``s, and the gradient reduction that ``shard_map`` inserts for
  the replicated parameters.

Bytes moved per device use the ring model of each collective over a group of D devices (the
per-device traffic of bandwidth-optimal algorithms): all-gather ``(D−1)/D · result``,
reduce-scatter ``(D−1)/D · operand``, all-reduce ``2(D−1)/D · operand``, all-to-all
``(D−1)/D · operand``, collective-permute ``operand``. A collective inside loops (``while``
bodies, e.g. the ring form's ``ppermute``s) counts once per iteration: its ``trips`` are the
product of the enclosing loops' known trip counts (`loop_trips`; 1 where XLA states none).

Every kernel scope (``graph.scope``: device / group / global, ``neuralef.config``) plans the
same way: the step builds its own mesh for the scope (``step.scope_mesh``), the batch stays
sharded over the 1-D mesh given here. `similarity_flops_left_out` adds back the blockwise
top-k similarity that XLA's cost analysis counts once per loop, and `project_step_seconds`
turns FLOPs and bytes into a step time under stated rates (`DEFAULT_TFLOPS`,
`DEFAULT_LINK_GBPS`).

The step is built by a ``step_builder(config, mesh)`` returning the step as a callable
``(state, batch) -> (state, metrics)`` (default ``neuralef.step.make_train_step``); any builder
with that signature (e.g. one with the backbone inside the step, taking images) plugs in, with
its batch described by ``batch_shapes``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax.neuralef import step as step_lib

COLLECTIVE_OPS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                  "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|bf16|[subfc]\d+)\[([0-9,]*)\]")
# "%name = SHAPE opcode(OPERANDS), attributes"; SHAPE may be a tuple "(f32[2]{0}, f32[3]{0})".
_OPERAND = re.compile(r"((?:pred|bf16|[subfc]\d+)\[[0-9,]*\](?:\{[^}]*\})?)?\s*%([\w.\-]+)")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
# Projection assumptions of `project_step_seconds` (stated, not measured: no pod here): a
# device's sustained FLOP rate (an H100's dense bf16 is ~1000 TFLOP/s peak, float32 ~60; ~100 is
# a mixed-precision step's sustained rate) and the bytes per second each device sends in a
# collective (~100 GB/s: an inter-node GPU link or a TPU ICI link; NVLink within a node is ~4×).
DEFAULT_TFLOPS = 100.0
DEFAULT_LINK_GBPS = 100.0
@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of a compiled HLO module (per device).

  Attributes:
    op: "all-gather", "all-reduce", "reduce-scatter", "all-to-all" or "collective-permute".
    name: the HLO instruction name.
    result_bytes: bytes of the result (all tuple elements).
    operand_bytes: bytes of the operands.
    group_size: devices per replica group (D), 1 if not stated.
    source: "file:line" of the JAX code that emitted it ("" if the HLO has no metadata).
    op_name: the JAX op path from the metadata.
    result_shapes: the result's array shapes (one per tuple element).
    trips: executions per step (the enclosing loops' trip counts multiplied; 1 outside loops).
  """
  op: str
  name: str
  result_bytes: int
  operand_bytes: int
  group_size: int
  source: str
  op_name: str
  result_shapes: tuple[tuple[int, ...], ...] = ()
  trips: int = 1

  @property
  def moved_bytes(self) -> float:
    """Bytes each device sends per step under the ring model (module docstring), from the
    result size (an all-reduce's result equals its operand; a reduce-scatter's operand is D
    results), times ``trips``."""
    d, r = self.group_size, self.result_bytes
    if d <= 1:
      return 0.0
    frac = (d - 1) / d
    return self.trips * {"all-gather": frac * r, "reduce-scatter": (d - 1) * r,
                         "all-reduce": 2 * frac * r, "all-to-all": frac * r,
                         "collective-permute": float(r)}[self.op]


def _shapes(text: str) -> tuple[tuple[int, ...], ...]:
  return tuple(tuple(int(d) for d in dims.split(",") if d) for _, dims in _SHAPE.findall(text))


def shape_bytes(text: str) -> int:
  """Total bytes of every array shape ``dtype[d0,d1,…]`` in an HLO shape string (tuples sum)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    total += size * _DTYPE_BYTES[dtype]
  return total


def _group_size(attrs: str, default: int) -> int:
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)   # iota form [groups, size]<=[…]
  if m:
    return int(m.group(2))
  # mesh form (newer XLA): replica_groups=mesh['group'=2,'member'=4] {'member'}: the product
  # of the named axes' sizes
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if m:
    sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    return int(np.prod([sizes[name] for name in re.findall(r"'([^']+)'", m.group(2))]))
  m = re.search(r"replica_groups=\{(\{[^}]*\})", attrs)        # explicit {{0,1,…},…}
  if m:
    return len([x for x in m.group(1).strip("{}").split(",") if x.strip()])
  return default


def _operands(rest: str) -> str:
  """The text inside the op's parentheses (``rest`` starts just after the opening one)."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return rest[:i]
  return rest


def _source_table(hlo_text: str) -> Callable[[int], str]:
  """``frame id -> "file:line"`` from the module's FileNames / FileLocations / StackFrames
  tables: the innermost frame in a file of this package (else the innermost frame)."""
  tables: dict[str, dict[int, str]] = {}
  section = None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      tables[section] = {}
    elif section and re.match(r"^\d+ ", line):
      key, value = line.split(" ", 1)
      tables[section][int(key)] = value
    elif not line.strip() or line.startswith(("%", "ENTRY", "HloModule")):
      section = None if line.startswith(("%", "ENTRY")) else section
  files = {i: v.strip('"') for i, v in tables.get("FileNames", {}).items()}
  field = lambda text, name: int(re.search(name + r"=(\d+)", text).group(1))
  locations = {i: (files.get(field(v, "file_name_id"), "?"), field(v, "line"))
               for i, v in tables.get("FileLocations", {}).items()}
  frames = {i: (field(v, "file_location_id"), field(v, "parent_frame_id"))
            for i, v in tables.get("StackFrames", {}).items()}

  def source(frame: int) -> str:
    chain, seen = [], set()
    while frame in frames and frame not in seen:
      seen.add(frame)
      chain.append(locations.get(frames[frame][0], ("?", 0)))
      frame = frames[frame][1]
    if not chain:
      return ""
    ours = [loc for loc in chain if "spectral_jax" in loc[0]]
    name, line = (ours or chain)[0]
    return f"{name.rsplit('/', 1)[-1]}:{line}"
  return source


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_CALLED = re.compile(r"\b(body|calls|to_apply|branch_computations)=\{?([^,}\s]+(?:,\s*%[\w.\-]+)*)")


def loop_trips(hlo_text: str) -> dict[str, int]:
  """``computation name -> executions per run of the entry computation``: the product of the
  known trip counts (``known_trip_count`` in a ``while``'s backend config) of the loops whose
  bodies enclose it (1 for a loop XLA states no count for); computations reached only through
  ``while`` conditions are left out (they hold no collectives)."""
  calls: dict[str, list[tuple[str, int]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and not line.startswith(" "):
      current = head.group(1)
      calls[current] = []
      entry = current if line.startswith("ENTRY") else entry
      continue
    if current is None:
      continue
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
    for kind, names in _CALLED.findall(line):
      factor = int(trip.group(1)) if kind == "body" and trip else 1
      calls[current] += [(name.strip().lstrip("%"), factor) for name in names.split(",")]
  trips: dict[str, int] = {}

  def visit(name: str, mult: int) -> None:
    if trips.get(name, 0) >= mult:
      return
    trips[name] = mult
    for callee, factor in calls.get(name, ()):
      visit(callee, mult * factor)
  if entry is not None:
    visit(entry, 1)
  return trips


def collectives(hlo_text: str, num_devices: int = 1) -> list[Collective]:
  """Every collective instruction of an HLO module's text (``compiled.as_text()``).

  Operand shapes are looked up from the instructions that define them; the source line comes
  from the metadata's ``stack_frame_id`` (or ``source_file``/``source_line``).

  Args:
    hlo_text: the HLO text.
    num_devices: the group size assumed when an instruction names no replica groups.
  Returns:
    `Collective` records in program order (``*-done`` halves of async pairs are skipped, their
    ``*-start`` counted once per execution: ``trips`` from `loop_trips`).
  """
  shapes, found, computation_of = {}, [], {}
  computation = ""
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and not line.startswith(" "):
      computation = head.group(1)
    m = _INSTR.match(line)
    if m:
      computation_of[m.group(1)] = computation
      shapes[m.group(1)] = m.group(2)
      base = m.group(3)[:-len("-start")] if m.group(3).endswith("-start") else m.group(3)
      if base in COLLECTIVE_OPS:
        found.append((m.group(1), m.group(2), base, m.group(3) != base, m.group(4)))
  source_of = _source_table(hlo_text)
  trips = loop_trips(hlo_text)
  out = []
  for name, result, op, is_async, rest in found:
    operands = _operands(rest)
    attrs = rest[len(operands):]
    # Operands are "%name" or "SHAPE %name" (inline-typed); untyped ones are looked up.
    operand_bytes = sum(shape_bytes(typed) if typed else shape_bytes(shapes.get(ref, ""))
                        for typed, ref in _OPERAND.findall(operands))
    result_bytes = shape_bytes(result)
    if is_async and result.startswith("("):  # start ops return (operands, results[, …])
      result_bytes -= operand_bytes
    frame = re.search(r"stack_frame_id=(\d+)", attrs)
    file_line = re.search(r'source_file="([^"]*)"\s+source_line=(\d+)', attrs)
    if frame:
      source = source_of(int(frame.group(1)))
    elif file_line:
      source = f"{file_line.group(1).rsplit('/', 1)[-1]}:{file_line.group(2)}"
    else:
      source = ""
    op_name = re.search(r'op_name="([^"]*)"', attrs)
    out.append(Collective(op=op, name=name, result_bytes=result_bytes,
                          operand_bytes=operand_bytes,
                          group_size=_group_size(attrs, num_devices), source=source,
                          op_name=op_name.group(1) if op_name else "",
                          result_shapes=_shapes(result),
                          trips=trips.get(computation_of.get(name, ""), 1)))
  return out


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {"flops": float(cost.get("flops", np.nan)),
          "bytes_accessed": float(cost.get("bytes accessed", np.nan))}


def _memory(compiled) -> dict[str, int]:
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  out = {name: int(getattr(mem, f"{name}_size_in_bytes")) for name in
         ("argument", "output", "temp", "generated_code")}
  out["peak"] = out["argument"] + out["output"] + out["temp"]
  return out


def train_batch_shapes(config, *, patch_size: int = 14, psi_dim: int = 1152,
                       graph_dim: int = 384) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Global shapes and dtypes of the feature-cache train step's batch (``step.BATCH_KEYS``):
  (B, N, psi_dim) ψ inputs, (B, N, graph_dim) graph features, (B, h, w, 3) RGB grids, with
  B = ``train.batch_size`` and h = w = ``data.image_size // patch_size``."""
  b, side = int(config.train.batch_size), int(config.data.image_size) // int(patch_size)
  n = side * side
  return {"psi_inputs": ((b, n, psi_dim), jnp.float32),
          "graph_features": ((b, n, graph_dim), jnp.float32),
          "image_grids": ((b, side, side, 3), jnp.float32)}


def _default_builder(config, mesh):
  return step_lib.make_train_step(config, mesh)


def _default_state(config, batch_shapes):
  return jax.eval_shape(lambda: step_lib.init_state(config, batch_shapes["psi_inputs"][0][-1]))


def plan_step(config, mesh, *, step_builder: Callable | None = None,
              batch_shapes: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
              state_shapes: Any = None) -> dict[str, Any]:
  """Compiles one sharded train step with abstract inputs and reports its per-device costs.

  Args:
    config: the training config (its ``train.batch_size`` is the global batch).
    mesh: a 1-D ``'data'`` mesh (``step.data_mesh``); its size must divide the batch.
    step_builder: ``(config, mesh) -> step`` (default ``step.make_train_step``); the step is
      wrapped in ``jax.jit`` here, so a builder may return a jitted or a plain function.
    batch_shapes: key → (global shape, dtype) of the batch (default `train_batch_shapes`),
      sharded along its leading axis over ``'data'``.
    state_shapes: the abstract state (default ``jax.eval_shape`` of ``step.init_state``),
      replicated.
  Returns:
    A dict: ``devices``, ``batch``, ``compile_seconds``, ``flops`` and ``bytes_accessed`` (per
    device), ``memory`` (bytes: argument, output, temp, generated_code, peak), ``collectives``
    (`Collective` list) and ``collective_bytes`` (ring-model bytes sent per device per step).
  """
  batch_shapes = dict(batch_shapes or train_batch_shapes(config))
  state_shapes = _default_state(config, batch_shapes) if state_shapes is None else state_shapes
  builder = step_builder or _default_builder
  step = builder(config, mesh)
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names[0]))
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                       state_shapes)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=split)
           for k, (shape, dtype) in batch_shapes.items()}
  start = time.perf_counter()
  compiled = jax.jit(lambda s, b: step(s, b)).lower(state, batch).compile()
  seconds = time.perf_counter() - start
  found = collectives(compiled.as_text(), mesh.size)
  return {"devices": int(mesh.size), "batch": int(next(iter(batch_shapes.values()))[0][0]),
          "compile_seconds": seconds, **_cost(compiled), "memory": _memory(compiled),
          "collectives": found, "collective_bytes": float(sum(c.moved_bytes for c in found))}


def similarity_flops_left_out(rows: int, keys: int, dim: int, block_size: int | None) -> float:
  """FLOPs of the blockwise top-k similarity that XLA's cost analysis leaves out.

  ``topk_cosine_rows`` forms ``rows`` × ``keys`` cosine similarities of ``dim`` features
  (2·rows·keys·dim FLOPs) ``block_size`` rows at a time: ``lax.map`` runs ``rows // block``
  full blocks in a loop, whose body XLA counts once, and the remainder outside it. So
  ``(rows // block − 1)·block`` rows are missing from its count when the loop runs at all.

  Args:
    rows: this device's query tokens m.
    keys: the kernel's tokens n (the scope's: m, g·m or the global batch).
    dim: graph feature size C.
    block_size: query rows per block (None: one block, nothing left out).
  Returns:
    The FLOPs to add to ``cost_analysis()``'s.
  """
  if block_size is None or rows // int(block_size) < 2:
    return 0.0
  return 2.0 * (rows // int(block_size) - 1) * int(block_size) * keys * dim


def project_step_seconds(flops: float, moved_bytes: float, *, tflops: float = DEFAULT_TFLOPS,
                         link_gbps: float = DEFAULT_LINK_GBPS) -> dict[str, float]:
  """A step's time per device from its FLOPs and the bytes it sends, at stated rates.

  Args:
    flops: FLOPs per device per step.
    moved_bytes: bytes each device sends per step (ring model, `Collective.moved_bytes`).
    tflops: sustained FLOP rate, 10¹² FLOP/s (`DEFAULT_TFLOPS`).
    link_gbps: bytes per second a device sends in a collective, 10⁹ B/s (`DEFAULT_LINK_GBPS`).
  Returns:
    ``compute_s``, ``comm_s``, ``serial_s`` (no overlap: their sum) and ``overlap_s`` (perfect
    overlap: their maximum); the true time lies between the last two.
  """
  compute, comm = flops / (tflops * 1e12), moved_bytes / (link_gbps * 1e9)
  return {"compute_s": compute, "comm_s": comm, "serial_s": compute + comm,
          "overlap_s": max(compute, comm)}


def name_collective(c: Collective, *, feature_dim: int = 384, k: int = 256) -> str:
  """A readable role for a collective of the NeuralEF step, from its source line and shapes.

  "feature all-gather" (the (n, C) graph features for the kernel's top-k), "edge all-gather"
  (the (n, k) top-k values/indices the dense kernel rows are built from), "ψ all-gather" (the
  loss's (n, K) columns), "kNN reduce-scatter" (the knn form's Aᵀq), "R psum" (an all-reduce
  holding the (K, K) R; XLA may combine it with others), "degree/norm psum" (kernel degrees,
  ψ's column norms), "metric mean" (the device and group scopes' ``pmean`` of the loss and
  eigenvalues, in step.py), "gradient reduction" (all-reduces emitted outside the step's own
  files: the parameters' gradients that shard_map sums), "feature ring" (the ring form's
  ``ppermute`` of (m, C) feature blocks for the top-k), "kernel ring" (its other ``ppermute``s:
  ψ blocks, partial sums of Aᵀq, the dense form's neighbour lists), or "other".
  """
  src = c.source
  if c.op == "collective-permute":
    return ("feature ring" if any(s[-1:] == (feature_dim,) for s in c.result_shapes)
            else "kernel ring")
  if c.op == "all-gather":
    if "loss.py" in src:
      return "ψ all-gather"
    return ("feature all-gather" if any(s[-1:] == (feature_dim,) for s in c.result_shapes)
            else "edge all-gather")
  if c.op == "reduce-scatter":
    return "kNN reduce-scatter"
  if c.op == "all-reduce":
    if (k, k) in c.result_shapes:
      return "R psum"
    if "step.py" in src:
      return "metric mean"
    if any(f in src for f in ("loss.py", "knn.py", "kernel.py", "affinity.py")):
      return "degree/norm psum"
    return "gradient reduction"
  return "other"


def summarise_collectives(found: Sequence[Collective], **names) -> dict[str, dict[str, float]]:
  """Per role (`name_collective`): count, result bytes and ring-model bytes moved, per device."""
  out: dict[str, dict[str, float]] = {}
  for c in found:
    row = out.setdefault(name_collective(c, **names), {"count": 0, "result_bytes": 0.0,
                                                       "moved_bytes": 0.0})
    row["count"] += 1
    row["result_bytes"] += c.result_bytes
    row["moved_bytes"] += c.moved_bytes
  return out


__all__ = [
    "COLLECTIVE_OPS", "DEFAULT_LINK_GBPS", "DEFAULT_TFLOPS", "Collective", "collectives",
    "loop_trips", "name_collective", "plan_step", "project_step_seconds", "shape_bytes",
    "similarity_flops_left_out", "summarise_collectives", "train_batch_shapes",
]
