"""The cupy backend's pooling, padding, upsampling and batchnorm: what the conformance suite
(``tests/test_conformance.py``, backend ``cupy-emu``) does not reach on its own.

- host logic: the reduction split of batchnorm (``chunks``) and the inverted gather maps of
  padding and upsampling (``pad.inverse_map``), against hand-computed values;
- the batchnorm reductions with many chunks per channel (the drawn shapes are too small to
  split a channel), on the emulator against the numpy reference;
- max pooling's backward when the per-cell lists come in any order (on the emulator the integer
  atomics that fill them always run in thread order, on a GPU they do not), and the inversion of
  an index map itself;
- max unpooling's refusal of an index outside the output plane.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import backends
from minicnn.backends.cupy import batchnorm, pad, pool
from minicnn.backends.cupy._launch import DEFAULT_BLOCK, grid_1d, suffix
from minicnn.backends.cupy._emulator import EmuRuntime, emulator_absent

REF = backends.load("numpy").OPS

needs_emulator = pytest.mark.skipif(emulator_absent() is not None, reason=str(emulator_absent()))


@pytest.fixture(scope="module")
def rt():
    return EmuRuntime()


# -- host logic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("M, C", [(1, 1), (147, 5), (8192, 1), (8193, 1), (3_211_264, 64), (100_000, 2048)])
def test_chunks_cover_each_channel_once(M, C):
    G, chunk = batchnorm.chunks(M, C)
    assert G >= 1 and chunk >= 1
    assert (G - 1) * chunk < M <= G * chunk  # every value in one chunk, no empty chunk
    if G > 1:
        assert chunk >= batchnorm.MIN_PER_BLOCK
        assert C * G <= batchnorm.TARGET_BLOCKS + C


def test_chunks_of_a_resnet_stem():
    # batch 256 at 112x112, 64 channels: 8 chunks per channel, 512 blocks; a small late layer: one each
    assert batchnorm.chunks(256 * 112 * 112, 64) == (8, 401_408)
    assert batchnorm.chunks(4 * 7 * 7, 512) == (1, 196)


def test_inverse_map_lists_each_input_in_order():
    # replicate padding of a length-3 axis by (2, 1): rows read 0 0 0 1 2 2
    src = np.array([0, 0, 0, 1, 2, 2])
    ptr, idx, w = pad.inverse_map([(src, None)], 3)
    assert ptr.tolist() == [0, 3, 4, 6] and idx.tolist() == [0, 1, 2, 3, 4, 5] and w is None
    # constant padding: -1 reads no input
    ptr, idx, _ = pad.inverse_map([(np.array([-1, 1, 0, -1]), None)], 2)
    assert ptr.tolist() == [0, 1, 2] and idx.tolist() == [2, 1]


def test_inverse_map_keeps_pair_order_with_weights():
    # bilinear: each output blends i0 (weight w0) and i1 (weight w1); an input lists its i0 uses
    # first, then its i1 uses, as np.add.at scatters them one map after the other
    i0, w0 = np.array([0, 0, 1]), np.array([1.0, 0.5, 0.25])
    i1, w1 = np.array([0, 1, 1]), np.array([0.0, 0.5, 0.75])
    ptr, idx, w = pad.inverse_map([(i0, w0), (i1, w1)], 2)
    assert ptr.tolist() == [0, 3, 6]
    assert idx.tolist() == [0, 1, 0, 2, 1, 2]
    assert w.tolist() == [1.0, 0.5, 0.0, 0.25, 0.5, 0.75]


# -- on the emulator -------------------------------------------------------------------------------


def _close(got, want, tol):
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert g.dtype == r.dtype and g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=0, atol=tol * max(1.0, float(np.abs(r).max())))


@needs_emulator
@pytest.mark.parametrize("dtype, tol", [(np.float32, 4e-5), (np.float64, 4e-10)])
def test_batchnorm_with_many_chunks_per_channel(rt, dtype, tol, monkeypatch):
    monkeypatch.setattr(batchnorm, "MIN_PER_BLOCK", 7)  # 3*5*7 = 105 values per channel: 15 chunks
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4, 5, 7)) * 2 + 3).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(dtype), rng.standard_normal(4).astype(dtype)
    assert batchnorm.chunks(3 * 5 * 7, 4)[0] == 15
    got = batchnorm.batchnorm2d_forward_train(rt, x, gamma, beta, 1e-5)
    want = REF["batchnorm2d_forward_train"](x, gamma, beta, 1e-5)
    _close(got, want, tol)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, var = want
    for need in [(True, True), (True, False), (False, True)]:
        _close(batchnorm.batchnorm2d_backward_train(rt, dy, x, gamma, mean, var, 1e-5, *need),
               REF["batchnorm2d_backward_train"](dy, x, gamma, mean, var, 1e-5, *need), tol)
        _close(batchnorm.batchnorm2d_backward_eval(rt, dy, x, gamma, mean, var + 0.5, 1e-3, *need),
               REF["batchnorm2d_backward_eval"](dy, x, gamma, mean, var + 0.5, 1e-3, *need), tol)


@needs_emulator
def test_invert_index_lists_every_entry_of_its_cell(rt):
    rng = np.random.default_rng(1)
    planes, L, T = 3, 20, 6
    idx = rng.integers(-1, T + 1, size=(planes, L)).astype(np.int64)  # -1 and T are left out
    offsets, lists = pool.invert_index(rt, idx, planes, L, T)
    for p in range(planes):
        for k in range(T):
            g = p * T + k
            got = sorted(lists[offsets[g]:offsets[g + 1]].tolist())
            assert got == np.flatnonzero(idx[p] == k).tolist()
    assert offsets[-1] == np.count_nonzero((idx >= 0) & (idx < T))


@needs_emulator
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_backward_sums_in_scan_order_whatever_the_list_order(rt, dtype):
    """Overlapping windows (3x3, stride 1) on a constant input: several outputs pick the same
    input, and gradients of very different sizes make the sum depend on its order. The lists are
    handed to the kernel in reverse scan order; the result must be the reference's bit for bit."""
    rng = np.random.default_rng(2)
    x = np.zeros((1, 2, 5, 5), dtype=dtype)
    _, argmax = REF["maxpool2d_forward"](x, (3, 3), (1, 1), (1, 1))
    dy = rng.standard_normal(argmax.shape).astype(dtype)
    # outputs (0, 0), (0, 1), (1, 0), (1, 1) all pick input (0, 0): in scan order (big + 1) - big + 1
    # is 1, in reverse order 0 (big + 1 rounds to big)
    big = 1e8 if dtype == np.float32 else 1e17
    dy[0, :, :2, :2] = np.array([[big, 1], [-big, 1]], dtype=dtype)
    want = REF["maxpool2d_backward"](dy, argmax, x.shape)
    planes, L, T = 2, 25, 25
    lists, offsets = [], [0]
    reversed_sums = np.zeros(planes * T, dtype=dtype)
    for p in range(planes):
        for k in range(T):
            mine = np.flatnonzero(argmax[0, p].ravel() == k)[::-1]
            for o in mine:
                reversed_sums[p * T + k] += dy[0, p].ravel()[o]
            lists += mine.tolist()
            offsets.append(len(lists))
    # the test can tell: summed in the lists' order, some cell differs from the reference
    assert not np.array_equal(reversed_sums, want.ravel())
    dx = np.empty(x.shape, dtype=dtype)
    kernel = rt.kernel("pool.cu", f"maxpool2d_backward_{suffix(dtype)}")
    kernel(grid_1d(dx.size), (DEFAULT_BLOCK,),
           (dy, np.array(offsets, np.int64), np.array(lists, np.int64), dx, np.int64(dx.size), np.int64(T),
            np.int64(L)))
    assert np.array_equal(dx, want)
    # and the op itself agrees with the reference
    assert np.array_equal(pool.maxpool2d_backward(rt, dy, argmax, x.shape), want)


