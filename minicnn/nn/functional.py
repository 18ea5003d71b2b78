"""The forward forms of the layers, with PyTorch's names (``torch.nn.functional``), for inference
and lessons::

    import minicnn.nn.functional as F
    y = F.relu(F.conv2d(x, w, b, padding=1))
    p = F.softmax(logits, dim=1)

Each function computes what the layer of the same meaning computes in its forward pass, with the
same argument rules and errors, on the backend in force; it keeps nothing for a backward pass and
draws nothing from the library's random generator except where it must (``dropout``). To train,
use the modules (``nn.Conv2d``, ``nn.ReLU``, ...): they keep what their backward needs.

Functions with weights (``conv2d``, ``conv_transpose2d``, ``linear``, ``batch_norm``, ``prelu``)
take them as arrays and call the ops directly; the others run a short-lived module under
``no_grad`` so that one definition of each rule serves both forms.
"""
from __future__ import annotations

import numpy as np

from .. import backends, ops
from ..grad_mode import no_grad
from ..shapes import conv_output_size, conv_transpose_output_size, pair
from . import activation as _act
from . import dropout as _dropout
from . import dropout2d as _dropout2d
from . import loss as _loss
from . import padding as _padding
from . import pooling as _pool
from .conv import PADDING_MODES, conv2d_padded_forward, resolve_padding
from .upsampling import interpolate, pixel_shuffle, pixel_unshuffle

__all__ = [
    "conv2d", "conv_transpose2d", "linear", "batch_norm",
    "relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "gelu", "silu", "hardswish", "hardsigmoid",
    "softplus", "softsign", "prelu", "softmax", "log_softmax", "softmin",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_unpool2d",
    "dropout", "dropout2d", "pad", "interpolate", "pixel_shuffle", "pixel_unshuffle",
    "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "mse_loss", "l1_loss", "smooth_l1_loss",
    "huber_loss",
]


