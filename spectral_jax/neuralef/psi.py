"""ψ, the neural eigenfunctions of the NeuralEF segmentor (SPEC §5), as a Flax Linen module.

Input: per image, the concatenated backbone features of block 0, block n//2 and the last level,
(B, N, 3C) (1152 dims for ViT-S; ``psi_features``, ``feature_levels``). Then ``num_blocks``
pre-LayerNorm transformer blocks whose self-attention is *linear* and runs within each image,
a final LayerNorm, and a linear head to K logits whose weight rows are orthonormal
(W Wᵀ = I for W in torch's (K, D) layout, i.e. orthonormal columns of the Flax (D, K) kernel)
plus a bias.

Linear attention (thudzj/NeuralEigenfunctionSegmentor uses lucidrains'
``linear_attention_transformer.SelfAttention``, non-causal, no local heads): per head,
``q ← softmax(q) over its features · d_h^-½``, ``k ← softmax(k) over the tokens``,
``out = q (kᵀ v)``, so the cost is linear in N; q, k, v projections have no bias, the output
projection has one. The MLP is ``Dense(mlp_dim) → GELU (exact erf form, as torch) → Dense``,
with ``mlp_dim = 576`` in the reference config (half of 1152). LayerNorm ε = 1e-5 (torch).

Orthonormal head: the reference wraps the head in ``torch.nn.utils.parametrizations.
orthogonal`` (Householder reflectors on top of a fixed random orthogonal base). Two heads:

- ``head="qr"``: an unconstrained matrix V (D, K) and
  ``W = orthonormalize(V)``, the Q factor of V's thin QR decomposition with signs fixed so
  that diag(R) > 0. W is orthonormal to float32 round-off at every step, whatever the
  optimiser does to V; it costs O(D·K²) and never forms a D×D matrix; V ↦ W is unique and
  smooth wherever V has full rank. V starts as a random orthonormal frame (W = V at init).
  Adam acts on V, so the dynamics differ from the reference's (issue 22: its head moves about
  4× further in 20 steps).
- ``head="householder"`` (the default, as the reference): the reference's map (``householder_orthonormal``,
  ``HouseholderDense``): Adam acts on the reflectors X, W = base · H₁⋯H_K · I₍:,:K₎ · sign
  with a fixed orthogonal base (torch's trivialisation). The product is formed in the compact
  WY form (one K×K triangular solve, differentiable; ``jax.lax.linalg.householder_product``
  has no derivative), O(D·K²), plus the D×D base product.

The reference's ``trunc_normal_`` on the parametrised weight changes a temporary copy only, so
its head also starts as a random orthonormal frame. The bias starts at 0. When K > D, W's
columns are orthonormal instead (WᵀW = I), as torch does for wide matrices.

Every other Dense weight starts truncated normal, std 0.02, cut at ±2 (absolute, timm's
``trunc_normal_``), biases at 0, LayerNorms at scale 1, bias 0 (SPEC §5).

Outputs follow big_vision: ``logits, out = Psi(...).apply(params, x)`` with ``out`` holding
``"block00"``…, ``"pre_logits"`` (the final-LayerNorm features, input to the "Ours*" K-means)
and ``"logits"``.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Dtype = Any
HEADS = ("householder", "qr")  # `Psi.head`'s choices: the reference's map (default), thin QR


def psi_config() -> ml_collections.ConfigDict:
  """Reference hyper-parameters of ψ (thudzj/NeuralEigenfunctionSegmentor ``config.yml``).

  ``k`` = 256 is the Pascal Context / Cityscapes setting of the paper (the yml says 2048,
  the training commands set 256; ADE20K uses 512). ``Psi(**psi_config())`` builds the module.
  """
  cfg = ml_collections.ConfigDict()
  cfg.k = 256                  # K, number of eigenfunctions (head outputs).
  cfg.num_blocks = 2
  cfg.num_heads = 18           # 18 × 64 = 1152 inner attention dims.
  cfg.head_dim = 64
  cfg.mlp_dim = 576
  cfg.orthogonal_head = True   # False: a plain Dense head (mIoU ~0.27 instead of ~0.40).
  cfg.head = "householder"     # the reference's orthogonal map; "qr": W = QR(V), Adam on V.
  cfg.init_std = 0.02
  cfg.layer_norm_eps = 1e-5
  cfg.dtype = "float32"        # "bfloat16": bf16 matmuls, f32 params, softmax and logits.
  cfg.remat = False            # True: recompute each block's activations in the backward pass.
  return cfg


def feature_levels(num_layers: int) -> tuple[int, int]:
  """Indices of the two intermediate backbone blocks ψ reads: block 0 and block n//2.

  The third level is the backbone's final normed tokens (last-layer keys for DINO backbones).
  """
  if isinstance(num_layers, bool) or int(num_layers) != num_layers or num_layers < 1:
    raise ValueError(f"feature_levels needs a positive number of layers, got {num_layers!r}.")
  return 0, int(num_layers) // 2


def psi_features(low: jax.Array, mid: jax.Array, high: jax.Array) -> jax.Array:
  """ψ's input: the three backbone levels concatenated along features (SPEC §1, §5).

  Args:
    low: (B, N, C) patch tokens (no CLS/register tokens) after block 0.
    mid: (B, N, C) after block ``num_layers // 2`` (``feature_levels``).
    high: (B, N, C) the final normed tokens (or DINO last-layer keys).
  Returns:
    (B, N, 3C) ``[low, mid, high]``, in the reference order.
  """
  shapes = [tuple(jnp.shape(a)) for a in (low, mid, high)]
  if len(shapes[0]) != 3 or len(set(shapes)) != 1:
    raise ValueError(f"psi_features needs three (B, N, C) arrays of one shape, got {shapes}; "
                     "drop the CLS token and flatten the patch grid first.")
  return jnp.concatenate([low, mid, high], axis=-1)


def trunc_normal_init(std: float = 0.02, bound: float = 2.0) -> jax.nn.initializers.Initializer:
  """N(0, std²) truncated to the absolute interval [−bound, bound] (timm ``trunc_normal_``).

  Not ``jax.nn.initializers.truncated_normal``, which cuts at ±2·std and rescales.
  """
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)
  return init


def orthonormalize(v: jax.Array) -> jax.Array:
  """The orthonormal factor of ``v`` by thin QR, signs fixed so that diag(R) > 0.

  Args:
    v: (D, K) float matrix of full rank.
  Returns:
    (D, K) float32 (at least) matrix Q with ``QᵀQ = I`` if D ≥ K, else ``QQᵀ = I`` (QR of vᵀ).
    Q spans v's columns (rows if D < K); differentiable.
  """
  if v.ndim != 2:
    raise ValueError(f"orthonormalize needs a matrix, got shape {v.shape}.")
  v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
  wide = v.shape[0] < v.shape[1]
  q, r = jnp.linalg.qr(v.T if wide else v)
  d = jnp.diagonal(r)
  q = q * jnp.where(d < 0, -1.0, 1.0).astype(q.dtype)
  return q.T if wide else q


class OrthonormalDense(nn.Module):
  """``y = x W + b`` with W = ``orthonormalize(kernel)``: the head's rows W[:, j] orthonormal.

  In torch's (out, in) layout this is W Wᵀ = I (SPEC §5). ``kernel`` is the unconstrained
  parameter; read the effective weight with ``orthonormalize(params["kernel"])``.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.param("kernel", nn.initializers.orthogonal(), (x.shape[-1], self.features),
                   jnp.float32)
    w = orthonormalize(v)
    y = jnp.dot(x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32
                         ).astype(self.dtype)
    return y


