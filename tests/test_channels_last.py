"""The channels-last inference path: the numba kernels of ``minicnn/backends/numba/channels_last.py``,
the backend-neutral defaults of ``minicnn/backends/_defaults.py``, and compiled ResNets running
their activations (N, H, W, C) between layers (``compile_inference(..., channels_last=...)``).

Every kernel is checked against the numpy reference's NCHW op (inputs transposed in, outputs
transposed back). Tolerances, relative to the largest reference value (as tests/test_numba_backend.py):
float32 2e-5 for the GEMM variants and Winograd F(2x2, 3x3), 5e-5 for F(4x4, 3x3) (its transforms
amplify rounding; the errors observed here are a few 1e-6), 1e-10 for float64. A wrong tap, a
shifted tile or a dropped epilogue term gives errors of order 1. Max pooling only picks values, so
it is compared exactly (NaN positions included).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minicnn as mc
from minicnn import backends, inference
from minicnn.backends import _defaults
from minicnn.backends.numba import _filters, _threads, _tiles, winograd
from minicnn.backends.numba import channels_last as cl
from minicnn.models.resnet import resnet18, seeded_state_dict

from concurrency import THREADS, on_one_thread, run_concurrently, two_threads  # noqa: F401 - two_threads is a fixture

REF = backends.load("numpy").OPS
NB = backends.load("numba").OPS

F32_TOL = {"cl_gemm": 2e-5, "cl_gemm_t": 2e-5, "cl_tiles": 2e-5, "cl_winograd_f2x2_3x3": 2e-5, "cl_winograd_f4x4_3x3": 5e-5}
F64_TOL = 1e-10
ALL_VARIANTS = set(F32_TOL)


def _rel(a, b):
    a = np.asarray(mc.to_numpy(a), np.float64)
    b = np.asarray(mc.to_numpy(b), np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _tol(dtype, name):
    return F64_TOL if np.dtype(dtype) == np.float64 else F32_TOL[name]


def _pairs(*args):
    return tuple((a, a) if isinstance(a, int) else tuple(a) for a in args)


def ref_conv_cl(x, w, b, stride, padding, dilation, groups=1, residual=None, relu=False):
    """The numpy reference's NCHW fused conv on channels-last arrays (transposed in and out)."""
    stride, padding, dilation = _pairs(stride, padding, dilation)
    res = None if residual is None else np.ascontiguousarray(residual.transpose(0, 3, 1, 2))
    y = REF["conv2d_fused_forward"](np.ascontiguousarray(x.transpose(0, 3, 1, 2)), w, b, stride, padding, dilation,
                                    groups, residual=res, relu=relu)
    return np.ascontiguousarray(np.asarray(y).transpose(0, 2, 3, 1))


def ref_maxpool_cl(x, kernel, stride, padding, dilation=1, ceil_mode=False):
    kernel, stride, padding, dilation = _pairs(kernel, stride, padding, dilation)
    y, argmax = REF["maxpool2d_forward"](np.ascontiguousarray(x.transpose(0, 3, 1, 2)), kernel, stride, padding,
                                         dilation, need_argmax=False, ceil_mode=ceil_mode)
    assert argmax is None
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


def _out_hw(H, W, R, S, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride, padding, dilation)
    return (H + 2 * ph - dh * (R - 1) - 1) // sh + 1, (W + 2 * pw - dw * (S - 1) - 1) // sw + 1


