"""Conformance cases: padding, pooling with ceil_mode, max unpooling, channel dropout (see ``__init__.py``).

``pad2d`` and ``maxunpool2d`` move values without arithmetic, and their backwards sum at most a
few copies in a fixed order, so they are compared at the usual tolerance (exactly, in practice).
Max pooling with ``ceil_mode`` is compared exactly, as in ``cases_pool``: integer-rounded inputs
(ties) with -inf and NaN sprinkled in. The (N, C) channel-dropout mask must equal the
reference's bit for bit on a backend that draws from a numpy Generator (numpy, numba), and
otherwise hold only 0 and 1/(1-p) with whole planes scaled by it.
"""
from hypothesis import assume
from hypothesis import strategies as st
import numpy as np

from minicnn import backends
from minicnn.shapes import PAD_MODES, check_pad2d, conv_output_size

from . import F32, Case, array, assert_close, dtypes

REF = backends.load("numpy").OPS


def _sprinkle(data, x):
    """Round ``x`` to integers (ties) and set about 10% to -inf and 5% to NaN."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="specials seed"))
    x[...] = np.round(x)
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


@st.composite
def _ceil_window(draw, dilation=True):
    """(x shape, kernel, stride, padding, dilation) of a pool whose ceil_mode output is at least 1x1."""
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, r // 2)), draw(st.integers(0, s // 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 11)), draw(st.integers(1, 11)))
    p, q = conv_output_size(shape[2], shape[3], r, s, stride, padding, dil, ceil_mode=True)
    assume(p >= 1 and q >= 1)
    return shape, (r, s), stride, padding, dil


def _maxpool_ceil(data):
    dt = data.draw(dtypes())
    shape, k, stride, padding, dil = data.draw(_ceil_window(), label="window")
    x = array(data, shape, dt)
    if data.draw(st.booleans(), label="specials"):
        _sprinkle(data, x)
    return (x, k, stride, padding, dil), {"need_argmax": data.draw(st.booleans(), label="need_argmax"),
                                          "ceil_mode": True}


def _maxpool_ceil_backward(data):
    (x, k, stride, padding, dil), _ = _maxpool_ceil(data)
    _, argmax = REF["maxpool2d_forward"](x, k, stride, padding, dil, ceil_mode=True)
    return (array(data, argmax.shape, x.dtype), argmax, x.shape), {}


def _avgpool_ceil(data):
    dt = data.draw(dtypes())
    shape, k, stride, padding, _ = data.draw(_ceil_window(dilation=False), label="window")
    return (array(data, shape, dt), k, stride, padding, data.draw(st.booleans(), label="count_include_pad")), {
        "ceil_mode": True}


def _avgpool_ceil_backward(data):
    dt = data.draw(dtypes())
    shape, k, stride, padding, _ = data.draw(_ceil_window(dilation=False), label="window")
    p, q = conv_output_size(shape[2], shape[3], k[0], k[1], stride, padding, (1, 1), ceil_mode=True)
    return (array(data, shape[:2] + (p, q), dt), shape, k, stride, padding,
            data.draw(st.booleans(), label="count_include_pad")), {"ceil_mode": True}


@st.composite
def _unpool_geometry(draw):
    """(N, C, H, W) of the pooled input and (OH, OW) of the unpooled plane, OH*OW >= H*W."""
    n, c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    oh, ow = draw(st.integers(h, 2 * h + 1)), draw(st.integers(w, 2 * w + 1))
    return (n, c, h, w), (oh, ow)


def _unpool_indices(data, shape, out):
    """Per plane: distinct random positions, or max pooling's own indices (repeats included)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="indices seed"))
    if data.draw(st.booleans(), label="from a max pool"):
        k = data.draw(st.integers(2, 3), label="pool kernel")
        src = rng.standard_normal(shape[:2] + (out[0] + k, out[1] + k))
        _, idx = REF["maxpool2d_forward"](src[:, :, :out[0], :out[1]], (k, k), (1, 1), (k // 2, k // 2))
        idx = idx[:, :, :shape[2], :shape[3]]
        if idx.shape == tuple(shape):
            return np.ascontiguousarray(idx)
    flat = [rng.permutation(out[0] * out[1])[:shape[2] * shape[3]] for _ in range(shape[0] * shape[1])]
    return np.array(flat, dtype=np.int64).reshape(shape)


def _unpool_forward(data):
    dt = data.draw(dtypes())
    shape, out = data.draw(_unpool_geometry(), label="geometry")
    return (array(data, shape, dt), _unpool_indices(data, shape, out), out), {}


def _unpool_backward(data):
    dt = data.draw(dtypes())
    shape, out = data.draw(_unpool_geometry(), label="geometry")
    return (array(data, shape[:2] + out, dt), _unpool_indices(data, shape, out)), {}


@st.composite
def _pad_geometry(draw):
    """(x shape, (left, right, top, bottom), mode) within PyTorch's limits for that mode."""
    mode = draw(st.sampled_from(PAD_MODES))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    pads = tuple(draw(st.integers(-2, 4)) for _ in range(4))
    try:
        check_pad2d(shape, pads, mode)
    except ValueError:
        assume(False)
    return shape, pads, mode


def _pad_forward(data):
    dt = data.draw(dtypes())
    shape, pads, mode = data.draw(_pad_geometry(), label="geometry")
    x = array(data, shape, dt)
    if data.draw(st.booleans(), label="specials"):
        _sprinkle(data, x)
    value = data.draw(st.sampled_from([0.0, -1.5, 3.0]), label="value") if mode == "constant" else 0.0
    return (x, pads, mode, value), {}


def _pad_backward(data):
    dt = data.draw(dtypes())
    shape, pads, mode = data.draw(_pad_geometry(), label="geometry")
    out = (shape[2] + pads[2] + pads[3], shape[3] + pads[0] + pads[1])
    return (array(data, shape[:2] + out, dt), shape, pads, mode), {}


P = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.floats(0.0, 1.0))


def _dropout2d_forward(data):
    dt = data.draw(dtypes())
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5)),
             data.draw(st.integers(1, 5)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="generator seed"))
    return (array(data, shape, dt), data.draw(P, label="p"), rng), {}


