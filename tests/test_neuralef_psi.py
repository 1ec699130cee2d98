"""Tests for spectral_jax.neuralef.psi: ψ's forward pass, head parametrisation, init, config.

The forward pass is checked against an independent NumPy implementation of the reference
architecture (pre-LN linear-attention blocks as in lucidrains' ``linear_attn``, exact GELU,
final LayerNorm, head W = Q of QR(V) with positive diag(R)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erf

from spectral_jax.neuralef import psi as psi_lib

SMALL = dict(k=8, num_blocks=2, num_heads=2, head_dim=4, mlp_dim=12, head="qr")  # the QR option
B, N, D = 2, 5, 24


@pytest.fixture(scope="module")
def small():
  """(jitted apply, random variables, x) of a small ψ; one compile shared by the tests.

  The parameters are random draws (N(0, 0.2²), LayerNorm scales around 1), not the init, so
  that biases, LayerNorm affine terms and the head all matter (and init compiles are saved).
  """
  model = psi_lib.Psi(**SMALL)
  x = jax.random.normal(jax.random.key(1), (B, N, D))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.asarray(0.2 * rng.normal(size=a.shape) + (path[-1].key == "scale"),
                                  jnp.float32), shapes)
  return jax.jit(model.apply), variables, x


@pytest.fixture(scope="module")
def initialized():
  """The initial variables of a one-block ψ."""
  return jax.jit(psi_lib.Psi(**{**SMALL, "num_blocks": 1}).init)(
      jax.random.key(0), jnp.zeros((B, N, D)))


def _np_layer_norm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _np_forward(params, x, num_heads, head_dim):
  """ψ in NumPy float64, written from the reference formulas."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  b, n, _ = x.shape
  for name in sorted(k for k in p if k.startswith("block")):
    blk = p[name]
    h = _np_layer_norm(x, blk["norm1"])
    q, k, v = (
        (h @ blk["attn"][w]["kernel"]).reshape(b, n, num_heads, head_dim).transpose(0, 2, 1, 3)
        for w in ("query", "key", "value"))
    q = _np_softmax(q, -1) * head_dim**-0.5  # over features
    k = _np_softmax(k, -2)                   # over tokens
    attn = q @ (k.transpose(0, 1, 3, 2) @ v)  # (b, h, n, d)
    attn = attn.transpose(0, 2, 1, 3).reshape(b, n, -1)
    x = x + attn @ blk["attn"]["out"]["kernel"] + blk["attn"]["out"]["bias"]
    h = _np_layer_norm(x, blk["norm2"]) @ blk["fc1"]["kernel"] + blk["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    x = x + h @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
  feats = _np_layer_norm(x, p["norm"])
  q, r = np.linalg.qr(p["head"]["kernel"])
  w = q * np.sign(np.diag(r))
  return feats @ w + p["head"]["bias"], feats


def test_forward_matches_numpy_reference(small):
  apply, variables, x = small
  params = variables["params"]
  logits, out = apply(variables, x)
  ref_logits, ref_feats = _np_forward(params, x, SMALL["num_heads"], SMALL["head_dim"])
  assert logits.shape == (B, N, SMALL["k"]) and logits.dtype == jnp.float32
  assert set(out) == {"block00", "block01", "pre_logits", "logits"}
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["pre_logits"], ref_feats, rtol=1e-4, atol=1e-4)


def test_attention_stays_within_each_image(small):
  apply, variables, x = small
  logits, _ = apply(variables, x)
  changed = x.at[1].set(jax.random.normal(jax.random.key(3), (N, D)))
  logits2, _ = apply(variables, changed)
  np.testing.assert_array_equal(logits2[0], logits[0])
  assert np.abs(logits2[1] - logits[1]).max() > 1e-3


@pytest.mark.parametrize("d, k", [(48, 16), (8, 24)])
def test_head_stays_orthonormal_under_adam(d, k):
  """W = orthonormalize(V) after 200 large Adam steps: ‖WWᵀ − I‖_F < 1e-5 (f32)."""
  head = psi_lib.OrthonormalDense(k)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, d)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(256, k)), jnp.float32)
  # A generic small V (not an orthonormal init), so Adam's steps of 3e-2 turn W a lot.
  params = {"params": {"kernel": jnp.asarray(0.02 * rng.normal(size=(d, k)), jnp.float32),
                       "bias": jnp.zeros((k,), jnp.float32)}}
  w0 = np.asarray(psi_lib.orthonormalize(params["params"]["kernel"]), np.float64)
  opt = optax.adam(3e-2)
  loss_fn = lambda p: jnp.mean((head.apply(p, x) - target)**2)

  def step(carry, _):
    p, s = carry
    loss, grad = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grad, s)
    return (optax.apply_updates(p, updates), s), loss

  (params, _), losses = jax.jit(lambda c: jax.lax.scan(step, c, None, length=200))(
      (params, opt.init(params)))
  w = np.asarray(psi_lib.orthonormalize(params["params"]["kernel"]), np.float64)
  gram = w.T @ w if d >= k else w @ w.T
  assert np.linalg.norm(gram - np.eye(len(gram))) < 1e-5
  assert np.linalg.norm(w - w0) > 0.5 and losses[-1] < losses[0]  # it did train


def test_head_orthonormal_at_init_and_map_keeps_orthonormal_input(initialized):
  v = initialized["params"]["head"]["kernel"]
  w = np.asarray(psi_lib.orthonormalize(v), np.float64)
  np.testing.assert_allclose(w.T @ w, np.eye(SMALL["k"]), atol=1e-6)
  np.testing.assert_allclose(w, v, atol=1e-6)  # init V is already orthonormal: W = V
  np.testing.assert_array_equal(initialized["params"]["head"]["bias"], 0.0)


