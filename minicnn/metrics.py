"""Metrics on numpy arrays: accuracy, top-k accuracy, error rate, confusion matrix (single-label
classification); F1 and average precision (multi-label); intersection over union (segmentation).

The single-label functions take either logits/scores of shape (N, C) (the predicted class is the
argmax, first index on ties, as ``numpy.argmax``) or predicted labels of shape (N,), plus integer true
labels of shape (N,). The multi-label ones take 0/1 targets of shape (N, C), one column per label.
Arrays from any backend are accepted (they are brought to numpy first).
"""
from __future__ import annotations

import numpy as np

from .backends import to_numpy

__all__ = ["accuracy", "error_rate", "top_k_accuracy", "confusion_matrix", "format_confusion_matrix", "f1_score",
           "average_precision", "iou_per_class", "mean_iou"]


def _labels(y, name):
    y = np.asarray(to_numpy(y))
    if y.ndim != 1:
        raise ValueError(f"{name}: expected integer labels of shape (N,), got shape {y.shape}")
    if y.size and y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            return y.astype(np.int64)
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _predictions(output, name):
    """Predicted labels from logits (N, C) or labels (N,)."""
    out = np.asarray(to_numpy(output))
    if out.ndim == 2:
        return out.argmax(axis=1)
    if out.ndim == 1:
        return _labels(out, name)
    raise ValueError(f"{name}: expected logits of shape (N, C) or labels of shape (N,), got shape {out.shape}")


def _check_pair(pred, target, name, output_shape):
    if pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"{name}: predictions of shape {output_shape} and targets of shape {target.shape} "
            f"hold different numbers of samples"
        )


def accuracy(output, target) -> float:
    """Fraction of samples whose predicted class equals the target (0.0 .. 1.0).

    ``output`` is logits (N, C) or predicted labels (N,); ``target`` is labels (N,). An empty
    batch has no defined accuracy and raises ValueError.
    """
    pred = _predictions(output, "accuracy")
    target = _labels(target, "accuracy")
    _check_pair(pred, target, "accuracy", np.shape(output))
    if target.size == 0:
        raise ValueError("accuracy: no samples (empty arrays)")
    return float(np.mean(pred == target))


def error_rate(output, target) -> float:
    """``1 - accuracy(output, target)``: the fraction misclassified."""
    return 1.0 - accuracy(output, target)


def top_k_accuracy(output, target, k: int = 5) -> float:
    """Fraction of samples whose target is among the ``k`` highest scores of ``output`` (N, C).

    Ties at the k-th score are broken towards the lower class index (a stable sort), so the
    count never exceeds k classes per sample. ``k`` must lie in [1, C].
    """
    out = np.asarray(to_numpy(output))
    if out.ndim != 2:
        raise ValueError(f"top_k_accuracy: expected scores of shape (N, C), got shape {out.shape}")
    target = _labels(target, "top_k_accuracy")
    _check_pair(out, target, "top_k_accuracy", out.shape)
    if not 1 <= int(k) <= out.shape[1]:
        raise ValueError(f"top_k_accuracy: k must lie in [1, {out.shape[1]}] for scores of shape {out.shape}, got {k}")
    if target.size == 0:
        raise ValueError("top_k_accuracy: no samples (empty arrays)")
    # stable descending order: sort the negated scores
    topk = np.argsort(-out, axis=1, kind="stable")[:, : int(k)]
    return float(np.mean(np.any(topk == target[:, None], axis=1)))


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``cm[t, p]`` of samples with true class ``t`` predicted as ``p`` (int64, C x C).

    Rows are true classes and columns predictions (scikit-learn's layout), so the diagonal holds
    the correct ones and row ``t`` sums to the number of samples of class ``t``. ``y_pred`` may be
    labels (N,) or logits (N, C). ``num_classes`` defaults to one more than the largest label seen.
    """
    t = _labels(y_true, "confusion_matrix")
    p = _predictions(y_pred, "confusion_matrix")
    _check_pair(p, t, "confusion_matrix", np.shape(y_pred))
    seen = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if num_classes is None:
        num_classes = seen
    num_classes = int(num_classes)
    if min(t.min(initial=0), p.min(initial=0)) < 0 or seen > num_classes:
        raise ValueError(
            f"confusion_matrix: labels must lie in [0, {num_classes}), got true in "
            f"[{t.min(initial=0)}, {t.max(initial=0)}] and predicted in [{p.min(initial=0)}, {p.max(initial=0)}]"
        )
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def format_confusion_matrix(cm, labels=None) -> str:
    """A text table of a confusion matrix: true classes down, predictions across.

    Each row ends with its total and the share of that class predicted correctly (recall);
    the last line gives the overall accuracy. ``labels`` names the classes (default 0..C-1).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"format_confusion_matrix: expected a square (C, C) matrix, got shape {cm.shape}")
    n = cm.shape[0]
    names = [str(i) for i in range(n)] if labels is None else [str(s) for s in labels]
    if len(names) != n:
        raise ValueError(f"format_confusion_matrix: {len(names)} labels for a {n}x{n} matrix")
    row_tot = cm.sum(axis=1)
    w_lab = max(len("true"), *(len(s) for s in names))
    w = max(3, len(str(int(cm.max(initial=0)))), *(len(s) for s in names), len(str(int(row_tot.max(initial=0)))))
    head = f"{'true':>{w_lab}} \\ pred " + " ".join(f"{s:>{w}}" for s in names) + f" | {'total':>{max(w, 5)}}  recall"
    rule = "-" * len(head)
    lines = [head, rule]
    for i in range(n):
        recall = f"{cm[i, i] / row_tot[i]:.3f}" if row_tot[i] else "-"
        cells = " ".join(f"{int(v):>{w}}" for v in cm[i])
        lines.append(f"{names[i]:>{w_lab}}        {cells} | {int(row_tot[i]):>{max(w, 5)}}  {recall:>6}")
    total = int(cm.sum())
    acc = f"{np.trace(cm) / total:.4f}" if total else "-"
    lines += [rule, f"{int(np.trace(cm))}/{total} correct, accuracy {acc}"]
    return "\n".join(lines)


