"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d."""
import numpy as np

from .. import ops
from ..grad_mode import is_grad_enabled
from ._utils import check_input, pair
from .module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, f"{type(self).__name__}: kernel_size")
        self.stride = pair(stride, f"{type(self).__name__}: stride") if stride is not None else self.kernel_size
        self.padding = pair(padding, f"{type(self).__name__}: padding")
        self.dilation = pair(dilation, f"{type(self).__name__}: dilation")
        if ceil_mode:
            raise ValueError(f"{type(self).__name__}: ceil_mode=True is not supported (output sizes use floor)")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"{type(self).__name__}: kernel_size, stride, dilation must be >= 1, padding >= 0")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{type(self).__name__}: padding {self.padding} must be at most half of kernel_size {self.kernel_size}"
            )

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return s + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")

    def _check(self, x):
        check_input(self, x, 4)
        h, w = x.shape[2:]
        p = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        q = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        if p < 1 or q < 1:
            raise ValueError(f"{self._short()}: input of shape {tuple(x.shape)} is smaller than the pooling window")
        if self.dilation != (1, 1):
            # a dilated window can step over every real row/column and see only padding; PyTorch
            # then outputs -inf with an out-of-range argmax (its backward writes out of bounds),
            # so refuse instead of inventing a winner
            for axis, (size, n) in enumerate(zip((h, w), (p, q))):
                taps = (np.arange(n)[:, None] * self.stride[axis] - self.padding[axis]
                        + np.arange(self.kernel_size[axis])[None, :] * self.dilation[axis])
                empty = ~((taps >= 0) & (taps < size)).any(axis=1)
                if empty.any():
                    raise ValueError(
                        f"{self._short()}: with input of shape {tuple(x.shape)}, the window at output "
                        f"{'row' if axis == 0 else 'column'} {int(np.argmax(empty))} covers only padding"
                    )


class MaxPool2d(_Pool2d):
    """Max over each window; padding counts as -inf. ``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1)``.

    PyTorch's ``return_indices`` and ``ceil_mode`` are accepted at their defaults (False) only.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported (the argmax stays inside the layer)")
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x):
        x = self._prepare_input(x)
        self._check(x)
        grad = is_grad_enabled()
        y, argmax = ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                          need_argmax=grad)
        self._save((argmax, x.shape))
        return y

    def backward(self, dy):
        argmax, shape = self._saved()
        return ops.maxpool2d_backward(dy, argmax, shape)


class AvgPool2d(_Pool2d):
    """Mean over each window. ``count_include_pad=True`` (PyTorch's default) divides by the full window.

    PyTorch's ``divisor_override`` is accepted at its default (None) only.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        if divisor_override is not None:
            raise ValueError(f"AvgPool2d: divisor_override is not supported (got {divisor_override!r}); "
                             "use count_include_pad to choose the divisor")
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        x = self._prepare_input(x)
        self._check(x)
        y = ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        self._save(x.shape)
        return y

    def backward(self, dy):
        shape = self._saved()
        return ops.avgpool2d_backward(dy, shape, self.kernel_size, self.stride, self.padding, self.count_include_pad)


class _AdaptivePool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int) or output_size is None:
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        if len(self.output_size) != 2 or any(o is not None and (not isinstance(o, int) or o < 1) for o in self.output_size):
            raise ValueError(f"{type(self).__name__}: output_size must be a positive int or pair, got {output_size!r}")

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def _out(self, x):
        check_input(self, x, 4)
        return tuple(x.shape[2 + i] if o is None else o for i, o in enumerate(self.output_size))


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Average into a fixed output grid; bin i spans [floor(iL/O), ceil((i+1)L/O)) as in PyTorch."""

    def forward(self, x):
        x = self._prepare_input(x)
        y = ops.adaptive_avgpool2d_forward(x, self._out(x))
        self._save(x.shape)
        return y

    def backward(self, dy):
        return ops.adaptive_avgpool2d_backward(dy, self._saved())


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max into a fixed output grid, same bins as AdaptiveAvgPool2d (``return_indices=False`` only)."""

    def __init__(self, output_size, return_indices=False):
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d: return_indices=True is not supported (the argmax stays inside the layer)")
        super().__init__(output_size)

    def forward(self, x):
        x = self._prepare_input(x)
        y, argmax = ops.adaptive_maxpool2d_forward(x, self._out(x))
        self._save((argmax, x.shape))
        return y

    def backward(self, dy):
        argmax, shape = self._saved()
        return ops.maxpool2d_backward(dy, argmax, shape)
