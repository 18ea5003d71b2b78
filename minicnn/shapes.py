"""Argument pairs and output sizes: the one definition every layer and every backend uses.

The formulas are PyTorch's (``torch.nn.Conv2d``, ``MaxPool2d``, ``ConvTranspose2d`` "Shape" sections)::

    conv / pool:     out = floor((in + 2p - d(k-1) - 1) / s) + 1
    pool, ceil_mode: out = ceil((in + 2p - d(k-1) - 1) / s) + 1, less one if the last window
                     would start in the right padding
    transposed conv: out = (in - 1) s - 2p + d(k-1) + output_padding + 1
    padding:         out = in + lo + hi (a negative lo/hi crops); ``pad_source_index`` maps each
                     padded position to the input position it copies
    upsampling:      ``nearest_source_index`` and ``linear_source_index`` map each output position
                     to the input position(s) it reads (PyTorch's ``interpolate`` index rules)
"""
from __future__ import annotations

import numbers

import numpy as _np


def pair(v, name: str = "argument") -> tuple:
    """PyTorch accepts an int or an (h, w) pair for kernel_size, stride, padding and dilation."""
    # plain ints and pairs of them first, by exact type: every conv and pool call passes here (about
    # 70 times per compiled ResNet-18 forward), and the abstract-class checks below cost ~1 us each
    if type(v) is int:
        return (v, v)
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v
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


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_source_index(L, lo, hi, mode):
    """For each of the ``L + lo + hi`` padded positions along one axis, the input index it copies
    (-1: the fill value of a constant pad). A negative ``lo``/``hi`` crops that side.

    constant:  i inside [0, L) else -1
    reflect:   mirror at the edges without repeating them: -1 -> 1, L -> L - 2
    replicate: clamp into [0, L - 1]
    circular:  wrap around; as PyTorch, a negative pad crops first and the rest wraps the cropped part
    """
    i = _np.arange(-lo, L + hi)  # the padded positions, in input coordinates
    if mode == "constant":
        return _np.where((i >= 0) & (i < L), i, -1)
    if mode == "reflect":
        i = _np.abs(i)
        return _np.where(i >= L, 2 * (L - 1) - i, i)
    if mode == "replicate":
        return _np.clip(i, 0, L - 1)
    if mode == "circular":
        a = max(0, -lo)  # what the crop keeps: [a, b)
        b = L - max(0, -hi)
        j = _np.arange(-max(lo, 0), (b - a) + max(hi, 0))
        return a + j % max(b - a, 1)
    raise ValueError(f"pad2d: mode must be one of {PAD_MODES}, got {mode!r}")


def check_pad2d(shape, pads, mode, where="pad2d"):
    """PyTorch's limits on (left, right, top, bottom) for an input of ``shape`` (..., H, W)."""
    if mode not in PAD_MODES:
        raise ValueError(f"{where}: mode must be one of {PAD_MODES}, got {mode!r}")
    left, right, top, bottom = pads
    for L, lo, hi, axis in ((shape[-2], top, bottom, "height"), (shape[-1], left, right, "width")):
        if L + lo + hi < 0 or (mode in ("constant", "circular") and L + min(lo, 0) + min(hi, 0) < 0):
            raise ValueError(f"{where}: padding ({lo}, {hi}) crops more than the input {axis} {L} "
                             f"(input shape {tuple(shape)})")
        if mode == "reflect" and (lo >= L or hi >= L):
            raise ValueError(f"{where}: reflect padding ({lo}, {hi}) must be less than the input {axis} {L} "
                             f"(input shape {tuple(shape)})")
        kept = L + min(lo, 0) + min(hi, 0) if mode == "circular" else L  # circular wraps the cropped part
        if mode == "circular" and (lo > kept or hi > kept):
            raise ValueError(f"{where}: circular padding ({lo}, {hi}) must be at most the input {axis} "
                             f"{kept}{' left after cropping' if kept < L else ''} (input shape {tuple(shape)})")
        if mode != "constant" and kept <= 0 < L + lo + hi:
            raise ValueError(f"{where}: {mode} padding ({lo}, {hi}) has no input {axis} to copy "
                             f"(input shape {tuple(shape)})")


def _resize_scale(in_size, out_size, scale, dtype):
    """PyTorch's ``compute_scales_value``: the step between output positions in input units,
    1/scale_factor when the caller passed one (and it is positive), else in/out; in ``dtype``."""
    dt = _np.dtype(dtype).type
    if scale is not None and scale > 0:
        return dt(1.0 / scale)
    return dt(in_size) / dt(out_size)


def nearest_source_index(in_size, out_size, scale=None):
    """For each of ``out_size`` output positions, the input index mode ``'nearest'`` copies:
    ``min(floor(i * step), in_size - 1)`` with ``step`` from ``_resize_scale`` computed in float32
    as PyTorch does for every dtype; out == in copies and out == 2 in halves exactly (PyTorch's
    shortcuts, which win even when a scale_factor says otherwise)."""
    i = _np.arange(out_size)
    if out_size == in_size:
        return i
    if out_size == 2 * in_size:
        return i // 2
    step = _resize_scale(in_size, out_size, scale, _np.float32)
    return _np.minimum(_np.floor(i.astype(_np.float32) * step).astype(_np.int64), in_size - 1)


def linear_source_index(in_size, out_size, align_corners, scale=None, dtype=_np.float32):
    """For each output position of a (bi)linear resize: the two input indices it blends and their
    weights, ``(i0, i1, w0, w1)`` with ``y = w0 * x[i0] + w1 * x[i1]`` (PyTorch's rule, in ``dtype``):

        align_corners:  src = i * (in - 1) / (out - 1)         (0 when out == 1)
        otherwise:      src = max((i + 0.5) * step - 0.5, 0)   (step from ``_resize_scale``)
        i0 = min(floor(src), in - 1),  i1 = min(i0 + 1, in - 1),  w1 = clip(src - i0, 0, 1),  w0 = 1 - w1

    out == in copies (w0 = 1), whatever the scale_factor, as PyTorch.
    """
    dt = _np.dtype(dtype).type
    i = _np.arange(out_size)
    if out_size == in_size:
        return i, i, _np.ones(out_size, dt), _np.zeros(out_size, dt)
    if align_corners:
        step = dt(in_size - 1) / dt(out_size - 1) if out_size > 1 else dt(0)
        src = step * i.astype(dt)
    else:
        step = _resize_scale(in_size, out_size, scale, dt)
        src = _np.maximum(step * (i.astype(dt) + dt(0.5)) - dt(0.5), dt(0))
    # floorf: PyTorch floors in float32 even for float64 data
    i0 = _np.minimum(_np.floor(src.astype(_np.float32)).astype(_np.int64), in_size - 1)
    i1 = _np.minimum(i0 + 1, in_size - 1)
    w1 = _np.clip(src - i0.astype(dt), dt(0), dt(1)).astype(dt)
    return i0, i1, (dt(1) - w1).astype(dt), w1
