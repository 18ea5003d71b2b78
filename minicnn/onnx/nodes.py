"""Graph nodes that are not one of the ``nn`` layers: the glue an ONNX graph needs around them.

Each is a ``Module`` whose ``forward`` takes the node's inputs in ONNX order (data tensors as
backend arrays, shape operands as small numpy integer arrays) and returns its one output, and
whose ``backward(dy)`` returns one gradient per input (None for an input that has none, such as
a shape). The one-input ones the graph runs as layers (``Softmax``, ``HardSigmoidAB``, ``LRN``)
take and return a single array, as the ``nn`` layers do. Arithmetic goes through the ops where one exists (softmax, linear, pad, resize); the
rest is array glue that numpy and CuPy arrays share (reshape, transpose, concatenate, slicing,
elementwise + - * /).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backends, ops
from ..nn.module import Module, Parameter, WeightBiasLayer

__all__ = [
    "Binary", "SumN", "Concat", "View", "Transpose", "Slice", "Gather", "Softmax", "Clip", "HardSigmoidAB",
    "LRN", "MatMul", "Gemm", "AutoPad2d", "Resize", "unbroadcast", "slice_index",
]


def _data(x, dtype):
    """``x`` on the backend in force, in ``dtype`` (the model's compute dtype, or int64 for indices)."""
    be = backends.current()
    x = x if be.is_native(x) else be.asarray(np.asarray(x))
    return x if x.dtype == dtype else x.astype(dtype)


def _contiguous(a):
    """``a`` in C order, copied only when it is not: ``np.ascontiguousarray`` would turn a device
    array into a host one (array creation is not dispatched to the array's library)."""
    return a if a.flags.c_contiguous else a.copy()


def _host_values(a):
    """A small operand known only at run time (bounds, sizes, scales) as a host numpy array."""
    return np.asarray(backends.to_numpy(a)) if hasattr(a, "shape") else np.asarray(a)


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of numpy broadcasting ``shape`` up to ``g.shape``."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class Binary(Module):
    """``a op b`` with numpy broadcasting, op one of add, sub, mul, div (ONNX Add, Sub, Mul, Div).

    ``const`` (optional) is an operand fixed at load time, at position ``const_pos`` (0: a, 1: b),
    kept as the buffer ``constant``; the node's runtime inputs are then the other operand only.
    Backward: da = dy (add, sub), dy * b (mul), dy / b (div); db = dy, -dy, dy * a, -dy * a / b^2;
    each summed back to its operand's shape.
    """

    def __init__(self, op, const=None, const_pos=None, persistent=True):
        super().__init__()
        if op not in ("add", "sub", "mul", "div"):
            raise ValueError(f"Binary: unknown op {op!r}")
        self.op, self.const_pos = op, const_pos
        if const is not None:
            self.register_buffer("constant", np.asarray(const), persistent=persistent)
        else:
            self.constant = None

    def extra_repr(self):
        return self.op if self.constant is None else f"{self.op}, constant {tuple(self.constant.shape)}"

    def _operands(self, xs):
        xs = [_data(x, self.dtype) for x in xs]
        if self.constant is not None:
            c = _data(self.constant, self.dtype)
            xs.insert(self.const_pos, c)
        return xs

    def forward(self, *xs):
        a, b = self._operands(xs)
        op = self.op
        y = a + b if op == "add" else a - b if op == "sub" else a * b if op == "mul" else a / b
        self._save((a, b) if op in ("mul", "div") else (a.shape, b.shape))
        return y

    def backward(self, dy):
        saved = self._saved()
        op = self.op
        if op in ("add", "sub"):
            sa, sb = saved
            da, db = unbroadcast(dy, sa), unbroadcast(-dy if op == "sub" else dy, sb)
        elif op == "mul":
            a, b = saved
            da, db = unbroadcast(dy * b, a.shape), unbroadcast(dy * a, b.shape)
        else:
            a, b = saved
            da = dy / b
            db = unbroadcast(-da * a / b, b.shape)
            da = unbroadcast(da, a.shape)
        grads = [da, db]
        if self.constant is not None:
            grads.pop(self.const_pos)
        return tuple(grads)


class SumN(Module):
    """ONNX Sum: the elementwise sum of any number of inputs, with broadcasting."""

    def forward(self, *xs):
        xs = [_data(x, self.dtype) for x in xs]
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        if len(xs) == 1:
            y = y.copy()
        self._save([x.shape for x in xs])
        return y

    def backward(self, dy):
        return tuple(unbroadcast(dy, s) for s in self._saved())


class Concat(Module):
    """ONNX Concat along ``axis``; backward hands each input its slice of dy."""

    def __init__(self, axis):
        super().__init__()
        self.axis = int(axis)

    def extra_repr(self):
        return f"axis={self.axis}"

    def forward(self, *xs):
        xs = [_data(x, self.dtype) for x in xs]
        axis = self.axis % xs[0].ndim
        self._save((axis, [x.shape[axis] for x in xs]))
        return np.concatenate(xs, axis=axis)

    def backward(self, dy):
        axis, sizes = self._saved()
        cuts = np.cumsum(sizes)[:-1]
        return tuple(np.split(dy, cuts, axis=axis))


class View(Module):
    """Reshape-like ONNX ops (Reshape, Flatten, Squeeze, Unsqueeze): the output is the input with
    another shape, ``rule(input shape, *shape operands) -> output shape``; backward reshapes back."""

    def __init__(self, kind, rule):
        super().__init__()
        self.kind, self.rule = kind, rule

    def extra_repr(self):
        return self.kind

    def forward(self, x, *shape_args):
        x = _data(x, self.dtype)
        shape = self.rule(tuple(x.shape), *shape_args)
        self._save(x.shape)
        return x.reshape(shape)

    def backward(self, dy):
        return (dy.reshape(self._saved()),)


class Transpose(Module):
    """ONNX Transpose with ``perm`` (None: reverse the axes); backward applies the inverse permutation."""

    def __init__(self, perm):
        super().__init__()
        self.perm = None if perm is None else tuple(int(p) for p in perm)

    def extra_repr(self):
        return f"perm={self.perm}"

    def forward(self, x):
        x = _data(x, self.dtype)
        perm = self.perm if self.perm is not None else tuple(range(x.ndim))[::-1]
        self._save(perm)
        return _contiguous(x.transpose(perm))

    def backward(self, dy):
        perm = self._saved()
        return (_contiguous(dy.transpose(np.argsort(perm))),)


def slice_index(shape, starts, ends, axes, steps):
    """The tuple of Python slices ONNX Slice describes (negative and out-of-range bounds clamped
    as the operator's definition says)."""
    ndim = len(shape)
    axes = list(range(len(starts))) if axes is None else [int(a) % ndim for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    index = [slice(None)] * ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ValueError("Slice: a step of 0 is not allowed")
        index[a] = slice(*slice(int(s), int(e), st).indices(shape[a]))
    return tuple(index)


class Slice(Module):
    """ONNX Slice of a data tensor (the bounds are shape operands); backward scatters dy into zeros."""

    def __init__(self, starts=None, ends=None, axes=None, steps=None):
        super().__init__()
        self.fixed = (starts, ends, axes, steps)  # opset < 10: attributes

    def forward(self, x, *bounds):
        x = _data(x, self.dtype)
        if bounds:
            starts, ends = bounds[0], bounds[1]
            axes = bounds[2] if len(bounds) > 2 else None
            steps = bounds[3] if len(bounds) > 3 else None
        else:
            starts, ends, axes, steps = self.fixed
        index = slice_index(x.shape, starts, ends, axes, steps)
        self._save((x.shape, index))
        return x[index].copy()

    def backward(self, dy):
        shape, index = self._saved()
        dx = np.zeros_like(dy, shape=shape)
        dx[index] = dy
        return (dx,)


class Gather(Module):
    """ONNX Gather of a data tensor along ``axis`` at fixed integer indices; backward adds dy
    back at the gathered positions (an index taken twice receives both gradients)."""

    def __init__(self, axis):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x, indices):
        x = _data(x, self.dtype)
        axis = self.axis % x.ndim
        idx = _data(indices, np.int64)
        idx = np.where(idx < 0, idx + x.shape[axis], idx)
        self._save((x.shape, axis, idx))
        return np.take(x, idx, axis=axis)

    def backward(self, dy):
        shape, axis, idx = self._saved()
        dx = np.zeros_like(dy, shape=shape)  # on dy's backend
        moved = np.moveaxis(dx, axis, 0)
        g = np.moveaxis(dy, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
        np.add.at(moved, idx, g)
        return (dx, None)


class Softmax(Module):
    """ONNX Softmax / LogSoftmax over ``axis``. Before opset 13 the operator flattens the input to
    2-D at ``axis`` and normalises each row (``coerce_2d``); from 13 on it normalises one axis.
    The ops ``softmax_forward`` / ``log_softmax_forward`` do the work."""

    def __init__(self, axis, log, coerce_2d):
        super().__init__()
        self.axis, self.log, self.coerce_2d = int(axis), bool(log), bool(coerce_2d)

    def extra_repr(self):
        return f"axis={self.axis}, log={self.log}, coerce_2d={self.coerce_2d}"

    def forward(self, x):
        x = _data(x, self.dtype)
        shape = x.shape
        axis = self.axis % max(x.ndim, 1)
        if self.coerce_2d:
            x = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
            axis = 1
        y = (ops.log_softmax_forward if self.log else ops.softmax_forward)(x, axis)
        self._save((y, axis, shape))
        return y.reshape(shape)

    def backward(self, dy):
        y, axis, shape = self._saved()
        dx = (ops.log_softmax_backward if self.log else ops.softmax_backward)(dy.reshape(y.shape), y, axis)
        return dx.reshape(shape)


class Clip(Module):
    """ONNX Clip: min(max(x, lo), hi) (ReLU6 is Clip(0, 6)). The gradient passes where
    lo < x < hi, PyTorch's ``hardtanh`` rule; the bounds may also arrive as runtime scalars."""

    def __init__(self, lo=None, hi=None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def extra_repr(self):
        return f"min={self.lo}, max={self.hi}"

    def forward(self, x, lo=None, hi=None):
        x = _data(x, self.dtype)
        lo = self.lo if lo is None else float(_host_values(lo).reshape(-1)[0])
        hi = self.hi if hi is None else float(_host_values(hi).reshape(-1)[0])
        y = x
        if lo is not None:
            y = np.maximum(y, x.dtype.type(lo))
        if hi is not None:
            y = np.minimum(y, x.dtype.type(hi))
        if y is x:
            y = x.copy()
        self._save((x, lo, hi))
        return y

    def backward(self, dy):
        x, lo, hi = self._saved()
        keep = np.ones(x.shape, dtype=bool)
        if lo is not None:
            keep &= x > lo
        if hi is not None:
            keep &= x < hi
        return (dy * keep, None, None)


class HardSigmoidAB(Module):
    """ONNX HardSigmoid with its own slope and offset: max(0, min(1, alpha * x + beta)) (the
    ``nn.Hardsigmoid`` layer is the case alpha = 1/6, beta = 1/2)."""

    def __init__(self, alpha, beta):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def extra_repr(self):
        return f"alpha={self.alpha}, beta={self.beta}"

    def forward(self, x):
        x = _data(x, self.dtype)
        z = x * x.dtype.type(self.alpha) + x.dtype.type(self.beta)
        self._save(z)
        return np.clip(z, 0, 1)

    def backward(self, dy):
        z = self._saved()
        return dy * ((z > 0) & (z < 1)) * dy.dtype.type(self.alpha)


class LRN(Module):
    r"""ONNX LRN (local response normalisation across channels, AlexNet/GoogLeNet):

    .. math:: y_c = x_c / b_c^\beta,\quad b_c = k + \frac{\alpha}{n} \sum_{c' \in W(c)} x_{c'}^2

    with the window W(c) = [c - floor((n-1)/2), c + ceil((n-1)/2)] clipped to the channels.
    Backward: dx_c = dy_c / b_c^beta - (2 alpha beta / n) x_c \sum_{c': c \in W(c')} dy_{c'} x_{c'} / b_{c'}^{beta+1}.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, bias=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias}"

    def _window_sum(self, a, reverse=False):
        """Sum over each channel's window (``reverse``: over the channels whose window holds it)."""
        lo, hi = (self.size - 1) // 2, -(-(self.size - 1) // 2)
        if reverse:
            lo, hi = hi, lo
        c = a.shape[1]
        pad = [(0, 0)] * a.ndim
        pad[1] = (lo, hi)
        cs = np.cumsum(np.pad(a, pad), axis=1)
        cs = np.concatenate([np.zeros_like(cs[:, :1]), cs], axis=1)
        return cs[:, lo + hi + 1:lo + hi + 1 + c] - cs[:, :c]

    def forward(self, x):
        x = _data(x, self.dtype)
        t = x.dtype.type
        b = t(self.bias) + t(self.alpha / self.size) * self._window_sum(x * x)
        y = x / b ** t(self.beta)
        self._save((x, b))
        return y

    def backward(self, dy):
        x, b = self._saved()
        t = x.dtype.type
        s = self._window_sum(dy * x / b ** t(self.beta + 1), reverse=True)
        return dy / b ** t(self.beta) - t(2 * self.alpha * self.beta / self.size) * x * s


class MatMul(Module):
    """ONNX MatMul of two data tensors (numpy's matmul rules, batched over leading axes), as one
    ``ops.linear_forward`` per matrix pair: a @ b = linear(a, b^T)."""

    def forward(self, a, b):
        a, b = _data(a, self.dtype), _data(b, self.dtype)
        va, vb = a.ndim == 1, b.ndim == 1
        a2 = a[None, :] if va else a
        b2 = b[:, None] if vb else b
        lead = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        A = np.broadcast_to(a2, lead + a2.shape[-2:]).reshape(-1, *a2.shape[-2:])
        B = np.broadcast_to(b2, lead + b2.shape[-2:]).reshape(-1, *b2.shape[-2:])
        ys = [ops.linear_forward(_contiguous(A[i]), _contiguous(B[i].T), None)
              for i in range(A.shape[0])]
        y = np.stack(ys).reshape(lead + (a2.shape[-2], b2.shape[-1]))
        self._save((A, B, a.shape, b.shape, a2.shape, b2.shape, lead, va, vb))
        if va:
            y = y[..., 0, :]
        if vb:
            y = y[..., 0]
        return y

    def backward(self, dy):
        A, B, sa, sb, sa2, sb2, lead, va, vb = self._saved()
        if va:
            dy = dy[..., None, :]
        if vb:
            dy = dy[..., None]
        D = dy.reshape(-1, sa2[-2], sb2[-1])
        da, db = [], []
        for i in range(A.shape[0]):
            dx, dw, _ = ops.linear_backward(_contiguous(D[i]), _contiguous(A[i]), _contiguous(B[i].T),
                                            True, True, False)
            da.append(dx)
            db.append(dw.T)
        da = unbroadcast(np.stack(da).reshape(lead + sa2[-2:]), sa2).reshape(sa)
        db = unbroadcast(np.stack(db).reshape(lead + sb2[-2:]), sb2).reshape(sb)
        return da, db


class Gemm(WeightBiasLayer):
    """ONNX Gemm with a constant B: y = alpha * A' B' + beta * C, where A' is the input A
    (transposed when ``trans_a``), ``weight`` holds B' as an (out, in) matrix (``nn.Linear``'s
    layout) and ``bias`` holds C, a vector of ``out_features`` values.

    Computed as one ``ops.linear_forward(A', alpha * weight, beta * bias)``. Backward, with
    dY the gradient of y: dweight = alpha * dY^T A', dbias = beta * sum over rows of dY, and
    dA' = alpha * dY weight, transposed back when ``trans_a``.

    Shape: (N, in_features), or (in_features, N) when ``trans_a``, -> (N, out_features).
    """

    def __init__(self, in_features, out_features, bias=True, alpha=1.0, beta=1.0, trans_a=False):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.alpha, self.beta, self.trans_a = float(alpha), float(beta), bool(trans_a)
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), np.float32))
        self.bias = Parameter(np.zeros(self.out_features, np.float32)) if bias else None

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"alpha={self.alpha}, beta={self.beta}, transA={int(self.trans_a)}")

    def forward(self, x):
        x = self._prepare_input(x)
        a = x.T.copy() if (self.trans_a and x.ndim == 2) else x
        if a.ndim != 2 or a.shape[1] != self.in_features:
            want = f"({self.in_features}, N)" if self.trans_a else f"(N, {self.in_features})"
            raise ValueError(f"{self._short()}: expected input of shape {want}, got shape {tuple(x.shape)}")
        t = a.dtype.type
        w = self.weight.data if self.alpha == 1.0 else self.weight.data * t(self.alpha)
        b = None if self.bias is None else (self.bias.data if self.beta == 1.0 else self.bias.data * t(self.beta))
        self._save((a, w))
        return ops.linear_forward(a, w, b)

    def _grads(self, dy, saved, need_dx, need_dw, need_db):
        a, w = saved
        dx, dw, db = ops.linear_backward(dy, a, w, need_dx, need_dw, need_db)
        if dw is not None and self.alpha != 1.0:
            dw = dw * dw.dtype.type(self.alpha)
        if db is not None and self.beta != 1.0:
            db = db * db.dtype.type(self.beta)
        if dx is not None and self.trans_a:
            dx = dx.T.copy()
        return dx, dw, db


