"""2-D transposed convolution on the CPU: the convolution's own unfold, fold and GEMM, run backwards.

A transposed convolution is the adjoint of the convolution whose weight it shares (the reference,
``backends/numpy/conv_transpose.py``, and docs/conv_transpose.md derive it), so every piece here
is one the numba convolution already compiles (``im2col``/``col2im`` from ``im2col.py``, the
packing ``epilogue`` from ``_util``, OpenBLAS through ``_threads.matmul``); this file adds no
kernel of its own. Per chunk of images:

``forward``   pack x to (C_in, n*H*W); cols = W_g^T . x_g (one GEMM per group); ``col2im`` folds
              cols onto y (it overwrites the chunk's planes); the bias is added in place.
``backward``  ``im2col`` unfolds dy on x's (H, W) grid; dX = W_g . cols_g (a GEMM whose (C_in,
              n*H*W) result the epilogue writes back to dx's layout); dW += x_g . cols_g^T (the batch
              sum happens inside the GEMM); db is the float64 channel sum of dy.

One version. Checked by ``python -m pytest -q tests/test_conformance.py -k "numba and conv_transpose"``;
its kernels are timed as the convolution's (``python -m benchmarks.unfold_sweep``).
"""
from __future__ import annotations

import numpy as np

from . import _memory, _threads
from .conv import chunk_images
from .im2col import col2im, geometry, im2col
from ._util import Rows, compute_dtype, nkl, pair, prepare, run_epilogue, sum_over_n_l
from ...shapes import conv_transpose_output_size

__all__ = ["conv_transpose2d_forward", "conv_transpose2d_backward"]


