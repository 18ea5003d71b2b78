"""2-D convolution, the reference: im2col + one matrix product per group.

Derivation: docs/conv.md. ``conv2d_forward_naive`` is the same computation as seven nested loops,
kept as the teaching text and as the reference the im2col version is tested against.
"""
import numpy as np

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_fused_forward"]


from ...shapes import conv_output_size


def conv2d_forward_naive(x, w, b, stride, padding, dilation, groups):
    """y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation)
    Kg = K // groups
    y = np.zeros((N, K, P, Q), dtype=x.dtype)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(P):
                for q in range(Q):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(Cg):
                        for r in range(R):
                            hi = p * stride[0] - padding[0] + r * dilation[0]
                            if hi < 0 or hi >= H:
                                continue
                            for s in range(S):
                                wi = q * stride[1] - padding[1] + s * dilation[1]
                                if 0 <= wi < W:
                                    acc += x[n, g * Cg + c, hi, wi] * w[k, c, r, s]
                    y[n, k, p, q] = acc
    return y


def im2col(x, R, S, stride, padding, dilation):
    """Unfold x (N,C,H,W) into cols (N, C, R, S, P, Q): cols[..., r, s, p, q] is the input pixel
    that kernel tap (r, s) sees at output position (p, q) (zero where it falls in the padding)."""
    N, C, H, W = x.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    cols = np.empty((N, C, R, S, P, Q), dtype=x.dtype)
    for r in range(R):
        h0 = r * dilation[0]
        for s in range(S):
            w0 = s * dilation[1]
            cols[:, :, r, s] = xp[:, :, h0:h0 + stride[0] * (P - 1) + 1:stride[0], w0:w0 + stride[1] * (Q - 1) + 1:stride[1]]
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """The adjoint of im2col: scatter-add every column entry back onto the pixel it came from."""
    N, C, H, W = x_shape
    _, _, R, S, P, Q = cols.shape
    dxp = np.zeros((N, C, H + 2 * padding[0], W + 2 * padding[1]), dtype=cols.dtype)
    for r in range(R):
        h0 = r * dilation[0]
        for s in range(S):
            w0 = s * dilation[1]
            dxp[:, :, h0:h0 + stride[0] * (P - 1) + 1:stride[0], w0:w0 + stride[1] * (Q - 1) + 1:stride[1]] += cols[:, :, r, s]
    return dxp[:, :, padding[0]:padding[0] + H, padding[1]:padding[1] + W]


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """y = W_g @ cols_g for each group g, plus bias. Shapes: see minicnn.ops."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    cols = im2col(x, R, S, stride, padding, dilation)
    P, Q = cols.shape[-2:]
    cols = cols.reshape(N, groups, Cg * R * S, P * Q)
    wg = w.reshape(groups, K // groups, Cg * R * S)
    y = np.matmul(wg[None], cols).reshape(N, K, P, Q)
    if b is not None:
        y += b.reshape(1, K, 1, 1)
    return y


def conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx=True, need_dw=True, need_db=True):
    """dW is the correlation of the input with dY; dX is the full convolution of dY with the
    flipped kernel, computed here as col2im(W^T @ dY). Derivation: docs/conv.md."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[-2:]
    Kg = K // groups
    dyg = dy.reshape(N, groups, Kg, P * Q)
    dx = dw = db = None
    if need_dw:
        cols = im2col(x, R, S, stride, padding, dilation).reshape(N, groups, Cg * R * S, P * Q)
        dw = np.einsum("ngkl,ngcl->gkc", dyg, cols, optimize=True).reshape(K, Cg, R, S).astype(x.dtype)
    if need_dx:
        wg = w.reshape(groups, Kg, Cg * R * S)
        dcols = np.matmul(wg.transpose(0, 2, 1)[None], dyg)  # (N, G, Cg*R*S, P*Q)
        dx = col2im(dcols.reshape(N, C, R, S, P, Q), x.shape, stride, padding, dilation)
    if need_db:
        db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def conv2d_fused_forward(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """The inference epilogue spelled out: conv, bias, optional residual add, optional ReLU
    (written into ``out`` when one is given)."""
    y = conv2d_forward(x, w, b, stride, padding, dilation, groups)
    if residual is not None:
        y += residual
    if relu:
        np.maximum(y, 0, out=y)
    if out is None:
        return y
    out[...] = y
    return out
