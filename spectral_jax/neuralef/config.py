"""The NeuralEF training config: its one reader and checker (SPEC §2, §5).

The config (``experiments/configs/neuralef.py``) is checked once, by the caller that received
it (a command, or ``neuralef.train.train`` for a library caller), with `check`; everything below
that takes the typed values `check` returns (a `Checked`), never the config's sections again:

* ``data``: the training input. ``data.dataset`` "" is the feature cache of fixed views of
  ``data.images`` (`fixed_views`: ``transforms.FixedViews``); a dataset name (``pascal_context``,
  ``cityscapes``, ``ade20k`` or ``folder``) is the grain pipeline with fresh augmentation
  (`train_augment`: ``transforms.TrainAugment``, and `pipeline_settings`).
* ``backbone.overrides``: config fields of a random backbone, ``depth=2,width=96`` or a JSON
  object (``_cli.parse_overrides``; the text is stored as given).
* the training sections (`check_training`): batch, optimiser, graph, ψ, loss (its
  ``objective`` one of ``objectives.OBJECTIVES``), checkpoints,
  logging, and the batch's fit to the devices and to the backbone's patch grid.
* ``graph.scope`` (`KERNEL_SCOPES`) and ``graph.group_size``: which tokens one batch kernel
  couples when the step runs on D devices (``neuralef.step``), each a different estimator of
  the same eigenfunctions at a different price:

  - ``"global"`` (default, the behaviour before scopes existed): one kernel over the whole
    global batch (B·N tokens); the loss's sums (column norms, R = ψᵀGψ) are over it too.
    Estimates the eigenfunctions of the largest kernel the batch affords; costs an
    all-gather of the (n, C) graph features and of the (n, K) ψ columns (and the knn form's
    reduce-scatter) per step, O(global tokens) per device whatever D, and a top-k similarity
    of 2·m·n·C FLOPs per device that grows with the global batch.
  - ``"device"``: the reference's semantics (SPEC §9: the kernel over each GPU's own batch):
    every device builds the kernel of its own B/D crops and computes the loss of that kernel
    alone; the per-device gradients are averaged (the data-parallel all-reduce, the only
    collective besides the metrics' mean). Estimates the eigenfunctions of a kernel over B/D
    crops (a noisier, smaller-graph estimator: its neighbours are found among B/D images);
    traffic is the gradient all-reduce only, and the per-device compute stays constant when
    devices are added at a fixed per-device batch.
  - ``"group"``: the kernel over the crops of ``graph.group_size`` = g consecutive devices (an
    all-gather within each group: a sub-axis of the mesh), the loss over that kernel, gradients
    averaged over the D/g groups. g = 1 is ``device``, g = D is ``global``; costs the global
    scope's collectives at the group's size (e.g. the 8 devices of one host, whose links are
    the fast ones).

Every failure is a ValueError naming the field, its value and what it must be.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import ml_collections

from spectral_jax import _cli
from spectral_jax import graphs
from spectral_jax.datasets import pipeline
from spectral_jax.datasets import transforms
from spectral_jax.neuralef.objectives import OBJECTIVES
from spectral_jax.neuralef.psi import HEADS

CACHE_DTYPES = ("float32", "float16")
# ``graph.scope``: the tokens one batch kernel couples (module docstring; ``neuralef.step``).
KERNEL_SCOPES = ("device", "group", "global")
# ``graph.group_size`` default: the devices of one 8-accelerator host (an 8-GPU node's NVLink
# domain), where a group's all-gather stays on the fast links. Not measured (no pod here);
# read only when ``graph.scope`` is "group".
DEFAULT_GROUP_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Checked:
  """A checked training config and the typed values read from it.

  Attributes:
    config: the config as given (stored with checkpoints unchanged).
    augment: the crops: ``transforms.FixedViews`` (feature cache, ``data.dataset`` "") or
      ``transforms.TrainAugment`` (grain pipeline).
    overrides: ``backbone.overrides`` as config fields (None when empty).
  """
  config: ml_collections.ConfigDict
  augment: transforms.FixedViews | transforms.TrainAugment
  overrides: dict[str, Any] | None


def fixed_views(data: ml_collections.ConfigDict) -> transforms.FixedViews:
  """The feature cache's views of a config's ``data`` section (seed 0: part of the cache key)."""
  return transforms.FixedViews(image_size=int(data.image_size),
                               views_per_image=int(data.views_per_image),
                               min_scale=float(data.min_scale), max_scale=float(data.max_scale),
                               flip=bool(data.flip))


def train_augment(data: ml_collections.ConfigDict) -> transforms.TrainAugment:
  """The grain pipeline's augmentation of a config's ``data`` section."""
  return transforms.TrainAugment(
      crop_size=int(data.image_size), scale=tuple(int(s) for s in data.resize_scale),
      ratio_range=tuple(float(r) for r in data.ratio_range),
      cat_max_ratio=float(data.cat_max_ratio), flip_prob=float(data.flip_prob),
      photometric=bool(data.photometric))


def pipeline_settings(data: ml_collections.ConfigDict) -> dict[str, int]:
  """``training_dataset``'s reader settings (``num_threads``, ``prefetch``, ``num_workers``)."""
  return {name: int(data[name]) for name in ("num_threads", "prefetch", "num_workers")}


