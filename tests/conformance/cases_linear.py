"""Conformance cases: the fully connected layer, forward and backward (see ``__init__.py``).

Small drawn sizes with bias or none and the ``need_*`` flags; ``split`` is sized so that each
of the three products (y, dx, dW) has more than 2 x numba's ``SPLIT_MIN_MACS`` (2M)
multiply-adds, so ``_threads.matmul`` cuts it into slices that run on several threads.
"""
from hypothesis import strategies as st

from . import Case, array, dtypes


def _sizes(data, split):
    if split:  # 64*256*256 = 4.2M multiply-adds at least
        return data.draw(st.integers(64, 72)), data.draw(st.integers(256, 272)), data.draw(st.integers(256, 272))
    return data.draw(st.integers(1, 9)), data.draw(st.integers(1, 17)), data.draw(st.integers(1, 11))


def _forward(split):
    def draw(data):
        dt = data.draw(dtypes())
        n, f, o = _sizes(data, split)
        b = array(data, (o,), dt) if data.draw(st.booleans(), label="bias") else None
        return (array(data, (n, f), dt), array(data, (o, f), dt), b), {}
    return draw


def _backward(split):
    def draw(data):
        dt = data.draw(dtypes())
        n, f, o = _sizes(data, split)
        need = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()), label="need dx, dw, db")
        return (array(data, (n, o), dt), array(data, (n, f), dt), array(data, (o, f), dt), *need), {}
    return draw


CASES = [
    Case("linear_forward", _forward(False)),
    Case("linear_forward", _forward(True), name="split"),
    Case("linear_backward", _backward(False)),
    Case("linear_backward", _backward(True), name="split"),
]