def _run(module, input, *args, **kwargs):
    """``module(input, *args)`` in the input's floating dtype (float32 for other input, as a
    module computes), keeping nothing for backward (a functional call has no backward)."""
    dtype = getattr(input, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind == "f" and np.dtype(dtype) != module.dtype:
        module.to(dtype)
    with no_grad():
        return module(input, *args, **kwargs)


def _arrays(where, x, *rest):
    """``x`` and the optional arrays ``rest`` on the backend in force, in x's floating dtype
    (float32 for integer input, as the modules compute)."""
    be = backends.current()
    x = x if be.is_native(x) else be.asarray(x)
    if x.dtype.kind == "c" or x.dtype.kind not in "biuf":
        raise TypeError(f"{where}: input must be a real numeric array, got dtype {x.dtype}")
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    out = [x.astype(dtype) if x.dtype != dtype else x]
    for a in rest:
        if a is None:
            out.append(None)
            continue
        a = a if be.is_native(a) else be.asarray(a)
        out.append(a.astype(dtype) if a.dtype != dtype else a)
    return out


# -- with weights ---------------------------------------------------------------------------------


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """2-D convolution of (N, C, H, W) ``input`` with ``weight`` (K, C/groups, kh, kw) (see ``nn.Conv2d``).

    ``padding``: int, pair, ``"valid"`` or ``"same"`` (stride 1; an odd total puts the extra
    row/column at the bottom/right). ``padding_mode`` is accepted for symmetry with ``nn.Conv2d``
    (PyTorch's functional form only zero-pads)."""
    x, w, b = _arrays("conv2d", input, weight, bias)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"conv2d: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d: expected 4-D input (N, C, H, W) and 4-D weight (K, C/groups, kh, kw), "
                         f"got input {tuple(x.shape)} and weight {tuple(w.shape)}")
    groups = int(groups)
    if groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"conv2d: input of shape {tuple(x.shape)} with groups={groups} needs weight of shape "
                         f"(K, {x.shape[1] // max(groups, 1)}, kh, kw) with K divisible by groups, "
                         f"got {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    stride, dilation = pair(stride, "conv2d: stride"), pair(dilation, "conv2d: dilation")
    padding, pads = resolve_padding(padding, tuple(w.shape[2:]), stride, dilation, padding_mode, "conv2d")
    h, wd = x.shape[2:]
    if pads is not None:
        h, wd = h + pads[2] + pads[3], wd + pads[0] + pads[1]
    conv_pad = (0, 0) if pads is not None else padding
    if min(conv_output_size(h, wd, *w.shape[2:], stride, conv_pad, dilation)) < 1:
        raise ValueError(f"conv2d: input of shape {tuple(x.shape)} is smaller than the dilated kernel after padding")
    return conv2d_padded_forward(x, w, b, stride, padding, dilation, groups, pads, padding_mode)[0]


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution of (N, C_in, H, W) ``input`` with ``weight`` (C_in, C_out/groups, kh, kw)
    (see ``nn.ConvTranspose2d``)."""
    x, w, b = _arrays("conv_transpose2d", input, weight, bias)
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[0]:
        raise ValueError(f"conv_transpose2d: expected input (N, C_in, H, W) and weight (C_in, C_out/groups, kh, kw) "
                         f"with the same C_in, got input {tuple(x.shape)} and weight {tuple(w.shape)}")
    groups = int(groups)
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"conv_transpose2d: C_in ({w.shape[0]}) must be divisible by groups ({groups})")
    if b is not None and tuple(b.shape) != (w.shape[1] * groups,):
        raise ValueError(f"conv_transpose2d: bias must have shape ({w.shape[1] * groups},), got {tuple(b.shape)}")
    stride, padding = pair(stride, "conv_transpose2d: stride"), pair(padding, "conv_transpose2d: padding")
    output_padding, dilation = pair(output_padding, "conv_transpose2d: output_padding"), pair(dilation, "conv_transpose2d: dilation")
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller than either stride "
                         f"{stride} or dilation {dilation}")
    out = conv_transpose_output_size(*x.shape[2:], *w.shape[2:], stride, padding, dilation, output_padding)
    if min(out) < 1:
        raise ValueError(f"conv_transpose2d: output size {tuple(out)} for input {tuple(x.shape)} is not positive")
    return ops.conv_transpose2d_forward(x, w, b, stride, padding, output_padding, dilation, groups)


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` over the last axis of ``input`` (*, in) (see ``nn.Linear``)."""
    x, w, b = _arrays("linear", input, weight, bias)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: input of shape {tuple(x.shape)} needs weight of shape (out, {x.shape[-1] if x.ndim else '?'}), "
                         f"got {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"linear: bias must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    lead = x.shape[:-1]
    y = ops.linear_forward(x.reshape(-1, x.shape[-1]), w, b)
    return y.reshape(lead + (w.shape[0],))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over the channel axis 1 of (N, C), (N, C, L) or (N, C, H, W) input.

    ``training=False`` normalises with ``running_mean``/``running_var``; ``training=True`` with
    the batch's statistics and, as PyTorch, updates the running arrays in place (unbiased variance)
    when they are given. ``weight``/``bias`` None mean 1 and 0."""
    x, rm, rv, g, b = _arrays("batch_norm", input, running_mean, running_var, weight, bias)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"batch_norm: expected input of shape (N, C), (N, C, L) or (N, C, H, W), got {tuple(x.shape)}")
    C = x.shape[1]
    for name, a in (("running_mean", rm), ("running_var", rv), ("weight", g), ("bias", b)):
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"batch_norm: {name} must have shape ({C},) for input {tuple(x.shape)}, got {tuple(a.shape)}")
    be = backends.current()
    g = g if g is not None else be.asarray(np.ones(C, x.dtype))
    b = b if b is not None else be.asarray(np.zeros(C, x.dtype))
    x4 = x.reshape(x.shape[0], C, -1, 1)  # (N, C, L, 1): the statistics are over every axis but C
    if training:
        m = x4.shape[0] * x4.shape[2]
        if m < 2:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, got input shape {tuple(x.shape)}")
        y, mean, var = ops.batchnorm2d_forward_train(x4, g, b, float(eps))
        if running_mean is not None and rm is running_mean:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None and rv is running_var:
            running_var[...] = (1 - momentum) * running_var + momentum * var * (m / (m - 1))
    else:
        if rm is None or rv is None:
            raise ValueError("batch_norm: training=False needs running_mean and running_var")
        y = ops.batchnorm2d_forward_eval(x4, g, b, rm, rv, float(eps))
    return y.reshape(x.shape)


def prelu(input, weight):
    """max(0, x) + weight * min(0, x), ``weight`` of shape (1,) or (C,) along axis 1 (see ``nn.PReLU``)."""
    x, w = _arrays("prelu", input, weight)
    m = _act.PReLU(num_parameters=int(w.size))
    m.weight.data = w.reshape(m.weight.shape)
    return _run(m, x)


# -- activations ----------------------------------------------------------------------------------


def relu(input, inplace=False):
    """max(x, 0)."""
    return _run(_act.ReLU(), input)


def sigmoid(input):
    """1 / (1 + exp(-x))."""
    return _run(_act.Sigmoid(), input)


def tanh(input):
    """tanh(x)."""
    return _run(_act.Tanh(), input)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """x for x >= 0, negative_slope * x otherwise."""
    return _run(_act.LeakyReLU(negative_slope), input)


def elu(input, alpha=1.0, inplace=False):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return _run(_act.ELU(alpha), input)


def selu(input, inplace=False):
    """scale * elu(x, alpha) with PyTorch's constants."""
    return _run(_act.SELU(), input)


