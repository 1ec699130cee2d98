"""The NeuralEF train step: state, optimiser, loss and its data-parallel form.

One step (SPEC §2, §5; Deng & Luo eq. (4)-(7)) on a global batch of B crops with N patches:

1. the batch kernel ``G = G₁ + α·G₂`` over all B·N tokens: G₁ from the top-k cosine graph of the
   high-level features (edges across images), G₂ from the per-image pixel graph;
2. ``logits = ψ(psi_inputs)``; a soft Gumbel-softmax sample at temperature τ(step) (cosine
   from τ_max to τ_min); L2 batch normalisation of the K columns over all B·N tokens;
3. ``neuralef_loss`` and its gradient; an Adam update with a cosine learning-rate decay.

Data parallelism: `make_train_step(config, mesh)` builds the step with ``jax.shard_map`` over a
1-D ``Mesh`` (axis ``'data'``): each device holds B/D crops and the replicated state. The feature
graph is over the **global** batch: the graph features are all-gathered and each device computes
its own rows of G₁ (``graphs.batch_kernel_matmul``: ``graphs.topk_cosine_rows`` with
``row_offset = axis_index·m``, degrees ``psum``-ed by ``graphs.knn_degrees``); the pixel graph is
block-diagonal, so each device builds its own images' blocks. The loss all-gathers ψ for the kernel's columns and ``psum``s ψᵀGψ.
With ``graph.global_form = "ring"`` neither the features nor ψ are gathered: their blocks go
around the device ring (``batch_kernel_matmul(ring=True)``), same step to float tolerance.
shard_map already sums the gradients of the replicated parameters over devices, so
none is ``pmean``-ed. `make_loss_and_grad(config, axis_name=...)` is the same computation as a
plain function, which also composes under ``jax.pmap`` (where the gradients are ``psum``-ed).

Kernel scope (``config.graph.scope``; ``neuralef.config`` says what each estimates and costs):
the above is ``"global"``. ``"device"``: the kernel, the column norms and R are over this
device's crops only (no collective in the kernel or the loss), and the loss, its terms and the
eigenvalues are ``pmean``-ed over ``'data'`` and the gradients (summed by shard_map) divided
by D: the mean of D independent single-device steps' gradients, the reference's data
parallelism. ``"group"``: the step runs over a 2-D mesh (`GROUP_AXES`, ``(D/g, g)``, the same
devices in the same order, `scope_mesh`); the kernel and the loss's sums are over
``'member'`` (g consecutive devices) and the results averaged over ``'group'`` as for
``"device"``. The batch stays sharded over the 1-D ``'data'`` mesh (the same rows per device),
so data loading, resumption and the data order do not depend on the scope.
`device_batch`, `replicate` and `process_rows` place a batch and the state on the mesh (each
process feeding only its own rows of the global batch).

Randomness is a function of the state: step s uses the key ``fold_in(state.rng, s)`` and image b
of the global batch draws its Gumbel noise from ``fold_in(that key, b)`` (so every device, and a
single device on the same global batch, draws the same noise for the same image). Labels never
enter a step: only `BATCH_KEYS` reach the compiled function (SPEC §5, the reference's label leak).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_jax import backbones
from spectral_jax import graphs
from spectral_jax.neuralef import features
from spectral_jax.neuralef.config import KERNEL_SCOPES
from spectral_jax.neuralef import loss as loss_lib
from spectral_jax.neuralef import objectives
from spectral_jax.neuralef import psi as psi_lib
from spectral_jax.neuralef.checkpoint import config_json
from spectral_jax.neuralef.checkpoint import training_fields


AXIS = "data"
# graph.scope = "group": the step's 2-D mesh, (D/g groups) × (g consecutive devices per group).
GROUP_AXES = ("group", "member")
BATCH_KEYS = ("psi_inputs", "graph_features", "image_grids")
IMAGE_KEY = "images"  # the batch entry of `make_image_train_step` (crops; the backbone runs inside)


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to continue exactly where it stopped.

  Attributes:
    step: int32 scalar, number of updates done.
    params: ψ's parameters.
    opt_state: Adam's state.
    rng: (2,) uint32 raw key data of the run's base key (step keys are folded from it).
    eig: EMA of the eigenvalue estimates ``diag(R)/t`` (K,) (``loss.EMAState``).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  eig: loss_lib.EMAState


# ----------------------------------------------------------------------------- pieces


def psi_module(config: ml_collections.ConfigDict) -> psi_lib.Psi:
  """ψ built from ``config.psi`` (fields of ``psi.psi_config()``)."""
  return psi_lib.Psi(**config.psi.to_dict())


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with a per-step cosine decay from ``learning_rate`` to ``final_learning_rate`` over
  ``train.num_steps`` steps; no weight decay, no warm-up (SPEC §5)."""
  return optax.adam(learning_rate_schedule(config))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  lr, final = config.optim.learning_rate, config.optim.final_learning_rate
  return optax.cosine_decay_schedule(lr, int(config.train.num_steps), alpha=final / lr)


