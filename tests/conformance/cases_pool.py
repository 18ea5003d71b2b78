"""Conformance cases: max, average and adaptive pooling, forward and backward (see ``__init__.py``).

Max pooling is compared exactly (tolerance 0): values and ``argmax`` are selections, and the
reference fixes every rule a backend could otherwise choose differently: the first maximum in
scan order wins a tie, a NaN wins (the last one in a regular window, the first in an adaptive
bin), the first real tap wins even at -inf, padding never wins, and a window that sees only
padding (possible with dilation) gives -inf and argmax -1. So the drawn inputs are rounded to
integers (ties) with -inf and NaN sprinkled in. Its backward sums the gradients routed to one
input in scan order on both sides and is exact too. Average pooling propagates NaN and -inf
as the reference's sums do; its values are compared at the usual tolerance.

``large`` cases (tens of thousands of values, many planes) are above numba's
``SERIAL_MAX_WORK``, so the rule itself sends them to the parallel kernels.
"""
from hypothesis import assume
from hypothesis import strategies as st
import numpy as np

from minicnn import backends
from minicnn.shapes import conv_output_size

from . import Case, array, dtypes

REF = backends.load("numpy").OPS


def _specials(data, x, nan=True):
    """Round ``x`` in place to integers (ties) and set about 10% to -inf and 5% to NaN."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="specials seed"))
    x[...] = np.round(x)
    x[rng.random(x.shape) < 0.1] = -np.inf
    if nan:
        x[rng.random(x.shape) < 0.05] = np.nan
    return x


@st.composite
def _window(draw, dilation=True):
    """(x shape, kernel, stride, padding, dilation) with padding at most half the kernel (PyTorch's rule)."""
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, r // 2)), draw(st.integers(0, s // 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    p, q = conv_output_size(shape[2], shape[3], r, s, stride, padding, dil)
    assume(p >= 1 and q >= 1)
    return shape, (r, s), stride, padding, dil


@st.composite
def _large_window(draw):
    shape = (draw(st.integers(4, 6)), 8, draw(st.integers(30, 40)), draw(st.integers(30, 40)))
    k, stride, padding = draw(st.sampled_from([((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)),
                                               ((3, 3), (1, 1), (1, 1))]))
    return shape, k, stride, padding, (1, 1)


def _max_input(data, large=False):
    dt = data.draw(dtypes())
    shape, k, stride, padding, dil = data.draw(_large_window() if large else _window(), label="window")
    x = array(data, shape, dt)
    if data.draw(st.booleans(), label="specials"):
        _specials(data, x)
    return x, k, stride, padding, dil


def _maxpool(large):
    def draw(data):
        x, k, stride, padding, dil = _max_input(data, large)
        return (x, k, stride, padding, dil), {"need_argmax": data.draw(st.booleans(), label="need_argmax")}
    return draw


def _maxpool_specials_per_plane(data):
    """A NaN or an infinity in some planes only, in an interior window, the corner and the far
    corner, beside planes without one (kernels that pool a plane again when a special went by
    must redo exactly those planes), at the strides and paddings ResNet and the digits net use."""
    x = array(data, (2, 5, 13, 14), np.float32)
    special = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]), label="special")
    if special is not None:
        x[0, 1, 4, 5] = special
        x[1, 3, 0, 0] = special
        x[1, 4, 12, 13] = special
    kernel, stride, padding = data.draw(st.sampled_from([(3, 2, 1), (3, 1, 1), (3, 2, 0), (2, 2, 0)]))
    return (x, (kernel,) * 2, (stride,) * 2, (padding,) * 2, (1, 1)), {
        "need_argmax": data.draw(st.booleans(), label="need_argmax")}


def _maxpool_backward(data):
    x, k, stride, padding, dil = _max_input(data)
    _, argmax = REF["maxpool2d_forward"](x, k, stride, padding, dil)  # ties, NaNs and -1 included
    return (array(data, argmax.shape, x.dtype), argmax, x.shape), {}


def _adaptive_input(data):
    dt = data.draw(dtypes())
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 11)),
             data.draw(st.integers(1, 11)))
    out = (data.draw(st.integers(1, 13)), data.draw(st.integers(1, 13)))  # larger than the input too: bins overlap
    return array(data, shape, dt), out


def _adaptive_max(data):
    x, out = _adaptive_input(data)
    if data.draw(st.booleans(), label="specials"):
        _specials(data, x)
    return (x, out), {}


def _maxpool_backward_adaptive(data):
    x, out = _adaptive_max(data)[0]
    _, argmax = REF["adaptive_maxpool2d_forward"](x, out)
    return (array(data, argmax.shape, x.dtype), argmax, x.shape), {}


def _avgpool(large):
    def draw(data):
        dt = data.draw(dtypes())
        shape, k, stride, padding, _ = data.draw(_large_window() if large else _window(dilation=False))
        x = array(data, shape, dt)
        if data.draw(st.booleans(), label="specials"):
            _specials(data, x)
        return (x, k, stride, padding, data.draw(st.booleans(), label="count_include_pad")), {}
    return draw


def _avgpool_backward(data):
    dt = data.draw(dtypes())
    shape, k, stride, padding, _ = data.draw(_window(dilation=False))
    p, q = conv_output_size(shape[2], shape[3], k[0], k[1], stride, padding, (1, 1))
    dy = array(data, shape[:2] + (p, q), dt)
    return (dy, shape, k, stride, padding, data.draw(st.booleans(), label="count_include_pad")), {}


def _adaptive_avg(data):
    x, out = _adaptive_input(data)
    if data.draw(st.booleans(), label="specials"):
        _specials(data, x)
    return (x, out), {}


def _adaptive_avg_backward(data):
    x, out = _adaptive_input(data)
    return (array(data, x.shape[:2] + out, x.dtype), x.shape), {}


CASES = [
    Case("maxpool2d_forward", _maxpool(False), tol32=0, tol64=0),
    Case("maxpool2d_forward", _maxpool(True), name="large", tol32=0, tol64=0),
    Case("maxpool2d_forward", _maxpool_specials_per_plane, name="specials_per_plane", tol32=0, tol64=0),
    Case("maxpool2d_backward", _maxpool_backward, tol32=0, tol64=0),
    Case("maxpool2d_backward", _maxpool_backward_adaptive, name="adaptive", tol32=0, tol64=0),
    Case("avgpool2d_forward", _avgpool(False)),
    Case("avgpool2d_forward", _avgpool(True), name="large"),
    Case("avgpool2d_backward", _avgpool_backward),
    Case("adaptive_avgpool2d_forward", _adaptive_avg),
    Case("adaptive_avgpool2d_backward", _adaptive_avg_backward),
    Case("adaptive_maxpool2d_forward", _adaptive_max, tol32=0, tol64=0),
]
