"""Losses: the plain softmax cross-entropy, the general class losses (cross-entropy, NLL) and the
elementwise losses (BCE with logits, MSE, L1, smooth L1, Huber).

Kernels, and what each serves:

* ``_ce_fwd`` / ``_ce_bwd``: (N, C) logits, class indices, the batch mean; serial (see ``_ce_fwd``).
  The digits training step's loss: ``nn.CrossEntropyLoss`` takes them whenever nothing else is asked.
* ``_class_fwd`` / ``_class_bwd``: everything else about cross-entropy and NLL, on the (N, C, S)
  view of (N, C, d1, ...) (S = d1*...): class weights, ``ignore_index``, label smoothing, class
  probabilities as targets, log-probabilities as input (NLL). One task per position (n, s).
* ``_elem_fwd`` / ``_elem_bwd``: the five elementwise losses (``kind``), with broadcast weights.

Sums are deterministic: a loss value per position (or per BLOCK of elements) is written by one task
and the values are added in order afterwards, in float64, so the loss is the same bit for bit
whatever the thread count. Targets are not range-checked here (``nn.CrossEntropyLoss`` and
``nn.NLLLoss`` do that once per forward); a class index out of range is never read through: it
gives a NaN loss, which the wrappers turn into a ValueError naming the index.

One version of each kernel. Checked against the numpy reference by
``python -m pytest -q tests/test_conformance.py -k "numba and (entropy or nll or bce or mse or l1 or huber)"``
(the cases in ``tests/conformance/cases_losses_new.py``) and ``tests/test_losses.py``; the digits
training step that ``python -m benchmarks.threads_ab --model digits`` times includes the plain
cross-entropy.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import compute_dtype, empty_like_ndim, prepare

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

# elements per partial sum of a mean: fixed, so the sum's order does not depend on the threads
BLOCK = 4096
# the ``kind`` of the elementwise losses (``_elem_fwd`` / ``_elem_bwd``)
_BCE, _MSE, _L1, _SMOOTH_L1, _HUBER = 0, 1, 2, 3, 4


# -- the plain case ------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _ce_fwd(z, t, probs, nll):  # pragma: no cover - jitted
    """Per row: nll = logsumexp(z) - z[t] (max subtracted first), probs = exp(z - logsumexp(z)).

    Serial on purpose: logits are (batch, classes), a few thousand values, and a parallel region
    would cost more to start than the loop takes (and more to compile). A target outside [0, C)
    is not read through: its row's nll is NaN.
    """
    N, C = z.shape
    for n in range(N):
        mx = -np.inf
        for c in range(C):
            v = np.float64(z[n, c])
            if v > mx:
                mx = v
        s = 0.0
        for c in range(C):
            s += np.exp(np.float64(z[n, c]) - mx)
        lse = mx + np.log(s)
        for c in range(C):
            probs[n, c] = np.exp(np.float64(z[n, c]) - lse)
        k = t[n]
        nll[n] = lse - np.float64(z[n, k]) if 0 <= k < C else np.nan


@njit(cache=True, nogil=True)
def _ce_bwd(probs, t, d):  # pragma: no cover - jitted
    """d = (probs - onehot(t)) / N, serial for the reason given in _ce_fwd."""
    N, C = probs.shape
    inv = 1.0 / N
    for n in range(N):
        for c in range(C):
            g = np.float64(probs[n, c])
            if c == t[n]:
                g -= 1.0
            d[n, c] = g * inv


def _class_targets(t, shape, where):
    """Integer class indices of ``shape`` as C-contiguous int64 (no range check: see the module doc)."""
    t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{where}: targets must be integer class indices, got dtype {t.dtype}")
    if t.shape != tuple(shape):
        raise ValueError(f"{where}: the input needs targets of shape {tuple(shape)}, got {t.shape}")
    return prepare(t, np.dtype(np.int64))


def _bad_index(t, C, ignore_index, where):
    """The ValueError for a class index outside [0, C) that is not ``ignore_index`` (None if none is)."""
    bad = (t < 0) | (t >= C)
    if ignore_index is not None:
        bad &= t != ignore_index
    if not bad.any():
        return None
    return ValueError(f"{where}: target {int(t[bad][0])} is out of bounds: targets must lie in [0, {C}), "
                      f"got min {int(t.min())} max {int(t.max())}")


def _rows(a, name, where):
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{where}: {name} must be (N, C), got shape {tuple(a.shape)}")
    return prepare(a, compute_dtype(a))


def softmax_cross_entropy_forward(logits, targets):
    """(loss, probs): mean over the batch of logsumexp(z) - z[t] (0-d array), and softmax(z)."""
    z = _rows(logits, "logits", "softmax_cross_entropy_forward")
    t = _class_targets(targets, z.shape[:1], "softmax_cross_entropy_forward")
    probs = np.empty_like(z)
    nll = np.empty(z.shape[0], dtype=np.float64)
    _ce_fwd(z, t, probs, nll)
    loss = nll.sum() / z.shape[0] if z.shape[0] else np.nan
    if np.isnan(loss):
        err = _bad_index(t, z.shape[1], None, "softmax_cross_entropy_forward")
        if err is not None:
            raise err
    return np.asarray(loss, dtype=z.dtype), probs


def softmax_cross_entropy_backward(probs, targets):
    """dlogits = (probs - onehot(targets)) / N."""
    p = _rows(probs, "probs", "softmax_cross_entropy_backward")
    t = _class_targets(targets, p.shape[:1], "softmax_cross_entropy_backward")
    d = np.empty_like(p)
    _ce_bwd(p, t, d)
    return d


# -- cross-entropy and NLL in general --------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def _class_fwd(z, t, y, soft, w, ignore, eps, log_input, lse, per, wt):  # pragma: no cover - jitted
    """Per position (n, s) of z (N, C, S): lse[n, s], the loss per[n, s] and its weight wt[n, s] in the mean.

    Class indices t (N, S) (``soft`` False): per = (1 - eps) w_t (lse - z_t) + eps/C sum_c w_c (lse - z_c),
    wt = w_t; an ignored position gives 0 and 0; an index outside [0, C) gives NaN and NaN.
    Class probabilities y (N, C, S) (``soft``): per = sum_c w_c ((1 - eps) y_c + eps/C) (lse - z_c), wt = 1.
    ``log_input``: z already holds log-probabilities (NLL), lse is 0. ``w`` empty: every weight is 1.
    A class whose coefficient is 0 is skipped, so a -inf score there adds nothing.
    """
    N, C, S = z.shape
    has_w = w.size > 0
    share = eps / C
    for task in prange(N * S):
        n = task // S
        s = task - n * S
        lo = 0.0
        if not log_input:
            mx = -np.inf
            for c in range(C):
                v = np.float64(z[n, c, s])
                if v > mx:
                    mx = v
            acc = 0.0
            for c in range(C):
                acc += np.exp(np.float64(z[n, c, s]) - mx)
            lo = mx + np.log(acc)
        lse[n, s] = lo
        if soft:
            acc = 0.0
            for c in range(C):
                q = ((1.0 - eps) * np.float64(y[n, c, s]) + share) * (np.float64(w[c]) if has_w else 1.0)
                if q != 0.0:
                    acc += q * (lo - np.float64(z[n, c, s]))
            per[n, s] = acc
            wt[n, s] = 1.0
            continue
        k = t[n, s]
        if k == ignore:
            per[n, s] = 0.0
            wt[n, s] = 0.0
            continue
        if k < 0 or k >= C:
            per[n, s] = np.nan
            wt[n, s] = np.nan
            continue
        wk = np.float64(w[k]) if has_w else 1.0
        acc = (1.0 - eps) * wk * (lo - np.float64(z[n, k, s])) if eps != 1.0 else 0.0
        if eps != 0.0:
            sm = 0.0
            for c in range(C):
                wc = np.float64(w[c]) if has_w else 1.0
                if wc != 0.0:
                    sm += wc * (lo - np.float64(z[n, c, s]))
            acc += share * sm
        per[n, s] = acc
        wt[n, s] = wk


@njit(cache=True, nogil=True, parallel=True)
def _class_bwd(z, lse, t, y, soft, w, wsum, ignore, eps, log_input, g, gs, d):  # pragma: no cover - jitted
    """d[n, :, s] = u (Q p - q) per position, the gradient of _class_fwd's per[n, s] times its upstream u.

    q_c is the coefficient of -log p_c in the loss (see _class_fwd), Q = sum_c q_c, p = exp(z - lse);
    u = gs * g[n, s] (g empty: u = gs). ``log_input`` (NLL): d = -u q, no softmax term.
    ``wsum`` = sum_c w_c (C when ``w`` is empty).
    """
    N, C, S = z.shape
    has_w = w.size > 0
    has_g = g.size > 0
    share = eps / C
    for task in prange(N * S):
        n = task // S
        s = task - n * S
        u = gs * (np.float64(g[n, s]) if has_g else 1.0)
        lo = np.float64(lse[n, s])
        if soft:
            big_q = 0.0
            for c in range(C):
                big_q += ((1.0 - eps) * np.float64(y[n, c, s]) + share) * (np.float64(w[c]) if has_w else 1.0)
            for c in range(C):
                q = ((1.0 - eps) * np.float64(y[n, c, s]) + share) * (np.float64(w[c]) if has_w else 1.0)
                d[n, c, s] = u * (big_q * np.exp(np.float64(z[n, c, s]) - lo) - q)
            continue
        k = t[n, s]
        if k == ignore or k < 0 or k >= C:
            for c in range(C):
                d[n, c, s] = 0.0
            continue
        wk = np.float64(w[k]) if has_w else 1.0
        if log_input:
            for c in range(C):
                d[n, c, s] = 0.0
            d[n, k, s] = -u * wk
            continue
        big_q = (1.0 - eps) * wk + share * wsum
        for c in range(C):
            q = share * (np.float64(w[c]) if has_w else 1.0)
            if c == k:
                q += (1.0 - eps) * wk
            d[n, c, s] = u * (big_q * np.exp(np.float64(z[n, c, s]) - lo) - q)


def _check_reduction(reduction, where):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{where}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


class _ClassCall:
    """The arrays of one cross-entropy / NLL call, prepared for _class_fwd / _class_bwd."""

    def __init__(self, x, targets, weight, ignore_index, label_smoothing, where, allow_soft):
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"{where}: input must be (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}")
        self.dt = compute_dtype(x)
        self.shape = tuple(x.shape)
        N, C = x.shape[:2]
        S = int(np.prod(x.shape[2:], dtype=np.int64))
        self.out_shape = (N,) + tuple(x.shape[2:])
        self.C = C
        self.z = prepare(x, self.dt).reshape(N, C, S)
        targets = np.asarray(targets)
        self.soft = targets.dtype.kind == "f"
        if self.soft:
            if not allow_soft or targets.shape != x.shape:
                raise ValueError(f"{where}: class-probability targets must have the input's shape "
                                 f"{tuple(x.shape)}, got {targets.shape}")
            self.y = prepare(targets, self.dt).reshape(N, C, S)
            self.t = empty_like_ndim(2, np.int64)
        else:
            self.t = _class_targets(targets, self.out_shape, where).reshape(N, S)
            self.y = empty_like_ndim(3, self.dt)
        if weight is None:
            self.w = empty_like_ndim(1, self.dt)
        else:
            self.w = prepare(weight, self.dt)
            if self.w.shape != (C,):
                raise ValueError(f"{where}: weight must have one entry per class ({C}), got shape {self.w.shape}")
        self.ignore = int(ignore_index)
        self.eps = float(label_smoothing)
        self.where = where

    def forward(self, reduction, log_input):
        _check_reduction(reduction, self.where)
        N, C, S = self.z.shape
        lse = np.empty((N, S), np.float64)
        per = np.empty((N, S), np.float64)
        wt = np.empty((N, S), np.float64)
        _threads.run(_class_fwd, self.z, self.t, self.y, self.soft, self.w, self.ignore, self.eps, bool(log_input),
                     lse, per, wt, work=self.z.size)
        den = wt.sum()
        if np.isnan(den) and not self.soft:
            err = _bad_index(self.t, C, self.ignore, self.where)
            if err is not None:
                raise err
        if reduction == "none":
            loss = per.astype(self.dt).reshape(self.out_shape)
        else:
            total = per.sum()
            if reduction == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    total = np.float64(total) / (np.float64(N * S) if self.soft else den)
            loss = np.asarray(total, dtype=self.dt)
        return loss, lse.astype(self.dt).reshape(self.out_shape)

    def denominator(self):
        """What 'mean' divides by: the positions (class probabilities) or the kept targets' total weight."""
        N, C, S = self.z.shape
        if self.soft:
            return float(N * S)
        keep = self.t != self.ignore
        if self.w.size == 0:
            return float(np.count_nonzero(keep))
        return float(self.w.astype(np.float64)[self.t[keep]].sum())

    def backward(self, lse, reduction, dloss, log_input):
        _check_reduction(reduction, self.where)
        N, C, S = self.z.shape
        if reduction == "none":
            g = np.asarray(dloss)
            if g.shape != self.out_shape:
                raise ValueError(f"{self.where}: with reduction='none' dloss must have the loss's shape "
                                 f"{self.out_shape}, got {g.shape}")
            g, gs = prepare(g, self.dt).reshape(N, S), 1.0
        else:
            g, gs = empty_like_ndim(2, self.dt), float(dloss)
            if reduction == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    gs = float(np.float64(gs) / np.float64(self.denominator()))
        lse = empty_like_ndim(2, self.dt) if log_input else prepare(lse, self.dt).reshape(N, S)
        wsum = float(self.w.sum(dtype=np.float64)) if self.w.size else float(C)
        d = _memory.empty((N, C, S), self.dt)
        _threads.run(_class_bwd, self.z, lse, self.t, self.y, self.soft, self.w, wsum, self.ignore, self.eps,
                     bool(log_input), g, gs, d, work=self.z.size)
        return d.reshape(self.shape)


