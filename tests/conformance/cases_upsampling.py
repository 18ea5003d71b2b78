"""Conformance cases: transposed convolution and nearest/bilinear upsampling (see ``__init__.py``).

Transposed convolutions are drawn over strides, paddings, output paddings (below the stride or
the dilation, PyTorch's rule), dilations, groups and odd sizes, plus a ``large`` case whose
batch spans several GEMM chunks. Upsampling is drawn with an explicit output size (up and
down) or with the scale factors PyTorch passes on (non-integer ones included), align_corners
both ways; the ``specials`` nearest case puts infinities and NaNs in the input, which a copy
must carry through unchanged.
"""
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from minicnn.shapes import conv_transpose_output_size

from . import Case, array, dtypes


@st.composite
def _conv_t(draw, large=False):
    G = draw(st.integers(1, 2))
    Cg, Og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dil))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    N = draw(st.integers(20, 40)) if large else draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    OH, OW = conv_transpose_output_size(H, W, R, S, stride, pad, dil, op)
    assume(OH >= 1 and OW >= 1)
    return (N, G * Cg, H, W), (G * Cg, Og, R, S), stride, pad, op, dil, G


def _conv_t_forward(large):
    def draw(data):
        dt = data.draw(dtypes())
        xs, ws, stride, pad, op, dil, G = data.draw(_conv_t(large), label="geometry")
        b = array(data, (ws[1] * G,), dt) if data.draw(st.booleans(), label="bias") else None
        return (array(data, xs, dt), array(data, ws, dt), b, stride, pad, op, dil, G), {}
    return draw


def _conv_t_backward(large):
    def draw(data):
        dt = data.draw(dtypes())
        xs, ws, stride, pad, op, dil, G = data.draw(_conv_t(large), label="geometry")
        OH, OW = conv_transpose_output_size(xs[2], xs[3], ws[2], ws[3], stride, pad, dil, op)
        dy = array(data, (xs[0], ws[1] * G, OH, OW), dt)
        need = {k: data.draw(st.booleans(), label=k) for k in ("need_dx", "need_dw", "need_db")}
        return (dy, array(data, xs, dt), array(data, ws, dt), stride, pad, op, dil, G), need
    return draw


@st.composite
def _resize(draw):
    """(x shape, output size, scales) as ``interpolate`` would pass them on."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if draw(st.booleans()):
        return shape, (draw(st.integers(1, 13)), draw(st.integers(1, 13))), None
    factors = tuple(draw(st.sampled_from([0.5, 0.75, 1.0, 1.1, 1.5, 1.7, 2.0, 2.5, 3.0])) for _ in range(2))
    out = (int(shape[2] * factors[0]), int(shape[3] * factors[1]))
    assume(min(out) >= 1)
    return shape, out, factors


def _upsample(mode, backward, specials=False):
    def draw(data):
        dt = data.draw(dtypes())
        shape, out, scales = data.draw(_resize(), label="resize")
        extra = (data.draw(st.booleans(), label="align_corners"),) if mode == "bilinear" else ()
        if backward:
            return (array(data, shape[:2] + out, dt), shape, *extra, scales), {}
        x = array(data, shape, dt)
        if specials:
            rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="specials seed"))
            x[rng.random(x.shape) < 0.2] = rng.choice([np.inf, -np.inf, np.nan])
        return (x, out, *extra, scales), {}
    return draw


CASES = [
    Case("conv_transpose2d_forward", _conv_t_forward(False)),
    Case("conv_transpose2d_forward", _conv_t_forward(True), name="large"),
    Case("conv_transpose2d_backward", _conv_t_backward(False)),
    Case("conv_transpose2d_backward", _conv_t_backward(True), name="large"),
    Case("upsample_nearest2d_forward", _upsample("nearest", False)),
    Case("upsample_nearest2d_forward", _upsample("nearest", False, specials=True), name="specials", tol32=0, tol64=0),
    Case("upsample_nearest2d_backward", _upsample("nearest", True)),
    Case("upsample_bilinear2d_forward", _upsample("bilinear", False)),
    Case("upsample_bilinear2d_backward", _upsample("bilinear", True)),
]
