"""Where one output number of a layer comes from: the arithmetic the explain page shows on a click.

``pixel_view(tr, i, index)`` takes a :class:`~minicnn.explain.trace.Trace`, a layer position and an
output index ((c, h, w) for a feature map, (k,) for a vector) and returns the numbers that make
that output from the layer's input and parameters: the input patch, the kernel, their element-wise
products, the sum and the bias for a convolution; the window and the pick for a pooling; mean,
variance, gamma and beta for a batchnorm; and so on, with ``value`` (recomputed here) beside
``output`` (minicnn's activation). The page's JavaScript does the same arithmetic on the same
float32 values; this module is its reference and what the tests check it against.

Products are float32 (the product of two float32 numbers rounded once, as the engine's kernels
compute it); sums are accumulated in float64, so ``value`` differs from ``output`` only by the
engine's float32 summation order.
"""
from __future__ import annotations

import math

import numpy as np

from .trace import is_block

__all__ = ["pixel_view", "softmax", "pool_windows", "adaptive_bins"]


def softmax(z) -> np.ndarray:
    """Probabilities from logits, in float64: ``exp(z - max z) / sum exp(z - max z)``."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def adaptive_bins(size: int, out: int, i: int) -> tuple:
    """[start, end) of bin ``i`` of an adaptive pooling of ``size`` into ``out``, as PyTorch's."""
    return (i * size) // out, -((-(i + 1) * size) // out)


def _window(module, x_hw, pos):
    """Rows and columns (lists, with out-of-range ones for padding) of pooling window ``pos``."""
    name = type(module).__name__
    if name.startswith("Adaptive"):
        oh, ow = module._out(np.empty((1, 1) + tuple(x_hw)))
        r0, r1 = adaptive_bins(x_hw[0], oh, pos[0])
        c0, c1 = adaptive_bins(x_hw[1], ow, pos[1])
        return list(range(r0, r1)), list(range(c0, c1))
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    dh, dw = getattr(module, "dilation", (1, 1))
    rows = [pos[0] * sh - ph + a * dh for a in range(kh)]
    cols = [pos[1] * sw - pw + b * dw for b in range(kw)]
    return rows, cols


def pool_windows(module, x_hw, y_hw, h, w) -> list:
    """Output positions (i, j) of a pooling whose window covers input pixel (h, w)."""
    out = []
    for i in range(y_hw[0]):
        for j in range(y_hw[1]):
            rows, cols = _window(module, x_hw, (i, j))
            if h in rows and w in cols:
                out.append((i, j))
    return out


def _conv(layer, c, h, w):
    m = layer.module
    x = layer.x
    if m._pads is not None:
        # a pad op ran first (reflect/replicate/circular or an odd "same"); rebuild what the conv read
        from .. import ops
        from ..backends import to_numpy
        from ..nn.conv import _PAD_OP_MODE

        x = np.asarray(to_numpy(ops.pad2d_forward(x[None], m._pads, _PAD_OP_MODE[m.padding_mode], 0.0)))[0]
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    ph, pw = m._conv_padding()
    cg = m.in_channels // m.groups
    g = c // (m.out_channels // m.groups)
    patch = np.zeros((cg, kh, kw), dtype=np.float32)
    for a in range(kh):
        for b in range(kw):
            r, s = h * sh - ph + a * dh, w * sw - pw + b * dw
            if 0 <= r < x.shape[1] and 0 <= s < x.shape[2]:
                patch[:, a, b] = x[g * cg:(g + 1) * cg, r, s]
    kernel = _np(m.weight.data)[c].astype(np.float32)
    products = patch * kernel  # float32 * float32 -> float32, one rounding
    bias = float(_np(m.bias.data)[c]) if m.bias is not None else 0.0
    total = float(products.astype(np.float64).sum())
    return {
        "op": "conv", "channels": [g * cg, (g + 1) * cg], "origin": [h * sh - ph, w * sw - pw],
        "patch": patch, "kernel": kernel, "products": products,
        "channel_sums": products.astype(np.float64).sum(axis=(1, 2)),
        "sum": total, "bias": bias, "value": total + bias,
    }


def _np(a):
    from ..backends import to_numpy

    return np.asarray(to_numpy(a))


