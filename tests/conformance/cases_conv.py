"""Conformance cases: 2-D convolution forward, backward and the fused inference forward (see
``__init__.py`` for the format).

The plain cases draw every argument on small shapes: kernel 1-4 per side, stride 1-3,
padding 0-2, dilation 1-2, groups 1-3 (depthwise too), odd sizes, batch 1, bias or none,
residual and ReLU, the ``need_*`` flags, float32 and float64, any layout. Three more are sized
to cross the thresholds at which the fast CPU paths split their work (numba's values; a GPU
backend meets its multi-block launches there too):

- ``chunks``: 5-6 images of 23-26 px with 16 channels, 3x3. im2col unfolds ``TARGET_COLUMNS``
  (2048) columns per GEMM, here 4 images, so a batch runs as a full chunk and a ragged one of 1
  or 2 images (one image's GEMM writes straight into y; the backward adds dW chunk by chunk),
  and the full chunk's GEMM has more than 2 x ``SPLIT_MIN_MACS`` (2M) multiply-adds, so it is
  split across threads (``_threads.matmul``).
- ``winograd``: 3x3 stride-1 layers with 32-36 channels, 3 or 5 images, outputs of 16-32 px
  (half of them "same" layers with sides that are multiples of 4): the rule picks Winograd
  F(4x4) (tiles that divide the output) or F(2x2) (ragged ones) for the forward, and the backward
  takes dX and dW from Winograd too; 5 images of 32x32 make several chunks of tiles. Read-only
  filters take the constant-filter path (cached transforms, lower floors).
- ``pointwise``: 1x1 kernels without padding, planes up to 50x50: the batched GEMM over big
  planes, the gathered chunks of small ones, and single-image chunks whose input is the column
  matrix itself.
"""
from hypothesis import assume
from hypothesis import strategies as st
import numpy as np

from minicnn.shapes import conv_output_size

from . import F32_WINOGRAD, Case, array, dtypes


@st.composite
def _geometry(draw):
    """(x shape, w shape, stride, padding, dilation, groups) with every argument drawn, small."""
    n = draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    groups = draw(st.sampled_from([1, 2, 3]))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    depthwise = groups > 1 and draw(st.booleans())
    c, k = (groups, groups * kg) if depthwise else (groups * cg, groups * kg)
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    p, q = conv_output_size(h, w, r, s, stride, padding, dilation)
    assume(p >= 1 and q >= 1)
    return (n, c, h, w), (k, c // groups, r, s), stride, padding, dilation, groups


@st.composite
def _chunks(draw):
    n, k = draw(st.integers(5, 6)), draw(st.sampled_from([16, 20]))
    h, w = draw(st.integers(23, 26)), draw(st.integers(23, 26))
    return (n, 16, h, w), (k, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1


@st.composite
def _winograd(draw):
    """Half the draws "same" layers whose sides are multiples of 4 (F(4x4) tiles divide the output
    and dX), half any padding and any output size (ragged tiles)."""
    n = draw(st.sampled_from([3, 5]))
    c, k = draw(st.integers(32, 36)), draw(st.integers(32, 36))
    if draw(st.booleans()):
        n, padding, side = 5, (1, 1), st.sampled_from([24, 28, 32])
    else:
        padding, side = (draw(st.integers(0, 2)), draw(st.integers(0, 2))), st.integers(16, 32)
    p, q = draw(side), draw(side)
    return (n, c, p + 2 - 2 * padding[0], q + 2 - 2 * padding[1]), (k, c, 3, 3), (1, 1), padding, (1, 1), 1


@st.composite
def _pointwise(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c, k = groups * draw(st.integers(1, 8)), groups * draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 50)), draw(st.integers(1, 50))
    stride = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (2, 2)]))
    return (n, c, h, w), (k, c // groups, 1, 1), stride, (0, 0), (1, 1), groups


GEOMETRIES = {"": _geometry, "chunks": _chunks, "winograd": _winograd, "pointwise": _pointwise}


def _arrays(data, geometry, dt):
    xs, ws, stride, padding, dilation, groups = data.draw(GEOMETRIES[geometry](), label="geometry")
    x, w = array(data, xs, dt), array(data, ws, dt)
    if geometry == "winograd" and data.draw(st.booleans(), label="read-only filter"):
        w.flags.writeable = False  # a constant filter: the numba backend caches its transforms
    b = array(data, (ws[0],), dt) if data.draw(st.booleans(), label="bias") else None
    y_shape = (xs[0], ws[0]) + conv_output_size(xs[2], xs[3], ws[2], ws[3], stride, padding, dilation)
    return x, w, b, stride, padding, dilation, groups, y_shape


def _forward(geometry):
    def draw(data):
        x, w, b, stride, padding, dilation, groups, _ = _arrays(data, geometry, data.draw(dtypes()))
        return (x, w, b, stride, padding, dilation, groups), {}
    return draw


def _backward(geometry):
    def draw(data):
        dt = data.draw(dtypes())
        x, w, _, stride, padding, dilation, groups, y_shape = _arrays(data, geometry, dt)
        need = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()), label="need dx, dw, db")
        return (array(data, y_shape, dt), x, w, stride, padding, dilation, groups, *need), {}
    return draw


def _fused(geometry):
    def draw(data):
        dt = data.draw(dtypes())
        x, w, b, stride, padding, dilation, groups, y_shape = _arrays(data, geometry, dt)
        residual = array(data, y_shape, dt) if data.draw(st.booleans(), label="residual") else None
        relu = data.draw(st.booleans(), label="relu")
        kwargs = {}
        if data.draw(st.booleans(), label="out"):
            kwargs["out"] = np.full(y_shape, np.nan, dt)  # what a compiled model passes: a C-contiguous buffer
        return (x, w, b, stride, padding, dilation, groups, residual, relu), kwargs
    return draw


CASES = [
    Case("conv2d_forward", _forward("")),
    Case("conv2d_forward", _forward("chunks"), name="chunks"),
    Case("conv2d_forward", _forward("winograd"), name="winograd", tol32=F32_WINOGRAD),
    Case("conv2d_forward", _forward("pointwise"), name="pointwise"),
    Case("conv2d_backward", _backward("")),
    Case("conv2d_backward", _backward("chunks"), name="chunks"),
    Case("conv2d_backward", _backward("winograd"), name="winograd", tol32=F32_WINOGRAD),
    Case("conv2d_backward", _backward("pointwise"), name="pointwise"),
    Case("conv2d_fused_forward", _fused("")),
    Case("conv2d_fused_forward", _fused("winograd"), name="winograd", tol32=F32_WINOGRAD),
]
