"""The papers' protocols (spectral_jax.evaluation) on hand-made cases and NumPy references."""

import numpy as np
import pytest

from spectral_jax import evaluation


def _np_iou(a, b):
  w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def test_corloc_hits_any_box_at_half_iou():
  gt = {"a": np.array([[0, 0, 10, 10], [50, 50, 60, 60]]),   # hit on the second box only
        "b": np.array([[0, 0, 10, 10]]),                     # IoU 50/100 = 0.5: a hit (≥)
        "c": np.array([[0, 0, 10, 10]]),                     # IoU 49/100 < 0.5: a miss
        "d": np.zeros((0, 4))}                               # no box: a miss, still counted
  pred = {"a": [50, 50, 60, 61], "b": [0, 0, 10, 5], "c": [0, 0, 7, 7], "d": [0, 0, 5, 5]}
  assert _np_iou(pred["b"], gt["b"][0]) == 0.5 and _np_iou(pred["c"], gt["c"][0]) == 0.49
  out = evaluation.corloc(pred, gt)
  assert out["num_hits"] == 2 and out["num_images"] == 4 and out["corloc"] == 0.5
  with pytest.raises(ValueError, match="no ground truth for 1"):
    evaluation.corloc({"x": [0, 0, 1, 1]}, gt)


def _np_single_object(preds, gts, beta_sq=0.3):
  """DSM object-segmentation/metrics.py, re-derived with a loop over the 254 thresholds."""
  ious, accs, f = [], [], []
  for p, t in zip(preds, gts):
    hard = p > 0.5
    union = (hard | t).sum()
    ious.append((hard & t).sum() / union if union else 0.0)
    accs.append((hard == t).mean())
    row = []
    for k in range(1, 255):
      m = p > k / 255
      tp = (m & t).sum()
      prec = tp / m.sum() if m.sum() else 1.0
      rec = tp / t.sum() if t.sum() else 1.0
      den = beta_sq * prec + rec
      row.append((1 + beta_sq) * prec * rec / den if den else 0.0)
    f.append(row)
  return np.mean(ious), np.mean(accs), np.max(np.mean(f, axis=0))


def test_single_object_scores_match_a_numpy_loop(rng):
  gts = [rng.random((20, 30)) > 0.6, np.zeros((16, 16), bool), rng.random((12, 9)) > 0.3]
  preds = [np.clip(g * 0.7 + rng.random(g.shape) * 0.5, 0, 1) for g in gts]
  preds[1] = np.zeros((16, 16))          # both empty: IoU 0, precision = recall = 1
  scores = evaluation.SingleObjectScores()
  for p, t in zip(preds, gts):
    scores.add(p, t)
  got = scores.result()
  iou, acc, fmax = _np_single_object(preds, gts)
  assert got["num_images"] == 3 and got["num_thresholds"] == 254
  np.testing.assert_allclose([got["iou"], got["accuracy"], got["max_f_beta"]], [iou, acc, fmax],
                             rtol=1e-6)


def test_single_object_hand_made_binary_case():
  t = np.zeros((4, 4), bool)
  t[:2] = True                       # 8 object pixels
  p = np.zeros((4, 4), bool)
  p[:1] = True                       # 4 predicted, all inside: P = 1, R = 0.5
  s = evaluation.SingleObjectScores()
  one = s.add(p, t)
  assert one["iou"] == 0.5 and one["accuracy"] == 0.75
  f = 1.3 * 1 * 0.5 / (0.3 * 1 + 0.5)
  assert one["f_beta"] == pytest.approx(f)
  assert s.result()["max_f_beta"] == pytest.approx(f)   # binary: every threshold equal
  with pytest.raises(ValueError, match="must be one"):
    s.add(p[:3], t)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    s.add(p * 2.0, t)


def test_semantic_scores_hungarian_on_a_hand_made_confusion():
  # 3 classes × 3 clusters: cluster 2 is class 0, cluster 0 is class 1, cluster 1 is class 2.
  conf = np.array([[1, 0, 9],
                   [8, 2, 0],
                   [0, 7, 3]])
  out = evaluation.semantic_scores(conf)
  assert out["lookup"] == [1, 2, 0]
  matched = np.array([[9, 1, 0], [0, 8, 2], [3, 0, 7]])   # columns reordered by hand
  tp = np.diag(matched)
  iou = tp / (matched.sum(0) + matched.sum(1) - tp)
  assert out["miou"] == pytest.approx(iou.mean())
  assert out["pixel_accuracy"] == pytest.approx(24 / 30)
  np.testing.assert_allclose(out["iou_per_class"], iou, rtol=1e-6)


def test_semantic_majority_vote_maps_many_clusters_to_one_class():
  conf = np.array([[5, 4, 0, 0], [0, 0, 6, 1]])
  out = evaluation.semantic_scores(conf, matching="majority")
  assert out["lookup"] == [0, 0, 1, 1] and out["pixel_accuracy"] == 1.0 and out["miou"] == 1.0
  with pytest.raises(ValueError, match="cannot map one-to-one"):
    evaluation.semantic_scores(conf)


def test_confusion_counts_skip_ignore_and_check_ranges():
  t = np.array([[0, 1, 255], [2, 2, 1]])
  p = np.array([[1, 1, 0], [0, 2, 2]])
  c = evaluation.confusion_counts(t, p, 3, 3)
  ref = np.zeros((3, 3), int)
  for a, b in zip(t.ravel(), p.ravel()):
    if a != 255:
      ref[a, b] += 1
  np.testing.assert_array_equal(c, ref)
  assert c.sum() == 5
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    evaluation.confusion_counts(t, p, 2, 3)
