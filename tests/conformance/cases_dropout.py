"""Conformance cases: inverted dropout (see ``__init__.py``).

The forward's mask is random, so its check depends on where the backend draws from. A backend
whose ``generator()`` is a numpy Generator (numpy, numba) receives a generator in the same state
as the reference's and must drop exactly the same units: y and mask bit for bit. Another backend
draws from its own generator (the runner seeds it), and its mask is checked for what any draw
must satisfy: values 0 or 1/(1-p) in x's dtype, y = x * mask, and a kept fraction within 5
standard deviations of 1 - p. The backward is a product, compared exactly.
"""
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import F32, Case, array, assert_close, dtypes

REF = backends.load("numpy").OPS
SHAPES = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
P = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]), st.floats(0.0, 1.0))


def _forward(data):
    dt = data.draw(dtypes())
    shape = data.draw(SHAPES, label="shape")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="generator seed"))
    return (array(data, shape, dt), data.draw(P, label="p"), rng), {}


def _check_mask(ref, got, args, kwargs, be):
    x, p, _ = args
    y, mask = (np.asarray(be.to_numpy(g)) for g in got)
    ry, rmask = ref
    assert y.shape == mask.shape == x.shape and y.dtype == ry.dtype and mask.dtype == rmask.dtype
    if isinstance(be.generator(), np.random.Generator):
        assert np.array_equal(mask, rmask), "mask differs from the reference's for the same generator state"
        assert np.array_equal(y, ry), "y differs from the reference's for the same generator state"
        return
    keep = x.dtype.type(1.0) / x.dtype.type(1.0 - p) if p < 1 else x.dtype.type(0)
    assert np.all((mask == 0) | (mask == keep)), f"mask holds values other than 0 and {keep}"
    assert_close(y, x * mask, F32, "y = x * mask")
    if 0 < p < 1:
        kept, n = float(np.count_nonzero(mask)), mask.size
        assert abs(kept - n * (1 - p)) <= 5 * np.sqrt(n * p * (1 - p)) + 1, f"kept {kept:.0f} of {n} at p={p}"


def _backward(data):
    dt = data.draw(dtypes())
    shape = data.draw(SHAPES, label="shape")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="generator seed"))
    _, mask = REF["dropout_forward"](array(data, shape, dt), data.draw(P, label="p"), rng)
    return (array(data, shape, dt), mask), {}


CASES = [
    Case("dropout_forward", _forward, compare=_check_mask),
    Case("dropout_backward", _backward, tol32=0, tol64=0),
]