def cross_entropy_forward(logits, targets, weight, ignore_index, label_smoothing, reduction):
    """(loss, lse): softmax cross-entropy per position, reduced; lse = logsumexp over classes (N, d1, ...)."""
    call = _ClassCall(logits, targets, weight, ignore_index, label_smoothing, "cross_entropy_forward", True)
    return call.forward(reduction, log_input=False)


def cross_entropy_backward(logits, lse, targets, weight, ignore_index, label_smoothing, reduction, dloss):
    """dlogits = u (Q softmax(z) - q) per position (see _class_bwd)."""
    call = _ClassCall(logits, targets, weight, ignore_index, label_smoothing, "cross_entropy_backward", True)
    return call.backward(lse, reduction, dloss, log_input=False)


def nll_forward(logp, targets, weight, ignore_index, reduction):
    """-w_t logp[t] per position (0 where ignored), reduced ('mean' divides by sum w_t)."""
    call = _ClassCall(logp, targets, weight, ignore_index, 0.0, "nll_forward", False)
    return call.forward(reduction, log_input=True)[0]


def nll_backward(logp, targets, weight, ignore_index, reduction, dloss):
    """dlogp = -u w_t at the target class, 0 elsewhere."""
    call = _ClassCall(logp, targets, weight, ignore_index, 0.0, "nll_backward", False)
    return call.backward(None, reduction, dloss, log_input=True)


