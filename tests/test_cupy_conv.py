"""The cupy backend's convolution, transposed convolution and linear layer beyond the conformance suite.

The conformance suite (tests/test_conformance.py, "cupy-emu") checks the ops as the table exposes
them. Here: each forward algorithm on its own against the numpy reference at shapes that leave
ragged tiles (P*Q not a multiple of the 64-column tile, C*R*S not a multiple of the 8-deep K
step, more filters than one 64-row tile), the batch chunking of the column workspace, the
reduced-precision versions against a reference computed on the same rounded operands, and the
host-side rules (chunk sizes, column strides, dispatch, the precision context). Kernels run on
the host CUDA emulator, skipped only where there is no C++ compiler.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from minicnn.backends.cupy import conv as cc
from minicnn.backends.cupy import conv_transpose as ct
from minicnn.backends.cupy import linear as cl
from minicnn.backends.cupy._emulator import EmuRuntime, emulator_absent
from minicnn.backends.cupy.precision import get_precision, precision
from minicnn.backends.numpy import conv as ref
from minicnn.backends.numpy import conv_transpose as ref_t
from minicnn.backends.numpy import linear as ref_l

needs_emulator = pytest.mark.skipif(emulator_absent() is not None, reason=str(emulator_absent()))

F32, F64 = 2e-5, 1e-12


@pytest.fixture(scope="module")
def rt():
    return EmuRuntime()


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def tol(dt):
    return F32 if np.dtype(dt) == np.float32 else F64


def draw(rng, shape, dt):
    return rng.uniform(-2, 2, size=shape).astype(dt)


def round_tf32(a):
    """float32 -> tf32 (10-bit mantissa), to nearest with ties away from zero (cvt.rna.tf32.f32)."""
    u = np.asarray(a, np.float32).view(np.uint32).copy()
    finite = (u & 0x7F800000) != 0x7F800000
    u[finite] = (u[finite] + 0x1000) & 0xFFFFE000
    return u.view(np.float32)


def round_bf16(a):
    """float32 -> bfloat16 widened back to float32, to nearest with ties to even (finite inputs)."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


# (x shape, w shape, stride, padding, dilation, groups): every one leaves ragged tiles
AWKWARD = [
    ((2, 3, 9, 7), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),     # CRS 27, NPQ 126
    ((1, 4, 11, 13), (70, 2, 2, 3), (2, 1), (0, 2), (1, 2), 2),  # Kg 35 per group, CRS 12
    ((3, 2, 6, 5), (66, 2, 1, 1), (1, 1), (0, 0), (1, 1), 1),    # pointwise, 66 filters: two row tiles
    ((2, 3, 8, 8), (3, 1, 3, 2), (1, 2), (2, 1), (2, 1), 3),     # depthwise
    ((1, 5, 7, 9), (4, 5, 4, 1), (3, 2), (1, 0), (1, 1), 1),     # CRS 20, stride 3
    ((1, 3, 5, 4), (130, 3, 2, 2), (1, 1), (1, 0), (1, 1), 1),   # 130 filters: past one 128-row tile
    ((2, 2, 10, 9), (7, 2, 3, 1), (1, 1), (0, 0), (1, 1), 1),    # NPQ 144: past one 128-column tile
]


@needs_emulator
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("geom", AWKWARD)
@pytest.mark.parametrize("variant", ["implicit_gemm", "implicit_gemm_128", "im2col_gemm"])
def test_forward_variant_matches_reference_with_fused_epilogue(rt, variant, geom, dt):
    xs, ws, stride, padding, dilation, groups = geom
    rng = np.random.default_rng(len(xs) * 7 + ws[0])
    x, w, b = draw(rng, xs, dt), draw(rng, ws, dt), draw(rng, (ws[0],), dt)
    want = ref.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    fn = cc.FORWARD[variant]
    assert rel_err(fn(rt, x, w, b, stride, padding, dilation, groups), want) <= tol(dt)
    assert rel_err(fn(rt, x, w, None, stride, padding, dilation, groups),
                   ref.conv2d_forward(x, w, None, stride, padding, dilation, groups)) <= tol(dt)
    residual = draw(rng, want.shape, dt)
    fused = ref.conv2d_fused_forward(x, w, b, stride, padding, dilation, groups, residual, True)
    out = np.full(want.shape, np.nan, dt)
    got = fn(rt, x, w, b, stride, padding, dilation, groups, residual=residual, relu=True, out=out)
    assert got is out
    assert rel_err(out, fused) <= tol(dt)
    assert np.all(out >= 0)


