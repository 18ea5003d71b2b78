"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, MaxUnpool2d."""
import numbers

import numpy as np

from .. import backends, ops
from ..grad_mode import is_grad_enabled
from ._utils import check_input, conv_output_size, pair
from .module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, f"{type(self).__name__}: kernel_size")
        self.stride = pair(stride, f"{type(self).__name__}: stride") if stride is not None else self.kernel_size
        self.padding = pair(padding, f"{type(self).__name__}: padding")
        self.dilation = pair(dilation, f"{type(self).__name__}: dilation")
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"{type(self).__name__}: kernel_size, stride, dilation must be >= 1, padding >= 0")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{type(self).__name__}: padding {self.padding} must be at most half of kernel_size {self.kernel_size}"
            )

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        return s + (", ceil_mode=True" if self.ceil_mode else "")

    def _check(self, x):
        check_input(self, x, 4)
        h, w = x.shape[2:]
        p, q = conv_output_size(h, w, *self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
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
    r"""Max over each window; padding counts as -inf (it never wins).

    .. math:: y[n, c, p, q] = \max_{r < R,\ s < S} x_{pad}[n, c,\ p s_h + r d_h,\ q s_w + s d_w]

    Args:
        kernel_size, stride (default: kernel_size), padding (at most half the kernel), dilation:
            int or (h, w) pair, as ``Conv2d``.
        return_indices: also return the winners' flat indices h*W + w in their (n, c) plane
            (int64, PyTorch's layout), what ``MaxUnpool2d`` takes.
        ceil_mode: round the output size up instead of down; the last window must still start
            inside the input or the left padding.

    Shape: (N, C, H, W) -> (N, C, P, Q), P = floor or ceil((H + 2p - d(k-1) - 1) / s) + 1
    (``shapes.conv_output_size``). Backward routes each gradient to its window's winner.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = bool(return_indices)

    def extra_repr(self):
        return super().extra_repr() + (", return_indices=True" if self.return_indices else "")

    def forward(self, x):
        x = self._prepare_input(x)
        self._check(x)
        grad = is_grad_enabled()
        y, argmax = ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                          need_argmax=grad or self.return_indices, ceil_mode=self.ceil_mode)
        self._save((argmax, x.shape))
        return (y, argmax) if self.return_indices else y

    def backward(self, dy):
        argmax, shape = self._saved()
        return ops.maxpool2d_backward(dy, argmax, shape)


class AvgPool2d(_Pool2d):
    """Mean over each window.

    Args:
        kernel_size, stride (default: kernel_size), padding (at most half the kernel): int or pair.
        ceil_mode: round the output size up (as ``MaxPool2d``).
        count_include_pad: divide by the window's cells inside the padded input (PyTorch's
            default True: the whole window, except where ceil_mode lets it hang past the
            padding), or (False) by its cells inside the input.
        divisor_override: accepted at its default (None) only.

    Shape: as ``MaxPool2d`` with dilation 1.
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
        y = ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.count_include_pad,
                                  ceil_mode=self.ceil_mode)
        self._save(x.shape)
        return y

    def backward(self, dy):
        shape = self._saved()
        return ops.avgpool2d_backward(dy, shape, self.kernel_size, self.stride, self.padding, self.count_include_pad,
                                      ceil_mode=self.ceil_mode)


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
    """Max into a fixed output grid, same bins as AdaptiveAvgPool2d. ``return_indices=True`` also
    returns the winners' flat indices h*W + w (int64), as ``MaxPool2d``."""

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def forward(self, x):
        x = self._prepare_input(x)
        y, argmax = ops.adaptive_maxpool2d_forward(x, self._out(x))
        self._save((argmax, x.shape))
        return (y, argmax) if self.return_indices else y

    def backward(self, dy):
        argmax, shape = self._saved()
        return ops.maxpool2d_backward(dy, argmax, shape)


class MaxUnpool2d(Module):
    r"""The partial inverse of ``MaxPool2d``: each value goes back to the position its index names
    in a plane of zeros. ``MaxUnpool2d(kernel_size, stride=None, padding=0)``; call it as
    ``unpool(x, indices, output_size=None)`` with the ``indices`` of ``MaxPool2d(return_indices=True)``.

    .. math:: y[n, c].\mathrm{flat}[\mathrm{indices}[n, c, i, j]] = x[n, c, i, j],\ \text{zero elsewhere}

    Shape: (N, C, H, W) or (C, H, W) -> H_out = (H - 1) s_h - 2 p_h + k_h (likewise W_out), or
    ``output_size`` ((H_out, W_out), or a full shape whose last two entries are used), which must
    lie strictly within one stride of that default, as PyTorch: max pooling loses the remainder
    rows, so several input sizes pool to one size. Backward: each input's gradient is read back
    from the position it was put at (PyTorch's rule; when overlapping pooling windows repeat an
    index, the last value stays in the forward and every input still reads that position).
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name}: kernel_size")
        self.stride = pair(stride, f"{name}: stride") if stride is not None else self.kernel_size
        self.padding = pair(padding, f"{name}: padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1 and padding >= 0, got kernel_size="
                             f"{self.kernel_size}, stride={self.stride}, padding={self.padding}")

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _output_size(self, x, output_size):
        default = tuple((x.shape[-2 + d] - 1) * self.stride[d] - 2 * self.padding[d] + self.kernel_size[d]
                        for d in range(2))
        if output_size is None:
            out = default
        else:
            size = tuple(output_size)
            if len(size) == 4:
                size = size[2:]
            if len(size) != 2 or not all(isinstance(v, numbers.Integral) for v in size):
                raise ValueError(f"{self._short()}: output_size must hold 2 or 4 ints, got {output_size!r}")
            for d in range(2):
                lo, hi = default[d] - self.stride[d], default[d] + self.stride[d]
                if not lo < size[d] < hi:
                    raise ValueError(f"{self._short()}: invalid output_size {tuple(output_size)} "
                                     f"(dim {d} must be between {lo} and {hi}, exclusive)")
            out = tuple(int(v) for v in size)
        if min(out) < 0:
            raise ValueError(f"{self._short()}: output size {out} is negative for input shape {tuple(x.shape)}")
        return out

    def forward(self, x, indices, output_size=None):
        x = self._prepare_input(x)
        if x.ndim not in (3, 4):
            raise ValueError(f"{self._short()}: expected input of shape (N, C, H, W) or (C, H, W), "
                             f"got shape {tuple(x.shape)}")
        be = backends.current()
        idx = indices if be.is_native(indices) else be.asarray(indices)  # the input's backend, as x
        if tuple(idx.shape) != tuple(x.shape):
            raise ValueError(f"{self._short()}: indices shape {tuple(idx.shape)} differs from input shape "
                             f"{tuple(x.shape)}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{self._short()}: indices must be integers, got dtype {idx.dtype}")
        out = self._output_size(x, output_size)
        shape = x.shape
        if x.ndim == 3:  # unbatched: a batch of one
            x, idx = x[None], idx[None]
        y = ops.maxunpool2d_forward(x, idx, out)
        self._save((idx, shape))
        return y.reshape(shape[:-2] + out)

    def backward(self, dy):
        idx, shape = self._saved()
        dx = ops.maxunpool2d_backward(dy.reshape(idx.shape[:2] + dy.shape[-2:]), idx)
        return dx.reshape(shape)
