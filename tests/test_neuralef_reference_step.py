"""The NeuralEF train step against a PyTorch transcription of the reference step (issue 22 item 3).

Reference: the segmentor's step written out in PyTorch: ψ (pre-LayerNorm linear-attention blocks,
``torch.nn.functional`` ops) with its head ``torch.nn.utils.parametrizations.orthogonal(
nn.Linear(D, K))`` (torch's own Householder map and trivialisation), Gumbel-softmax, the L2 batch
normalisation ``ret / ret.norm(dim=[0, 1]).clamp(min=1)``, ``cal_neuralef_loss`` with autograd
(R̂ from ``psi.detach()``) and ``torch.optim.Adam`` under the cosine learning rate. Both start
from the same parameters (the JAX init copied into torch, the head's reflectors and base
included) and see the same batch kernel and the same Gumbel draws (the JAX step's per-image keys,
drawn here and handed to torch).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import neuralef as configs
from spectral_jax import graphs
from spectral_jax.neuralef import psi as psi_lib
from spectral_jax.neuralef import step as step_lib

STEPS = 20
GRID, C, D, B = (4, 4), 4, 12, 4


def _batch(seed=0):
  """Tokens from 4 clusters in feature space (a kernel with structure), ψ inputs of D dims."""
  rng = np.random.default_rng(seed)
  n = GRID[0] * GRID[1]
  centres = rng.normal(size=(4, C))
  graph = centres[rng.integers(0, 4, size=(B, n))] + 0.3 * rng.normal(size=(B, n, C))
  psi_in = np.concatenate([graph, graph @ rng.normal(size=(C, D - C))], axis=-1)
  return {"psi_inputs": psi_in.astype(np.float32), "graph_features": graph.astype(np.float32),
          "image_grids": rng.uniform(size=(B, *GRID, 3)).astype(np.float32)}


def _dense_kernel(config, batch) -> np.ndarray:
  """The step's batch kernel G (n, n), read off its matmul form."""
  g = config.graph
  matmul = graphs.batch_kernel_matmul(
      jnp.asarray(batch["graph_features"]), jnp.asarray(batch["image_grids"]), k=int(g.k),
      alpha=float(g.alpha), n_neighbors=tuple(g.n_neighbors),
      distance_weights=tuple(g.distance_weights), block_size=g.block_size, form=g.form)
  n = B * GRID[0] * GRID[1]
  return np.asarray(matmul(jnp.eye(n, dtype=jnp.float32)), np.float64)


def _gumbel_draws(state, config, steps: int) -> list[np.ndarray]:
  """The noise the JAX step draws at each step: image b from fold_in(fold_in(rng, s), b)."""
  base = jax.random.wrap_key_data(state.rng)
  shape = (GRID[0] * GRID[1], int(config.psi.k))
  return [np.stack([np.asarray(jax.random.gumbel(
      jax.random.fold_in(jax.random.fold_in(base, s), b), shape, jnp.float32))
      for b in range(B)]) for s in range(steps)]


