"""Classification metrics on numpy arrays: accuracy, top-k accuracy, error rate, confusion matrix.

Every function takes either logits/scores of shape (N, C) (the predicted class is the argmax,
first index on ties, as ``numpy.argmax``) or predicted labels of shape (N,), plus integer true
labels of shape (N,). Arrays from any backend are accepted (they are brought to numpy first).
"""
from __future__ import annotations

import numpy as np

from .backends import to_numpy

__all__ = ["accuracy", "error_rate", "top_k_accuracy", "confusion_matrix", "format_confusion_matrix"]


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
