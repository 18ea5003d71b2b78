"""Max, average and adaptive pooling, the reference. Derivations: docs/pooling.md.

Max pooling remembers, for every output, the flat index h*W + w of the winning input in its
(n, c) plane; backward routes each gradient to exactly that input (ties: the first in scan
order wins, as in PyTorch). Average pooling spreads each gradient evenly over its window.
"""
import numpy as np

from ...shapes import conv_output_size

__all__ = [
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward",
]


def _window(r, s, stride, dilation, P, Q):
    """Slices of the padded input that kernel tap (r, s) visits for all outputs."""
    h0, w0 = r * dilation[0], s * dilation[1]
    return (slice(h0, h0 + stride[0] * (P - 1) + 1, stride[0]), slice(w0, w0 + stride[1] * (Q - 1) + 1, stride[1]))


def maxpool2d_forward(x, kernel_size, stride, padding, dilation=(1, 1), need_argmax=True):
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation)
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = np.full((N, C, P, Q), -np.inf, dtype=x.dtype)
    # -1 until the window's first real (non-padding) tap; MaxPool2d refuses configurations where a
    # dilated window sees only padding, so every entry ends as a real index
    argmax = np.full((N, C, P, Q), -1, dtype=np.int64)
    # input coordinates (unpadded) of every output's top-left tap
    hbase = (np.arange(P) * stride[0] - ph)[:, None]
    wbase = (np.arange(Q) * stride[1] - pw)[None, :]
    for r in range(R):
        for s in range(S):
            hs, ws = _window(r, s, stride, dilation, P, Q)
            v = xp[:, :, hs, ws]
            hh, ww = hbase + r * dilation[0], wbase + s * dilation[1]
            real = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            # strict '>' keeps the first maximum in scan order; the first real tap is taken even if
            # it is -inf, and NaN wins so it propagates (all as PyTorch)
            better = (v > y) | np.isnan(v) | ((argmax < 0) & real)
            y = np.where(better, v, y)
            argmax = np.where(better, hh * W + ww, argmax)
    return y, (argmax if need_argmax else None)


def maxpool2d_backward(dy, argmax, x_shape):
    """Route each gradient to its window's winner. An argmax of -1 (only if the op was called
    directly on a window of only padding, output -inf) came from no input: its gradient is dropped."""
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dtype=dy.dtype)
    idx = argmax.reshape(N * C, -1)
    rows = np.broadcast_to(np.arange(N * C)[:, None], idx.shape)
    hit = idx >= 0
    np.add.at(dx, (rows[hit], idx[hit]), dy.reshape(N * C, -1)[hit])
    return dx.reshape(x_shape)


def _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q, dtype):
    """How many inputs each output averages: the full window, or only its non-padding part."""
    if count_include_pad:
        return np.full((P, Q), kernel_size[0] * kernel_size[1], dtype=dtype)
    ones = np.ones((1, 1, H, W), dtype=dtype)
    onesp = np.pad(ones, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    cnt = np.zeros((P, Q), dtype=dtype)
    for r in range(kernel_size[0]):
        for s in range(kernel_size[1]):
            hs, ws = _window(r, s, stride, (1, 1), P, Q)
            cnt += onesp[0, 0, hs, ws]
    return cnt


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad=True):
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, (1, 1))
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    acc = np.zeros((N, C, P, Q), dtype=x.dtype)
    for r in range(R):
        for s in range(S):
            hs, ws = _window(r, s, stride, (1, 1), P, Q)
            acc += xp[:, :, hs, ws]
    return acc / _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q, x.dtype)


def avgpool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad=True):
    N, C, H, W = x_shape
    P, Q = dy.shape[-2:]
    g = dy / _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q, dy.dtype)
    dxp = np.zeros((N, C, H + 2 * padding[0], W + 2 * padding[1]), dtype=dy.dtype)
    for r in range(kernel_size[0]):
        for s in range(kernel_size[1]):
            hs, ws = _window(r, s, stride, (1, 1), P, Q)
            dxp[:, :, hs, ws] += g
    return dxp[:, :, padding[0]:padding[0] + H, padding[1]:padding[1] + W]


def adaptive_bins(in_size, out_size):
    """PyTorch's rule: bin i covers [floor(i*L/O), ceil((i+1)*L/O)) - bins may overlap."""
    starts = [(i * in_size) // out_size for i in range(out_size)]
    ends = [-((-(i + 1) * in_size) // out_size) for i in range(out_size)]
    return list(zip(starts, ends))


def adaptive_avgpool2d_forward(x, output_size):
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for i, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def adaptive_avgpool2d_backward(dy, x_shape):
    N, C, H, W = x_shape
    OH, OW = dy.shape[-2:]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for i, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i:i + 1, j:j + 1] / ((h1 - h0) * (w1 - w0))
    return dx


def adaptive_maxpool2d_forward(x, output_size):
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int64)
    for i, (h0, h1) in enumerate(adaptive_bins(H, OH)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, OW)):
            win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            k = win.argmax(axis=2)  # first maximum, as PyTorch
            y[:, :, i, j] = np.take_along_axis(win, k[..., None], axis=2)[..., 0]
            bw = w1 - w0
            argmax[:, :, i, j] = (h0 + k // bw) * W + (w0 + k % bw)
    return y, argmax