def gelu(input, approximate="none"):
    """x * Phi(x) (``approximate="tanh"``: the tanh approximation)."""
    return _run(_act.GELU(approximate), input)


def silu(input, inplace=False):
    """x * sigmoid(x)."""
    return _run(_act.SiLU(), input)


def hardswish(input, inplace=False):
    """x * relu6(x + 3) / 6."""
    return _run(_act.Hardswish(), input)


def hardsigmoid(input, inplace=False):
    """relu6(x + 3) / 6."""
    return _run(_act.Hardsigmoid(), input)


def softplus(input, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, linear above ``threshold``."""
    return _run(_act.Softplus(beta, threshold), input)


def softsign(input):
    """x / (1 + |x|)."""
    return _run(_act.Softsign(), input)


def softmax(input, dim=None):
    """exp(x) / sum(exp(x)) along ``dim`` (see ``nn.Softmax`` for ``dim=None``)."""
    return _run(_act.Softmax(dim), input)


def log_softmax(input, dim=None):
    """log(softmax(x)) along ``dim``, computed stably."""
    return _run(_act.LogSoftmax(dim), input)


def softmin(input, dim=None):
    """softmax(-x) along ``dim``."""
    return _run(_act.Softmin(dim), input)


# -- pooling, padding, resizing, dropout ----------------------------------------------------------


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over each window; ``return_indices=True`` also returns the flat h*W+w winner indices."""
    return _run(_pool.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode), input)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over each window (see ``nn.AvgPool2d``)."""
    return _run(_pool.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), input)


def adaptive_avg_pool2d(input, output_size):
    """Average into a fixed output grid."""
    return _run(_pool.AdaptiveAvgPool2d(output_size), input)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max into a fixed output grid."""
    return _run(_pool.AdaptiveMaxPool2d(output_size, return_indices), input)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Put each value back at the position ``indices`` (from ``max_pool2d(..., return_indices=True)``) names."""
    return _run(_pool.MaxUnpool2d(kernel_size, stride, padding), input, indices, output_size=output_size)


_PAD_LAYERS = {"constant": _padding.ConstantPad2d, "reflect": _padding.ReflectionPad2d,
               "replicate": _padding.ReplicationPad2d, "circular": _padding.CircularPad2d}


def pad(input, pad, mode="constant", value=None):
    """Pad the last two axes by ``pad`` = (left, right, top, bottom) (PyTorch's order; a 2-tuple
    pads only the last axis). Modes: constant (with ``value``, default 0), reflect, replicate, circular."""
    if mode not in _PAD_LAYERS:
        raise ValueError(f"pad: mode must be one of {', '.join(_PAD_LAYERS)}, got {mode!r}")
    try:
        quad = tuple(pad)
    except TypeError:
        raise ValueError(f"pad: pad must be a tuple of 2 or 4 ints (left, right[, top, bottom]), got {pad!r}") from None
    if len(quad) == 2:
        quad = quad + (0, 0)
    if len(quad) != 4:
        raise ValueError(f"pad: this version pads the last two axes: pad must have 2 or 4 entries, got {len(quad)}")
    if mode == "constant":
        return _run(_padding.ConstantPad2d(quad, 0.0 if value is None else value), input)
    if value not in (None, 0, 0.0):
        raise ValueError(f"pad: padding mode {mode!r} doesn't take in a value argument")
    return _run(_PAD_LAYERS[mode](quad), input)


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (identity when not training)."""
    m = _dropout.Dropout(p)
    m.train(bool(training))
    return _run(m, input)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, H, W) input with probability ``p`` (identity when not training)."""
    m = _dropout2d.Dropout2d(p)
    m.train(bool(training))
    return _run(m, input)


# -- losses ---------------------------------------------------------------------------------------


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy (see ``nn.CrossEntropyLoss``: class or probability targets, (N, C, ...) layouts)."""
    m = _loss.CrossEntropyLoss(weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    return _run(m, input, target)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (see ``nn.NLLLoss``)."""
    return _run(_loss.NLLLoss(weight, ignore_index=ignore_index, reduction=reduction), input, target)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Sigmoid + binary cross-entropy per element (see ``nn.BCEWithLogitsLoss``)."""
    return _run(_loss.BCEWithLogitsLoss(weight, reduction=reduction, pos_weight=pos_weight), input, target)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error."""
    return _run(_loss.MSELoss(reduction=reduction), input, target)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error."""
    return _run(_loss.L1Loss(reduction=reduction), input, target)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """Quadratic below ``beta``, linear above (see ``nn.SmoothL1Loss``)."""
    return _run(_loss.SmoothL1Loss(reduction=reduction, beta=beta), input, target)


def huber_loss(input, target, reduction="mean", delta=1.0):
    """Quadratic below ``delta``, linear above, scaled by ``delta`` (see ``nn.HuberLoss``)."""
    return _run(_loss.HuberLoss(reduction=reduction, delta=delta), input, target)