def householder_orthonormal(x: jax.Array, base: jax.Array | None = None) -> jax.Array:
  """torch's Householder map of ``parametrizations.orthogonal`` for a tall (n, k) matrix.

  From ``torch/nn/utils/parametrizations.py`` (``_Orthogonal.forward``, householder branch,
  on the tall orientation): ``A = tril(X, −1)``, ``τⱼ = 2/(1 + ‖A₍:,ⱼ₎‖²)``,
  ``Q = householder_product(A, τ)`` (the first k columns of H₁⋯H_k, Hⱼ = I − τⱼvⱼvⱼᵀ with
  vⱼ = A₍:,ⱼ₎ + eⱼ: exact reflections), then ``Q ← Q · int(diag(X))`` column by column
  (truncation toward 0; no gradient flows through it, so under Adam the diagonal keeps its
  initial −1) and, with trivialisation, ``W = base @ Q``. Here H₁⋯H_k = I − V T⁻¹ Vᵀ with
  ``T = diag(1/τ) + triu(VᵀV, 1)`` (compact WY form), differentiable in X; ``base`` is a
  constant (stop-gradient).

  Args:
    x: (n, k) float reflector parameters, n ≥ k (torch's ``original``, transposed to tall);
      only the strict lower triangle and the sign of the diagonal matter.
    base: optional (n, n) orthogonal matrix (torch's ``base`` buffer).
  Returns:
    (n, k) float32 (at least) matrix with orthonormal columns (given a ±1 diagonal in x).
  """
  if x.ndim != 2 or x.shape[0] < x.shape[1]:
    raise ValueError(f"householder_orthonormal needs a tall (n, k) matrix, n ≥ k, got shape "
                     f"{x.shape}.")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n, k = x.shape
  a = jnp.tril(x, -1)
  inv_tau = (1.0 + jnp.sum(a * a, axis=0)) / 2.0
  v = a + jnp.eye(n, k, dtype=x.dtype)
  t = jnp.diag(inv_tau) + jnp.triu(v.T @ v, 1)
  q = jnp.eye(n, k, dtype=x.dtype) - v @ jax.scipy.linalg.solve_triangular(t, v[:k].T,
                                                                          lower=False)
  q = q * jnp.trunc(jax.lax.stop_gradient(jnp.diagonal(x)))
  if base is None:
    return q
  chex.assert_shape(base, (n, n))
  return jax.lax.stop_gradient(base.astype(x.dtype)) @ q


