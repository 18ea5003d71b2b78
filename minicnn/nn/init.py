"""Weight initialisers with PyTorch's names and formulas (``torch.nn.init``).

Each function fills its argument in place and returns it::

    from minicnn import nn
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    model.apply(lambda m: nn.init.xavier_uniform_(m.weight) if isinstance(m, nn.Linear) else None)

The argument is a ``Parameter`` (its ``.data`` is filled) or an array. Random draws come from the
library generator (``minicnn.manual_seed``) unless ``generator=`` passes a
``numpy.random.Generator``; they are made in float64 and cast to the array's dtype.

Fans, for a weight of shape (out, in, *kernel): ``fan_in = in * prod(kernel)``,
``fan_out = out * prod(kernel)`` (a Linear weight (out, in) has no kernel axes).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..random import get_rng
from .module import Parameter

__all__ = [
    "calculate_gain", "uniform_", "normal_", "constant_", "ones_", "zeros_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_",
]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "sigmoid")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table).

    ============================ ==============================
    nonlinearity                 gain
    ============================ ==============================
    linear, conv*, sigmoid       1
    tanh                         5/3
    relu                         sqrt(2)
    leaky_relu                   sqrt(2 / (1 + negative_slope^2)), slope ``param`` (default 0.01)
    selu                         3/4
    ============================ ==============================
    """
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _array(tensor, fn: str) -> np.ndarray:
    """The array to fill: a Parameter's ``.data`` or the array itself."""
    a = tensor.data if isinstance(tensor, Parameter) else tensor
    if not isinstance(a, np.ndarray):
        raise TypeError(f"nn.init.{fn}: expected a Parameter or a numpy array, got {type(tensor).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"nn.init.{fn}: can only fill a floating array, got dtype {a.dtype}")
    return a


def _fans(a: np.ndarray, fn: str) -> tuple[int, int]:
    if a.ndim < 2:
        raise ValueError(f"nn.init.{fn}: fan in and fan out can not be computed for an array with fewer than "
                         f"2 dimensions (shape {a.shape})")
    receptive = math.prod(a.shape[2:])
    return a.shape[1] * receptive, a.shape[0] * receptive


def _fan(a: np.ndarray, mode: str, fn: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"nn.init.{fn}: mode {mode!r} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _fans(a, fn)
    return fan_in if mode == "fan_in" else fan_out


def _rng(generator):
    if generator is None:
        return get_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"nn.init: generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator


def _fill(tensor, a: np.ndarray, values):
    a[...] = values
    return tensor


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill with draws from U(a, b)."""
    arr = _array(tensor, "uniform_")
    if not a <= b:
        raise ValueError(f"nn.init.uniform_: need a <= b, got a={a}, b={b}")
    return _fill(tensor, arr, _rng(generator).uniform(a, b, arr.shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill with draws from N(mean, std^2)."""
    arr = _array(tensor, "normal_")
    if std < 0:
        raise ValueError(f"nn.init.normal_: std must be >= 0, got {std}")
    return _fill(tensor, arr, _rng(generator).normal(mean, std, arr.shape))


def constant_(tensor, val: float):
    """Fill with ``val``."""
    arr = _array(tensor, "constant_")
    return _fill(tensor, arr, val)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0.0)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010): U(-a, a) with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    arr = _array(tensor, "xavier_uniform_")
    if arr.size == 0:  # nothing to fill (PyTorch warns and does nothing)
        return tensor
    fan_in, fan_out = _fans(arr, "xavier_uniform_")
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill(tensor, arr, _rng(generator).uniform(-bound, bound, arr.shape))


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio (2010): N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    arr = _array(tensor, "xavier_normal_")
    if arr.size == 0:  # nothing to fill (PyTorch warns and does nothing)
        return tensor
    fan_in, fan_out = _fans(arr, "xavier_normal_")
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill(tensor, arr, _rng(generator).normal(0.0, std, arr.shape))


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015): U(-bound, bound) with ``bound = gain * sqrt(3 / fan)``, ``gain =
    calculate_gain(nonlinearity, a)`` (``a``: the negative slope of a leaky ReLU) and ``fan`` the
    fan_in (keeps the forward variance) or fan_out (keeps the backward variance) per ``mode``.
    PyTorch's Linear and Conv2d defaults are ``kaiming_uniform_(w, a=sqrt(5))``."""
    arr = _array(tensor, "kaiming_uniform_")
    if arr.size == 0:  # nothing to fill (PyTorch warns and does nothing)
        return tensor
    fan = _fan(arr, mode, "kaiming_uniform_")
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill(tensor, arr, _rng(generator).uniform(-bound, bound, arr.shape))


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    """He et al. (2015): N(0, std^2) with ``std = gain / sqrt(fan)``; arguments as ``kaiming_uniform_``
    (torchvision's ResNet uses ``mode="fan_out", nonlinearity="relu"``)."""
    arr = _array(tensor, "kaiming_normal_")
    if arr.size == 0:  # nothing to fill (PyTorch warns and does nothing)
        return tensor
    fan = _fan(arr, mode, "kaiming_normal_")
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill(tensor, arr, _rng(generator).normal(0.0, std, arr.shape))