def test_init_statistics(initialized):
  blk = initialized["params"]["block00"]
  kernels = np.concatenate([
      np.ravel(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(blk)[0]
      if path[-1].key == "kernel"])
  assert kernels.size > 1300  # std estimate good to ~2%
  assert abs(kernels.std() - 0.02) < 0.1 * 0.02 and abs(kernels.mean()) < 2e-3
  np.testing.assert_array_equal(blk["fc1"]["bias"], 0.0)
  np.testing.assert_array_equal(blk["attn"]["out"]["bias"], 0.0)
  np.testing.assert_array_equal(blk["norm1"]["scale"], 1.0)
  np.testing.assert_array_equal(blk["norm2"]["bias"], 0.0)
  # timm trunc_normal_: cut at ±2 in absolute value, not ±2 std.
  wide = jax.jit(psi_lib.trunc_normal_init(std=1.0), static_argnums=1)(jax.random.key(1),
                                                                       (200000,))
  assert float(jnp.max(jnp.abs(wide))) <= 2.0
  np.testing.assert_allclose(float(jnp.std(wide)), 0.8796, atol=0.01)  # std of N(0,1)|±2


def test_reference_config_shapes():
  """psi_config(): 2 blocks, 18 × 64 heads (1152), MLP 576, K = 256 on 3·384 inputs."""
  cfg = psi_lib.psi_config()
  shapes = jax.eval_shape(psi_lib.Psi(**cfg).init, jax.random.key(0),
                          jnp.zeros((2, 4, 1152)))["params"]
  assert sorted(shapes) == ["block00", "block01", "head", "norm"]
  assert shapes["block01"]["attn"]["query"]["kernel"].shape == (1152, 1152)
  assert "bias" not in shapes["block01"]["attn"]["query"]
  assert shapes["block01"]["fc1"]["kernel"].shape == (1152, 576)
  assert shapes["head"]["kernel"].shape == (1152, 256)
  assert cfg.head == "householder" and shapes["head"]["base"].shape == (1152, 1152)
  assert cfg.layer_norm_eps == 1e-5 and cfg.init_std == 0.02 and cfg.orthogonal_head


def test_bfloat16_compute_is_close_to_float32(small):
  apply, variables, x = small
  logits, _ = apply(variables, x)
  bf16 = psi_lib.Psi(**SMALL, dtype="bfloat16")
  logits16, out16 = jax.jit(bf16.apply)(variables, x)
  assert logits16.dtype == jnp.float32 and out16["block00"].dtype == jnp.bfloat16
  err = np.abs(np.asarray(logits16) - np.asarray(logits)).max() / np.abs(logits).max()
  assert err < 3e-2, err


def test_remat_keeps_parameters_values_and_gradients(small):
  """psi.remat recomputes each block in the backward pass: the same parameter tree, outputs and
  gradients, and the blocks' activations are no longer among the saved residuals."""
  apply, variables, x = small
  remat = psi_lib.Psi(**SMALL, remat=True)
  assert (jax.tree_util.tree_structure(jax.eval_shape(remat.init, jax.random.key(0), x))
          == jax.tree_util.tree_structure(variables))
  loss = lambda module: lambda v: jnp.sum(jnp.sin(module.apply(v, x)[0]))
  plain_value, plain_grad = jax.value_and_grad(loss(psi_lib.Psi(**SMALL)))(variables)
  value, grad = jax.value_and_grad(loss(remat))(variables)
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  for g, p in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(plain_grad)):
    # float32 recomputation may fuse in another order: agreement to 1e-5 of each leaf's scale
    np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5 * float(np.abs(p).max()))
  # jax.vjp's backward function is a pytree whose leaves are the residuals it keeps
  saved = lambda module: sum(np.size(r) for r in
                             jax.tree_util.tree_leaves(jax.vjp(loss(module), variables)[1]))
  assert saved(remat) < saved(psi_lib.Psi(**SMALL))


def test_plain_head_option(small):
  _, _, x = small
  model = psi_lib.Psi(**{**SMALL, "num_blocks": 0, "orthogonal_head": False})
  variables = jax.jit(model.init)(jax.random.key(0), x)
  kernel = variables["params"]["head"]["kernel"]
  assert abs(float(jnp.std(kernel)) - 0.02) < 0.01
  assert model.apply(variables, x)[0].shape == (B, N, SMALL["k"])


@pytest.mark.parametrize("x, overrides, error, match", [
    (jnp.zeros((N, D)), {}, ValueError, "shape \\(B, N, D\\)"),
    (jnp.zeros((B, N, D), jnp.int32), {}, TypeError, "float features"),
    (jnp.zeros((B, N, D)), {"k": 0}, ValueError, "positive integer k"),
])
def test_bad_input_raises(x, overrides, error, match):
  with pytest.raises(error, match=match):
    psi_lib.Psi(**{**SMALL, **overrides}).init(jax.random.key(0), x)


def test_psi_features_concatenates_levels_in_reference_order():
  a, b, c = (np.full((2, 3, 4), v, np.float32) for v in (1.0, 2.0, 3.0))
  x = psi_lib.psi_features(a, b, c)
  assert x.shape == (2, 3, 12)
  np.testing.assert_array_equal(x[0, 0], [1.0] * 4 + [2.0] * 4 + [3.0] * 4)
  assert psi_lib.feature_levels(12) == (0, 6)
  with pytest.raises(ValueError, match="one shape"):
    psi_lib.psi_features(a, b, c[:, :2])
