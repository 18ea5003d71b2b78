"""Activations and softmax, with PyTorch's names, arguments and derivatives at the kinks.

ReLU, Sigmoid and Tanh keep their output for backward (their derivatives are functions of it).
The parametrised activations (LeakyReLU, ELU, SELU, GELU, SiLU, Hardswish, Hardsigmoid,
Softplus, Softsign) keep their input and run through the ``activation_forward`` /
``activation_backward`` ops with a kind name and a tuple of parameters; PReLU has its own ops
(it learns its slope). Softmax, LogSoftmax and Softmin keep their output.

``inplace=True`` is accepted where PyTorch has it, for drop-in compatibility, but the output is
always a new array: with a hand-written backward the input may still be needed (these layers
keep it), and no memory is saved by overwriting it. The derivations: docs/activations.md.
"""
import numbers
import warnings

import numpy as np

from .. import ops
from .module import Module, Parameter


def _real(layer, name, value):
    """``value`` as a float, or a TypeError naming the layer and the argument."""
    if isinstance(value, numbers.Real) and not isinstance(value, np.ndarray):
        return float(value)
    raise TypeError(f"{layer}: {name} must be a real number, got {type(value).__name__} {value!r}")


def _inplace(inplace):
    return ", inplace=True" if inplace else ""


class _Elementwise(Module):
    _fwd = _bwd = None

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace  # accepted for PyTorch compatibility; outputs are always new arrays

    def forward(self, x):
        x = self._prepare_input(x)
        y = getattr(ops, self._fwd)(x)
        self._save(y)
        return y

    def backward(self, dy):
        return getattr(ops, self._bwd)(dy, self._saved())


class ReLU(_Elementwise):
    """max(x, 0)."""

    _fwd, _bwd = "relu_forward", "relu_backward"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), computed without overflow."""

    _fwd, _bwd = "sigmoid_forward", "sigmoid_backward"

    def __init__(self):
        super().__init__()


class Tanh(_Elementwise):
    """tanh(x)."""

    _fwd, _bwd = "tanh_forward", "tanh_backward"

    def __init__(self):
        super().__init__()


class _Pointwise(Module):
    """An activation of the ``activation_forward`` family: keeps its input (and the parameters it
    ran with, so changing an attribute between forward and backward cannot mix two functions).

    Shape: any; the output has the input's shape.
    """

    kind = None

    def _params(self) -> tuple:
        return ()

    def _kind(self) -> str:
        return self.kind

    def forward(self, x):
        x = self._prepare_input(x)
        kind, params = self._kind(), self._params()
        self._save((x, kind, params))
        return ops.activation_forward(x, kind, params)

    def backward(self, dy):
        x, kind, params = self._saved()
        return ops.activation_backward(dy, x, kind, params)


class LeakyReLU(_Pointwise):
    r"""LeakyReLU(x) = x if x > 0 else negative_slope * x.

    The derivative at 0 is ``negative_slope`` (PyTorch's). Any real slope is accepted, negative too.

    Args:
        negative_slope: slope for x <= 0. Default: 0.01
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 1e-2, inplace: bool = False):
        super().__init__()
        self.negative_slope = _real("LeakyReLU", "negative_slope", negative_slope)
        self.inplace = inplace

    def _params(self):
        return (self.negative_slope,)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}{_inplace(self.inplace)}"


