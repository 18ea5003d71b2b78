"""Activations, PReLU and softmax / log-softmax on the GPU: ``kernels/activation.cu``.

The ops mirror ``backends/numpy/activation.py`` (the reference) one for one. ReLU, sigmoid,
tanh and the parametrised family (leaky_relu, elu, selu, gelu, gelu_tanh, silu, hardswish,
hardsigmoid, softplus, softsign) share one forward kernel and one backward kernel, with the kind
as a number; ReLU, sigmoid and tanh backwards take the forward output y, the others the input x,
as in the reference. Arithmetic is done in the input's dtype, as the reference does (PReLU's
slope gradient is summed in double), and the kinds' parameters are rounded to it first (the
reference's Python scalars are), so a test such as softplus's ``beta * x > threshold`` takes the
same branch.

Softmax and log-softmax see their input as (outer, L, inner), the axis in the middle, and give
each of the outer*inner rows either one thread or one block (:func:`row_launch`).

Written and compile-checked, and checked against the reference on the host CUDA emulator
(``tests/test_conformance.py``, ``tests/test_cupy_pointwise.py``), and on a GPU by the same tests.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

from ._launch import DEFAULT_BLOCK as BLOCK
from ._launch import MAX_BLOCKS_1D, grid_1d, suffix

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

FILE = "activation.cu"
ROW_BLOCK_MIN = 64  # softmax rows at least this long get a block of threads each (see row_launch)
FEW_ROWS = 1024  # ... also when their elements are strided, if there are fewer rows than this
# threads of a block that reduces (the one-block-per-row softmax, PReLU's slope gradient, every
# loss kernel): a power of two no larger than the 256 entries of the kernels' shared buffers
REDUCE_BLOCK = 256

# the kernel's kind numbers (the ACT_* enum of activation.cu)
RELU, SIGMOID, TANH = 0, 1, 2
# kind -> (kernel number, names of its parameters in order), as the reference's KINDS
KINDS = {
    "leaky_relu": (3, ("negative_slope",)),
    "elu": (4, ("alpha",)),
    "selu": (4, ()),
    "gelu": (5, ()),
    "gelu_tanh": (6, ()),
    "silu": (7, ()),
    "hardswish": (8, ()),
    "hardsigmoid": (9, ()),
    "softplus": (10, ("beta", "threshold")),
    "softsign": (11, ()),
}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# -- helpers shared by the pointwise and loss modules ----------------------------------------------

def common_dtype(*arrays):
    """The dtype the reference's arithmetic on ``arrays`` gives (numpy's promotion rule)."""
    return np.result_type(*(a.dtype for a in arrays))


def prepare(rt, a, dtype):
    """``a`` on the runtime, of ``dtype``, C-contiguous: ready to pass to a kernel (maybe ``a`` itself,
    which kernels only read)."""
    if not rt.is_native(a):
        a = rt.asarray(np.asarray(a))
    if a.dtype != dtype:
        a = a.astype(dtype)
    return rt.xp.ascontiguousarray(a).reshape(a.shape)  # numpy's makes a 0-d array 1-d


def native(rt, a):
    """``a`` on the runtime, as it is (dtype and layout kept)."""
    return a if rt.is_native(a) else rt.asarray(np.asarray(a))


def _same_shape(a, b, names, where):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{where}: {names[0]} shape {tuple(a.shape)} and {names[1]} shape {tuple(b.shape)} differ")


def row_launch(rows: int, L: int, inner: int) -> tuple:
    """(team, grid, block) for ``rows`` rows of ``L`` elements ``inner`` apart (softmax, the class losses).

    team 1: one thread per row, looping over it: short rows, and strided rows where neighbouring
    threads then read neighbouring addresses. team = block (a power of two from 32 to 256, at
    least the row length when it can): one block per row, the row's reductions done by the block:
    long contiguous rows (logits of many classes), or a few long strided rows.
    """
    if L >= ROW_BLOCK_MIN and (inner == 1 or rows < FEW_ROWS):
        block = 32
        while block < L and block < REDUCE_BLOCK:
            block *= 2
        return block, (max(1, min(rows, MAX_BLOCKS_1D)),), (block,)
    return 1, grid_1d(rows, REDUCE_BLOCK), (REDUCE_BLOCK,)


# -- ReLU, sigmoid, tanh, the residual join ------------------------------------------------------

def _unary(rt, x, kind, p0=0.0, p1=0.0):
    x = native(rt, x)
    dt = x.dtype
    sfx = suffix(dt)
    x = prepare(rt, x, dt)
    y = rt.empty(x.shape, dt)
    if x.size:
        rt.kernel(FILE, f"act_forward_{sfx}")(grid_1d(x.size), (BLOCK,),
                                              (x, y, np.int64(x.size), np.int32(kind), dt.type(p0), dt.type(p1)))
    return y


def _from_output(rt, dy, y, kind, where):
    dy, y = native(rt, dy), native(rt, y)
    _same_shape(dy, y, ("dy", "y"), where)
    dt = common_dtype(dy, y)
    sfx = suffix(dt)
    dy, y = prepare(rt, dy, dt), prepare(rt, y, dt)
    dx = rt.empty(y.shape, dt)
    if y.size:
        rt.kernel(FILE, f"act_backward_from_output_{sfx}")(grid_1d(y.size), (BLOCK,),
                                                           (dy, y, dx, np.int64(y.size), np.int32(kind)))
    return dx


def relu_forward(rt, x):
    """max(x, 0), NaN kept."""
    return _unary(rt, x, RELU)


def relu_backward(rt, dy, y):
    """dy where the unit was active (y > 0), else 0."""
    return _from_output(rt, dy, y, RELU, "relu_backward")


def sigmoid_forward(rt, x):
    """1 / (1 + exp(-x)), split by sign so that exp never overflows."""
    return _unary(rt, x, SIGMOID)


def sigmoid_backward(rt, dy, y):
    """dy * y * (1 - y)."""
    return _from_output(rt, dy, y, SIGMOID, "sigmoid_backward")


def tanh_forward(rt, x):
    """tanh(x)."""
    return _unary(rt, x, TANH)


def tanh_backward(rt, dy, y):
    """dy * (1 - y^2)."""
    return _from_output(rt, dy, y, TANH, "tanh_backward")


def add_relu_forward(rt, a, b):
    """max(a + b, 0): the residual join in one pass."""
    a, b = native(rt, a), native(rt, b)
    _same_shape(a, b, ("a", "b"), "add_relu_forward")
    dt = common_dtype(a, b)
    sfx = suffix(dt)
    a, b = prepare(rt, a, dt), prepare(rt, b, dt)
    y = rt.empty(a.shape, dt)
    if a.size:
        rt.kernel(FILE, f"add_relu_{sfx}")(grid_1d(a.size), (BLOCK,), (a, b, y, np.int64(a.size)))
    return y


# -- the parametrised family ---------------------------------------------------------------------

def _kind(kind, params, dtype, where):
    """(kernel number, p0, p1) for ``kind`` and its ``params``, rounded to ``dtype``; the
    reference's ValueError for an unknown kind or the wrong number of params."""
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    code, names = KINDS[kind]
    if len(params) != len(names):
        raise ValueError(f"{where}: kind {kind!r} takes params ({', '.join(names)}), got {tuple(params)}")
    if kind == "selu":
        params = (SELU_ALPHA, SELU_SCALE)
    elif kind == "elu":
        params = (params[0], 1.0)
    p = [np.dtype(dtype).type(v) for v in params] + [0.0, 0.0]
    return code, p[0], p[1]