def _conv_arrays(rng, N, H, W, C, K, R, stride, padding, dilation, bias, residual, dtype=np.float32, S=None):
    S = R if S is None else S
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = (rng.standard_normal((K, C, R, S)) / np.sqrt(C * R * S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    P, Q = _out_hw(H, W, R, S, stride, padding, dilation)
    res = rng.standard_normal((N, P, Q, K)).astype(dtype) if residual else None
    return x, w, b, res


@pytest.fixture(params=["tiles", "openblas"])
def products(request, monkeypatch):
    """Runs a test with the Winograd variants' products by ``_tiles.matmul`` and by OpenBLAS
    (``PRODUCTS_BY_TILES``, which the host's vector width sets, patched either way)."""
    monkeypatch.setattr(cl, "PRODUCTS_BY_TILES", request.param == "tiles")
    yield request.param


@pytest.fixture(params=["serial", "parallel"])
def kernel_form(request):
    """Runs a test with every kernel call on its serial twin, then with every call on the
    ``parallel=True`` kernel (the shapes here are small: the default rule would pick serial)."""
    with _threads.serial_below(2**62 if request.param == "serial" else 0):
        yield request.param


# -- the conv variants against the reference -----------------------------------------------------

# (N, H, W, C, K, R, stride, padding, dilation): odd sizes, C = 3 and larger, 1x1 .. 7x7
CONV_CASES = [
    (1, 13, 11, 3, 8, 7, 2, 3, 1),     # a stem: 7x7 stride 2, C = 3
    (2, 21, 19, 3, 70, 7, 2, 3, 1),    # a stem with 70 channels: cl_tiles' full panels and a partial one
    (1, 9, 121, 3, 64, 7, 2, 3, 1),    # a stem with output rows of 61: cl_tiles' direct form
    (2, 5, 58, 6, 128, 3, 1, 1, 1),    # 3x3 stride 1, rows of 58: the direct form, two panels
    (1, 15, 14, 20, 128, 3, 2, 1, 1),  # 128 channels, 3x3 stride 2
    (2, 9, 11, 3, 5, 7, 1, 2, 1),
    (2, 13, 9, 16, 12, 3, 1, 1, 1),    # 3x3 stride 1: both Winograds
    (3, 7, 7, 5, 6, 3, 1, 0, 1),
    (1, 8, 8, 3, 4, 3, 1, 3, 1),       # padding 3 on a 3x3: the output is larger than the input
    (2, 12, 12, 64, 32, 3, 1, 1, 1),   # 64 channels, 4x4 tiles divide the output
    (1, 17, 15, 40, 20, 3, 2, 1, 1),   # 3x3 stride 2 (a downsampling block's conv1)
    (2, 11, 15, 24, 10, 5, 1, 2, 1),   # 5x5
    (1, 15, 13, 8, 9, 5, 2, 1, 1),
    (2, 9, 9, 12, 16, 1, 1, 0, 1),     # 1x1 stride 1, unpadded: x's rows multiplied as they are
    (2, 10, 9, 12, 7, 1, 2, 0, 1),     # 1x1 stride 2 (a downsample)
    (3, 5, 7, 6, 4, 1, 1, 1, 1),       # 1x1 padded: unfolded
    (1, 11, 13, 6, 5, 3, 1, 2, 2),     # dilation 2
    (2, 14, 9, 4, 3, 3, 2, 3, 2),      # dilation 2, stride 2, padding 3
    (1, 16, 17, 7, 6, 5, 1, 0, 2),
]
# (bias, residual, relu)
EPILOGUES = [(False, False, False), (True, False, True), (True, True, True), (False, True, False), (True, True, False)]


def _expected_variants(x_shape, w_shape, stride, dilation):
    names = {"cl_gemm", "cl_gemm_t", "cl_tiles"}
    if tuple(w_shape[2:]) == (3, 3) and stride == 1 and dilation == 1:
        names |= {"cl_winograd_f2x2_3x3", "cl_winograd_f4x4_3x3"}
    return names


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: "b%d-r%d-relu%d" % e)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_every_cl_variant_matches_the_nchw_reference(case, epilogue, kernel_form, products):
    N, H, W, C, K, R, s, p, d = case
    bias, residual, relu = epilogue
    rng = np.random.default_rng(sum(case) * 31 + 7 * bias + 3 * residual + relu)
    x, w, b, res = _conv_arrays(rng, N, H, W, C, K, R, s, p, d, bias, residual)
    want = ref_conv_cl(x, w, b, s, p, d, 1, res, relu)
    variants = cl.conv_variants_cl(x.shape, w.shape, (s, s), (p, p), (d, d), 1)
    assert set(variants) == _expected_variants(x.shape, w.shape, s, d)
    x_before = x.copy()
    res_before = None if res is None else res.copy()
    for name, fn in variants.items():
        got = fn(x, w, b, (s, s), (p, p), (d, d), 1, residual=res, relu=relu)
        assert got.shape == want.shape and got.dtype == np.float32, name
        assert got.flags.c_contiguous
        err = _rel(got, want)
        assert err < _tol(np.float32, name), f"{name}: relative error {err:.3g}"
        if relu:
            assert got.min() >= 0
    # the inputs are read, never written
    np.testing.assert_array_equal(x, x_before)
    if res is not None:
        np.testing.assert_array_equal(res, res_before)
    # the op picks one of them, and computes what that variant computes
    picked = cl.choose_variant_cl(x.shape, w.shape, (s, s), (p, p), (d, d), 1)
    assert picked in variants
    np.testing.assert_array_equal(cl.conv2d_fused_forward_cl(x, w, b, s, p, d, 1, residual=res, relu=relu),
                                  variants[picked](x, w, b, s, p, d, 1, residual=res, relu=relu))


@given(n=st.integers(1, 3), h=st.integers(1, 14), w_=st.integers(1, 14), c=st.sampled_from([1, 3, 8, 33]),
       k=st.integers(1, 12), r=st.sampled_from([1, 2, 3, 5]), s=st.sampled_from([1, 2, 3]),
       p=st.integers(0, 3), d=st.sampled_from([1, 2]), bias=st.booleans(), residual=st.booleans(),
       relu=st.booleans(), seed=st.integers(0, 2**16))
def test_cl_variants_on_drawn_shapes(n, h, w_, c, k, r, s, p, d, bias, residual, relu, seed):
    P, Q = _out_hw(h, w_, r, r, s, p, d)
    if P < 1 or Q < 1:
        return
    rng = np.random.default_rng(seed)
    x, w, b, res = _conv_arrays(rng, n, h, w_, c, k, r, s, p, d, bias, residual)
    want = ref_conv_cl(x, w, b, s, p, d, 1, res, relu)
    variants = cl.conv_variants_cl(x.shape, w.shape, (s, s), (p, p), (d, d), 1)
    assert set(variants) == _expected_variants(x.shape, w.shape, s, d)
    # the scale: the largest pre-activation value (a ReLU may leave only a few small outputs)
    scale = max(float(np.abs(ref_conv_cl(x, w, b, s, p, d, 1, res, False)).max()), 1e-3)
    for name, fn in variants.items():
        got = fn(x, w, b, (s, s), (p, p), (d, d), 1, residual=res, relu=relu)
        assert got.shape == want.shape
        err = float(np.abs(got.astype(np.float64) - want).max()) / scale
        assert err < _tol(np.float32, name), f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("case", [
    (2, 9, 11, 3, 5, 7, 2, 3, 1),
    (2, 11, 10, 12, 7, 3, 1, 1, 1),
    (1, 10, 10, 6, 9, 3, 1, 2, 1),
    (3, 9, 7, 5, 4, 3, 2, 1, 2),
    (2, 8, 8, 8, 8, 1, 1, 0, 1),
])
def test_cl_variants_in_float64(case, kernel_form, products):
    N, H, W, C, K, R, s, p, d = case
    rng = np.random.default_rng(sum(case))
    x, w, b, res = _conv_arrays(rng, N, H, W, C, K, R, s, p, d, True, True, dtype=np.float64)
    want = ref_conv_cl(x, w, b, s, p, d, 1, res, True)
    variants = cl.conv_variants_cl(x.shape, w.shape, (s, s), (p, p), (d, d), 1)
    assert set(variants) == _expected_variants(x.shape, w.shape, s, d)
    for name, fn in variants.items():
        got = fn(x, w, b, (s, s), (p, p), (d, d), 1, residual=res, relu=True)
        assert got.dtype == np.float64, name
        err = _rel(got, want)
        assert err < F64_TOL, f"{name}: relative error {err:.3g}"


def test_float32_filter_on_float64_input_computes_in_float64():
    rng = np.random.default_rng(5)
    x, w, b, _ = _conv_arrays(rng, 2, 9, 9, 8, 6, 3, 1, 1, 1, True, False, dtype=np.float64)
    w32 = w.astype(np.float32)
    w32.flags.writeable = False  # a constant filter: its float64 matrix is derived and cached
    want = ref_conv_cl(x, w32.astype(np.float64), b, 1, 1, 1)
    for name, fn in cl.conv_variants_cl(x.shape, w.shape, 1, 1, 1, 1).items():
        got = fn(x, w32, b, 1, 1, 1, 1)
        assert got.dtype == np.float64 and _rel(got, want) < F64_TOL, name


def test_chunked_gemm_and_winograd_match_the_reference(monkeypatch, kernel_form, products):
    """Chunks of 5 unfolded rows (boundaries inside output rows and across images) and one image
    per Winograd chunk: every chunk's rows and residual land where they belong."""
    monkeypatch.setattr(cl, "MIN_CHUNK_ROWS", 5)
    monkeypatch.setattr(cl, "COLS_CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd, "TARGET_TILES", 1)
    rng = np.random.default_rng(11)
    for (N, H, W, C, K, R, s, p, d) in [(3, 7, 9, 5, 6, 3, 1, 1, 1), (2, 9, 8, 4, 5, 3, 2, 1, 1),
                                        (3, 6, 5, 7, 3, 1, 1, 0, 1), (2, 8, 7, 3, 4, 5, 1, 2, 2)]:
        x, w, b, res = _conv_arrays(rng, N, H, W, C, K, R, s, p, d, True, True)
        want = ref_conv_cl(x, w, b, s, p, d, 1, res, True)
        for name, fn in cl.conv_variants_cl(x.shape, w.shape, s, p, d, 1).items():
            assert _rel(fn(x, w, b, s, p, d, 1, residual=res, relu=True), want) < F32_TOL[name], name


def test_non_contiguous_inputs_are_read_correctly():
    rng = np.random.default_rng(12)
    x_nchw = rng.standard_normal((2, 6, 9, 10)).astype(np.float32)
    res_nchw = rng.standard_normal((2, 5, 9, 10)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x, res = x_nchw.transpose(0, 2, 3, 1), res_nchw.transpose(0, 2, 3, 1)  # views, not C-contiguous
    assert not x.flags.c_contiguous and not res.flags.c_contiguous
    want = ref_conv_cl(np.ascontiguousarray(x), w, b, 1, 1, 1, 1, np.ascontiguousarray(res), True)
    for name, fn in cl.conv_variants_cl(x.shape, w.shape, 1, 1, 1, 1).items():
        assert _rel(fn(x, w, b, 1, 1, 1, 1, residual=res, relu=True), want) < F32_TOL[name], name
    # a strided window of a larger array
    big = rng.standard_normal((2, 18, 20, 6)).astype(np.float32)
    xs = big[:, ::2, ::2, :]
    want = ref_conv_cl(np.ascontiguousarray(xs), w, b, 1, 1, 1)
    assert _rel(cl.cl_gemm(xs, w, b, 1, 1, 1, 1), want) < F32_TOL["cl_gemm"]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation", [
    ((1, 16, 16, 64), (64, 64, 3, 3), 1, 1, 1),
    ((8, 16, 16, 64), (64, 64, 3, 3), 1, 1, 1),
    ((1, 14, 14, 64), (64, 64, 3, 3), 1, 1, 1),
    ((8, 7, 7, 512), (512, 512, 3, 3), 1, 1, 1),
    ((1, 7, 7, 512), (512, 512, 3, 3), 1, 1, 1),
    ((4, 8, 8, 1024), (16, 1024, 3, 3), 1, 1, 1),
    ((1, 16, 16, 16), (64, 16, 3, 3), 1, 1, 1),
    ((2, 16, 16, 64), (64, 64, 3, 3), 2, 1, 1),
    ((2, 16, 16, 64), (64, 64, 3, 3), 1, 2, 2),
    ((2, 16, 16, 64), (128, 64, 1, 1), 2, 0, 1),
    ((1, 64, 64, 3), (64, 3, 7, 7), 2, 3, 1),
])
def test_choose_variant_cl_picks_a_variant_that_applies(x_shape, w_shape, stride, padding, dilation):
    """The fixed rule (tuned by hand; not pinned here) only ever names a variant that can compute
    the layer: no Winograd off 3x3 stride-1 dilation-1 layers, no F(4x4) over 512 channels."""
    picked = cl.choose_variant_cl(x_shape, w_shape, stride, padding, dilation, 1)
    applicable = cl.conv_variants_cl(x_shape, w_shape, stride, padding, dilation, 1)
    assert picked in applicable
    if x_shape[3] > cl.WINOGRAD_F4_MAX_CHANNELS:
        assert "cl_winograd_f4x4_3x3" not in applicable
    assert set(applicable) == _expected_variants(x_shape, w_shape, stride, dilation) - (
        {"cl_winograd_f4x4_3x3"} if x_shape[3] > cl.WINOGRAD_F4_MAX_CHANNELS else set())
    assert cl.conv_variants_cl(x_shape, (w_shape[0], w_shape[1] // 2, *w_shape[2:]), stride, padding, dilation,
                               2) == {}


# -- out=, and refused arguments -------------------------------------------------------------------


def _one_by_one(rng, C=6):
    x = rng.standard_normal((2, 5, 7, C)).astype(np.float32)
    w = rng.standard_normal((C, C, 1, 1)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_out_is_written_and_returned(name):
    rng = np.random.default_rng(21)
    x, w, b, res = _conv_arrays(rng, 2, 9, 8, 5, 4, 3, 1, 1, 1, True, True)
    fn = cl.VARIANTS[name]
    want = fn(x, w, b, 1, 1, 1, 1, residual=res, relu=True)
    out = np.full(want.shape, np.nan, np.float32)
    got = fn(x, w, b, 1, 1, 1, 1, residual=res, relu=True, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)
    assert _rel(out, ref_conv_cl(x, w, b, 1, 1, 1, 1, res, True)) < F32_TOL[name]
    # a second call into the same buffer overwrites all of it
    got = fn(x, w, None, 1, 1, 1, 1, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fn(x, w, None, 1, 1, 1, 1))


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS) + ["op"])
def test_bad_out_is_refused(name):
    fn = cl.conv2d_fused_forward_cl if name == "op" else cl.VARIANTS[name]
    rng = np.random.default_rng(22)
    x, w, b, res = _conv_arrays(rng, 2, 9, 8, 5, 4, 3, 1, 1, 1, True, True)
    shape = res.shape
    args = (x, w, b, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"out has shape \(2, 9, 8, 3\).*the result has shape \(2, 9, 8, 4\)"):
        fn(*args, out=np.empty((2, 9, 8, 3), np.float32))
    with pytest.raises(ValueError, match="dtype float64.*dtype float32"):
        fn(*args, out=np.empty(shape, np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(*args, out=np.empty((2, 8, 9, 4), np.float32).transpose(0, 2, 1, 3))
    readonly = np.empty(shape, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fn(*args, out=readonly)
    with pytest.raises(ValueError, match="numpy array"):
        fn(*args, out=np.empty(shape, np.float32).tolist())
    with pytest.raises(ValueError, match="out must not overlap the input or the residual"):
        fn(*args, residual=res, out=res)
    with pytest.raises(ValueError, match="out must not overlap the input or the residual"):
        fn(*args, residual=res, out=res.reshape(-1).reshape(shape))  # a view of the residual
    with pytest.raises(ValueError, match=r"residual shape \(2, 9, 8, 5\) does not match the output shape \(2, 9, 8, 4\)"):
        fn(*args, residual=np.zeros((2, 9, 8, 5), np.float32))
    with pytest.raises(ValueError, match="residual shape"):
        fn(*args, residual=np.zeros((2, 4, 9, 8), np.float32))  # NCHW residual
    with pytest.raises(ValueError, match="channels"):
        fn(x.transpose(0, 3, 1, 2), w, b, 1, 1, 1, 1)  # NCHW input: 8 "channels", the filter wants 5


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS) + ["op"])
def test_input_that_is_not_4d_is_refused_clearly(name):
    fn = cl.conv2d_fused_forward_cl if name == "op" else cl.VARIANTS[name]
    x = np.zeros((9, 8, 5), np.float32)
    w = np.zeros((4, 5, 3, 3), np.float32)
    with pytest.raises(ValueError) as info:
        fn(x, w, None, 1, 1, 1, 1)
    assert re.search(r"expected channels-last input \(N, H, W, C\), got shape \(9, 8, 5\)", str(info.value)), \
        str(info.value)
    with pytest.raises(ValueError) as info:
        fn(x[None, None], w, None, 1, 1, 1, 1)
    assert "expected channels-last input" in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["cl_gemm", "cl_gemm_t", "cl_tiles", "op"])
def test_out_overlapping_the_input_is_refused(name):
    fn = cl.conv2d_fused_forward_cl if name == "op" else cl.VARIANTS[name]
    x, w, b = _one_by_one(np.random.default_rng(23))  # a 1x1 conv: y has x's shape
    keep = x.copy()
    with pytest.raises(ValueError, match="out must not overlap the input"):
        fn(x, w, b, 1, 0, 1, 1, out=x)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("name", ["cl_winograd_f2x2_3x3", "cl_winograd_f4x4_3x3"])
def test_winograd_refuses_layers_it_cannot_compute(name):
    fn = cl.VARIANTS[name]
    rng = np.random.default_rng(24)
    x = rng.standard_normal((1, 10, 10, 4)).astype(np.float32)
    w3 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    w5 = rng.standard_normal((4, 4, 5, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"conv2d_cl\[{name}\]: needs a 3x3 kernel, stride 1.*stride \(2, 2\)"):
        fn(x, w3, None, 2, 1, 1, 1)
    with pytest.raises(ValueError, match=r"needs a 3x3 kernel.*weight \(4, 4, 5, 5\)"):
        fn(x, w5, None, 1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"needs a 3x3 kernel.*dilation \(2, 2\)"):
        fn(x, w3, None, 1, 2, 2, 1)
    with pytest.raises(ValueError, match="groups 2"):
        fn(x, rng.standard_normal((4, 2, 3, 3)).astype(np.float32), None, 1, 1, 1, 2)


@pytest.mark.parametrize("name", ["cl_gemm", "cl_gemm_t", "cl_tiles"])
def test_gemm_variants_refuse_groups(name):
    x = np.zeros((1, 6, 6, 4), np.float32)
    with pytest.raises(ValueError, match=rf"conv2d_cl\[{name}\]: needs groups 1, got 2"):
        cl.VARIANTS[name](x, np.zeros((4, 2, 3, 3), np.float32), None, 1, 1, 1, 2)


# -- grouped convolutions ----------------------------------------------------------------------------


@pytest.mark.parametrize("groups,C,K,R,s,p,d", [
    (2, 6, 4, 3, 1, 1, 1),
    (2, 8, 6, 3, 2, 1, 1),
    (2, 4, 8, 1, 1, 0, 1),
    (3, 9, 6, 5, 1, 2, 2),
    (8, 8, 8, 3, 1, 1, 1),     # depthwise
])
def test_grouped_conv_matches_the_reference(groups, C, K, R, s, p, d):
    rng = np.random.default_rng(groups * 100 + C)
    N, H, W = 2, 11, 9
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((K, C // groups, R, R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    P, Q = _out_hw(H, W, R, R, s, p, d)
    res = rng.standard_normal((N, P, Q, K)).astype(np.float32)
    want = ref_conv_cl(x, w, b, s, p, d, groups, res, True)
    got = cl.conv2d_fused_forward_cl(x, w, b, s, p, d, groups, residual=res, relu=True)
    assert got.shape == (N, P, Q, K) and got.flags.c_contiguous
    assert _rel(got, want) < 2e-5
    assert _rel(cl.conv2d_fused_forward_cl(x, w, None, s, p, d, groups), ref_conv_cl(x, w, None, s, p, d, groups)) < 2e-5
    out = np.empty((N, P, Q, K), np.float32)
    assert cl.conv2d_fused_forward_cl(x, w, b, s, p, d, groups, residual=res, relu=True, out=out) is out
    np.testing.assert_array_equal(out, got)
    assert cl.conv_variants_cl(x.shape, w.shape, s, p, d, groups) == {}


def test_grouped_conv_refuses_bad_out_like_the_ungrouped_one():
    rng = np.random.default_rng(61)
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    for bad in (np.empty((1, 6, 6, 4), np.float64), np.empty((1, 6, 4, 6), np.float32).transpose(0, 1, 3, 2), x):
        with pytest.raises(ValueError):
            cl.conv2d_fused_forward_cl(x, w, None, 1, 0, 1, 2, out=bad)


# -- the constant-filter cache ------------------------------------------------------------------------


CACHE_KEYS = {
    "cl_gemm": ("cl_gemm", "<f4"),
    "cl_gemm_t": ("cl_gemm_t", "<f4"),
    "cl_tiles": ("cl_tiles", "<f4"),
    "cl_winograd_f2x2_3x3": ("cl_winograd", 2, "<f4"),
    "cl_winograd_f4x4_3x3": ("cl_winograd", 4, "<f4"),
}


def _cache_key(name):
    """The filter cache's key of a variant's derived form (the Winograd transforms are cached as
    panels, under their own key, when the products run by ``_tiles``)."""
    key = CACHE_KEYS[name]
    if key[0] == "cl_winograd" and cl.PRODUCTS_BY_TILES:
        return ("cl_winograd_tiles", *key[1:])
    return key


def _cached(w):
    entry = _filters._table.get(id(w))
    if entry is None or entry[0]() is not w:
        return {}
    return dict(entry[1])


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_constant_filter_is_derived_once_and_reused(name, products):
    rng = np.random.default_rng(31)
    x, w, b, res = _conv_arrays(rng, 2, 10, 9, 6, 5, 3, 1, 1, 1, True, True)
    w.flags.writeable = False
    assert _filters.is_constant(w)
    fn = cl.VARIANTS[name]
    first = fn(x, w, b, 1, 1, 1, 1, residual=res, relu=True)
    cached = _cached(w)
    key = _cache_key(name)
    assert key in cached, cached.keys()
    derived = cached[key]
    assert not derived.flags.writeable
    second = fn(x, w, b, 1, 1, 1, 1, residual=res, relu=True)
    np.testing.assert_array_equal(first, second)
    assert _cached(w)[key] is derived  # the very same array: not derived again
    assert _rel(second, ref_conv_cl(x, w, b, 1, 1, 1, 1, res, True)) < F32_TOL[name]
    if name == "cl_gemm":  # row (r*S + s)*C + c holds w[:, c, r, s]
        np.testing.assert_array_equal(derived, w.transpose(2, 3, 1, 0).reshape(3 * 3 * 6, 5))
    if name == "cl_gemm_t":
        np.testing.assert_array_equal(derived, w.transpose(0, 2, 3, 1).reshape(5, 3 * 3 * 6))
    if name == "cl_tiles":  # cl_gemm's matrix in panels of tile_cols columns, zeros past the 5 channels
        np.testing.assert_array_equal(derived, _tiles.pack(w.transpose(2, 3, 1, 0).reshape(3 * 3 * 6, 5)))


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_writeable_filter_changed_in_place_gives_the_new_result(name):
    rng = np.random.default_rng(32)
    x, w, b, _ = _conv_arrays(rng, 2, 10, 9, 6, 5, 3, 1, 1, 1, True, False)
    fn = cl.VARIANTS[name]
    first = fn(x, w, b, 1, 1, 1, 1)
    assert _cached(w) == {}  # a writeable filter is never cached
    w *= -0.5
    w[0, 0, 1, 1] += 3.0
    second = fn(x, w, b, 1, 1, 1, 1)
    assert _rel(second, ref_conv_cl(x, w, b, 1, 1, 1)) < F32_TOL[name]
    assert _rel(first, second) > 0.1
    # a read-only view of a writeable array is not constant either: its base can still change
    base = rng.standard_normal(w.shape).astype(np.float32)
    view = base.view()
    view.flags.writeable = False
    before = fn(x, view, b, 1, 1, 1, 1)
    base[:] = -base
    after = fn(x, view, b, 1, 1, 1, 1)
    assert _rel(after, ref_conv_cl(x, base, b, 1, 1, 1)) < F32_TOL[name]
    assert _rel(before, after) > 0.1


# -- max pooling ------------------------------------------------------------------------------------

# (kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    (3, 2, 1, 1, False),            # a ResNet stem's
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, True),             # the last window hangs over the edge
    (2, 2, 0, 1, True),
    (3, 1, 1, 2, False),            # dilation 2
    (3, 3, 1, 2, True),
    ((3, 2), (2, 1), (1, 0), (1, 2), True),
    ((1, 3), (1, 2), (0, 1), 1, False),
]


def _pool_input(rng, shape, dtype=np.float32):
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[:12]] = np.nan
    flat[idx[12:60]] = -np.inf
    x[0, :3, :3, 0] = -np.inf    # a corner window of -inf only: -inf out
    x[-1, -3:, :, -1] = np.nan   # whole bottom rows of NaN
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_cl_matches_the_reference(case, dtype, kernel_form):
    k, s, p, d, ceil = case
    rng = np.random.default_rng(41)
    x = _pool_input(rng, (2, 11, 10, 5), dtype)
    want = ref_maxpool_cl(x, k, s, p, d, ceil)
    got = cl.maxpool2d_forward_cl(x, k, s, p, d, ceil_mode=ceil)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)  # NaN where the reference has NaN, -inf where it has -inf
    assert np.isnan(got).any()
    out = np.full(want.shape, 7.0, dtype)
    assert cl.maxpool2d_forward_cl(x, k, s, p, d, ceil, out=out) is out
    np.testing.assert_array_equal(out, want)


