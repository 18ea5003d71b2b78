"""Dropout (inverted): identity in eval mode."""
from .. import backends, ops
from .module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by 1/(1-p);
    identity in eval mode. ``Dropout(p=0.5, inplace=False)``.

    The mask is drawn from the backend's generator (its ``generator()`` table entry, reseeded by
    ``minicnn.manual_seed``): the numpy and numba backends draw from the library's numpy
    Generator, so they drop the same units for one seed; a device backend draws in its own memory.

    Shape: any, output the same shape.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = self._prepare_input(x)
        if not self.training or self.p == 0.0:
            self._save("identity")
            return x
        y, mask = ops.dropout_forward(x, self.p, backends.current().generator())
        self._save(mask)
        return y

    def backward(self, dy):
        mask = self._saved()
        if isinstance(mask, str):
            return dy
        return ops.dropout_backward(dy, mask)
