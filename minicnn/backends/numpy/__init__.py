"""The numpy backend: the readable reference every faster kernel is checked against.

One file per concern (conv, pool, batchnorm, activation, linear, loss, dropout); each op is a
plain function with its shapes passed explicitly. Speed is not the point here: clarity is.
"""
import numpy as np

from . import activation, batchnorm, conv, dropout, linear, loss, pool

NAME = "numpy"


def asarray(a):
    get = getattr(a, "get", None)  # a cupy array coming back to the host
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def is_native(a) -> bool:
    return isinstance(a, np.ndarray)


def to_numpy(a):
    return asarray(a)


OPS = {}
for _mod in (conv, pool, batchnorm, activation, linear, loss, dropout):
    OPS.update({name: getattr(_mod, name) for name in _mod.__all__})
del _mod
