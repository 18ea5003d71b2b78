"""Channel dropout (``nn.Dropout2d``). The (N, C) mask comes from the caller's numpy Generator
exactly as in the reference (``rng.random((N, C)) >= p``, scaled by 1/(1-p) in x's dtype), so for
one seed both backends drop the same planes; the kernel scales each plane by its factor in one pass.

One version. Checked by ``python -m pytest -q tests/test_conformance.py -k "numba and dropout2d"``;
not timed by a benchmark of its own.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import compute_dtype, prepare

__all__ = ["dropout2d_forward", "dropout2d_backward"]


@njit(cache=True, nogil=True, parallel=True)
def _scale_planes(x2, m, y2):  # pragma: no cover - jitted
    """y2[t, :] = x2[t, :] * m[t] for every plane t (x2 and y2 are (N*C, plane size))."""
    for t in prange(x2.shape[0]):
        f = m[t]
        for j in range(x2.shape[1]):
            y2[t, j] = x2[t, j] * f


def _run(x, mask, where):
    dt = compute_dtype(x)
    x = prepare(x, dt)
    N, C = x.shape[:2]
    if mask.shape != (N, C):
        raise ValueError(f"{where}: mask shape {mask.shape} does not fit input shape {tuple(x.shape)}")
    y = _memory.empty(x.shape, dt)
    _threads.run(_scale_planes, x.reshape(N * C, -1), prepare(mask, dt).reshape(-1), y.reshape(N * C, -1),
                 work=x.size)
    return y


def dropout2d_forward(x, p, rng):
    """(y, mask): mask (N, C) holds 0 or 1/(1-p); y = x with plane (n, c) scaled by mask[n, c]."""
    x = np.asarray(x)
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout2d_forward: p must be in [0, 1], got {p}")
    if x.ndim < 2:
        raise ValueError(f"dropout2d_forward: input must be (N, C, ...), got shape {tuple(x.shape)}")
    dt = compute_dtype(x)
    N, C = x.shape[:2]
    if p >= 1.0:
        mask = np.zeros((N, C), dtype=dt)  # like the reference, draws nothing from rng
    else:
        mask = np.where(rng.random((N, C)) >= p, dt.type(1.0) / dt.type(1.0 - p), dt.type(0)).astype(dt)
    return _run(x, mask, "dropout2d_forward"), mask


def dropout2d_backward(dy, mask):
    """dy with plane (n, c) scaled by mask[n, c]."""
    return _run(np.asarray(dy), np.asarray(mask), "dropout2d_backward")
