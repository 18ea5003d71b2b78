"""Padding of the last two axes (constant, reflect, replicate, circular), forward and backward.

As in the reference, every mode is a gather through one index map per axis (the input row and
column each padded cell copies, -1 for a constant pad's fill value; the maps and PyTorch's
limits come from ``shapes.pad_source_index`` and ``shapes.check_pad2d``, the ones the reference
uses, so the two backends cannot disagree on geometry). ``_pad_fwd`` gathers, ``_pad_bwd`` scatter-adds dy back through the same
maps. One task per (n, c) plane: the backward's repeated targets (an edge copied by replicate
padding) are summed by the one task that owns the plane, so there are no races and the order
of the sums does not depend on the thread count.

One version of each kernel. Checked by ``python -m pytest -q tests/test_conformance.py -k "numba and pad2d"``;
not timed by a benchmark of its own.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ...shapes import check_pad2d as check_pads
from ...shapes import pad_source_index as source_index
from ._util import compute_dtype, prepare

__all__ = ["pad2d_forward", "pad2d_backward"]


@njit(cache=True, nogil=True, parallel=True)
def _pad_fwd(x, y, rows, cols, value):  # pragma: no cover - jitted
    """y[n, c, i, j] = x[n, c, rows[i], cols[j]], or ``value`` where either index is -1."""
    N, C = x.shape[0], x.shape[1]
    P, Q = y.shape[2], y.shape[3]
    fill = y.dtype.type(value)
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        xp = x[n, c]
        yp = y[n, c]
        for i in range(P):
            r = rows[i]
            yrow = yp[i]
            if r < 0:
                for j in range(Q):
                    yrow[j] = fill
                continue
            xrow = xp[r]
            for j in range(Q):
                s = cols[j]
                yrow[j] = xrow[s] if s >= 0 else fill


@njit(cache=True, nogil=True, parallel=True)
def _pad_bwd(dy, dx, rows, cols):  # pragma: no cover - jitted
    """dx = 0, then dx[n, c, rows[i], cols[j]] += dy[n, c, i, j] wherever both indices are >= 0."""
    N, C, H, W = dx.shape
    P, Q = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        dxp = dx[n, c]
        dyp = dy[n, c]
        for h in range(H):
            for w in range(W):
                dxp[h, w] = zero
        for i in range(P):
            r = rows[i]
            if r < 0:
                continue
            dxrow = dxp[r]
            dyrow = dyp[i]
            for j in range(Q):
                s = cols[j]
                if s >= 0:
                    dxrow[s] += dyrow[j]


def _maps(shape, pads, mode):
    left, right, top, bottom = (int(p) for p in pads)
    return (source_index(shape[2], top, bottom, mode).astype(np.int64),
            source_index(shape[3], left, right, mode).astype(np.int64))


def _pads(pads, where):
    try:
        pads = tuple(int(p) for p in pads)
    except TypeError:
        pads = ()
    if len(pads) != 4:
        raise ValueError(f"{where}: pads must be (left, right, top, bottom), got {pads!r}")
    return pads


def pad2d_forward(x, pads, mode="constant", value=0.0):
    """x (N, C, H, W) padded by (left, right, top, bottom) in ``mode``; ``value`` fills a constant pad."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"pad2d_forward: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    pads = _pads(pads, "pad2d_forward")
    check_pads(x.shape, pads, mode, "pad2d_forward")
    x = prepare(x, compute_dtype(x))
    rows, cols = _maps(x.shape, pads, mode)
    y = _memory.empty(x.shape[:2] + (rows.size, cols.size), x.dtype)
    _threads.run(_pad_fwd, x, y, rows, cols, float(value), work=x.size + y.size)
    return y


def pad2d_backward(dy, x_shape, pads, mode="constant"):
    """dL/dx of ``pad2d_forward``: each dy cell added to the input cell it copied."""
    x_shape = tuple(int(s) for s in x_shape)
    pads = _pads(pads, "pad2d_backward")
    check_pads(x_shape, pads, mode, "pad2d_backward")
    dy = np.asarray(dy)
    rows, cols = _maps(x_shape, pads, mode)
    if dy.shape != x_shape[:2] + (rows.size, cols.size):
        raise ValueError(f"pad2d_backward: dy shape {tuple(dy.shape)} does not fit input shape {x_shape} "
                         f"padded by {pads}")
    dy = prepare(dy, compute_dtype(dy))
    dx = _memory.empty(x_shape, dy.dtype)
    _threads.run(_pad_bwd, dy, dx, rows, cols, work=dx.size + dy.size)
    return dx