def _check_channel_mask(ref, got, args, kwargs, be):
    x, p, _ = args
    y, mask = (np.asarray(be.to_numpy(g)) for g in got)
    ry, rmask = ref
    assert mask.shape == x.shape[:2] and y.shape == x.shape and y.dtype == ry.dtype and mask.dtype == rmask.dtype
    if isinstance(be.generator(), np.random.Generator):
        assert np.array_equal(mask, rmask), "mask differs from the reference's for the same generator state"
        assert np.array_equal(y, ry), "y differs from the reference's for the same generator state"
        return
    keep = x.dtype.type(1.0) / x.dtype.type(1.0 - p) if p < 1 else x.dtype.type(0)
    assert np.all((mask == 0) | (mask == keep)), f"mask holds values other than 0 and {keep}"
    assert_close(y, x * mask[:, :, None, None], F32, "y = x * mask per plane")


def _dropout2d_backward(data):
    (x, p, rng), _ = _dropout2d_forward(data)
    _, mask = REF["dropout2d_forward"](x, p, rng)
    return (array(data, x.shape, x.dtype), mask), {}


CASES = [
    Case("maxpool2d_forward", _maxpool_ceil, name="ceil_mode", tol32=0, tol64=0),
    Case("maxpool2d_backward", _maxpool_ceil_backward, name="ceil_mode", tol32=0, tol64=0),
    Case("avgpool2d_forward", _avgpool_ceil, name="ceil_mode"),
    Case("avgpool2d_backward", _avgpool_ceil_backward, name="ceil_mode"),
    Case("maxunpool2d_forward", _unpool_forward, tol32=0, tol64=0),
    Case("maxunpool2d_backward", _unpool_backward, tol32=0, tol64=0),
    Case("pad2d_forward", _pad_forward, tol32=0, tol64=0),
    Case("pad2d_backward", _pad_backward),
    Case("dropout2d_forward", _dropout2d_forward, compare=_check_channel_mask),
    Case("dropout2d_backward", _dropout2d_backward, tol32=0, tol64=0),
]
