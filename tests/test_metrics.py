"""Multi-label and segmentation metrics (minicnn.metrics): F1, average precision, IoU, checked
against values worked out by hand in the comments."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.metrics import average_precision, f1_score, iou_per_class, mean_iou

T = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
P = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]])


def test_f1_by_hand():
    # label 0: TP 1, FP 0, FN 1 -> 2/3; label 1: TP 1, FP 1, FN 1 -> 2/4; label 2: never positive -> 0
    np.testing.assert_allclose(f1_score(T, P), [2 / 3, 1 / 2, 0.0], rtol=1e-15)
    assert f1_score(T, P, average="macro") == pytest.approx((2 / 3 + 1 / 2) / 3, rel=1e-15)
    # micro: TP 2, FP 1, FN 2 over all labels -> 4 / 7
    assert f1_score(T, P, average="micro") == pytest.approx(4 / 7, rel=1e-15)
    assert f1_score(T.astype(bool), P.astype(np.float32))[0] == pytest.approx(2 / 3)
    # a single label as (N,); a perfect prediction
    assert f1_score([1, 0, 1, 1], [1, 1, 0, 1])[0] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    np.testing.assert_array_equal(f1_score(T[:, :2], T[:, :2]), [1.0, 1.0])


def test_f1_errors():
    with pytest.raises(ValueError, match="targets must be 0 or 1"):
        f1_score([[2, 0]], [[1, 0]])
    with pytest.raises(ValueError, match=r"predictions of shape \(4, 2\) and targets of shape \(4, 3\) differ"):
        f1_score(T, P[:, :2])
    with pytest.raises(ValueError, match="average must be"):
        f1_score(T, P, average="weighted")


def test_average_precision_by_hand():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    t = np.array([1, 0, 1, 0, 1])
    # thresholds from the top: (P, R) = (1, 1/3), (1/2, 1/3), (2/3, 2/3), (1/2, 2/3), (3/5, 1)
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    assert average_precision(t, s)[0] == pytest.approx(34 / 45, rel=1e-15)
    # the order of the rows does not matter
    perm = np.array([3, 0, 4, 2, 1])
    assert average_precision(t[perm], s[perm])[0] == pytest.approx(34 / 45, rel=1e-15)
    # tied scores are one threshold: 0.9 -> (0, 0); 0.5 (two samples) -> (1/3, 1/2); 0.1 -> (1/2, 1)
    # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12
    assert average_precision([0, 1, 0, 1], [0.9, 0.5, 0.5, 0.1])[0] == pytest.approx(5 / 12, rel=1e-15)
    # several labels: a perfect ranking scores 1, a label with no positives is NaN and left out of the mean
    target = np.stack([t, [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], axis=1)
    scores = np.stack([s, [0.3, 0.9, 0.1, 0.2, 0.0], [0.5, 0.4, 0.3, 0.2, 0.1]], axis=1)
    ap = average_precision(target, scores)
    assert ap[0] == pytest.approx(34 / 45) and ap[1] == 1.0 and np.isnan(ap[2])
    assert average_precision(target, scores, average="macro") == pytest.approx((34 / 45 + 1) / 2, rel=1e-15)
    with pytest.raises(ValueError, match="no label has a positive target"):
        average_precision(target[:, 2:], scores[:, 2:], average="macro")
    with pytest.raises(ValueError, match=r"scores of shape \(5, 2\) and targets of shape \(5, 3\) differ"):
        average_precision(target, scores[:, :2])


def test_iou_by_hand():
    t = np.array([[[0, 0, 1], [1, 2, 2]]])
    p = np.array([[[0, 1, 1], [1, 2, 0]]])
    # class 0: target {0, 1}, pred {0, 5}: 1 / 3; class 1: {2, 3} vs {1, 2, 3}: 2 / 3;
    # class 2: {4, 5} vs {4}: 1 / 2; class 3: absent from both -> NaN
    iou = iou_per_class(t, p, 4)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2], rtol=1e-15)
    assert np.isnan(iou[3])
    assert mean_iou(t, p, 4) == pytest.approx(0.5, rel=1e-15)
    # scores (N, C, H, W) give the same answer through their argmax
    scores = np.eye(4)[p].transpose(0, 3, 1, 2) + 0.1
    assert mean_iou(t, scores, 4) == pytest.approx(0.5, rel=1e-15)
    # ignore_index drops pixels: without the last pixel, class 0 is {0, 1} vs {0} (1/2), class 2 {4} vs {4} (1)
    t2 = t.copy()
    t2[0, 1, 2] = 255
    np.testing.assert_allclose(iou_per_class(t2, p, 3, ignore_index=255), [1 / 2, 2 / 3, 1.0], rtol=1e-15)
    with pytest.raises(ValueError, match="labels must lie in"):
        iou_per_class(t2, p, 3)
    with pytest.raises(ValueError, match="differ"):
        mean_iou(t, p[:, :1], 3)
