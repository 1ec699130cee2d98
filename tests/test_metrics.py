"""Metrics on hand-made cases (answers worked out by hand) and against scikit-learn."""

import jax
import numpy as np
import pytest
import sklearn.metrics

from spectral_jax import metrics


def test_confusion_matrix_by_hand():
  target = np.array([[0, 0, 1], [1, 2, 255]])
  pred = np.array([[0, 1, 1], [1, 0, 2]])
  # Pixels (t, p): (0,0) (0,1) (1,1) (1,1) (2,0); the 255 pixel is ignored.
  want = np.array([[1, 1, 0],
                   [0, 2, 0],
                   [1, 0, 0]])
  np.testing.assert_array_equal(metrics.confusion_matrix(target, pred, 3), want)


@pytest.mark.parametrize("num_preds", [None, 7])
def test_confusion_matrix_matches_sklearn(rng, num_preds):
  target = rng.integers(0, 5, (4, 30, 40))
  target[rng.random(target.shape) < 0.1] = 255
  pred = rng.integers(0, num_preds or 5, target.shape)
  ours = jax.jit(metrics.confusion_matrix, static_argnums=(2, 3))(target, pred, 5, num_preds)
  keep = target != 255
  labels = range(max(5, num_preds or 5))
  ref = sklearn.metrics.confusion_matrix(target[keep], pred[keep], labels=labels)
  np.testing.assert_array_equal(ours, ref[:5, :num_preds or 5])
  # Pooling: the sum of per-image matrices is the matrix of the pooled pixels.
  per_image = sum(metrics.confusion_matrix(t, p, 5, num_preds) for t, p in zip(target, pred))
  np.testing.assert_array_equal(per_image, ours)


def test_out_of_range_predictions_are_not_counted():
  c = metrics.confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 9]), 2)
  np.testing.assert_array_equal(c, [[1, 0], [0, 1]])


def test_iou_accuracy_by_hand():
  # Class 0: tp 3, row 4, column 5 -> 3 / 6.  Class 1: tp 6, row 8, column 7 -> 6 / 9.
  # Class 2: absent everywhere -> NaN, skipped.
  confusion = np.array([[3, 1, 0],
                        [2, 6, 0],
                        [0, 0, 0]])
  np.testing.assert_allclose(metrics.iou_per_class(confusion)[:2], [0.5, 2 / 3], rtol=1e-6)
  assert np.isnan(metrics.iou_per_class(confusion)[2])
  assert float(metrics.mean_iou(confusion)) == pytest.approx((0.5 + 2 / 3) / 2)
  assert float(metrics.mean_iou(confusion, absent="zero")) == pytest.approx((0.5 + 2 / 3) / 3)
  assert float(metrics.pixel_accuracy(confusion)) == pytest.approx(9 / 12)
  assert float(metrics.mean_accuracy(confusion)) == pytest.approx((3 / 4 + 6 / 8) / 2)


def test_iou_matches_sklearn_jaccard(rng):
  target = rng.integers(0, 6, 5000)
  pred = np.where(rng.random(5000) < 0.7, target, rng.integers(0, 6, 5000))
  confusion = metrics.confusion_matrix(target, pred, 6)
  ref = sklearn.metrics.jaccard_score(target, pred, average=None)
  np.testing.assert_allclose(metrics.iou_per_class(confusion), ref, rtol=1e-5)
  assert float(metrics.mean_iou(confusion)) == pytest.approx(ref.mean(), rel=1e-5)
  assert float(metrics.pixel_accuracy(confusion)) == pytest.approx(
      sklearn.metrics.accuracy_score(target, pred), rel=1e-6)
  assert float(metrics.mean_accuracy(confusion)) == pytest.approx(
      sklearn.metrics.balanced_accuracy_score(target, pred), rel=1e-5)


def test_mean_over_classes_skip_and_zero():
  values = np.array([0.5, np.nan, 0.25])
  assert float(metrics.mean_over_classes(values)) == pytest.approx(0.375)
  assert float(metrics.mean_over_classes(values, absent="zero")) == pytest.approx(0.25)
  assert np.isnan(float(metrics.mean_over_classes(np.full(3, np.nan))))
  with pytest.raises(ValueError, match="absent must be one of"):
    metrics.mean_over_classes(values, absent="drop")


