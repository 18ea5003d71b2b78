"""The numba backend's own machinery, against the numpy reference where it computes.

Each op of the table is checked against the reference on drawn shapes by the conformance suite
(``tests/test_conformance.py`` with ``tests/conformance/cases_*.py``, both kernel forms). What
stays here is what only this backend has: its named conv variants (each one, forced) and the
rule that picks among them, Winograd's transforms and its dX/dW paths, the chunking and unfold
modes of im2col, the three forms of max pooling, the fused stem, the GEMM split over threads,
the constant-filter cache, the serial twins, workspaces and the block pool, its error messages,
and whole models run on it.

Tolerances (float32, relative to the largest reference value, so a tolerance means "this many
units of the output's scale"):

- GEMM and loop paths (im2col_gemm, pointwise_gemm, direct, pooling, batchnorm, elementwise):
  1e-5. Both sides round each product-sum in float32, in different orders; the observed
  differences are a few 1e-7.
- Winograd F(2x2, 3x3): 1e-5 as well; its transforms only add/subtract and halve, and the
  measured error matches GEMM's (~4e-7).
- Winograd F(4x4, 3x3): 2e-4. Its transforms multiply by up to 8 and divide by up to 24, so each
  tile's rounding is amplified; measured max relative error against float64 is 5e-6..1.5e-5 on
  ResNet-18 layers (docs/kernels.md) and grows like sqrt(C); 2e-4 leaves room for the random
  shapes here while still catching any wrong coefficient (those give errors of order 1).

float64 agreement uses 1e-10 everywhere (F(4x4) included: its amplification is ~1e2 on 1e-16).
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
import minicnn.backends.numba as nbk
from minicnn import backends
from minicnn.backends.numba import _filters, _threads, _tiles, conv, pool, winograd
from minicnn.models import resnet
from minicnn.ops import ARRAY_FUNCS, OP_NAMES, OPTIONAL

from conformance import assert_close

REF = backends.load("numpy").OPS
NB = nbk.OPS

F32_TOL = {"im2col_gemm": 1e-5, "pointwise_gemm": 1e-5, "direct": 1e-5,
           "winograd_f2x2_3x3": 1e-5, "winograd_f4x4_3x3": 2e-4, "winograd_f2x2_5x5": 2e-4}
F64_TOL = 1e-10


def tol_for(dtype, variant="im2col_gemm"):
    return F64_TOL if np.dtype(dtype) == np.float64 else F32_TOL[variant]


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def kernel_form(request):
    """Every test here runs twice: once with every kernel call on its serial twin, once with every
    call on the ``parallel=True`` kernel (the default rule sends small calls to the first, large
    ones to the second; the shapes here are mostly small, so without this the parallel forms
    would hardly be checked)."""
    with _threads.serial_below(2**62 if request.param == "serial" else 0):
        yield request.param


# -- the op table ----------------------------------------------------------------------------------

def test_backend_fills_the_whole_op_table():
    """Every op and array function, and every optional entry but those a host backend has no use
    for: the generator (dropout draws from the library's numpy Generator, as the reference does),
    graph capture, synchronize and tuning_key (nothing is queued; threads alone key a pick); the
    loaded table is this one."""
    assert nbk.NAME == "numba"
    host_defaults = {"generator", "capture_graph", "synchronize", "tuning_key"}
    assert set(NB) == set(OP_NAMES) | set(ARRAY_FUNCS) | (set(OPTIONAL) - host_defaults)
    a = np.ones(3)
    assert nbk.is_native(a) and nbk.asarray(a) is a and nbk.to_numpy(a) is a
    be = backends.load("numba")
    assert be.module is nbk and be is backends.load("numba")
    assert all(be.OPS[name] is fn for name, fn in NB.items())


def test_threading_layer_is_thread_safe_or_locked():
    layer = nbk.threading_layer()
    assert layer in ("tbb", "omp", "workqueue")
    assert _threads.needs_lock() == (layer == "workqueue")


# -- convolution -----------------------------------------------------------------------------------

@st.composite
def conv_case(draw, winograd_only=False, kernel=3):
    """A convolution with every argument drawn: odd sizes, batch 1, all stride/padding/dilation/groups.
    ``winograd_only``: a ``kernel`` x ``kernel`` stride-1 ungrouped one, any padding up to kernel - 1."""
    n = draw(st.integers(1, 3))
    if winograd_only:
        r = s = kernel
        stride = dilation = (1, 1)
        groups = 1
        padding = (draw(st.integers(0, kernel - 1)), draw(st.integers(0, kernel - 1)))
    else:
        r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        groups = draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.integers(1, 3))
    kg = draw(st.integers(1, 3))
    depthwise = not winograd_only and draw(st.booleans()) and groups > 1
    c, k = (groups, groups * kg) if depthwise else (groups * cg, groups * kg)
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    assume(p >= 1 and q >= 1)
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return (n, c, h, w), (k, c // groups, r, s), bias, stride, padding, dilation, groups, seed


def _conv_arrays(case, dtype):
    xs, ws, bias, stride, padding, dilation, groups, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return x, w, b, stride, padding, dilation, groups, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20, deadline=None)
@given(case=conv_case())
def test_conv_every_variant_matches_reference(case, dtype):
    x, w, b, stride, padding, dilation, groups, rng = _conv_arrays(case, dtype)
    want = REF["conv2d_forward"](x, w, b, stride, padding, dilation, groups)
    residual = rng.standard_normal(want.shape).astype(dtype)
    want_fused = np.maximum(want + residual, 0)
    ran = 0
    for name, fn in conv.VARIANTS.items():
        if not conv.supports(name, x.shape, w.shape, stride, padding, dilation, groups):
            continue
        ran += 1
        tol = tol_for(dtype, name)
        assert_close(fn(x, w, b, stride, padding, dilation, groups), want, tol, name)
        assert_close(fn(x, w, b, stride, padding, dilation, groups, residual=residual, relu=True),
                     want_fused, tol, f"{name} fused")
    assert ran >= 2  # im2col_gemm and direct take every shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20, deadline=None)
@given(case=conv_case(winograd_only=True))
def test_winograd_on_3x3_stride1_shapes(case, dtype):
    x, w, b, stride, padding, dilation, groups, rng = _conv_arrays(case, dtype)
    want = REF["conv2d_forward"](x, w, b, stride, padding, dilation, groups)
    residual = rng.standard_normal(want.shape).astype(dtype)
    for name in ("winograd_f2x2_3x3", "winograd_f4x4_3x3"):
        fn = conv.VARIANTS[name]
        assert_close(fn(x, w, b, stride, padding, dilation, groups), want, tol_for(dtype, name), name)
        got = fn(x, w, b, stride, padding, dilation, groups, residual=residual, relu=False)
        assert_close(got, want + residual, tol_for(dtype, name), f"{name} + residual")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20, deadline=None)
@given(case=conv_case(winograd_only=True, kernel=5))
def test_winograd_on_5x5_stride1_shapes(case, dtype):
    """F(2x2, 5x5) forward, with bias, residual and ReLU, and its dW, on odd shapes and every padding."""
    x, w, b, stride, padding, dilation, groups, rng = _conv_arrays(case, dtype)
    want = REF["conv2d_forward"](x, w, b, stride, padding, dilation, groups)
    residual = rng.standard_normal(want.shape).astype(dtype)
    fn = conv.VARIANTS["winograd_f2x2_5x5"]
    tol = tol_for(dtype, "winograd_f2x2_5x5")
    assert_close(fn(x, w, b, stride, padding, dilation, groups), want, tol, "forward")
    got = fn(x, w, b, stride, padding, dilation, groups, residual=residual, relu=True)
    assert_close(got, np.maximum(want + residual, 0), tol, "forward + residual, ReLU")
    dy = rng.standard_normal(want.shape).astype(dtype)
    dw = winograd.backward_dw(x, dy, padding, 2, 5)
    assert dw.shape == w.shape and dw.dtype == np.dtype(dtype)
    assert_close(dw, REF["conv2d_backward"](dy, x, w, stride, padding, dilation, groups)[1], tol, "dw")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["winograd_f2x2_3x3", "winograd_f4x4_3x3", "winograd_f2x2_5x5", None])
@pytest.mark.parametrize("n,c,k,hw,padding", [(2, 3, 5, (9, 11), (1, 1)), (4, 8, 6, (16, 16), (0, 2)),
                                              (1, 4, 4, (3, 4), (2, 0)), (3, 2, 7, (13, 5), (1, 2))])
def test_conv_backward_dx_by_winograd(n, c, k, hw, padding, variant, dtype):
    """3x3 (and, for F(2x2, 5x5), 5x5) stride-1 dX as the Winograd forward conv of dY with the
    rotated, transposed filter, for every padding it is defined for (the rule's pick when variant
    is None)."""
    r = 5 if variant == "winograd_f2x2_5x5" else 3
    padding = (padding[0] + r - 3, padding[1] + r - 3)
    rng = np.random.default_rng(n * 100 + c)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = rng.standard_normal((k, c, r, r)).astype(dtype)
    y = REF["conv2d_forward"](x, w, None, (1, 1), padding, (1, 1), 1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = REF["conv2d_backward"](dy, x, w, (1, 1), padding, (1, 1), 1)
    with conv.prefer_variant(variant):
        picked = conv.choose_variant(dy.shape, (c, k, r, r), (1, 1), (r - 1 - padding[0], r - 1 - padding[1]),
                                     (1, 1), 1)
        assert conv._dx_by_winograd(dy, w, (1, 1), padding, (1, 1), 1, x.shape) is None or picked.startswith("winograd")
        got = NB["conv2d_backward"](dy, x, w, (1, 1), padding, (1, 1), 1)
    tol = tol_for(dtype, picked if picked.startswith("winograd") else "im2col_gemm")
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(g, r, tol, f"{name} ({picked})")
    if variant is not None:
        assert picked == variant  # the forced variant really ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("n,c,k,hw,padding,chunk_tiles", [
    (2, 3, 5, (9, 11), (1, 1), 256), (4, 8, 6, (16, 16), (0, 2), 8), (1, 4, 4, (3, 4), (2, 0), 256),
    (3, 2, 7, (13, 5), (1, 2), 1), (5, 6, 3, (8, 8), (0, 0), 20)])
def test_conv_dw_by_winograd(n, c, k, hw, padding, chunk_tiles, tile, dtype, monkeypatch):
    """dW as G^T [sum over tiles of (A dY A^T) * (B^T d B)] G equals the reference, for ragged
    tiles, every padding, and chunks of one image, several, or all (partial sums added)."""
    monkeypatch.setattr(winograd, "DW_TARGET_TILES", chunk_tiles)
    rng = np.random.default_rng(n * 10 + c + tile)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    dy = rng.standard_normal(REF["conv2d_forward"](x, w, None, (1, 1), padding, (1, 1), 1).shape).astype(dtype)
    want = REF["conv2d_backward"](dy, x, w, (1, 1), padding, (1, 1), 1)[1]
    got = winograd.backward_dw(x, dy, padding, tile, 3)
    assert got.shape == w.shape and got.dtype == np.dtype(dtype)
    assert_close(got, want, tol_for(dtype, f"winograd_f{tile}x{tile}_3x3"), f"dw F({tile}x{tile})")


def test_conv_dw_by_winograd_where_the_rule_picks_it():
    """The backward takes dW from Winograd exactly where the forward rule picks Winograd for a
    writeable filter, and the result matches the reference at a ResNet-like shape."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 32, 16, 16)).astype(np.float32)  # 192 4x4 tiles
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((12, 32, 16, 16)).astype(np.float32)
    assert conv.choose_variant(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1) == "winograd_f4x4_3x3"
    dw = conv._dw_by_winograd(dy, x, w, (1, 1), (1, 1), (1, 1), 1)
    want = REF["conv2d_backward"](dy, x, w, (1, 1), (1, 1), (1, 1), 1)
    assert_close(dw, want[1], tol_for(np.float32, "winograd_f4x4_3x3"), "dw by rule")
    got = NB["conv2d_backward"](dy, x, w, (1, 1), (1, 1), (1, 1), 1)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(g, r, tol_for(np.float32, "winograd_f4x4_3x3"), name)
    # not for shapes Winograd cannot do, nor where the rule prefers the GEMM
    assert conv._dw_by_winograd(dy, x, w, (1, 1), (1, 1), (1, 1), 2) is None
    assert conv._dw_by_winograd(dy[:, :, ::2, ::2], x, w, (2, 2), (1, 1), (1, 1), 1) is None
    assert conv._dw_by_winograd(dy[:1, :, :4, :4], x[:1, :, :4, :4], w, (1, 1), (1, 1), (1, 1), 1) is None
    few = x[:, :8]  # too few input channels
    assert conv._dw_by_winograd(dy, few, w[:, :8], (1, 1), (1, 1), (1, 1), 1) is None


def test_conv_backward_dx_by_winograd_only_where_defined():
    w = np.zeros((32, 32, 3, 3), np.float32)
    dy = np.zeros((8, 32, 32, 32), np.float32)
    with conv.prefer_variant("winograd_f4x4_3x3"):
        assert conv._dx_by_winograd(dy, w, (1, 1), (1, 1), (1, 1), 1, dy.shape) is not None
        for stride, padding, dilation, groups in [((2, 2), (1, 1), (1, 1), 1), ((1, 1), (3, 3), (1, 1), 1),
                                                  ((1, 1), (1, 1), (2, 2), 1), ((1, 1), (1, 1), (1, 1), 2)]:
            assert conv._dx_by_winograd(dy, w, stride, padding, dilation, groups, dy.shape) is None
    assert conv._dx_by_winograd(dy, np.zeros((32, 32, 7, 7), np.float32), (1, 1), (1, 1), (1, 1), 1, dy.shape) is None
    w5 = np.zeros((32, 32, 5, 5), np.float32)
    assert conv._dx_by_winograd(dy, w5, (1, 1), (5, 5), (1, 1), 1, dy.shape) is None  # padding beyond 4: no dX conv
    with conv.prefer_variant("winograd_f2x2_5x5"):
        assert conv._dx_by_winograd(dy, w5, (1, 1), (2, 2), (1, 1), 1, dy.shape) is not None
    # by the rule: 8 * 8 * 8 4x4 tiles pay for the filter transform, one 8x8 image's 4 do not
    assert conv._dx_by_winograd(dy, w, (1, 1), (1, 1), (1, 1), 1, dy.shape) is not None
    assert 4 < conv.DX_WINOGRAD_MIN_TILES <= 512
    assert conv._dx_by_winograd(dy[:1, :, :8, :8], w, (1, 1), (1, 1), (1, 1), 1, (1, 32, 8, 8)) is None


def test_conv_chunking_covers_several_chunks(monkeypatch):
    """Chunks of 1 image (GEMM straight into y), of several (write-back epilogue) and a ragged last one."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    res = rng.standard_normal((5, 6, 9, 8)).astype(np.float32)
    want = REF["conv2d_forward"](x, w, b, (1, 1), (1, 1), (1, 1), 1)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want_bwd = REF["conv2d_backward"](dy, x, w, (1, 1), (1, 1), (1, 1), 1)
    for columns in (1, 2 * 72, 10**6):  # 1 image per chunk, 2 (ragged: 2+2+1), all 5
        monkeypatch.setattr(conv, "TARGET_COLUMNS", columns)
        for name in ("im2col_gemm", "direct"):
            got = conv.VARIANTS[name](x, w, b, (1, 1), (1, 1), (1, 1), 1, residual=res, relu=True)
            assert_close(got, np.maximum(want + res, 0), 1e-5, f"{name} columns={columns}")
        for g, r in zip(NB["conv2d_backward"](dy, x, w, (1, 1), (1, 1), (1, 1), 1), want_bwd):
            assert_close(g, r, 1e-5, f"backward columns={columns}")
    for tiles in (1, 40, 10**6):
        monkeypatch.setattr(winograd, "TARGET_TILES", tiles)
        for name in ("winograd_f2x2_3x3", "winograd_f4x4_3x3"):
            assert_close(conv.VARIANTS[name](x, w, b, (1, 1), (1, 1), (1, 1), 1), want, F32_TOL[name], name)
    w5 = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    want5 = REF["conv2d_forward"](x, w5, b, (1, 1), (2, 2), (1, 1), 1)
    dy5 = rng.standard_normal(want5.shape).astype(np.float32)
    want5_dw = REF["conv2d_backward"](dy5, x, w5, (1, 1), (2, 2), (1, 1), 1)[1]
    for tiles in (1, 40, 10**6):  # F(2x2, 5x5): 20 tiles an image, so 1, 2 (ragged: 2+2+1) and all 5 images
        monkeypatch.setattr(winograd, "F2_5X5_TARGET_TILES", tiles)
        got = conv.VARIANTS["winograd_f2x2_5x5"](x, w5, b, (1, 1), (2, 2), (1, 1), 1, residual=res, relu=True)
        assert_close(got, np.maximum(want5 + res, 0), F32_TOL["winograd_f2x2_5x5"], f"F(2x2, 5x5) tiles={tiles}")
        assert_close(winograd.backward_dw(x, dy5, (2, 2), 2, 5), want5_dw, F32_TOL["winograd_f2x2_5x5"],
                     f"F(2x2, 5x5) dw tiles={tiles}")


@settings(max_examples=25, deadline=None)
@given(case=conv_case(), n0=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_im2col_matches_reference_unfold(case, n0, seed):
    """The unfold itself, for a chunk starting at image n0, both ways (the gather table, and runs
    of rows, where strided layers read a phase-split copy), and its adjoint col2im: both ways give
    the reference fold exactly (each cell sums its taps in the same order)."""
    from minicnn.backends.numba.im2col import ROWS, TABLE, col2im, geometry, im2col
    from minicnn.backends.numpy.conv import col2im as ref_col2im
    from minicnn.backends.numpy.conv import im2col as ref_im2col
    (n, c, h, w), (_, _, r, s), _, stride, padding, dilation, _, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n0 + n + 1, c, h, w)).astype(np.float32)
    ref = ref_im2col(x[n0:n0 + n], r, s, stride, padding, dilation)  # (n, C, R, S, P, Q)
    P, Q = ref.shape[-2:]
    g = rng.standard_normal((c * r * s, n * P * Q)).astype(np.float32)
    want_fold = ref_col2im(g.reshape(c, r, s, n, P, Q).transpose(3, 0, 1, 2, 4, 5), (n, c, h, w),
                           stride, padding, dilation)
    for mode in (TABLE, ROWS):
        cols = np.full((c * r * s, n * P * Q), np.nan, dtype=np.float32)
        im2col(x, n0, n, cols, geometry(r, s, stride, padding, dilation, P, Q), mode=mode)
        assert np.array_equal(cols, ref.transpose(1, 2, 3, 0, 4, 5).reshape(c * r * s, n * P * Q)), mode
        dx = np.full((n0 + n + 1, c, h, w), np.nan, dtype=np.float32)
        col2im(g, dx, n0, n, geometry(r, s, stride, padding, dilation, P, Q), mode=mode)
        assert np.isnan(dx[:n0]).all() and np.isnan(dx[n0 + n:]).all(), mode  # other images untouched
        np.testing.assert_allclose(dx[n0:n0 + n], want_fold, rtol=1e-5, atol=1e-5, err_msg=str(mode))
        if mode == TABLE:
            fold_table = dx[n0:n0 + n].copy()
        else:
            assert np.array_equal(dx[n0:n0 + n], fold_table)


@pytest.mark.parametrize("kernel,stride,padding,dilation,hw", [
    ((3, 3), (1, 1), (1, 1), (1, 1), (7, 7)),     # ResNet's 3x3 "same" layers: one run per (c, r, s)
    ((3, 3), (1, 1), (2, 2), (2, 2), (6, 5)),     # dilated, still same-sized
    ((5, 5), (1, 1), (2, 2), (1, 1), (4, 9)),
    ((3, 3), (1, 1), (3, 1), (1, 1), (2, 6)),     # rows that never meet the image (all zero)
    ((3, 2), (1, 2), (1, 4), (1, 1), (5, 8)),     # strided columns whose phase rows happen to be Q long
    ((7, 7), (2, 2), (3, 3), (1, 1), (40, 38)),   # a stem: strided rows from the phase split
])
def test_im2col_rows_runs(kernel, stride, padding, dilation, hw):
    """The row-run unfold (including the path that copies all valid rows of one (channel, tap)
    as a single run, then zeroes the cells that fall in the padding) against the reference
    unfold, into NaN-filled output."""
    from minicnn.backends.numba.im2col import ROWS, geometry, im2col
    from minicnn.backends.numpy.conv import im2col as ref_im2col
    x = np.random.default_rng(5).standard_normal((3, 4, *hw)).astype(np.float32)
    ref = ref_im2col(x[1:3], *kernel, stride, padding, dilation)
    c, (P, Q) = x.shape[1], ref.shape[-2:]
    cols = np.full((c * kernel[0] * kernel[1], 2 * P * Q), np.nan, dtype=np.float32)
    im2col(x, 1, 2, cols, geometry(*kernel, stride, padding, dilation, P, Q), mode=ROWS)
    assert np.array_equal(cols, ref.transpose(1, 2, 3, 0, 4, 5).reshape(cols.shape))


def test_unfold_mode_rule():
    """Short or strided rows with a small table gather through it, and so does every fold with
    a small table; long unstrided rows, or a table past TABLE_MAX entries, copy row runs."""
    from minicnn.backends.numba.im2col import ROWS, TABLE, unfold_mode
    assert unfold_mode(3, 3, (1, 1), 4, 4) == TABLE        # the digits convnet
    assert unfold_mode(3, 3, (1, 1), 7, 7) == TABLE        # ResNet layer4
    assert unfold_mode(3, 3, (2, 2), 28, 28) == TABLE      # ResNet layer2's strided conv
    assert unfold_mode(3, 3, (1, 1), 28, 28) == ROWS       # ResNet layer2
    assert unfold_mode(3, 3, (1, 1), 28, 28, adjoint=True) == TABLE
    assert unfold_mode(3, 3, (1, 1), 56, 56) == ROWS       # ResNet layer1
    assert unfold_mode(7, 7, (2, 2), 112, 112, adjoint=True) == ROWS  # the stem: a 600k-entry table


@pytest.mark.parametrize("a_shape,b_shape,transpose_b", [
    ((64, 300), (300, 3000), False),           # columns split
    ((3000, 300), (300, 64), False),           # rows split
    ((36, 64, 70), (36, 70, 900), False),      # batch axis split
    ((1, 48, 90), (5, 1, 90, 800), False),     # a broadcast over the split batch axis
    ((1, 64, 3000), (1, 576, 3000), True),     # a transposed operand (conv backward's dW)
    ((8, 16), (16, 8), False),                 # too small to split: the calling thread alone
])
@pytest.mark.parametrize("where", ["numba", "pool"])
def test_matmul_splits_match_numpy(a_shape, b_shape, transpose_b, where, monkeypatch):
    from minicnn import _blas
    monkeypatch.setattr(_threads, "GEMM_THREADS", where)
    rng = np.random.default_rng(6)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    if transpose_b:
        b = b.swapaxes(-1, -2)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    before = _blas.blas_threads()
    out = np.full(want.shape, np.nan, dtype=np.float32)
    assert _threads.matmul(a, b, out) is out
    assert_close(out, want.astype(np.float32), 1e-5, f"matmul {a_shape} x {b_shape}")
    assert _blas.blas_threads() == before  # OpenBLAS gets its thread count back


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape,b_shape,ta,tb,parts", [
    ((64, 300), (300, 3000), False, False, 2),        # columns
    ((3000, 300), (300, 64), True, False, 2),         # rows of a transposed A
    ((700, 300), (50, 300), False, True, 3),          # rows, B transposed, three slices
    ((36, 64, 70), (36, 70, 900), False, False, 2),   # the batch axis
    ((1, 48, 90), (5, 1, 90, 800), False, False, 2),  # A broadcast over two batch axes
    ((4, 3, 20, 30), (30, 70), False, False, 5),      # B broadcast, more slices than threads
    ((1, 200), (200, 5000), False, False, 2),         # one row
    ((5000, 1), (1, 3), False, False, 2),             # K = 1
])
def test_gemm_on_numba_threads_matches_numpy(dtype, a_shape, b_shape, ta, tb, parts):
    """_gemm.split (OpenBLAS called from numba's threads, one slice each) against numpy's matmul."""
    from minicnn import _blas
    from minicnn.backends.numba import _gemm
    if not _gemm.available():
        pytest.skip("numpy's BLAS offers no cblas symbols we can call here")
    rng = np.random.default_rng(11)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    if ta:  # stored transposed, read through a view
        a = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if tb:
        b = b.swapaxes(-1, -2)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = np.full(want.shape, np.nan, dtype=dtype)
    with _blas.single_threaded():
        assert _gemm.split(a, b, out, parts)
    assert_close(out, want.astype(dtype), 1e-5 if dtype == np.float32 else 1e-12, f"{a_shape} x {b_shape}")


def test_gemm_on_numba_threads_declines_what_blas_cannot_take():
    """Every case split() refuses leaves out untouched, and matmul still answers through the pool."""
    from minicnn.backends.numba import _gemm
    rng = np.random.default_rng(12)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 50)).astype(np.float32)
    refused = [
        (a.astype(np.int64), b.astype(np.int64), np.zeros((40, 50), np.int64)),     # not a float
        (a, b.astype(np.float64), np.zeros((40, 50), np.float32)),                # mixed dtypes
        (a[:, ::2], b[::2], np.zeros((40, 50), np.float32)),                       # no unit stride
        (a, b, np.zeros((50, 40), np.float32).T),                                  # a transposed out
        (a, b, np.zeros((2, 2, 2, 40, 50), np.float32)),                           # three batch axes
        (a[:, :0], b[:0], np.zeros((40, 50), np.float32)),                         # an empty product
    ]
    for pa, pb, out in refused:
        before = out.copy()
        assert not _gemm.split(pa, pb, out, 2)
        assert np.array_equal(out, before)
    buf = rng.standard_normal(40 * 30 + 40 * 50).astype(np.float32)
    x, y = buf[:1200].reshape(40, 30), buf[1200:].reshape(40, 50)
    assert not _gemm.split(x, b, buf[:2000].reshape(40, 50), 2)   # out overlaps an operand
    want = x.astype(np.float64) @ b
    assert _gemm.split(x, b, y, 2) == _gemm.available()
    if _gemm.available():
        assert_close(y, want.astype(np.float32), 1e-5, "split beside its operand")


def test_single_threaded_blas_nests_and_restores():
    from minicnn import _blas
    before = _blas.blas_threads()
    if before is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS whose threads can be set")
    get, _ = _blas._thread_functions()
    with _blas.single_threaded():
        assert get() == 1
        with _blas.single_threaded():
            assert get() == 1
        assert get() == 1 and _blas.blas_threads() == before
    assert get() == before


@pytest.mark.parametrize("hw", [(4, 4), (40, 40)])  # small planes gather a chunk; big ones GEMM in place
def test_pointwise_paths(hw):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, *hw)).astype(np.float32)
    w = rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    for stride in ((1, 1), (2, 1)):
        want = REF["conv2d_forward"](x, w, b, stride, (0, 0), (1, 1), 1)
        res = rng.standard_normal(want.shape).astype(np.float32)
        assert_close(conv.pointwise_gemm(x, w, b, stride, (0, 0), (1, 1), 1), want, 1e-5, "pointwise")
        assert_close(conv.pointwise_gemm(x, w, b, stride, (0, 0), (1, 1), 1, residual=res, relu=True),
                     np.maximum(want + res, 0), 1e-5, "pointwise fused")


RESNET18_3x3 = [  # (x shape, w shape, stride, padding) of ResNet-18's convolutions at 224x224
    ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    ((1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    ((1, 64, 56, 56), (128, 64, 3, 3), 2, 1),
    ((1, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    ((1, 64, 56, 56), (128, 64, 1, 1), 2, 0),
    ((1, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    ((1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
    ((8, 512, 7, 7), (512, 512, 3, 3), 1, 1),
    ((8, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    ((4, 512, 14, 14), (512, 512, 3, 3), 1, 1),
    ((1, 32, 56, 56), (32, 1, 3, 3), 1, 1),
]


def test_selection_rule_on_resnet18_shapes():
    picks = [conv.choose_variant(xs, ws, (s, s), (p, p), (1, 1), xs[1] // ws[1]) for xs, ws, s, p in RESNET18_3x3]
    assert picks == [
        "im2col_gemm",          # 7x7 stride 2 stem
        "winograd_f4x4_3x3",    # layer1: 196 4x4 tiles
        "im2col_gemm",          # stride 2
        "im2col_gemm",          # layer2 at batch 1: 49 4x4 tiles, 196 2x2 tiles: too few
        "pointwise_gemm",       # 1x1 downsample
        "im2col_gemm",          # layer3 at batch 1: 16 ragged 4x4 tiles, 49 2x2 tiles
        "im2col_gemm",          # layer4 at batch 1
        "im2col_gemm",          # layer4 at batch 8: 128 2x2 tiles, too few
        "winograd_f2x2_3x3",    # layer3 at batch 8: 128 ragged 4x4 tiles (too few), 392 2x2 tiles
        "im2col_gemm",          # 64 ragged 4x4 tiles, 196 2x2 tiles
        "im2col_gemm",          # depthwise
    ]
    # constant (read-only) filters: the cached transform makes Winograd pay from far fewer tiles
    const = [conv.choose_variant(xs, ws, (s, s), (p, p), (1, 1), xs[1] // ws[1], constant=True)
             for xs, ws, s, p in RESNET18_3x3]
    changed = {3: "winograd_f4x4_3x3",   # layer2 at batch 1: 49 4x4 tiles that divide 28x28
               5: "winograd_f2x2_3x3",   # layer3 at batch 1: ragged 4x4 tiles, 49 2x2 tiles
               7: "winograd_f2x2_3x3",   # layer4 at batch 8: 128 2x2 tiles
               9: "winograd_f2x2_3x3"}   # 196 2x2 tiles
    assert const == [changed.get(i, pick) for i, pick in enumerate(picks)]
    # training at batch 16: F(4x4) where the tiles divide the output, F(2x2) on 14x14, GEMM on 7x7
    b16 = [conv.choose_variant((16, c, h, h), (c, c, 3, 3), (1, 1), (1, 1), (1, 1), 1)
           for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))]
    assert b16 == ["winograd_f4x4_3x3", "winograd_f4x4_3x3", "winograd_f2x2_3x3", "im2col_gemm"]
    # few input channels (the digits convnet): the data transforms outweigh the GEMMs
    for xs, ws in (((64, 1, 8, 8), (16, 1, 3, 3)), ((64, 16, 4, 4), (32, 16, 3, 3))):
        for constant in (False, True):
            assert conv.choose_variant(xs, ws, (1, 1), (1, 1), (1, 1), 1, constant=constant) == "im2col_gemm"


# -- constant filters: the transform cache ---------------------------------------------------------

def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_constant_filter_rule():
    w = np.zeros((2, 2, 3, 3), np.float32)
    assert not _filters.is_constant(w)
    assert _filters.is_constant(_readonly(w))
    view = w[:, :1]
    view.flags.writeable = False  # read-only, but its base can still be written
    assert not _filters.is_constant(view)
    assert not _filters.is_constant([[1.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_readonly_filter_gives_identical_results_and_is_cached(dtype):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 8, 14, 14)).astype(dtype)
    w = rng.standard_normal((8, 8, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    res = rng.standard_normal((2, 8, 14, 14)).astype(dtype)
    wr = _readonly(w)
    _filters.clear()
    for name, fn in conv.VARIANTS.items():
        if not conv.supports(name, x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1):
            continue
        want = fn(x, w, b, (1, 1), (1, 1), (1, 1), 1, residual=res, relu=True)
        for _ in range(2):  # the first call fills the cache, the second reads it
            got = fn(x, wr, b, (1, 1), (1, 1), (1, 1), 1, residual=res, relu=True)
            assert np.array_equal(got, want), name
        assert_close(got, REF["conv2d_fused_forward"](x, w, b, (1, 1), (1, 1), (1, 1), 1, res, True),
                     tol_for(dtype, name), name)
    assert _filters.cached_entries() == 2  # the F(2x2) and F(4x4) transforms; GEMM paths use w itself
    assert not wr.flags.writeable  # the op never unlocks the caller's array
    del wr
    # a kernel numba compiles during a call can leave the calling frames (and so wr) in a
    # reference cycle until the cycle collector runs; the entry must go when the array does
    gc.collect()
    assert _filters.cached_entries() == 0  # dropped with the array


def test_readonly_filter_of_another_dtype_is_converted_once():
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    w = _readonly(rng.standard_normal((5, 4, 3, 3)))  # float64 filter, float32 input: float64 compute
    _filters.clear()
    with conv.prefer_variant("im2col_gemm"):
        got = NB["conv2d_forward"](x, w, None, (1, 1), (1, 1), (1, 1), 1)
    assert_close(got, REF["conv2d_forward"](x, w, None, (1, 1), (1, 1), (1, 1), 1), 1e-10)
    strided = _readonly(rng.standard_normal((5, 4, 3, 6)))[:, :, :, ::2]  # non-contiguous: copied once
    with conv.prefer_variant("im2col_gemm"):
        got = NB["conv2d_forward"](x, strided, None, (1, 1), (1, 1), (1, 1), 1)
    assert _filters.cached_entries() == 1
    assert_close(got, REF["conv2d_forward"](x, np.ascontiguousarray(strided), None, (1, 1), (1, 1), (1, 1), 1),
                 1e-10)


def test_new_readonly_filter_reusing_an_id_does_not_hit_a_stale_entry(monkeypatch):
    """Entries are keyed on id(w): another array that gets the same id must never see them.

    CPython hands a freed object's id to a new one only sometimes (it depends on what else was
    allocated), so here every array gets the same id, live ones included: each new filter
    collides with the previous one, which is still alive, and must get its own transform.
    """
    monkeypatch.setattr(_filters, "id", lambda a: 1, raising=False)
    rng = np.random.default_rng(23)
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    _filters.clear()
    prev = None
    for trial in range(12):
        w = _readonly(rng.standard_normal((4, 4, 3, 3)).astype(np.float32))
        for name in ("winograd_f2x2_3x3", "winograd_f4x4_3x3"):
            got = conv.VARIANTS[name](x, w, None, (1, 1), (1, 1), (1, 1), 1)
            assert_close(got, REF["conv2d_forward"](x, w, None, (1, 1), (1, 1), (1, 1), 1), F32_TOL[name],
                         f"{name} trial {trial}")
        assert _filters.cached_entries() == 2  # the newest array's two transforms replaced the previous ones
        prev, w = w, None  # the previous filter stays alive through the next trial's collision
    del prev
    assert _filters.cached_entries() == 0  # freeing the array that owns the entry drops it


def test_writeable_filter_modified_in_place_is_never_stale():
    rng = np.random.default_rng(24)
    x = rng.standard_normal((2, 4, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    base = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    view = base.view()
    view.flags.writeable = False  # read-only view of a writeable array: not constant either
    _filters.clear()
    for step in range(3):
        for name in ("winograd_f2x2_3x3", "winograd_f4x4_3x3", "im2col_gemm"):
            for filt in (w, view):
                got = conv.VARIANTS[name](x, filt, None, (1, 1), (1, 1), (1, 1), 1)
                assert_close(got, REF["conv2d_forward"](x, np.array(filt), None, (1, 1), (1, 1), (1, 1), 1),
                             F32_TOL[name], f"{name} step {step}")
        w *= -0.5  # as an optimizer step does
        base += 1.0
    assert _filters.cached_entries() == 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), k=st.integers(1, 6), hw=st.integers(5, 19),
       ksize=st.sampled_from([1, 3, 7]), stride=st.integers(1, 2), pool=st.sampled_from([(3, 2, 1), (2, 2, 0), (3, 1, 1)]),
       bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_maxpool_fused_equals_conv_then_pool(n, c, k, hw, ksize, stride, pool, bias, relu, seed):
    """maxpool(act(conv + b)) in one pass per image equals the reference ops run one after the other."""
    rng = np.random.default_rng(seed)
    pad = ksize // 2
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((k, c, ksize, ksize)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    z = REF["conv2d_forward"](x, w, b, (stride, stride), (pad, pad), (1, 1), 1)
    assume(z.shape[2] + 2 * pool[2] >= pool[0])
    if relu:
        z = REF["relu_forward"](z)
    want, _ = REF["maxpool2d_forward"](z, (pool[0],) * 2, (pool[1],) * 2, (pool[2],) * 2)
    got = nbk.conv2d_maxpool_fused(x, w, b, (stride, stride), (pad, pad), (1, 1), 1, relu,
                                   (pool[0],) * 2, (pool[1],) * 2, (pool[2],) * 2)
    assert got.shape == want.shape
    assert_close(got, want, F32_TOL["im2col_gemm"], "conv+maxpool")
    out = np.full(want.shape, np.nan, np.float32)
    assert nbk.conv2d_maxpool_fused(x, w, b, (stride, stride), (pad, pad), (1, 1), 1, relu, (pool[0],) * 2,
                                    (pool[1],) * 2, (pool[2],) * 2, out=out) is out
    assert np.array_equal(out, got)


def test_conv_maxpool_fused_propagates_nan_and_checks_out():
    x = np.ones((1, 1, 6, 6), np.float32)
    x[0, 0, 2, 2] = np.nan
    w = np.ones((2, 1, 1, 1), np.float32)
    y = nbk.conv2d_maxpool_fused(x, w, None, (1, 1), (0, 0), (1, 1), 1, True, (2, 2), (2, 2), (0, 0))
    assert np.isnan(y[0, :, 1, 1]).all() and not np.isnan(np.delete(y.reshape(2, -1), 4, axis=1)).any()
    with pytest.raises(ValueError, match="out has shape"):
        nbk.conv2d_maxpool_fused(x, w, None, (1, 1), (0, 0), (1, 1), 1, True, (2, 2), (2, 2), (0, 0),
                                 out=np.empty((1, 2, 6, 6), np.float32))


@pytest.mark.parametrize("shape,dtype", [((7,), np.uint8), ((3, 5, 11), np.float32), ((2, 9), np.float64)])
def test_aligned_empty_starts_on_a_cache_line(shape, dtype):
    for _ in range(5):
        a = _threads.aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0
    ws = _threads.workspace("test.aligned", shape, dtype)
    assert ws.ctypes.data % 64 == 0


def test_fused_forward_writes_into_out():
    rng = np.random.default_rng(25)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    w = _readonly(rng.standard_normal((8, 8, 3, 3)).astype(np.float32))
    b = rng.standard_normal(8).astype(np.float32)
    res = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    want = REF["conv2d_fused_forward"](x, w, b, (1, 1), (1, 1), (1, 1), 1, res, True)
    for name in conv.VARIANTS:
        if not conv.supports(name, x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1):
            continue
        out = np.full(want.shape, np.nan, np.float32)
        got = conv.VARIANTS[name](x, w, b, (1, 1), (1, 1), (1, 1), 1, residual=res, relu=True, out=out)
        assert got is out
        assert_close(out, want, F32_TOL[name], name)
    out = np.empty(want.shape, np.float32)
    assert NB["conv2d_fused_forward"](x, w, b, (1, 1), (1, 1), (1, 1), 1, res, True, out=out) is out
    with pytest.raises(ValueError, match=r"out has shape \(2, 8, 12, 11\).*result has shape \(2, 8, 12, 12\)"):
        NB["conv2d_fused_forward"](x, w, b, 1, 1, 1, 1, out=np.empty((2, 8, 12, 11), np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        NB["conv2d_fused_forward"](x, w, b, 1, 1, 1, 1, out=np.empty(want.shape))
    with pytest.raises(ValueError, match="must not overlap the input or the residual"):
        NB["conv2d_fused_forward"](x, w, b, 1, 1, 1, 1, res, out=res)
    with pytest.raises(ValueError, match="must not overlap the input"):
        NB["conv2d_fused_forward"](x[:, :8], w, b, 1, 1, 1, 1, out=x)
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        NB["conv2d_fused_forward"](x, w, b, 1, 1, 1, 1, out=_readonly(out))


def test_prefer_variant_overrides_where_supported():
    xs, ws = (1, 8, 10, 10), (8, 8, 3, 3)
    with conv.prefer_variant("direct"):
        assert conv.choose_variant(xs, ws, (1, 1), (1, 1), (1, 1), 1) == "direct"
    with conv.prefer_variant("winograd_f2x2_3x3"):
        # a 5x5 layer cannot run Winograd: the rule decides
        assert conv.choose_variant(xs, (8, 8, 5, 5), (1, 1), (2, 2), (1, 1), 1) == "im2col_gemm"
    with pytest.raises(ValueError, match="unknown conv2d variant 'fft'"):
        with conv.prefer_variant("fft"):
            pass


def test_conv_bad_input_names_the_problem():
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"input shape \(1, 3, 8, 8\) has 3 channels but weight shape \(4, 2, 3, 3\)"):
        NB["conv2d_forward"](x, np.zeros((4, 2, 3, 3), np.float32), None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match=r"residual shape \(1, 4, 5, 5\) does not match the output shape"):
        NB["conv2d_fused_forward"](x, np.zeros((4, 3, 3, 3), np.float32), None, (1, 1), (0, 0), (1, 1), 1,
                                   np.zeros((1, 4, 5, 5), np.float32), True)
    with pytest.raises(ValueError, match="winograd_f4x4_3x3.*needs a 3x3 kernel, stride 1"):
        conv.VARIANTS["winograd_f4x4_3x3"](x, np.zeros((4, 3, 3, 3), np.float32), None, (2, 2), (1, 1), (1, 1), 1)
    with pytest.raises(ValueError, match="pointwise_gemm.*1x1 kernel"):
        conv.pointwise_gemm(x, np.zeros((4, 3, 3, 3), np.float32), None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        NB["conv2d_forward"](x, np.zeros((4, 3, 5, 5), np.float32), None, (1, 1), (0, 0), (2, 2), 1)
    with pytest.raises(ValueError, match=r"dy shape \(1, 4, 3, 3\) does not match the output shape \(1, 4, 6, 6\)"):
        NB["conv2d_backward"](np.zeros((1, 4, 3, 3), np.float32), x, np.zeros((4, 3, 3, 3), np.float32),
                              (1, 1), (0, 0), (1, 1), 1)


def test_results_are_fresh_arrays_not_workspaces():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    for name, fn in conv.VARIANTS.items():
        if not conv.supports(name, x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1):
            continue
        y1 = fn(x, w, None, (1, 1), (1, 1), (1, 1), 1)
        keep = y1.copy()
        y2 = fn(x * 2, w, None, (1, 1), (1, 1), (1, 1), 1)  # reuses every workspace
        assert not np.shares_memory(y1, y2)
        assert np.array_equal(y1, keep), f"{name}: a later call changed an earlier result"
    dx1, dw1, _ = NB["conv2d_backward"](x, x, w, (1, 1), (1, 1), (1, 1), 1)
    keep = dx1.copy(), dw1.copy()
    NB["conv2d_backward"](x * 3, x, w, (1, 1), (1, 1), (1, 1), 1)
    assert np.array_equal(dx1, keep[0]) and np.array_equal(dw1, keep[1])


def test_non_contiguous_and_mixed_inputs_are_accepted():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 10, 12)).astype(np.float32)[:, :, :, ::2]  # strided view
    w = rng.standard_normal((3, 4, 3, 3))  # float64 weight with float32 input: promoted as numpy does
    want = REF["conv2d_forward"](np.ascontiguousarray(x), w, None, (1, 1), (1, 1), (1, 1), 1)
    got = NB["conv2d_forward"](x, w, None, (1, 1), (1, 1), (1, 1), 1)
    assert_close(got, want, 1e-10)


def test_winograd_transform_matrices_compute_correlation():
    """A^T[(G g) * (B^T d)] equals the 1-D correlation of d with g, in exact arithmetic (float64)."""
    rng = np.random.default_rng(8)
    for m, r in ((2, 3), (4, 3), (2, 5)):
        d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        want = np.array([d[i:i + r] @ g for i in range(m)])
        got = winograd.AT[m, r] @ ((winograd.G[m, r] @ g) * (winograd.BT[m, r] @ d))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
def test_written_out_transforms_equal_the_matrices(m):
    """The data transforms spell B^T d B and A^T M A out term by term: check them against the matrices."""
    rng = np.random.default_rng(m)
    alpha = m + 2
    d = rng.standard_normal((1, 1, alpha, alpha))
    V = np.empty((alpha * alpha, 1, 1))
    winograd._input_transform(d, 0, 1, V, m, 1, 1, 0, 0)
    want = winograd.BT[m, 3] @ d[0, 0] @ winograd.BT[m, 3].T
    np.testing.assert_allclose(V.reshape(alpha, alpha), want, rtol=1e-12, atol=1e-12)
    M = rng.standard_normal((alpha * alpha, 1, 1))
    y3 = np.empty((1, 1, m * m))
    bias = np.array([0.25])
    winograd._output_transform(M, y3, 0, 1, m, 1, 1, m, bias, True, np.empty((1, 1, 1)), False, False)
    want = winograd.AT[m, 3] @ M.reshape(alpha, alpha) @ winograd.AT[m, 3].T + 0.25
    np.testing.assert_allclose(y3.reshape(m, m), want, rtol=1e-12, atol=1e-12)


def test_channels_last_transforms_equal_the_matrices():
    """F(2x2, 5x5)'s written-out transforms against its matrices: B^T d B per tile and channel,
    A^T M A per column, A dY A^T per column, and the gather and scatter of 2x2 tiles."""
    rng = np.random.default_rng(25)
    BT, AT = winograd.BT[2, 5], winograd.AT[2, 5]
    x = rng.standard_normal((2, 3, 5, 7))
    padding = (2, 1)
    TH, TW = 3, 3  # the 5x5 filter's 5 x 5 output (5 + 4 - 4, 7 + 2 - 4) in 2x2 tiles
    V = winograd._channels_last_inputs(x, 0, 2, TH, TW, padding).copy()
    xp = np.pad(x, ((0, 0), (0, 0), (2, 3), (1, 4)))  # (2 TH + 4) x (2 TW + 4)
    for i in range(2):
        for th in range(TH):
            for tw in range(TW):
                for c in range(3):
                    d = xp[i, c, 2 * th:2 * th + 6, 2 * tw:2 * tw + 6]
                    got = V[:, (i * TH + th) * TW + tw, c].reshape(6, 6)
                    np.testing.assert_allclose(got, BT @ d @ BT.T, rtol=1e-12, atol=1e-12)
    M = rng.standard_normal((36, 10))
    Z = np.empty((4, 10))
    winograd._output_transform_rows(M, Z)
    for j in range(10):
        np.testing.assert_allclose(Z[:, j].reshape(2, 2), AT @ M[:, j].reshape(6, 6) @ AT.T, rtol=1e-12, atol=1e-12)
    D = rng.standard_normal((4, 10))
    Y = np.empty((36, 10))
    winograd._dy_transform_rows(D, Y)
    for j in range(10):
        np.testing.assert_allclose(Y[:, j].reshape(6, 6), AT.T @ D[:, j].reshape(2, 2) @ AT, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal((2, 4, 5, 5))
    D = np.empty((4, 4, 2 * TH * TW))
    winograd._gather_tiles(dy.reshape(2, 4, 25), 0, 2, D, TH, TW, 5)
    dyp = np.pad(dy, ((0, 0), (0, 0), (0, 1), (0, 1)))
    want = dyp.reshape(2, 4, TH, 2, TW, 2).transpose(3, 5, 1, 0, 2, 4).reshape(4, 4, -1)
    np.testing.assert_array_equal(D, want)
    y3 = np.empty((2, 4, 25))
    Zt = np.ascontiguousarray(D.transpose(0, 2, 1))  # the forward's Z is (4, T, K)
    winograd._scatter_tiles(Zt, y3, 0, 2, TH, TW, 5, np.zeros(1), False, np.zeros((1, 1, 1)), False, False)
    np.testing.assert_array_equal(y3.reshape(2, 4, 5, 5), dy)


@pytest.mark.parametrize("c, hw", [(64, 28), (512, 7)])  # F(4x4)'s narrowest and widest use in the rule
def test_f4_error_against_float64_is_as_documented(c, hw):
    """The F(4x4) precision claim behind the selection rule, on ResNet-18 layer shapes."""
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((2, c, hw, hw)), 0)
    w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))
    exact = REF["conv2d_forward"](x, w, None, (1, 1), (1, 1), (1, 1), 1)
    scale = np.abs(exact).max()
    errs = {}
    for name in ("im2col_gemm", "winograd_f2x2_3x3", "winograd_f4x4_3x3"):
        y = conv.VARIANTS[name](x.astype(np.float32), w.astype(np.float32), None, (1, 1), (1, 1), (1, 1), 1)
        errs[name] = np.abs(y - exact).max() / scale
    assert errs["im2col_gemm"] < 2e-6 and errs["winograd_f2x2_3x3"] < 2e-6
    assert 2e-6 < errs["winograd_f4x4_3x3"] < 1.5e-5  # measurably worse than GEMM, within the bound


# -- pooling ---------------------------------------------------------------------------------------

@st.composite
def pool_case(draw):
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, r // 2)), draw(st.integers(0, s // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    n, c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    assume(p >= 1 and q >= 1)
    return (n, c, h, w), (r, s), stride, padding, dilation, draw(st.integers(0, 2**16)), draw(st.booleans())


@pytest.mark.parametrize("max_form", ["rows", "table", "windows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=25, deadline=None)
@given(case=pool_case())
def test_every_max_pool_form_matches_reference(case, dtype, max_form):
    """The three forms of the max pool with argmax, each forced on every shape: row by row (any
    row length), tap by tap over the plane through the gather table, and window by window. The
    op as the rule runs it (and the values-only form, the backward, average pooling) is checked by
    the conformance cases."""
    shape, k, stride, padding, dilation, seed, specials = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if specials:  # ties, -inf and NaN: argmax and NaN propagation must follow the reference exactly
        x = np.round(x)
        x[rng.random(shape) < 0.1] = -np.inf
        x[rng.random(shape) < 0.05] = np.nan
    saved = pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX
    pool.TWO_BY_TWO = False  # the 2x2 pool's own kernel has its own test below
    pool.ROWS_MIN_Q = 1 if max_form == "rows" else 10**9
    pool.TABLE_MAX = 0 if max_form == "windows" else 10**9
    try:
        y, am = NB["maxpool2d_forward"](x, k, stride, padding, dilation)
    finally:
        pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX = saved
    ry, ram = REF["maxpool2d_forward"](x, k, stride, padding, dilation)
    assert np.array_equal(y, ry, equal_nan=True) and y.dtype == ry.dtype
    assert np.array_equal(am, ram) and am.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=st.integers(2, 13), w=st.integers(2, 13),
       seed=st.integers(0, 2**16), specials=st.booleans(), need_argmax=st.booleans())
def test_two_by_two_max_pool_matches_reference(n, c, h, w, seed, specials, need_argmax, dtype):
    """The 2x2, stride-2, unpadded pool's own kernel (``_max_2x2``, the commonest pool): even and
    odd planes (an odd last row or column is dropped), ties (the first in scan order wins), -inf
    and NaN (a NaN wins, the last one in scan order, as in the reference), with argmax (training)
    and without (inference, the same values)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if specials:
        x = np.round(x)
        x[rng.random(x.shape) < 0.1] = -np.inf
        x[rng.random(x.shape) < 0.1] = np.nan
    y, am = NB["maxpool2d_forward"](x, 2, 2, 0, need_argmax=need_argmax)
    ry, ram = REF["maxpool2d_forward"](x, (2, 2), (2, 2), (0, 0))
    assert np.array_equal(y, ry, equal_nan=True) and y.dtype == ry.dtype
    if need_argmax:
        assert np.array_equal(am, ram) and am.dtype == np.int64
    else:
        assert am is None


@pytest.mark.parametrize("args,form", [
    (((1, 2, 8, 8), 2, 2, 0), "_max_2x2"), (((1, 2, 9, 7), 2, 2, 0), "_max_2x2"),
    (((1, 2, 8, 8), 2, 2, 1), "_max_table"), (((1, 2, 8, 8), 2, 1, 0), "_max_table"),
    (((1, 2, 8, 8), 3, 2, 0), "_max_table"), (((1, 2, 40, 40), 2, 2, 0), "_max_2x2"),
    (((1, 2, 40, 40), 2, (2, 1), 0), "_pool_fwd")])
def test_max_pool_takes_the_2x2_kernel_only_for_the_2x2_stride_2_unpadded_pool(monkeypatch, args, form):
    shape, k, stride, padding = args
    ran = []
    real_run = pool._threads.run
    monkeypatch.setattr(pool._threads, "run", lambda kernel, *a, **kw: ran.append(kernel) or real_run(kernel, *a, **kw))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y, am = NB["maxpool2d_forward"](x, k, stride, padding)
    assert [kernel.__name__ for kernel in ran] == [form]
    ry, ram = REF["maxpool2d_forward"](x, *((v, v) if isinstance(v, int) else v for v in (k, stride, padding)))
    assert np.array_equal(y, ry) and np.array_equal(am, ram)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("by_tiles", [True, False])
@pytest.mark.parametrize("n,c,hw,k,r,stride,padding", [
    (64, 16, (4, 4), 32, 3, 1, 1),    # the digits convnet's second layer: its whole batch in one product
    (64, 2, (8, 8), 16, 3, 1, 1),     # 18 values per column: its whole batch in one product
    (3, 5, (20, 18), 16, 3, 2, 1),    # strided, a partial last panel of columns
    (2, 16, (30, 30), 24, 1, 2, 0),   # a 1x1 stride-2 layer (pointwise_gemm's chunked path)
])
def test_im2col_conv_products_by_register_blocks_or_blas(n, c, hw, k, r, stride, padding, by_tiles, dtype,
                                                         monkeypatch):
    """The im2col convolution's forward and dX products go to the register blocks (``_tiles``)
    where ``conv._product``'s rule sends them, which every shape here meets, else to OpenBLAS:
    both give the reference's y, dx, dw and db, and the spy shows which one ran."""
    monkeypatch.setattr(_tiles, "FASTER_THAN_BLAS", by_tiles)
    real, seen = _tiles.matmul, []

    def spy(a, b, out, *args, **kwargs):
        seen.append(b.shape)
        return real(a, b, out, *args, **kwargs)

    monkeypatch.setattr(_tiles, "matmul", spy)
    rng = np.random.default_rng(n * 10 + c)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = rng.standard_normal((k, c, r, r)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    args = ((stride, stride), (padding, padding), (1, 1), 1)
    want = REF["conv2d_forward"](x, w, b, *args)
    tol = tol_for(dtype)
    # the forward's inner dimension (C*R*S) and dX's (K) both within the rule's bounds
    assert conv.by_tiles(c * r * r, 256, dtype) == conv.by_tiles(k, 256, dtype) == by_tiles
    assert_close(NB["conv2d_forward"](x, w, b, *args), want, tol, "y")
    dy = rng.standard_normal(want.shape).astype(dtype)
    for got, ref, name in zip(NB["conv2d_backward"](dy, x, w, *args), REF["conv2d_backward"](dy, x, w, *args),
                              ("dx", "dw", "db")):
        assert_close(got, ref, tol, name)
    # the forward's and dX's products (one per chunk of images), or none
    assert len(seen) >= 2 if by_tiles else not seen


def test_maxpool_backward_rejects_foreign_argmax():
    dy = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="outside the 3x3 input plane"):
        NB["maxpool2d_backward"](dy, np.full((1, 1, 2, 2), 9), (1, 1, 3, 3))
    with pytest.raises(ValueError, match="outside the 3x3 input plane"):  # -1 is "no input", -2 is nothing
        NB["maxpool2d_backward"](dy, np.array([[[[0, -1], [-2, 4]]]]), (1, 1, 3, 3))
    # -1 (a window of only padding) routes nowhere, the rest lands on its cell
    dx = NB["maxpool2d_backward"](np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2),
                                  np.array([[[[0, -1], [8, 0]]]]), (1, 1, 3, 3))
    assert np.array_equal(dx, np.array([[[[5, 0, 0], [0, 0, 0], [0, 0, 3]]]], np.float32))
    with pytest.raises(ValueError, match="argmax shape"):
        NB["maxpool2d_backward"](dy, np.zeros((1, 1, 3, 2), np.int64), (1, 1, 3, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L", [1, 3, 16, 37])
@pytest.mark.parametrize("has_scale,has_b,has_res,relu", [
    (False, False, False, False), (False, True, False, False), (True, True, False, False),
    (False, True, True, False), (False, True, False, True), (True, True, True, True)])
def test_epilogue_every_flag_and_layout(dtype, L, has_scale, has_b, has_res, relu):
    """The shared epilogue against numpy: the write-back from (K, nc*L) into (nc, K, L) at an
    offset, the packing the other way, and in place; rows of one value take their own loop."""
    from minicnn.backends.numba._util import Rows, run_epilogue

    rng = np.random.default_rng(L)
    nc, K = 5, 7
    src = rng.standard_normal((K, nc * L)).astype(dtype)
    src[0, 0] = np.nan
    scale = rng.standard_normal(K).astype(dtype) if has_scale else None
    b = rng.standard_normal(K).astype(dtype) if has_b else None
    res = rng.standard_normal((nc + 1) * K * L).astype(dtype) if has_res else None

    def act(v):
        v = v * (scale[None, :, None] if has_scale else 1) + (b[None, :, None] if has_b else 0)
        if has_res:
            v = v + res.reshape(nc + 1, K, L)[1:]
        return np.where(v < 0, 0, v) if relu else v  # NaN stays NaN

    # (K, nc*L) -> (nc, K, L) written one image in, as a chunked write-back does
    dst = np.full((nc + 1) * K * L, -7, dtype)
    run_epilogue(Rows(src.reshape(-1), 0, L, nc * L), Rows(dst, K * L, K * L, L), nc, K, L,
                 scale=scale, b=b, res=res, relu=relu)
    want = act(src.reshape(K, nc, L).transpose(1, 0, 2))
    assert np.array_equal(dst[:K * L], np.full(K * L, -7, dtype))  # before the offset: untouched
    assert_close(dst[K * L:].reshape(nc, K, L), want, tol_for(dtype), "write-back")
    # (nc, K, L) -> (K, nc*L): packing, no flags
    packed = np.empty((K, nc * L), dtype)
    y = np.ascontiguousarray(src.reshape(K, nc, L).transpose(1, 0, 2))
    run_epilogue(Rows(y.reshape(-1), 0, K * L, L), Rows(packed.reshape(-1), 0, L, nc * L), nc, K, L)
    assert np.array_equal(packed, src, equal_nan=True)
    # in place on (nc, K, L)
    y2 = y.copy().reshape(-1)
    run_epilogue(Rows(y2, 0, K * L, L), Rows(y2, 0, K * L, L), nc, K, L, scale=scale, b=b,
                 res=None if res is None else res[K * L:], relu=relu)
    assert_close(y2.reshape(nc, K, L), want, tol_for(dtype), "in place")


# -- losses, dropout: what only this backend promises ----------------------------------------------

def test_losses_reject_bad_targets():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\), got min 0 max 3"):
        NB["softmax_cross_entropy_forward"](z, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) and target shape \(3, 2\) differ"):
        NB["mse_forward"](z, np.zeros((3, 2), np.float32))


def test_dropout_consumes_the_generator_like_the_reference():
    g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
    NB["dropout_forward"](np.ones((3, 3), np.float32), 0.5, g1)
    REF["dropout_forward"](np.ones((3, 3), np.float32), 0.5, g2)
    assert g1.random() == g2.random()


# -- whole models --------------------------------------------------------------------------------------

def test_resnet18_through_numba_matches_numpy_backend():
    """ResNet-18 at 224x224 uses Winograd F(4x4) (layers 1-2), F(2x2) (layer 3), im2col and pointwise:
    its logits must stay within 1e-4 relative of the numpy backend's."""
    model = resnet.resnet18(num_classes=1000)
    model.load_state_dict(resnet.seeded_state_dict("resnet18", 0))
    model.eval()
    x = np.random.default_rng(13).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with mc.no_grad():
        with mc.backend("numpy"):
            want = model(x)
        with mc.backend("numba"):
            got = model(x)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error {err:.2e}"
    # read-only weights are constant: cached transforms, and the rule then also sends layer3 to
    # F(4x4) and layer4 to F(2x2)
    params = [p for _, p in model.named_parameters()]
    for p in params:
        p.data.flags.writeable = False
    try:
        with mc.no_grad(), mc.backend("numba"):
            first, again = model(x), model(x)
    finally:
        for p in params:
            p.data.flags.writeable = True
    assert np.array_equal(first, again)
    err = np.abs(first - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error with constant filters {err:.2e}"


def test_small_convnet_trains_identically_on_both_backends():
    """One SGD step of a conv/bn/relu/pool/dropout/linear net: loss and every gradient agree."""
    from minicnn import nn

    def build():
        mc.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 4 * 4, 5),
        )

    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    results = {}
    for name in ("numpy", "numba"):
        model, loss_fn = build(), nn.CrossEntropyLoss()
        with mc.backend(name):
            mc.manual_seed(1)
            loss = loss_fn(model(x), t)
            model.backward(loss_fn.backward())
        results[name] = (loss, {k: p.grad.copy() for k, p in model.named_parameters()})
    assert abs(results["numba"][0] - results["numpy"][0]) < 1e-5
    for key, g in results["numpy"][1].items():
        assert_close(results["numba"][1][key], g, 1e-4, key)


