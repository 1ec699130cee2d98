"""NeuralEF segmentation (Deng & Luo): learned eigenfunctions ψ of a batch kernel (SPEC §5).

The pieces users compose (a training step: ψ → Gumbel-softmax → L2 batch normalisation →
``neuralef_loss``; evaluation: ``logits / τ_min`` → argmax):

- ``Psi``, ``psi_config``: ψ, linear-attention blocks and an orthonormal head (QR,
  ``OrthonormalDense``, or the reference's Householder map, ``HouseholderDense`` /
  ``householder_orthonormal``); its input ``psi_features(low, mid, high)`` from backbone blocks
  ``feature_levels(n)`` (``psi.py``).
- ``neuralef_loss``, ``l2_batch_normalize``, ``gumbel_softmax``, ``tau_schedule``,
  ``beta_for``, ``REFERENCE_T``; the original NeuralEF's ``rms_batch_normalize`` with
  ``ema_init`` / ``ema_update`` (``loss.py``).
- Eigenfunction objectives side by side, each ``fn(psi, kernel) -> (loss, aux)`` ordering
  eigenfunctions at its defaults: ``OBJECTIVES`` (``segmentor_loss`` with the preset
  ``SEGMENTOR_REFERENCE``, ``neuralef_original_loss``, ``nested_lora_loss``) and
  ``joint_nesting_weights`` (``objectives.py``).

Training and evaluation live in submodules (imported on demand, they pull in orbax, PIL and the
backbones): ``neuralef.config`` (the training config's one reader and checker, run once by the
caller), ``neuralef.features`` (what ψ and the kernel see of a batch of crops: the frozen
backbone's features), ``neuralef.feature_cache`` (those features of fixed views, cached on
disk), ``neuralef.step`` (state, optimiser, the shard_map train step; its kernel rows are
``graphs.batch_kernel_matmul``), ``neuralef.checkpoint`` (orbax checkpoints, config comparison),
``neuralef.train`` (the loop and data order), ``neuralef.evaluate`` (argmax clusters, K-means
baselines, matching, mIoU, overlays), ``neuralef.fidelity`` (ψ against the batch kernel's top-K
eigenvectors: cosines, principal angles, Rayleigh quotients; the training probe),
``neuralef.pod_plan`` (the sharded step compiled for a mesh with abstract inputs: per-device
FLOPs, memory, collective bytes).
"""

from spectral_jax.neuralef.loss import BETA_TIMES_K
from spectral_jax.neuralef.loss import REFERENCE_T
from spectral_jax.neuralef.loss import EMAState
from spectral_jax.neuralef.loss import beta_for
from spectral_jax.neuralef.loss import ema_init
from spectral_jax.neuralef.loss import ema_update
from spectral_jax.neuralef.loss import gumbel_softmax
from spectral_jax.neuralef.loss import l2_batch_normalize
from spectral_jax.neuralef.loss import neuralef_loss
from spectral_jax.neuralef.loss import rms_batch_normalize
from spectral_jax.neuralef.loss import tau_schedule
from spectral_jax.neuralef.objectives import OBJECTIVES
from spectral_jax.neuralef.objectives import SEGMENTOR_REFERENCE
from spectral_jax.neuralef.objectives import joint_nesting_weights
from spectral_jax.neuralef.objectives import nested_lora_loss
from spectral_jax.neuralef.objectives import neuralef_original_loss
from spectral_jax.neuralef.objectives import segmentor_loss
from spectral_jax.neuralef.psi import HouseholderDense
from spectral_jax.neuralef.psi import OrthonormalDense
from spectral_jax.neuralef.psi import Psi
from spectral_jax.neuralef.psi import feature_levels
from spectral_jax.neuralef.psi import householder_orthonormal
from spectral_jax.neuralef.psi import orthonormalize
from spectral_jax.neuralef.psi import psi_config
from spectral_jax.neuralef.psi import psi_features
from spectral_jax.neuralef.psi import trunc_normal_init

__all__ = [
    "BETA_TIMES_K", "EMAState", "HouseholderDense", "OBJECTIVES", "OrthonormalDense", "Psi",
    "REFERENCE_T", "SEGMENTOR_REFERENCE", "beta_for", "ema_init", "ema_update", "feature_levels",
    "gumbel_softmax", "householder_orthonormal", "joint_nesting_weights", "l2_batch_normalize", "nested_lora_loss",
    "neuralef_loss", "neuralef_original_loss", "orthonormalize", "psi_config", "psi_features",
    "rms_batch_normalize", "segmentor_loss", "tau_schedule", "trunc_normal_init",
]
