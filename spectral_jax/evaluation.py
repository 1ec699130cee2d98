"""Deprecated import path, kept for one release: use :mod:`spectral_jax.protocols` and
:mod:`spectral_jax.dsm.evaluate`.

This module only re-exports. The papers' dataset-level scoring protocols (CorLoc, object
recall, AP50, single-object scores and maxFβ, confusion counts, the matched mIoU, the sliding
window) moved to :mod:`spectral_jax.protocols`; running DSM over a dataset (``evaluate_dsm``,
``Evaluation``, ``check_semantic_setup``, ``semantic_over_dataset``, ``PAPER``) moved to
:mod:`spectral_jax.dsm.evaluate`; the CorLoc hit rule is ``metrics.corloc_hits``
(``corloc_hit`` below is ``protocols.corloc_per_image`` of one image). Nothing in the package
imports this module (``dsm.*`` must never import it: that was an import circle).
"""

from __future__ import annotations

from spectral_jax.dsm.evaluate import PAPER
from spectral_jax.dsm.evaluate import Evaluation
from spectral_jax.dsm.evaluate import check_semantic_setup
from spectral_jax.dsm.evaluate import evaluate_dsm
from spectral_jax.dsm.evaluate import semantic_over_dataset
from spectral_jax.protocols import BETA_SQ
from spectral_jax.protocols import CORLOC_THRESHOLD
from spectral_jax.protocols import F_THRESHOLDS
from spectral_jax.protocols import SingleObjectScores
from spectral_jax.protocols import ap50
from spectral_jax.protocols import confusion_counts
from spectral_jax.protocols import corloc
from spectral_jax.protocols import corloc_per_image
from spectral_jax.protocols import f_beta
from spectral_jax.protocols import object_recall
from spectral_jax.protocols import precision_recall
from spectral_jax.protocols import semantic_scores
from spectral_jax.protocols import sliding_window
from spectral_jax.protocols import window_starts


def corloc_hit(box, gt_boxes, threshold: float = CORLOC_THRESHOLD) -> tuple[bool, float]:
  """Deprecated: ``protocols.corloc_per_image`` of one image → (hit, best IoU)."""
  hits, best = corloc_per_image([box], [gt_boxes], threshold)
  return bool(hits[0]), float(best[0])


__all__ = [
    "BETA_SQ", "CORLOC_THRESHOLD", "F_THRESHOLDS", "PAPER", "Evaluation", "SingleObjectScores",
    "ap50", "check_semantic_setup", "confusion_counts", "corloc", "corloc_hit",
    "corloc_per_image", "evaluate_dsm",
    "f_beta", "object_recall", "precision_recall", "semantic_over_dataset", "semantic_scores",
    "sliding_window", "window_starts",
]
