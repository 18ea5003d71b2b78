"""2-D transposed convolution, the reference. Derivation: docs/conv_transpose.md.

A transposed convolution is the adjoint of a convolution with the same weight: its forward is
what a convolution's backward does to dY (``conv2d_backward``'s dX: the products W^T x folded
back by col2im), and its backward is a convolution's forward and filter gradient:

    forward:   y  = col2im(W_g^T @ x_g) + b          (conv2d_backward's dX, with x in dY's place)
    backward:  dx = W_g @ im2col(dy)                 (conv2d_forward of dy)
               dW = x_g @ im2col(dy)_g^T, summed over the batch   (conv2d_backward's dW, roles swapped)
               db = sum of dy over (N, H, W)

The weight is laid out (C_in, C_out/groups, R, S), PyTorch's: read as a convolution weight it
maps C_out/groups channels to C_in, which is exactly the convolution this one is the adjoint of.
``conv_transpose2d_forward_naive`` is the same computation as a scatter loop, the teaching text.
"""
import numpy as np

from ...shapes import conv_transpose_output_size
from .conv import col2im, im2col

__all__ = ["conv_transpose2d_forward", "conv_transpose2d_backward"]


def conv_transpose2d_forward_naive(x, w, b, stride, padding, output_padding, dilation, groups):
    """Every input pixel scatters a copy of its filter, scaled by its value, into the output:
    y[n, g*Og + o, h*sh - ph + r*dh, v*sw - pw + s*dw] += x[n, g*Cg + c, h, v] * w[g*Cg + c, o, r, s]."""
    N, C, H, W = x.shape
    _, Og, R, S = w.shape
    Cg = C // groups
    OH, OW = conv_transpose_output_size(H, W, R, S, stride, padding, dilation, output_padding)
    y = np.zeros((N, Og * groups, OH, OW), dtype=x.dtype)
    for n in range(N):
        for ci in range(C):
            g = ci // Cg
            for h in range(H):
                for v in range(W):
                    for o in range(Og):
                        for r in range(R):
                            oh = h * stride[0] - padding[0] + r * dilation[0]
                            if not 0 <= oh < OH:
                                continue
                            for s in range(S):
                                ow = v * stride[1] - padding[1] + s * dilation[1]
                                if 0 <= ow < OW:
                                    y[n, g * Og + o, oh, ow] += x[n, ci, h, v] * w[ci, o, r, s]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding, dilation, groups):
    """y = col2im(W_g^T @ x_g) + b: the data gradient of a convolution. Shapes: see minicnn.ops."""
    N, C, H, W = x.shape
    _, Og, R, S = w.shape
    G, Cg = groups, C // groups
    OH, OW = conv_transpose_output_size(H, W, R, S, stride, padding, dilation, output_padding)
    wg = w.reshape(G, Cg, Og * R * S)
    xg = x.reshape(N, G, Cg, H * W)
    cols = np.matmul(wg.transpose(0, 2, 1)[None], xg)  # (N, G, Og*R*S, H*W): one column per input pixel
    y = col2im(cols.reshape(N, G * Og, R, S, H, W), (N, G * Og, OH, OW), stride, padding, dilation)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(dy, x, w, stride, padding, output_padding, dilation, groups,
                              need_dx=True, need_dw=True, need_db=True):
    """dx is the convolution of dy with w, dW the correlation of dy's columns with x, db the sum of dy."""
    N, C, H, W = x.shape
    _, Og, R, S = w.shape
    G, Cg = groups, C // groups
    dx = dw = db = None
    if need_dx or need_dw:
        # im2col(dy)'s grid is the convolution's output grid, which is x's (H, W) plus the extra
        # rows and columns output_padding may add when it reaches the stride: those are dropped
        cols = im2col(dy, R, S, stride, padding, dilation)[..., :H, :W]
        cols = cols.reshape(N, G, Og * R * S, H * W)
    if need_dx:
        wg = w.reshape(G, Cg, Og * R * S)
        dx = np.matmul(wg[None], cols).reshape(N, C, H, W)
    if need_dw:
        xg = x.reshape(N, G, Cg, H * W)
        dw = np.einsum("ngcl,ngkl->gck", xg, cols, optimize=True).reshape(C, Og, R, S).astype(x.dtype)
    if need_db:
        db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db