def init_state(config: ml_collections.ConfigDict, input_dim: int) -> TrainState:
  """A fresh `TrainState` for ψ inputs of ``input_dim`` features, seeded by ``config.seed``."""
  init_key, run_key = jax.random.split(jax.random.key(int(config.seed)))
  params = psi_module(config).init(init_key, jnp.zeros((1, 4, input_dim), jnp.float32))["params"]
  opt_state = make_optimizer(config).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    rng=jax.random.key_data(run_key), eig=loss_lib.ema_init(config.psi.k))


def per_image_gumbel_softmax(key: jax.Array, logits: jax.Array, tau: jax.Array,
                             image_offset: int | jax.Array = 0) -> jax.Array:
  """Soft Gumbel-softmax of (b, N, K) logits; image i draws from ``fold_in(key, offset + i)``.

  Keyed by the image's position in the *global* batch, so a device holding images
  ``offset … offset + b − 1`` draws exactly the noise a single device would for them.
  """
  ids = image_offset + jnp.arange(logits.shape[0])
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
  return jax.vmap(lambda kk, x: loss_lib.gumbel_softmax(kk, x, tau))(keys, logits)


def make_loss_and_grad(config: ml_collections.ConfigDict, *,
                       axis_name: str | tuple[str, str] | None = None,
                       sum_grads: bool = False) -> Callable:
  """``fn(state, batch) -> (loss, aux, grads)`` of one training step (no update).

  The plain computation of a step on this device's part of the batch (steps 1-3 of the module
  docstring). With ``axis_name`` it must run inside ``shard_map`` or ``pmap`` over that axis; the
  loss and aux are then those of the global batch (``graph.scope`` "global"), or the mean over
  the kernels of each device / group of the per-kernel losses (`scope_axes`), and the gradients
  that mean's. ``sum_grads=True`` ``psum``s the gradients (needed under ``pmap``; under
  ``shard_map`` they are already summed, see the module docstring).

  ``loss.objective`` "segmentor" (the reference) is steps 2-3: Gumbel-softmax, L2 batch
  normalisation, ``neuralef_loss`` with the config's β and t; any other name of
  ``objectives.OBJECTIVES`` takes ψ's raw logits (B·N, K) with its own defaults.

  Args:
    config: the training config (``psi``, ``graph``, ``loss``, ``train.num_steps``), checked by
      the caller (``neuralef.config.check``).
    axis_name: the batch axis, or None for one device; for ``graph.scope`` "group" the pair
      (group axis, member axis) of a 2-D mesh (`GROUP_AXES`, `scope_mesh`).
    sum_grads: ``psum`` the gradients over ``axis_name``.
  Returns:
    A function of (``TrainState``, batch dict with `BATCH_KEYS`; other keys are ignored).
    ``aux`` has ``loss_eig``, ``loss_orth``, ``eigenvalues`` (K,), ``tau``.
  """
  psi = psi_module(config)
  g, lc = config.graph, config.loss
  beta = loss_lib.beta_for(config.psi.k, lc.beta_times_k)
  name = lc.get("objective", "segmentor")
  other_objective = None if name == "segmentor" else objectives.OBJECTIVES[name]
  tau_fn = loss_lib.tau_schedule(int(config.train.num_steps), lc.tau_max, lc.tau_min)
  kernel_axis, mean_axis = scope_axes(g.get("scope", "global"), axis_name)
  kernel_args = dict(k=int(g.k), alpha=float(g.alpha), n_neighbors=tuple(g.n_neighbors),
                     distance_weights=tuple(g.distance_weights), block_size=g.block_size,
                     form=g.form, axis_name=kernel_axis,
                     ring=kernel_axis is not None and g.get("global_form", "gather") == "ring")

  def loss_and_grad(state: TrainState, batch: dict[str, jax.Array]):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    tau = tau_fn(state.step)
    b = batch["psi_inputs"].shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
    kernel = graphs.batch_kernel_matmul(batch["graph_features"], batch["image_grids"], **kernel_args)

    def objective(params):
      logits, _ = psi.apply({"params": params}, batch["psi_inputs"])
      if other_objective is not None:  # ψ's raw outputs, the objective's own defaults
        return other_objective(logits.reshape(-1, logits.shape[-1]), kernel,
                               axis_name=kernel_axis)
      soft = per_image_gumbel_softmax(step_key, logits, tau, offset)
      normed = loss_lib.l2_batch_normalize(soft, axis_name=kernel_axis)
      return loss_lib.neuralef_loss(normed.reshape(-1, normed.shape[-1]), kernel, beta,
                                    t=lc.t, axis_name=kernel_axis)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    if sum_grads:
      grads = jax.lax.psum(grads, axis_name)
    aux = {"loss_eig": aux["loss_eig"], "loss_orth": aux["loss_orth"],
           "eigenvalues": aux["eigenvalues"]}
    if mean_axis is not None:  # one loss per kernel: their mean, and the gradients' mean
      loss, aux = jax.lax.pmean((loss, aux), mean_axis)
      grads = jax.tree.map(lambda x: x / jax.lax.axis_size(mean_axis), grads)
    return loss, {**aux, "tau": tau}, grads

  return loss_and_grad


