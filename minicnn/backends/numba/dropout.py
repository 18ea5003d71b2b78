"""Inverted dropout. The mask comes from the caller's numpy Generator exactly as in the reference
(``rng.random(x.shape) >= p``, scaled by 1/(1-p) in x's dtype), so for one seed the numba and
numpy backends drop the same units and produce identical arrays; the kernel fuses the threshold,
the scaling and the multiply into one pass.

One version. Checked by ``python -m pytest -q tests/test_conformance.py -k "numba and dropout_"``
and ``tests/test_numba_backend.py -k dropout`` (the same mask as the reference for one seed);
not timed by a benchmark of its own.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import compute_dtype, prepare
from .activation import MUL, run_binary

__all__ = ["dropout_forward", "dropout_backward"]


@njit(cache=True, nogil=True, parallel=True)
def _dropout(x, u, p, scale, y, mask):  # pragma: no cover - jitted
    zero = y.dtype.type(0)
    for i in prange(x.size):
        m = scale if u[i] >= p else zero
        mask[i] = m
        y[i] = x[i] * m


def dropout_forward(x, p, rng):
    """(y, mask): mask holds 0 or 1/(1-p); y = x * mask. ``rng`` is a numpy Generator."""
    x = np.asarray(x)
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout_forward: p must be in [0, 1], got {p}")
    dt = compute_dtype(x)
    x = prepare(x, dt)
    if p >= 1.0:
        mask = np.zeros_like(x)  # like the reference, draws nothing from rng
        return x * mask, mask
    u = rng.random(x.shape)  # float64 draws, the same stream the reference consumes
    scale = dt.type(1.0) / dt.type(1.0 - p)
    y = _memory.empty(x.shape, x.dtype)
    mask = _memory.empty(x.shape, x.dtype)
    _threads.run(_dropout, x.reshape(-1), u.reshape(-1), p, scale, y.reshape(-1), mask.reshape(-1))
    return y, mask


def dropout_backward(dy, mask):
    """dy * mask."""
    dy, mask = np.asarray(dy), np.asarray(mask)
    if dy.shape != mask.shape:
        raise ValueError(f"dropout_backward: dy shape {tuple(dy.shape)} differs from mask shape {tuple(mask.shape)}")
    return run_binary(MUL, dy, mask, "dropout_backward")
