"""Conv2d: PyTorch's arguments and defaults; the arithmetic lives in the backend ops."""
import math

import numpy as np

from .. import ops
from ..random import get_rng
from ._utils import check_input, pair
from .module import Parameter, WeightBiasLayer


class Conv2d(WeightBiasLayer):
    """2-D convolution over NCHW input.

    ``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True, padding_mode="zeros")`` (zero padding is the only mode). Weight (out, in/groups, kh, kw) and bias are initialised as PyTorch does
    (uniform in +-1/sqrt(fan_in)). ``padding`` may also be ``"valid"`` (0) or ``"same"``
    (stride 1 with an even total padding per side).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros"):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size")
        self.stride = pair(stride, "Conv2d: stride")
        self.dilation = pair(dilation, "Conv2d: dilation")
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                if self.stride != (1, 1) or any(t % 2 for t in tot):
                    raise ValueError("Conv2d: padding='same' needs stride 1 and an even dilation*(kernel-1)")
                padding = (tot[0] // 2, tot[1] // 2)
            else:
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        self.padding = pair(padding, "Conv2d: padding")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError("Conv2d: kernel_size, stride and dilation must be >= 1 and padding >= 0")
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
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_shape(self, h, w):
        kh, kw = self.kernel_size
        p = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        q = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return p, q

    def _check(self, x):
        check_input(self, x, 4, 1, self.in_channels)
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
        y = ops.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups)
        self._save(x)
        return y

    def _grads(self, dy, x, need_dx, need_dw, need_db):
        return ops.conv2d_backward(
            dy, x, self.weight.data, self.stride, self.padding, self.dilation, self.groups,
            need_dx=need_dx, need_dw=need_dw, need_db=need_db,
        )
