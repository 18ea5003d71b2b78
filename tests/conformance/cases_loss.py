"""Conformance cases: the losses, forward and backward (see ``__init__.py``).

Logits span [-80, 80], where a softmax or a log(1 + exp) computed naively overflows; losses are
0-d arrays in the input's dtype. Integer targets come in any layout too. The cross-entropy
backward takes the probabilities the reference forward returns. ``large`` crosses numba's
``SERIAL_MAX_WORK``.
"""
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import Case, array, dtypes

REF = backends.load("numpy").OPS
SHAPES = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
WIDE = 80.0


def _targets(data, n, c):
    t = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="targets seed")).integers(0, c, 2 * n)
    return t[::2] if data.draw(st.booleans(), label="strided targets") else t[:n].copy()


def _logits(data, large):
    dt = data.draw(dtypes())
    if large:
        n, c = data.draw(st.integers(400, 600)), 100
    else:
        n, c = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 12))
    return array(data, (n, c), dt, -WIDE, WIDE)


def _ce(large):
    def draw(data):
        z = _logits(data, large)
        return (z, _targets(data, *z.shape)), {}
    return draw


def _ce_backward(data):
    z = _logits(data, False)
    t = _targets(data, *z.shape)
    _, probs = REF["softmax_cross_entropy_forward"](z, t)
    return (probs, t), {}


def _pair(low, large=False):
    """(prediction, target) of one drawn shape; targets in [0, 1) for BCE, anywhere for MSE."""
    def draw(data):
        dt = data.draw(dtypes())
        shape = (data.draw(st.integers(400, 600)), 100) if large else data.draw(SHAPES, label="shape")
        return (array(data, shape, dt, -WIDE, WIDE), array(data, shape, dt, low, 1.0)), {}
    return draw


CASES = [
    Case("softmax_cross_entropy_forward", _ce(False)),
    Case("softmax_cross_entropy_forward", _ce(True), name="large"),
    Case("softmax_cross_entropy_backward", _ce_backward),
    Case("bce_with_logits_forward", _pair(0.0)),
    Case("bce_with_logits_forward", _pair(0.0, True), name="large"),
    Case("bce_with_logits_backward", _pair(0.0)),
    Case("mse_forward", _pair(-WIDE)),
    Case("mse_backward", _pair(-WIDE)),
]
