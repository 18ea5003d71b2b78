"""Inverted dropout: zero each unit with probability p and scale survivors by 1/(1-p),
so eval mode is the identity."""
import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, p, rng):
    if p >= 1.0:
        mask = np.zeros_like(x)
    else:
        mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask
