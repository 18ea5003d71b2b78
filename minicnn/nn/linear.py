"""Linear (fully connected) and Flatten."""
import math

import numpy as np

from .. import ops
from ..random import get_rng
from ._utils import check_input
from .module import Module, Parameter, WeightBiasLayer


class Linear(WeightBiasLayer):
    """y = x W^T + b, x of shape (N, in_features). Initialised as PyTorch (uniform +-1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(in_features)
        rng = get_rng()
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(np.float32)) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        x = self._prepare_input(x)
        check_input(self, x, 2, 1, self.in_features, "features")
        y = ops.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._save(x)
        return y

    def _grads(self, dy, x, need_dx, need_dw, need_db):
        return ops.linear_backward(dy, x, self.weight.data, need_dx, need_dw, need_db)


class Flatten(Module):
    """Merge dims start_dim..end_dim (default: everything but the batch)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        x = self._prepare_input(x)
        shape = x.shape
        s = self.start_dim % x.ndim
        e = self.end_dim % x.ndim
        self._save(shape)
        return x.reshape(shape[:s] + (-1,) + shape[e + 1:])

    def backward(self, dy):
        return dy.reshape(self._saved())