# -- elementwise losses ----------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _value(kind, x, t, pw, param):  # pragma: no cover - jitted
    """One element's loss (float64 in, float64 out); ``param`` is beta (smooth L1) or delta (Huber)."""
    if kind == _BCE:  # BCE with logits: pw t softplus(-x) + (1 - t) softplus(x)
        sp = np.log1p(np.exp(-abs(x)))
        return pw * t * (max(-x, 0.0) + sp) + (1.0 - t) * (max(x, 0.0) + sp)
    d = x - t
    if kind == _MSE:
        return d * d
    a = abs(d)
    if kind == _L1 or (kind == _SMOOTH_L1 and param == 0.0):
        return a
    if kind == _SMOOTH_L1:
        return 0.5 * d * d / param if a < param else a - 0.5 * param
    return 0.5 * d * d if a < param else param * (a - 0.5 * param)  # _HUBER


@njit(cache=True, nogil=True)
def _slope(kind, x, t, pw, param):  # pragma: no cover - jitted
    """d(one element's loss)/dx."""
    if kind == _BCE:  # sigmoid(x) (pw t + 1 - t) - pw t, sigmoid split by sign so exp never overflows
        if x >= 0:
            sg = 1.0 / (1.0 + np.exp(-x))
        else:
            e = np.exp(x)
            sg = e / (1.0 + e)
        return sg * (pw * t + 1.0 - t) - pw * t
    d = x - t
    if kind == _MSE:
        return 2.0 * d
    sign = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
    if kind == _L1 or (kind == _SMOOTH_L1 and param == 0.0):
        return sign
    if kind == _SMOOTH_L1:
        return d / param if abs(d) < param else sign
    return min(max(d, -param), param)  # _HUBER