def scope_axes(scope: str, axis_name) -> tuple[Any, Any]:
  """``(kernel axis, mean axis)`` of a kernel scope for a step mapped over ``axis_name``.

  The kernel and the loss's batch sums run over the kernel axis (None: this device alone);
  losses and gradients are averaged over the mean axis (None: the loss is already one).
  ``"global"``: (axis_name, None); ``"device"``: (None, axis_name); ``"group"``: axis_name is
  ``(outer, inner)`` (`GROUP_AXES`), giving (inner, outer). Without an axis: (None, None).

  Raises:
    ValueError: an unknown scope, or ``"group"`` without a 2-axis ``axis_name``.
  """
  if scope not in KERNEL_SCOPES:
    raise ValueError(f"graph.scope must be one of {KERNEL_SCOPES}; got {scope!r}")
  if axis_name is None:
    return None, None
  if scope == "global":
    return axis_name, None
  if scope == "device":
    return None, axis_name
  if not (isinstance(axis_name, tuple) and len(axis_name) == 2):
    raise ValueError(f"graph.scope = 'group' needs axis_name = (group axis, member axis), e.g. "
                     f"{GROUP_AXES} of step.scope_mesh; got {axis_name!r}")
  return axis_name[1], axis_name[0]


def scope_mesh(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Mesh, Any]:
  """The mesh and batch axis the step of ``config.graph.scope`` is mapped over.

  ``"device"`` and ``"global"``: ``mesh`` itself and `AXIS`. ``"group"``: the same devices, in
  ``mesh``'s order, as a (D/g, g) mesh with axes `GROUP_AXES` (g = ``graph.group_size``), and
  the batch axis `GROUP_AXES`: device i holds the same rows of the batch as on ``mesh``.

  Raises:
    ValueError: ``graph.group_size`` does not divide the mesh's devices.
  """
  g = config.graph
  if g.get("scope", "global") != "group":
    return mesh, AXIS
  size, devices = int(g.group_size), np.asarray(mesh.devices).reshape(-1)
  if size < 1 or devices.size % size:
    raise ValueError(f"graph.group_size = {g.group_size} must divide the {devices.size} devices")
  grouped = Mesh(devices.reshape(devices.size // size, size), GROUP_AXES,
                 axis_types=(jax.sharding.AxisType.Auto,) * 2)
  return grouped, GROUP_AXES


def _apply_update(config, tx, state: TrainState, loss, aux, grads):
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  eig = loss_lib.ema_update(state.eig, aux["eigenvalues"], config.loss.eig_momentum)
  metrics = {"loss": loss, "loss_eig": aux["loss_eig"], "loss_orth": aux["loss_orth"],
             "tau": aux["tau"], "learning_rate": learning_rate_schedule(config)(state.step),
             "grad_norm": optax.tree.norm(grads), "eigenvalues": aux["eigenvalues"]}
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, eig=eig)
  return new, metrics


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices of all processes).

  ``jax.make_mesh`` with an Auto axis type: shard_map's ``P('data')`` specs then take
  unsharded inputs too (the Explicit default would require them sharded already)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


