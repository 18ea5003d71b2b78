"""Losses, written to be read. Derivations: docs/softmax_cross_entropy.md (the plain case) and
docs/losses.md (weights, ignored targets, label smoothing, the (N, C, d1, ...) layout, BCE with
pos_weight, L1, smooth L1 and Huber).

Every loss is a value per element (per position for the class losses) followed by one of
PyTorch's reductions: ``'none'`` keeps them, ``'sum'`` adds them, ``'mean'`` divides the sum by a
denominator (the element count, or the targets' total class weight for the class losses). A
backward takes the upstream gradient ``dloss`` last: a number for ``'mean'``/``'sum'``, an
array of the loss's shape for ``'none'``.
"""
import numpy as np

from .activation import sigmoid_forward

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "nll_forward",
    "nll_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
    "l1_forward",
    "l1_backward",
    "smooth_l1_forward",
    "smooth_l1_backward",
    "huber_forward",
    "huber_backward",
]


# -- the plain case: (N, C) logits, class indices, batch mean ----------------------------------

def softmax_cross_entropy_forward(logits, targets):
    """loss = mean_n( logsumexp(z_n) - z_n[t_n] ), with the max subtracted so exp never overflows."""
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp = z - lse
    n = logits.shape[0]
    loss = -logp[np.arange(n), targets].mean()
    return np.asarray(loss, dtype=logits.dtype), np.exp(logp)


def softmax_cross_entropy_backward(probs, targets):
    n = probs.shape[0]
    d = probs.copy()
    d[np.arange(n), targets] -= 1
    return d / n


# -- reductions --------------------------------------------------------------------------------

def _reduce(per, reduction, denominator):
    """'none': the values themselves; 'sum': their sum; 'mean': the sum over ``denominator``."""
    if reduction == "none":
        return per
    total = per.sum(dtype=np.float64)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # nothing to average: NaN, as PyTorch
            total = np.float64(total) / np.float64(denominator)
    return np.asarray(total, dtype=per.dtype)


def _upstream(dloss, reduction, denominator, dtype):
    """What reaches each element's loss from above: dloss / denominator, dloss, or dloss itself."""
    if reduction == "none":
        return np.asarray(dloss, dtype=dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.float64(dloss) / np.float64(denominator) if reduction == "mean" else np.float64(dloss)
    return np.asarray(g, dtype=dtype)


# -- cross-entropy and NLL: any (N, C, d1, ...) layout -------------------------------------------

def _classes_last(a):
    """(N, C, d1, ...) -> (M, C) with M = N*d1*...: every position becomes one row of C scores."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _classes_back(rows, shape):
    """The inverse of ``_classes_last``: (M, C) rows back to the (N, C, d1, ...) layout."""
    n, c, *d = shape
    return np.ascontiguousarray(np.moveaxis(rows.reshape(n, *d, c), -1, 1))


def _coefficients(targets, weight, ignore_index, label_smoothing, C, dtype):
    """(q, denominator): loss_m = -sum_c q[m, c] log p[m, c] for every position m, and what 'mean' divides by.

    Class indices t (N, d1, ...): q = w_c ((1 - eps) [c == t] + eps / C), zero on ignored
    positions, and the denominator is the total weight w_t of the positions kept.
    Class probabilities y (N, C, d1, ...): q = w_c ((1 - eps) y_c + eps / C), and the
    denominator is the number of positions.
    """
    w = np.ones(C, dtype) if weight is None else np.asarray(weight, dtype)
    eps = label_smoothing
    if targets.dtype.kind == "f":
        y = _classes_last(targets).astype(dtype)
        q = w * ((1 - eps) * y + eps / C)
        return q, y.shape[0]
    t = targets.reshape(-1)
    keep = t != ignore_index
    t_kept = np.where(keep, t, 0)  # any valid index; those rows are zeroed below
    onehot = np.zeros((t.size, C), dtype)
    onehot[np.arange(t.size), t_kept] = 1
    q = w * ((1 - eps) * onehot + eps / C)
    q[~keep] = 0
    return q, w[t_kept][keep].sum(dtype=np.float64)


def _log_softmax_rows(z):
    """(log p, lse) of (M, C) rows: logsumexp with the row max subtracted first (never overflows)."""
    m = z.max(axis=1, keepdims=True) if z.size else np.zeros((z.shape[0], 1), z.dtype)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return z - lse, lse


def cross_entropy_forward(logits, targets, weight, ignore_index, label_smoothing, reduction):
    """(loss, lse): softmax cross-entropy at every position, reduced; lse = logsumexp over classes (N, d1, ...)."""
    shape = (logits.shape[0],) + logits.shape[2:]
    logp, lse = _log_softmax_rows(_classes_last(logits))
    q, denominator = _coefficients(targets, weight, ignore_index, label_smoothing, logits.shape[1], logits.dtype)
    # a class with no share of the target adds nothing, even where log p is -inf (PyTorch gathers)
    per = -np.where(q == 0, 0, q * logp).sum(axis=1)
    return _reduce(per.reshape(shape), reduction, denominator), lse.reshape(shape)


def cross_entropy_backward(logits, lse, targets, weight, ignore_index, label_smoothing, reduction, dloss):
    """dlogits = g * (sum_c q_c * p - q): softmax times the row's total coefficient, minus the coefficients."""
    p = np.exp(_classes_last(logits) - lse.reshape(-1, 1))
    q, denominator = _coefficients(targets, weight, ignore_index, label_smoothing, logits.shape[1], logits.dtype)
    g = _upstream(dloss, reduction, denominator, logits.dtype).reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        d = g * (q.sum(axis=1, keepdims=True) * p - q)
    if targets.dtype.kind != "f":  # an ignored position gets 0, even when g is NaN (nothing kept to average)
        d[targets.reshape(-1) == ignore_index] = 0
    return _classes_back(d, logits.shape).astype(logits.dtype)


def _picked(targets, weight, ignore_index, C, dtype):
    """(rows, t, w_t, denominator) for NLL: each position's target index and its weight (0 if ignored)."""
    t = targets.reshape(-1)
    keep = t != ignore_index
    t_kept = np.where(keep, t, 0)
    w = np.ones(C, dtype) if weight is None else np.asarray(weight, dtype)
    w_t = np.where(keep, w[t_kept], 0).astype(dtype)
    return np.arange(t.size), t_kept, w_t, w_t.sum(dtype=np.float64)


def nll_forward(logp, targets, weight, ignore_index, reduction):
    """loss per position = -w_t * logp[t] (0 where t == ignore_index), reduced ('mean' divides by sum w_t)."""
    rows, t, w_t, denominator = _picked(targets, weight, ignore_index, logp.shape[1], logp.dtype)
    keep = targets.reshape(-1) != ignore_index
    per = np.where(keep, -w_t * _classes_last(logp)[rows, t], 0)  # an ignored position is never read
    return _reduce(per.reshape(targets.shape), reduction, denominator)


def nll_backward(logp, targets, weight, ignore_index, reduction, dloss):
    """dlogp = -g * w_t at each position's target class, 0 elsewhere."""
    rows, t, w_t, denominator = _picked(targets, weight, ignore_index, logp.shape[1], logp.dtype)
    g = _upstream(dloss, reduction, denominator, logp.dtype).reshape(-1)
    d = np.zeros((rows.size, logp.shape[1]), logp.dtype)
    keep = targets.reshape(-1) != ignore_index
    with np.errstate(invalid="ignore"):
        d[rows, t] = np.where(keep, -g * w_t, 0)  # an ignored position gets 0, even when g is NaN
    return _classes_back(d, logp.shape)


# -- elementwise losses ------------------------------------------------------------------------

def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): never overflows."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def bce_with_logits_forward(logits, targets, weight=None, pos_weight=None, reduction="mean"):
    """-w [pw t log s(x) + (1 - t) log(1 - s(x))] per element, with -log s(x) = softplus(-x) and
    -log(1 - s(x)) = softplus(x); ``weight`` and ``pos_weight`` broadcast against the logits."""
    x, t = logits, targets
    pw = 1 if pos_weight is None else pos_weight
    per = pw * t * _softplus(-x) + (1 - t) * _softplus(x)
    if weight is not None:
        per = per * weight
    return _reduce(np.asarray(per, dtype=logits.dtype), reduction, logits.size)


