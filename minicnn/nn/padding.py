"""Padding layers: ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, CircularPad2d.

Each pads the last two axes of (N, C, H, W) or unbatched (C, H, W) input through
``ops.pad2d_forward``; the backward is the op's adjoint ``ops.pad2d_backward`` (the maths and
the four modes: docs/padding.md).
"""
import numbers

from .. import ops
from ..shapes import check_pad2d
from .module import Module


def _quad(padding, name):
    """PyTorch's padding argument: an int for all four sides, or (left, right, top, bottom)."""
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        return (int(padding),) * 4
    try:
        quad = tuple(padding)
    except TypeError:
        quad = None
    if (quad is None or len(quad) != 4
            or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in quad)):
        raise ValueError(f"{name}: padding must be an int or a 4-tuple of ints (left, right, top, bottom), "
                         f"got {padding!r}")
    return tuple(int(p) for p in quad)


class _Pad2d(Module):
    mode = "constant"

    def __init__(self, padding, value=0.0):
        super().__init__()
        self.padding = _quad(padding, type(self).__name__)
        self.value = float(value)

    def extra_repr(self):
        return f"{self.padding}"

    def forward(self, x):
        x = self._prepare_input(x)
        ndims = (2, 3, 4) if self.mode == "constant" else (3, 4)
        if x.ndim not in ndims:
            shapes = " or ".join({2: "(H, W)", 3: "(C, H, W)", 4: "(N, C, H, W)"}[n] for n in ndims)
            raise ValueError(f"{self._short()}: expected input of shape {shapes}, got shape {tuple(x.shape)}")
        check_pad2d(x.shape, self.padding, self.mode, self._short())
        shape = x.shape
        x4 = x.reshape((1,) * (4 - x.ndim) + shape)  # unbatched input: a batch of one
        y = ops.pad2d_forward(x4, self.padding, self.mode, self.value)
        self._save(x4.shape)
        return y.reshape(shape[:-2] + y.shape[-2:])

    def backward(self, dy):
        x4_shape = self._saved()
        dx = ops.pad2d_backward(dy.reshape(x4_shape[:2] + dy.shape[-2:]), x4_shape, self.padding, self.mode)
        return dx.reshape(dy.shape[:-2] + x4_shape[-2:])


class ConstantPad2d(_Pad2d):
    """Pad with a constant ``value``: ``ConstantPad2d(padding, value)``.

    Args:
        padding: int (all four sides) or (left, right, top, bottom); negative values crop.
        value: the fill value.

    Shape: (N, C, H, W) or (C, H, W) or (H, W) -> H_out = H + top + bottom, W_out = W + left + right.
    Backward: the gradient of the copied cells, cropped back to the input (the fill gets none).
    """

    def __init__(self, padding, value):
        super().__init__(padding, value)

    def extra_repr(self):
        return f"padding={self.padding}, value={self.value}"


class ZeroPad2d(ConstantPad2d):
    """``ConstantPad2d(padding, 0.0)``: pad with zeros (what ``Conv2d`` padding does)."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def extra_repr(self):
        return f"{self.padding}"


class ReflectionPad2d(_Pad2d):
    """Pad by mirroring the input at its edges, the edge itself not repeated:
    row -1 copies row 1, row H copies row H - 2. Each padding must be less than the input size
    along its axis (PyTorch's limit). Input (N, C, H, W) or (C, H, W); the backward adds each
    mirrored cell's gradient onto the cell it copied."""

    mode = "reflect"

    def __init__(self, padding):
        super().__init__(padding)


class ReplicationPad2d(_Pad2d):
    """Pad by repeating the edge rows and columns (the corners repeat the corner cell). Input
    (N, C, H, W) or (C, H, W); the backward sums every copy's gradient onto its edge cell."""

    mode = "replicate"

    def __init__(self, padding):
        super().__init__(padding)


class CircularPad2d(_Pad2d):
    """Pad by wrapping around (row -1 copies row H - 1): periodic boundaries. Each padding must
    be at most the input size along its axis. Input (N, C, H, W) or (C, H, W)."""

    mode = "circular"

    def __init__(self, padding):
        super().__init__(padding)
