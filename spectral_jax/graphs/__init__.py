"""Affinity graphs and kernels over patch features and pixels (SPEC §2).

Every function is pure and jit-able; leading batch dimensions are written ``...``.

DSM (Melas-Kyriazi et al. 2022, §3.1): per image, ``W = W_feat + λ·W_knn`` with
``W_feat = relu(F̂ F̂ᵀ)``; the eigenproblem is ``(D − W) y = λ D y``.
NeuralEF segmentation (Deng & Luo, eq. 6): per batch, ``G = G₁ + α·G₂``.

Modules (everything public is re-exported here; import from ``spectral_jax.graphs``):

* ``affinity``: DSM graphs ``feature_affinity`` / ``colour_knn_affinity`` / ``dsm_affinity``, the
  colour–position search ``colour_knn_indices``, and ``degrees`` / ``normalize_symmetric``
  (``D^-½ W D^-½`` with the zero-degree guard).
* ``knn``: k-nearest-neighbour rows computed in blocks of query rows, so that peak memory is
  O(block_size·n + m·k) instead of O(n²): ``topk_cosine_rows`` (with ``knn_degrees`` and
  ``knn_rows_matmul`` for kernel rows sharded over devices) and ``knn_feature_graph``.
* ``kernel``: NeuralEF's ``pixel_graph`` and batch kernel ``neuralef_kernel``, and one device's
  rows of it as a matmul, ``batch_kernel_matmul`` (sharded over a mapped axis).
* ``export``: ``to_graphs_tuple`` (jraph).
* ``resize_to_grid`` (an image brought to the patch grid, PIL or PyTorch bilinear) lives in
  ``spectral_jax.image_ops`` and is re-exported here.

Sparse graphs are ``jax.experimental.sparse.BCOO`` matrices (the primary sparse form: it has static
shapes, works under jit/vmap and in ``@``/``todense``). Their ``nse`` is a static upper bound:
entries may repeat (repeats **sum**, as in SciPy's COO), and the pixel graph stores its OR-ed
duplicates as explicit zeros. ``to_graphs_tuple`` turns a 2-D BCOO matrix into a
``jraph.GraphsTuple``.

Neighbour ties: every k-nearest-neighbour search here ranks by score with ``jax.lax.top_k``, so
among equal scores the **lower index wins** (a stable sort). Colour–position distances are
computed from integer grid offsets (see ``colour_knn_indices``), so neighbours at the same
geometric distance in a flat-colour region tie exactly and the rule decides. (The references
leave ties to their KD-tree / ``torch.topk``.)

Validation: ranks, dtypes and ``k`` are checked at trace time (ValueError/TypeError). NaN/Inf
checks and the [0, 1] range check of images run only on concrete inputs, i.e. in eager calls, not
under ``jit``/``shard_map`` tracing (a traced value cannot be inspected without a host sync).
"""

# pylint: disable=g-importing-member
from spectral_jax.graphs._constants import DSM_DISTANCE_WEIGHTS as DSM_DISTANCE_WEIGHTS
from spectral_jax.graphs._constants import DSM_N_NEIGHBORS as DSM_N_NEIGHBORS
from spectral_jax.graphs._constants import MIN_DEGREE as MIN_DEGREE
from spectral_jax.graphs._constants import NEURALEF_ALPHA as NEURALEF_ALPHA
from spectral_jax.graphs._constants import NEURALEF_DISTANCE_WEIGHTS as NEURALEF_DISTANCE_WEIGHTS
from spectral_jax.graphs._constants import NEURALEF_K as NEURALEF_K
from spectral_jax.graphs._constants import NEURALEF_GLOBAL_FORMS as NEURALEF_GLOBAL_FORMS
from spectral_jax.graphs._constants import NEURALEF_KERNEL_FORMS as NEURALEF_KERNEL_FORMS
from spectral_jax.graphs._constants import NEURALEF_N_NEIGHBORS as NEURALEF_N_NEIGHBORS
from spectral_jax.graphs.affinity import colour_knn_affinity as colour_knn_affinity
from spectral_jax.graphs.affinity import colour_knn_indices as colour_knn_indices
from spectral_jax.graphs.affinity import degrees as degrees
from spectral_jax.graphs.affinity import dsm_affinity as dsm_affinity
from spectral_jax.graphs.affinity import feature_affinity as feature_affinity
from spectral_jax.graphs.affinity import l2_normalize as l2_normalize
from spectral_jax.graphs.affinity import normalize_symmetric as normalize_symmetric
from spectral_jax.graphs.export import to_graphs_tuple as to_graphs_tuple
from spectral_jax.graphs.kernel import batch_kernel_matmul as batch_kernel_matmul
from spectral_jax.graphs.kernel import neuralef_kernel as neuralef_kernel
from spectral_jax.graphs.kernel import pixel_graph as pixel_graph
from spectral_jax.graphs.knn import knn_degrees as knn_degrees
from spectral_jax.graphs.knn import knn_feature_graph as knn_feature_graph
from spectral_jax.graphs.knn import knn_rows_matmul as knn_rows_matmul
from spectral_jax.graphs.knn import ring_topk_cosine_rows as ring_topk_cosine_rows
from spectral_jax.graphs.knn import topk_cosine_rows as topk_cosine_rows
from spectral_jax.image_ops import resize_to_grid as resize_to_grid
# pylint: enable=g-importing-member

__all__ = (
    "DSM_DISTANCE_WEIGHTS",
    "DSM_N_NEIGHBORS",
    "MIN_DEGREE",
    "NEURALEF_ALPHA",
    "NEURALEF_DISTANCE_WEIGHTS",
    "NEURALEF_K",
    "NEURALEF_GLOBAL_FORMS",
    "NEURALEF_KERNEL_FORMS",
    "NEURALEF_N_NEIGHBORS",
    "batch_kernel_matmul",
    "colour_knn_affinity",
    "colour_knn_indices",
    "degrees",
    "dsm_affinity",
    "feature_affinity",
    "knn_degrees",
    "knn_feature_graph",
    "knn_rows_matmul",
    "ring_topk_cosine_rows",
    "l2_normalize",
    "neuralef_kernel",
    "normalize_symmetric",
    "pixel_graph",
    "resize_to_grid",
    "to_graphs_tuple",
    "topk_cosine_rows",
)