# -- multi-label --------------------------------------------------------------------------------------

def _binary_matrix(a, name, what):
    a = np.asarray(to_numpy(a))
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected {what} of shape (N, C) (or (N,) for one label), got shape {a.shape}")
    return a


def _binary_targets(target, name):
    t = _binary_matrix(target, name, "0/1 targets")
    if t.size and not np.all((t == 0) | (t == 1)):
        raise ValueError(f"{name}: targets must be 0 or 1, got values in [{t.min()}, {t.max()}]")
    return t.astype(bool)


def f1_score(target, pred, average=None):
    """F1 = 2 TP / (2 TP + FP + FN) per label: the harmonic mean of precision and recall.

    Args:
        target: 0/1 (or bool) of shape (N, C), one column per label; (N,) for a single label.
        pred: the predicted 0/1 labels, the same shape (threshold scores first: ``logits > 0``).
        average: None for one score per label (an array (C,)), ``"macro"`` for their mean,
            ``"micro"`` for F1 of the counts summed over every label.

    A label with no positive target and no positive prediction has no defined F1; it scores 0
    (scikit-learn's default) and counts in the macro mean.
    """
    t = _binary_targets(target, "f1_score")
    p = _binary_targets(pred, "f1_score")
    if p.shape != t.shape:
        raise ValueError(f"f1_score: predictions of shape {p.shape} and targets of shape {t.shape} differ")
    if average not in (None, "macro", "micro"):
        raise ValueError(f"f1_score: average must be None, 'macro' or 'micro', got {average!r}")
    tp = (t & p).sum(axis=0).astype(np.float64)
    fp = (~t & p).sum(axis=0)
    fn = (t & ~p).sum(axis=0)
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return f1 if average is None else float(f1.mean())


def average_precision(target, scores, average=None):
    """Average precision per label: the area under the precision-recall curve as a step sum,
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores taken as thresholds from the highest
    down (scikit-learn's definition: no interpolation; tied scores are one threshold).

    Args:
        target: 0/1 of shape (N, C) (or (N,)).
        scores: real scores of the same shape; higher means more likely (logits or probabilities).
        average: None for one AP per label (an array (C,)), ``"macro"`` for the mean over labels
            (mAP).

    A label with no positive target has no defined AP: NaN in the per-label array, and left out of
    the mean.
    """
    t = _binary_targets(target, "average_precision")
    s = _binary_matrix(scores, "average_precision", "scores").astype(np.float64)
    if s.shape != t.shape:
        raise ValueError(f"average_precision: scores of shape {s.shape} and targets of shape {t.shape} differ")
    if average not in (None, "macro"):
        raise ValueError(f"average_precision: average must be None or 'macro', got {average!r}")
    ap = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        pos = int(t[:, c].sum())
        if pos == 0:
            continue
        order = np.argsort(-s[:, c], kind="stable")
        sc, hit = s[order, c], t[order, c]
        tp = np.cumsum(hit)
        # the last index of each run of tied scores: one threshold per distinct score
        ends = np.r_[np.flatnonzero(np.diff(sc) != 0), len(sc) - 1]
        precision = tp[ends] / (ends + 1)
        recall = tp[ends] / pos
        ap[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    if average is None:
        return ap
    if np.all(np.isnan(ap)):
        raise ValueError("average_precision: no label has a positive target; the mean is undefined")
    return float(np.nanmean(ap))


# -- segmentation -------------------------------------------------------------------------------------

def iou_per_class(target, pred, num_classes, ignore_index=None):
    """Intersection over union per class, ``|P_c & T_c| / |P_c | T_c|``, over all pixels of all images.

    Args:
        target: integer class labels of any shape, e.g. masks (N, H, W).
        pred: predicted labels of the same shape, or scores with the classes on axis 1
            ((N, C, H, W), the argmax is taken).
        num_classes: C.
        ignore_index: a target value whose pixels are left out (as ``CrossEntropyLoss``'s).

    Returns a float64 array (C,); a class absent from both target and prediction is NaN.
    """
    t = np.asarray(to_numpy(target))
    p = np.asarray(to_numpy(pred))
    if p.ndim == t.ndim + 1:
        if p.shape[1] != int(num_classes):
            raise ValueError(f"iou: scores of shape {p.shape} have {p.shape[1]} classes on axis 1, expected {num_classes}")
        p = p.argmax(axis=1)
    if p.shape != t.shape:
        raise ValueError(f"iou: predictions of shape {p.shape} and targets of shape {t.shape} differ")
    t, p = t.reshape(-1), p.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    cm = confusion_matrix(_labels(t, "iou"), _labels(p, "iou"), int(num_classes)).astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    return np.divide(inter, union, out=np.full(len(inter), np.nan), where=union > 0)


def mean_iou(target, pred, num_classes, ignore_index=None) -> float:
    """The mean of :func:`iou_per_class` over the classes present in the target or the prediction (mIoU)."""
    iou = iou_per_class(target, pred, num_classes, ignore_index)
    if np.all(np.isnan(iou)):
        raise ValueError("mean_iou: no pixels to score")
    return float(np.nanmean(iou))