def _bias_relu(y, b, relu):
    """The reference epilogue on a pooled (N, P, Q, C) array: + b, then max(., 0) with NaN kept."""
    y = y + b if b is not None else y.copy()
    return np.where(y < 0, y.dtype.type(0), y) if relu else y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias,relu", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("case", POOL_CASES[:4], ids=str)
def test_maxpool_cl_with_bias_and_relu(case, bias, relu, dtype, kernel_form):
    k, s, p, d, ceil = case
    rng = np.random.default_rng(44)
    x = _pool_input(rng, (2, 11, 10, 5), dtype)
    b = rng.standard_normal(5).astype(dtype) if bias else None
    want = _bias_relu(ref_maxpool_cl(x, k, s, p, d, ceil), b, relu)
    got = cl.maxpool2d_forward_cl(x, k, s, p, d, ceil_mode=ceil, bias=b, relu=relu)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got).any() and (not relu or np.nanmin(got) == 0)
    out = np.full(want.shape, 7.0, dtype)
    assert cl.maxpool2d_forward_cl(x, k, s, p, d, ceil, out=out, bias=b, relu=relu) is out
    np.testing.assert_array_equal(out, want)
    with mc.backend("numpy"):
        kk, ss, pp, dd = (_pairs(a)[0] for a in (k, s, p, d))
        np.testing.assert_array_equal(
            _defaults.maxpool2d_forward_cl(x, kk, ss, pp, dd, ceil_mode=ceil, bias=b, relu=relu), want)


