"""Max, average and adaptive pooling and max unpooling, the reference. Derivations: docs/pooling.md.

Max pooling remembers, for every output, the flat index h*W + w of the winning input in its
(n, c) plane; backward routes each gradient to exactly that input (ties: the first in scan
order wins, as in PyTorch). Average pooling spreads each gradient evenly over its window.
With ``ceil_mode`` the output size rounds up (``shapes.conv_output_size``): the last window may
hang over the bottom/right edge, and the part of it beyond the padding reads nothing. Max
unpooling puts each value back at its recorded index in a zero plane.
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
    "maxunpool2d_forward",
    "maxunpool2d_backward",
]


def _window(r, s, stride, dilation, P, Q):
    """Slices of the padded input that kernel tap (r, s) visits for all outputs."""
    h0, w0 = r * dilation[0], s * dilation[1]
    return (slice(h0, h0 + stride[0] * (P - 1) + 1, stride[0]), slice(w0, w0 + stride[1] * (Q - 1) + 1, stride[1]))


def _overhang(size, k, stride, pad, dil, out):
    """How far the last window reaches past the padded input (ceil_mode only; 0 otherwise)."""
    return max(0, (out - 1) * stride + dil * (k - 1) + 1 - (size + 2 * pad))


def maxpool2d_forward(x, kernel_size, stride, padding, dilation=(1, 1), need_argmax=True, ceil_mode=False):
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation, ceil_mode)
    ph, pw = padding
    eh = _overhang(H, R, stride[0], ph, dilation[0], P)
    ew = _overhang(W, S, stride[1], pw, dilation[1], Q)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=-np.inf)
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
    """How many cells each output averages: its window's part inside the padded input
    (count_include_pad, PyTorch's default; the whole window except where ceil_mode lets it hang
    past the padding), or only its part inside the input."""
    ph, pw = padding
    eh = _overhang(H, kernel_size[0], stride[0], ph, 1, P)
    ew = _overhang(W, kernel_size[1], stride[1], pw, 1, Q)
    if count_include_pad:  # ones over the padded input, zeros over the overhang
        onesp = np.pad(np.ones((H + 2 * ph, W + 2 * pw), dtype=dtype), ((0, eh), (0, ew)))
    else:  # ones over the input only
        onesp = np.pad(np.ones((H, W), dtype=dtype), ((ph, ph + eh), (pw, pw + ew)))
    cnt = np.zeros((P, Q), dtype=dtype)
    for r in range(kernel_size[0]):
        for s in range(kernel_size[1]):
            hs, ws = _window(r, s, stride, (1, 1), P, Q)
            cnt += onesp[hs, ws]
    return cnt


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, (1, 1), ceil_mode)
    eh = _overhang(H, R, stride[0], padding[0], 1, P)
    ew = _overhang(W, S, stride[1], padding[1], 1, Q)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0] + eh), (padding[1], padding[1] + ew)))
    acc = np.zeros((N, C, P, Q), dtype=x.dtype)
    for r in range(R):
        for s in range(S):
            hs, ws = _window(r, s, stride, (1, 1), P, Q)
            acc += xp[:, :, hs, ws]
    return acc / _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q, x.dtype)


def avgpool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    N, C, H, W = x_shape
    P, Q = conv_output_size(H, W, *kernel_size, stride, padding, (1, 1), ceil_mode)
    if dy.shape[-2:] != (P, Q):
        raise ValueError(f"avgpool2d_backward: dy shape {dy.shape} does not fit input shape {tuple(x_shape)}")
    g = dy / _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q, dy.dtype)
    eh = _overhang(H, kernel_size[0], stride[0], padding[0], 1, P)
    ew = _overhang(W, kernel_size[1], stride[1], padding[1], 1, Q)
    dxp = np.zeros((N, C, H + 2 * padding[0] + eh, W + 2 * padding[1] + ew), dtype=dy.dtype)
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


def maxunpool2d_forward(x, indices, output_size):
    """y (N, C, *output_size) of zeros, with y[n, c].flat[indices[n, c, i, j]] = x[n, c, i, j].

    ``indices`` are max pooling's flat h*W + w positions (int64, shaped like x). A repeated index
    keeps the last value in scan order, as PyTorch's CPU kernel (max pooling with overlapping
    windows repeats an index only for the same winner, so the values agree).
    """
    N, C = x.shape[:2]
    OH, OW = output_size
    idx = indices.reshape(N * C, -1)
    if idx.size and (idx.min() < 0 or idx.max() >= OH * OW):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"maxunpool2d: index {int(bad)} lies outside the {OH}x{OW} output plane")
    y = np.zeros((N * C, OH * OW), dtype=x.dtype)
    rows = np.broadcast_to(np.arange(N * C)[:, None], idx.shape)
    y[rows, idx] = x.reshape(N * C, -1)  # numpy assigns repeated indices in order: the last stays
    return y.reshape(N, C, OH, OW)


def maxunpool2d_backward(dy, indices):
    """dx[n, c, i, j] = dy[n, c].flat[indices[n, c, i, j]]: each input's gradient is read back
    from where the forward put it (a gather, the adjoint of the scatter)."""
    N, C = dy.shape[:2]
    idx = indices.reshape(N * C, -1)
    rows = np.broadcast_to(np.arange(N * C)[:, None], idx.shape)
    return dy.reshape(N * C, -1)[rows, idx].reshape(indices.shape)
