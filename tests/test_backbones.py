"""The Flax ViT against the Hugging Face PyTorch models with the same weights (SPEC §1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import backbones
from spectral_jax.backbones import reference, vit

# Small configs exercising every code path: fused qkv split into heads, layer scale (DINOv2),
# positional interpolation (non-native grids), 3 blocks so that 0, n//2 and the last differ.
SMALL = dict(width=64, num_heads=4, mlp_dim=128, depth=3, pos_grid=6, pos_interp="bicubic")
# timm augreg runs the same code as DINO v1 (ViTModel layout, no layer scale), only its
# mean/std differ, so the Hugging Face parity runs DINO v1 and DINOv2.
FAMILIES = {"dino": "dino_vits16", "dinov2": "dinov2_vits14"}


def _small_config(family, **overrides):
  return backbones.get_config(FAMILIES[family], **{**SMALL, **overrides})


def _images(rng, batch, height, width):
  return rng.uniform(size=(batch, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def small_pair(request, torch, transformers):
  """(backbone, HF model with the same random weights) for one family."""
  config = _small_config(request.param)
  backbone = reference.random_backbone(config, seed=1)
  return backbone, reference.hf_model(config, backbone.params)


# Native square grid (no interpolation) and a non-square one needing it, with a remainder of
# pixels that both sides crop away.
@pytest.mark.parametrize("grid,extra", [((6, 6), (0, 0)), ((8, 5), (3, 7))])
def test_matches_hugging_face(small_pair, grid, extra, rng):
  backbone, model = small_pair
  config = backbone.config
  p = config.patch_size
  images = _images(rng, 2, grid[0] * p + extra[0], grid[1] * p + extra[1])
  feats = backbones.extract_features(backbone, jnp.asarray(images))
  ref = reference.hf_features(model, reference.hf_pixels(images, config), config)
  assert feats.grid == grid
  for name in ("keys", "queries", "values", "tokens", "cls"):
    np.testing.assert_allclose(np.asarray(getattr(feats, name)), ref[name].numpy(),
                               atol=1e-4, rtol=0, err_msg=name)
  assert feats.blocks.shape == (config.depth, 2, grid[0] * grid[1], config.width)
  for i, block in enumerate(ref["blocks"]):
    np.testing.assert_allclose(np.asarray(feats.blocks[i]), block.numpy(), atol=1e-4,
                               rtol=1e-5, err_msg=f"block {i}")


def test_full_size_vit_s16_matches_hugging_face(rng, torch, transformers):
  """Real DINO ViT-S/16 dimensions, non-square grid 10×15 resampled from 14×14."""
  config = backbones.get_config("dino_vits16", pos_interp="bicubic")
  backbone = reference.random_backbone(config, seed=4)
  images = _images(rng, 1, 160, 240)
  feats = backbones.extract_features(backbone, jnp.asarray(images), blocks=(0, 6, 11))
  model = reference.hf_model(config, backbone.params)
  ref = reference.hf_features(model, reference.hf_pixels(images, config), config)
  for name in ("keys", "tokens", "cls"):
    np.testing.assert_allclose(np.asarray(getattr(feats, name)), ref[name].numpy(),
                               atol=1e-4, rtol=0, err_msg=name)
  for i, block in zip(feats.block_ids, feats.blocks):
    np.testing.assert_allclose(np.asarray(block), ref["blocks"][i].numpy(), atol=1e-4,
                               rtol=1e-5, err_msg=f"block {i}")


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14"])
def test_parameter_count_matches_hugging_face(name, torch, transformers):
  """Full-size ViT-S: as many parameters as the HF model (less its unused mask_token)."""
  config = backbones.get_config(name)
  ours = sum(int(np.prod(shape)) for shape in vit.param_shapes(config).values())
  make, hf_config, _ = reference.hf_architecture(config)
  with torch.device("meta"):  # Shapes only.
    model = make(hf_config)
  theirs = sum(p.numel() for n, p in model.named_parameters() if "mask_token" not in n)
  assert ours == theirs == {"dino_vits16": 21_665_664, "dinov2_vits14": 22_056_192}[name]


@pytest.fixture(scope="module")
def dinov2_small():
  return reference.random_backbone(_small_config("dinov2"), seed=2)


def test_block_selection_under_an_outer_jit(dinov2_small, rng):
  """blocks=(0, n//2, -1) as ψ takes them, from inside a user's jitted function.

  (Cropping to a multiple of P is checked by the parity test with extra pixels.)
  """
  images = jnp.asarray(_images(rng, 2, 84, 84))
  everything = backbones.extract_features(dinov2_small, images)

  @functools.partial(jax.jit, compiler_options=backbones.compiler_options())
  def psi_input(backbone, x):
    feats = backbones.extract_features(backbone, x, blocks=(0, 1, -1))
    return feats.blocks, feats.block_ids, feats.to_grid(feats.keys)

  blocks, ids, keys_grid = psi_input(dinov2_small, images)
  assert ids == (0, 1, 2)
  np.testing.assert_array_equal(np.asarray(blocks), np.asarray(everything.blocks))
  np.testing.assert_array_equal(np.asarray(keys_grid).reshape(everything.keys.shape),
                                np.asarray(everything.keys))
  assert keys_grid.shape == (2, 6, 6, dinov2_small.config.width)
  # A plain outer jit (XLA's default CPU dots) gives the same features to float32 rounding.
  plain = jax.jit(lambda backbone, x: backbones.extract_features(backbone, x).keys)
  np.testing.assert_allclose(plain(dinov2_small, images), everything.keys, atol=1e-5)


# Token counts: one key and fewer than a key block (padded with 31 and 25 copies of the first
# key), exactly one block, and 1090 = 34 blocks + 2 keys (the maximum over 35 slices). The -inf
# padding of `_blockwise_max` is tested on its own below. `queries` > 0 caps the logits so that
# each (image, head) pair runs in blocks of that many queries (600 = 6·100, 1090 = 10·100 + 90,
# 7 = 3 + 3 + 1); 0 keeps the default, one block per pair at these sizes.
@pytest.mark.parametrize("tokens,queries", [(1, 0), (7, 0), (32, 0), (600, 0), (1090, 0),
                                            (600, 100), (1090, 100), (7, 3)])
def test_chunked_attention_matches_float64_attention(tokens, queries, rng):
  q, k, v = (rng.normal(size=(2, tokens, 2, 16)).astype(np.float32) for _ in range(3))
  q = q * 4.0  # Peaked rows: the max subtraction matters.
  logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / 4.0
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
  padded_keys = -(-tokens // 32) * 32
  options = {"max_logits": queries * padded_keys} if queries else {}
  chunked = jax.jit(functools.partial(vit.chunked_attention, **options))
  # float32 error: jax.nn.dot_product_attention is 3.6e-6 off at 1090 tokens, this form
  # 8.2e-6 (its row sums come out of a float32 product over the keys).
  np.testing.assert_allclose(chunked(q, k, v), expected, atol=1.5e-5)
  low = chunked(*(jnp.asarray(z, jnp.bfloat16) for z in (q, k, v)))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), expected, atol=5e-2)


@pytest.mark.parametrize("tokens", [7, 600])
def test_masked_keys_count_for_nothing(tokens, rng):
  """Key masks (padding): the float64 softmax over the unmasked keys only, in both attention
  forms, even where a masked key would have the largest logit by far (it must not set the row
  maximum, or the real weights would underflow to 0/0)."""
  q, k, v = (rng.normal(size=(2, tokens, 2, 16)).astype(np.float32) for _ in range(3))
  mask = rng.random((2, tokens)) < 0.6
  mask[:, 0] = True
  k[~mask] = 500.0 * q.mean(axis=1, keepdims=True).repeat(tokens, 1)[~mask]  # huge logits
  v[~mask] = 1e6
  logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / 4.0
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
  chunked = jax.jit(vit.chunked_attention)(q, k, v, key_mask=mask)
  np.testing.assert_allclose(chunked, expected, atol=1.5e-5)
  xla = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)[:, None, None, :])
  np.testing.assert_allclose(xla, expected, atol=1.5e-5)


@pytest.mark.parametrize("length", [1, 31, 32, 33, 1024, 1057, 5000])
def test_blockwise_max_is_the_row_max(length, rng):
  x = rng.normal(size=(3, length)).astype(np.float32) * 100
  x[0, -1] = 1e30  # The maximum in the last, padded step.
  x[1] = -np.inf if length == 1 else x[1]
  np.testing.assert_array_equal(jax.jit(lambda z: vit._blockwise_max(z, 32))(x), x.max(-1))


def test_cpu_compiler_options_reach_the_compiled_backbone(dinov2_small, monkeypatch):
  """On CPU the backbone compiles without YNNPACK fusions (the measured faster dot path), and
  an option this XLA does not know falls back to the defaults with a warning."""
  if jax.default_backend() != "cpu":
    pytest.skip("CPU-only compiler options")
  assert backbones.compiler_options() == backbones.CPU_COMPILER_OPTIONS
  images = jnp.zeros((1, 28, 28, 3))
  options = tuple(sorted(backbones.compiler_options().items()))
  hlo = vit._jitted_extract(options).lower(dinov2_small, images, blocks=None,
                                           dtype=jnp.float32).compile().as_text()
  default_hlo = vit._jitted_extract(()).lower(dinov2_small, images, blocks=None,
                                              dtype=jnp.float32).compile().as_text()
  assert "__ynn_fusion" not in hlo
  assert "__ynn_fusion" in default_hlo  # The option changed something.
  monkeypatch.setattr(vit, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
  with pytest.warns(UserWarning, match="rejected"):
    assert backbones.compiler_options() == {}


def test_bfloat16_compute_is_close_to_float32(dinov2_small, rng):
  bf16 = vit.Backbone(params=dinov2_small.params,
                      config=backbones.get_config(FAMILIES["dinov2"], **SMALL, dtype="bfloat16"))
  images = jnp.asarray(_images(rng, 2, 84, 84))
  a = backbones.extract_features(dinov2_small, images)
  b = backbones.extract_features(bf16, images)
  assert b.keys.dtype == jnp.float32  # Returned in float32 by default.
  for name in ("keys", "tokens"):
    x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
    assert 0 < np.linalg.norm(x - y) / np.linalg.norm(x) < 2e-2, name  # Really bf16, close.


def test_input_validation(dinov2_small):
  with pytest.raises(ValueError, match="RGB"):
    backbones.extract_features(dinov2_small, jnp.zeros((1, 28, 28, 4)))
  with pytest.raises(TypeError, match="255"):
    backbones.extract_features(dinov2_small, jnp.zeros((1, 28, 28, 3), jnp.uint8))
  with pytest.raises(ValueError, match="smaller than one"):
    backbones.extract_features(dinov2_small, jnp.zeros((1, 10, 28, 3)))
  with pytest.raises(ValueError, match="out of range"):
    backbones.extract_features(dinov2_small, jnp.zeros((1, 28, 28, 3)), blocks=(3,))
  with pytest.raises(ValueError, match="divide 0–255 values by 255"):
    backbones.extract_features(dinov2_small, np.full((1, 28, 28, 3), 200.0, np.float32))
  with pytest.raises(ValueError, match="NaN"):
    backbones.extract_features(dinov2_small, np.full((1, 28, 28, 3), np.nan, np.float32))


def test_configs():
  assert backbones.decode_variant("B/8") == dict(width=768, depth=12, num_heads=12,
                                                 mlp_dim=3072, patch_size=8)
  for name in backbones.BACKBONES:
    config = backbones.get_config(name)
    assert config.width % config.num_heads == 0
  dinov2 = backbones.get_config("dinov2_vitl14")
  assert (dinov2.width, dinov2.depth, dinov2.patch_size, dinov2.pos_grid) == (1024, 24, 14, 37)
  assert dinov2.layer_scale and not backbones.get_config("dino_vitb8").layer_scale
  assert backbones.get_config("dino_vits8").pos_grid == 28
  assert backbones.get_config("vit_tiny_patch16_384").mean == (0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match="Unknown backbone"):
    backbones.get_config("dino_vitg14")
  with pytest.raises(ValueError, match="field"):
    backbones.get_config("dino_vits16", heads=3)
  with pytest.raises(ValueError, match="divisible"):
    backbones.get_config("dino_vits16", num_heads=5)
  with pytest.raises(ValueError, match="pos_interp"):
    backbones.get_config("dino_vits16", pos_interp="nearest")
