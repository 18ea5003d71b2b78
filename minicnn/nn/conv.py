"""Conv2d: PyTorch's arguments and defaults; the arithmetic lives in the backend ops."""
import math

import numpy as np

from .. import ops
from ..random import get_rng
from ..shapes import check_pad2d
from ._utils import check_input, conv_output_size, pair
from .module import Parameter, WeightBiasLayer

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# padding_mode -> the pad op's mode
_PAD_OP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def resolve_padding(padding, kernel_size, stride, dilation, padding_mode="zeros", where="Conv2d"):
    """``(padding, pads)`` for a convolution: ``padding`` is what the layer reports (a pair, or
    ``"same"`` when no symmetric pair describes it) and ``pads`` is None when the conv op pads by
    itself (zeros, both sides alike) or (left, right, top, bottom) for ``ops.pad2d_forward`` first
    (another ``padding_mode``, or ``"same"`` with an odd total, whose odd row/column PyTorch puts
    at the bottom/right). ``kernel_size``, ``stride`` and ``dilation`` are pairs."""
    pads = None
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{where}: padding='same' is not supported for strided convolutions (stride={stride})")
            tot = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            if any(t % 2 for t in tot):
                pads = (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2)
            padding = (tot[0] // 2, tot[1] // 2)
        else:
            raise ValueError(f"{where}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    padding = pair(padding, f"{where}: padding")
    if min(kernel_size + stride + dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{where}: kernel_size, stride and dilation must be >= 1 and padding >= 0")
    if pads is not None:
        return "same", pads
    if padding_mode != "zeros":
        return padding, (padding[1], padding[1], padding[0], padding[0])
    return padding, None


def conv2d_padded_forward(x, w, b, stride, padding, dilation, groups, pads, padding_mode="zeros"):
    """``conv2d_forward`` after the pad op when ``pads`` is given (see :func:`resolve_padding`);
    returns (y, the array the conv op read)."""
    xc = x if pads is None else ops.pad2d_forward(x, pads, _PAD_OP_MODE[padding_mode], 0.0)
    conv_padding = (0, 0) if pads is not None else padding
    return ops.conv2d_forward(xc, w, b, stride, conv_padding, dilation, groups), xc


class Conv2d(WeightBiasLayer):
    """2-D convolution over NCHW input.

    ``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True, padding_mode="zeros")``. Weight (out, in/groups, kh, kw) and bias are initialised
    as PyTorch does (uniform in +-1/sqrt(fan_in)).

    Args:
        padding: int, (h, w) pair, ``"valid"`` (0) or ``"same"`` (output size = input size;
            stride 1 only). ``"same"`` pads d*(k-1) in total per axis, half on each side and the
            odd one at the bottom/right, as PyTorch.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. As PyTorch,
            the other modes pad the input with ``ops.pad2d_forward`` first and convolve with
            padding 0; the state dict is the same in every mode.

    Shape: (N, C_in, H, W) -> (N, C_out, P, Q), P = floor((H + 2p - d(k-1) - 1) / s) + 1.
    Zero padding on both sides alike goes into the conv op itself (no padded copy); only the
    other modes and an odd "same" total take the pad op.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros"):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {PADDING_MODES}, got padding_mode={padding_mode!r}")
        self.padding_mode = padding_mode
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size")
        self.stride = pair(stride, "Conv2d: stride")
        self.dilation = pair(dilation, "Conv2d: dilation")
        # (left, right, top, bottom) for the pad op, or None: the conv op pads (zeros, both sides alike)
        self.padding, self._pads = resolve_padding(padding, self.kernel_size, self.stride, self.dilation,
                                                   padding_mode, "Conv2d")
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        rng = get_rng()
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(np.float32)) if bias else None

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_shape(self, h, w):
        if self._pads is not None:
            left, right, top, bottom = self._pads
            h, w = h + top + bottom, w + left + right
        return conv_output_size(h, w, *self.kernel_size, self.stride, self._conv_padding(), self.dilation)

    def _conv_padding(self):
        """The padding the conv op applies: none when the pad op already did."""
        return (0, 0) if self._pads is not None else self.padding

    def _check(self, x):
        check_input(self, x, 4, 1, self.in_channels)
        if self._pads is not None:
            check_pad2d(x.shape, self._pads, _PAD_OP_MODE[self.padding_mode], self._short())
        p, q = self.output_shape(*x.shape[2:])
        if p < 1 or q < 1:
            eff = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
            raise ValueError(
                f"{self._short()}: input of shape {tuple(x.shape)} is smaller than the dilated kernel "
                f"{tuple(eff)} after padding {self.padding}"
            )

    def forward(self, x):
        x = self._prepare_input(x)
        self._check(x)
        b = self.bias.data if self.bias is not None else None
        y, xc = conv2d_padded_forward(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups,
                                      self._pads, self.padding_mode)
        # the backward convolves the padded input; it also needs the input's shape to fold dx back
        self._save(x if self._pads is None else (xc, x.shape))
        return y

    def _grads(self, dy, saved, need_dx, need_dw, need_db):
        xc, shape = (saved, None) if self._pads is None else saved
        dx, dw, db = ops.conv2d_backward(
            dy, xc, self.weight.data, self.stride, self._conv_padding(), self.dilation, self.groups,
            need_dx=need_dx, need_dw=need_dw, need_db=need_db,
        )
        if need_dx and shape is not None:
            dx = ops.pad2d_backward(dx, shape, self._pads, _PAD_OP_MODE[self.padding_mode])
        return dx, dw, db
