"""The numba backend: parallel CPU kernels for every op, checked against the numpy reference.

Same op table, signatures and array type (numpy arrays) as ``backends/numpy``; one file per
concern (conv + winograd, pool, batchnorm, activation, linear, loss, dropout). Kernels are
``@njit(cache=True, parallel=True)`` loops with ``prange`` over (image, channel) planes or tiles;
matrix products go to numpy's BLAS, everything around them (unfolding, packing, Winograd
transforms, epilogues, reductions) is here. ``_threads`` makes the whole backend safe to call from
several Python threads at once. Variants, the conv selection rule and measured accuracy:
docs/kernels.md.
"""
import numpy as np

from . import _threads, activation, batchnorm, conv, dropout, linear, loss, pool

NAME = "numba"


def asarray(a):
    """Bring ``a`` into host memory as a numpy array (cupy arrays are copied back)."""
    get = getattr(a, "get", None)  # a cupy array coming back to the host
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def is_native(a) -> bool:
    """True for numpy arrays, the arrays this backend computes on."""
    return isinstance(a, np.ndarray)


def to_numpy(a):
    """``a`` as a numpy array (no copy for numpy input)."""
    return asarray(a)


threading_layer = _threads.threading_layer

OPS = {}
for _mod in (conv, pool, batchnorm, activation, linear, loss, dropout):
    OPS.update({name: getattr(_mod, name) for name in _mod.__all__})
del _mod
