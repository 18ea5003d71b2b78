"""Nearest and bilinear upsampling (``interpolate``) on the device (kernels in ``kernels/upsample.cu``).

The reference is ``backends/numpy/upsample.py``. Both modes read the input through one index map
per axis (``shapes.nearest_source_index``, ``shapes.linear_source_index``: PyTorch's rules),
computed here on the host and moved to the device as small arrays. Each backward is the adjoint
of its forward, computed as a gather through the inverted maps (``pad.inverse_map``), one thread
per input cell: no atomics, and the reference's summation order.
"""
from __future__ import annotations

import numpy as np

from ...shapes import linear_source_index, nearest_source_index
from .pad import inverse_map, to_device
from .pool import launch

__all__ = ["upsample_nearest2d_forward", "upsample_nearest2d_backward",
           "upsample_bilinear2d_forward", "upsample_bilinear2d_backward"]


def _scales(scales):
    return (None, None) if scales is None else tuple(scales)


def upsample_nearest2d_forward(rt, x, output_size, scales=None):
    """x (N, C, H, W) -> y (N, C, OH, OW): each output cell copies one input cell."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    sh, sw = _scales(scales)
    N, C, H, W = x.shape
    OH, OW = output_size
    rows = nearest_source_index(H, OH, sh)
    cols = nearest_source_index(W, OW, sw)
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    launch(rt, "upsample.cu", "upsample_nearest2d_forward", x.dtype, y.size,
           (x, to_device(rt, rows.astype(np.int64)), to_device(rt, cols.astype(np.int64)), y, np.int64(y.size),
            np.int32(H), np.int32(W), np.int32(OH), np.int32(OW)))
    return y


def _backward(rt, dy, x_shape, row_pairs, col_pairs):
    """dx through the inverted maps: ``row_pairs``/``col_pairs`` list the (map, weights) pairs of
    each axis, in the order the reference scatters them."""
    xp = rt.xp
    dy = xp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    row_ptr, row_idx, row_w = inverse_map(row_pairs, H)
    col_ptr, col_idx, col_w = inverse_map(col_pairs, W)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    launch(rt, "upsample.cu", "upsample2d_backward", dy.dtype, dx.size,
           (dy, to_device(rt, row_ptr), to_device(rt, row_idx), to_device(rt, row_w.astype(dy.dtype)),
            to_device(rt, col_ptr), to_device(rt, col_idx), to_device(rt, col_w.astype(dy.dtype)), dx,
            np.int64(dx.size), np.int32(H), np.int32(W), np.int32(OH), np.int32(OW)))
    return dx


def upsample_nearest2d_backward(rt, dy, x_shape, scales=None):
    """The adjoint of the gather: dx[rows[i], cols[j]] += dy[i, j]."""
    sh, sw = _scales(scales)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    rows = nearest_source_index(H, OH, sh)
    cols = nearest_source_index(W, OW, sw)
    one = np.dtype(dy.dtype).type(1)
    return _backward(rt, dy, x_shape, [(rows, np.full(OH, one))], [(cols, np.full(OW, one))])


def upsample_bilinear2d_forward(rt, x, output_size, align_corners, scales=None):
    """x (N, C, H, W) -> y (N, C, OH, OW): each output cell blends the 2x2 input cells around its
    source position, interpolating along the width first, then along the height."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    sh, sw = _scales(scales)
    N, C, H, W = x.shape
    OH, OW = output_size
    h0, h1, a0, a1 = linear_source_index(H, OH, align_corners, sh, x.dtype)
    w0, w1, b0, b1 = linear_source_index(W, OW, align_corners, sw, x.dtype)
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    rows = [to_device(rt, np.asarray(h0, np.int64)), to_device(rt, np.asarray(h1, np.int64)),
            to_device(rt, np.asarray(a0, x.dtype)), to_device(rt, np.asarray(a1, x.dtype))]
    cols = [to_device(rt, np.asarray(w0, np.int64)), to_device(rt, np.asarray(w1, np.int64)),
            to_device(rt, np.asarray(b0, x.dtype)), to_device(rt, np.asarray(b1, x.dtype))]
    launch(rt, "upsample.cu", "upsample_bilinear2d_forward", x.dtype, y.size,
           (x, *rows, *cols, y, np.int64(y.size), np.int32(H), np.int32(W), np.int32(OH), np.int32(OW)))
    return y


def upsample_bilinear2d_backward(rt, dy, x_shape, align_corners, scales=None):
    """The adjoint of the blend: dy[i, j] * a_u[i] * b_v[j] is added to dx[h_u[i], w_v[j]] for
    u, v in {0, 1} (columns scattered first, then rows)."""
    sh, sw = _scales(scales)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    h0, h1, a0, a1 = linear_source_index(H, OH, align_corners, sh, dy.dtype)
    w0, w1, b0, b1 = linear_source_index(W, OW, align_corners, sw, dy.dtype)
    return _backward(rt, dy, x_shape, [(h0, a0), (h1, a1)], [(w0, b0), (w1, b1)])