def activation_forward(rt, x, kind, params=()):
    """y = f(x) for the activation ``kind`` with its ``params`` (see the module docstring)."""
    x = native(rt, x)
    code, p0, p1 = _kind(kind, tuple(params), x.dtype, "activation_forward")
    return _unary(rt, x, code, p0, p1)


def activation_backward(rt, dy, x, kind, params=()):
    """dx = dy * f'(x), PyTorch's values at the kinks."""
    dy, x = native(rt, dy), native(rt, x)
    dt = common_dtype(dy, x)
    code, p0, p1 = _kind(kind, tuple(params), dt, "activation_backward")
    _same_shape(dy, x, ("dy", "x"), "activation_backward")
    sfx = suffix(dt)
    dy, x = prepare(rt, dy, dt), prepare(rt, x, dt)
    dx = rt.empty(x.shape, dt)
    if x.size:
        rt.kernel(FILE, f"act_backward_{sfx}")(grid_1d(x.size), (BLOCK,),
                                               (dy, x, dx, np.int64(x.size), np.int32(code), dt.type(p0),
                                                dt.type(p1)))
    return dx


# -- PReLU -----------------------------------------------------------------------------------------

def _planes(x, weight, where):
    """(N, C, inner): x seen as N planes of C channels of ``inner`` values, C the number of slopes
    (a single slope: one plane of one channel); the reference's ValueError for a weight that fits not."""
    if weight.ndim != 1 or (weight.size != 1 and (x.ndim < 2 or x.shape[1] != weight.size)):
        raise ValueError(
            f"{where}: weight of shape {tuple(weight.shape)} needs input with {weight.size} channels along "
            f"axis 1 (or a single slope), got input shape {tuple(x.shape)}"
        )
    if weight.size == 1:
        return 1, 1, int(x.size)
    return int(x.shape[0]), int(x.shape[1]), int(np.prod(x.shape[2:], dtype=np.int64))


