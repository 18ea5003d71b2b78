"""Conformance cases: the general class losses (cross-entropy, NLL) and the elementwise losses
with their options (see ``__init__.py``).

Class losses take logits of any layout (N, C, d1, ...) with class-index targets (some equal to
``ignore_index``, which is drawn in or out of [0, C)), class weights, label smoothing and every
reduction, or class-probability targets. Backward ops take the ``lse`` the reference forward
returns and ``dloss`` as a number, or an array of the loss's shape for ``'none'``. Elementwise
losses draw BCE's ``weight`` and ``pos_weight`` as shapes that broadcast to the input's, and
smooth L1's ``beta`` / Huber's ``delta`` (0 included for beta: plain L1). ``large`` cases cross
numba's ``SERIAL_MAX_WORK``.
"""
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import Case, array, dtypes

REF = backends.load("numpy").OPS
REDUCTIONS = st.sampled_from(["none", "mean", "sum"])
WIDE = 30.0


def _seed(data, label):
    return np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label=label))


def _class_args(data, large=False, soft_ok=True, log_input=False):
    """(x, targets, weight, ignore_index, dt, reduction, soft) for one class-loss call."""
    dt = data.draw(dtypes())
    if large:
        shape = (data.draw(st.integers(2, 3)), data.draw(st.integers(5, 8)), 48, 48)
    else:
        shape = (data.draw(st.integers(0, 5)), data.draw(st.integers(1, 6)))
        shape += tuple(data.draw(st.lists(st.integers(1, 4), max_size=2), label="spatial"))
    n, c = shape[:2]
    x = array(data, shape, dt, -WIDE, WIDE)
    if log_input:  # log-probabilities over axis 1
        x = REF["log_softmax_forward"](x)
    rng = _seed(data, "targets seed")
    soft = soft_ok and data.draw(st.booleans(), label="soft")
    if soft:
        y = rng.random(shape)
        targets = (y / np.maximum(y.sum(axis=1, keepdims=True), 1e-12)).astype(dt)
        ignore = -100
    else:
        targets = rng.integers(0, c, (n,) + shape[2:])
        ignore = data.draw(st.sampled_from([-100, -1, 0, c - 1]), label="ignore_index")
        targets[rng.random(targets.shape) < 0.2] = ignore
    weight = None
    if data.draw(st.booleans(), label="weighted"):
        weight = rng.uniform(0.2, 2.0, c).astype(dt)
    return x, targets, weight, ignore, dt, data.draw(REDUCTIONS), soft


def _dloss(data, reduction, shape, dt):
    if reduction == "none":
        return array(data, shape, dt)
    return float(data.draw(st.floats(-2, 2), label="dloss"))


def _ce_forward(large):
    def draw(data):
        x, t, w, ignore, dt, red, _ = _class_args(data, large)
        eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]), label="label_smoothing")
        return (x, t, w, ignore, eps, red), {}
    return draw


def _ce_backward(large):
    def draw(data):
        x, t, w, ignore, dt, red, _ = _class_args(data, large)
        eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]), label="label_smoothing")
        _, lse = REF["cross_entropy_forward"](x, t, w, ignore, eps, red)
        return (x, lse, t, w, ignore, eps, red, _dloss(data, red, lse.shape, dt)), {}
    return draw


def _nll_forward(data):
    x, t, w, ignore, dt, red, _ = _class_args(data, soft_ok=False, log_input=True)
    return (x, t, w, ignore, red), {}


def _nll_backward(data):
    x, t, w, ignore, dt, red, _ = _class_args(data, soft_ok=False, log_input=True)
    return (x, t, w, ignore, red, _dloss(data, red, t.shape, dt)), {}


SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
LARGE = st.tuples(st.integers(2, 3), st.just(16), st.integers(44, 48), st.integers(44, 48))


def _broadcastable(data, shape, label):
    """A shape that broadcasts to ``shape``: trailing dims kept or set to 1, leading dims dropped."""
    keep = data.draw(st.integers(0, len(shape)), label=f"{label} ndim")
    sub = shape[len(shape) - keep:]
    return tuple(d if data.draw(st.booleans(), label=f"{label} dim") else 1 for d in sub)


def _elementwise(op, backward, low=-WIDE, large=False):
    """(pred, target, [extras], reduction[, dloss]) for an elementwise loss op."""
    def draw(data):
        dt = data.draw(dtypes())
        shape = data.draw(LARGE if large else SHAPES, label="shape")
        x = array(data, shape, dt, -WIDE, WIDE)
        t = array(data, shape, dt, low, 1.0) if op == "bce_with_logits" else array(data, shape, dt, -3.0, 3.0)
        red = data.draw(REDUCTIONS)
        extra = ()
        if op == "bce_with_logits":
            ws = [None if not data.draw(st.booleans(), label=f"has {n}") else
                  array(data, _broadcastable(data, shape, n), dt, 0.0, 3.0) for n in ("weight", "pos_weight")]
            extra = tuple(ws)
        elif op == "smooth_l1":
            extra = (data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.5]), label="beta"),)
        elif op == "huber":
            extra = (data.draw(st.sampled_from([0.3, 1.0, 2.5]), label="delta"),)
        args = (x, t) + extra + (red,)
        if backward:
            args += (_dloss(data, red, shape, dt),)
        return args, {}
    return draw


CASES = [
    Case("cross_entropy_forward", _ce_forward(False)),
    Case("cross_entropy_forward", _ce_forward(True), name="large"),
    Case("cross_entropy_backward", _ce_backward(False)),
    Case("cross_entropy_backward", _ce_backward(True), name="large"),
    Case("nll_forward", _nll_forward),
    Case("nll_backward", _nll_backward),
    Case("bce_with_logits_forward", _elementwise("bce_with_logits", False, 0.0), name="weighted"),
    Case("bce_with_logits_forward", _elementwise("bce_with_logits", False, 0.0, True), name="weighted-large"),
    Case("bce_with_logits_backward", _elementwise("bce_with_logits", True, 0.0), name="weighted"),
    Case("mse_forward", _elementwise("mse", False), name="reduction"),
    Case("mse_backward", _elementwise("mse", True), name="reduction"),
    Case("l1_forward", _elementwise("l1", False)),
    Case("l1_backward", _elementwise("l1", True)),
    Case("smooth_l1_forward", _elementwise("smooth_l1", False)),
    Case("smooth_l1_forward", _elementwise("smooth_l1", False, large=True), name="large"),
    Case("smooth_l1_backward", _elementwise("smooth_l1", True)),
    Case("smooth_l1_backward", _elementwise("smooth_l1", True, large=True), name="large"),
    Case("huber_forward", _elementwise("huber", False)),
    Case("huber_backward", _elementwise("huber", True)),
]
