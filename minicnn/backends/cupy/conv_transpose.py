"""2-D transposed convolution on the device: the convolution's pieces with the roles swapped.

The reference is ``backends/numpy/conv_transpose.py`` (derivation: docs/conv_transpose.md):

    forward:   y  = col2im(W_g^T @ x_g) + b        (a convolution's dX, with x in dY's place)
    backward:  dx = W_g @ im2col(dy)               (a convolution's forward of dy)
               dW = x_g @ im2col(dy)_g^T           (summed over the batch)
               db = dy summed over (N, H, W)

The column buffers come from ``kernels/conv.cu``'s im2col and col2im on the output grid (the
"image" being y, the grid x's (H, W)), the products from cuBLAS, in batch chunks of at most
``conv.WORKSPACE_BYTES`` of columns. The weight is (C_in, C_out/groups, R, S), PyTorch's layout.
"""
from __future__ import annotations

from ...shapes import conv_transpose_output_size
from ._launch import suffix
from .conv import (WORKSPACE_BYTES, add_inplace, batch_chunk, channel_sum, col2im, column_strides, epilogue,
                   im2col)

__all__ = ["conv_transpose2d_forward", "conv_transpose2d_backward"]


def _geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups, where):
    """(N, C, H, W, G, Cg, Og, R, S, OH, OW); ValueError naming ``where`` for shapes that do not fit."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"{where}: expected x (N, C, H, W) and w (C, K/groups, R, S), got {tuple(x_shape)} and "
                         f"{tuple(w_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    Cw, Og, R, S = (int(v) for v in w_shape)
    G = int(groups)
    if G < 1 or Cw != C or C % G:
        raise ValueError(f"{where}: x {tuple(x_shape)} and w {tuple(w_shape)} do not fit groups={G} "
                         f"(need w.shape[0] = C, divisible by groups)")
    OH, OW = conv_transpose_output_size(H, W, R, S, stride, padding, dilation, output_padding)
    if OH < 1 or OW < 1:
        raise ValueError(f"{where}: the output would be {OH}x{OW}; padding {tuple(padding)} is too large")
    return N, C, H, W, G, C // G, Og, R, S, OH, OW


def conv_transpose2d_forward(rt, x, w, b, stride, padding, output_padding, dilation, groups,
                             workspace_bytes=WORKSPACE_BYTES):
    """y (N, K, OH, OW) = col2im(W_g^T @ x_g) + b; shapes as ``minicnn.ops``."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    N, C, H, W, G, Cg, Og, R, S, OH, OW = _geometry(x.shape, w.shape, stride, padding, output_padding, dilation,
                                                    groups, "conv_transpose2d_forward")
    w = xp.ascontiguousarray(w, dtype=x.dtype)
    K, ORS, HW = G * Og, Og * R * S, H * W
    if b is not None:
        b = xp.ascontiguousarray(b, dtype=x.dtype)
        if b.shape != (K,):
            raise ValueError(f"conv_transpose2d_forward: bias shape {tuple(b.shape)} does not match {K} channels")
    y = xp.empty((N, K, OH, OW), dtype=x.dtype)
    wgT = w.reshape(G, Cg, ORS).transpose(0, 2, 1)
    chunk = batch_chunk(N, G * ORS * HW * x.itemsize, workspace_bytes)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        cols = xp.ascontiguousarray(rt.matmul(wgT, x[n0:n0 + nb].reshape(nb, G, Cg, HW)))  # (nb, G, ORS, HW)
        col2im(rt, cols, y[n0:n0 + nb], Og, R, S, H, W, stride, padding, dilation,
               column_strides("image", nb, G, ORS, HW))
    epilogue(rt, y, b, None, False)
    return y


def conv_transpose2d_backward(rt, dy, x, w, stride, padding, output_padding, dilation, groups,
                              need_dx=True, need_dw=True, need_db=True, workspace_bytes=WORKSPACE_BYTES):
    """(dx, dw, db) of the transposed convolution; entries not needed are None."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    N, C, H, W, G, Cg, Og, R, S, OH, OW = _geometry(x.shape, w.shape, stride, padding, output_padding, dilation,
                                                    groups, "conv_transpose2d_backward")
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    if tuple(dy.shape) != (N, G * Og, OH, OW):
        raise ValueError(f"conv_transpose2d_backward: dy shape {tuple(dy.shape)} differs from the output's "
                         f"{(N, G * Og, OH, OW)}")
    w = xp.ascontiguousarray(w, dtype=x.dtype)
    ORS, HW = Og * R * S, H * W
    dx = dw = db = None
    if need_db:
        db = channel_sum(rt, dy)
    if not (need_dx or need_dw):
        return dx, dw, db
    wg = w.reshape(G, Cg, ORS)
    if need_dx:
        dx = xp.empty(x.shape, dtype=x.dtype)
    if need_dw:
        dw = xp.zeros((G, Cg, ORS), dtype=x.dtype)  # zeros: stays the answer for an empty batch
        part = xp.empty_like(dw)
    per_image = (G * ORS + 2 * C) * HW * x.itemsize  # dy's columns, x regrouped, dx's product
    chunk = batch_chunk(N, per_image, workspace_bytes)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        # dy unfolded on x's grid: (G, Og*R*S, nb*H*W), the batch inside each group's GEMM
        cols = xp.empty((G, ORS, nb * HW), dtype=x.dtype)
        im2col(rt, dy[n0:n0 + nb], cols, Og, R, S, H, W, stride, padding, dilation,
               column_strides("group", nb, G, ORS, HW))
        if need_dx:
            d = rt.matmul(wg, cols)  # (G, Cg, nb*HW)
            dx[n0:n0 + nb] = d.reshape(G, Cg, nb, HW).transpose(2, 0, 1, 3).reshape(nb, C, H, W)
        if need_dw:
            xg = xp.ascontiguousarray(x[n0:n0 + nb].reshape(nb, G, Cg, HW).transpose(1, 2, 0, 3))
            xg = xg.reshape(G, Cg, nb * HW)
            rt.matmul(xg, cols.transpose(0, 2, 1), out=dw if n0 == 0 else part)
            if n0:
                add_inplace(rt, dw, part)
    if need_dw:
        dw = dw.reshape(C, Og, R, S)
    return dx, dw, db
