"""Max, average and adaptive pooling and max unpooling on the device (kernels in ``kernels/pool.cu``).

The reference is ``backends/numpy/pool.py``; ``pool.cu`` opens with the mapping from thread to
output of every kernel and the reference loop it replaces. Output sizes come from
``shapes.conv_output_size`` (the one definition every backend uses). Max pooling's backward and
max unpooling first invert their index map (:func:`invert_index`), then gather, one thread per
cell, in scan order: every result is the reference's bit for bit and the same on every run (no
floating-point atomics).
"""
from __future__ import annotations

import numpy as np

from ...shapes import conv_output_size
from ._launch import DEFAULT_BLOCK as BLOCK
from ._launch import grid_1d, i32, suffix

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


def launch(rt, file, name, dtype, n, args):
    """Run ``<name>_<f32|f64>`` of ``kernels/<file>`` over ``n`` threads (nothing when n is 0)."""
    if n > 0:
        rt.kernel(file, f"{name}_{suffix(dtype)}")(grid_1d(n), (BLOCK,), args)


def _i32(*vals):
    return tuple(i32(v) for v in vals)


def maxpool2d_forward(rt, x, kernel_size, stride, padding, dilation=(1, 1), need_argmax=True, ceil_mode=False):
    """Max over each window; argmax the flat h*W + w of the winner in its plane (PyTorch's NaN and
    -inf rules, see ``ops``); -inf and argmax -1 for a window of only padding."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation, ceil_mode)
    y = xp.empty((N, C, P, Q), dtype=x.dtype)
    # without argmax the kernel writes nothing there; a 1-element array stands in for the pointer
    argmax = xp.empty((N, C, P, Q) if need_argmax else (1,), dtype=np.int64)
    launch(rt, "pool.cu", "maxpool2d_forward", x.dtype, y.size,
           (x, y, argmax, np.int64(y.size), *_i32(H, W, P, Q, R, S, *stride, *padding, *dilation, need_argmax)))
    return y, (argmax if need_argmax else None)


def invert_index(rt, idx, planes, L, T):
    """Per cell of ``planes`` planes of ``T`` cells, the positions (in ``[0, L)``) of the entries of
    ``idx`` (``planes`` planes of ``L`` int64 entries) that point at it, in CSR form:
    ``(offsets, lists)`` with cell ``g``'s entries in ``lists[offsets[g]:offsets[g + 1]]``, in no
    particular order. Entries outside ``[0, T)`` are left out (``pool.cu``: index_count, index_fill)."""
    xp = rt.xp
    cells, total = planes * T, planes * L
    counts = xp.zeros((cells + 1,), dtype=np.int32)
    args = (np.int64(total), np.int64(L), np.int64(T))
    if total:
        rt.kernel("pool.cu", "index_count")(grid_1d(total), (BLOCK,), (idx, counts, *args))
    offsets = xp.cumsum(counts, dtype=np.int64)  # counts[0] is 0: offsets[g] is where cell g's list starts
    lists = xp.empty((max(total, 1),), dtype=np.int64)  # at most every entry (no device sync for the size)
    if total:
        cursor = xp.zeros((max(cells, 1),), dtype=np.int32)
        rt.kernel("pool.cu", "index_fill")(grid_1d(total), (BLOCK,), (idx, offsets, cursor, lists, *args))
    return offsets, lists


def maxpool2d_backward(rt, dy, argmax, x_shape):
    """Each gradient routed to its window's winner, summed in scan order; argmax -1 is dropped."""
    xp = rt.xp
    dy, argmax = xp.ascontiguousarray(dy), xp.ascontiguousarray(argmax, dtype=np.int64)
    N, C, H, W = x_shape
    if argmax.shape != dy.shape:
        raise ValueError(f"maxpool2d_backward: argmax shape {argmax.shape} differs from dy shape {dy.shape}")
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    PQ = dy.shape[2] * dy.shape[3]
    offsets, lists = invert_index(rt, argmax, N * C, PQ, H * W)
    launch(rt, "pool.cu", "maxpool2d_backward", dy.dtype, dx.size,
           (dy, offsets, lists, dx, np.int64(dx.size), np.int64(H * W), np.int64(PQ)))
    return dx


