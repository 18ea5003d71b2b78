"""Dropout and channel dropout on the GPU: ``kernels/dropout.cu``.

The mask's random numbers come from the generator the op is given (the backend's ``generator()``:
a CuPy Generator on the device, seeded by ``minicnn.manual_seed``), drawn as the reference draws
them, ``rng.random(shape)`` in float64, so a generator in the reference's state gives the
reference's mask; the kernels threshold them (``u >= p``) and scale by ``1 / (1 - p)`` rounded
to the input's dtype, as ``backends/numpy/dropout.py`` and ``dropout2d.py`` do.

Written and compile-checked, and checked against the reference on the host CUDA emulator; not
yet run on a GPU.
"""
from __future__ import annotations

import numpy as np

from ._launch import DEFAULT_BLOCK as BLOCK
from ._launch import grid_1d, suffix
from .activation import common_dtype, native, prepare

__all__ = ["dropout_forward", "dropout_backward", "dropout2d_forward", "dropout2d_backward"]

FILE = "dropout.cu"


def _uniform(rt, rng, shape):
    """rng.random(shape) on the runtime, C-contiguous float64 (a host generator's draw is copied over)."""
    return prepare(rt, rng.random(shape), np.float64)


def _scale(rt, a, m, inner, dt):
    """a * m[i // inner] for every flat i: each run of ``inner`` values of ``a`` times its mask entry."""
    out = rt.empty(a.shape, dt)
    if a.size:
        rt.kernel(FILE, f"scale_by_mask_{suffix(dt)}")(grid_1d(a.size), (BLOCK,),
                                                       (a, m, out, np.int64(a.size), np.int64(max(inner, 1))))
    return out


def dropout_forward(rt, x, p, rng):
    """(y, mask): mask holds 0 where ``rng.random(x.shape) < p``, else 1/(1-p); y = x * mask.
    p >= 1 draws nothing and drops everything."""
    x = native(rt, x)
    dt = x.dtype
    sfx = suffix(dt)
    x = prepare(rt, x, dt)
    if p >= 1.0:
        mask = rt.xp.zeros(x.shape, dt)
        return _scale(rt, x, mask, 1, dt), mask
    u = _uniform(rt, rng, x.shape)
    y, mask = rt.empty(x.shape, dt), rt.empty(x.shape, dt)
    if x.size:
        scale = dt.type(1.0) / dt.type(1.0 - p)
        rt.kernel(FILE, f"dropout_forward_{sfx}")(grid_1d(x.size), (BLOCK,),
                                                  (u, x, y, mask, np.int64(x.size), np.float64(p), scale))
    return y, mask


def dropout_backward(rt, dy, mask):
    """dy * mask."""
    dy, mask = native(rt, dy), native(rt, mask)
    if tuple(dy.shape) != tuple(mask.shape):
        raise ValueError(f"dropout_backward: dy shape {tuple(dy.shape)} and mask shape {tuple(mask.shape)} differ")
    dt = common_dtype(dy, mask)
    suffix(dt)
    return _scale(rt, prepare(rt, dy, dt), prepare(rt, mask, dt), 1, dt)


def _plane_size(shape):
    return int(np.prod(shape[2:], dtype=np.int64))


def dropout2d_forward(rt, x, p, rng):
    """x (N, C, ...) -> (y, mask); mask (N, C) of 0 or 1/(1-p) from ``rng.random((N, C)) >= p``,
    each (n, c) plane of x scaled by its entry."""
    x = native(rt, x)
    if x.ndim < 2:
        raise ValueError(f"dropout2d_forward: needs input (N, C, ...), got shape {tuple(x.shape)}")
    dt = x.dtype
    sfx = suffix(dt)
    x = prepare(rt, x, dt)
    N, C = (int(s) for s in x.shape[:2])
    if p >= 1.0:
        mask = rt.xp.zeros((N, C), dt)  # draws nothing, as dropout_forward
    else:
        u = _uniform(rt, rng, (N, C))
        mask = rt.empty((N, C), dt)
        if N * C:
            rt.kernel(FILE, f"dropout_mask_{sfx}")(grid_1d(N * C), (BLOCK,),
                                                   (u, mask, np.int64(N * C), np.float64(p),
                                                    dt.type(1.0) / dt.type(1.0 - p)))
    return _scale(rt, x, mask, _plane_size(x.shape), dt), mask


def dropout2d_backward(rt, dy, mask):
    """dy times each (n, c) plane's mask entry."""
    dy, mask = native(rt, dy), native(rt, mask)
    if dy.ndim < 2 or tuple(mask.shape) != tuple(dy.shape[:2]):
        raise ValueError(f"dropout2d_backward: dy of shape {tuple(dy.shape)} needs a mask of shape "
                         f"{tuple(dy.shape[:2])}, got {tuple(mask.shape)}")
    dt = common_dtype(dy, mask)
    suffix(dt)
    return _scale(rt, prepare(rt, dy, dt), prepare(rt, mask, dt), _plane_size(dy.shape), dt)
