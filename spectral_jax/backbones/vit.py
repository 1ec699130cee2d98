"""One Flax Linen ViT for the self-supervised backbones of DSM and NeuralEF (SPEC §1).

The same pre-LayerNorm transformer covers three families, which differ only in data:

- DINO v1 ``dino_vit{s,b}{16,8}``: patch 16 or 8, 224/P grid, ImageNet mean/std (DSM);
- timm augreg ``vit_{tiny,small,base,large}_patch16_384``: 24×24 grid, mean = std = 0.5
  (the NeuralEF segmentor's default backbone is vit_small_patch16_384);
- DINOv2 ``dinov2_vit{s,b,l}14``: patch 14, 37×37 grid, layer scale, ImageNet mean/std.

Like big_vision's ViT, the attention, the blocks and the trunk return ``(x, out)`` where
``out`` names their intermediates, so features are read from any layer without hooks. The
blocks run under `nn.scan` (one compiled block; parameters stacked under ``blocks``).
`extract_features` packs what the spectral methods use into `Features`: the last block's keys
(DSM's affinity features), queries and values; every block's patch tokens (NeuralEF's ψ input
takes blocks 0, n//2 and the last); the final normed patch tokens and CLS token; the grid.

Images are (B, H, W, 3) RGB floats in [0, 1]; they are cropped (top-left, no resize) to a
multiple of the patch size as DSM does, normalised with the backbone's mean/std, and the
positional embeddings are resampled to the grid as the family's reference code does
(`posemb`). ``dtype="bfloat16"`` computes in bf16 (parameters stay float32; LayerNorm
statistics and the attention softmax are computed in float32).
"""

import functools
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct, traverse_util

from spectral_jax._checks import is_traced
from spectral_jax.backbones import posemb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

NO_WEIGHTS_NOTE = "No pretrained weights: random initialisation."

_WIDTH = {"Ti": 192, "S": 384, "B": 768, "L": 1024}
_DEPTH = {"Ti": 12, "S": 12, "B": 12, "L": 24}
_HEADS = {"Ti": 3, "S": 6, "B": 12, "L": 16}


def decode_variant(variant: str) -> dict:
  """Turns a short name like ``"S/16"`` into width, depth, num_heads, mlp_dim, patch_size.

  Widths and depths are those of the ViT papers (Ti 192×12, S 384×12, B 768×12, L 1024×24),
  with 64-dimensional heads and an MLP 4× wider than the tokens.
  """
  size, _, patch = variant.partition("/")
  if size not in _WIDTH or not patch.isdigit():
    raise ValueError(f"Cannot decode ViT variant {variant!r}: expected e.g. 'S/16' with size in "
                     f"{sorted(_WIDTH)} and an integer patch size.")
  return dict(width=_WIDTH[size], depth=_DEPTH[size], num_heads=_HEADS[size],
              mlp_dim=4 * _WIDTH[size], patch_size=int(patch))


