"""Batch normalisation over (N, H, W) per channel on the device (kernels in ``kernels/batchnorm.cu``).

The reference is ``backends/numpy/batchnorm.py`` (derivation: docs/batchnorm.md). A per-channel
reduction runs as ``C * G`` blocks, each summing one chunk of a channel in double precision,
then one thread per channel adds its ``G`` partials in order (:func:`chunks` picks ``G``), so
results do not depend on timing and a channel with a large mean and a small spread keeps its
variance (two passes: the mean, then the mean of squared deviations).
"""
from __future__ import annotations

import numpy as np

from ._launch import grid_1d, suffix
from .pool import launch

__all__ = [
    "batchnorm2d_forward_train",
    "batchnorm2d_backward_train",
    "batchnorm2d_forward_eval",
    "batchnorm2d_backward_eval",
]

BN_BLOCK = 256  # threads per reduction block: BN_BLOCK in batchnorm.cu
TARGET_BLOCKS = 512  # enough reduction blocks to fill a large GPU several times over
MIN_PER_BLOCK = 8192  # values per block below which splitting a channel further does not pay


def chunks(M: int, C: int) -> tuple[int, int]:
    """``(G, chunk)``: each channel's ``M`` values split into ``G`` chunks of ``chunk`` (the last
    may be shorter, none is empty): about ``TARGET_BLOCKS`` blocks over all channels, but no
    chunk under ``MIN_PER_BLOCK`` values unless the channel is one chunk."""
    G = max(1, min(M // MIN_PER_BLOCK, -(-TARGET_BLOCKS // max(C, 1))))
    chunk = max(1, -(-M // G))
    return -(-M // chunk) if M else 1, chunk


def _reduce(rt, name, dtype, C, G, args):
    """Launch the reduction kernel ``name`` over C * G blocks of BN_BLOCK threads."""
    rt.kernel("batchnorm.cu", f"{name}_{suffix(dtype)}")((C * G,), (BN_BLOCK,), args)


def _geometry(x):
    N, C, H, W = x.shape
    return C, H * W, N * H * W


def _grad_sums(rt, dy, x, mean, var, eps):
    """(dbeta, dgamma) = (sum of dy, sum of dy * xhat) per channel, xhat from ``mean``/``var``."""
    xp = rt.xp
    C, HW, M = _geometry(x)
    dbeta, dgamma = xp.empty((C,), dtype=dy.dtype), xp.empty((C,), dtype=dy.dtype)
    if C == 0:
        return dbeta, dgamma
    G, chunk = chunks(M, C)
    part1, part2 = xp.empty((C * G,), dtype=np.float64), xp.empty((C * G,), dtype=np.float64)
    eps_t = dy.dtype.type(eps)
    _reduce(rt, "bn_partial_grad", dy.dtype, C, G,
            (dy, x, mean, var, part1, part2, np.int32(C), np.int64(HW), np.int64(M), np.int32(G), np.int64(chunk),
             eps_t))
    rt.kernel("batchnorm.cu", f"bn_grad_sums_{suffix(dy.dtype)}")(
        grid_1d(C), (256,), (part1, part2, dbeta, dgamma, np.int32(C), np.int32(G)))
    return dbeta, dgamma


def _contiguous(xp, *arrays):
    return tuple(xp.ascontiguousarray(a) for a in arrays)


def batchnorm2d_forward_train(rt, x, gamma, beta, eps):
    """Normalise with this batch's mean and biased variance; return them for the running update."""
    xp = rt.xp
    x, gamma, beta = _contiguous(xp, x, gamma, beta)
    C, HW, M = _geometry(x)
    y = xp.empty(x.shape, dtype=x.dtype)
    mean, var = xp.empty((C,), dtype=x.dtype), xp.empty((C,), dtype=x.dtype)
    if C == 0 or M == 0:  # the reference's mean of nothing is NaN
        mean.fill(np.nan)
        var.fill(np.nan)
        return y, mean, var
    G, chunk = chunks(M, C)
    part1, part2 = xp.empty((C * G,), dtype=np.float64), xp.empty((C * G,), dtype=np.float64)
    geo = (np.int32(C), np.int64(HW), np.int64(M), np.int32(G), np.int64(chunk))
    _reduce(rt, "bn_partial_sum", x.dtype, C, G, (x, part1, *geo))
    _reduce(rt, "bn_partial_sqdev", x.dtype, C, G, (x, part1, part2, *geo))
    rt.kernel("batchnorm.cu", f"bn_stats_{suffix(x.dtype)}")(
        grid_1d(C), (256,), (part1, part2, mean, var, np.int32(C), np.int64(M), np.int32(G)))
    launch(rt, "batchnorm.cu", "bn_train_forward", x.dtype, y.size,
           (x, mean, var, gamma, beta, y, np.int64(y.size), np.int32(C), np.int64(HW), x.dtype.type(eps)))
    return y, mean, var


def batchnorm2d_backward_train(rt, dy, x, gamma, mean, var, eps, need_dx=True, need_dparams=True):
    """dx = gamma * rstd / M * (M*dy - sum(dy) - xhat * sum(dy*xhat)), M = N*H*W."""
    if not (need_dx or need_dparams):
        return None, None, None
    xp = rt.xp
    dy, x, gamma, mean, var = _contiguous(xp, dy, x, gamma, mean, var)
    C, HW, M = _geometry(x)
    dbeta, dgamma = _grad_sums(rt, dy, x, mean, var, eps)
    dx = None
    if need_dx:
        dx = xp.empty(x.shape, dtype=x.dtype)
        launch(rt, "batchnorm.cu", "bn_train_dx", x.dtype, dx.size,
               (dy, x, gamma, mean, var, dbeta, dgamma, dx, np.int64(dx.size), np.int32(C), np.int64(HW),
                np.int64(M), x.dtype.type(eps)))
    if not need_dparams:
        dgamma = dbeta = None
    return dx, dgamma, dbeta


def batchnorm2d_forward_eval(rt, x, gamma, beta, running_mean, running_var, eps):
    """An affine map per channel: y = x * scale + shift with the running statistics."""
    xp = rt.xp
    x, gamma, beta, running_mean, running_var = _contiguous(xp, x, gamma, beta, running_mean, running_var)
    C, HW, _ = _geometry(x)
    y = xp.empty(x.shape, dtype=x.dtype)
    launch(rt, "batchnorm.cu", "bn_eval_forward", x.dtype, y.size,
           (x, gamma, beta, running_mean, running_var, y, np.int64(y.size), np.int32(C), np.int64(HW),
            x.dtype.type(eps)))
    return y


def batchnorm2d_backward_eval(rt, dy, x, gamma, running_mean, running_var, eps, need_dx=True, need_dparams=True):
    """Eval mode is affine, so dx = dy * gamma / sqrt(running_var + eps)."""
    xp = rt.xp
    dy, x, gamma, running_mean, running_var = _contiguous(xp, dy, x, gamma, running_mean, running_var)
    C, HW, _ = _geometry(x)
    dx = dgamma = dbeta = None
    if need_dx:
        dx = xp.empty(dy.shape, dtype=dy.dtype)
        launch(rt, "batchnorm.cu", "bn_eval_dx", dy.dtype, dx.size,
               (dy, gamma, running_var, dx, np.int64(dx.size), np.int32(C), np.int64(HW), dy.dtype.type(eps)))
    if need_dparams:
        dbeta, dgamma = _grad_sums(rt, dy, x, running_mean, running_var, eps)
    return dx, dgamma, dbeta