def _pool(layer, c, h, w):
    m = layer.module
    x = layer.x[c]
    rows, cols = _window(m, x.shape, (h, w))
    inside = np.array([[0 <= r < x.shape[0] and 0 <= s < x.shape[1] for s in cols] for r in rows])
    vals = np.array([[x[r, s] if 0 <= r < x.shape[0] and 0 <= s < x.shape[1] else 0.0 for s in cols] for r in rows],
                    dtype=np.float32)
    out = {"rows": rows, "cols": cols, "window": vals, "inside": inside}
    if "Max" in layer.kind:
        masked = np.where(inside, vals, -np.inf)
        k = int(np.argmax(masked))  # the first maximum in row-major order, as the engine's kernels pick
        out.update(op="maxpool", pick=[rows[k // len(cols)], cols[k % len(cols)]], value=float(masked.flat[k]))
    else:
        count = inside.sum() if (layer.kind.startswith("Adaptive") or not getattr(m, "count_include_pad", True)) \
            else len(rows) * len(cols)
        divisor = getattr(m, "divisor_override", None) or count
        s = float(vals[inside].astype(np.float64).sum())
        out.update(op="avgpool", sum=s, count=int(divisor), value=s / divisor)
    return out


def _batchnorm(layer, c, h, w):
    m = layer.module
    mean, var = float(_np(m.running_mean)[c]), float(_np(m.running_var)[c])
    gamma = float(_np(m.weight.data)[c]) if m.weight is not None else 1.0
    beta = float(_np(m.bias.data)[c]) if m.bias is not None else 0.0
    xv = float(layer.x[c, h, w])
    xhat = (xv - mean) / math.sqrt(var + m.eps)
    return {"op": "batchnorm", "x": xv, "mean": mean, "var": var, "eps": m.eps, "gamma": gamma, "beta": beta,
            "xhat": xhat, "value": gamma * xhat + beta}


def _linear(layer, k):
    m = layer.module
    xv = layer.x.astype(np.float32)
    wrow = _np(m.weight.data)[k].astype(np.float32)
    products = xv * wrow
    bias = float(_np(m.bias.data)[k]) if m.bias is not None else 0.0
    total = float(products.astype(np.float64).sum())
    return {"op": "linear", "x": xv, "weights": wrow, "products": products, "sum": total, "bias": bias,
            "value": total + bias}


def pixel_view(tr, i: int, index) -> dict:
    """The arithmetic behind output ``index`` of layer ``i`` of trace ``tr``.

    Returns a dict with ``op`` (``conv``, ``maxpool``, ``avgpool``, ``batchnorm``, ``relu``,
    ``join``, ``linear``, ``identity``, ``flatten``), the op's operands, ``value`` (the output
    recomputed from them, float64) and ``output`` (minicnn's activation at ``index``). For a
    convolution and a linear layer: ``products`` (float32) and ``sum`` + ``bias`` = ``value``.
    """
    layer = tr.layers[i]
    index = tuple(int(v) for v in (index if isinstance(index, (tuple, list)) else (index,)))
    if len(index) != layer.y.ndim or any(not 0 <= v < n for v, n in zip(index, layer.y.shape)):
        raise ValueError(f"explain: index {index} is outside {layer.label}'s output of shape {layer.y.shape}")
    kind = layer.kind
    if kind == "Conv2d":
        out = _conv(layer, *index)
    elif kind in ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
        out = _pool(layer, *index)
    elif kind == "BatchNorm2d":
        out = _batchnorm(layer, *index)
    elif kind == "Linear":
        out = _linear(layer, *index)
    elif kind == "ReLU":
        xv = float(layer.x[index])
        out = {"op": "relu", "x": xv, "value": max(xv, 0.0)}
    elif is_block(layer.module):
        main, ident = (tr.layers[j].y if j >= 0 else tr.input for j in layer.inputs)
        a, b = float(main[index]), float(ident[index])
        out = {"op": "join", "main": a, "identity": b, "sum": a + b, "value": max(a + b, 0.0)}
    elif kind == "Flatten":
        src = np.unravel_index(index[0], layer.x.shape)
        out = {"op": "flatten", "source": [int(v) for v in src], "value": float(layer.x[src])}
    elif kind in ("Dropout", "Dropout2d", "Identity"):
        out = {"op": "identity", "x": float(layer.x[index]), "value": float(layer.x[index])}
    else:
        raise ValueError(f"explain: no arithmetic view for {kind} ({layer.label})")
    out["output"] = float(layer.y[index])
    out["layer"] = layer.label
    out["index"] = list(index)
    return out