@needs_emulator
@pytest.mark.parametrize("bad", [-1, 12])
def test_maxunpool_refuses_an_index_outside_the_plane(rt, bad):
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([0, 1, 2, bad], np.int64).reshape(1, 1, 2, 2)
    with pytest.raises(ValueError, match=f"index {bad} lies outside the 3x4 output plane"):
        pool.maxunpool2d_forward(rt, x, idx, (3, 4))
    with pytest.raises(ValueError, match=f"index {bad} lies outside the 3x4 output plane"):
        pool.maxunpool2d_backward(rt, np.ones((1, 1, 3, 4), np.float32), idx)


@needs_emulator
def test_maxunpool_keeps_the_last_repeated_index(rt):
    x = np.arange(1, 5, dtype=np.float64).reshape(1, 1, 2, 2)
    idx = np.array([5, 2, 5, 2], np.int64).reshape(1, 1, 2, 2)
    y = pool.maxunpool2d_forward(rt, x, idx, (2, 3))
    assert y.ravel().tolist() == [0, 0, 4, 0, 0, 3]
    assert np.array_equal(y, REF["maxunpool2d_forward"](x, idx, (2, 3)))


@needs_emulator
def test_adaptive_maxpool_refuses_an_empty_plane(rt):
    with pytest.raises(ValueError, match="empty 0x3 input plane has no maximum"):
        pool.adaptive_maxpool2d_forward(rt, np.zeros((1, 1, 0, 3), np.float32), (2, 2))
