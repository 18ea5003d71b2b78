"""The numpy backend: the readable reference every faster kernel is checked against.

One file per concern (conv, pool, batchnorm, activation, linear, loss, dropout); each op is a
plain function with its shapes passed explicitly. Speed is not the point here: clarity is.
"""
import numpy as np

from .. import refuse_device_array
from . import activation, batchnorm, conv, dropout, linear, loss, pool
from . import dropout2d, pad
from . import conv_transpose, upsample

NAME = "numpy"


def asarray(a):
    """``a`` as a numpy array (no copy when it is one); a GPU array is refused, not copied."""
    refuse_device_array(a, NAME)
    return np.asarray(a)


def is_native(a) -> bool:
    return isinstance(a, np.ndarray)


def to_numpy(a):
    return asarray(a)


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


OPS = {"asarray": asarray, "is_native": is_native, "to_numpy": to_numpy, "empty": empty}
for _mod in (conv, pool, batchnorm, activation, linear, loss, dropout, pad, dropout2d, conv_transpose, upsample):
    OPS.update({name: getattr(_mod, name) for name in _mod.__all__})
del _mod