def check_data(data: ml_collections.ConfigDict):
  """Checks a config's ``data`` section and returns its crops (`fixed_views` for the feature
  cache, `train_augment` for a dataset).

  Raises:
    ValueError: naming the bad field.
  """
  if not data.get("dataset", ""):
    views = fixed_views(data)
    if data.cache_dtype not in CACHE_DTYPES:
      raise ValueError(f"data.cache_dtype must be 'float32' or 'float16'; got "
                       f"{data.cache_dtype!r}")
    if int(data.extract_batch_size) < 1:
      raise ValueError(f"data.extract_batch_size must be ≥ 1; got {data.extract_batch_size}")
    return views
  if data.dataset not in pipeline.TRAIN_DATASETS:
    raise ValueError(f"data.dataset must be one of {', '.join(pipeline.TRAIN_DATASETS)} (or \"\" "
                     f"for the feature cache); got {data.dataset!r}")
  if data.dataset != "folder" and not data.data_dir:
    raise ValueError(f"data.data_dir must name the folder holding {data.dataset}")
  if data.data_dir and not pathlib.Path(data.data_dir).expanduser().is_dir():
    raise ValueError(f"data.data_dir {data.data_dir!r} is not a folder")
  aug = train_augment(data)
  lows = {"num_threads": 1, "prefetch": 0, "num_workers": 0}
  for name, value in pipeline_settings(data).items():
    if value < lows[name]:
      raise ValueError(f"data.{name} must be ≥ {lows[name]}; got {data[name]}")
  return aug