class _TorchReferenceStep:
  """The reference step in PyTorch (float64), from the JAX parameters ``params``."""

  def __init__(self, torch, params, config):
    self.torch, self.config = torch, config
    nn, dt = torch.nn, torch.float64
    tensor = lambda x: nn.Parameter(torch.tensor(np.asarray(x), dtype=dt))
    self.params = jax.tree.map(tensor, {k: v for k, v in params.items() if k != "head"})
    k = int(config.psi.k)
    head = nn.Linear(D, k).to(dt)
    with torch.no_grad():
      head.bias.copy_(torch.tensor(np.asarray(params["head"]["bias"])))
    self.head = nn.utils.parametrizations.orthogonal(head)
    param = self.head.parametrizations.weight
    assert param[0].orthogonal_map.name == "householder"  # torch's map for a (K, D) weight
    with torch.no_grad():  # Flax keeps the tall (D, K) reflectors; torch's original is (K, D)
      param.original.copy_(torch.tensor(np.asarray(params["head"]["kernel"]).T))
      param[0].base.copy_(torch.tensor(np.asarray(params["head"]["base"])))
    leaves = jax.tree.leaves(self.params) + list(self.head.parameters())
    self.opt = torch.optim.Adam(leaves, lr=config.optim.learning_rate)

  def psi(self, x):
    torch, cfg, p = self.torch, self.config.psi, self.params
    ln = lambda y, q: torch.nn.functional.layer_norm(y, (y.shape[-1],), q["scale"], q["bias"],
                                                     cfg.layer_norm_eps)
    b, n, _ = x.shape
    heads = lambda y: y.view(b, n, cfg.num_heads, cfg.head_dim)
    for i in range(cfg.num_blocks):
      blk = p[f"block{i:02d}"]
      a = blk["attn"]
      h = ln(x, blk["norm1"])
      q = heads(h @ a["query"]["kernel"]).softmax(dim=-1) * cfg.head_dim**-0.5
      k = heads(h @ a["key"]["kernel"]).softmax(dim=1)  # over the image's tokens
      v = heads(h @ a["value"]["kernel"])
      out = torch.einsum("bnhd,bhde->bnhe", q, torch.einsum("bnhd,bnhe->bhde", k, v))
      x = x + out.reshape(b, n, -1) @ a["out"]["kernel"] + a["out"]["bias"]
      h = ln(x, blk["norm2"])
      h = torch.nn.functional.gelu(h @ blk["fc1"]["kernel"] + blk["fc1"]["bias"])
      x = x + h @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
    return self.head(ln(x, p["norm"]))

  def step(self, s: int, x, kernel, gumbel) -> float:
    torch, cfg = self.torch, self.config
    total, lc = int(cfg.train.num_steps), cfg.loss
    cosine = lambda lo, hi: lo + (hi - lo) * (1 + np.cos(np.pi * min(s, total) / total)) / 2
    tau = cosine(lc.tau_min, lc.tau_max)
    for group in self.opt.param_groups:
      group["lr"] = cosine(cfg.optim.final_learning_rate, cfg.optim.learning_rate)
    soft = ((self.psi(x) + gumbel) / tau).softmax(dim=-1)
    soft = soft / soft.norm(dim=(0, 1)).clamp(min=1)
    k = soft.shape[-1]
    p = soft.reshape(-1, k) * lc.t**0.5
    r = p.T @ kernel @ p
    r_hat = p.detach().T @ kernel @ p
    beta = lc.beta_times_k / k
    loss = -torch.trace(r) / k + beta * torch.triu(r_hat, 1).pow(2).sum() / k
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    return loss.item()


def _both_runs(torch, config, state, reference_params, batch):
  """Losses of STEPS JAX steps from ``state`` and of the torch reference from
  ``reference_params``, on one batch with the JAX step's Gumbel draws: (ours, theirs, state,
  reference)."""
  reference = _TorchReferenceStep(torch, reference_params, config)
  kernel = torch.tensor(_dense_kernel(config, batch))
  x = torch.tensor(batch["psi_inputs"], dtype=torch.float64)
  step = step_lib.make_train_step(config)
  ours, theirs = [], []
  for s, gumbel in enumerate(_gumbel_draws(state, config, STEPS)):
    state, metrics = step(state, batch)
    ours.append(float(metrics["loss"]))
    theirs.append(reference.step(s, x, kernel, torch.tensor(gumbel, dtype=torch.float64)))
  return np.asarray(ours), np.asarray(theirs), state, reference


def test_step_tracks_the_torch_reference_step_for_20_steps(torch):
  config = configs.get_config("test")
  assert config.psi.head == "householder"  # the segmentor's default head is the reference's
  config.train.num_steps = STEPS
  batch = _batch()
  state = step_lib.init_state(config, D)
  ours, theirs, state, reference = _both_runs(torch, config, state, state.params, batch)
  assert np.abs(theirs[-1] - theirs[0]) > 1e-2 * np.abs(theirs[0])  # training moves the loss
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)
  # and the head's weight after 20 updates is torch's
  head = state.params["head"]
  w = np.asarray(psi_lib.householder_orthonormal(head["kernel"], head["base"]))
  np.testing.assert_allclose(w, reference.head.weight.detach().numpy().T, atol=1e-4)


@pytest.mark.slow
def test_qr_head_does_not_track_the_reference(torch):
  """The comparison discriminates: the same run with the QR head parts from the reference."""
  config = configs.get_config("test")
  config.train.num_steps = STEPS
  batch = _batch()
  householder = step_lib.init_state(config, D)
  config.psi.head = "qr"
  state = step_lib.init_state(config, D)
  # QR's V starts where the Householder head's W does: same starting weights, same dynamics?
  w0 = np.asarray(householder.params["head"]["base"])[:, :int(config.psi.k)]
  state = state.replace(params={**state.params, "head": {
      "kernel": jnp.asarray(w0), "bias": householder.params["head"]["bias"]}})
  state = state.replace(opt_state=step_lib.make_optimizer(config).init(state.params))
  ours, theirs, _, _ = _both_runs(torch, config, state, householder.params, batch)
  rel = np.abs(ours - theirs) / np.abs(theirs)
  assert rel[0] < 1e-5  # the same starting point
  assert rel.max() > 1e-3  # ... and other dynamics

