"""Conformance cases: elementwise activations, the residual join, softmax (see ``__init__.py``).

Inputs span [-120, 120], wide enough that exp overflows float32 if computed naively, and now and
then hold a NaN and infinities, which every op must pass on where the reference does. Backward
ops take the output the reference forward gives for such an input (their contract: they need
y, not x). Softmax takes finite inputs of any rank >= 2 (over axis 1). ``large`` cases
(about 100k values) cross numba's ``SERIAL_MAX_WORK`` even at the light weight of a ReLU.
"""
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import Case, array, dtypes

REF = backends.load("numpy").OPS
SHAPES = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
LARGE = st.tuples(st.integers(2, 3), st.just(16), st.integers(44, 48), st.integers(44, 48))
WIDE = 120.0


def _input(data, shape, dt, specials=True):
    x = array(data, shape, dt, -WIDE, WIDE)
    if specials and data.draw(st.booleans(), label="specials"):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="specials seed"))
        flat = rng.integers(0, x.size, 3)
        for v, i in zip((np.nan, np.inf, -np.inf), flat):
            x[np.unravel_index(i, x.shape)] = v
    return x


def _unary(shapes=SHAPES):
    def draw(data):
        dt = data.draw(dtypes())
        return (_input(data, data.draw(shapes, label="shape"), dt),), {}
    return draw


def _backward(op, shapes=SHAPES):
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(shapes, label="shape")
        y = REF[f"{op}_forward"](_input(data, shape, dt))
        return (array(data, shape, dt), y), {}
    return draw


def _add_relu(shapes=SHAPES):
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(shapes, label="shape")
        return (_input(data, shape, dt), _input(data, shape, dt)), {}
    return draw


def _softmax(data):
    dt = data.draw(dtypes())
    shape = data.draw(st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple), label="shape")
    return (_input(data, shape, dt, specials=False),), {}


CASES = [
    Case("relu_forward", _unary()),
    Case("relu_forward", _unary(LARGE), name="large"),
    Case("relu_backward", _backward("relu")),
    Case("relu_backward", _backward("relu", LARGE), name="large"),
    Case("sigmoid_forward", _unary()),
    Case("sigmoid_backward", _backward("sigmoid")),
    Case("tanh_forward", _unary()),
    Case("tanh_backward", _backward("tanh")),
    Case("add_relu_forward", _add_relu()),
    Case("add_relu_forward", _add_relu(LARGE), name="large"),
    Case("softmax_forward", _softmax),
    Case("log_softmax_forward", _softmax),
]
