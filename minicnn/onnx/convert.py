"""One converter per ONNX operator: each turns a node into minicnn layers (``nn.Conv2d``,
``nn.BatchNorm2d``, ...) or graph nodes (``minicnn.onnx.nodes``), through the ``Builder`` of
``minicnn.onnx.load``. ``CONVERTERS[op_type](b, node)`` adds the steps; a converter refuses what it
cannot express exactly with ``b.refuse(node, why)``, which names the node, its op type and what
is missing.

``ATTRS[op_type]`` lists the attributes each converter understands; any other attribute on a
node is refused before the converter runs.
"""
from __future__ import annotations


import numpy as np

from .. import nn
from ..nn.batchnorm import BatchNorm2d
from . import nodes as N
from .host import flatten_rule, reshape_rule, squeeze_rule, unsqueeze_rule

__all__ = ["CONVERTERS", "ATTRS", "BatchNormalization", "SplitPart"]


class BatchNormalization(BatchNorm2d):
    """ONNX BatchNormalization: BatchNorm2d over (N, C, *) input of any rank >= 2 (viewed as
    (N, C, L, 1), which normalises the same values per channel; see ``nn.BatchNorm1d``)."""

    def forward(self, x):
        x = self._prepare_input(x)
        if x.ndim == 4:
            return super().forward(x)
        if x.ndim < 2:
            raise ValueError(f"{self._short()}: expected input (N, C, *), got shape {tuple(x.shape)}")
        shape = x.shape
        y = super().forward(x.reshape(shape[0], shape[1], -1, 1))
        return y.reshape(shape)

    def backward(self, dy):
        if dy.ndim == 4:
            return super().backward(dy)
        shape = dy.shape
        return super().backward(dy.reshape(shape[0], shape[1], -1, 1)).reshape(shape)


class SplitPart(N.Slice):
    """Output ``index`` of an ONNX Split along ``axis``: ``sizes`` given, or ``parts`` pieces of
    ceil(L / parts) (the last one shorter), known from the input length at run time."""

    def __init__(self, axis, index, sizes=None, parts=None):
        super().__init__()
        self.axis, self.index, self.sizes, self.parts = int(axis), int(index), sizes, parts

    def extra_repr(self):
        return f"axis={self.axis}, index={self.index}"

    def forward(self, x, *ignored):
        x = N._data(x, self.dtype)
        axis = self.axis % x.ndim
        length = x.shape[axis]
        sizes = self.sizes
        if sizes is None:
            chunk = -(-length // self.parts)
            sizes = [chunk] * (self.parts - 1) + [length - chunk * (self.parts - 1)]
        if sum(sizes) != length or min(sizes) < 0:
            raise ValueError(f"Split: sizes {list(sizes)} do not add up to the axis length {length}")
        start = int(sum(sizes[:self.index]))
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + int(sizes[self.index]))
        index = tuple(index)
        self._save((x.shape, index))
        return x[index].copy()


def _pairs(b, node, key, default, n=2):
    v = b.attr(node, key, None)
    if v is None:
        return tuple(default for _ in range(n))
    v = tuple(int(i) for i in v)
    if len(v) != n:
        b.refuse(node, f"{key}={list(v)}: only 2-D (N, C, H, W) operations are supported")
    return v


def _onnx_pads(b, node, kernel):
    """(top, left, bottom, right) from ``pads``/``auto_pad``, or the string "SAME_UPPER"/"SAME_LOWER"
    when the pads depend on the input size."""
    auto = b.attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = b.attr(node, "pads", None)
        if pads is None:
            return (0, 0, 0, 0)
        pads = tuple(int(p) for p in pads)
        if len(pads) != 4:
            b.refuse(node, f"pads={list(pads)}: only 2-D (N, C, H, W) operations are supported")
        if min(pads) < 0:
            b.refuse(node, f"negative pads {list(pads)} are not supported")
        return pads
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return auto
    b.refuse(node, f"auto_pad={auto!r} is not an ONNX value")


