"""Channel dropout (``nn.Dropout2d``): zero whole (n, c) planes with probability p and scale the
surviving planes by 1/(1-p), so eval mode is the identity. One draw per plane, not per value."""
import numpy as np

__all__ = ["dropout2d_forward", "dropout2d_backward"]


def dropout2d_forward(x, p, rng):
    """x (N, C, ...) -> (y, mask); mask (N, C) holds 0 or 1/(1-p), drawn as ``rng.random((N, C)) >= p``."""
    N, C = x.shape[:2]
    if p >= 1.0:
        mask = np.zeros((N, C), dtype=x.dtype)  # draws nothing, as dropout_forward
    else:
        mask = (rng.random((N, C)) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    plane = mask.reshape((N, C) + (1,) * (x.ndim - 2))  # broadcast each plane's factor over it
    return x * plane, mask


def dropout2d_backward(dy, mask):
    """dy times each plane's factor: the forward is linear in x with that coefficient."""
    return dy * mask.reshape(mask.shape + (1,) * (dy.ndim - 2))
