"""ConvTranspose2d: PyTorch's arguments, defaults, weight layout and output-size rule."""
import math

import numpy as np

from .. import ops
from ..random import get_rng
from ..shapes import conv_transpose_output_size
from ._utils import check_input, pair
from .module import Parameter, WeightBiasLayer


class ConvTranspose2d(WeightBiasLayer):
    r"""2-D transposed convolution over NCHW input (sometimes called a "deconvolution").

    The adjoint of ``Conv2d`` with the same weight: every input pixel scatters a copy of its
    filter, scaled by its value, into the output,

    .. math:: y[n, g O_g + o,\ h s_h - p_h + r d_h,\ v s_w - p_w + s d_w] \mathrel{+}=
              x[n, g C_g + c, h, v]\, w[g C_g + c, o, r, s]

    plus the bias. Its forward is what a convolution's backward does to dY, and its backward is
    a convolution's forward (docs/conv_transpose.md).

    ``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros")`` (PyTorch's order).

    Args:
        padding: ``dilation * (kernel_size - 1) - padding`` zeros of implicit padding on both
            sides of the input, so that a ``Conv2d`` with the same arguments maps the output
            shape back to the input shape.
        output_padding: extra rows/columns on the bottom/right of the output, choosing among the
            input sizes a strided ``Conv2d`` maps to the same size; each must be smaller than the
            stride or the dilation of its axis.
        padding_mode: only ``"zeros"``, as PyTorch.

    Weight (in, out/groups, kh, kw) and bias are initialised as PyTorch does: uniform in
    +-1/sqrt(fan_in) with fan_in = (out/groups) * kh * kw (the weight's dimension 1).

    Shape: (N, C_in, H, W) -> (N, C_out, H_out, W_out),
    H_out = (H - 1) s - 2p + d(k - 1) + output_padding + 1 (``shapes.conv_transpose_output_size``).
    ``forward(x, output_size=(H_out, W_out))`` picks the output_padding that gives that size
    (PyTorch's ``output_size`` argument; (N, C, H, W) is accepted too).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros"):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f'ConvTranspose2d: only "zeros" padding_mode is supported, '
                             f'got padding_mode={padding_mode!r}')
        self.padding_mode = padding_mode
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = pair(kernel_size, "ConvTranspose2d: kernel_size")
        self.stride = pair(stride, "ConvTranspose2d: stride")
        self.padding = pair(padding, "ConvTranspose2d: padding")
        self.output_padding = pair(output_padding, "ConvTranspose2d: output_padding")
        self.dilation = pair(dilation, "ConvTranspose2d: dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding + self.output_padding) < 0:
            raise ValueError(f"ConvTranspose2d: kernel_size {self.kernel_size}, stride {self.stride} and dilation "
                             f"{self.dilation} must be >= 1, padding {self.padding} and output_padding "
                             f"{self.output_padding} >= 0")
        self._check_output_padding(self.output_padding)
        fan_in = (out_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        rng = get_rng()
        shape = (in_channels, out_channels // groups, *self.kernel_size)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(np.float32)) if bias else None

    def _check_output_padding(self, op):
        if any(o >= s and o >= d for o, s, d in zip(op, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d: output_padding {op} must be smaller than either stride "
                             f"{self.stride} or dilation {self.dilation}")

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_shape(self, h, w, output_padding=None):
        """(H_out, W_out) for an (h, w) input."""
        op = self.output_padding if output_padding is None else output_padding
        return conv_transpose_output_size(h, w, *self.kernel_size, self.stride, self.padding, self.dilation, op)

    def _output_padding(self, x, output_size):
        """The output_padding that gives ``output_size`` (PyTorch's ``_output_padding``)."""
        if output_size is None:
            return self.output_padding
        try:
            size = [int(s) for s in output_size]
        except (TypeError, ValueError):
            raise ValueError(f"{self._short()}: output_size must be (H, W) or (N, C, H, W), "
                             f"got {output_size!r}") from None
        if len(size) == 4:
            size = size[2:]
        if len(size) != 2:
            raise ValueError(f"{self._short()}: output_size must have 2 or 4 elements (got {len(size)})")
        lo = self.output_shape(*x.shape[2:], output_padding=(0, 0))
        hi = tuple(m + s - 1 for m, s in zip(lo, self.stride))
        if not all(a <= s <= b for a, s, b in zip(lo, size, hi)):
            raise ValueError(f"{self._short()}: requested an output size of {tuple(size)}, but valid sizes range "
                             f"from {lo} to {hi} (for an input of {tuple(x.shape[2:])})")
        op = tuple(s - m for s, m in zip(size, lo))
        self._check_output_padding(op)
        return op

    def forward(self, x, output_size=None):
        x = self._prepare_input(x)
        check_input(self, x, 4, 1, self.in_channels)
        op = self._output_padding(x, output_size)
        oh, ow = self.output_shape(*x.shape[2:], output_padding=op)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self._short()}: input of shape {tuple(x.shape)} gives output size ({oh}, {ow}), "
                             f"which is too small")
        b = self.bias.data if self.bias is not None else None
        y = ops.conv_transpose2d_forward(x, self.weight.data, b, self.stride, self.padding, op, self.dilation,
                                         self.groups)
        self._save((x, op))
        return y

    def _grads(self, dy, saved, need_dx, need_dw, need_db):
        x, op = saved
        return ops.conv_transpose2d_backward(dy, x, self.weight.data, self.stride, self.padding, op, self.dilation,
                                             self.groups, need_dx=need_dx, need_dw=need_dw, need_db=need_db)