def test_mean_iou_rejects_rectangular():
  with pytest.raises(ValueError, match="Map clusters to classes first"):
    metrics.mean_iou(np.ones((3, 5)))


def test_mask_metrics_by_hand():
  pred = np.zeros((2, 4, 4), bool)
  target = np.zeros((2, 4, 4), bool)
  pred[0, :2, :2] = True  # 4 pixels
  target[0, 1:3, 1:3] = True  # 4 pixels, overlap 1 pixel -> IoU 1/7; 6 pixels disagree
  # Image 1: both empty -> IoU 0 (DSM's convention), accuracy 1.
  np.testing.assert_allclose(metrics.mask_iou(pred, target), [1 / 7, 0.0], rtol=1e-6)
  np.testing.assert_allclose(metrics.mask_iou(pred, target, empty_value=1.0), [1 / 7, 1.0])
  np.testing.assert_allclose(metrics.mask_accuracy(pred, target), [10 / 16, 1.0])


def test_mask_iou_matches_sklearn(voc_photo):
  target = voc_photo.foreground
  pred = np.roll(target, (7, -11), axis=(0, 1))
  ref = sklearn.metrics.jaccard_score(target.ravel(), pred.ravel())
  assert float(metrics.mask_iou(pred, target)) == pytest.approx(ref, rel=1e-6)
  acc = sklearn.metrics.accuracy_score(target.ravel(), pred.ravel())
  assert float(metrics.mask_accuracy(pred, target)) == pytest.approx(acc, rel=1e-6)


def test_box_iou_by_hand():
  a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]])
  b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
  # a0 ∩ b0 = 5×10 = 50, union 150 -> 1/3; disjoint -> 0; identical -> 1.
  # a1 (16 px) inside b2 (100 px) -> 0.16; a1 ∩ b0 = 0 (x1 = 4 < 5).
  want = np.array([[1 / 3, 0.0, 1.0], [0.0, 0.0, 0.16]])
  np.testing.assert_allclose(metrics.box_iou(a, b), want, rtol=1e-6)


def test_box_iou_matches_mask_iou_of_box_masks(rng):
  """Exclusive x1/y1: the box IoU equals the IoU of the pixel masks the boxes cover."""
  h, w = 40, 50
  x0, x1 = np.sort(rng.integers(0, w + 1, (2, 8)), axis=0)
  y0, y1 = np.sort(rng.integers(0, h + 1, (2, 8)), axis=0)
  boxes = np.stack([x0, y0, x1, y1], axis=1)
  boxes[0] = boxes[1]  # identical pair
  boxes[2] = [3, 3, 3, 9]  # empty box

  def mask(b):
    m = np.zeros((h, w), bool)
    m[b[1]:b[3], b[0]:b[2]] = True
    return m

  got = np.asarray(metrics.box_iou(boxes, boxes))
  for i in range(8):
    for j in range(8):
      mi, mj = mask(boxes[i]), mask(boxes[j])
      ref = (mi & mj).sum() / max((mi | mj).sum(), 1)
      assert got[i, j] == pytest.approx(ref, abs=1e-6)


def test_corloc_by_hand():
  gt = np.array([[[0, 0, 10, 10], [50, 50, 60, 60]],
                 [[0, 0, 10, 10], [0, 0, 0, 0]]])
  valid = np.array([[True, True], [True, False]])
  pred = np.array([[50, 50, 60, 65],  # IoU 100/150 with the second box: hit
                   [0, 0, 10, 20]])  # IoU 100/200 = 0.5 exactly: hit (≥)
  np.testing.assert_array_equal(metrics.corloc_hits(pred, gt, valid), [True, True])
  pred_miss = np.array([[50, 50, 60, 71], [0, 0, 10, 21]])  # 100/210, 100/210: misses
  np.testing.assert_array_equal(metrics.corloc_hits(pred_miss, gt, valid), [False, False])
  # A padding row never counts, even if it matches.
  np.testing.assert_array_equal(
      metrics.corloc_hits(np.array([[0, 0, 0, 0]] * 2), gt, valid), [False, False])
