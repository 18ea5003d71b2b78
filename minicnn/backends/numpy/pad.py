"""Padding of the last two axes, the reference. Derivations: docs/padding.md.

Every mode is a gather: output row i of the padded plane reads input row ``rows[i]`` and output
column j reads input column ``cols[j]`` (one index map per axis, ``shapes.pad_source_index``), and a
constant pad reads the fill value where a map says -1. The backward is the adjoint of that
gather: a scatter-add of dy through the same maps, so an input cell that several padded cells
copy (an edge under replicate padding, a reflected row) receives the sum of their gradients.
"""
import numpy as np

from ...shapes import check_pad2d as check_pads
from ...shapes import pad_source_index as source_index

__all__ = ["pad2d_forward", "pad2d_backward"]


def pad2d_forward(x, pads, mode="constant", value=0.0):
    """x (N, C, H, W) -> (N, C, H + top + bottom, W + left + right); pads = (left, right, top, bottom)."""
    check_pads(x.shape, pads, mode)
    left, right, top, bottom = (int(p) for p in pads)
    rows = source_index(x.shape[2], top, bottom, mode)
    cols = source_index(x.shape[3], left, right, mode)
    y = x[:, :, np.maximum(rows, 0)][:, :, :, np.maximum(cols, 0)]  # gather (index 0 stands in for -1)
    if mode == "constant":
        fill = (rows[:, None] < 0) | (cols[None, :] < 0)
        y = np.where(fill, x.dtype.type(value), y)
    return y


def pad2d_backward(dy, x_shape, pads, mode="constant"):
    """The adjoint of the gather: every dy cell is added to the input cell it copied."""
    left, right, top, bottom = (int(p) for p in pads)
    N, C, H, W = x_shape
    rows = source_index(H, top, bottom, mode)
    cols = source_index(W, left, right, mode)
    keep_r, keep_c = rows >= 0, cols >= 0  # fill cells came from no input
    g = dy[:, :, keep_r][:, :, :, keep_c]
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    # first sum the rows that copy the same input row, then the columns (np.add.at accumulates repeats)
    dxr = np.zeros((N, C, H, g.shape[3]), dtype=dy.dtype)
    np.add.at(dxr, (slice(None), slice(None), rows[keep_r]), g)
    np.add.at(dx, (slice(None), slice(None), slice(None), cols[keep_c]), dxr)
    return dx
