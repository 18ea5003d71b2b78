"""Argument pairs and output sizes: the one definition every layer and every backend uses.

The formulas are PyTorch's (``torch.nn.Conv2d``, ``MaxPool2d``, ``ConvTranspose2d`` "Shape" sections)::

    conv / pool:     out = floor((in + 2p - d(k-1) - 1) / s) + 1
    pool, ceil_mode: out = ceil((in + 2p - d(k-1) - 1) / s) + 1, less one if the last window
                     would start in the right padding
    transposed conv: out = (in - 1) s - 2p + d(k-1) + output_padding + 1
"""
from __future__ import annotations

import numbers


def pair(v, name: str = "argument") -> tuple:
    """PyTorch accepts an int or an (h, w) pair for kernel_size, stride, padding and dilation."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return (int(v), int(v))
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in (a, b)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (int(a), int(b))


def _axis(size, k, stride, pad, dil, ceil_mode):
    span = size + 2 * pad - dil * (k - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # PyTorch: the last window must start inside the input or the left padding
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def conv_output_size(h, w, r, s, stride, padding, dilation, ceil_mode=False):
    """Output (P, Q) of a convolution or pooling window over an (h, w) plane (see the module doc)."""
    return (_axis(h, r, stride[0], padding[0], dilation[0], ceil_mode),
            _axis(w, s, stride[1], padding[1], dilation[1], ceil_mode))


def conv_transpose_output_size(h, w, r, s, stride, padding, dilation, output_padding=(0, 0)):
    """Output (H_out, W_out) of a transposed convolution (see the module doc)."""
    return tuple((i - 1) * st - 2 * p + d * (k - 1) + op + 1
                 for i, k, st, p, d, op in zip((h, w), (r, s), stride, padding, dilation, output_padding))
