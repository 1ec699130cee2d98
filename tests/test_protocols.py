"""The papers' dataset-level protocols (spectral_jax.protocols) on hand-made cases and NumPy
references."""

import numpy as np
import pytest

from spectral_jax import protocols


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
  out = protocols.corloc(pred, gt)
  assert out["num_hits"] == 2 and out["num_images"] == 4 and out["corloc"] == 0.5
  with pytest.raises(ValueError, match="no ground truth for 1"):
    protocols.corloc({"x": [0, 0, 1, 1]}, gt)
  hits, best = protocols.corloc_per_image(list(pred.values()), list(gt.values()))
  np.testing.assert_array_equal(hits, [True, True, False, False])
  np.testing.assert_allclose(best, [_np_iou(pred["a"], gt["a"][1]), 0.5, 0.49, 0.0], rtol=1e-6)


def test_corloc_per_image_matches_a_numpy_loop(rng):
  """Padding images to one box count changes nothing: hits and best IoUs as a plain loop."""
  preds, gts = [], []
  for _ in range(30):
    xy = rng.integers(0, 30, 2)
    preds.append(np.r_[xy, xy + rng.integers(1, 20, 2)])
    xy = rng.integers(0, 30, (rng.integers(0, 5), 2))
    gts.append(np.c_[xy, xy + rng.integers(1, 20, xy.shape)])
  hits, best = protocols.corloc_per_image(preds, gts, threshold=0.3)
  want = [max((_np_iou(p, g) for g in gt), default=0.0) for p, gt in zip(preds, gts)]
  np.testing.assert_allclose(best, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(hits, np.array(want) >= 0.3)
  assert 0 < hits.sum() < len(hits)
  with pytest.raises(ValueError, match="1 images but the ground truth has 2"):
    protocols.corloc_per_image(preds[:1], gts[:2])


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
  scores = protocols.SingleObjectScores()
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
  s = protocols.SingleObjectScores()
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
  out = protocols.semantic_scores(conf)
  assert out["lookup"] == [1, 2, 0]
  matched = np.array([[9, 1, 0], [0, 8, 2], [3, 0, 7]])   # columns reordered by hand
  tp = np.diag(matched)
  iou = tp / (matched.sum(0) + matched.sum(1) - tp)
  assert out["miou"] == pytest.approx(iou.mean())
  assert out["pixel_accuracy"] == pytest.approx(24 / 30)
  np.testing.assert_allclose(out["iou_per_class"], iou, rtol=1e-6)


def test_semantic_majority_vote_maps_many_clusters_to_one_class():
  conf = np.array([[5, 4, 0, 0], [0, 0, 6, 1]])
  out = protocols.semantic_scores(conf, matching="majority")
  assert out["lookup"] == [0, 0, 1, 1] and out["pixel_accuracy"] == 1.0 and out["miou"] == 1.0
  # Hungarian with more clusters than classes: clusters 1 and 3 are left over, their pixels
  # errors (class 0: 5 of 9 pixels hit, predicted 5 times → 5/9; class 1: 6/7)
  out = protocols.semantic_scores(conf)
  assert out["lookup"] == [0, protocols.UNMATCHED, 1, protocols.UNMATCHED]
  np.testing.assert_allclose(out["iou_per_class"], [5 / 9, 6 / 7], rtol=1e-6)
  assert out["pixel_accuracy"] == pytest.approx(11 / 16)
  with pytest.raises(ValueError, match="matching must be one of"):
    protocols.semantic_scores(conf, matching="greedy")
  with pytest.raises(ValueError, match="absent must be one of"):
    protocols.semantic_scores(conf, absent="drop")


# 2 classes × 3 clusters: cluster 0 and 1 hold class 0, cluster 2 holds class 1 (these three
# cases were neuralef.evaluate's own matching tests; the matching now lives here only).
CONFUSION = np.array([[8, 2, 0],
                      [1, 0, 9]])


def test_majority_voting_by_hand():
  np.testing.assert_array_equal(protocols.match_clusters(CONFUSION, "majority"), [0, 0, 1])
  s = protocols.semantic_scores(CONFUSION, "majority")
  # matched: class 0 → [10 correct, 0], class 1 → [1 wrong, 9 correct]
  assert s["iou_per_class"] == pytest.approx([10 / 11, 9 / 10])
  assert s["miou"] == pytest.approx((10 / 11 + 9 / 10) / 2)
  assert s["pixel_accuracy"] == pytest.approx(19 / 20)


def test_hungarian_with_more_clusters_than_classes_counts_unmatched_as_errors():
  lookup = protocols.match_clusters(CONFUSION, "hungarian")
  np.testing.assert_array_equal(lookup, [0, protocols.UNMATCHED, 1])
  s = protocols.semantic_scores(CONFUSION, "hungarian")
  assert s["lookup"] == lookup.tolist()
  # class 0: 8 of 10 hit, predicted 9 times (8 + 1) → 8 / 11; class 1: 9 / 10
  assert s["iou_per_class"] == pytest.approx([8 / 11, 9 / 10])
  assert s["miou"] == pytest.approx((8 / 11 + 9 / 10) / 2)
  assert s["pixel_accuracy"] == pytest.approx(17 / 20)


def test_hungarian_square_and_absent_prediction():
  confusion = np.array([[5, 1], [0, 4], [2, 0]])
  np.testing.assert_array_equal(protocols.match_clusters(confusion, "hungarian"), [0, 1])
  s = protocols.semantic_scores(confusion, "hungarian")
  # class 2 is never predicted but present in the labels: IoU 0, counted in the mean
  assert s["iou_per_class"] == pytest.approx([5 / 8, 4 / 5, 0.0])
  assert s["miou"] == pytest.approx((5 / 8 + 4 / 5) / 3)
  assert s["pixel_accuracy"] == pytest.approx(9 / 12)
  with pytest.raises(ValueError, match="matching"):
    protocols.match_clusters(confusion, "greedy")


def test_semantic_absent_classes_skip_or_zero():
  # class 2 in neither ground truth nor prediction: NaN, skipped or counted as 0
  confusion = np.array([[3, 1, 0], [2, 6, 0], [0, 0, 0]])
  skip = protocols.semantic_scores(confusion, absent="skip")
  zero = protocols.semantic_scores(confusion, absent="zero")
  assert np.isnan(skip["iou_per_class"][2])
  assert skip["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
  assert zero["miou"] == pytest.approx((0.5 + 2 / 3) / 3)


def test_confusion_counts_skip_ignore_and_check_ranges():
  t = np.array([[0, 1, 255], [2, 2, 1]])
  p = np.array([[1, 1, 0], [0, 2, 2]])
  c = protocols.confusion_counts(t, p, 3, 3)
  ref = np.zeros((3, 3), int)
  for a, b in zip(t.ravel(), p.ravel()):
    if a != 255:
      ref[a, b] += 1
  np.testing.assert_array_equal(c, ref)
  assert c.sum() == 5 and c.dtype == np.int64
  with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
    protocols.confusion_counts(t, p, 2, 3)
  with pytest.raises(ValueError, match=r"clusters must be in \[0, 2\)"):
    protocols.confusion_counts(t, p, 3, 2)
  with pytest.raises(ValueError, match="differ"):
    protocols.confusion_counts(t, p[:1], 3, 3)


@pytest.mark.parametrize("shape", [(1, 1), (32, 32), (33, 31), (48, 64)])
def test_confusion_counts_any_image_size_match_a_numpy_loop(rng, shape):
  """The pixels are padded to a power of two for metrics.confusion_matrix: sizes just below,
  at and above a power of two count exactly the image's pixels."""
  t = rng.integers(0, 4, shape).astype(np.uint8)          # a dataset's uint8 class mask
  t[rng.random(shape) < 0.2] = 255
  p = rng.integers(0, 6, shape)
  ref = np.zeros((4, 6), np.int64)
  for a, b in zip(t.ravel(), p.ravel()):
    if a != 255:
      ref[a, b] += 1
  np.testing.assert_array_equal(protocols.confusion_counts(t, p, 4, 6), ref)


# ----------------------------------------------------------------------------- multi-object


def _np_object_recall(preds, gts, thr=0.5):
  """Greedy one-to-one matching in prediction order, written as a plain loop."""
  matched = total = 0
  for p, g in zip(preds, gts):
    total += len(g)
    taken = set()
    for box in p:
      cands = [(_np_iou(box, gb), j) for j, gb in enumerate(g) if j not in taken]
      if cands:
        iou, j = max(cands)
        if iou >= thr:
          taken.add(j)
          matched += 1
  return matched, total


def test_object_recall_greedy_in_prediction_order(rng):
  gt = [np.array([[0, 0, 10, 10], [4, 0, 14, 10]]), np.zeros((0, 4)), np.array([[0, 0, 8, 8]])]
  # image 0: the first prediction fits box 1 best (IoU 0.82 vs 0.67), so the second, which
  # only fits box 1, finds it taken; image 1 has no ground truth; image 2 none predicted.
  pred = [np.array([[3, 0, 13, 10], [5, 0, 14, 10]]), np.array([[0, 0, 5, 5]]), np.zeros((0, 4))]
  assert _np_iou(pred[0][0], gt[0][1]) > _np_iou(pred[0][0], gt[0][0]) >= 0.5
  assert _np_iou(pred[0][1], gt[0][0]) < 0.5
  out = protocols.object_recall(pred, gt)
  assert out == {"recall": 1 / 3, "num_gt": 3, "num_matched": 1, "iou_threshold": 0.5}
  assert protocols.object_recall(pred[::-1][:1] + pred[1:], gt)["num_matched"] == 0
  # random scenes against the loop
  for _ in range(20):
    gts, preds = [], []
    for _ in range(3):
      xy = rng.integers(0, 40, (rng.integers(0, 5), 2))
      gts.append(np.c_[xy, xy + rng.integers(5, 20, xy.shape)])
      xy = rng.integers(0, 40, (rng.integers(0, 6), 2))
      preds.append(np.c_[xy, xy + rng.integers(5, 20, xy.shape)])
    if sum(map(len, gts)) == 0:
      continue
    m, t = _np_object_recall(preds, gts, 0.3)
    out = protocols.object_recall(preds, gts, iou_threshold=0.3)
    assert (out["num_matched"], out["num_gt"]) == (m, t)


def test_object_recall_errors():
  with pytest.raises(ValueError, match="undefined without ground-truth"):
    protocols.object_recall([np.zeros((1, 4))], [np.zeros((0, 4))])
  with pytest.raises(ValueError, match="1 images but the ground truth has 2"):
    protocols.object_recall([np.zeros((0, 4))], [np.zeros((1, 4))] * 2)
  with pytest.raises(ValueError, match=r"pred_boxes\[0\] must be \(N, 4\)"):
    protocols.object_recall([np.zeros((2, 3))], [np.ones((1, 4))])


def _np_inter_over_first(a, b):
  w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  return w * h / ((a[2] - a[0]) * (a[3] - a[1]))


def _np_ap50(preds, scores, gts, ignore=None, max_dets=100):
  """COCO's class-agnostic AP at IoU 0.5 (101 recall points), written out in NumPy: per image
  the top-scoring predictions take the best free ground truth (not ignored first); a prediction
  on an ignored box (intersection ≥ 0.5 of its own area) is dropped."""
  ignore = ignore or [np.zeros(len(g), bool) for g in gts]
  rows, npos = [], 0
  for p, s, g, ig in zip(preds, scores, gts, ignore):
    npos += int((~ig).sum())
    used = np.zeros(len(g), bool)
    for d in np.argsort(-np.asarray(s), kind="stable")[:max_dets]:
      best, best_iou = None, 0.5
      for j in range(len(g)):
        if ig[j]:
          continue
        iou = _np_iou(p[d], g[j])
        if not used[j] and iou >= best_iou:
          best, best_iou = j, iou
      if best is not None:
        used[best] = True
        rows.append((s[d], 1))
        continue
      if not any(_np_inter_over_first(p[d], g[j]) >= 0.5 for j in range(len(g)) if ig[j]):
        rows.append((s[d], 0))
  rows.sort(key=lambda r: -r[0])
  tp = np.cumsum([r[1] for r in rows])
  fp = np.cumsum([1 - r[1] for r in rows])
  recall = tp / npos
  precision = tp / np.maximum(tp + fp, 1)
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  points = np.linspace(0, 1, 101)
  idx = np.searchsorted(recall, points, side="left")
  return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def test_ap50_matches_a_numpy_coco_computation_on_hand_made_cases():
  pytest.importorskip("pycocotools")
  gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.zeros((0, 4)), np.array([[5, 5, 25, 25]])]
  # perfect detector: AP 1
  perfect = protocols.ap50(gt, [np.array([0.9, 0.8]), np.zeros(0), np.array([0.7])], gt)
  assert perfect == pytest.approx(1.0) and _np_ap50(gt, [[0.9, 0.8], [], [0.7]], gt) == 1.0
  # scores 0.95 FP (an image without objects), 0.9 TP, 0.8 FP (a duplicate of the same box),
  # 0.7 TP (IoU 0.6), 0.6 FP (IoU 0.4); the box [20, 20, 40, 40] is missed.
  pred = [np.array([[0, 0, 10, 10], [0, 0, 10, 11]]), np.array([[0, 0, 9, 9]]),
          np.array([[5, 5, 25, 17], [12, 12, 30, 30]])]          # IoU 240/400 = 0.6, then 0.4
  scores = [np.array([0.9, 0.8]), np.array([0.95]), np.array([0.7, 0.6])]
  assert _np_iou(pred[2][0], gt[2][0]) == pytest.approx(0.6)
  assert _np_iou(pred[2][1], gt[2][0]) < 0.5
  # precision, interpolated: 0.5 up to recall 2/3 (recall points 0..0.66), then 0
  assert _np_ap50(pred, scores, gt) == pytest.approx(67 * 0.5 / 101)
  assert protocols.ap50(pred, scores, gt) == pytest.approx(_np_ap50(pred, scores, gt), abs=1e-12)
  # an ignored box: the prediction on it is dropped, not a false positive
  ignore = [np.array([False, True]), np.zeros(0, bool), np.array([False])]
  pred_on_ignored = [np.array([[0, 0, 10, 10], [22, 22, 38, 38]]), pred[1], pred[2]]
  scores2 = [np.array([0.9, 0.99]), scores[1], scores[2]]
  want = _np_ap50(pred_on_ignored, scores2, gt, ignore)
  assert want == pytest.approx(_np_ap50([pred_on_ignored[0][:1]] + pred[1:],   # as if absent
                                        [scores2[0][:1]] + scores[1:], [gt[0][:1]] + gt[1:]))
  got = protocols.ap50(pred_on_ignored, scores2, gt, gt_ignore=ignore)
  assert got == pytest.approx(want, abs=1e-12)
  # COCO's xywh: a prediction one pixel wider than the ground truth has IoU 100/110 — a hit;
  # a half-overlap (IoU 1/3) is not (an off-by-one conversion would move both)
  # (COCOeval divides by tp + fp + machine epsilon, hence approx for a precision of 1)
  assert protocols.ap50([np.array([[0, 0, 11, 10]])], [np.ones(1)], [gt[0][:1]]) == \
      pytest.approx(1.0)
  assert protocols.ap50([np.array([[5, 0, 15, 10]])], [np.ones(1)], [gt[0][:1]]) == 0.0
  assert protocols.ap50([np.zeros((0, 4))], [np.zeros(0)], [gt[0]]) == 0.0


def test_ap50_errors():
  pytest.importorskip("pycocotools")
  with pytest.raises(ValueError, match="undefined without ground-truth"):
    protocols.ap50([np.ones((1, 4))], [np.ones(1)], [np.zeros((0, 4))])
  with pytest.raises(ValueError, match="1 boxes but 2 scores"):
    protocols.ap50([np.ones((1, 4))], [np.ones(2)], [np.ones((1, 4))])
  with pytest.raises(ValueError, match="NaN"):
    protocols.ap50([np.ones((1, 4))], [np.array([np.nan])], [np.ones((1, 4))])


# ----------------------------------------------------------------------------- sliding window


def _np_starts(size, window, stride):
  """Every multiple of the stride that fits, plus a window flush with the border if needed."""
  if size <= window:
    return [0]
  starts = list(range(0, size - window + 1, stride))
  return starts + ([size - window] if starts[-1] + window < size else [])


def test_window_starts_follow_mmseg():
  assert protocols.window_starts(11, 4, 3) == [0, 3, 6, 7]     # last aligned to the border
  assert protocols.window_starts(10, 4, 3) == [0, 3, 6]        # 6 + 4 = 10 already
  assert protocols.window_starts(3, 4, 2) == [0]               # shorter than the window
  for size in range(1, 40):
    for window in range(1, 12):
      for stride in range(1, window + 1):
        assert protocols.window_starts(size, window, stride) == _np_starts(size, window, stride)


def test_sliding_window_pointwise_fn_is_exact(rng):
  image = rng.random((37, 29, 3)).astype(np.float32)
  fn = lambda x: np.concatenate([np.sin(x), x ** 2 + 0.1], -1).astype(np.float32)
  out = protocols.sliding_window(fn, image, window=(16, 12), stride=(5, 7))
  assert out.shape == (37, 29, 6) and out.dtype == np.float32
  np.testing.assert_array_equal(out, fn(image))


def test_sliding_window_translation_dependent_fn_matches_a_numpy_loop(rng):
  image = rng.random((23, 31, 2)).astype(np.float32)
  calls = []

  def fn(crop):   # depends on where a pixel sits in its crop (and on the crop as a whole)
    calls.append(crop.shape)
    h, w = crop.shape[:2]
    pos = np.arange(h)[:, None, None] * 0.5 + np.arange(w)[None, :, None] * 0.25
    return crop * pos + crop.mean()

  window, stride = (10, 8), (4, 6)
  out = protocols.sliding_window(fn, image, window=window, stride=stride)
  want, n = np.zeros((23, 31, 2)), np.zeros((23, 31, 1))
  ys, xs = _np_starts(23, 10, 4), _np_starts(31, 8, 6)
  for y in ys:
    for x in xs:
      want[y:y + 10, x:x + 8] += fn(image[y:y + 10, x:x + 8])
      n[y:y + 10, x:x + 8] += 1
  np.testing.assert_allclose(out, want / n, rtol=1e-6)           # float32 output
  assert calls[:len(ys) * len(xs)] == [(10, 8, 2)] * (len(ys) * len(xs))


def test_sliding_window_image_smaller_than_the_window(rng):
  image = rng.random((5, 7, 3)).astype(np.float32)
  fn = lambda x: x * np.arange(x.shape[1])[None, :, None] + x.shape[0]
  np.testing.assert_array_equal(protocols.sliding_window(fn, image, window=8, stride=4),
                                fn(image).astype(np.float32))
  with pytest.raises(ValueError, match="no window covers"):
    protocols.sliding_window(fn, image, window=4, stride=5)
  with pytest.raises(ValueError, match="at the crop's size"):
    protocols.sliding_window(lambda x: x[::2], image, window=4, stride=2)
