"""Elementwise activations (flat parallel loops) and softmax / log-softmax over axis 1.

Backward takes the forward *output* y, which is all each needs. NaN handling matches the
reference: ReLU keeps a NaN (``x < 0`` is false for it) and its backward passes dy only where y > 0.
Softmax rows are reduced in float64 and the max is subtracted first, so exp never overflows.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import compute_dtype, prepare

__all__ = [
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "add_relu_forward",
    "softmax_forward",
    "log_softmax_forward",
]


# elementwise modes: one unary and one binary kernel serve every activation (and the loss
# gradients and dropout's backward), so each costs one compilation per dtype instead of one per op
RELU, SIGMOID, TANH = 0, 1, 2
RELU_BWD, SIGMOID_BWD, TANH_BWD, ADD_RELU, MUL, BCE_GRAD, MSE_GRAD = 0, 1, 2, 3, 4, 5, 6


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True)
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


@njit(cache=True, parallel=True)
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


def _softmax_like(x, log, where):
    x = _flat(x)
    if x.ndim < 2:
        raise ValueError(f"{where}: needs at least 2-D input (N, C, ...), got shape {tuple(x.shape)}")
    y = _memory.empty(x.shape, x.dtype)
    x3 = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)))
    _threads.run(_softmax, x3, y.reshape(x3.shape), bool(log))
    return y


def softmax_forward(x):
    """Softmax over axis 1."""
    return _softmax_like(x, False, "softmax_forward")


def log_softmax_forward(x):
    """log(softmax(x)) over axis 1, computed as x - max - log(sum(exp(x - max)))."""
    return _softmax_like(x, True, "log_softmax_forward")