_STEP_CACHE: dict[Any, Callable] = {}


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Callable:
  """The jitted step ``(state, batch) -> (state, metrics)``.

  Steps are cached by (config outside `RUNTIME_FIELDS`, mesh), so a resumed or repeated run in
  the same process reuses the compiled step.

  Args:
    config: the training config.
    mesh: a 1-D mesh with axis ``'data'``: the step is a ``shard_map`` over it (batch arrays
      sharded along their leading axis, state replicated). None: one device, no collectives.
  Returns:
    The step; batch entries other than `BATCH_KEYS` (e.g. labels) are dropped before the
    compiled function. ``metrics``: loss, loss_eig, loss_orth, tau, learning_rate, grad_norm
    (scalars) and eigenvalues (K,) of this step's batch.
  """
  cache_key = (json.dumps(training_fields(config_json(config)), sort_keys=True), mesh)
  if cache_key not in _STEP_CACHE:
    _STEP_CACHE[cache_key] = _make_train_step(config, mesh)
  return _STEP_CACHE[cache_key]


def _make_train_step(config: ml_collections.ConfigDict, mesh: Mesh | None) -> Callable:
  config = ml_collections.ConfigDict(config.to_dict())  # a private copy: later edits can't leak
  tx = make_optimizer(config)
  mesh, axis = (None, None) if mesh is None else scope_mesh(config, mesh)
  grad_fn = make_loss_and_grad(config, axis_name=axis)

  def local_step(state, batch):
    return _apply_update(config, tx, state, *grad_fn(state, batch))

  if mesh is None:
    compiled = jax.jit(local_step)
  else:
    compiled = jax.jit(jax.shard_map(local_step, mesh=mesh,
                                     in_specs=(P(), {key: P(axis) for key in BATCH_KEYS}),
                                     out_specs=(P(), P())))
  # Only BATCH_KEYS reach the compiled step: anything else in a batch (labels) is dropped here.
  return lambda state, batch: compiled(state, {key: batch[key] for key in BATCH_KEYS})


