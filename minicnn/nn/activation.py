"""Elementwise activations: ReLU, Sigmoid, Tanh. Each keeps its output for backward."""
from .. import ops
from .module import Module


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


class Identity(Module):
    """Returns its input; handy for replacing a head (``model.fc = nn.Identity()``)."""

    def forward(self, x):
        return self._prepare_input(x)

    def backward(self, dy):
        return dy