def test_maxpool_cl_epilogue_after_the_pool_is_the_stems_epilogue_before_it():
    # relu(maxpool(h) + b) == maxpool(relu(h + b)) bit for bit: what the compiled stem relies on
    rng = np.random.default_rng(45)
    h = (rng.standard_normal((3, 17, 15, 64)) * 3).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    before = cl.maxpool2d_forward_cl(np.maximum(h + b, 0), 3, 2, 1)
    after = cl.maxpool2d_forward_cl(h, 3, 2, 1, bias=b, relu=True)
    np.testing.assert_array_equal(after, before)
    with pytest.raises(ValueError, match=r"maxpool2d_cl: bias must have shape \(64,\), got \(63,\)"):
        cl.maxpool2d_forward_cl(h, 3, 2, 1, bias=b[:63])


def test_maxpool_cl_nan_and_inf_rules():
    x = np.full((1, 2, 4, 3), -np.inf, np.float32)
    x[0, 0, 0, 0] = np.nan      # channel 0, first window: NaN first, then real values
    x[0, 0, 1, 0] = 5.0
    x[0, 1, 3, 1] = np.nan      # channel 1, second window: values, then NaN last
    x[0, 0, 2, 1] = 2.0
    x[0, 1, 2, 2] = -1.0        # channel 2: -inf and one real value
    got = cl.maxpool2d_forward_cl(x, 2, 2, 0)
    assert got.shape == (1, 1, 2, 3)
    assert np.isnan(got[0, 0, 0, 0])
    assert got[0, 0, 1, 0] == -np.inf   # a window of -inf only
    assert got[0, 0, 0, 1] == -np.inf and np.isnan(got[0, 0, 1, 1])
    assert got[0, 0, 0, 2] == -np.inf and got[0, 0, 1, 2] == -1.0
    np.testing.assert_array_equal(got, ref_maxpool_cl(x, 2, 2, 0))