def prelu_forward(rt, x, weight):
    """y = x where x > 0, else w_c * x (c the channel along axis 1, or the one shared slope)."""
    x, weight = native(rt, x), native(rt, weight)
    N, C, inner = _planes(x, weight, "prelu_forward")
    dt = common_dtype(x, weight)
    sfx = suffix(dt)
    x, w = prepare(rt, x, dt), prepare(rt, weight, dt)
    y = rt.empty(x.shape, dt)
    if x.size:
        rt.kernel(FILE, f"prelu_forward_{sfx}")(grid_1d(x.size), (BLOCK,),
                                                (x, w, y, np.int64(x.size), np.int64(C), np.int64(max(inner, 1))))
    return y


def prelu_backward(rt, dy, x, weight, need_dx=True, need_dw=True):
    """(dx, dweight): dx = dy or w_c * dy; dweight_c = sum of x * dy over channel c where x <= 0
    (per block in double, the blocks' partial sums added here)."""
    dy, x, weight = native(rt, dy), native(rt, x), native(rt, weight)
    N, C, inner = _planes(x, weight, "prelu_backward")
    _same_shape(dy, x, ("dy", "x"), "prelu_backward")
    if not (need_dx or need_dw):
        return None, None
    dt = common_dtype(dy, x, weight)
    sfx = suffix(dt)
    dy, x, w = prepare(rt, dy, dt), prepare(rt, x, dt), prepare(rt, weight, dt)
    dx = rt.empty(x.shape, dt) if need_dx else None
    per_channel = N * inner
    if per_channel == 0:
        dw = rt.xp.zeros(weight.shape, dt) if need_dw else None
        return dx, dw
    # B blocks per channel: enough to fill the device, none idle on a small channel
    B = max(1, min((per_channel + REDUCE_BLOCK - 1) // REDUCE_BLOCK, max(1, 1024 // C), 65535))
    partial = rt.empty((C, B), np.float64)
    rt.kernel(FILE, f"prelu_backward_{sfx}")((C, B), (REDUCE_BLOCK,),
                                             (dy, x, w, dx if need_dx else x, partial, np.int64(N), np.int64(C),
                                              np.int64(inner), np.int32(bool(need_dx)), np.int32(bool(need_dw))))
    dw = partial.sum(axis=1).astype(dt).reshape(weight.shape) if need_dw else None
    return dx, dw


# -- softmax over one axis ------------------------------------------------------------------------

def _rows(x, axis, where):
    """(outer, L, inner): x seen as (outer, L, inner) with ``axis`` in the middle."""
    if x.ndim == 0:
        raise ValueError(f"{where}: needs an array with at least one axis, got a 0-d array")
    axis = normalize_axis_index(int(axis), x.ndim)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return outer, int(x.shape[axis]), inner


def _softmax_like(rt, x, axis, log_mode, where):
    x = native(rt, x)
    outer, L, inner = _rows(x, axis, where)
    dt = x.dtype
    sfx = suffix(dt)
    x = prepare(rt, x, dt)
    y = rt.empty(x.shape, dt)
    rows = outer * inner
    if rows and L == 0:
        raise ValueError(f"{where}: softmax over an empty axis (input shape {tuple(x.shape)})")
    if x.size:
        team, grid, block = row_launch(rows, L, inner)
        rt.kernel(FILE, f"softmax_forward_{sfx}")(grid, block, (x, y, np.int64(outer), np.int64(L), np.int64(inner),
                                                                np.int32(log_mode), np.int32(team)))
    return y


def _softmax_like_backward(rt, dy, y, axis, log_mode, where):
    dy, y = native(rt, dy), native(rt, y)
    _same_shape(dy, y, ("dy", "y"), where)
    outer, L, inner = _rows(y, axis, where)
    dt = common_dtype(dy, y)
    sfx = suffix(dt)
    dy, y = prepare(rt, dy, dt), prepare(rt, y, dt)
    dx = rt.empty(y.shape, dt)
    if y.size:
        team, grid, block = row_launch(outer * inner, L, inner)
        rt.kernel(FILE, f"softmax_backward_{sfx}")(grid, block, (dy, y, dx, np.int64(outer), np.int64(L),
                                                                 np.int64(inner), np.int32(log_mode), np.int32(team)))
    return dx


def softmax_forward(rt, x, axis=1):
    """exp(x - max) / sum(exp(x - max)) over ``axis``."""
    return _softmax_like(rt, x, axis, 0, "softmax_forward")


def softmax_backward(rt, dy, y, axis=1):
    """dx = y * (dy - sum(dy * y)) over ``axis``, from the forward output y."""
    return _softmax_like_backward(rt, dy, y, axis, 0, "softmax_backward")


def log_softmax_forward(rt, x, axis=1):
    """(x - max) - log(sum(exp(x - max))) over ``axis``."""
    return _softmax_like(rt, x, axis, 1, "log_softmax_forward")


def log_softmax_backward(rt, dy, y, axis=1):
    """dx = dy - exp(y) * sum(dy) over ``axis``, from the forward output y."""
    return _softmax_like_backward(rt, dy, y, axis, 1, "log_softmax_backward")
