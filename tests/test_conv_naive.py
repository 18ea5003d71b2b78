"""The im2col convolution against the seven-loop teaching version, on random shapes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import nn
from minicnn.backends.numpy.conv import (
    col2im,
    conv2d_backward,
    conv2d_forward,
    conv2d_forward_naive,
    conv2d_fused_forward,
    conv_output_size,
    im2col,
)


@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hmin = max(1, dilation[0] * (r - 1) + 1 - 2 * padding[0])  # smallest input the kernel fits
    wmin = max(1, dilation[1] * (s - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(hmin, hmin + 6)), draw(st.integers(wmin, wmin + 6))
    n = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, groups * cg, h, w))
    wt = rng.standard_normal((groups * kg, cg, r, s))
    b = rng.standard_normal(groups * kg) if bias else None
    return x, wt, b, stride, padding, dilation, groups


@given(problem=conv_problems())
def test_im2col_forward_matches_naive(problem):
    x, w, b, stride, padding, dilation, groups = problem
    want = conv2d_forward_naive(x, w, b, stride, padding, dilation, groups)
    got = conv2d_forward(x, w, b, stride, padding, dilation, groups)
    assert got.shape == want.shape == (x.shape[0], w.shape[0],
                                       *conv_output_size(*x.shape[2:], *w.shape[2:], stride, padding, dilation))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@given(problem=conv_problems())
def test_float32_forward_matches_naive(problem):
    x, w, b, stride, padding, dilation, groups = problem
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    got = conv2d_forward(x32, w32, b32, stride, padding, dilation, groups)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, conv2d_forward_naive(x, w, b, stride, padding, dilation, groups),
                               rtol=1e-4, atol=1e-4)


@given(problem=conv_problems())
def test_col2im_is_the_adjoint_of_im2col(problem):
    """<im2col(x), c> == <x, col2im(c)> for all x, c: the identity conv backward relies on."""
    x, w, _, stride, padding, dilation, _ = problem
    cols = im2col(x, *w.shape[2:], stride, padding, dilation)
    c = np.random.default_rng(0).standard_normal(cols.shape)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * col2im(c, x.shape, stride, padding, dilation))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@given(problem=conv_problems())
def test_backward_is_the_adjoint_of_forward(problem):
    """<conv(x, w), dy> is linear in x and in w: dx and dw are its exact derivatives."""
    x, w, b, stride, padding, dilation, groups = problem
    y = conv2d_forward_naive(x, w, None, stride, padding, dilation, groups)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, x, w, stride, padding, dilation, groups)
    inner = np.sum(y * dy)
    np.testing.assert_allclose(np.sum(dx * x), inner, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.sum(dw * w), inner, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("residual,relu", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_forward_is_conv_bias_residual_relu(backend_name, residual, relu):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    want = conv2d_forward_naive(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                (1, 1), (1, 1), (1, 1), 2)
    res = rng.standard_normal(want.shape).astype(np.float32) if residual else None
    if residual:
        want = want + res
    if relu:
        want = np.maximum(want, 0)
    with mc.backend(backend_name) as be:
        got = be.OPS["conv2d_fused_forward"](be.asarray(x), be.asarray(w), be.asarray(b), (1, 1), (1, 1), (1, 1), 2,
                                             None if res is None else be.asarray(res), relu)
    np.testing.assert_allclose(mc.to_numpy(got), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        conv2d_fused_forward(x, w, b, (1, 1), (1, 1), (1, 1), 2, res, relu), want, rtol=1e-4, atol=1e-4
    )


@given(problem=conv_problems())
def test_every_backend_forward_matches_naive(backend_name, problem):
    """The same naive reference for every backend that loads (numba, cupy when present)."""
    x, w, b, stride, padding, dilation, groups = problem
    want = conv2d_forward_naive(x, w, b, stride, padding, dilation, groups)
    with mc.backend(backend_name):
        layer = nn.Conv2d(x.shape[1], w.shape[0], w.shape[2:], stride, padding, dilation, groups,
                          bias=b is not None).to(np.float64)
        layer.weight.data = w
        if b is not None:
            layer.bias.data = b
        got = mc.to_numpy(layer(x))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