def test_maxpool_cl_stride_none_integers_and_refusals():
    rng = np.random.default_rng(42)
    x = rng.standard_normal((2, 8, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(cl.maxpool2d_forward_cl(x, 2, None, 0), ref_maxpool_cl(x, 2, 2, 0))
    xi = rng.integers(-50, 50, (1, 6, 6, 4))
    got = cl.maxpool2d_forward_cl(xi, 3, 2, 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref_maxpool_cl(xi.astype(np.float32), 3, 2, 1))
    with pytest.raises(ValueError, match=r"maxpool2d_cl: expected channels-last input \(N, H, W, C\)"):
        cl.maxpool2d_forward_cl(x[0], 2, 2, 0)
    with pytest.raises(ValueError, match="out must be a C-contiguous writeable float32 array of shape"):
        cl.maxpool2d_forward_cl(x, 2, 2, 0, out=np.empty((2, 4, 3, 2), np.float32))
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        cl.maxpool2d_forward_cl(x, 2, 2, 0, out=np.empty((2, 4, 3, 3), np.float64))
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        cl.maxpool2d_forward_cl(x, 2, 2, 0, out=np.empty((2, 3, 4, 3), np.float32).transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match="out must not overlap the input"):
        cl.maxpool2d_forward_cl(x, 1, 1, 0, out=x)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        cl.maxpool2d_forward_cl(x, 9, 1, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 4, 9), (3, 8, 1, 1)])
