"""Batch normalisation over (N, H, W) per channel: fused single-pass statistics, float64 accumulators.

Forward (train) reads x once for the statistics: per channel, the sums of (x - K) and (x - K)^2 in
float64, K being the channel's first value (the shifted-data algorithm: it keeps the single pass
from cancelling catastrophically when |mean| >> std). A second pass writes y = x*scale + shift.
Backward reads dy and x once for sum(dy) and sum(dy*(x - mean)), then once more to write dx. Eval
mode is the same affine pass with the running statistics. The reductions (``channel_sums``) and
the affine pass (``epilogue``) are the kernels conv and linear also use; a reduction runs one task
per channel, so its order, and the result, is the same for any thread count.

One version of each kernel. Checked against the numpy reference by
``python -m pytest -q tests/test_conformance.py -k "numba and batchnorm"`` (a large-mean case
included); timed per op inside a ResNet-18 training step by
``python -m benchmarks.profile --mode train --batch 16``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import CENTERED_MOMENTS, GRAD_MOMENTS, channel_sums, compute_dtype, nkl, prepare, run_epilogue

__all__ = [
    "batchnorm2d_forward_train",
    "batchnorm2d_backward_train",
    "batchnorm2d_forward_eval",
    "batchnorm2d_backward_eval",
]


@njit(cache=True, nogil=True, parallel=True)
def _dx_train(dy3, x3, mean, rstd, gamma, sdy, sdyx, dx3):  # pragma: no cover - jitted
    """dx = gamma*rstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)), one task per (n, c) plane."""
    N, C, L = x3.shape
    M = N * L
    dt = dx3.dtype
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        k = gamma[c] * rstd[c] / M
        # dx = a*dy + b*(x - mean) + c0; x - mean first, so a large mean cannot cancel away digits
        a = dt.type(k * M)
        b = dt.type(-k * sdyx[c] * rstd[c])
        c0 = dt.type(-k * sdy[c])
        m = dt.type(mean[c])
        g = dy3[n, c]
        xv = x3[n, c]
        d = dx3[n, c]
        for j in range(L):
            d[j] = a * g[j] + b * (xv[j] - m) + c0


def _nc_l(a):
    return a.reshape(a.shape[0], a.shape[1], a.shape[2] * a.shape[3])


def _check(x, gamma, where, *others):
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, v in (("gamma", gamma),) + others:
        if v is not None and np.shape(v) != (C,):
            raise ValueError(
                f"{where}: {name} shape {np.shape(v)} does not match input shape {tuple(x.shape)} ({C} channels)"
            )


def _backward_inputs(dy, x, gamma, where, *others):
    """(dy, x, dtype) checked (shapes of x, gamma and ``others``; dy shaped like x) and prepared."""
    dy, x = np.asarray(dy), np.asarray(x)
    _check(x, gamma, where, *others)
    if dy.shape != x.shape:
        raise ValueError(f"{where}: dy shape {dy.shape} differs from x shape {x.shape}")
    dt = compute_dtype(dy, x)
    return prepare(dy, dt), prepare(x, dt), dt


def _affine(x, scale, shift):
    """y = x * scale[c] + shift[c] (shift may be None) through the shared epilogue kernel."""
    N, C, H, W = x.shape
    L = H * W
    y = _memory.empty(x.shape, x.dtype)
    run_epilogue(nkl(x), nkl(y), N, C, L, scale=scale, b=shift)
    return y


def batchnorm2d_forward_train(x, gamma, beta, eps):
    """(y, mean, var): normalise with this batch's mean and biased variance (returned in x's dtype)."""
    x = np.asarray(x)
    _check(x, gamma, "batchnorm2d_forward_train", ("beta", beta))
    dt = compute_dtype(x)
    x = prepare(x, dt)
    x3 = _nc_l(x)
    # shifted single pass: sums of (x - K) and (x - K)^2 with K = each channel's first value
    K = x3[0, :, 0].astype(np.float64) if x.size else np.zeros(x.shape[1])
    s1, s2 = _threads.run(channel_sums, CENTERED_MOMENTS, x3, x3, K)
    M = max(x3.shape[0] * x3.shape[2], 1)
    m1 = s1 / M
    mean = K + m1
    var = np.maximum(s2 / M - m1 * m1, 0.0)
    rstd = 1.0 / np.sqrt(var + eps)
    scale = np.asarray(gamma, dtype=np.float64) * rstd
    shift = np.asarray(beta, dtype=np.float64) - mean * scale
    y = _affine(x, scale.astype(dt), shift.astype(dt))
    return y, mean.astype(dt), var.astype(dt)


def batchnorm2d_backward_train(dy, x, gamma, mean, var, eps, need_dx=True, need_dparams=True):
    """(dx, dgamma, dbeta) of training-mode batchnorm; dx None unless need_dx, params None unless need_dparams."""
    dy, x, dt = _backward_inputs(dy, x, gamma, "batchnorm2d_backward_train", ("mean", mean), ("var", var))
    mean64 = np.asarray(mean, dtype=np.float64)
    rstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    sdy, sdyxc = _threads.run(channel_sums, GRAD_MOMENTS, _nc_l(x), _nc_l(dy), mean64)
    sdyx = sdyxc * rstd  # sum(dy * xhat)
    dx = None
    if need_dx:
        dx = _memory.empty(x.shape, x.dtype)
        _threads.run(_dx_train, _nc_l(dy), _nc_l(x), mean64, rstd, np.asarray(gamma, dtype=np.float64), sdy, sdyx,
                     _nc_l(dx))
    if not need_dparams:
        return dx, None, None
    return dx, sdyx.astype(dt), sdy.astype(dt)


def batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps):
    """y = x * scale + shift per channel, scale = gamma / sqrt(running_var + eps)."""
    x = np.asarray(x)
    _check(x, gamma, "batchnorm2d_forward_eval", ("beta", beta), ("running_mean", running_mean),
           ("running_var", running_var))
    dt = compute_dtype(x)
    x = prepare(x, dt)
    scale = np.asarray(gamma, dtype=np.float64) / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    shift = np.asarray(beta, dtype=np.float64) - np.asarray(running_mean, dtype=np.float64) * scale
    return _affine(x, scale.astype(dt), shift.astype(dt))


def batchnorm2d_backward_eval(dy, x, gamma, running_mean, running_var, eps, need_dx=True, need_dparams=True):
    """Eval mode is affine: dx = dy * gamma * rstd; dgamma = sum(dy * xhat), dbeta = sum(dy)."""
    dy, x, dt = _backward_inputs(dy, x, gamma, "batchnorm2d_backward_eval", ("running_mean", running_mean),
                                 ("running_var", running_var))
    rstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    dx = _affine(dy, (np.asarray(gamma, dtype=np.float64) * rstd).astype(dt), None) if need_dx else None
    if not need_dparams:
        return dx, None, None
    sdy, sdyxc = _threads.run(channel_sums, GRAD_MOMENTS, _nc_l(x), _nc_l(dy),
                              np.asarray(running_mean, dtype=np.float64))
    return dx, (sdyxc * rstd).astype(dt), sdy.astype(dt)
