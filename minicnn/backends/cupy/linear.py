"""The fully connected layer on the device: y = x W^T + b, GEMMs in cuBLAS.

The reference is ``backends/numpy/linear.py``. The products go to ``rt.matmul`` (cuBLAS on the
GPU); the bias add and the bias gradient are ``kernels/conv.cu``'s ``conv_epilogue`` and
``channel_sum`` with one element per (row, feature).
"""
from __future__ import annotations

from ._launch import suffix
from .conv import channel_sum, epilogue

__all__ = ["linear_forward", "linear_backward"]


def _check(x, w, where):
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{where}: expected x (N, F) and w (O, F), got {tuple(x.shape)} and {tuple(w.shape)}")


def linear_forward(rt, x, w, b):
    """y (N, O) = x (N, F) @ w (O, F)^T + b (O,) (b may be None)."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    _check(x, w, "linear_forward")
    w = xp.ascontiguousarray(w, dtype=x.dtype)
    y = xp.ascontiguousarray(rt.matmul(x, w.T))
    if b is not None:
        b = xp.ascontiguousarray(b, dtype=x.dtype)
        if b.shape != (w.shape[0],):
            raise ValueError(f"linear_forward: bias shape {tuple(b.shape)} does not match {w.shape[0]} outputs")
        epilogue(rt, y, b, None, False)
    return y


def linear_backward(rt, dy, x, w, need_dx=True, need_dw=True, need_db=True):
    """dx = dy @ w, dw = dy^T @ x, db = dy summed over the batch; entries not needed are None."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    _check(x, w, "linear_backward")
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"linear_backward: dy shape {tuple(dy.shape)} does not fit x {tuple(x.shape)} and "
                         f"w {tuple(w.shape)}")
    dx = xp.ascontiguousarray(rt.matmul(dy, xp.ascontiguousarray(w, dtype=x.dtype))) if need_dx else None
    dw = xp.ascontiguousarray(rt.matmul(dy.T, x)) if need_dw else None
    db = channel_sum(rt, dy) if need_db else None
    return dx, dw, db
