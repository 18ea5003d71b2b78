"""Nearest and bilinear upsampling (``interpolate``), forward and backward.

As in the reference, both modes read the input through one index map per axis (from
``shapes.nearest_source_index`` / ``shapes.linear_source_index``, the ones the reference uses, so
the two backends cannot disagree on which cells are read or with what weights). Nearest runs
through the bilinear kernels with a flag that makes them copy (its maps carry weights (1, 0)):
one gather kernel and one scatter kernel serve both modes (two compilations per dtype, not
four). One task per (n, c) plane: the backward's repeated targets (an input cell read by
several output cells) are summed by the task that owns the plane, so there are no races and
the sums' order does not depend on the thread count.

One version of each kernel. Checked by ``python -m pytest -q tests/test_conformance.py -k "numba and upsample"``;
not timed by a benchmark of its own.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ...shapes import linear_source_index, nearest_source_index
from ._util import compute_dtype, prepare

__all__ = ["upsample_nearest2d_forward", "upsample_nearest2d_backward",
           "upsample_bilinear2d_forward", "upsample_bilinear2d_backward"]


@njit(cache=True, nogil=True, parallel=True)
def _blend_fwd(x, y, h0, h1, a0, a1, w0, w1, b0, b1, nearest):  # pragma: no cover - jitted
    """y[n, c, i, j] = a0[i] (x[h0, w0] b0[j] + x[h0, w1] b1[j]) + a1[i] (x[h1, w0] b0[j] + x[h1, w1] b1[j]),
    or x[h0, w0] when ``nearest`` (a plain copy: inf * 0 would turn an infinity into NaN)."""
    N, C = x.shape[0], x.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        xp = x[n, c]
        yp = y[n, c]
        for i in range(OH):
            top = xp[h0[i]]
            bot = xp[h1[i]]
            ai0 = a0[i]
            ai1 = a1[i]
            yrow = yp[i]
            if nearest:
                for j in range(OW):
                    yrow[j] = top[w0[j]]
                continue
            for j in range(OW):
                t0 = top[w0[j]] * b0[j] + top[w1[j]] * b1[j]
                t1 = bot[w0[j]] * b0[j] + bot[w1[j]] * b1[j]
                yrow[j] = t0 * ai0 + t1 * ai1


@njit(cache=True, nogil=True, parallel=True)
def _blend_bwd(dy, dx, h0, h1, a0, a1, w0, w1, b0, b1, nearest):  # pragma: no cover - jitted
    """The adjoint of ``_blend_fwd``: dx = 0, then dy[i, j] a_u[i] b_v[j] added at (h_u[i], w_v[j])
    (dy[i, j] alone at (h0[i], w0[j]) when ``nearest``)."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        dxp = dx[n, c]
        dyp = dy[n, c]
        for h in range(H):
            for v in range(W):
                dxp[h, v] = zero
        for i in range(OH):
            top = dxp[h0[i]]
            bot = dxp[h1[i]]
            ai0 = a0[i]
            ai1 = a1[i]
            g = dyp[i]
            if nearest:
                for j in range(OW):
                    top[w0[j]] += g[j]
                continue
            for j in range(OW):
                t0 = g[j] * ai0
                t1 = g[j] * ai1
                top[w0[j]] += t0 * b0[j]
                top[w1[j]] += t0 * b1[j]
                bot[w0[j]] += t1 * b0[j]
                bot[w1[j]] += t1 * b1[j]


def _size(output_size, where):
    try:
        OH, OW = (int(s) for s in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: output_size must be a pair (OH, OW), got {output_size!r}") from None
    return OH, OW


def _check(shape, OH, OW, where):
    if len(shape) != 4:
        raise ValueError(f"{where}: input must be 4-D (N, C, H, W), got shape {tuple(shape)}")
    if min(shape[2], shape[3], OH, OW) < 1:
        raise ValueError(f"{where}: input and output sizes must be greater than 0, got input "
                         f"(H: {shape[2]}, W: {shape[3]}) output (H: {OH}, W: {OW})")


def _maps(H, W, OH, OW, mode, align_corners, scales, dt):
    """(h0, h1, a0, a1, w0, w1, b0, b1): the per-axis source indices and weights; nearest as (1, 0) weights."""
    sh, sw = (None, None) if scales is None else scales
    out = []
    for size, osize, scale in ((H, OH, sh), (W, OW, sw)):
        if mode == "nearest":
            i = nearest_source_index(size, osize, scale)
            out += [i, i, np.ones(osize, dt), np.zeros(osize, dt)]
        else:
            out += list(linear_source_index(size, osize, align_corners, scale, dt))
    return [np.ascontiguousarray(m, dtype=np.int64 if k % 4 < 2 else dt) for k, m in enumerate(out)]


def _forward(x, output_size, mode, align_corners, scales, where):
    x = np.asarray(x)
    OH, OW = _size(output_size, where)
    _check(x.shape, OH, OW, where)
    x = prepare(x, compute_dtype(x))
    y = _memory.empty(x.shape[:2] + (OH, OW), x.dtype)
    maps = _maps(x.shape[2], x.shape[3], OH, OW, mode, align_corners, scales, x.dtype)
    _threads.run(_blend_fwd, x, y, *maps, mode == "nearest", work=4 * y.size)
    return y


def _backward(dy, x_shape, mode, align_corners, scales, where):
    dy = np.asarray(dy)
    x_shape = tuple(int(s) for s in x_shape)
    if dy.ndim != 4 or len(x_shape) != 4 or dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"{where}: dy shape {tuple(dy.shape)} does not fit input shape {x_shape}")
    _check(x_shape, dy.shape[2], dy.shape[3], where)
    dy = prepare(dy, compute_dtype(dy))
    dx = _memory.empty(x_shape, dy.dtype)
    maps = _maps(x_shape[2], x_shape[3], dy.shape[2], dy.shape[3], mode, align_corners, scales, dy.dtype)
    _threads.run(_blend_bwd, dy, dx, *maps, mode == "nearest", work=4 * dy.size + dx.size)
    return dx


def upsample_nearest2d_forward(x, output_size, scales=None):
    """x (N, C, H, W) -> (N, C, OH, OW), each output cell a copy of one input cell."""
    return _forward(x, output_size, "nearest", False, scales, "upsample_nearest2d_forward")


def upsample_nearest2d_backward(dy, x_shape, scales=None):
    """dL/dx of ``upsample_nearest2d_forward``: each dy cell added to the input cell it copied."""
    return _backward(dy, x_shape, "nearest", False, scales, "upsample_nearest2d_backward")


def upsample_bilinear2d_forward(x, output_size, align_corners, scales=None):
    """x (N, C, H, W) -> (N, C, OH, OW), each output cell a blend of the 2x2 cells around its source."""
    return _forward(x, output_size, "bilinear", bool(align_corners), scales, "upsample_bilinear2d_forward")


def upsample_bilinear2d_backward(dy, x_shape, align_corners, scales=None):
    """dL/dx of ``upsample_bilinear2d_forward``: each dy cell scattered onto its 2x2 source cells."""
    return _backward(dy, x_shape, "bilinear", bool(align_corners), scales, "upsample_bilinear2d_backward")