class AutoPad2d(Module):
    """ONNX ``auto_pad=SAME_UPPER|SAME_LOWER`` in front of a conv or max pool: the pads that make
    the output ceil(H / stride) are only known from the input size, so they are computed per call
    and applied with ``ops.pad2d_forward`` (``value``: 0 for a conv, -inf for a max pool). The odd
    extra row/column goes at the end (UPPER) or the start (LOWER)."""

    def __init__(self, kernel, stride, dilation, upper, value=0.0):
        super().__init__()
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)
        self.upper, self.value = bool(upper), float(value)

    def extra_repr(self):
        return f"kernel={self.kernel}, stride={self.stride}, {'SAME_UPPER' if self.upper else 'SAME_LOWER'}"

    def pads(self, h, w):
        out = []
        for size, k, s, d in zip((h, w), self.kernel, self.stride, self.dilation):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if self.upper else (big, small))
        (top, bottom), (left, right) = out
        return left, right, top, bottom

    def forward(self, x):
        x = _data(x, self.dtype)
        pads = self.pads(*x.shape[2:])
        self._save((x.shape, pads))
        return ops.pad2d_forward(x, pads, "constant", self.value)

    def backward(self, dy):
        shape, pads = self._saved()
        return (ops.pad2d_backward(dy, shape, pads, "constant"),)


