"""Conformance cases: the parametrised activations, PReLU, softmax over any axis and the softmax
backwards (see ``__init__.py`` for the format).

Inputs are drawn at two scales, [-6, 6] (every branch of every function) and [-120, 120] (exp
would overflow float32 if computed naively), with exact kink values (0, -3, +3) planted and, now
and then, a NaN and infinities, which every op must pass on where the reference does. Parameters
cover PyTorch's whole accepted range: negative slopes and alphas, Softplus with beta of any sign
(0 included, which gives inf) and a negative threshold.
"""
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import Case, array, dtypes

REF = backends.load("numpy").OPS
SHAPES = st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple)
SOFTMAX_SHAPES = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)
KINKS = (0.0, -3.0, 3.0)
SLOPES = st.one_of(st.sampled_from([0.0, 0.01, 0.25, -0.5, 1.0]), st.floats(-3, 3, allow_nan=False))
KIND_PARAMS = {
    "leaky_relu": st.tuples(SLOPES),
    "elu": st.tuples(SLOPES),
    "selu": st.just(()),
    "gelu": st.just(()),
    "gelu_tanh": st.just(()),
    "silu": st.just(()),
    "hardswish": st.just(()),
    "hardsigmoid": st.just(()),
    "softplus": st.tuples(st.one_of(st.sampled_from([1.0, 0.0, -1.0]), st.floats(-3, 3, allow_nan=False)),
                          st.one_of(st.sampled_from([20.0, 0.0, -1.0]), st.floats(-5, 30, allow_nan=False))),
    "softsign": st.just(()),
}


def _array(data, shape, dt, low=-2.0, high=2.0):
    # ``array`` turns a 0-d shape into (1,) for the Fortran layout (np.asfortranarray does)
    return array(data, shape, dt, low, high).reshape(shape)


def _input(data, shape, dt, specials=True):
    scale = data.draw(st.sampled_from([6.0, 120.0]), label="scale")
    x = _array(data, shape, dt, -scale, scale)
    if x.ndim and x.size and data.draw(st.booleans(), label="kinks"):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="kink seed"))
        x[np.unravel_index(rng.integers(0, x.size, 3), x.shape)] = rng.choice(KINKS, 3)
    if x.ndim and x.size and specials and data.draw(st.booleans(), label="specials"):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="specials seed"))
        for v, i in zip((np.nan, np.inf, -np.inf), rng.integers(0, x.size, 3)):
            x[np.unravel_index(i, x.shape)] = v
    return x


def _activation(kind, backward):
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(SHAPES, label="shape")
        params = data.draw(KIND_PARAMS[kind], label="params")
        x = _input(data, shape, dt)
        if backward:
            return (_array(data, shape, dt), x, kind, params), {}
        return (x, kind, params), {}
    return draw


def _prelu(backward):
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(SHAPES, label="shape")
        per_channel = len(shape) >= 2 and data.draw(st.booleans(), label="per channel")
        weight = array(data, (shape[1] if per_channel else 1,), dt, -1.0, 1.0, layout="c")
        x = _input(data, shape, dt)
        if not backward:
            return (x, weight), {}
        need_dx, need_dw = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]), label="need")
        return (_array(data, shape, dt), x, weight, need_dx, need_dw), {}
    return draw


def _axis(data, ndim):
    return data.draw(st.integers(-ndim, ndim - 1), label="axis")


def _softmax(data):
    dt = data.draw(dtypes())
    shape = data.draw(SOFTMAX_SHAPES, label="shape")
    return (_input(data, shape, dt, specials=False), _axis(data, len(shape))), {}


def _softmax_backward(op):
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(SOFTMAX_SHAPES, label="shape")
        axis = _axis(data, len(shape))
        y = REF[f"{op}_forward"](_input(data, shape, dt, specials=False), axis)
        return (_array(data, shape, dt), y, axis), {}
    return draw


CASES = (
    [Case("activation_forward", _activation(k, False), name=k) for k in KIND_PARAMS]
    + [Case("activation_backward", _activation(k, True), name=k) for k in KIND_PARAMS]
    + [
        Case("prelu_forward", _prelu(False)),
        # the slope's gradient is a sum: float32 sums in a different order
        Case("prelu_backward", _prelu(True), tol32=1e-4),
        Case("softmax_forward", _softmax, name="axis"),
        Case("log_softmax_forward", _softmax, name="axis"),
        Case("softmax_backward", _softmax_backward("softmax")),
        Case("log_softmax_backward", _softmax_backward("log_softmax")),
    ]
)