def avgpool2d_forward(rt, x, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    """Mean over each window, divided by the window clipped to the padded input (count_include_pad)
    or to the input."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, (1, 1), ceil_mode)
    y = xp.empty((N, C, P, Q), dtype=x.dtype)
    launch(rt, "pool.cu", "avgpool2d_forward", x.dtype, y.size,
           (x, y, np.int64(y.size), *_i32(H, W, P, Q, R, S, *stride, *padding, count_include_pad)))
    return y


def avgpool2d_backward(rt, dy, x_shape, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    """Each gradient spread evenly over its window (the adjoint of the forward)."""
    xp = rt.xp
    dy = xp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    R, S = kernel_size
    P, Q = conv_output_size(H, W, R, S, stride, padding, (1, 1), ceil_mode)
    if dy.shape[-2:] != (P, Q):
        raise ValueError(f"avgpool2d_backward: dy shape {dy.shape} does not fit input shape {tuple(x_shape)}")
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    launch(rt, "pool.cu", "avgpool2d_backward", dy.dtype, dx.size,
           (dy, dx, np.int64(dx.size), *_i32(H, W, P, Q, R, S, *stride, *padding, count_include_pad)))
    return dx


def adaptive_avgpool2d_forward(rt, x, output_size):
    """Mean over PyTorch's adaptive bins (``adaptive_bins`` in the reference; bins may overlap)."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    launch(rt, "pool.cu", "adaptive_avgpool2d_forward", x.dtype, y.size,
           (x, y, np.int64(y.size), *_i32(H, W, OH, OW)))
    return y


def adaptive_avgpool2d_backward(rt, dy, x_shape):
    """Each gradient spread evenly over its bin."""
    xp = rt.xp
    dy = xp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[-2:]
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    launch(rt, "pool.cu", "adaptive_avgpool2d_backward", dy.dtype, dx.size,
           (dy, dx, np.int64(dx.size), *_i32(H, W, OH, OW)))
    return dx


def adaptive_maxpool2d_forward(rt, x, output_size):
    """Max over each adaptive bin, the first maximum in scan order (the first NaN wins), with argmax."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = xp.empty((N, C, OH, OW), dtype=np.int64)
    if y.size and H * W == 0:
        raise ValueError(f"adaptive_maxpool2d: an empty {H}x{W} input plane has no maximum for a {OH}x{OW} output")
    launch(rt, "pool.cu", "adaptive_maxpool2d_forward", x.dtype, y.size,
           (x, y, argmax, np.int64(y.size), *_i32(H, W, OH, OW)))
    return y, argmax


def _check_indices(xp, indices, OH, OW):
    """The reference's refusal of an index outside the (OH, OW) plane (one device sync)."""
    if indices.size:
        lo, hi = int(xp.min(indices)), int(xp.max(indices))
        if lo < 0 or hi >= OH * OW:
            bad = lo if lo < 0 else hi
            raise ValueError(f"maxunpool2d: index {bad} lies outside the {OH}x{OW} output plane")


def maxunpool2d_forward(rt, x, indices, output_size):
    """y (N, C, *output_size) of zeros with y[n, c].flat[indices[n, c, i, j]] = x[n, c, i, j]; a
    repeated index keeps the last value in scan order; an index outside the plane: ValueError."""
    xp = rt.xp
    x, indices = xp.ascontiguousarray(x), xp.ascontiguousarray(indices, dtype=np.int64)
    N, C, H, W = x.shape
    OH, OW = output_size
    if indices.shape != x.shape:
        raise ValueError(f"maxunpool2d: indices shape {indices.shape} differs from input shape {x.shape}")
    _check_indices(xp, indices, OH, OW)
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    offsets, lists = invert_index(rt, indices, N * C, H * W, OH * OW)
    launch(rt, "pool.cu", "maxunpool2d_forward", x.dtype, y.size,
           (x, offsets, lists, y, np.int64(y.size), np.int64(H * W), np.int64(OH * OW)))
    return y


def maxunpool2d_backward(rt, dy, indices):
    """dx[n, c, i, j] = dy[n, c].flat[indices[n, c, i, j]] (a gather)."""
    xp = rt.xp
    dy, indices = xp.ascontiguousarray(dy), xp.ascontiguousarray(indices, dtype=np.int64)
    N, C, OH, OW = dy.shape
    if indices.shape[:2] != (N, C):
        raise ValueError(f"maxunpool2d_backward: indices shape {indices.shape} does not fit dy shape {dy.shape}")
    _check_indices(xp, indices, OH, OW)
    dx = xp.empty(indices.shape, dtype=dy.dtype)
    HW = indices.shape[2] * indices.shape[3]
    launch(rt, "pool.cu", "maxunpool2d_backward", dy.dtype, dx.size,
           (dy, indices, dx, np.int64(dx.size), np.int64(HW), np.int64(OH * OW)))
    return dx
