"""Batch normalisation over (N, H, W) per channel, the reference. Derivation: docs/batchnorm.md."""
import numpy as np

__all__ = [
    "batchnorm2d_forward_train",
    "batchnorm2d_backward_train",
    "batchnorm2d_forward_eval",
    "batchnorm2d_backward_eval",
]


def _c(v):
    return v.reshape(1, -1, 1, 1)


def batchnorm2d_forward_train(x, gamma, beta, eps):
    """Normalise with this batch's mean and biased variance; return them for the running update."""
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    xhat = (x - _c(mean)) / np.sqrt(_c(var) + eps)
    return (xhat * _c(gamma) + _c(beta)).astype(x.dtype), mean, var


def batchnorm2d_backward_train(dy, x, gamma, mean, var, eps, need_dx=True, need_dparams=True):
    """dx = gamma * rstd / M * (M*dy - sum(dy) - xhat * sum(dy*xhat)), M = N*H*W."""
    M = x.shape[0] * x.shape[2] * x.shape[3]
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - _c(mean)) * _c(rstd)
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dx = None
    if need_dx:
        dx = (_c(gamma * rstd) / M * (M * dy - _c(dbeta) - xhat * _c(dgamma))).astype(x.dtype)
    if not need_dparams:
        dgamma = dbeta = None
    return dx, dgamma, dbeta


def batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps):
    """An affine map per channel: y = x * scale + shift with the running statistics."""
    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    return (x * _c(scale) + _c(shift)).astype(x.dtype)


def batchnorm2d_backward_eval(dy, x, gamma, running_mean, running_var, eps, need_dx=True, need_dparams=True):
    """Eval mode is affine, so dx = dy * gamma / sqrt(running_var + eps)."""
    rstd = 1.0 / np.sqrt(running_var + eps)
    dx = (dy * _c(gamma * rstd)).astype(dy.dtype) if need_dx else None
    dgamma = dbeta = None
    if need_dparams:
        dbeta = dy.sum(axis=(0, 2, 3))
        dgamma = (dy * (x - _c(running_mean)) * _c(rstd)).sum(axis=(0, 2, 3))
    return dx, dgamma, dbeta