def backbone_overrides(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """``backbone.overrides`` as config fields (``depth=2,width=96`` or a JSON object), or None.

  Raises:
    ValueError: unparsable text, or overrides without ``backbone.weights=random`` or on the
      feature-cache path.
  """
  text = config.backbone.get("overrides", "")
  if not text:
    return None
  overrides = _cli.parse_overrides(text)
  if config.backbone.weights != "random":
    raise ValueError("backbone.overrides needs backbone.weights=random")
  if not config.data.get("dataset", ""):
    raise ValueError("backbone.overrides applies to data.dataset runs only")
  return overrides


def _non_negative(value) -> bool:
  try:
    return math.isfinite(float(value)) and float(value) >= 0
  except (TypeError, ValueError):
    return False


def _positive(value) -> bool:
  try:
    return math.isfinite(float(value)) and float(value) > 0
  except (TypeError, ValueError):
    return False


def check_training(config: ml_collections.ConfigDict, *, patch_size: int | None = None,
                 tokens: int | None = None, devices: int | None = None) -> None:
  """Checks the training sections (train, optim, graph, psi, loss, checkpoint, log).

  Args:
    config: the training config.
    patch_size: the backbone's patch size: also checks the batch's token count
      (``train.batch_size · (data.image_size // patch_size)²``) against ``graph.k`` and
      ``psi.k``.
    tokens: the batch's token count itself (when the features are known).
    devices: the number of devices ``train.batch_size`` is split over.
  Raises:
    ValueError: naming the first bad field, its value and what it must be.
  """
  def need(ok: bool, field: str, rule: str, value: Any) -> None:
    if not ok:
      raise ValueError(f"{field} must be {rule}; got {value!r}")

  t, o, g, lc = config.train, config.optim, config.graph, config.loss
  need(isinstance(config.seed, int) and config.seed >= 0, "seed", "an integer ≥ 0",
       config.seed)
  need(isinstance(config.eval.image_size, int) and config.eval.image_size >= 1,
       "eval.image_size", "an integer ≥ 1 (the evaluation images' short side, px)",
       config.eval.image_size)
  need(int(t.batch_size) >= 1, "train.batch_size", "≥ 1 (images per global batch)",
       t.batch_size)
  need(int(t.num_steps) >= 1, "train.num_steps", "≥ 1", t.num_steps)
  need(_positive(o.learning_rate), "optim.learning_rate", "a finite number > 0",
       o.learning_rate)
  need(_positive(o.final_learning_rate) and o.final_learning_rate <= o.learning_rate,
       "optim.final_learning_rate", f"in (0, optim.learning_rate = {o.learning_rate}]",
       o.final_learning_rate)
  need(g.form in graphs.NEURALEF_KERNEL_FORMS, "graph.form",
       f"one of {graphs.NEURALEF_KERNEL_FORMS}", g.form)
  need(g.get("global_form", "gather") in graphs.NEURALEF_GLOBAL_FORMS, "graph.global_form",
       f"one of {graphs.NEURALEF_GLOBAL_FORMS}", g.get("global_form"))
  need(int(g.k) >= 1, "graph.k", "≥ 1", g.k)
  need(math.isfinite(float(g.alpha)) and g.alpha >= 0, "graph.alpha", "a finite number ≥ 0",
       g.alpha)
  need(g.block_size is None or int(g.block_size) >= 1, "graph.block_size", "None or ≥ 1",
       g.block_size)
  weights = g.distance_weights
  need(isinstance(weights, (tuple, list)) and len(weights) >= 1
       and all(_non_negative(w) for w in weights), "graph.distance_weights",
       "a tuple of finite numbers ≥ 0 (one per graph.n_neighbors)", weights)
  need(g.get("scope", "global") in KERNEL_SCOPES, "graph.scope", f"one of {KERNEL_SCOPES}",
       g.get("scope"))
  need(isinstance(g.get("group_size", 1), int) and int(g.get("group_size", 1)) >= 1,
       "graph.group_size", "an integer ≥ 1 (devices per group)", g.get("group_size"))
  need(g.get("scope", "global") != "device" or g.get("global_form", "gather") == "gather",
       "graph.global_form", "'gather' with graph.scope 'device' (its kernel never leaves the "
       "device, so there is no ring to pass blocks around)", g.get("global_form"))
  need(len(g.n_neighbors) == len(g.distance_weights) and all(int(n) >= 1 for n in g.n_neighbors),
       "graph.n_neighbors", "≥ 1 each, as many as graph.distance_weights", g.n_neighbors)
  for name in ("k", "num_blocks", "num_heads", "head_dim", "mlp_dim"):
    need(int(config.psi[name]) >= 1, f"psi.{name}", "≥ 1", config.psi[name])
  need(config.psi.get("head", "qr") in HEADS, "psi.head", f"one of {', '.join(HEADS)}",
       config.psi.get("head"))
  need(isinstance(config.psi.get("remat", False), bool), "psi.remat", "True or False",
       config.psi.get("remat"))
  need(lc.get("objective", "segmentor") in OBJECTIVES, "loss.objective",
       f"one of {', '.join(OBJECTIVES)}", lc.get("objective"))
  for name in ("beta_times_k", "t", "tau_max", "tau_min"):
    need(_positive(lc[name]), f"loss.{name}", "a finite number > 0", lc[name])
  need(lc.tau_min <= lc.tau_max, "loss.tau_min", f"≤ loss.tau_max = {lc.tau_max}", lc.tau_min)
  need(0 <= lc.eig_momentum < 1, "loss.eig_momentum", "in [0, 1)", lc.eig_momentum)
  for name in ("checkpoint.every", "checkpoint.keep", "log.every"):
    need(int(_cli.get_field(config, name)) >= 1, name, "≥ 1", _cli.get_field(config, name))
  need(int(config.log.get("fidelity_every", 0)) >= 0, "log.fidelity_every", "≥ 0 (0: off)",
       config.log.get("fidelity_every"))
  need(config.log.get("fidelity_outputs", "softmax") in ("softmax", "logits"),
       "log.fidelity_outputs", "'softmax' or 'logits'", config.log.get("fidelity_outputs"))
  if devices is not None and int(t.batch_size) % devices:
    raise ValueError(f"train.batch_size = {t.batch_size} must be a multiple of the {devices} "
                     "devices (each device holds the same number of crops)")
  if devices is not None and g.get("scope", "global") == "group" and devices % int(g.group_size):
    raise ValueError(f"graph.group_size = {g.group_size} must divide the {devices} devices "
                     "(graph.scope = 'group' splits them into groups of consecutive devices)")
  if patch_size is not None:
    side = int(config.data.image_size) // int(patch_size)
    need(side >= 1, "data.image_size", f"≥ the backbone's {patch_size}-px patch",
         config.data.image_size)
    tokens = int(t.batch_size) * side * side
  if tokens is not None:
    where = "a batch"
    if devices is not None and g.get("scope", "global") != "global":
      tokens = tokens // devices * kernel_devices(g, devices)
      where = f"a {g.scope}-scope kernel ({kernel_devices(g, devices)} of {devices} devices)"
    if g.k > tokens - 1:
      raise ValueError(f"graph.k = {g.k} neighbours need more than the {tokens} tokens of "
                       f"{where}; lower graph.k or raise train.batch_size / data.image_size")
    if config.psi.k > tokens:
      raise ValueError(f"psi.k = {config.psi.k} eigenfunctions exceed the {tokens} tokens of "
                       f"{where}; lower psi.k or raise train.batch_size / data.image_size")


def kernel_devices(graph: ml_collections.ConfigDict, devices: int) -> int:
  """How many of ``devices`` one batch kernel spans under ``graph.scope`` (1, g or all)."""
  scope = graph.get("scope", "global")
  return {"device": 1, "group": int(graph.get("group_size", DEFAULT_GROUP_SIZE)),
          "global": int(devices)}[scope]


def check(config: ml_collections.ConfigDict, *, patch_size: int | None = None,
          tokens: int | None = None, devices: int | None = None,
          data: bool = True) -> Checked:
  """Checks a whole training config once, before anything is loaded or compiled.

  Args:
    config: the training config.
    patch_size, tokens, devices: as for `check_training`.
    data: also check the ``data`` section as a training input (False: a command that reads
      another input, e.g. an evaluation dataset; `Checked.augment` is then the fixed views).
  Returns:
    The `Checked` config.
  Raises:
    ValueError: naming the first bad field.
  """
  augment = check_data(config.data) if data else fixed_views(config.data)
  overrides = backbone_overrides(config)
  check_training(config, patch_size=patch_size, tokens=tokens, devices=devices)
  return Checked(config=config, augment=augment, overrides=overrides)


__all__ = ["CACHE_DTYPES", "DEFAULT_GROUP_SIZE", "KERNEL_SCOPES", "Checked", "backbone_overrides",
           "check", "check_data", "check_training", "fixed_views", "kernel_devices",
           "pipeline_settings", "train_augment"]
