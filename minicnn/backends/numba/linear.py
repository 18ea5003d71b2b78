"""Fully connected layer: y = x W^T + b. The products are BLAS GEMMs; the bias is added by the
shared epilogue kernel and db is the float64-accumulated column sum of dy.

No kernel of its own. Checked against the numpy reference by
``python -m pytest -q tests/test_conformance.py -k "numba and linear"`` (a product large enough
to be split over threads included); timed by ``minicnn bench ops`` (ResNet-18's fc layer).
"""
from __future__ import annotations

import numpy as np

from . import _memory, _threads
from ._util import compute_dtype, nkl, prepare, run_epilogue, sum_over_n_l

__all__ = ["linear_forward", "linear_backward"]


def _check(x, w, b, where):
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{where}: input shape {tuple(x.shape)} does not fit weight shape {tuple(w.shape)} "
                         "(expected x (N, F) and w (O, F))")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"{where}: bias shape {tuple(b.shape)} does not match weight shape {tuple(w.shape)}")


def linear_forward(x, w, b):
    """y (N, O) = x (N, F) . w (O, F)^T + b (O,) (b may be None)."""
    x, w = np.asarray(x), np.asarray(w)
    b = None if b is None else np.asarray(b)
    _check(x, w, b, "linear_forward")
    dt = compute_dtype(x, w, b)
    x, w, b = prepare(x, dt), prepare(w, dt), prepare(b, dt)
    y = _threads.matmul(x, w.T, _memory.empty((x.shape[0], w.shape[0]), dt))
    if b is not None:
        N, O = y.shape
        rows = nkl(y)  # (N, O) as (N, O, 1): one value per row
        run_epilogue(rows, rows, N, O, 1, b=b)
    return y


def linear_backward(dy, x, w, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) = (dy . w, dy^T . x, sum of dy over the batch); entries not needed are None."""
    dy, x, w = np.asarray(dy), np.asarray(x), np.asarray(w)
    _check(x, w, None, "linear_backward")
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"linear_backward: dy shape {tuple(dy.shape)} does not match the output shape "
                         f"{(x.shape[0], w.shape[0])}")
    dt = compute_dtype(dy, x, w)
    dy, x, w = prepare(dy, dt), prepare(x, dt), prepare(w, dt)
    dx = _threads.matmul(dy, w, _memory.empty(x.shape, dt)) if need_dx else None
    dw = _threads.matmul(dy.T, x, _memory.empty(w.shape, dt)) if need_dw else None
    db = None
    if need_db:
        db = sum_over_n_l(dy.reshape(dy.shape[0], dy.shape[1], 1)).astype(dt)
    return dx, dw, db