def _householder_base_init(key: jax.Array, n: int, k: int, fan_in: int,
                           dtype=jnp.float32) -> jax.Array:
  """torch's ``right_inverse`` base for a tall (n, k) weight: an (n, n) orthogonal matrix.

  ``base = QR([W₀, N])`` (signs with diag(R) ≥ 0), W₀ ~ U(±1/√fan_in) as ``nn.Linear``'s
  default init, N ~ N(0, 1) of shape (n, n − k); so ``base[:, :k]`` orthonormalises W₀.
  """
  k_w, k_n = jax.random.split(key)
  bound = 1.0 / np.sqrt(fan_in)
  w0 = jax.random.uniform(k_w, (n, k), dtype, -bound, bound)
  noise = jax.random.normal(k_n, (n, n - k), dtype)
  return orthonormalize(jnp.concatenate([w0, noise], axis=1)).astype(dtype)


class HouseholderDense(nn.Module):
  """``y = x W + b`` with W from torch's Householder map (``householder_orthonormal``).

  The reference head ``parametrizations.orthogonal(nn.Linear(D, K))`` in Flax's (D, K) layout:
  params ``"kernel"`` = the reflectors X in the tall orientation ((D, K) if D ≥ K, i.e. torch's
  ``parametrizations.weight.original`` transposed; (K, D) otherwise), initialised as torch's
  ``right_inverse`` leaves it (zeros, −1 on the diagonal); ``"base"``: the fixed orthogonal
  (max(D, K))² matrix (stop-gradient, so Adam leaves it where it starts); ``"bias"``. At init
  W is the orthonormalised default ``nn.Linear`` weight.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d, k = x.shape[-1], self.features
    n, m = max(d, k), min(d, k)
    refl = self.param("kernel", lambda key, shape, dtype: -jnp.eye(*shape, dtype=dtype),
                      (n, m), jnp.float32)
    base = self.param("base", lambda key, shape, dtype: _householder_base_init(
        key, n, m, d, dtype), (n, n), jnp.float32)
    w = householder_orthonormal(refl, base)
    w = w if d >= k else w.T
    y = jnp.dot(x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32
                         ).astype(self.dtype)
    return y


class LinearSelfAttention(nn.Module):
  """Multi-head linear self-attention over the tokens of each image (see the module doc).

  Input (B, N, D) → output (B, N, D); tokens attend only within their own image.
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda name, feats, bias: nn.Dense(
        feats, use_bias=bias, dtype=self.dtype, kernel_init=trunc_normal_init(self.init_std),
        name=name)
    heads = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))
    inner = self.num_heads * self.head_dim
    q, k, v = (heads(dense(name, inner, False)(x)) for name in ("query", "key", "value"))
    # Softmaxes in float32 (also under bf16): q over each head's features, k over the tokens.
    q = jax.nn.softmax(q.astype(jnp.float32), axis=-1) * self.head_dim**-0.5
    k = jax.nn.softmax(k.astype(jnp.float32), axis=-3)
    context = jnp.einsum("bnhd,bnhe->bhde", k.astype(self.dtype), v)
    out = jnp.einsum("bnhd,bhde->bnhe", q.astype(self.dtype), context)
    return dense("out", x.shape[-1], True)(out.reshape(out.shape[:-2] + (inner,)))


