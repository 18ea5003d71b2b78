"""Launch geometry and dtype rules of the cupy backend: plain host functions, tested on the CPU.

Every op module picks its kernel and its grid through these, so the rules live in one place:
the kernel suffix of a dtype (:func:`suffix`), the grid of a 1-D launch (:func:`grid_1d`; its
kernels loop with a grid stride, so the grid may be capped), and the scalar arguments a kernel
takes (:func:`i32`, :func:`i64`: numpy scalars of the C parameter's exact type, range-checked).
"""
from __future__ import annotations

import numpy as np

DEFAULT_BLOCK = 256

# a 1-D grid is capped here: each thread of a grid-stride loop then handles ceil(n / (blocks *
# block)) elements. 65535 is the limit of grid.y/z, safe for any axis; 65535 blocks of 256
# threads are far more than an H200 runs at once (132 SMs x 2048 threads)
MAX_BLOCKS_1D = 65535

_SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

_INT32 = np.iinfo(np.int32)
_INT64 = np.iinfo(np.int64)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers ``a >= 0``, ``b > 0``, exactly (no float rounding)."""
    if b <= 0:
        raise ValueError(f"ceil_div: divisor must be positive, got {b}")
    if a < 0:
        raise ValueError(f"ceil_div: dividend must be non-negative, got {a}")
    return -(-int(a) // int(b))


def grid_1d(n: int, block: int = DEFAULT_BLOCK, max_blocks: int = MAX_BLOCKS_1D) -> tuple:
    """The grid of a 1-D launch over ``n`` elements with ``block`` threads per block, as a 1-tuple.

    ``ceil(n / block)`` blocks, capped at ``max_blocks``: the kernel must loop
    ``for (i64 i = global_index_1d(); i < n; i += global_stride_1d())`` so that a capped grid
    still covers every element. ``n`` must be at least 1: a launch with no work is skipped by
    the caller (CUDA refuses an empty grid).
    """
    if n < 1:
        raise ValueError(f"grid_1d: no elements to launch over (n={n}); skip the launch when there is no work")
    if not 1 <= block <= 1024:
        raise ValueError(f"grid_1d: block must be 1..1024 threads, got {block}")
    return (min(ceil_div(n, block), max_blocks),)


def suffix(dtype) -> str:
    """The kernel-name suffix of a floating dtype: ``"f32"`` for float32, ``"f64"`` for float64.

    Raises:
        TypeError: for any other dtype (the kernels exist for these two).
    """
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"the cupy backend computes in float32 or float64, got {dtype!r}") from None
    s = _SUFFIXES.get(d)
    if s is None:
        raise TypeError(f"the cupy backend computes in float32 or float64, got {d.name}")
    return s


def i32(v, what: str = "value") -> np.int32:
    """``v`` as the ``np.int32`` a kernel's ``int`` parameter takes; ValueError if it does not fit."""
    v = int(v)
    if not _INT32.min <= v <= _INT32.max:
        raise ValueError(f"{what} = {v} does not fit the kernel's 32-bit int parameter")
    return np.int32(v)


def i64(v, what: str = "value") -> np.int64:
    """``v`` as the ``np.int64`` a kernel's ``long long`` parameter takes; ValueError if it does not fit."""
    v = int(v)
    if not _INT64.min <= v <= _INT64.max:
        raise ValueError(f"{what} = {v} does not fit the kernel's 64-bit long long parameter")
    return np.int64(v)
