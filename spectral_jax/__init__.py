"""spectral_jax: spectral methods on self-supervised ViT features, in JAX.

Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022) and NeuralEF segmentation (Deng & Luo):
images -> backbones -> features -> graphs -> eigensolvers / neuralef -> dsm -> metrics.

Subpackages (each with a curated ``__all__``; import them explicitly, e.g.
``from spectral_jax import graphs``):

* ``backbones``: Flax ViTs (DINO v1, timm augreg, DINOv2), safe weight readers, features.
* ``graphs``: DSM affinities, NeuralEF batch kernels (blockwise k-NN), normalisation, jraph export.
* ``neuralef``: NeuralEF's ψ and loss; ``neuralef.config`` / ``.features`` / ``.feature_cache`` /
  ``.train`` / ``.evaluate``.
* ``datasets``: image files (``datasets.images``), the bundled sample photos
  (``datasets.samples``), the benchmarks' readers, training crops and the grain pipeline.
  (``data`` is a deprecated alias of ``datasets.images`` / ``datasets.samples``.)

Modules:

* ``eigensolvers``: LOBPCG (generalised, smallest/largest, preconditioned, batched) and the
  DSM Laplacian eigenvectors.
* ``dsm``: the DSM stages (localisation, multi-region and semantic segmentation).
* ``clustering`` (K-means), ``regions`` (mask geometry), ``crf`` (dense CRF), ``metrics``.
* ``image_ops``: all image resampling (patch-grid resize, PIL host helpers).
* ``viz``: overlays and report pages.
* ``protocols``: the papers' dataset-level scoring (CorLoc, recall, AP50, maxFβ, matched mIoU,
  sliding window); ``evaluation`` is its deprecated alias path.
* ``testing``: SciPy/NumPy references and timing helpers shared by tests and benchmarks.
"""

__version__ = "0.1.0"