@njit(cache=True, nogil=True, parallel=True)
def _elem_fwd(kind, a, b, w, pw, param, per, sums):  # pragma: no cover - jitted
    """Float64 sum per BLOCK of the elementwise losses (times w, with pw as BCE's pos_weight); the
    values themselves go to ``per`` when it is not empty. w and pw: broadcast already, or empty."""
    n = a.size
    has_w = w.size > 0
    has_pw = pw.size > 0
    keep = per.size > 0
    for blk in prange(sums.size):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        acc = 0.0
        for i in range(lo, hi):
            v = _value(kind, np.float64(a[i]), np.float64(b[i]), np.float64(pw[i]) if has_pw else 1.0, param)
            if has_w:
                v *= np.float64(w[i])
            if keep:
                per[i] = v
            acc += v
        sums[blk] = acc


@njit(cache=True, nogil=True, parallel=True)
def _elem_bwd(kind, a, b, w, pw, param, g, gs, d):  # pragma: no cover - jitted
    """d = gs * g * w * slope per element (g, w, pw empty: 1)."""
    has_w = w.size > 0
    has_pw = pw.size > 0
    has_g = g.size > 0
    for i in prange(a.size):
        v = gs * _slope(kind, np.float64(a[i]), np.float64(b[i]), np.float64(pw[i]) if has_pw else 1.0, param)
        if has_g:
            v *= np.float64(g[i])
        if has_w:
            v *= np.float64(w[i])
        d[i] = v


