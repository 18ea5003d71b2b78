"""Padding of the last two axes on the device (kernels in ``kernels/pad.cu``).

The reference is ``backends/numpy/pad.py``: every mode is a gather through one index map per
axis (``shapes.pad_source_index``), computed here on the host (a few small int64 arrays) and
moved to the device; the backward gathers through the inverted maps (:func:`inverse_map`), one
thread per input cell, so it needs no atomics and sums in the reference's order.
"""
from __future__ import annotations

import numpy as np

from ...shapes import check_pad2d, pad_source_index
from .pool import launch

__all__ = ["pad2d_forward", "pad2d_backward"]


def inverse_map(pairs, n_in):
    """Invert gather maps in CSR form, for a backward that gathers what a forward scattered.

    ``pairs`` lists ``(src, weights)``: output ``k`` reads input ``src[k]`` (-1: none) with weight
    ``weights[k]`` (``weights`` may be None). Returns ``(ptr, idx, w)``: the outputs reading input
    ``h`` are ``idx[ptr[h]:ptr[h + 1]]`` with weights ``w[ptr[h]:ptr[h + 1]]`` (``w`` None when no
    pair has weights), those of the first pair in ascending order, then those of the second, and
    so on: the order in which ``np.add.at`` scatters the pairs one after the other.
    """
    srcs = np.concatenate([np.asarray(s, dtype=np.int64).ravel() for s, _ in pairs])
    outs = np.concatenate([np.arange(len(s), dtype=np.int64) for s, _ in pairs])
    keep = srcs >= 0
    # a stable sort by input index keeps each input's entries in pair order, then ascending
    order = np.argsort(srcs[keep], kind="stable")
    ptr = np.zeros(n_in + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(srcs[keep], minlength=n_in))
    w = None
    if pairs[0][1] is not None:
        w = np.concatenate([np.asarray(wt).ravel() for _, wt in pairs])[keep][order]
    return ptr, outs[keep][order], w


def to_device(rt, a):
    """A host array on the runtime's device, never empty (a 0-size buffer has no pointer)."""
    a = np.ascontiguousarray(a)
    return rt.asarray(a if a.size else np.zeros(1, dtype=a.dtype))


def pad2d_forward(rt, x, pads, mode="constant", value=0.0):
    """x (N, C, H, W) -> (N, C, H + top + bottom, W + left + right); pads = (left, right, top, bottom)."""
    check_pad2d(x.shape, pads, mode)
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    left, right, top, bottom = (int(p) for p in pads)
    N, C, H, W = x.shape
    rows = pad_source_index(H, top, bottom, mode)
    cols = pad_source_index(W, left, right, mode)
    OH, OW = len(rows), len(cols)
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    launch(rt, "pad.cu", "pad2d_forward", x.dtype, y.size,
           (x, to_device(rt, rows), to_device(rt, cols), y, np.int64(y.size), np.int32(H), np.int32(W), np.int32(OH),
            np.int32(OW), x.dtype.type(value)))
    return y


def pad2d_backward(rt, dy, x_shape, pads, mode="constant"):
    """The adjoint of the gather: every dy cell is added to the input cell it copied."""
    xp = rt.xp
    dy = xp.ascontiguousarray(dy)
    left, right, top, bottom = (int(p) for p in pads)
    N, C, H, W = x_shape
    rows = pad_source_index(H, top, bottom, mode)
    cols = pad_source_index(W, left, right, mode)
    OH, OW = len(rows), len(cols)
    if dy.shape != (N, C, OH, OW):
        raise ValueError(f"pad2d_backward: dy shape {dy.shape} does not fit input shape {tuple(x_shape)} "
                         f"padded by {tuple(pads)}")
    row_ptr, row_idx, _ = inverse_map([(rows, None)], H)
    col_ptr, col_idx, _ = inverse_map([(cols, None)], W)
    dx = xp.empty((N, C, H, W), dtype=dy.dtype)
    launch(rt, "pad.cu", "pad2d_backward", dy.dtype, dx.size,
           (dy, to_device(rt, row_ptr), to_device(rt, row_idx), to_device(rt, col_ptr), to_device(rt, col_idx), dx,
            np.int64(dx.size), np.int32(H), np.int32(W), np.int32(OH), np.int32(OW)))
    return dx
