"""The per-image im2col + GEMM convolution (``minicnn.backends.numba.conv_images``) against the
numpy reference: forward with its bias/ReLU epilogue, dX, dW and db, over strides, paddings,
dilations, kernel shapes and both float dtypes; and that ``conv2d_forward``/``conv2d_backward``
send the Fashion-MNIST convnet's layers to it.

Tolerances as in tests/test_numba_backend.py: float32 1e-5 of the output's scale (both sides
round each product-sum in float32, in different orders), float64 1e-10.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.backends import load
from minicnn.backends.numba import _gemm, conv, conv_images

from conformance import assert_close

pytestmark = pytest.mark.skipif(not _gemm.available(), reason="no OpenBLAS callable from numba's threads")

TOL = {np.float32: 1e-5, np.float64: 1e-10}

# (N, C, H, W, K, R, S, stride, padding, dilation)
SHAPES = [
    (6, 3, 9, 7, 5, 3, 3, (1, 1), (1, 1), (1, 1)),      # "same" width: the one-run unfold
    (5, 4, 10, 11, 3, 5, 5, (2, 1), (2, 0), (1, 2)),    # strided rows, dilated columns
    (4, 2, 12, 12, 4, 3, 2, (1, 2), (0, 3), (1, 1)),    # strided columns, padding wider than needed
    (7, 1, 28, 28, 8, 5, 5, (1, 1), (2, 2), (1, 1)),    # the Fashion net's first layer (fewer filters)
    (4, 6, 14, 14, 5, 5, 5, (1, 1), (2, 2), (1, 1)),    # its second layer's geometry
    (3, 2, 8, 9, 3, 3, 3, (1, 1), (3, 1), (2, 1)),      # taps that fall wholly in the padding
]


def _ref():
    return load("numpy").OPS


def _case(shape, dtype, seed=0):
    N, C, H, W, K, R, S = shape[:7]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True), (True, True)])
def test_forward_matches_reference(shape, dtype, bias, relu):
    x, w, b = _case(shape, dtype)
    stride, padding, dilation = shape[7:]
    want = _ref()["conv2d_forward"](x, w, b if bias else None, stride, padding, dilation, 1)
    if relu:
        want = np.maximum(want, 0)
    y = np.full(want.shape, np.nan, dtype)  # every cell must be written
    got = conv_images.forward_images(x, w, b if bias else None, y, stride, padding, dilation, relu)
    assert got is y
    assert_close(got, want, TOL[dtype], f"forward {shape}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(shape, dtype):
    x, w, _ = _case(shape, dtype)
    stride, padding, dilation = shape[7:]
    y = _ref()["conv2d_forward"](x, w, None, stride, padding, dilation, 1)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx_want, dw_want, db_want = _ref()["conv2d_backward"](dy, x, w, stride, padding, dilation, 1)
    dx, dw, db = conv_images.backward_images(dy, x, w, stride, padding, dilation, True, True, True)
    assert_close(dx, dx_want, TOL[dtype], f"dx {shape}")
    assert_close(dw, dw_want, TOL[dtype], f"dw {shape}")
    assert_close(db, db_want, TOL[dtype], f"db {shape}")
    dx_only, none, none_b = conv_images.backward_images(dy, x, w, stride, padding, dilation, True, False)
    none2, dw_only, _ = conv_images.backward_images(dy, x, w, stride, padding, dilation, False, True)
    none3, none4, db_only = conv_images.backward_images(dy, x, w, stride, padding, dilation, False, False, True)
    assert none is None and none_b is None and none2 is None and none3 is None and none4 is None
    assert_close(db_only, db_want, TOL[dtype], f"db only {shape}")
    assert_close(dx_only, dx_want, TOL[dtype], f"dx only {shape}")
    assert_close(dw_only, dw_want, TOL[dtype], f"dw only {shape}")


def test_fashion_layers_take_this_path_and_match(monkeypatch):
    """The convnet's two 5x5 layers go through conv_images from the ops, and give the reference's
    values; with the path declined they give the same values by the chunked path. The 32->64
    layer at batch 4 (196 2x2 tiles): from 320 tiles the rule sends it to Winograd F(2x2, 5x5)."""
    taken = []
    fwd, bwd = conv_images.forward_images, conv_images.backward_images
    monkeypatch.setattr(conv_images, "forward_images", lambda *a, **k: taken.append("fwd") or fwd(*a, **k))
    monkeypatch.setattr(conv_images, "backward_images", lambda *a, **k: taken.append("bwd") or bwd(*a, **k))
    assert conv.choose_variant((8, 32, 14, 14), (64, 32, 5, 5), (1, 1), (2, 2), (1, 1), 1) == "winograd_f2x2_5x5"
    for n, c, hw, k in [(8, 1, 28, 32), (4, 32, 14, 64)]:
        rng = np.random.default_rng(hw)
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((k, c, 5, 5)) / np.sqrt(25 * c)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        if not conv_images.applies(x.shape, w.shape, 1, hw, hw, np.float32):
            pytest.skip("this machine runs one numba thread: the path is not used")
        y = conv.conv2d_forward(x, w, b, (1, 1), (2, 2), (1, 1), 1)
        assert_close(y, _ref()["conv2d_forward"](x, w, b, (1, 1), (2, 2), (1, 1), 1), 1e-5, "forward")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        got = conv.conv2d_backward(dy, x, w, (1, 1), (2, 2), (1, 1), 1)
        want = _ref()["conv2d_backward"](dy, x, w, (1, 1), (2, 2), (1, 1), 1)
        for g, r, what in zip(got, want, ("dx", "dw", "db")):
            assert_close(g, r, 1e-5, what)
        with monkeypatch.context() as m:
            m.setattr(conv_images, "applies", lambda *a, **k: False)
            chunked = conv.conv2d_backward(dy, x, w, (1, 1), (2, 2), (1, 1), 1)
        for g, r, what in zip(got, chunked, ("dx", "dw", "db")):
            assert_close(g, r, 1e-5, f"{what} against the chunked path")
    assert taken == ["fwd", "bwd", "fwd", "bwd"]


def test_applies_declines_what_it_does_not_cover():
    assert not conv_images.applies((8, 4, 14, 14), (8, 2, 3, 3), 2, 14, 14, np.float32)      # grouped
    assert not conv_images.applies((8, 4, 14, 14), (8, 4, 3, 3), 1, 14, 14, np.int32)        # integer
    assert not conv_images.applies((1, 4, 14, 14), (8, 4, 3, 3), 1, 14, 14, np.float32)      # one image
    assert not conv_images.applies((8, 512, 7, 7), (512, 512, 3, 3), 1, 7, 7, np.float32)    # 49 cells
    assert not conv_images.applies((32, 16, 8, 8), (64, 16, 3, 3), 1, 8, 8, np.float32)      # 64 cells (digits)
    assert not conv_images.applies((8, 64, 56, 56), (64, 64, 3, 3), 1, 56, 56, np.float32)   # 7 MB of columns