def bce_with_logits_backward(logits, targets, weight=None, pos_weight=None, reduction="mean", dloss=1.0):
    """dlogits = g w (s(x) (pw t + 1 - t) - pw t); sigmoid(x) - t when pw = w = 1."""
    x, t = logits, targets
    pw = 1 if pos_weight is None else pos_weight
    d = sigmoid_forward(x) * (pw * t + 1 - t) - pw * t
    if weight is not None:
        d = d * weight
    return (_upstream(dloss, reduction, logits.size, logits.dtype) * d).astype(logits.dtype)


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)^2 per element."""
    return _reduce((pred - target) ** 2, reduction, pred.size)


def mse_backward(pred, target, reduction="mean", dloss=1.0):
    """dpred = g * 2 (pred - target)."""
    return (_upstream(dloss, reduction, pred.size, pred.dtype) * 2 * (pred - target)).astype(pred.dtype)


def l1_forward(pred, target, reduction="mean"):
    """|pred - target| per element."""
    return _reduce(np.abs(pred - target), reduction, pred.size)


def l1_backward(pred, target, reduction="mean", dloss=1.0):
    """dpred = g * sign(pred - target) (0 where they are equal, as PyTorch)."""
    return (_upstream(dloss, reduction, pred.size, pred.dtype) * np.sign(pred - target)).astype(pred.dtype)


def smooth_l1_forward(pred, target, beta=1.0, reduction="mean"):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = pred - target); beta = 0 is L1."""
    if beta == 0:
        return l1_forward(pred, target, reduction)
    d = np.abs(pred - target)
    per = np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return _reduce(per.astype(pred.dtype), reduction, pred.size)


def smooth_l1_backward(pred, target, beta=1.0, reduction="mean", dloss=1.0):
    """dpred = g * d / beta inside the band, g * sign(d) outside."""
    if beta == 0:
        return l1_backward(pred, target, reduction, dloss)
    d = pred - target
    grad = np.where(np.abs(d) < beta, d / beta, np.sign(d))
    return (_upstream(dloss, reduction, pred.size, pred.dtype) * grad).astype(pred.dtype)


def huber_forward(pred, target, delta=1.0, reduction="mean"):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta): delta times smooth L1 with beta = delta."""
    d = np.abs(pred - target)
    per = np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
    return _reduce(per.astype(pred.dtype), reduction, pred.size)


def huber_backward(pred, target, delta=1.0, reduction="mean", dloss=1.0):
    """dpred = g * d clipped to [-delta, delta]."""
    grad = np.clip(pred - target, -delta, delta)
    return (_upstream(dloss, reduction, pred.size, pred.dtype) * grad).astype(pred.dtype)