class ELU(_Pointwise):
    r"""ELU(x) = x if x > 0 else alpha * (exp(x) - 1).

    The derivative at 0 is ``alpha`` (PyTorch's).

    Args:
        alpha: the value approached as x -> -inf is -alpha. Default: 1.0
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = _real("ELU", "alpha", alpha)
        self.inplace = inplace

    def _params(self):
        return (self.alpha,)

    def extra_repr(self):
        return f"alpha={self.alpha}{_inplace(self.inplace)}"


class SELU(_Pointwise):
    r"""SELU(x) = scale * (x if x > 0 else alpha * (exp(x) - 1)), with
    alpha = 1.6732632423543772848170429916717 and scale = 1.0507009873554804934193349852946.

    Args:
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "selu"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class GELU(_Pointwise):
    r"""GELU(x) = x * Phi(x), Phi the standard normal CDF; with ``approximate='tanh'``,
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).

    Args:
        approximate: 'none' (exact, with erf) or 'tanh'. Default: 'none'
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _kind(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {self.approximate!r}")
        return "gelu_tanh" if self.approximate == "tanh" else "gelu"

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_Pointwise):
    r"""SiLU(x) = x * sigmoid(x) (also called swish).

    Args:
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "silu"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Hardswish(_Pointwise):
    r"""Hardswish(x) = x * min(max(x + 3, 0), 6) / 6.

    Derivative: 0 for x <= -3, x / 3 + 1/2 for -3 < x < 3, 1 for x >= 3 (PyTorch's values at the kinks).

    Args:
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "hardswish"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


class Hardsigmoid(_Pointwise):
    r"""Hardsigmoid(x) = min(max(x + 3, 0), 6) / 6.

    Derivative: 1/6 for -3 < x < 3, else 0 (at -3 and +3 too, as PyTorch).

    Args:
        inplace: accepted for compatibility; the output is a new array
    """

    kind = "hardsigmoid"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


class Softplus(_Pointwise):
    r"""Softplus(x) = log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold.

    As in PyTorch any real beta and threshold are accepted (beta = 0 gives inf).

    Args:
        beta: sharpness. Default: 1.0
        threshold: above this value of beta * x the function is linear. Default: 20.0
    """

    kind = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta = _real("Softplus", "beta", beta)
        self.threshold = _real("Softplus", "threshold", threshold)

    def _params(self):
        return (self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class Softsign(_Pointwise):
    r"""Softsign(x) = x / (1 + |x|); derivative 1 / (1 + |x|)^2."""

    kind = "softsign"


class PReLU(Module):
    r"""PReLU(x) = x if x > 0 else a * x, with a learned slope ``a``: one shared by every element,
    or one per channel (axis 1 of the input) when ``num_parameters`` is the channel count.

    The slope's gradient is the sum of x * dy over the elements where x <= 0; the derivative
    with respect to x at 0 is ``a`` (PyTorch's).

    Args:
        num_parameters: 1, or the number of input channels. Default: 1
        init: the initial value of every slope. Default: 0.25

    Shape:
        Input (*) with a single slope, (N, C, *) with C slopes; output the input's shape.

    Attributes:
        weight: the slopes, shape (num_parameters,)
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, numbers.Integral):
            raise TypeError(f"PReLU: num_parameters must be an int, got {type(num_parameters).__name__} "
                            f"{num_parameters!r}")
        if num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be >= 1, got {num_parameters}")
        self.num_parameters = int(num_parameters)
        self.init = _real("PReLU", "init", init)
        self.weight = Parameter(np.full(self.num_parameters, self.init, dtype=np.float32))

    def forward(self, x):
        x = self._prepare_input(x)
        n = self.weight.size
        if n != 1 and (x.ndim < 2 or x.shape[1] != n):
            raise ValueError(f"{self._short()}: expected input of shape (N, {n}, *) ({n} channels, one per "
                             f"slope), got shape {tuple(x.shape)}")
        self._save(x)
        return ops.prelu_forward(x, self.weight.data)

    def backward(self, dy):
        return self._backward(dy, True)

    def backward_params(self, dy) -> None:
        """The slope's gradient only, no dL/dx (for the first layer of a network)."""
        self._backward(dy, False)

    def _backward(self, dy, need_dx):
        x = self._saved()
        need_dw = self.weight.requires_grad
        if not (need_dx or need_dw):
            return None
        dx, dw = ops.prelu_backward(dy, x, self.weight.data, need_dx, need_dw)
        self.weight.accumulate(dw)
        return dx

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class _SoftmaxBase(Module):
    """Softmax-like over one dimension; keeps its output, which is all the backward needs."""

    _fwd = _bwd = _name = None
    _sign = 1  # Softmin is softmax(-x)

    def __init__(self, dim=None):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
            raise TypeError(f"{type(self).__name__}: dim must be an int or None, got {type(dim).__name__} {dim!r}")
        self.dim = None if dim is None else int(dim)

    def _axis(self, ndim: int) -> int:
        """The dimension to normalise over, as a non-negative index (a 0-d input is treated as 1-d)."""
        dim = self.dim
        if dim is None:
            # PyTorch's legacy rule (torch.nn.functional._get_softmax_dim), with its warning
            warnings.warn(f"Implicit dimension choice for {self._name} has been deprecated. Change the call "
                          "to include dim=X as an argument.", stacklevel=4)
            dim = 0 if ndim in (0, 1, 3) else 1
        size = max(ndim, 1)
        if not -size <= dim < size:
            raise IndexError(f"{self._short()}: dim out of range (expected to be in range of "
                             f"[{-size}, {size - 1}], but got {dim}) for input of {ndim} dimensions")
        return dim % size

    def forward(self, x):
        x = self._prepare_input(x)
        shape = x.shape
        axis = self._axis(x.ndim)
        x = x.reshape(1) if x.ndim == 0 else x
        y = getattr(ops, self._fwd)(-x if self._sign < 0 else x, axis)
        self._save((y, axis, shape))
        return y.reshape(shape)

    def backward(self, dy):
        y, axis, shape = self._saved()
        dx = getattr(ops, self._bwd)(dy.reshape(y.shape), y, axis)
        return (-dx if self._sign < 0 else dx).reshape(shape)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_SoftmaxBase):
    r"""Softmax(x)_i = exp(x_i) / sum_j exp(x_j) over dimension ``dim``.

    Backward: dx = y * (dy - sum(dy * y)) from the output y.

    Args:
        dim: the dimension whose entries sum to 1. ``None`` follows PyTorch's deprecated implicit
            choice (dim 0 for 0-, 1- and 3-d input, else dim 1) and warns as PyTorch does.

    Shape:
        Input (*), output the input's shape.
    """

    _fwd, _bwd, _name = "softmax_forward", "softmax_backward", "softmax"


class LogSoftmax(_SoftmaxBase):
    r"""LogSoftmax(x)_i = x_i - log(sum_j exp(x_j)) over dimension ``dim``, without overflow.

    Backward: dx = dy - exp(y) * sum(dy) from the output y.

    Args:
        dim: as for :class:`Softmax` (``None``: PyTorch's implicit choice, with its warning).
    """

    _fwd, _bwd, _name = "log_softmax_forward", "log_softmax_backward", "log_softmax"


class Softmin(_SoftmaxBase):
    r"""Softmin(x) = Softmax(-x) over dimension ``dim``; its backward is minus softmax's.

    Args:
        dim: as for :class:`Softmax` (``None``: PyTorch's implicit choice, with its warning).
    """

    _fwd, _bwd, _name = "softmax_forward", "softmax_backward", "softmin"
    _sign = -1


class Identity(Module):
    """Returns its input; handy for replacing a head (``model.fc = nn.Identity()``)."""

    def forward(self, x):
        return self._prepare_input(x)

    def backward(self, dy):
        return dy
