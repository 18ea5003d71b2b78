"""Elementwise activations (flat parallel loops), PReLU, and softmax / log-softmax over any axis.

ReLU, sigmoid and tanh go through ``unary`` / ``binary`` and their backward takes the forward
*output* y. The parametrised family of the reference (``backends/numpy/activation.py``:
leaky_relu, elu, selu, gelu, gelu_tanh, silu, hardswish, hardsigmoid, softplus, softsign) is
one forward kernel and one backward kernel, ``act_forward`` / ``act_backward``, with the kind as
a number tested inside the loop and at most two parameters; selu is elu with PyTorch's constants.
Their backward takes the input x. NaN handling follows the reference branch by branch (every
comparison with NaN is false in both). Softmax rows are reduced in float64 and the max is
subtracted first, so exp never overflows.

One version of each kernel; the mode (or kind) is a named constant tested inside the loop, so one
compilation per dtype serves every activation. Checked against the numpy reference by
``python -m pytest -q tests/test_conformance.py -k "numba and (relu or sigmoid or tanh or softmax or activation)"``;
timed per op inside a training step by ``python -m benchmarks.profile --mode train --batch 16``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from numpy.lib.array_utils import normalize_axis_index

from . import _memory, _threads
from ._util import FLOATS, compute_dtype, empty_like_ndim, prepare

__all__ = [
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "add_relu_forward",
    "activation_forward",
    "activation_backward",
    "prelu_forward",
    "prelu_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
]


# elementwise modes: one unary and one binary kernel serve every activation (and the loss
# gradients and dropout's backward), so each costs one compilation per dtype instead of one per op
RELU, SIGMOID, TANH = 0, 1, 2
RELU_BWD, SIGMOID_BWD, TANH_BWD, ADD_RELU, MUL, BCE_GRAD, MSE_GRAD = 0, 1, 2, 3, 4, 5, 6


@njit(cache=True, nogil=True, parallel=True)
def unary(mode, x, y):  # pragma: no cover - jitted
    """y = relu(x) | sigmoid(x) | tanh(x) on flat arrays.

    One prange with the mode tested inside: LLVM hoists the loop-invariant test out of each
    thread's loop (it runs as fast as one kernel per mode) while numba builds one parallel region
    instead of three, which is what dominates compile time.
    """
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        if mode == RELU:
            y[i] = zero if v < 0 else v  # a NaN stays NaN
        elif mode == SIGMOID:
            if v >= 0:
                y[i] = one / (one + np.exp(-v))
            else:  # split by sign so exp never overflows
                e = np.exp(v)
                y[i] = e / (one + e)
        else:
            y[i] = np.tanh(v)


@njit(cache=True, nogil=True, parallel=True)
def binary(mode, a, b, out, alpha):  # pragma: no cover - jitted
    """Elementwise on flat arrays; ``b`` is y (the forward output) for the activation backwards.

    RELU_BWD a*[b>0] | SIGMOID_BWD a*b*(1-b) | TANH_BWD a*(1-b^2) | ADD_RELU max(a+b, 0) |
    MUL a*b | BCE_GRAD (sigmoid(a) - b)*alpha | MSE_GRAD 2(a - b)*alpha
    """
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    for i in prange(a.size):
        if mode == RELU_BWD:
            # a multiply, not a select: an infinite dy at an inactive unit gives NaN as in the reference
            out[i] = a[i] * (one if b[i] > 0 else zero)
        elif mode == SIGMOID_BWD:
            s = b[i]
            out[i] = a[i] * s * (one - s)
        elif mode == TANH_BWD:
            t = b[i]
            out[i] = a[i] * (one - t * t)
        elif mode == ADD_RELU:
            v = a[i] + b[i]
            out[i] = zero if v < 0 else v
        elif mode == MUL:
            out[i] = a[i] * b[i]
        elif mode == BCE_GRAD:
            x = np.float64(a[i])
            if x >= 0:
                sg = 1.0 / (1.0 + np.exp(-x))
            else:
                e = np.exp(x)
                sg = e / (1.0 + e)
            out[i] = (sg - b[i]) * alpha
        else:
            out[i] = 2.0 * (np.float64(a[i]) - b[i]) * alpha


# kinds of the parametrised family: kind name -> (number, how many params)
LEAKY_RELU, ELU, GELU, GELU_TANH, SILU, HARDSWISH, HARDSIGMOID, SOFTPLUS, SOFTSIGN = range(9)
KINDS = {
    "leaky_relu": (LEAKY_RELU, 1), "elu": (ELU, 1), "selu": (ELU, 0), "gelu": (GELU, 0),
    "gelu_tanh": (GELU_TANH, 0), "silu": (SILU, 0), "hardswish": (HARDSWISH, 0),
    "hardsigmoid": (HARDSIGMOID, 0), "softplus": (SOFTPLUS, 2), "softsign": (SOFTSIGN, 0),
}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
SQRT1_2 = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_BETA = math.sqrt(2.0 / math.pi)
GELU_TANH_KAPPA = 0.044715


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _sigmoid(v):  # pragma: no cover - jitted
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)  # split by sign so exp never overflows
    return e / (1.0 + e)


# error_model="numpy": a division by zero (softplus with beta=0) gives inf as in the reference
# instead of raising ZeroDivisionError
@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def act_forward(kind, x, y, p0, p1):  # pragma: no cover - jitted
    """y = f(x) on flat arrays for one kind of the family, in float64; p0, p1 its parameters
    (elu: alpha, scale; leaky_relu: slope; softplus: beta, threshold)."""
    beta = x.dtype.type(p0)  # softplus forms beta * x in the input's dtype, as the reference and PyTorch
    for i in prange(x.size):
        v = np.float64(x[i])
        if kind == LEAKY_RELU:
            r = v if v > 0 else v * p0
        elif kind == ELU:
            r = p1 * (v if v > 0 else p0 * math.expm1(v))
        elif kind == GELU:
            r = 0.5 * v * (1.0 + math.erf(v * SQRT1_2))
        elif kind == GELU_TANH:
            r = 0.5 * v * (1.0 + math.tanh(GELU_TANH_BETA * (v + GELU_TANH_KAPPA * v * v * v)))
        elif kind == SILU:
            r = v * _sigmoid(v)
        elif kind == HARDSWISH or kind == HARDSIGMOID:
            t = v + 3.0  # clipped to [0, 6] with NaN kept (both comparisons false)
            if t < 0.0:
                t = 0.0
            elif t > 6.0:
                t = 6.0
            r = (v * t if kind == HARDSWISH else t) / 6.0
        elif kind == SOFTPLUS:
            z = np.float64(x[i] * beta)
            r = v if z > p1 else math.log1p(math.exp(z)) / p0
        else:
            r = v / (1.0 + abs(v))
        y[i] = r


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def act_backward(kind, dy, x, dx, p0, p1):  # pragma: no cover - jitted
    """dx = dy * f'(x) on flat arrays; f' at the kinks as the reference (PyTorch's)."""
    beta = x.dtype.type(p0)
    for i in prange(x.size):
        v = np.float64(x[i])
        if kind == LEAKY_RELU:
            d = 1.0 if v > 0 else p0
        elif kind == ELU:
            d = p1 * (p0 * math.exp(v) if v <= 0 else 1.0)
        elif kind == GELU:
            d = 0.5 * (1.0 + math.erf(v * SQRT1_2)) + v * math.exp(-0.5 * v * v) * INV_SQRT_2PI
        elif kind == GELU_TANH:
            t = math.tanh(GELU_TANH_BETA * (v + GELU_TANH_KAPPA * v * v * v))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_TANH_BETA * (1.0 + 3.0 * GELU_TANH_KAPPA * v * v)
        elif kind == SILU:
            s = _sigmoid(v)
            d = s * (1.0 + v * (1.0 - s))
        elif kind == HARDSWISH:
            d = 0.0 if v <= -3.0 else (v / 3.0 + 0.5 if v < 3.0 else 1.0)
        elif kind == HARDSIGMOID:
            d = 1.0 / 6.0 if v > -3.0 and v < 3.0 else 0.0
        elif kind == SOFTPLUS:
            bx = np.float64(x[i] * beta)
            z = math.exp(bx)
            d = 1.0 if bx > p1 else z / (z + 1.0)
        else:
            a = 1.0 + abs(v)
            d = 1.0 / (a * a)
        dx[i] = np.float64(dy[i]) * d


@njit(cache=True, nogil=True, parallel=True)
def _prelu_forward(x3, w, y3):  # pragma: no cover - jitted
    """y = x or w[c] * x on x3 (N, C, L), one task per (n, c) plane."""
    N, C, L = x3.shape
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        a = w[c]
        for j in range(L):
            v = x3[n, c, j]
            y3[n, c, j] = v if v > 0 else a * v


@njit(cache=True, nogil=True, parallel=True)
def _prelu_backward(dy3, x3, w, dx3, part, need_dx):  # pragma: no cover - jitted
    """dx (when need_dx) and part[n, c] = sum over the plane of x * dy where x <= 0, in float64."""
    N, C, L = x3.shape
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        a = w[c]
        s = 0.0
        for j in range(L):
            v = x3[n, c, j]
            g = dy3[n, c, j]
            if v > 0:
                if need_dx:
                    dx3[n, c, j] = g
            else:
                if need_dx:
                    dx3[n, c, j] = a * g
                s += np.float64(v) * g
        part[n, c] = s


@njit(cache=True, nogil=True, parallel=True)
def _softmax(x3, y3, log):  # pragma: no cover - jitted
    """Softmax (or log-softmax) over axis 1 of x3 (N, C, L), one task per (n, l) column."""
    N, C, L = x3.shape
    for task in prange(N * L):
        n = task // L
        j = task - n * L
        mx = -np.inf
        for c in range(C):
            v = np.float64(x3[n, c, j])
            if v > mx:
                mx = v
        s = 0.0
        for c in range(C):
            s += np.exp(np.float64(x3[n, c, j]) - mx)
        if log:
            lse = np.log(s)
            for c in range(C):
                y3[n, c, j] = np.float64(x3[n, c, j]) - mx - lse
        else:
            inv = 1.0 / s
            for c in range(C):
                y3[n, c, j] = np.exp(np.float64(x3[n, c, j]) - mx) * inv


@njit(cache=True, nogil=True, parallel=True)
def _softmax_backward(dy3, y3, dx3, log):  # pragma: no cover - jitted
    """Over axis 1 of (N, C, L): dx = y (dy - sum(dy y)), or for log-softmax dx = dy - exp(y) sum(dy)."""
    N, C, L = y3.shape
    for task in prange(N * L):
        n = task // L
        j = task - n * L
        s = 0.0
        for c in range(C):
            s += np.float64(dy3[n, c, j]) * (1.0 if log else np.float64(y3[n, c, j]))
        for c in range(C):
            g = np.float64(dy3[n, c, j])
            y = np.float64(y3[n, c, j])
            dx3[n, c, j] = g - np.exp(y) * s if log else y * (g - s)


def _flat(x):
    x = np.asarray(x)
    return prepare(x, compute_dtype(x))


def run_unary(mode, x):
    """Fresh array: ``unary`` applied to ``x``."""
    x = _flat(x)
    y = _memory.empty(x.shape, x.dtype)
    _threads.run(unary, mode, x.reshape(-1), y.reshape(-1), weight=_threads.LIGHT)
    return y


def run_binary(mode, a, b, where, alpha=1.0):
    """Fresh array: ``binary`` applied to two arrays of one shape (computed in their common dtype)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{where}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    dt = compute_dtype(a, b)
    a, b = prepare(a, dt), prepare(b, dt)
    out = _memory.empty(a.shape, a.dtype)
    _threads.run(binary, mode, a.reshape(-1), b.reshape(-1), out.reshape(-1), float(alpha), weight=_threads.LIGHT)
    return out


def relu_forward(x):
    """max(x, 0), NaN kept."""
    return run_unary(RELU, x)


def relu_backward(dy, y):
    """dy where the unit was active (y > 0), else 0."""
    return run_binary(RELU_BWD, dy, y, "relu_backward")


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), evaluated without overflow for any x."""
    return run_unary(SIGMOID, x)


def sigmoid_backward(dy, y):
    """dy * y * (1 - y)."""
    return run_binary(SIGMOID_BWD, dy, y, "sigmoid_backward")


def tanh_forward(x):
    """tanh(x)."""
    return run_unary(TANH, x)


def tanh_backward(dy, y):
    """dy * (1 - y^2)."""
    return run_binary(TANH_BWD, dy, y, "tanh_backward")


def add_relu_forward(a, b):
    """max(a + b, 0): the residual join in one pass."""
    return run_binary(ADD_RELU, a, b, "add_relu_forward")


def _params(kind, params, dtype, where):
    """(kernel number, p0, p1) for ``kind``; the same checks as the reference.

    The parameters are rounded to the computing dtype, as in the reference (numpy) and PyTorch,
    so that a test such as softplus's ``beta * x > threshold`` takes the same branch.
    """
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    code, count = KINDS[kind]
    if len(params) != count:
        raise ValueError(f"{where}: kind {kind!r} takes {count} params, got {tuple(params)}")
    if kind == "selu":
        params = (SELU_ALPHA, SELU_SCALE)
    elif kind == "elu":
        params = (params[0], 1.0)
    p = [float(np.dtype(dtype).type(v)) for v in params] + [0.0, 0.0]
    return code, p[0], p[1]


def activation_forward(x, kind, params=()):
    """y = f(x) for the activation ``kind`` with its ``params`` (see the reference's ``KINDS``)."""
    x = _flat(x)
    code, p0, p1 = _params(kind, params, x.dtype, "activation_forward")
    y = _memory.empty(x.shape, x.dtype)
    _threads.run(act_forward, code, x.reshape(-1), y.reshape(-1), p0, p1)
    return y


def activation_backward(dy, x, kind, params=()):
    """dx = dy * f'(x)."""
    dy, x = np.asarray(dy), np.asarray(x)
    if dy.shape != x.shape:
        raise ValueError(f"activation_backward: dy shape {tuple(dy.shape)} and x shape {tuple(x.shape)} differ")
    dt = compute_dtype(dy, x)
    code, p0, p1 = _params(kind, params, x.dtype if x.dtype in FLOATS else dt, "activation_backward")
    dy, x = prepare(dy, dt), prepare(x, dt)
    dx = _memory.empty(x.shape, dt)
    _threads.run(act_backward, code, dy.reshape(-1), x.reshape(-1), dx.reshape(-1), p0, p1)
    return dx


def _planes(x, weight, where):
    """x viewed as (N, C, L) with C the number of slopes (1 for a shared slope)."""
    if weight.ndim != 1 or (weight.size != 1 and (x.ndim < 2 or x.shape[1] != weight.size)):
        raise ValueError(
            f"{where}: weight of shape {tuple(weight.shape)} needs input with {weight.size} channels along "
            f"axis 1 (or a single slope), got input shape {tuple(x.shape)}"
        )
    n = x.shape[0] if x.ndim >= 2 else 1
    return x.reshape(n, weight.size, -1) if x.size else x.reshape(n, weight.size, 0)


def prelu_forward(x, weight):
    """y = x where x > 0, else weight[c] * x (c the channel, axis 1, or the one shared slope)."""
    x, weight = np.asarray(x), np.asarray(weight)
    dt = compute_dtype(x, weight)
    x, w = prepare(x, dt), prepare(weight, dt)
    x3 = _planes(x, w, "prelu_forward")
    y = _memory.empty(x.shape, dt)
    _threads.run(_prelu_forward, x3, w, y.reshape(x3.shape))
    return y


def prelu_backward(dy, x, weight, need_dx=True, need_dw=True):
    """(dx, dweight): dx = dy or weight[c] * dy; dweight[c] = sum of x * dy where x <= 0."""
    dy, x, weight = np.asarray(dy), np.asarray(x), np.asarray(weight)
    if dy.shape != x.shape:
        raise ValueError(f"prelu_backward: dy shape {tuple(dy.shape)} and x shape {tuple(x.shape)} differ")
    if not (need_dx or need_dw):
        return None, None
    dt = compute_dtype(dy, x, weight)
    dy, x, w = prepare(dy, dt), prepare(x, dt), prepare(weight, dt)
    x3 = _planes(x, w, "prelu_backward")
    dx = _memory.empty(x.shape, dt) if need_dx else None
    part = np.empty(x3.shape[:2], dtype=np.float64)
    _threads.run(_prelu_backward, dy.reshape(x3.shape), x3, w,
                 dx.reshape(x3.shape) if need_dx else empty_like_ndim(3, dt), part, bool(need_dx))
    dw = part.sum(axis=0).astype(dt).reshape(weight.shape) if need_dw else None
    return dx, dw


def _columns(x, axis, where):
    """x viewed as (before, size of axis, after), the layout the softmax kernels loop over."""
    if x.ndim == 0:
        raise ValueError(f"{where}: needs an array with at least one axis, got a 0-d array")
    axis = normalize_axis_index(int(axis), x.ndim)
    before = int(np.prod(x.shape[:axis], dtype=np.int64))
    after = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return x.reshape(before, x.shape[axis], after)


def _softmax_like(x, axis, log, where):
    x = _flat(x)
    x3 = _columns(x, axis, where)
    y = _memory.empty(x.shape, x.dtype)
    _threads.run(_softmax, x3, y.reshape(x3.shape), bool(log))
    return y


def _softmax_like_backward(dy, y, axis, log, where):
    dy, y = np.asarray(dy), np.asarray(y)
    if dy.shape != y.shape:
        raise ValueError(f"{where}: dy shape {tuple(dy.shape)} and y shape {tuple(y.shape)} differ")
    dt = compute_dtype(dy, y)
    dy, y = prepare(dy, dt), prepare(y, dt)
    y3 = _columns(y, axis, where)
    dx = _memory.empty(y.shape, dt)
    _threads.run(_softmax_backward, dy.reshape(y3.shape), y3, dx.reshape(y3.shape), bool(log))
    return dx


def softmax_forward(x, axis=1):
    """Softmax over ``axis``."""
    return _softmax_like(x, axis, False, "softmax_forward")


def softmax_backward(dy, y, axis=1):
    """dx = y * (dy - sum(dy * y)) over ``axis``, from the forward output y."""
    return _softmax_like_backward(dy, y, axis, False, "softmax_backward")


def log_softmax_forward(x, axis=1):
    """log(softmax(x)) over ``axis``, computed as x - max - log(sum(exp(x - max)))."""
    return _softmax_like(x, axis, True, "log_softmax_forward")


def log_softmax_backward(dy, y, axis=1):
    """dx = dy - exp(y) * sum(dy) over ``axis``, from the forward output y."""
    return _softmax_like_backward(dy, y, axis, True, "log_softmax_backward")