def make_image_train_step(config: ml_collections.ConfigDict, backbone,
                          mesh: Mesh | None = None) -> Callable:
  """The jitted step ``(state, batch) -> (state, metrics)`` on **images**: the frozen backbone
  runs inside it.

  ``batch["images"]`` (B, S, S, 3) uint8 crops (or floats in [0, 1]) → on each device, for its
  rows: ``features.training_batch`` (the backbone under ``stop_gradient``, in
  ``config.backbone.dtype``, "float32" or "bfloat16"; ψ inputs, graph features and pixel grids
  in float32) → the step of `make_train_step` (kernel, ψ, loss and update in float32). One
  jitted program (with ``backbones.compiler_options()``), a ``shard_map`` over ``mesh``'s
  ``'data'`` axis; the backbone's parameters are an argument, replicated, never updated.

  Args:
    config: the training config (``backbone.dtype`` optional, default "float32").
    backbone: a ``backbones.Backbone``.
    mesh: as for `make_train_step`.
  Returns:
    The step; batch entries other than ``images`` are dropped before the compiled function.
  """
  backbone = features.with_compute_dtype(backbone, str(config.backbone.get("dtype", "float32")))
  key = (json.dumps(training_fields(config_json(config)), sort_keys=True), mesh,
         json.dumps(backbone.config.to_dict(), sort_keys=True, default=list))
  if key not in _STEP_CACHE:
    cfg = ml_collections.ConfigDict(config.to_dict())
    tx = make_optimizer(cfg)
    step_mesh, axis = (None, None) if mesh is None else scope_mesh(cfg, mesh)
    grad_fn = make_loss_and_grad(cfg, axis_name=axis)

    def local_step(state, net, batch):
      feats = features.training_batch(net, batch[IMAGE_KEY])
      return _apply_update(cfg, tx, state, *grad_fn(state, feats))

    options = backbones.compiler_options() or None
    if mesh is None:
      _STEP_CACHE[key] = jax.jit(local_step, compiler_options=options)
    else:
      _STEP_CACHE[key] = jax.jit(
          jax.shard_map(local_step, mesh=step_mesh, in_specs=(P(), P(), {IMAGE_KEY: P(axis)}),
                        out_specs=(P(), P())), compiler_options=options)
  compiled = _STEP_CACHE[key]
  net = replicate(backbone, mesh)
  return lambda state, batch: compiled(state, net, {IMAGE_KEY: batch[IMAGE_KEY]})


# ----------------------------------------------------------------------------- placement


def process_rows(global_batch: int, sharding: NamedSharding) -> slice:
  """The rows of a (global_batch, …) array that this process's devices hold under
  ``sharding``: the process-local part of the batch to load (multi-host data loading).

  Raises:
    ValueError: the local rows are not one contiguous block (reorder the mesh's devices).
  """
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  rows = sorted({(idx[0].start or 0, global_batch if idx[0].stop is None else idx[0].stop)
                 for idx in index_map.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:
    raise ValueError(f"this process's devices hold rows {rows} of the batch, not one block; "
                     "build the mesh with each process's devices next to each other")
  return slice(start, stop)


def device_batch(host_batch_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
                 indices: np.ndarray, mesh: Mesh | None) -> dict[str, jax.Array]:
  """The global batch of ``indices`` as arrays sharded along 'data'; each process loads only its
  own rows (``host_batch_fn(indices[rows])``)."""
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in host_batch_fn(indices).items()}
  sharding = NamedSharding(mesh, P(AXIS))
  rows = process_rows(len(indices), sharding)
  local = host_batch_fn(indices[rows])
  return {k: jax.make_array_from_process_local_data(sharding, v, (len(indices), *v.shape[1:]))
          for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """Puts a host-identical pytree on every device of ``mesh`` (all processes)."""
  if mesh is None:
    return tree
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


__all__ = [
    "AXIS", "BATCH_KEYS", "GROUP_AXES", "IMAGE_KEY", "TrainState", "data_mesh", "device_batch",
    "init_state", "learning_rate_schedule", "make_image_train_step", "make_loss_and_grad",
    "make_optimizer", "make_train_step", "per_image_gumbel_softmax", "process_rows", "psi_module",
    "replicate", "scope_axes", "scope_mesh",
]