def _same_static(auto, kernel, stride, dilation):
    """The pads of SAME_* when every stride is 1 (then they do not depend on the input size)."""
    if any(s != 1 for s in stride):
        return None
    out = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        small, big = total // 2, total - total // 2
        out.append((small, big) if auto == "SAME_UPPER" else (big, small))
    (t, bo), (l, r) = out
    return (t, l, bo, r)


def _spatial_pads(b, node, kernel, stride, dilation, x, value, pool_limit=None):
    """Resolve a conv/pool node's padding: returns (input tensor name after any pad step,
    symmetric (ph, pw) for the layer). Asymmetric pads (or, for a pool, pads larger than
    half the kernel) become a pad step in front; SAME_* with a stride becomes ``AutoPad2d``."""
    pads = _onnx_pads(b, node, kernel)
    if isinstance(pads, str):
        static = _same_static(pads, kernel, stride, dilation)
        if static is None:
            y = b.tmp(node, "autopad")
            b.add(N.AutoPad2d(kernel, stride, dilation, pads == "SAME_UPPER", value), "autopad", node, [x], y,
                  kind="node")
            return y, (0, 0)
        pads = static
    top, left, bottom, right = pads
    symmetric = top == bottom and left == right
    if symmetric and (pool_limit is None or (top <= kernel[0] // 2 and left <= kernel[1] // 2)):
        return x, (top, left)
    y = b.tmp(node, "pad")
    b.add(nn.ConstantPad2d((left, right, top, bottom), value), "pad", node, [x], y)
    return y, (0, 0)


def conv(b, node):
    x, w_name = node.input[0], node.input[1]
    w = b.const(node, 1, "the weight")
    if w.ndim != 4:
        b.refuse(node, f"weight of shape {w.shape}: only 2-D convolutions (4-D weights) are supported")
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias = b.const(node, 2, "the bias") if bias_name else None
    group = int(b.attr(node, "group", 1))
    kernel = tuple(w.shape[2:])
    ks = b.attr(node, "kernel_shape", None)
    if ks is not None and tuple(int(k) for k in ks) != kernel:
        b.refuse(node, f"kernel_shape {list(ks)} does not match the weight's {kernel}")
    stride, dilation = _pairs(b, node, "strides", 1), _pairs(b, node, "dilations", 1)
    x, padding = _spatial_pads(b, node, kernel, stride, dilation, x, 0.0)
    layer = nn.Conv2d(w.shape[1] * group, w.shape[0], kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=group, bias=bias is not None)
    params = [("weight", w_name, w, None)]
    if bias is not None:
        params.append(("bias", bias_name, bias, None))
    b.add(layer, "conv", node, [x], node.output[0], params=params)


def conv_transpose(b, node):
    x, w_name = node.input[0], node.input[1]
    w = b.const(node, 1, "the weight")
    if w.ndim != 4:
        b.refuse(node, f"weight of shape {w.shape}: only 2-D transposed convolutions (4-D weights) are supported")
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias = b.const(node, 2, "the bias") if bias_name else None
    if b.attr(node, "output_shape", None) is not None:
        b.refuse(node, "the output_shape attribute is not supported (give pads and output_padding)")
    group = int(b.attr(node, "group", 1))
    kernel = tuple(w.shape[2:])
    stride, dilation = _pairs(b, node, "strides", 1), _pairs(b, node, "dilations", 1)
    out_pad = _pairs(b, node, "output_padding", 0)
    pads = _onnx_pads(b, node, kernel)
    if isinstance(pads, str):
        b.refuse(node, f"auto_pad={pads} is not supported for ConvTranspose")
    top, left, bottom, right = pads
    symmetric = top == bottom and left == right
    layer = nn.ConvTranspose2d(w.shape[0], w.shape[1] * group, kernel, stride=stride,
                               padding=(top, left) if symmetric else 0, output_padding=out_pad, groups=group,
                               bias=bias is not None, dilation=dilation)
    params = [("weight", w_name, w, None)]
    if bias is not None:
        params.append(("bias", bias_name, bias, None))
    if symmetric:
        b.add(layer, "deconv", node, [x], node.output[0], params=params)
        return
    y = b.tmp(node, "full")
    b.add(layer, "deconv", node, [x], y, params=params)
    b.add(nn.ZeroPad2d((-left, -right, -top, -bottom)), "crop", node, [y], node.output[0])


def batch_norm(b, node):
    if len([o for o in node.output if o]) > 1 and any(b.used(o) for o in node.output[1:] if o):
        b.refuse(node, "the training outputs (running mean/var, saved statistics) are not supported")
    if int(b.attr(node, "training_mode", 0)):
        b.refuse(node, "training_mode=1 is not supported (export the model in eval mode)")
    if int(b.attr(node, "spatial", 1)) != 1:
        b.refuse(node, "spatial=0 is not supported")
    scale, bias, mean, var = (b.const(node, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    c = scale.size
    layer = BatchNormalization(c, eps=float(b.attr(node, "epsilon", 1e-5)),
                             momentum=1.0 - float(b.attr(node, "momentum", 0.9)))
    params = [("weight", node.input[1], scale, None), ("bias", node.input[2], bias, None),
              ("running_mean", node.input[3], mean, None), ("running_var", node.input[4], var, None)]
    b.add(layer, "bn", node, [node.input[0]], node.output[0], params=params)


def _simple(factory, prefix):
    def convert(b, node):
        b.add(factory(b, node), prefix, node, [node.input[0]], node.output[0])
    return convert


def hard_sigmoid(b, node):
    alpha, beta = float(b.attr(node, "alpha", 0.2)), float(b.attr(node, "beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        layer = nn.Hardsigmoid()
    else:
        layer = N.HardSigmoidAB(alpha, beta)
    b.add(layer, "hardsigmoid", node, [node.input[0]], node.output[0], kind="layer")


def selu(b, node):
    alpha, gamma = float(b.attr(node, "alpha", 1.67326319217681884765625)), float(b.attr(node, "gamma", 1.05070102214813232421875))
    if abs(alpha - 1.6732632423543772) > 1e-6 or abs(gamma - 1.0507009873554805) > 1e-6:
        b.refuse(node, f"alpha={alpha}, gamma={gamma}: only SELU's standard constants are supported")
    b.add(nn.SELU(), "selu", node, [node.input[0]], node.output[0])


def clip(b, node):
    if b.opset < 11:
        lo, hi = b.attr(node, "min", None), b.attr(node, "max", None)
        runtime = []
    else:
        lo = hi = None
        runtime = []
        for pos in (1, 2):
            if len(node.input) > pos and node.input[pos]:
                if b.is_const(node.input[pos]):
                    v = float(np.asarray(b.value(node.input[pos])).reshape(()))
                    lo, hi = (v, hi) if pos == 1 else (lo, v)
                else:
                    b.refuse(node, "a min or max computed at run time is not supported")
    lo = None if lo is None or lo == -np.inf or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi == np.inf or hi >= 3.4e38 else float(hi)
    if lo == 0.0 and hi is None:
        b.add(nn.ReLU(), "relu", node, [node.input[0]], node.output[0])
        return
    b.add(N.Clip(lo, hi), "clip", node, [node.input[0]] + runtime, node.output[0], kind="node")


def prelu(b, node):
    slope = b.const(node, 1, "the slope")
    if slope.size != 1 and (slope.ndim == 0 or slope.shape[0] * int(np.prod(slope.shape[1:])) != slope.shape[0]):
        b.refuse(node, f"slope of shape {slope.shape}: only one slope or one per channel (C, 1, 1) is supported")
    layer = nn.PReLU(int(slope.size))
    b.add(layer, "prelu", node, [node.input[0]], node.output[0],
          params=[("weight", node.input[1], slope.reshape(-1), ("reshape", slope.shape))])


def max_pool(b, node):
    if len(node.output) > 1 and node.output[1] and b.used(node.output[1]):
        b.refuse(node, "the Indices output is not supported")
    kernel = _pairs(b, node, "kernel_shape", None)
    stride, dilation = _pairs(b, node, "strides", 1), _pairs(b, node, "dilations", 1)
    x, padding = _spatial_pads(b, node, kernel, stride, dilation, node.input[0], -np.inf, pool_limit=True)
    layer = nn.MaxPool2d(kernel, stride=stride, padding=padding, dilation=dilation,
                         ceil_mode=bool(b.attr(node, "ceil_mode", 0)))
    b.add(layer, "maxpool", node, [x], node.output[0])


def avg_pool(b, node):
    kernel = _pairs(b, node, "kernel_shape", None)
    stride, dilation = _pairs(b, node, "strides", 1), _pairs(b, node, "dilations", 1)
    if dilation != (1, 1):
        b.refuse(node, f"dilations={list(dilation)} are not supported")
    include = bool(b.attr(node, "count_include_pad", 0))
    pads = _onnx_pads(b, node, kernel)
    ceil = bool(b.attr(node, "ceil_mode", 0))
    if isinstance(pads, str):
        pads = _same_static(pads, kernel, stride, dilation)
        if pads is None or (not include and any(pads)):
            b.refuse(node, "auto_pad=SAME with a stride or without count_include_pad is not supported")
    top, left, bottom, right = pads
    x = node.input[0]
    if not (top == bottom and left == right and top <= kernel[0] // 2 and left <= kernel[1] // 2):
        if not include:
            b.refuse(node, f"pads {list(pads)} (asymmetric or over half the kernel) need count_include_pad=1")
        if ceil:
            b.refuse(node, f"pads {list(pads)} (asymmetric or over half the kernel) with ceil_mode=1 are not supported")
        y = b.tmp(node, "pad")
        b.add(nn.ZeroPad2d((left, right, top, bottom)), "pad", node, [x], y)
        x, top, left = y, 0, 0
    layer = nn.AvgPool2d(kernel, stride=stride, padding=(top, left), ceil_mode=ceil, count_include_pad=include)
    b.add(layer, "avgpool", node, [x], node.output[0])


def lrn(b, node):
    size = b.attr(node, "size", None)
    if size is None:
        b.refuse(node, "the required attribute size is missing")
    layer = N.LRN(int(size), float(b.attr(node, "alpha", 1e-4)), float(b.attr(node, "beta", 0.75)),
                  float(b.attr(node, "bias", 1.0)))
    b.add(layer, "lrn", node, [node.input[0]], node.output[0], kind="layer")


def gemm(b, node):
    alpha, beta = float(b.attr(node, "alpha", 1.0)), float(b.attr(node, "beta", 1.0))
    trans_a, trans_b = int(b.attr(node, "transA", 0)), int(b.attr(node, "transB", 0))
    if not b.is_const(node.input[1]):
        b.refuse(node, "a weight B computed at run time is not supported (it must be an initializer)")
    w = b.const(node, 1, "B")
    if w.ndim != 2:
        b.refuse(node, f"B of shape {w.shape} is not a matrix")
    out_f, in_f = (w.shape if trans_b else w.shape[::-1])
    c_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    c = b.const(node, 2, "C") if c_name else None
    if c is not None and (c.size not in (1, out_f) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1)):
        b.refuse(node, f"C of shape {c.shape} is not supported: only a bias of {out_f} values (shape ({out_f},) or "
                       f"(1, {out_f})) or a scalar is")
    if trans_a or alpha != 1.0 or beta != 1.0:
        layer = N.Gemm(in_f, out_f, bias=c is not None, alpha=alpha, beta=beta, trans_a=bool(trans_a))
    else:
        layer = nn.Linear(in_f, out_f, bias=c is not None)
    params = [("weight", node.input[1], w if trans_b else w.T, None if trans_b else "T")]
    if c is not None:
        params.append(("bias", c_name, np.broadcast_to(c.reshape(-1), (out_f,)).copy(),
                       ("reshape", c.shape) if c.size == out_f else ("first", c.shape)))
    b.add(layer, "gemm", node, [node.input[0]], node.output[0], params=params)


def matmul(b, node):
    if b.is_const(node.input[1]) and b.value(node.input[1]).ndim == 2 and not b.is_const(node.input[0]):
        w = b.value(node.input[1])
        layer = nn.Linear(w.shape[0], w.shape[1], bias=False)
        b.add(layer, "matmul", node, [node.input[0]], node.output[0],
              params=[("weight", node.input[1], w.T, "T")])
        return
    b.add(N.MatMul(), "matmul", node, list(node.input[:2]), node.output[0], kind="node")


def binary(op):
    def convert(b, node):
        a, c = node.input[0], node.input[1]
        const_pos = None
        for pos, name in ((1, c), (0, a)):
            if b.is_const(name) and np.asarray(b.value(name)).dtype.kind == "f":
                const_pos = pos
                break
        if const_pos is None:
            b.add(N.Binary(op), op, node, [a, c], node.output[0], kind="node")
            return
        name = node.input[const_pos]
        value = np.asarray(b.value(name))
        module = N.Binary(op, value, const_pos, persistent=b.is_initializer(name))
        params = [("constant", name, value, None)] if b.is_initializer(name) else []
        b.add(module, op, node, [node.input[1 - const_pos]], node.output[0], kind="node", params=params)
    return convert


def sum_n(b, node):
    b.add(N.SumN(), "sum", node, list(node.input), node.output[0], kind="node")


def concat(b, node):
    if b.attr(node, "axis", None) is None:
        b.refuse(node, "the required attribute axis is missing")
    b.add(N.Concat(b.attr(node, "axis")), "concat", node, list(node.input), node.output[0], kind="node")


def depth_to_space(b, node):
    """DepthToSpace in CRD mode is PixelShuffle (what torch writes for pixel_shuffle); DCR orders the
    channels the other way round, which no layer here computes."""
    mode = b.attr(node, "mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "CRD":
        b.refuse(node, f"mode {mode!r} is not supported (only CRD, which is PixelShuffle)")
    b.add(nn.PixelShuffle(int(b.attr(node, "blocksize"))), "pixel_shuffle", node, [node.input[0]], node.output[0])


def split(b, node):
    axis = int(b.attr(node, "axis", 0))
    sizes = None
    if b.opset < 13:
        sizes = b.attr(node, "split", None)
    elif len(node.input) > 1 and node.input[1]:
        if not b.is_const(node.input[1]):
            b.refuse(node, "split sizes computed at run time are not supported")
        sizes = b.value(node.input[1])
    sizes = None if sizes is None else [int(s) for s in np.asarray(sizes).reshape(-1)]
    parts = int(b.attr(node, "num_outputs", len(node.output)))
    for i, out in enumerate(node.output):
        if out:
            b.add(SplitPart(axis, i, sizes, parts), "split", node, [node.input[0]], out, kind="node")


def _view(kind, rule_of):
    def convert(b, node):
        rule, runtime = rule_of(b, node)
        b.add(N.View(kind, rule), kind.lower(), node, [node.input[0]] + runtime, node.output[0], kind="node")
    return convert


def _flatten_rule(b, node):
    axis = int(b.attr(node, "axis", 1))
    return (lambda shape: flatten_rule(shape, axis)), []


def _reshape_rule(b, node):
    allowzero = int(b.attr(node, "allowzero", 0))
    if b.opset < 5:
        target = b.attr(node, "shape")
        return (lambda shape: reshape_rule(shape, target, allowzero)), []
    if b.is_const(node.input[1]):
        target = np.asarray(b.value(node.input[1])).copy()
        return (lambda shape: reshape_rule(shape, target, allowzero)), []
    return (lambda shape, t: reshape_rule(shape, t, allowzero)), [node.input[1]]


def _axes_rule(fn):
    def rule_of(b, node):
        if b.opset < 13:
            axes = b.attr(node, "axes", None)
        elif len(node.input) > 1 and node.input[1]:
            if not b.is_const(node.input[1]):
                b.refuse(node, "axes computed at run time are not supported")
            axes = np.asarray(b.value(node.input[1])).copy()
        else:
            axes = None
        if fn is unsqueeze_rule and axes is None:
            b.refuse(node, "the axes are missing")
        return (lambda shape: fn(shape, axes)), []
    return rule_of


def transpose(b, node):
    perm = b.attr(node, "perm", None)
    b.add(N.Transpose(perm), "transpose", node, [node.input[0]], node.output[0], kind="node")


def softmax(log):
    def convert(b, node):
        axis = int(b.attr(node, "axis", 1 if b.opset < 13 else -1))
        b.add(N.Softmax(axis, log, b.opset < 13), "logsoftmax" if log else "softmax", node, [node.input[0]],
              node.output[0], kind="layer")
    return convert


def passthrough(b, node):
    if node.op_type == "Dropout":
        if len(node.output) > 1 and node.output[1] and b.used(node.output[1]):
            b.refuse(node, "the mask output is not supported")
        if len(node.input) > 2 and node.input[2]:
            if not b.is_const(node.input[2]) or bool(np.asarray(b.value(node.input[2])).reshape(())):
                b.refuse(node, "training_mode=True is not supported (export the model in eval mode)")
    b.alias(node.output[0], node.input[0])


def cast(b, node):
    to = int(b.attr(node, "to"))
    if to not in (1, 10, 11):
        b.refuse(node, f"casting a data tensor to ONNX type {to} (not a float type) is not supported")
    b.alias(node.output[0], node.input[0])


_PAD_LAYERS = {"constant": nn.ConstantPad2d, "reflect": nn.ReflectionPad2d, "edge": nn.ReplicationPad2d,
               "wrap": nn.CircularPad2d}


def pad(b, node):
    mode = b.attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _PAD_LAYERS:
        b.refuse(node, f"mode={mode!r} is not supported (constant, reflect, edge, wrap are)")
    if b.opset < 11:
        pads, value, axes = b.attr(node, "pads", None), float(b.attr(node, "value", 0.0)), None
        if pads is None:
            b.refuse(node, "the pads attribute is missing")
    else:
        if not b.is_const(node.input[1]):
            b.refuse(node, "pads computed at run time are not supported")
        pads = b.value(node.input[1])
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            if not b.is_const(node.input[2]):
                b.refuse(node, "a constant_value computed at run time is not supported")
            value = float(np.asarray(b.value(node.input[2])).reshape(-1)[0]) if np.asarray(
                b.value(node.input[2])).size else 0.0
        axes = None
        if len(node.input) > 3 and node.input[3]:
            if not b.is_const(node.input[3]):
                b.refuse(node, "axes computed at run time are not supported")
            axes = [int(a) for a in np.asarray(b.value(node.input[3])).reshape(-1)]
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if axes is not None:
        full = [0] * 8
        k = len(axes)
        for i, a in enumerate(axes):
            a %= 4
            full[a], full[a + 4] = pads[i], pads[i + k]
        pads = full
    if len(pads) != 8:
        b.refuse(node, f"pads {pads}: only 4-D (N, C, H, W) input is supported")
    if any(pads[i] for i in (0, 1, 4, 5)):
        b.refuse(node, f"pads {pads}: padding the batch or channel axis is not supported")
    quad = (pads[3], pads[7], pads[2], pads[6])
    layer = nn.ConstantPad2d(quad, value) if mode == "constant" else _PAD_LAYERS[mode](quad)
    b.add(layer, "pad", node, [node.input[0]], node.output[0])


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def resize(b, node):
    op = node.op_type
    mode = _str(b.attr(node, "mode", "nearest"))
    if mode not in ("nearest", "linear", "bilinear"):
        b.refuse(node, f"mode={mode!r} is not supported (nearest and linear are)")
    linear = mode != "nearest"
    if op == "Upsample" or b.opset < 11:
        coord, nearest_mode = "asymmetric", "floor"
    else:
        coord = _str(b.attr(node, "coordinate_transformation_mode", "half_pixel"))
        nearest_mode = _str(b.attr(node, "nearest_mode", "round_prefer_floor"))
        for key, default in (("antialias", 0), ("exclude_outside", 0)):
            if int(b.attr(node, key, default)) != default:
                b.refuse(node, f"{key}={b.attr(node, key)} is not supported")
        if b.attr(node, "axes", None) is not None:
            b.refuse(node, "the axes attribute is not supported")
        if _str(b.attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
            b.refuse(node, "keep_aspect_ratio_policy other than stretch is not supported")
    # where the scales / sizes come from
    scales = sizes = runtime = None
    extra = []
    if op == "Upsample" and b.opset < 9:
        scales = b.attr(node, "scales", None)
        if scales is None:
            b.refuse(node, "the scales attribute is missing")
    else:
        positions = {"scales": 1 if (op == "Upsample" or b.opset < 11) else 2,
                     "sizes": None if (op == "Upsample" or b.opset < 11) else 3}
        for kind, pos in positions.items():
            if pos is None or len(node.input) <= pos or not node.input[pos]:
                continue
            name = node.input[pos]
            if b.is_const(name):
                v = np.asarray(b.value(name)).reshape(-1)
                if v.size == 0:
                    continue
                if kind == "scales":
                    scales = [float(s) for s in v]
                else:
                    sizes = [int(s) for s in v]
            else:
                extra.append(name)
                runtime = (kind, len(extra))
    if scales is None and sizes is None and runtime is None:
        b.refuse(node, "neither scales nor sizes is given")
    if linear:
        if coord == "align_corners":
            align = True
        elif coord in ("half_pixel", "pytorch_half_pixel", "asymmetric"):
            align = False
        else:
            b.refuse(node, f"mode=linear with coordinate_transformation_mode={coord!r} is not supported "
                           "(align_corners, half_pixel, pytorch_half_pixel and asymmetric are)")
        b.add(N.Resize("bilinear", align, scales, sizes, runtime, asymmetric=coord == "asymmetric"), "resize", node,
              [node.input[0]] + extra, node.output[0], kind="node")
        return
    exact = coord == "asymmetric" and nearest_mode == "floor"
    if not exact and coord in ("half_pixel", "pytorch_half_pixel", "asymmetric") and scales is not None and all(
            float(s).is_integer() and s >= 1 for s in scales) and nearest_mode in ("round_prefer_floor", "floor"):
        exact = True  # integer upscaling: every one of these rules picks floor(i / scale)
    if not exact:
        b.refuse(node, f"mode=nearest with coordinate_transformation_mode={coord!r}, nearest_mode={nearest_mode!r} "
                       "is supported only as asymmetric/floor (PyTorch's nearest) or for integer scales")
    b.add(N.Resize("nearest", False, scales, sizes, runtime), "resize", node, [node.input[0]] + extra,
          node.output[0], kind="node")


def slice_(b, node):
    if b.opset < 10:
        starts, ends = b.attr(node, "starts"), b.attr(node, "ends")
        axes = b.attr(node, "axes", None)
        b.add(N.Slice(starts, ends, axes, None), "slice", node, [node.input[0]], node.output[0], kind="node")
        return
    b.add(N.Slice(), "slice", node, list(node.input), node.output[0], kind="node")


def gather(b, node):
    if not (b.is_const(node.input[1]) or b.kind(node.input[1]) == "host"):
        b.refuse(node, "indices computed from data are not supported")
    b.add(N.Gather(int(b.attr(node, "axis", 0))), "gather", node, list(node.input[:2]), node.output[0], kind="node")


CONVERTERS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "BatchNormalization": batch_norm,
    "Relu": _simple(lambda b, n: nn.ReLU(), "relu"),
    "LeakyRelu": _simple(lambda b, n: nn.LeakyReLU(float(b.attr(n, "alpha", 0.01))), "leakyrelu"),
    "PRelu": prelu,
    "Elu": _simple(lambda b, n: nn.ELU(float(b.attr(n, "alpha", 1.0))), "elu"),
    "Selu": selu,
    "Sigmoid": _simple(lambda b, n: nn.Sigmoid(), "sigmoid"),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": _simple(lambda b, n: nn.Hardswish(), "hardswish"),
    "Tanh": _simple(lambda b, n: nn.Tanh(), "tanh"),
    "Softplus": _simple(lambda b, n: nn.Softplus(), "softplus"),
    "Clip": clip,
    "MaxPool": max_pool,
    "AveragePool": avg_pool,
    "GlobalAveragePool": _simple(lambda b, n: nn.AdaptiveAvgPool2d((1, 1)), "globalavgpool"),
    "GlobalMaxPool": _simple(lambda b, n: nn.AdaptiveMaxPool2d((1, 1)), "globalmaxpool"),
    "LRN": lrn,
    "Gemm": gemm,
    "MatMul": matmul,
    "Add": binary("add"),
    "Sub": binary("sub"),
    "Mul": binary("mul"),
    "Div": binary("div"),
    "Sum": sum_n,
    "Concat": concat,
    "DepthToSpace": depth_to_space,
    "Split": split,
    "Flatten": _view("Flatten", _flatten_rule),
    "Reshape": _view("Reshape", _reshape_rule),
    "Squeeze": _view("Squeeze", _axes_rule(squeeze_rule)),
    "Unsqueeze": _view("Unsqueeze", _axes_rule(unsqueeze_rule)),
    "Transpose": transpose,
    "Softmax": softmax(False),
    "LogSoftmax": softmax(True),
    "Dropout": passthrough,
    "Identity": passthrough,
    "Cast": cast,
    "Pad": pad,
    "Resize": resize,
    "Upsample": resize,
    "Slice": slice_,
    "Gather": gather,
}

_POOL = {"auto_pad", "kernel_shape", "pads", "strides", "ceil_mode", "dilations"}
ATTRS = {
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "ConvTranspose": {"auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape", "pads",
                      "strides"},
    "BatchNormalization": {"epsilon", "momentum", "spatial", "is_test", "training_mode"},
    "Relu": set(), "Sigmoid": set(), "Tanh": set(), "Softplus": set(), "HardSwish": set(), "PRelu": set(),
    "LeakyRelu": {"alpha"}, "Elu": {"alpha"}, "Selu": {"alpha", "gamma"}, "HardSigmoid": {"alpha", "beta"},
    "Clip": {"min", "max"},
    "MaxPool": _POOL | {"storage_order"},
    "AveragePool": _POOL | {"count_include_pad"},
    "GlobalAveragePool": set(), "GlobalMaxPool": set(),
    "LRN": {"alpha", "beta", "bias", "size"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "MatMul": set(), "Add": set(), "Sub": set(), "Mul": set(), "Div": set(), "Sum": set(),
    "Concat": {"axis"}, "DepthToSpace": {"blocksize", "mode"}, "Split": {"axis", "split", "num_outputs"},
    "Flatten": {"axis"}, "Reshape": {"allowzero", "shape"}, "Squeeze": {"axes"}, "Unsqueeze": {"axes"},
    "Transpose": {"perm"}, "Softmax": {"axis"}, "LogSoftmax": {"axis"},
    "Dropout": {"ratio", "seed", "is_test"}, "Identity": set(), "Cast": {"to", "saturate"},
    "Pad": {"mode", "pads", "value"},
    "Resize": {"mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
               "extrapolation_value", "antialias", "axes", "keep_aspect_ratio_policy"},
    "Upsample": {"mode", "scales", "height_scale", "width_scale"},
    "Slice": {"starts", "ends", "axes"}, "Gather": {"axis"},
    # shape arithmetic (folded or run on the host)
    "Shape": {"start", "end"}, "ConstantOfShape": {"value"}, "Constant": {"value", "value_float", "value_floats",
                                                                          "value_int", "value_ints"},
    "Range": set(), "Expand": set(), "Equal": set(), "Less": set(), "Greater": set(), "Where": set(),
    "Neg": set(), "Abs": set(), "Sqrt": set(), "Floor": set(), "Ceil": set(), "Not": set(), "Min": set(),
    "Max": set(),
}
