"""Losses: fused softmax + cross-entropy, BCE with logits, MSE.

Mean reductions are deterministic: the data is cut into fixed blocks (not one block per thread),
each block is summed in float64 by one task, and the block sums are added in order, so the loss
is the same bit for bit whatever the thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _threads
from ._util import compute_dtype, prepare
from .activation import BCE_GRAD, MSE_GRAD, run_binary

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
]

BLOCK = 4096
_BCE, _MSE = 0, 1


@njit(cache=True)
def _ce_fwd(z, t, probs, nll):  # pragma: no cover - jitted
    """Per row: nll = logsumexp(z) - z[t] (max subtracted first), probs = exp(z - logsumexp(z)).

    Serial on purpose: logits are (batch, classes), a few thousand values, and a parallel region
    would cost more to start than the loop takes (and more to compile).
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
        nll[n] = lse - np.float64(z[n, t[n]])


@njit(cache=True)
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


@njit(cache=True, parallel=True)
def _block_sums(kind, a, b):  # pragma: no cover - jitted
    """Float64 sum per BLOCK-sized block of the elementwise BCE-with-logits or squared error."""
    n = a.size
    nb = (n + BLOCK - 1) // BLOCK
    out = np.zeros(nb, dtype=np.float64)
    for blk in prange(nb):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        acc = 0.0
        for i in range(lo, hi):
            x = np.float64(a[i])
            t = np.float64(b[i])
            if kind == 0:
                # max(x,0) - x*t + log(1 + exp(-|x|)): never overflows
                acc += max(x, 0.0) - x * t + np.log1p(np.exp(-abs(x)))
            else:
                d = x - t
                acc += d * d
        out[blk] = acc
    return out


def _targets(logits, targets, where):
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise ValueError(f"{where}: targets must be integer class indices, got dtype {t.dtype}")
    if t.shape != (logits.shape[0],):
        raise ValueError(
            f"{where}: logits {tuple(logits.shape)} need targets of shape ({logits.shape[0]},), got {t.shape}"
        )
    if t.size and (t.min() < 0 or t.max() >= logits.shape[1]):
        raise ValueError(f"{where}: targets must lie in [0, {logits.shape[1]}), got min {t.min()} max {t.max()}")
    return prepare(t, np.dtype(np.int64))


def _rows_and_targets(a, targets, name, where):
    """(a prepared as (N, C) in its compute dtype, targets checked against it, that dtype)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{where}: {name} must be (N, C), got shape {tuple(a.shape)}")
    dt = compute_dtype(a)
    a = prepare(a, dt)
    return a, _targets(a, targets, where), dt


def softmax_cross_entropy_forward(logits, targets):
    """(loss, probs): mean over the batch of logsumexp(z) - z[t] (0-d array), and softmax(z)."""
    z, t, dt = _rows_and_targets(logits, targets, "logits", "softmax_cross_entropy_forward")
    probs = np.empty_like(z)
    nll = np.empty(z.shape[0], dtype=np.float64)
    _ce_fwd(z, t, probs, nll)
    loss = nll.sum() / z.shape[0] if z.shape[0] else np.nan
    return np.asarray(loss, dtype=dt), probs


def softmax_cross_entropy_backward(probs, targets):
    """dlogits = (probs - onehot(targets)) / N."""
    p, t, _ = _rows_and_targets(probs, targets, "probs", "softmax_cross_entropy_backward")
    d = np.empty_like(p)
    _ce_bwd(p, t, d)
    return d


def _pair(a, b, where):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{where}: prediction shape {tuple(a.shape)} and target shape {tuple(b.shape)} differ")
    dt = compute_dtype(a)
    return prepare(a, dt), prepare(b, dt)


def _mean(kind, a, b):
    if a.size == 0:
        return np.asarray(np.nan, dtype=a.dtype)
    sums = _threads.run(_block_sums, kind, a.reshape(-1), b.reshape(-1))
    return np.asarray(sums.sum() / a.size, dtype=a.dtype)


def _grad(mode, a, b):
    return run_binary(mode, a, b, "loss gradient", 1.0 / max(a.size, 1))


def bce_with_logits_forward(logits, targets):
    """mean(max(x,0) - x*t + log(1 + exp(-|x|))): -t log s(x) - (1-t) log(1-s(x)), stable for any x."""
    return _mean(_BCE, *_pair(logits, targets, "bce_with_logits_forward"))


def bce_with_logits_backward(logits, targets):
    """(sigmoid(x) - t) / size."""
    return _grad(BCE_GRAD, *_pair(logits, targets, "bce_with_logits_backward"))


def mse_forward(pred, target):
    """mean((pred - target)^2)."""
    return _mean(_MSE, *_pair(pred, target, "mse_forward"))


def mse_backward(pred, target):
    """2 (pred - target) / size."""
    return _grad(MSE_GRAD, *_pair(pred, target, "mse_backward"))