def test_matmul_in_a_forked_child():
    """A child forked after the GEMM helper threads started gets threads of its own (not a hang)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    a = np.random.default_rng(7).standard_normal((64, 400)).astype(np.float32)
    b = np.random.default_rng(8).standard_normal((400, 2000)).astype(np.float32)
    _threads.matmul(a, b, np.empty((64, 2000), np.float32))  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_matmul_in_child, (a, b)).get(timeout=60)
    assert_close(got, (a.astype(np.float64) @ b).astype(np.float32), 1e-5, "matmul in a forked child")


def _matmul_in_child(a, b):
    return _threads.matmul(a, b, np.empty((a.shape[0], b.shape[1]), np.float32))


def test_small_calls_run_the_serial_twin_and_large_ones_the_parallel_kernel(monkeypatch):
    from minicnn.backends.numba import activation

    x = np.arange(-6, 6, dtype=np.float32)
    calls = []
    twin = _threads.serial_twin(activation.unary)
    assert twin is not activation.unary and twin is _threads.serial_twin(activation.unary)
    # numba's on-disk cache does not key on ``parallel``: the twin must be cached under its own name
    assert twin.py_func.__qualname__ == activation.unary.py_func.__qualname__ + "_serial"
    assert twin.targetoptions.get("parallel") is not True
    monkeypatch.setitem(_threads._twins, activation.unary, lambda *a: calls.append("serial") or twin(*a))
    for limit, form in ((x.size * 2 + 1, "serial"), (x.size * 2, "parallel")):
        y = np.empty_like(x)
        calls.clear()
        with _threads.serial_below(limit):  # work = the two arrays' sizes
            _threads.run(activation.unary, 0, x, y)
        assert calls == (["serial"] if form == "serial" else [])
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    calls.clear()
    with _threads.serial_below(100):
        _threads.run(activation.unary, 0, x, np.empty_like(x), work=1000)  # the caller's estimate wins
    assert calls == []


# -- the block pool for large results ------------------------------------------------------------

def test_pooled_arrays_are_reused_only_once_nothing_refers_to_them():
    from minicnn.backends.numba import _memory

    _memory.release()
    shape = (3, _memory.POOL_MIN_BYTES // 4 // 3 + 7)
    a = _memory.empty(shape, np.float32)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.0
    view = a[1:, ::2]
    del a
    b = _memory.empty(shape, np.float32)  # the first block is still referenced by ``view``
    b[...] = 2.0
    assert np.all(view == 1.0) and not np.may_share_memory(view, b)
    addr = b.ctypes.data
    del view, b
    c = _memory.empty(shape, np.float32)  # both blocks free now: one of them comes back
    d = _memory.empty(shape, np.float32)
    assert {c.ctypes.data, d.ctypes.data} >= {addr} and not np.may_share_memory(c, d)
    assert _memory.stats()["free"] == 0
    del c, d
    assert _memory.stats()["in_use"] == 0
    _memory.release()
    assert _memory.stats() == {"in_use": 0, "free": 0, "blocks": 0}
    small = _memory.empty((4, 4), np.float64)  # below the threshold: plain numpy, no block
    assert small.shape == (4, 4) and _memory.stats()["blocks"] == 0


def test_pool_keeps_at_most_its_idle_limit(monkeypatch):
    from minicnn.backends.numba import _memory

    _memory.release()
    monkeypatch.setattr(_memory, "POOL_IDLE_MAX_BYTES", 3 * _memory.POOL_MIN_BYTES)
    arrays = [_memory.empty((_memory.POOL_MIN_BYTES // 4 + 1024 * i,), np.float32) for i in range(6)]
    del arrays
    assert _memory.stats()["blocks"] == 6  # trimming happens when a new block is made
    keep = _memory.empty((_memory.POOL_MIN_BYTES // 4 * 3,), np.float32)
    st = _memory.stats()
    assert st["free"] <= 3 * _memory.POOL_MIN_BYTES and st["in_use"] >= keep.nbytes
    del keep
    _memory.release()


def test_ops_results_survive_later_calls():
    """Results from the pool stay intact while held, however many later calls run."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)  # 1 MiB: pooled
    y1 = NB["relu_forward"](x)
    want = np.maximum(x, 0)
    for _ in range(3):
        y2 = NB["relu_forward"](-x)
        assert not np.may_share_memory(y1, y2)
    np.testing.assert_array_equal(y1, want)
    np.testing.assert_array_equal(y2, np.maximum(-x, 0))


def test_a_filter_freed_while_the_cache_lock_is_held_does_not_deadlock():
    # a garbage collection can start inside any allocation, also one the cache makes under its
    # lock, and run a freed filter's finalizer there: the finalizer must not take that lock
    import gc
    import threading

    def body():
        w = _readonly(np.ones((2, 2, 3, 3), np.float32))
        _filters.derived(w, ("test", 1), lambda: np.zeros(3, np.float32))
        before = _filters.cached_entries()
        with _filters._lock:
            del w
            gc.collect()  # the finalizer runs here, under the lock
        assert _filters.cached_entries() == before - 1  # the entry went at the next call

    errors = []

    def run():
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "freeing a cached filter under the cache's lock deadlocked"
    assert not errors, errors