def check_conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups, where):
    """Validate a transposed convolution's arguments (PyTorch's rules); return
    (stride, padding, output_padding, dilation, groups, OH, OW)."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    output_padding, groups = pair(output_padding, "output_padding"), int(groups)
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"{where}: weight must be 4-D (C_in, C_out/groups, R, S), got shape {tuple(w.shape)}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{where}: in channels {w.shape[0]} of weight {tuple(w.shape)} not divisible by "
                         f"groups={groups}")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"{where}: input shape {tuple(x.shape)} has {x.shape[1]} channels but weight shape "
                         f"{tuple(w.shape)} expects {w.shape[0]}")
    if min(stride + dilation) < 1 or min(padding + output_padding) < 0:
        raise ValueError(f"{where}: stride {stride} and dilation {dilation} must be >= 1, padding {padding} "
                         f"and output_padding {output_padding} >= 0")
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{where}: output_padding {output_padding} must be smaller than either stride "
                         f"{stride} or dilation {dilation}")
    if b is not None and tuple(b.shape) != (w.shape[1] * groups,):
        raise ValueError(f"{where}: bias shape {tuple(b.shape)} does not match weight shape {tuple(w.shape)} "
                         f"with groups={groups}")
    OH, OW = conv_transpose_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding,
                                        dilation, output_padding)
    if OH < 1 or OW < 1:
        raise ValueError(f"{where}: input shape {tuple(x.shape)} with weight {tuple(w.shape)} gives output size "
                         f"({OH}, {OW}), which is too small (padding {padding})")
    return stride, padding, output_padding, dilation, groups, OH, OW


def _pack(a, n0, m, K, L, where):
    """Images n0..n0+m-1 of the (N, K, L)-shaped flat ``a`` as one (K, m*L) matrix (a workspace)."""
    if m == 1:
        return a.reshape(-1, K, L)[n0]
    out = _threads.workspace(where, (K, m * L), a.dtype)
    run_epilogue(Rows(a.reshape(-1), n0 * K * L, K * L, L), Rows(out.reshape(-1), 0, L, m * L), m, K, L)
    return out


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding, dilation, groups):
    """y = col2im(W_g^T . x_g) + b. Shapes: see minicnn.ops."""
    x, w = np.asarray(x), np.asarray(w)
    b = None if b is None else np.asarray(b)
    stride, padding, output_padding, dilation, groups, OH, OW = check_conv_transpose(
        x, w, b, stride, padding, output_padding, dilation, groups, "conv_transpose2d_forward")
    dt = compute_dtype(x, w, b)
    x, w, b = prepare(x, dt), prepare(w, dt), prepare(b, dt)
    N, C, H, W = x.shape
    _, Og, R, S = w.shape
    G, Cg, ORS, HW = groups, C // groups, Og * R * S, H * W
    K = G * Og
    y = _memory.empty((N, K, OH, OW), dt)
    wgT = w.reshape(G, Cg, ORS).transpose(0, 2, 1)
    nc = chunk_images(N, K * R * S * HW * dt.itemsize, HW)
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        xp = _pack(x, n0, m, C, HW, "conv_t.x")
        cols = _threads.workspace("conv_t.cols", (K * R * S, m * HW), dt)
        _threads.matmul(wgT, xp.reshape(G, Cg, m * HW), cols.reshape(G, ORS, m * HW))
        # the fold's grid is x's (H, W): the convolution this is the adjoint of has its output there
        col2im(cols, y, n0, m, geometry(R, S, stride, padding, dilation, H, W))
    if b is not None:
        rows = nkl(y)
        run_epilogue(rows, rows, N, K, OH * OW, b=b)
    return y


def conv_transpose2d_backward(dy, x, w, stride, padding, output_padding, dilation, groups,
                              need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of a transposed convolution; entries not needed are None.

    dx = W_g . im2col(dy) (a convolution of dy), dW = sum over images of x_g . im2col(dy)_g^T.
    """
    dy, x, w = np.asarray(dy), np.asarray(x), np.asarray(w)
    stride, padding, output_padding, dilation, groups, OH, OW = check_conv_transpose(
        x, w, None, stride, padding, output_padding, dilation, groups, "conv_transpose2d_backward")
    N, C, H, W = x.shape
    _, Og, R, S = w.shape
    G, Cg, ORS, HW = groups, C // groups, Og * R * S, H * W
    K = G * Og
    if tuple(dy.shape) != (N, K, OH, OW):
        raise ValueError(f"conv_transpose2d_backward: dy shape {tuple(dy.shape)} does not match the output "
                         f"shape {(N, K, OH, OW)}")
    dt = compute_dtype(dy, x, w)
    dy, w = prepare(dy, dt), prepare(w, dt)
    db = sum_over_n_l(dy.reshape(N, K, OH * OW)).astype(dt) if need_db else None
    if not (need_dx or need_dw):
        return None, None, db
    x = prepare(x, dt) if need_dw else x
    wg = w.reshape(G, Cg, ORS)
    dx = _memory.empty((N, C, H, W), dt) if need_dx else None
    dw = _memory.empty((G, Cg, ORS), dt) if need_dw else None
    nc = chunk_images(N, K * R * S * HW * dt.itemsize, HW)
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        cols = _threads.workspace("conv_t.cols", (K * R * S, m * HW), dt)
        im2col(dy, n0, m, cols, geometry(R, S, stride, padding, dilation, H, W))
        colsg = cols.reshape(G, ORS, m * HW)
        if need_dx:
            if m == 1:  # one image's (C, H*W) result is already dx's layout
                _threads.matmul(wg, colsg, dx[n0].reshape(G, Cg, HW))
            else:
                out = _threads.workspace("conv_t.gemm", (C, m * HW), dt)
                _threads.matmul(wg, colsg, out.reshape(G, Cg, m * HW))
                run_epilogue(Rows(out.reshape(-1), 0, HW, m * HW), nkl(dx, n0), m, C, HW)
        if need_dw:
            xp = _pack(x, n0, m, C, HW, "conv_t.x").reshape(G, Cg, m * HW)
            colsT = colsg.transpose(0, 2, 1)
            if n0 == 0:
                _threads.matmul(xp, colsT, dw)
            else:
                dw += _threads.matmul(xp, colsT, _threads.workspace("conv_t.dw", dw.shape, dt))
    return dx, (dw.reshape(C, Og, R, S) if need_dw else None), db
