"""The deprecated import path spectral_jax.evaluation: thin re-exports of protocols and
dsm.evaluate (kept one release), and corloc_hit composed from protocols.corloc_per_image."""

import numpy as np
import pytest

from spectral_jax import dsm, evaluation, protocols
from spectral_jax.dsm import evaluate as dsm_evaluate


def test_every_public_name_is_the_new_modules_object():
  moved = {"PAPER": dsm_evaluate, "Evaluation": dsm_evaluate, "evaluate_dsm": dsm_evaluate,
           "check_semantic_setup": dsm_evaluate, "semantic_over_dataset": dsm_evaluate}
  for name in evaluation.__all__:
    if name == "corloc_hit":
      continue
    home = moved.get(name, protocols)
    assert getattr(evaluation, name) is getattr(home, name), name
  assert evaluation.evaluate_dsm is dsm.evaluate_dsm


def test_corloc_hit_of_one_image():
  gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])
  assert evaluation.corloc_hit([50, 50, 60, 65], gt) == (True, pytest.approx(100 / 150))
  assert evaluation.corloc_hit([0, 0, 7, 7], gt[:1]) == (False, pytest.approx(0.49))
  assert evaluation.corloc_hit([0, 0, 5, 5], np.zeros((0, 4))) == (False, 0.0)