# name -> (family, variant, checkpoint grid side M, layer scale, mean, std, pos_interp).
# pos_interp is what the family's own reference code does (see posemb.py); `load_pretrained`
# switches to "bicubic" for weights in Hugging Face naming, whose code resamples by size.
_REGISTRY = {
    "dino_vits16": ("dino", "S/16", 14, False, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "dino_vits8": ("dino", "S/8", 28, False, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "dino_vitb16": ("dino", "B/16", 14, False, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "dino_vitb8": ("dino", "B/8", 28, False, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "vit_tiny_patch16_384": ("timm", "Ti/16", 24, False, INCEPTION_MEAN, INCEPTION_STD, "bicubic"),
    "vit_small_patch16_384": ("timm", "S/16", 24, False, INCEPTION_MEAN, INCEPTION_STD, "bicubic"),
    "vit_base_patch16_384": ("timm", "B/16", 24, False, INCEPTION_MEAN, INCEPTION_STD, "bicubic"),
    "vit_large_patch16_384": ("timm", "L/16", 24, False, INCEPTION_MEAN, INCEPTION_STD, "bicubic"),
    "dinov2_vits14": ("dinov2", "S/14", 37, True, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "dinov2_vitb14": ("dinov2", "B/14", 37, True, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
    "dinov2_vitl14": ("dinov2", "L/14", 37, True, IMAGENET_MEAN, IMAGENET_STD, "bicubic_offset"),
}
BACKBONES = tuple(_REGISTRY)


def get_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The configuration (data, no weights) of a named backbone.

  Fields: name, family, width, depth, num_heads, mlp_dim, patch_size, pos_grid (side M of the
  checkpoint's square positional grid), layer_scale, ln_eps (1e-6 in all three families), mean,
  std, pos_interp (one of `posemb.MODES`), pos_interp_offset (0.1), dtype ("float32" or
  "bfloat16"), attention (one of `ATTENTION_IMPLS`, see `Attention`), weights_note (where the
  weights came from).

  Args:
    name: one of `BACKBONES`.
    **overrides: fields to replace (e.g. ``dtype="bfloat16"``, ``depth=2`` for a small test).

  Returns:
    A mutable `ml_collections.ConfigDict`.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown backbone {name!r}; known: {', '.join(BACKBONES)}.")
  family, variant, grid, layer_scale, mean, std, interp = _REGISTRY[name]
  cfg = ml_collections.ConfigDict(dict(
      name=name, family=family, **decode_variant(variant), pos_grid=grid,
      layer_scale=layer_scale, ln_eps=1e-6, mean=mean, std=std, pos_interp=interp,
      pos_interp_offset=0.1, dtype="float32", attention="auto", weights_note=NO_WEIGHTS_NOTE))
  for key, value in overrides.items():
    if key not in cfg:
      raise ValueError(f"Unknown backbone config field {key!r}; fields: {sorted(cfg)}.")
    cfg[key] = value
  validate_config(cfg)
  return cfg


def validate_config(cfg) -> None:
  """Raises ValueError when a backbone configuration is inconsistent."""
  if cfg.width % cfg.num_heads:
    raise ValueError(f"width {cfg.width} is not divisible by num_heads {cfg.num_heads}.")
  if cfg.pos_interp not in posemb.MODES:
    raise ValueError(f"pos_interp {cfg.pos_interp!r} is not one of {posemb.MODES}.")
  if cfg.attention not in ATTENTION_IMPLS:
    raise ValueError(f"attention {cfg.attention!r} is not one of {ATTENTION_IMPLS}.")
  if cfg.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype {cfg.dtype!r}: use 'float32' or 'bfloat16'.")
  if min(cfg.depth, cfg.patch_size, cfg.pos_grid, cfg.mlp_dim) < 1:
    raise ValueError("depth, patch_size, pos_grid and mlp_dim must be positive.")
  if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
    raise ValueError("mean and std need 3 entries (RGB) and std must be positive.")


_init = nn.initializers.truncated_normal(0.02)


class Mlp(nn.Module):
  """Two-layer GELU (exact, erf) MLP: fc1 → GELU → fc2."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_init, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(width, dtype=self.dtype, kernel_init=_init, name="fc2")(x)


ATTENTION_IMPLS = ("auto", "xla", "chunked")


def _blockwise_max(x, block: int, max_slices: int = 128):
  """x.max(-1) with no reduction over more than `block` elements, which XLA:CPU would rewrite
  into slower reduce-windows: the `block`-wide slices are combined elementwise (one fused pass)
  and the last `block` values reduced; -inf pads a slice that falls short. Beyond
  `max_slices` slices a step first reduces each slice (bounds the size of the program)."""
  while x.shape[-1] > block:
    steps = -(-x.shape[-1] // block)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, steps * block - x.shape[-1])]
    x = jnp.pad(x, pad, constant_values=-jnp.inf).reshape(*x.shape[:-1], steps, block)
    if steps <= max_slices:
      x = functools.reduce(jnp.maximum, [x[..., i, :] for i in range(steps)])
    else:
      x = x.max(-1)
  return x.max(-1)


def chunked_attention(q, k, v, *, key_mask=None, max_logits: int = 1 << 22, block: int = 32):
  """softmax(q kᵀ / √D) v, one (image, head) pair at a time, in as few query blocks as fit.

  The same function as `jax.nn.dot_product_attention`, arranged for CPUs. A loop over the B·H
  (image, head) pairs runs two plain matrix products per pair, (T, D)·(D, T) and
  (T, T)·(T, D + 1), large enough for XLA's Eigen dots to use both cores (the logits of 128
  queries with 6 heads batched ran 1.47× faster on two cores than on one, those of all 1025
  queries 2×), while one pair's logits (4 MiB at T = 1025) fit in the 32 MiB L3 cache;
  queries are split into blocks only where one pair's logits would exceed `max_logits`
  elements. XLA:CPU turns a reduction over more than 32 elements into a slower tree of
  reduce-windows, so the softmax avoids long reductions: the keys are padded to a multiple of
  `block` with copies of the first key (a copy leaves every row maximum as it is), the row
  maximum is taken in steps of `block` (keys, then block maxima), and the row sums come out of
  the second product through a column of ones appended to v (zero on the padded keys, which so
  count for nothing). Measured on the 2-core CPU with XLA's Eigen dots (`CPU_COMPILER_OPTIONS`)
  against one image at a time with all heads batched in blocks of 128 queries (the previous
  form), in-process A/B runs: 26-32% less time at B=8, T=1025 (0.198 vs 0.262 s) and 20-28% at
  B=2, T=3601 (0.609 vs 0.784 s) for the attention alone, 7-10% less for the whole ViT-S/14
  forward at batch 8, 448×448. Logits, softmax and the normalisation run in float32 whatever
  the input dtype.

  Args:
    q, k, v: (B, T, H, D) arrays.
    key_mask: optional (B, T) bool, False for keys that no query may attend to (padding); the
      first key (CLS) must be True.
    max_logits: most logits per step (queries × padded keys); sets the query block.
    block: keys per step of the row maximum.

  Returns:
    (B, T, H, D) array of `q.dtype`.
  """
  chex.assert_equal_shape([q, k, v])
  if max_logits < 1:
    raise ValueError(f"max_logits must be positive, got {max_logits}")
  b, t, h, d = q.shape
  padded = -(-t // block) * block
  chunk = max(1, min(t, max_logits // padded))
  f32 = jnp.float32

  heads_first = lambda z: z.transpose(0, 2, 1, 3).reshape(b * h, t, d)  # (B·H, T, D)
  keys, values = heads_first(k), heads_first(v)

  def one_head(i, out):
    # Row i of `out` holds the scaled queries of pair i until its outputs replace them: the
    # loop works in place, with no output buffer to allocate and zero.
    qi = jax.lax.dynamic_index_in_dim(out, i, keepdims=False)
    ki, vi = keys[i], values[i]
    if key_mask is not None:
      # A masked key becomes a copy of the first (CLS, never masked) key, so it cannot raise a
      # row maximum, and its value row and row-sum entry are 0: it counts for nothing, without
      # a pass over the (T, T) logits (masking those cost 20% of the forward at T = 3601).
      mi = jax.lax.dynamic_index_in_dim(key_mask, i // h, keepdims=False)
      ki = jnp.where(mi[:, None], ki, ki[:1])
      vi = jnp.where(mi[:, None], vi, 0)
    # Padding here, per pair, in cache (padding all pairs before the loop was 10% slower).
    ki = jnp.concatenate([ki, jnp.broadcast_to(ki[:1], (padded - t, d))], axis=0)
    ones = jnp.ones((t, 1), vi.dtype) if key_mask is None else mi[:, None].astype(vi.dtype)
    vi = jnp.concatenate([vi, ones], axis=1)
    vi = jnp.concatenate([vi, jnp.zeros((padded - t, d + 1), vi.dtype)], axis=0)
    outputs = []
    for start in range(0, t, chunk):
      logits = jnp.einsum("qd,kd->qk", qi[start:start + chunk], ki, preferred_element_type=f32)
      p = jnp.exp(logits - _blockwise_max(logits, block)[:, None])
      y = jnp.einsum("qk,kd->qd", p.astype(vi.dtype), vi, preferred_element_type=f32)
      outputs.append((y[:, :d] / y[:, d:]).astype(q.dtype))
    return jax.lax.dynamic_update_index_in_dim(out, jnp.concatenate(outputs, axis=0), i, 0)

  queries = heads_first(q) * jnp.asarray(d**-0.5, q.dtype)
  y = jax.lax.fori_loop(0, b * h, one_head, queries)
  return y.reshape(b, h, t, d).transpose(0, 2, 1, 3)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv projection, [q | k | v] along features.

  Returns ``(y, out)`` with ``out["q"], out["k"], out["v"]``: (B, T, C) projections, heads
  concatenated in head order (DSM's keys are ``out["k"]`` of the last block).

  ``impl``: "xla" is `jax.nn.dot_product_attention` (cuDNN where available), "chunked" is
  `chunked_attention` (faster on CPU, see there), "auto" picks "chunked" on CPU backends.
  """
  num_heads: int
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, key_mask=None):
    b, t, c = x.shape
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=_init, name="qkv")(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    heads = lambda z: z.reshape(b, t, self.num_heads, c // self.num_heads)
    impl = self.impl
    if impl == "auto":
      impl = "chunked" if jax.default_backend() == "cpu" else "xla"
    # Both: scale 1/sqrt(head_dim) and a float32 softmax, as the references.
    if impl == "chunked":
      y = chunked_attention(heads(q), heads(k), heads(v), key_mask=key_mask)
    else:
      mask = None if key_mask is None else key_mask[:, None, None, :]
      y = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), mask=mask)
    y = y.reshape(b, t, c)
    y = nn.Dense(c, dtype=self.dtype, kernel_init=_init, name="proj")(y)
    return y, {"qkv": qkv, "q": q, "k": k, "v": v}


class Block(nn.Module):
  """Pre-LayerNorm transformer block, optional DINOv2 layer scale:
  ``x += ls1 · attn(norm1(x)); x += ls2 · mlp(norm2(x))``."""
  num_heads: int
  mlp_dim: int
  layer_scale: bool = False
  ln_eps: float = 1e-6
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, key_mask=None):
    width = x.shape[-1]
    norm = functools.partial(nn.LayerNorm, epsilon=self.ln_eps, dtype=self.dtype,
                             use_fast_variance=False)
    scale = lambda name: (self.param(name, nn.initializers.constant(1e-5), (width,))
                          .astype(self.dtype) if self.layer_scale else 1.0)
    y, out = Attention(self.num_heads, dtype=self.dtype, impl=self.attention,
                       name="attn")(norm(name="norm1")(x), key_mask)
    x = out["+attn"] = x + scale("ls1") * y
    y = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(norm(name="norm2")(x))
    x = x + scale("ls2") * y
    return x, out


def _scan_step(block, carry, _):
  """One `nn.scan` step over the blocks: carries (tokens, last qkv, key mask), emits the
  tokens."""
  x, out = block(carry[0], carry[2])
  return (x, out["qkv"], carry[2]), x


class ViT(nn.Module):
  """The ViT trunk (no classification head). Build with `ViT.from_config`.

  ``__call__(images, patch_valid=None)`` takes (B, H, W, 3) RGB in [0, 1] and returns
  ``(encoded, out)``. ``patch_valid`` (B, h, w) bool marks, per image, the top-left rectangle of
  patches that holds the image when images of different sizes are padded to one shape: each
  image's positional embeddings are resampled for its own rectangle, and padded tokens are
  masked out of every attention, so the valid tokens equal those of the unpadded image. Output:
  ``encoded`` (B, 1 + h·w, C) final normed tokens, CLS first; ``out`` holds ``grid`` (h, w),
  ``stem`` (B, h, w, C) patch embeddings, ``blocks`` (depth, B, 1 + h·w, C) every block's
  output, ``q``, ``k``, ``v`` (B, 1 + h·w, C) of the last block and ``encoded``.
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  pos_grid: int
  layer_scale: bool = False
  ln_eps: float = 1e-6
  mean: Tuple[float, ...] = IMAGENET_MEAN
  std: Tuple[float, ...] = IMAGENET_STD
  pos_interp: str = "bicubic"
  pos_interp_offset: float = 0.1
  dtype: Any = jnp.float32
  attention: str = "auto"

  @classmethod
  def from_config(cls, cfg) -> "ViT":
    validate_config(cfg)
    return cls(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
               patch_size=cfg.patch_size, pos_grid=cfg.pos_grid, layer_scale=cfg.layer_scale,
               ln_eps=cfg.ln_eps, mean=tuple(cfg.mean), std=tuple(cfg.std),
               pos_interp=cfg.pos_interp, pos_interp_offset=cfg.pos_interp_offset,
               dtype=jnp.dtype(cfg.dtype), attention=cfg.attention)

  @nn.compact
  def __call__(self, images, patch_valid=None):
    out = {}
    p = self.patch_size
    h, w = images.shape[1] // p, images.shape[2] // p
    out["grid"] = (h, w)
    x = images[:, :h * p, :w * p].astype(jnp.float32)  # DSM: crop, never resize.
    x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    x = out["stem"] = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                              dtype=self.dtype, kernel_init=_init, name="patch_embed")(x)
    b = x.shape[0]
    x = x.reshape(b, h * w, self.width)
    cls = self.param("cls_token", _init, (1, 1, self.width))
    pos = self.param("pos_embed", _init, (1, 1 + self.pos_grid**2, self.width))
    if patch_valid is None:
      pos = posemb.interpolate_pos_embed(pos, (h, w), self.pos_interp,
                                         offset=self.pos_interp_offset)
      key_mask = None
    else:
      chex.assert_shape(patch_valid, (b, h, w))
      pos = posemb.interpolate_pos_embed_padded(pos, patch_valid, self.pos_interp,
                                                offset=self.pos_interp_offset)
      key_mask = jnp.concatenate([jnp.ones((b, 1), bool), patch_valid.reshape(b, h * w)], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], axis=1)
    x = x + pos.astype(x.dtype)
    # The blocks run under nn.scan: one block is compiled whatever the depth (12-24 unrolled
    # blocks cost seconds of compilation for every new image size); their parameters are
    # stacked on a leading layer axis under "blocks".
    scan = nn.scan(_scan_step, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=self.depth)
    block = Block(self.num_heads, self.mlp_dim, self.layer_scale, self.ln_eps,
                  dtype=self.dtype, attention=self.attention, name="blocks")
    # zeros_like: the carry then varies over a shard_map axis exactly as the tokens do (scan
    # needs its carry's input and output types equal inside shard_map).
    qkv = jnp.zeros_like(x, shape=(*x.shape[:-1], 3 * self.width))
    (x, qkv, _), out["blocks"] = scan(block, (x, qkv, key_mask), None)
    out["q"], out["k"], out["v"] = jnp.split(qkv, 3, axis=-1)
    x = out["encoded"] = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype,
                                      use_fast_variance=False, name="norm")(x)
    return x, out


@struct.dataclass
class Backbone:
  """A ready backbone: parameters (a pytree) plus its static configuration.

  Pass it to `extract_features` (under `jit` too: the config is static, the params traced).
  """
  params: Any
  config: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)

  @property
  def module(self) -> ViT:
    return ViT.from_config(self.config)

  @property
  def weights_note(self) -> str:
    return self.config.weights_note


@functools.lru_cache(maxsize=32)
def _param_shapes(module: ViT) -> Tuple[Tuple[Tuple[str, ...], Tuple[int, ...]], ...]:
  dummy = jax.ShapeDtypeStruct((1, module.patch_size, module.patch_size, 3), jnp.float32)
  tree = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
  return tuple((k, tuple(v.shape)) for k, v in traverse_util.flatten_dict(tree).items())


def param_shapes(config) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Shape of every parameter of the `ViT` built from `config`, keyed by its path (traced
  once with `jax.eval_shape`; nothing is computed)."""
  return dict(_param_shapes(ViT.from_config(config)))


def init_backbone(config, seed: int = 0) -> Backbone:
  """A `Backbone` with freshly initialised (untrained) parameters, e.g. for tests.

  Drawn on the host with NumPy (compiling `ViT.init` costs tens of seconds on a CPU): kernels
  and embeddings N(0, 0.02²), biases 0, LayerNorm scales 1, layer scales 1e-5 (DINOv2's init).

  Args:
    config: a config from `get_config` (ConfigDict or FrozenConfigDict).
    seed: NumPy seed.
  """
  config = ml_collections.FrozenConfigDict(config)
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    if path[-1] in ("ls1", "ls2"):
      return np.full(shape, 1e-5)
    if path[-1] == "bias":
      return np.zeros(shape)
    if path[-1] == "scale":
      return np.ones(shape)
    return rng.normal(0.0, 0.02, shape)

  flat = {path: np.asarray(draw(path, shape), np.float32)
          for path, shape in param_shapes(config).items()}
  return Backbone(params=jax.device_put(traverse_util.unflatten_dict(flat)), config=config)


@struct.dataclass
class Features:
  """Backbone features of a batch of B images on an h×w patch grid (N = h·w patches).

  All token arrays hold patch tokens only, in row-major grid order (CLS dropped; it is `cls`).

  Attributes:
    keys: (B, N, C) last block's attention keys, heads concatenated (DSM, SPEC §1).
    queries: (B, N, C) last block's queries.
    values: (B, N, C) last block's values.
    blocks: (L', B, N, C) output tokens of the blocks in `block_ids` (default: all L blocks).
    tokens: (B, N, C) final LayerNorm-ed tokens.
    cls: (B, C) final LayerNorm-ed CLS token.
    grid: (h, w) patch grid (static).
    block_ids: indices of the blocks stacked in `blocks` (static).
  """
  keys: jax.Array
  queries: jax.Array
  values: jax.Array
  blocks: jax.Array
  tokens: jax.Array
  cls: jax.Array
  grid: Tuple[int, int] = struct.field(pytree_node=False)
  block_ids: Tuple[int, ...] = struct.field(pytree_node=False)

  def to_grid(self, x: jax.Array) -> jax.Array:
    """Reshapes (..., N, C) patch features to (..., h, w, C)."""
    return x.reshape(*x.shape[:-2], *self.grid, x.shape[-1])


def _check_images(images, patch_size: int) -> None:
  chex.assert_rank(images, 4)
  if images.shape[-1] != 3:
    raise ValueError(f"images must be (B, H, W, 3) RGB; got shape {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"images must be floats in [0, 1]; got dtype {images.dtype} "
                    "(divide uint8 images by 255).")
  if min(images.shape[1:3]) < patch_size:
    raise ValueError(f"images of {images.shape[1]}×{images.shape[2]} px are smaller than one "
                     f"{patch_size}-px patch.")


def _check_host_values(images) -> None:
  """NaN/Inf and the [0, 1] range of NumPy float images (free on the host; device arrays are
  not read back)."""
  if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
    if not np.all(np.isfinite(images)):
      raise ValueError("images contain NaN or Inf pixels; clean them first.")
    if images.size and (images.min() < 0 or images.max() > 1):
      raise ValueError(f"images must hold values in [0, 1]; got [{images.min():.3g}, "
                       f"{images.max():.3g}] (divide 0–255 values by 255).")


def _select_blocks(blocks, ids):
  """(L', B, N, C) patch tokens of blocks `ids` from (L, B, 1 + N, C)."""
  if ids == tuple(range(blocks.shape[0])):
    return blocks[:, :, 1:]
  return jnp.stack([blocks[i, :, 1:] for i in ids])


# XLA:CPU runs dots through YNNPACK by default in jaxlib 0.10. For this ViT on the 2-core
# AVX2 CPU of BUILD_NOTES, its dots through XLA's Eigen path took less time: whole ViT-S/14
# forward, batch 8 at 448 px, in-process A/B of the same weights, medians of 5-7 repeats:
# 9.00 vs 7.51 s, 8.43 vs 7.07 s and 8.62 vs 7.59 s (12-17% less); alone, the dense layers
# took 13-17% less time and the attention 9% more, which `chunked_attention` wins back.
# Only CPU compilations get these options.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=8)
def _checked_options(backend: str, options: Tuple[Tuple[str, str], ...]):
  if backend != "cpu" or not options:
    return ()
  try:  # An XLA that no longer knows an option rejects it at compile time: then run without.
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(f"XLA rejected the CPU compiler options {dict(options)} ({e}); the backbone "
                  "compiles with XLA's defaults.")
    return ()
  return options


def compiler_options() -> Dict[str, str]:
  """XLA compiler options for computations that run the ViT on the default backend.

  `CPU_COMPILER_OPTIONS` on CPU (after a one-off check that this XLA accepts them), nothing
  on GPU/TPU. `extract_features` compiles with them; pass them to your own `jax.jit` around
  the backbone (``jax.jit(f, compiler_options=backbones.compiler_options())``) to get the
  same CPU speed: options of an inner `jit` are ignored when it is traced inside an outer one.
  """
  items = tuple(sorted((str(k), str(v)) for k, v in CPU_COMPILER_OPTIONS.items()))
  return dict(_checked_options(jax.default_backend(), items))


def extract_features(backbone: Backbone, images: jax.Array, *,
                     blocks: Optional[Sequence[int]] = None,
                     dtype: Any = jnp.float32, patch_valid: Optional[jax.Array] = None) -> Features:
  """Runs the backbone on images and returns the features the spectral methods use.

  Jitted (static: image shape, `blocks`, `dtype`) with `compiler_options`; also usable inside
  other jitted functions (give those the same `compiler_options` for the same CPU speed).
  Each new image shape compiles once (seconds on a CPU), so batch images of one size. NumPy
  input is checked for NaN/Inf and the [0, 1] range (scale uint8 images by 1/255 first); jax
  arrays are not read back for that.

  Args:
    backbone: a `Backbone` (from `load_pretrained` or `init_backbone`).
    images: (B, H, W, 3) RGB floats in [0, 1]. Cropped to (h·P, w·P), h = H // P, w = W // P.
    blocks: which blocks to stack in `Features.blocks` (negative indices count from the end);
      default all. NeuralEF's ψ uses ``(0, depth // 2, -1)``.
    dtype: dtype of the returned arrays (default float32, whatever the compute dtype).
    patch_valid: optional (B, h, w) bool, each image's top-left rectangle of real patches when
      images of several sizes are padded to one shape (see `ViT`); padded tokens' features are
      finite but meaningless.

  Returns:
    `Features` with N = h·w patches and C = width.
  """
  blocks = None if blocks is None else tuple(int(i) for i in blocks)
  _check_host_values(images)
  traced = is_traced(backbone, images)
  # JAX takes compiler options on top-level jits only: traced, the caller's jit decides.
  options = () if traced else tuple(sorted(compiler_options().items()))
  return _jitted_extract(options)(backbone, images, blocks=blocks, dtype=dtype,
                                  patch_valid=patch_valid)


@functools.lru_cache(maxsize=8)
def _jitted_extract(options: Tuple[Tuple[str, str], ...]):
  return jax.jit(_extract_features, static_argnames=("blocks", "dtype"),
                 compiler_options=dict(options) or None)


def _extract_features(backbone: Backbone, images: jax.Array, *,
                      blocks: Optional[Tuple[int, ...]], dtype: Any,
                      patch_valid: Optional[jax.Array] = None) -> Features:
  _check_images(images, backbone.config.patch_size)
  depth = backbone.config.depth
  block_ids = tuple(range(depth)) if blocks is None else tuple(i % depth for i in blocks)
  if blocks is not None and any(not -depth <= i < depth for i in blocks):
    raise ValueError(f"block indices {blocks} out of range for depth {depth}.")
  encoded, out = backbone.module.apply({"params": backbone.params}, images, patch_valid)
  patches = lambda z: z[:, 1:].astype(dtype)
  return Features(
      keys=patches(out["k"]), queries=patches(out["q"]), values=patches(out["v"]),
      blocks=_select_blocks(out["blocks"], block_ids).astype(dtype),
      tokens=patches(encoded), cls=encoded[:, 0].astype(dtype), grid=out["grid"],
      block_ids=block_ids)