def _pair(a, b, where):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{where}: prediction shape {tuple(a.shape)} and target shape {tuple(b.shape)} differ")
    dt = compute_dtype(a)
    return prepare(a, dt), prepare(b, dt), dt


def _spread(v, shape, dt, name, where):
    """Optional ``v`` broadcast to ``shape`` as a flat contiguous array (empty stand-in when None)."""
    if v is None:
        return empty_like_ndim(1, dt)
    v = np.asarray(v)
    try:
        v = np.broadcast_to(v, shape)
    except ValueError:
        raise ValueError(f"{where}: {name} of shape {v.shape} does not broadcast to the input's shape "
                         f"{shape}") from None
    return prepare(v, dt).reshape(-1)


def _forward(kind, pred, target, reduction, where, param=0.0, weight=None, pos_weight=None):
    _check_reduction(reduction, where)
    a, b, dt = _pair(pred, target, where)
    w = _spread(weight, a.shape, dt, "weight", where)
    pw = _spread(pos_weight, a.shape, dt, "pos_weight", where)
    per = _memory.empty(a.shape, dt) if reduction == "none" else empty_like_ndim(1, dt)
    sums = np.zeros((a.size + BLOCK - 1) // BLOCK, np.float64)
    _threads.run(_elem_fwd, kind, a.reshape(-1), b.reshape(-1), w, pw, float(param), per.reshape(-1), sums,
                 work=a.size)
    if reduction == "none":
        return per
    total = sums.sum()
    if reduction == "mean":
        total = total / a.size if a.size else np.nan
    return np.asarray(total, dtype=dt)


def _backward(kind, pred, target, reduction, dloss, where, param=0.0, weight=None, pos_weight=None):
    _check_reduction(reduction, where)
    a, b, dt = _pair(pred, target, where)
    w = _spread(weight, a.shape, dt, "weight", where)
    pw = _spread(pos_weight, a.shape, dt, "pos_weight", where)
    if reduction == "none":
        g = np.asarray(dloss)
        if g.shape != a.shape:
            raise ValueError(f"{where}: with reduction='none' dloss must have the loss's shape {a.shape}, "
                             f"got {g.shape}")
        g, gs = prepare(g, dt).reshape(-1), 1.0
    else:
        g, gs = empty_like_ndim(1, dt), float(dloss)
        if reduction == "mean":
            gs = gs / a.size if a.size else np.nan
    d = _memory.empty(a.shape, dt)
    _threads.run(_elem_bwd, kind, a.reshape(-1), b.reshape(-1), w, pw, float(param), g, gs, d.reshape(-1),
                 work=a.size, weight=_threads.LIGHT)
    return d


def bce_with_logits_forward(logits, targets, weight=None, pos_weight=None, reduction="mean"):
    """w (pw t softplus(-x) + (1 - t) softplus(x)) per element: -w [pw t log s(x) + (1-t) log(1-s(x))]."""
    return _forward(_BCE, logits, targets, reduction, "bce_with_logits_forward", weight=weight, pos_weight=pos_weight)


def bce_with_logits_backward(logits, targets, weight=None, pos_weight=None, reduction="mean", dloss=1.0):
    """g w (sigmoid(x) (pw t + 1 - t) - pw t)."""
    return _backward(_BCE, logits, targets, reduction, dloss, "bce_with_logits_backward", weight=weight,
                     pos_weight=pos_weight)


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)^2 per element."""
    return _forward(_MSE, pred, target, reduction, "mse_forward")


def mse_backward(pred, target, reduction="mean", dloss=1.0):
    """g * 2 (pred - target)."""
    return _backward(_MSE, pred, target, reduction, dloss, "mse_backward")


def l1_forward(pred, target, reduction="mean"):
    """|pred - target| per element."""
    return _forward(_L1, pred, target, reduction, "l1_forward")


def l1_backward(pred, target, reduction="mean", dloss=1.0):
    """g * sign(pred - target)."""
    return _backward(_L1, pred, target, reduction, dloss, "l1_backward")


def smooth_l1_forward(pred, target, beta=1.0, reduction="mean"):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta = 0: L1)."""
    return _forward(_SMOOTH_L1, pred, target, reduction, "smooth_l1_forward", param=beta)


def smooth_l1_backward(pred, target, beta=1.0, reduction="mean", dloss=1.0):
    """g * d / beta inside the band, g * sign(d) outside."""
    return _backward(_SMOOTH_L1, pred, target, reduction, dloss, "smooth_l1_backward", param=beta)


def huber_forward(pred, target, delta=1.0, reduction="mean"):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    return _forward(_HUBER, pred, target, reduction, "huber_forward", param=delta)


def huber_backward(pred, target, delta=1.0, reduction="mean", dloss=1.0):
    """g * clip(d, -delta, delta)."""
    return _backward(_HUBER, pred, target, reduction, dloss, "huber_backward", param=delta)