class Block(nn.Module):
  """Pre-LayerNorm block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, exact)."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  init_std: float = 0.02
  layer_norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    dense = lambda name, feats: nn.Dense(
        feats, dtype=self.dtype, kernel_init=trunc_normal_init(self.init_std), name=name)
    x = x + LinearSelfAttention(self.num_heads, self.head_dim, self.dtype, self.init_std,
                                name="attn")(norm("norm1")(x))
    y = nn.gelu(dense("fc1", self.mlp_dim)(norm("norm2")(x)), approximate=False)
    return x + dense("fc2", x.shape[-1])(y)


class Psi(nn.Module):
  """ψ: (B, N, D) backbone features → (B, N, K) eigenfunction logits (SPEC §5).

  Field names match ``psi_config()``: ``Psi(**psi_config())``. D is taken from the input
  (3·C for the three concatenated backbone levels; 1152 for ViT-S). ``head`` picks the
  orthonormal head when ``orthogonal_head``: "householder" (default: the reference's map,
  ``HouseholderDense``; see the module doc) or "qr" (``OrthonormalDense``). ``remat`` wraps
  each block in ``flax.linen.remat``: the same parameters and values, its activations
  recomputed in the backward pass instead of kept (ψ's stored activations dominate the train
  step's peak memory at large batches; BUILD_NOTES "Ring form of the global kernel").

  ``__call__(x)`` returns ``(logits, out)``:
    logits: (B, N, K) float32 raw head outputs (training applies ``gumbel_softmax`` and
      ``l2_batch_normalize``; inference takes ``logits / τ_min`` and the argmax).
    out: dict of intermediates: ``"block00"``, ``"block01"``, … (B, N, D) block outputs,
      ``"pre_logits"`` (B, N, D) float32 features after the final LayerNorm, ``"logits"``.
  """
  k: int = 256
  num_blocks: int = 2
  num_heads: int = 18
  head_dim: int = 64
  mlp_dim: int = 576
  orthogonal_head: bool = True
  head: str = "householder"
  init_std: float = 0.02
  layer_norm_eps: float = 1e-5
  dtype: Dtype = "float32"
  remat: bool = False

  def _check(self, x: jax.Array) -> None:
    for name in ("k", "num_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"Psi needs a positive integer {name}, got {value!r}.")
    if isinstance(self.num_blocks, bool) or self.num_blocks < 0:
      raise ValueError(f"Psi needs num_blocks ≥ 0, got {self.num_blocks!r}.")
    if self.head not in HEADS:
      raise ValueError(f"Psi needs head 'qr' or 'householder', got {self.head!r}.")
    if x.ndim != 3:
      raise ValueError(f"Psi needs features of shape (B, N, D) (tokens per image), got shape "
                       f"{x.shape}; add a batch axis for a single image.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"Psi needs float features, got dtype {x.dtype}.")

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    self._check(x)
    dtype = jnp.dtype(self.dtype)
    out = {}
    x = x.astype(dtype)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.num_blocks):
      x = out[f"block{i:02d}"] = block(self.num_heads, self.head_dim, self.mlp_dim, dtype,
                                       self.init_std, self.layer_norm_eps,
                                       name=f"block{i:02d}")(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dtype, name="norm")(x)
    out["pre_logits"] = x.astype(jnp.float32)
    if self.orthogonal_head and self.head == "householder":
      head = HouseholderDense(self.k, dtype=dtype, name="head")
    elif self.orthogonal_head:
      head = OrthonormalDense(self.k, dtype=dtype, name="head")
    else:
      head = nn.Dense(self.k, dtype=dtype, kernel_init=trunc_normal_init(self.init_std),
                      name="head")
    logits = out["logits"] = head(x).astype(jnp.float32)
    return logits, out
