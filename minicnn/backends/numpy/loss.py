"""Losses. Softmax and cross-entropy are fused: the gradient is simply (p - onehot) / N.
Derivation: docs/softmax_cross_entropy.md."""
import numpy as np

from .activation import sigmoid_forward

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mse_forward",
    "mse_backward",
]


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


def bce_with_logits_forward(logits, targets):
    """mean( max(x,0) - x*t + log(1 + exp(-|x|)) ): equal to -t log s(x) - (1-t) log(1-s(x)), never overflowing."""
    x, t = logits, targets
    loss = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    return np.asarray(loss.mean(), dtype=logits.dtype)


def bce_with_logits_backward(logits, targets):
    return ((sigmoid_forward(logits) - targets) / logits.size).astype(logits.dtype)


def mse_forward(pred, target):
    return np.asarray(((pred - target) ** 2).mean(), dtype=pred.dtype)


def mse_backward(pred, target):
    return (2.0 * (pred - target) / pred.size).astype(pred.dtype)