def test_to_channels_last_is_the_transposing_copy(shape, dtype, kernel_form):
    x = (np.random.default_rng(46).standard_normal(shape) * 10).astype(dtype)
    want = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = cl.to_channels_last(x)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    out = np.full(want.shape, 7, dtype)
    assert cl.to_channels_last(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    strided = np.repeat(x, 2, axis=3)[..., ::2]  # not C-ordered: the numpy copy
    np.testing.assert_array_equal(cl.to_channels_last(strided), want)
    with mc.backend("numpy"):
        np.testing.assert_array_equal(_defaults.to_channels_last(x), want)
        out2 = np.empty_like(want)
        assert _defaults.to_channels_last(x, out=out2) is out2
        np.testing.assert_array_equal(out2, want)


def test_to_channels_last_refusals():
    x = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"to_channels_last: expected input of shape \(N, C, H, W\), got shape \(3, 4, 5\)"):
        cl.to_channels_last(x[0])
    with pytest.raises(ValueError, match=r"out must be a C-contiguous writeable float32 array of shape \(2, 4, 5, 3\)"):
        cl.to_channels_last(x, out=np.empty((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        cl.to_channels_last(x, out=np.empty((2, 4, 5, 3), np.float64))
    sq = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out must not overlap the input"):
        cl.to_channels_last(sq, out=sq)


# -- the defaults (backends without channels-last kernels) ---------------------------------------------


def test_channels_last_entries_of_the_tables():
    numpy_be, numba_be = backends.load("numpy"), backends.load("numba")
    assert numpy_be.OPS["channels_last"]() is False
    assert numba_be.OPS["channels_last"]() is True
    assert numpy_be.OPS["conv2d_fused_forward_cl"] is _defaults.conv2d_fused_forward_cl
    assert numpy_be.OPS["maxpool2d_forward_cl"] is _defaults.maxpool2d_forward_cl
    assert numpy_be.OPS["conv_variants_cl"]((1, 8, 8, 64), (64, 64, 3, 3), 1, 1, 1, 1) == {}
    assert numba_be.OPS["conv2d_fused_forward_cl"] is cl.conv2d_fused_forward_cl
    assert numba_be.OPS["maxpool2d_forward_cl"] is cl.maxpool2d_forward_cl
    assert numpy_be.OPS["to_channels_last"] is _defaults.to_channels_last
    assert numba_be.OPS["to_channels_last"] is cl.to_channels_last
    assert set(numba_be.OPS["conv_variants_cl"]((1, 8, 8, 64), (64, 64, 3, 3), 1, 1, 1, 1)) == ALL_VARIANTS


@pytest.mark.parametrize("case", [(2, 11, 9, 3, 8, 7, 2, 3, 1, 1), (2, 9, 10, 8, 6, 3, 1, 1, 1, 1),
                                  (1, 10, 10, 6, 4, 3, 1, 2, 2, 2), (2, 8, 8, 16, 16, 1, 2, 0, 1, 1)])
def test_default_conv_cl_under_numpy_equals_the_numba_op(case):
    N, H, W, C, K, R, s, p, d, g = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((K, C // g, R, R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    P, Q = _out_hw(H, W, R, R, s, p, d)
    res = rng.standard_normal((N, P, Q, K)).astype(np.float32)
    sp = _pairs(s, p, d)
    with mc.backend("numpy"):
        got = _defaults.conv2d_fused_forward_cl(x, w, b, *sp, g, residual=res, relu=True)
        assert backends.current().conv2d_fused_forward_cl is _defaults.conv2d_fused_forward_cl
        out = np.empty((N, P, Q, K), np.float32)
        assert _defaults.conv2d_fused_forward_cl(x, w, b, *sp, g, residual=res, relu=True, out=out) is out
        plain = _defaults.conv2d_fused_forward_cl(x, w, None, *sp, g)
    assert got.shape == (N, P, Q, K) and got.flags.c_contiguous
    np.testing.assert_array_equal(out, got)
    want = cl.conv2d_fused_forward_cl(x, w, b, *sp, g, residual=res, relu=True)
    assert _rel(got, want) < 2e-5
    assert _rel(plain, cl.conv2d_fused_forward_cl(x, w, None, *sp, g)) < 2e-5


@pytest.mark.parametrize("case", POOL_CASES[:5], ids=str)
def test_default_maxpool_cl_under_numpy_equals_the_numba_op(case):
    k, s, p, d, ceil = case
    x = _pool_input(np.random.default_rng(43), (2, 9, 12, 4))
    with mc.backend("numpy"):
        got = _defaults.maxpool2d_forward_cl(x, _pairs(k)[0], _pairs(s)[0], _pairs(p)[0], _pairs(d)[0], ceil_mode=ceil)
        out = np.empty_like(got)
        assert _defaults.maxpool2d_forward_cl(x, _pairs(k)[0], _pairs(s)[0], _pairs(p)[0], _pairs(d)[0],
                                              ceil_mode=ceil, out=out) is out
    assert got.flags.c_contiguous
    want = cl.maxpool2d_forward_cl(x, k, s, p, d, ceil_mode=ceil)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out, want)


# -- compiled ResNets -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_resnet():
    return resnet18(weights=seeded_state_dict("resnet18", seed=3, num_classes=10)).eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(17)
    return {"x2": rng.standard_normal((2, 3, 64, 64)).astype(np.float32),
            "x1": rng.standard_normal((1, 3, 48, 56)).astype(np.float32)}


@pytest.fixture(scope="module")
def reference(seeded_resnet, inputs):
    with mc.backend("numpy"), mc.no_grad():
        return {k: {"forward": mc.to_numpy(seeded_resnet(x)).copy(),
                    "forward_features": mc.to_numpy(seeded_resnet.forward_features(x)).copy(),
                    "embed": mc.to_numpy(seeded_resnet.embed(x)).copy()} for k, x in inputs.items()}


def _layouts(fast):
    """The layouts (key's last item) of every autotuned pick of a compiled model."""
    return {key[-1] for picks in fast.variants().values() for key in picks}


METHODS = ("forward", "forward_features", "embed")


def test_compiled_resnet_channels_last_matches_nchw_and_the_eval_model(seeded_resnet, inputs, reference):
    fast_cl = inference.compile_inference(seeded_resnet, channels_last=True)
    fast_nchw = inference.compile_inference(seeded_resnet, channels_last=False)
    with mc.backend("numba"):
        for key, x in inputs.items():
            for method in METHODS:
                a = np.array(getattr(fast_cl, method)(x), copy=True)
                b = np.array(getattr(fast_nchw, method)(x), copy=True)
                want = reference[key][method]
                assert a.shape == want.shape, (key, method)
                assert _rel(a, want) < 1e-4, (key, method)
                assert _rel(a, b) < 1e-4, (key, method)
                assert np.abs(want).max() > 1e-3
    assert _layouts(fast_cl) == {"cl"}
    assert _layouts(fast_nchw) == {"nchw"}
    # every conv is tuned channels-last, the stem's included (its max pool is a separate op)
    assert set(fast_cl.variants()) == {c.name for c in fast_cl.convs()}
    for picks in fast_cl.variants().values():
        for key, variant in picks.items():
            assert len(key[0]) == 4 and key[0][3] in (3, 64, 128, 256, 512)  # (N, H, W, C) inputs
            assert variant == "op" or variant in ALL_VARIANTS


def test_compiled_resnet_channels_last_with_fixed_rule(seeded_resnet, inputs, reference):
    fast = inference.compile_inference(seeded_resnet, autotune=False, channels_last=True)
    with mc.backend("numba"):
        y = fast(inputs["x2"])
    assert _rel(y, reference["x2"]["forward"]) < 1e-4
    assert fast.variants() == {}


def test_channels_last_none_follows_the_backend_in_force(seeded_resnet, inputs, reference):
    fast = inference.compile_inference(seeded_resnet)  # channels_last=None
    x, want = inputs["x2"], reference["x2"]["forward"]
    with mc.backend("numba"):
        y1 = np.array(fast(x), copy=True)
    assert _layouts(fast) == {"cl"}
    with mc.backend("numpy"):  # numpy says channels_last() False: NCHW, with the same model object
        y2 = np.array(fast(x), copy=True)
    assert _layouts(fast) == {"cl", "nchw"}
    assert all(key[-1] == "nchw" for picks in fast.variants().values() for key in picks if key[2] == "numpy")
    assert all(key[-1] == "cl" for picks in fast.variants().values() for key in picks if key[2] == "numba")
    with mc.backend("numba"):  # and back: the pooled buffers of either layout do not mix
        y3 = np.array(fast(x), copy=True)
    assert _rel(y1, want) < 1e-4 and _rel(y2, want) < 1e-4
    np.testing.assert_array_equal(y1, y3)


def test_channels_last_true_under_numpy_runs_the_defaults(seeded_resnet, inputs, reference):
    fast = inference.compile_inference(seeded_resnet, channels_last=True)
    with mc.backend("numpy"):
        for key, x in inputs.items():
            for method in METHODS:
                got = getattr(fast, method)(x)
                assert _rel(got, reference[key][method]) < 1e-4, (key, method)
    assert _layouts(fast) == {"cl"}
    assert {v for picks in fast.variants().values() for v in picks.values()} == {"op"}



@pytest.mark.parametrize("method", METHODS)
def test_channels_last_batch_split(method, seeded_resnet, two_threads, monkeypatch):
    """The backend reports two threads (patched, so the split happens on any machine): a batch of 8
    runs as two slices of 4, each exactly the slice computed alone on one thread, and the whole
    agrees with the unsplit pass and the eval model. Not autotuned: the last stage runs on the
    joined batch of 8, and the autotuner may pick another variant (other rounding) for 8 images than
    for the 4 a slice alone has."""
    x = np.random.default_rng(19).standard_normal((8, 3, 32, 32)).astype(np.float32)
    fast = inference.compile_inference(seeded_resnet, autotune=False, channels_last=True)
    with mc.backend("numba"):
        y = np.array(getattr(fast, method)(x), copy=True)
    assert two_threads == [[(0, 4), (4, 8)]]
    for lo, hi in two_threads[0]:
        np.testing.assert_array_equal(y[lo:hi], on_one_thread(getattr(fast, method), x[lo:hi]))
    monkeypatch.setitem(backends.load("numba").OPS, "threads", lambda: 1)  # now one pass
    with mc.backend("numba"):
        whole = np.array(getattr(fast, method)(x), copy=True)
    assert len(two_threads) == 1
    assert _rel(y, whole) < 1e-5
    with mc.backend("numpy"), mc.no_grad():
        eager = mc.to_numpy(getattr(seeded_resnet, method)(x))
    assert _rel(y, eager) < 1e-4


def test_concurrent_callers_of_a_channels_last_model_get_serial_results(seeded_resnet):
    fast = inference.compile_inference(seeded_resnet, channels_last=True)
    rng = np.random.default_rng(23)
    inputs = [rng.standard_normal(((1, 2)[i % 2], 3, 32, 32)).astype(np.float32) for i in range(2 * THREADS)]
    with mc.backend("numba"):
        serial = [np.array(fast(x), copy=True) for x in inputs]
    results = run_concurrently(fast, inputs, "numba")
    for i, (a, b) in enumerate(zip(results, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
    assert _layouts(fast) == {"cl"}


# -- models that run NCHW only ----------------------------------------------------------------------------


def test_vgg_refuses_channels_last_true_and_runs_nchw_otherwise():
    from minicnn.models.vgg import vgg11

    mc.manual_seed(0)
    model = vgg11(width=8, hidden=32, num_classes=5).eval()
    with pytest.raises(ValueError, match="channels_last=True applies to ResNets; CompiledVGG runs NCHW"):
        inference.compile_inference(model, channels_last=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with mc.no_grad(), mc.backend("numpy"):
        want = mc.to_numpy(model(x))
    for flag in (None, False):
        fast = inference.compile_inference(model, channels_last=flag)
        with mc.backend("numba"):
            got = fast(x)
        assert _rel(got, want) < 1e-4
        assert _layouts(fast) == {"nchw"}  # numba's channels_last() does not apply to a VGG


def test_onnx_import_refuses_channels_last_true():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    imported = mc.onnx.load(model.SerializeToString())
    with pytest.raises(ValueError, match="channels_last=True applies to ResNets; an ONNX import runs NCHW"):
        inference.compile_inference(imported, channels_last=True)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = np.maximum(ref_conv_cl(x.transpose(0, 2, 3, 1), w, None, 1, 1, 1), 0).transpose(0, 3, 1, 2)
    for flag in (None, False):
        fast = inference.compile_inference(imported, channels_last=flag)
        with mc.backend("numba"):
            assert _rel(fast(x), want) < 1e-4


@pytest.mark.parametrize("name", ["cl_gemm", "cl_gemm_t", "cl_tiles"])
def test_a_cached_filter_matrix_does_not_keep_its_filter_alive(name):
    # a 1x1 filter's (K, C) matrix is a reshape of the filter itself: the cache must hold a copy,
    # or the entry keyed on the filter would keep it alive, and freeing it inside _filters.clear()
    # (under the cache's lock) would run its finalizer, which takes the same lock
    import gc
    import weakref

    from minicnn.backends.numba import _filters

    rng = np.random.default_rng(71)
    x = rng.standard_normal((1, 5, 5, 8)).astype(np.float32)
    w = rng.standard_normal((6, 8, 1, 1)).astype(np.float32)
    w.flags.writeable = False
    y = cl.VARIANTS[name](x, w, None, 1, 0, 1, 1)
    np.testing.assert_allclose(y, np.einsum("nhwc,kc->nhwk", x, w[:, :, 0, 0]), rtol=1e-5, atol=1e-6)
    alive = weakref.ref(w)
    before = _filters.cached_entries()
    del w
    gc.collect()
    assert alive() is None
    assert _filters.cached_entries() < before
    _filters.clear()  # returns (no finalizer runs under the lock)


def test_the_autotuner_keeps_only_the_filter_forms_of_its_picks(seeded_resnet):
    """Each conv's autotuning tries every channels-last variant, and each derives a form of the
    filter (the GEMM matrices, the packed panels, two Winograd transforms: up to 8x the filter);
    afterwards only the forms of the variants picked for that conv stay cached."""
    import gc

    from minicnn.backends.numba import _variant_of

    _filters.clear()
    gc.collect()
    fast = inference.compile_inference(seeded_resnet, channels_last=True, autotune="all")
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with mc.backend("numba"):
        fast(x)
    convs = [fast.stem] + [c for blk in fast.blocks for c in blk.chain + ([blk.down] if blk.down else [])]
    for conv in convs:
        picked = {name for name, _ in conv.chosen.values()}
        assert picked and picked <= set(cl.VARIANTS), (conv.name, picked)
        kept = _cached(conv._host[0])
        # every variant derives a form, so the picks' forms are there; the others are gone
        assert kept and {_variant_of(key) for key in kept} <= picked, (conv.name, picked, list(kept))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 12), w_=st.integers(1, 20), c=st.sampled_from([1, 3, 8]),
       panels=st.integers(1, 2), r=st.integers(1, 7), s_=st.integers(1, 7), stride=st.sampled_from([1, 2, 3]),
       ph=st.integers(0, 8), pw=st.integers(0, 8), epilogue=st.sampled_from(EPILOGUES), f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_cl_tiles_direct_form_on_drawn_shapes(n, h, w_, c, panels, r, s_, stride, ph, pw, epilogue, f64, seed):
    """``cl_tiles``' direct form (``_direct_tiles_cl``) on every output width (``DIRECT_MIN_WIDTH``
    lowered to 1): windows partly or wholly in the padding on any side, rectangular filters,
    strides up to 3, one and two panels of output channels."""
    dtype = np.float64 if f64 else np.float32
    P, Q = _out_hw(h, w_, r, s_, stride, (ph, pw), 1)
    if P < 1 or Q < 1:
        return
    bias, residual, relu = epilogue
    K = panels * _tiles.tile_cols(dtype)
    rng = np.random.default_rng(seed)
    x, w, b, res = _conv_arrays(rng, n, h, w_, c, K, r, stride, (ph, pw), 1, bias, residual, dtype=dtype, S=s_)
    want = ref_conv_cl(x, w, b, stride, (ph, pw), 1, 1, res, relu)
    scale = max(float(np.abs(ref_conv_cl(x, w, b, stride, (ph, pw), 1, 1, res, False)).max()), 1e-3)
    saved = cl.DIRECT_MIN_WIDTH
    cl.DIRECT_MIN_WIDTH = 1
    try:
        got = cl.cl_tiles(x, w, b, stride, (ph, pw), 1, 1, residual=res, relu=relu)
    finally:
        cl.DIRECT_MIN_WIDTH = saved
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err < (F64_TOL if f64 else F32_TOL["cl_tiles"]), f"relative error {err:.3g}"
