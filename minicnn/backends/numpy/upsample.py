"""Nearest and bilinear upsampling (``interpolate``), the reference. Derivations: docs/upsampling.md.

Both modes read the input through one index map per axis (``shapes.nearest_source_index``,
``shapes.linear_source_index``: PyTorch's rules, shared by every backend):

    nearest:   y[n, c, i, j] = x[n, c, rows[i], cols[j]]
    bilinear:  y[n, c, i, j] = a0[i] (b0[j] x[h0[i], w0[j]] + b1[j] x[h0[i], w1[j]])
                             + a1[i] (b0[j] x[h1[i], w0[j]] + b1[j] x[h1[i], w1[j]])

Each forward is linear in x, so each backward is its adjoint: every dy cell is scattered back,
with the same weights, onto the input cells it read (``np.add.at`` sums repeated targets).
``scales`` is the (scale_h, scale_w) pair of scale factors the caller asked for (None where it
gave a size): PyTorch steps through the input by 1/scale rather than in/out when one is given.
"""
import numpy as np

from ...shapes import linear_source_index, nearest_source_index

__all__ = ["upsample_nearest2d_forward", "upsample_nearest2d_backward",
           "upsample_bilinear2d_forward", "upsample_bilinear2d_backward"]


def _scales(scales):
    return (None, None) if scales is None else tuple(scales)


def upsample_nearest2d_forward(x, output_size, scales=None):
    """x (N, C, H, W) -> y (N, C, OH, OW): each output cell copies one input cell."""
    sh, sw = _scales(scales)
    (OH, OW), (H, W) = output_size, x.shape[2:]
    rows = nearest_source_index(H, OH, sh)
    cols = nearest_source_index(W, OW, sw)
    return x[:, :, rows][:, :, :, cols]


def upsample_nearest2d_backward(dy, x_shape, scales=None):
    """The adjoint of the gather: dx[rows[i], cols[j]] += dy[i, j]."""
    sh, sw = _scales(scales)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    rows = nearest_source_index(H, OH, sh)
    cols = nearest_source_index(W, OW, sw)
    dxr = np.zeros((N, C, OH, W), dtype=dy.dtype)  # columns summed first, then rows
    np.add.at(dxr, (slice(None), slice(None), slice(None), cols), dy)
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    np.add.at(dx, (slice(None), slice(None), rows), dxr)
    return dx


def upsample_bilinear2d_forward(x, output_size, align_corners, scales=None):
    """x (N, C, H, W) -> y (N, C, OH, OW): each output cell blends the 2x2 input cells around its
    source position, interpolating along the width first, then along the height."""
    sh, sw = _scales(scales)
    (OH, OW), (H, W) = output_size, x.shape[2:]
    h0, h1, a0, a1 = linear_source_index(H, OH, align_corners, sh, x.dtype)
    w0, w1, b0, b1 = linear_source_index(W, OW, align_corners, sw, x.dtype)
    top, bottom = x[:, :, h0], x[:, :, h1]                    # (N, C, OH, W)
    t0 = top[..., w0] * b0 + top[..., w1] * b1                 # (N, C, OH, OW)
    t1 = bottom[..., w0] * b0 + bottom[..., w1] * b1
    return t0 * a0[:, None] + t1 * a1[:, None]


def upsample_bilinear2d_backward(dy, x_shape, align_corners, scales=None):
    """The adjoint of the blend: dy[i, j] * a_u[i] * b_v[j] is added to dx[h_u[i], w_v[j]] for
    u, v in {0, 1} (columns scattered first, then rows)."""
    sh, sw = _scales(scales)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    h0, h1, a0, a1 = linear_source_index(H, OH, align_corners, sh, dy.dtype)
    w0, w1, b0, b1 = linear_source_index(W, OW, align_corners, sw, dy.dtype)
    g = np.zeros((N, C, OH, W), dtype=dy.dtype)
    np.add.at(g, (slice(None), slice(None), slice(None), w0), dy * b0)
    np.add.at(g, (slice(None), slice(None), slice(None), w1), dy * b1)
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    np.add.at(dx, (slice(None), slice(None), h0), g * a0[:, None])
    np.add.at(dx, (slice(None), slice(None), h1), g * a1[:, None])
    return dx
