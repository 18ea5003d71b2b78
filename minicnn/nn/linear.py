"""Linear (fully connected) and Flatten."""
import math

import numpy as np

from .. import ops
from ..random import get_rng
from ._utils import check_input
from .module import Module, Parameter, WeightBiasLayer


class Linear(WeightBiasLayer):
    """y = x W^T + b over the last axis. Initialised as PyTorch (uniform +-1/sqrt(in)).

    Shape: (*, in_features) -> (*, out_features): any leading axes, as PyTorch, including none
    (a 1-D input (in_features,) gives (out_features,)). The leading axes are flattened into one
    batch axis for ``ops.linear_forward`` and restored after; the backward reshapes the same way,
    so dW and db sum over every leading position.
    """

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
        if x.ndim == 2:
            check_input(self, x, 2, 1, self.in_features, "features")
        elif x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._short()}: expected input of shape (*, {self.in_features}) "
                             f"({self.in_features} features), got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        y = ops.linear_forward(x2, self.weight.data, None if self.bias is None else self.bias.data)
        self._save((x2, lead))
        return y if x.ndim == 2 else y.reshape(lead + (self.out_features,))

    def _grads(self, dy, saved, need_dx, need_dw, need_db):
        x2, lead = saved
        dy2 = dy if dy.ndim == 2 else dy.reshape(-1, self.out_features)
        dx, dw, db = ops.linear_backward(dy2, x2, self.weight.data, need_dx, need_dw, need_db)
        if dx is not None and len(lead) != 1:
            dx = dx.reshape(lead + (self.in_features,))
        return dx, dw, db


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