def asymmetric_linear_weights(n_in, n_out, scale):
    """The (n_out, n_in) matrix of ONNX's linear resize along one axis with ``asymmetric``
    coordinates (opset-9 ``Upsample``, opset-10 ``Resize``): output i reads input position
    x = min(i / scale, n_in - 1) and weighs its neighbours floor(x) and floor(x) + 1 (the last
    index again at the edge) by 1 - frac(x) and frac(x)."""
    pos = np.minimum(np.arange(n_out, dtype=np.float64) / float(scale), n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


class Resize(Module):
    """ONNX Resize / Upsample on (N, C, H, W): ``mode`` "nearest" or "bilinear" (ONNX "linear"),
    through the upsample ops. The output size comes from fixed ``scales`` or ``sizes`` or from
    runtime operands; ``use_scales`` passes the scale factors to the op's index rule (PyTorch's
    ``interpolate`` with a scale_factor, ONNX's ``asymmetric`` / ``half_pixel`` coordinates),
    otherwise the rule steps by in/out.

    ``asymmetric=True`` (bilinear only) samples at i / scale instead of half-pixel centres, which
    no upsample op does: the resize is then separable, y = A_h x A_w^T with the matrices of
    ``asymmetric_linear_weights``, run as two ``ops.linear_forward`` calls (the backward applies
    the transposed matrices the same way). The scale is the given one, or out / in for sizes."""

    def __init__(self, mode, align_corners, scales=None, sizes=None, runtime=None, asymmetric=False):
        super().__init__()
        self.mode, self.align_corners = mode, bool(align_corners)
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        self.sizes = None if sizes is None else tuple(int(s) for s in sizes)
        self.runtime = runtime  # None, or ("scales" | "sizes", position of that operand)
        self.asymmetric = bool(asymmetric)
        if self.asymmetric and (mode != "bilinear" or self.align_corners):
            raise ValueError("Resize: asymmetric coordinates are implemented for bilinear mode without align_corners")

    def extra_repr(self):
        what = f"scales={self.scales}" if self.scales is not None else f"sizes={self.sizes}"
        coord = ", coordinates='asymmetric'" if self.asymmetric else ""
        return f"mode={self.mode!r}, {what}, align_corners={self.align_corners}{coord}"

    @staticmethod
    def _separable(x, ah, aw):
        """A_h x A_w^T over the last two axes of (N, C, H, W) ``x``, for (P, H) ``ah`` and (Q, W) ``aw``."""
        n, c, h, w = x.shape
        p, q = ah.shape[0], aw.shape[0]
        t = ops.linear_forward(x.reshape(n * c * h, w), aw, None)  # rows: (n, c, h), columns: q
        t = t.reshape(n, c, h, q).transpose(0, 1, 3, 2).copy().reshape(n * c * q, h)
        y = ops.linear_forward(t, ah, None)  # rows: (n, c, q), columns: p
        return y.reshape(n, c, q, p).transpose(0, 1, 3, 2).copy()

    def _target(self, shape, args):
        scales, sizes = self.scales, self.sizes
        if self.runtime is not None:
            kind, pos = self.runtime
            value = _host_values(args[pos - 1])
            if kind == "scales":
                scales = tuple(float(s) for s in value)
            else:
                sizes = tuple(int(s) for s in value)
        if sizes is not None:
            if len(sizes) != 4 or tuple(sizes[:2]) != tuple(shape[:2]):
                raise ValueError(f"Resize: only the last two axes may change, got sizes {sizes} for input {shape}")
            return tuple(sizes[2:]), None
        if len(scales) != 4 or scales[0] != 1 or scales[1] != 1:
            raise ValueError(f"Resize: only the last two axes may be scaled, got scales {scales}")
        out = (int(math.floor(shape[2] * scales[2])), int(math.floor(shape[3] * scales[3])))
        return out, tuple(scales[2:])

    def forward(self, x, *args):
        x = _data(x, self.dtype)
        out, scales = self._target(x.shape, args)
        if min(out) < 1:
            raise ValueError(f"Resize: output size {out} from input {tuple(x.shape)} is empty")
        if x.shape[0] * x.shape[1] * out[0] * out[1] > 1 << 31:
            raise ValueError(f"Resize: output size {out} from input {tuple(x.shape)} is absurdly large")
        if self.asymmetric:
            sh, sw = scales if scales is not None else (out[0] / x.shape[2], out[1] / x.shape[3])
            be = backends.current()
            ah = be.asarray(asymmetric_linear_weights(x.shape[2], out[0], sh).astype(x.dtype))
            aw = be.asarray(asymmetric_linear_weights(x.shape[3], out[1], sw).astype(x.dtype))
            self._save((x.shape, (ah, aw)))
            return self._separable(x, ah, aw)
        if self.align_corners:
            scales = None
        self._save((x.shape, scales))
        if self.mode == "nearest":
            return ops.upsample_nearest2d_forward(x, out, scales)
        return ops.upsample_bilinear2d_forward(x, out, self.align_corners, scales)

    def backward(self, dy):
        shape, scales = self._saved()
        if self.asymmetric:
            ah, aw = scales
            return (self._separable(dy, ah.T.copy(), aw.T.copy()),)
        if self.mode == "nearest":
            dx = ops.upsample_nearest2d_backward(dy, shape, scales)
        else:
            dx = ops.upsample_bilinear2d_backward(dy, shape, self.align_corners, scales)
        return (dx,)