@needs_emulator
def test_implicit_gemm_reads_strided_inputs_and_writes_a_strided_out(rt):
    rng = np.random.default_rng(3)
    x = draw(rng, (2, 3, 9, 14), np.float32)[..., ::2]  # a non-contiguous view
    w = np.asfortranarray(draw(rng, (4, 3, 3, 3), np.float32))
    want = ref.conv2d_forward(np.ascontiguousarray(x), np.ascontiguousarray(w), None, (1, 1), (1, 1), (1, 1), 1)
    big = np.zeros(want.shape[:-1] + (2 * want.shape[-1],), np.float32)
    out = big[..., ::2]
    got = cc.forward_implicit_gemm(rt, x, w, None, (1, 1), (1, 1), (1, 1), 1, out=out)
    assert got is out
    assert rel_err(big[..., ::2], want) <= F32
    assert np.all(big[..., 1::2] == 0)  # nothing written between the view's elements


@needs_emulator
def test_a_nan_in_the_input_stays_through_the_relu(rt):
    x = np.ones((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = np.nan
    w = np.ones((2, 1, 1, 1), np.float32)
    for name in ("implicit_gemm", "implicit_gemm_128", "im2col_gemm"):
        y = cc.FORWARD[name](rt, x, w, None, (1, 1), (0, 0), (1, 1), 1, relu=True)
        assert np.isnan(y[0, :, 1, 1]).all() and np.isfinite(np.delete(y.reshape(2, 9), 4, axis=1)).all()


@needs_emulator
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_conv_maxpool_runs_on_its_runtime(rt, dt):
    from minicnn.backends.numpy import pool as ref_pool

    rng = np.random.default_rng(29)
    x, w, b = draw(rng, (2, 3, 11, 10), dt), draw(rng, (4, 3, 3, 3), dt), draw(rng, (4,), dt)
    z = ref.conv2d_fused_forward(x, w, b, (2, 2), (1, 1), (1, 1), 1, None, True)
    want, _ = ref_pool.maxpool2d_forward(z, (3, 3), (2, 2), (1, 1), (1, 1))
    out = np.full(want.shape, np.nan, dt)
    got = cc.conv2d_maxpool_fused(rt, x, w, b, (2, 2), (1, 1), (1, 1), 1, True, (3, 3), (2, 2), (1, 1), (1, 1), out=out)
    assert got is out
    assert rel_err(out, want) <= tol(dt)
    with pytest.raises(ValueError, match="out has shape"):
        cc.conv2d_maxpool_fused(rt, x, w, b, (2, 2), (1, 1), (1, 1), 1, True, (3, 3), (2, 2), (1, 1), (1, 1),
                                out=np.empty((1, 1), dt))


# ---- batch chunks of the column workspace -------------------------------------------------------


def test_batch_chunk_fits_the_budget():
    assert cc.batch_chunk(10, 100, 1000) == 10
    assert cc.batch_chunk(10, 100, 350) == 3
    assert cc.batch_chunk(10, 100, 99) == 1  # one image always runs, whatever the budget
    assert cc.batch_chunk(4, 100, 10**9) == 4
    assert cc.batch_chunk(0, 100, 1000) == 1  # nothing to do; range(0, 0, 1) runs no chunk
    assert cc.batch_chunk(7, 0, 1000) == 7


@pytest.mark.parametrize("layout", ["image", "group"])
def test_column_strides_are_the_layouts_element_strides(layout):
    nb, G, CRSg, PQ = 3, 2, 5, 7
    shape = (nb, G, CRSg, PQ) if layout == "image" else (G, CRSg, nb, PQ)
    el = np.empty(shape, np.float64).strides
    el = [s // 8 for s in el]
    want = (el[0], el[1], el[2]) if layout == "image" else (el[2], el[0], el[1])
    assert cc.column_strides(layout, nb, G, CRSg, PQ) == want
    with pytest.raises(ValueError, match="layout"):
        cc.column_strides("rows", nb, G, CRSg, PQ)


@needs_emulator
@pytest.mark.parametrize("layout", ["image", "group"])
def test_im2col_and_col2im_match_the_reference_in_both_layouts(rt, layout):
    rng = np.random.default_rng(5)
    x = draw(rng, (3, 4, 6, 7), np.float64)
    G, R, S, stride, padding, dilation = 2, 3, 2, (2, 1), (1, 2), (1, 2)
    want = ref.im2col(x, R, S, stride, padding, dilation)  # (N, C, R, S, P, Q)
    N, C, _, _, P, Q = want.shape
    Cg, CRSg, PQ = C // G, C // G * R * S, P * Q
    cols = np.full(N * C * R * S * PQ, np.nan)
    cc.im2col(rt, x, cols, Cg, R, S, P, Q, stride, padding, dilation, cc.column_strides(layout, N, G, CRSg, PQ))
    as_image = want.reshape(N, G, CRSg, PQ)
    got = cols.reshape(N, G, CRSg, PQ) if layout == "image" else cols.reshape(G, CRSg, N, PQ).transpose(2, 0, 1, 3)
    assert np.array_equal(got, as_image)
    dx = np.empty(x.shape)
    cc.col2im(rt, cols, dx, Cg, R, S, P, Q, stride, padding, dilation, cc.column_strides(layout, N, G, CRSg, PQ))
    assert rel_err(dx, ref.col2im(want, x.shape, stride, padding, dilation)) <= F64


@needs_emulator
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_chunked_conv_matches_one_chunk(rt, dt):
    """A workspace of 1 byte runs one image per chunk; 2.5 images' worth leaves a ragged last chunk."""
    rng = np.random.default_rng(11)
    xs, ws, stride, padding, dilation, groups = (5, 4, 7, 6), (6, 2, 3, 2), (1, 2), (1, 1), (2, 1), 2
    x, w, b = draw(rng, xs, dt), draw(rng, ws, dt), draw(rng, (6,), dt)
    g = cc.geometry(xs, ws, stride, padding, dilation, groups)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    dy = draw(rng, y_ref.shape, dt)
    want = ref.conv2d_backward(dy, x, w, stride, padding, dilation, groups)
    per_image_fwd = g.C * g.R * g.S * g.PQ * x.itemsize
    per_image_bwd = (2 * g.C * g.R * g.S + g.K) * g.PQ * x.itemsize
    for fwd_budget, bwd_budget in ((1, 1), (per_image_fwd * 5 // 2, per_image_bwd * 5 // 2)):
        y = cc.forward_im2col_gemm(rt, x, w, b, stride, padding, dilation, groups, workspace_bytes=fwd_budget)
        assert rel_err(y, y_ref) <= tol(dt)
        got = cc.backward_im2col_gemm(rt, dy, x, w, stride, padding, dilation, groups, workspace_bytes=bwd_budget)
        for a, e in zip(got, want):
            assert rel_err(a, e) <= tol(dt)


@needs_emulator
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_chunked_conv_transpose_matches_the_reference(rt, dt):
    rng = np.random.default_rng(13)
    x, w, b = draw(rng, (5, 4, 3, 4), dt), draw(rng, (4, 3, 3, 2), dt), draw(rng, (6,), dt)
    args = ((2, 3), (1, 0), (1, 2), (1, 1), 2)
    y_ref = ref_t.conv_transpose2d_forward(x, w, b, *args)
    dy = draw(rng, y_ref.shape, dt)
    want = ref_t.conv_transpose2d_backward(dy, x, w, *args)
    for budget in (1, 10**9):
        assert rel_err(ct.conv_transpose2d_forward(rt, x, w, b, *args, workspace_bytes=budget), y_ref) <= tol(dt)
        got = ct.conv_transpose2d_backward(rt, dy, x, w, *args, workspace_bytes=budget)
        for a, e in zip(got, want):
            assert rel_err(a, e) <= tol(dt)


@needs_emulator
def test_backward_computes_only_what_is_asked(rt):
    rng = np.random.default_rng(17)
    x, w = draw(rng, (2, 2, 5, 5), np.float64), draw(rng, (3, 2, 3, 3), np.float64)
    dy = draw(rng, (2, 3, 3, 3), np.float64)
    want = ref.conv2d_backward(dy, x, w, (1, 1), (0, 0), (1, 1), 1)
    for need in ((True, False, False), (False, True, False), (False, False, True), (False, False, False)):
        got = cc.conv2d_backward(rt, dy, x, w, (1, 1), (0, 0), (1, 1), 1, *need)
        for flag, a, e in zip(need, got, want):
            assert (a is None) == (not flag)
            if flag:
                assert rel_err(a, e) <= F64
    lin = cl.linear_backward(rt, dy.reshape(2, 27)[:, :3], x.reshape(2, 50)[:, :4], w.reshape(3, 18)[:, :4],
                             False, True, False)
    assert lin[0] is None and lin[2] is None
    assert rel_err(lin[1], ref_l.linear_backward(dy.reshape(2, 27)[:, :3], x.reshape(2, 50)[:, :4],
                                                 w.reshape(3, 18)[:, :4])[1]) <= F64


# ---- reduced precision -------------------------------------------------------------------------


@needs_emulator
@pytest.mark.parametrize("mode,rounding", [("tf32", round_tf32), ("bf16", round_bf16)])
@pytest.mark.parametrize("geom", [AWKWARD[0], AWKWARD[1], AWKWARD[2], AWKWARD[4]])
def test_reduced_precision_variant_is_exact_on_rounded_operands(rt, mode, rounding, geom):
    """The product of the rounded operands, accumulated in float32: within float32 rounding of a
    float64 reference computed from the same rounded x and w (which checks the tensor-core
    fragment layout of the TF32 version on the emulator), and near the exact result."""
    xs, ws, stride, padding, dilation, groups = geom
    rng = np.random.default_rng(19)
    x, w, b = draw(rng, xs, np.float32), draw(rng, ws, np.float32), draw(rng, (ws[0],), np.float32)
    exact = ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                               stride, padding, dilation, groups)
    residual = draw(rng, exact.shape, np.float32)
    on_rounded = ref.conv2d_fused_forward(rounding(x).astype(np.float64), rounding(w).astype(np.float64),
                                          b.astype(np.float64), stride, padding, dilation, groups,
                                          residual.astype(np.float64), True)
    got = cc.FORWARD[f"implicit_gemm_{mode}"](rt, x, w, b, stride, padding, dilation, groups, residual=residual,
                                              relu=True)
    assert got.dtype == np.float32
    assert rel_err(got, on_rounded) <= F32
    band = 2e-3 if mode == "tf32" else 2e-2
    assert rel_err(got, np.maximum(exact + residual, 0)) <= band


@needs_emulator
def test_to_bf16_rounds_to_nearest_even(rt):
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16's spacing at 1
    vals = np.array([one, one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0**-20, -2.5, 0.0, -0.0,
                     np.inf, -np.inf, 3.4e38, 1e-40], np.float32)
    want = np.array([one, one, one + 2 * ulp, one + ulp, -2.5, 0.0, -0.0, np.inf, -np.inf], np.float32)
    got = cc.to_bf16(rt, vals).astype(np.uint32) << 16
    got = got.view(np.float32)
    assert np.array_equal(got[:9], want)
    assert np.signbit(got[6])
    assert got[9] == np.inf  # 3.4e38 rounds past bf16's largest finite value
    assert got[10] == round_bf16(vals[10:11])[0]  # subnormals round like any other value
    nan = cc.to_bf16(rt, np.array([np.nan, -np.nan], np.float32)).astype(np.uint32) << 16
    assert np.isnan(nan.view(np.float32)).all()


@needs_emulator
def test_reduced_precision_variants_refuse_float64(rt):
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1))
    for name in ("implicit_gemm_tf32", "implicit_gemm_bf16"):
        with pytest.raises(TypeError, match="float32"):
            cc.FORWARD[name](rt, x, w, None, (1, 1), (0, 0), (1, 1), 1)


@needs_emulator
def test_the_precision_mode_picks_the_ops_algorithm(rt):
    rng = np.random.default_rng(23)
    x, w = draw(rng, (1, 3, 6, 6), np.float32), draw(rng, (4, 3, 3, 3), np.float32)
    args = (x, w, None, (1, 1), (1, 1), (1, 1), 1)
    fp32 = cc.conv2d_fused_forward(rt, *args)
    assert np.array_equal(fp32, cc.forward_implicit_gemm(rt, *args))
    for mode in ("tf32", "bf16"):
        with precision(mode):
            got = cc.conv2d_forward(rt, *args)
        assert np.array_equal(got, cc.FORWARD[f"implicit_gemm_{mode}"](rt, *args))
        assert not np.array_equal(got, fp32)  # rounded operands: a different result
    with precision("tf32"):  # float64 is never rounded
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        assert rel_err(cc.conv2d_forward(rt, x64, w64, None, (1, 1), (1, 1), (1, 1), 1),
                       ref.conv2d_forward(x64, w64, None, (1, 1), (1, 1), (1, 1), 1)) <= F64


# ---- host-side rules -----------------------------------------------------------------------------


def test_pick_forward_rules():
    three = cc.geometry((2, 8, 9, 9), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    point = cc.geometry((2, 8, 9, 9), (16, 8, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    strided_point = cc.geometry((2, 8, 9, 9), (16, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1)
    assert cc.pick_forward(three, np.float32, "fp32") == "implicit_gemm"
    assert cc.pick_forward(three, np.float64, "fp32") == "implicit_gemm"
    assert cc.pick_forward(point, np.float32, "fp32") == "im2col_gemm"  # one GEMM on x itself
    assert cc.pick_forward(strided_point, np.float32, "fp32") == "implicit_gemm"
    assert cc.pick_forward(three, np.float32, "tf32") == "implicit_gemm_tf32"
    assert cc.pick_forward(point, np.float32, "bf16") == "implicit_gemm_bf16"
    assert cc.pick_forward(three, np.float64, "tf32") == "implicit_gemm"
    assert cc.pick_forward(point, np.float64, "bf16") == "im2col_gemm"
    # 128-tile grid: 392 column tiles x 2 filter tiles fill the device; 4 x 1 do not
    big = cc.geometry((256, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    small = cc.geometry((2, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert cc.igemm_grid(big, "implicit_gemm_128") == (392, 2, 1)
    assert cc.pick_forward(big, np.float32, "fp32") == "implicit_gemm_128"
    assert cc.pick_forward(small, np.float32, "fp32") == "im2col_gemm"  # a 2304-long reduction, a small grid
    short = cc.geometry((2, 64, 14, 14), (256, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1)  # 576 long
    assert cc.pick_forward(short, np.float32, "fp32") == "implicit_gemm"
    assert cc.pick_forward(small, np.float32, "tf32") == "implicit_gemm_tf32"
    assert cc.pick_forward(big, np.float32, "tf32") == "implicit_gemm_tf32"
    huge = cc.geometry((1, 70000, 3, 3), (70000, 1, 1, 1), (1, 1), (0, 0), (1, 1), 70000)  # G past grid.z
    assert not cc.implicit_gemm_supports(huge)
    assert cc.pick_forward(huge, np.float32, "tf32") == "im2col_gemm"


def test_variant_names_offer_reduced_precision_only_in_its_mode():
    g = cc.geometry((2, 8, 9, 9), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    exact = ["im2col_gemm", "implicit_gemm", "implicit_gemm_128"]
    assert cc.variant_names(g, "fp32") == exact
    assert cc.variant_names(g, "tf32") == exact + ["implicit_gemm_tf32"]
    assert cc.variant_names(g, "bf16") == exact + ["implicit_gemm_bf16"]


def test_conv_variants_table_entry_binds_the_runtime():
    rt = object()
    got = cc.conv_variants(rt, (2, 8, 9, 9), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert sorted(got) == ["im2col_gemm", "implicit_gemm", "implicit_gemm_128"]
    assert got["implicit_gemm"].func is cc.forward_implicit_gemm and got["implicit_gemm"].args == (rt,)
    with precision("bf16"):
        assert "implicit_gemm_bf16" in cc.conv_variants(rt, (2, 8, 9, 9), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)


def test_precision_context_restores_nests_and_is_per_thread():
    assert get_precision() == "fp32"
    seen = []
    with precision("tf32"):
        assert get_precision() == "tf32"
        with precision("bf16"):
            assert get_precision() == "bf16"
            t = threading.Thread(target=lambda: seen.append(get_precision()))
            t.start()
            t.join()
        assert get_precision() == "tf32"
    assert get_precision() == "fp32"
    assert seen == ["fp32"]
    with pytest.raises(ValueError, match="fp16"):
        with precision("fp16"):
            pass
    try:
        with precision("tf32"):
            raise KeyError("inside")
    except KeyError:
        pass
    assert get_precision() == "fp32"


def test_the_package_exports_the_precision_context():
    import minicnn.backends.cupy as cupy_backend

    assert cupy_backend.precision is precision and cupy_backend.get_precision is get_precision
    for entry in ("conv_variants", "conv2d_maxpool_fused", "conv2d_fused_forward", "conv_transpose2d_backward",
                  "linear_backward"):
        assert cupy_backend.OPS[entry].__wrapped__.__module__.startswith("minicnn.backends.cupy.")


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="groups=2"):
        cc.geometry((1, 3, 5, 5), (4, 1, 3, 3), (1, 1), (0, 0), (1, 1), 2)
    with pytest.raises(ValueError, match="does not fit"):
        cc.geometry((1, 1, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="expected x"):
        cc.geometry((1, 3, 5), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1)


@needs_emulator
def test_bad_dtype_and_out_are_refused(rt):
    x, w = np.ones((1, 1, 3, 3), np.float16), np.ones((1, 1, 1, 1), np.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        cc.conv2d_forward(rt, x, w, None, (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError, match="out has shape"):
        cc.conv2d_fused_forward(rt, x.astype(np.float32), w.astype(np.float32), None, (1, 1), (0, 0), (1, 1), 1,
                                out=np.empty((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="linear_forward"):
        cl.linear_forward(rt, np.ones((2, 3)), np.ones((4, 5)), None)
