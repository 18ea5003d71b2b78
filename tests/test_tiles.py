"""The register-block product of ``minicnn/backends/numba/_tiles.py`` against numpy.

``_tiles.matmul(a, pack(b), out)`` must equal ``a @ b`` for every shape: rows that do not fill a
6-row block, columns that do not fill a panel (computed into a scratch tile), inner dimensions of
0, 1 and longer than a k-block (``KC``, patched small so that the blocks' accumulation is
exercised), on the serial twin and on the parallel kernel. Tolerance, relative to the largest
value of |a| . |b| (what bounds a sum's rounding, unlike the product itself, which can cancel to
near zero): 1e-5 float32 (the errors seen are a few 1e-7; a dropped or doubled k-block or a
shifted row gives errors of order 1e-1 and more), 1e-13 float64.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minicnn.backends.numba import _threads, _tiles

TOL = {np.float32: 1e-5, np.float64: 1e-13}


def _check(a, b, dtype, **blocks):
    """The product from B's panels and from B read in place: each within TOL of numpy's, and the
    two bit for bit equal (the same sums in the same order)."""
    want = a.astype(np.float64) @ b.astype(np.float64)
    bound = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    scale = max(float(bound.max()) if bound.size else 0.0, 1e-30)
    outs = []
    for form, bb in (("packed", _tiles.pack(b)), ("plain", b)):
        out = np.full((a.shape[0], b.shape[1]), np.nan, dtype)
        assert _tiles.matmul(a, bb, out, **blocks) is out
        assert not np.isnan(out).any()
        err = float(np.abs(out - want).max()) / scale if out.size else 0.0
        assert err < TOL[dtype], f"{a.shape} . {form} {b.shape} {np.dtype(dtype).name}: relative error {err:.3g}"
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    return outs[0]


@pytest.fixture(params=["serial", "parallel"])
def kernel_form(request):
    with _threads.serial_below(2**62 if request.param == "serial" else 0):
        yield request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,cols", [
    (1, 1, 1.0), (5, 3, 1.0), (6, 147, 1.0), (13, 147, 2.0), (97, 20, 1.0),  # whole panels
    (7, 9, 0.5), (50, 33, 1.5), (3, 70, 2.25),                                # a partial last panel
    (8, 0, 1.0),                                                              # nothing to sum: zeros
])
def test_matmul_matches_numpy(M, K, cols, dtype, kernel_form):
    rng = np.random.default_rng(M * 1000 + K)
    N = max(1, int(cols * _tiles.tile_cols(dtype)))
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    out = _check(a, b, dtype)
    if K == 0:
        assert not out.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k_blocks_and_row_groups_accumulate(dtype, kernel_form):
    """Blocks of 7 inner values (so 100 runs as 15 blocks, the last one short) and one or three
    row blocks per task: every block's sum is added once, to the rows it belongs to."""
    rng = np.random.default_rng(3)
    nr = _tiles.tile_cols(dtype)
    for group in (1, 3):
        for M, K, N in [(20, 100, nr + 3), (6, 7, nr), (1, 8, 2 * nr), (31, 14, nr // 2), (49, 30, nr)]:
            _check(rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype), dtype,
                   kc=7, group=group)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(1, 40), K=st.integers(0, 300), N=st.integers(1, 150), f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matmul_on_drawn_shapes(M, K, N, f64, seed):
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    _check(rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype), dtype)


def test_the_serial_and_parallel_forms_agree_bit_for_bit():
    """Each value is summed in the same order whichever thread computes it."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((301, 147)).astype(np.float32)
    bp = _tiles.pack(rng.standard_normal((147, 70)).astype(np.float32))
    outs = []
    for n in (2**62, 0):
        with _threads.serial_below(n):
            outs.append(_tiles.matmul(a, bp, np.empty((301, 70), np.float32)))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_stack_of_products_from_panels_or_in_place(dtype, kernel_form):
    """Three products at once (the Winograd convs' stacks), B packed or read in place, with a
    partial last panel: each equals its own product."""
    rng = np.random.default_rng(5)
    nr = _tiles.tile_cols(dtype)
    a = rng.standard_normal((3, 13, 40)).astype(dtype)
    b = rng.standard_normal((3, 40, nr + 5)).astype(dtype)
    for bb in (_tiles.pack(b), b):
        out = _tiles.matmul(a, bb, np.full((3, 13, nr + 5), np.nan, dtype))
        np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64), rtol=0,
                                   atol=TOL[dtype] * 100)


def test_pack_lays_out_panels_with_zeros_past_the_last_column():
    b = np.arange(5 * 70, dtype=np.float32).reshape(5, 70)
    nr = _tiles.tile_cols(np.float32)
    p = _tiles.pack(b)
    assert p.shape == (-(-70 // nr), 5, nr) and p.flags.c_contiguous
    for j in range(p.shape[0]):
        width = min(nr, 70 - j * nr)
        np.testing.assert_array_equal(p[j, :, :width], b[:, j * nr:j * nr + width])
        assert not p[j, :, width:].any()


def test_tile_width_follows_the_vector_registers():
    assert _tiles.VECTOR_BYTES in (32, 64)
    assert _tiles.tile_cols(np.float32) == 2 * _tiles.tile_cols(np.float64)
    assert _tiles.tile_cols(np.float32) == _tiles.NV * _tiles.VECTOR_BYTES // 4


def test_a_named_cpu_gets_the_narrower_vectors(monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    assert _tiles._vector_bytes() == 32


@pytest.mark.parametrize("a_shape,b_shape,out_shape,dtypes,match", [
    ((4, 5), (6, 5), (4, 8), "fff", "do not match"),            # K of a and b differ
    ((4, 5), (5, 8), (3, 8), "fff", "do not match"),            # out's rows
    ((4, 5), (5, 8), (4, 8), "fdf", "needs one dtype"),
    ((4, 5), (5, 8), (4, 8), "iii", "needs one dtype, float32 or float64"),
])
def test_matmul_refuses_what_it_cannot_compute(a_shape, b_shape, out_shape, dtypes, match):
    kinds = {"f": np.float32, "d": np.float64, "i": np.int32}
    a = np.zeros(a_shape, kinds[dtypes[0]])
    b = np.zeros(b_shape, np.float32)
    bp = _tiles.pack(b).astype(kinds[dtypes[1]])
    out = np.zeros(out_shape, kinds[dtypes[2]])
    with pytest.raises(ValueError, match=match):
        _tiles.matmul(a, bp, out)


def test_matmul_refuses_empty_blocks():
    a, out = np.zeros((4, 5), np.float32), np.zeros((4, 8), np.float32)
    bp = _tiles.pack(np.zeros((5, 8), np.float32))
    for kc, group in ((0, 8), (64, 0)):
        with pytest.raises(ValueError, match="kc and group must be at least 1"):
            _tiles.matmul(a, bp, out, kc=kc, group=group)


def test_matmul_refuses_a_mismatched_or_strided_operand():
    a = np.zeros((4, 5), np.float32)
    b = np.zeros((5, 8), np.float32)
    out = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        _tiles.matmul(a, np.zeros((5, 9), np.float32), out)
    with pytest.raises(ValueError, match="or packed"):
        _tiles.matmul(a, b[None, None], out)
    with pytest.raises(ValueError, match="C-contiguous"):
        _tiles.matmul(a, np.zeros((5, 16), np.float32)[:, ::2], out)
    with pytest.raises(ValueError, match="C-contiguous"):
        _tiles.matmul(np.zeros((5, 4), np.float32).T, _tiles.pack(b), out)
    wide = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _tiles.matmul(a, _tiles.pack(b), wide[:, ::2])
