"""The host CUDA emulator (``minicnn.backends.cupy._emulator``) that runs the cupy backend's kernels in CI.

Each device feature the kernels may use is exercised by a small kernel of
``tests/cuda_emu_kernels/emu_selftest.cu`` and checked against numpy; so are the launch checks
(a wrong argument raises before the launch) and the bugs the emulator must report instead of
hanging (a barrier only some threads reach). Skipped only where there is no C++ compiler.
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest

import minicnn as mc
from minicnn.backends.cupy import _emulator, _runtime
from minicnn.backends.cupy._runtime import kernel_files
from minicnn.backends.cupy._emulator import EmuRuntime, emulator_absent, strip_skipped

pytestmark = pytest.mark.skipif(emulator_absent() is not None, reason=str(emulator_absent()))

HERE = os.path.dirname(__file__)
KDIR = os.path.join(HERE, "cuda_emu_kernels")
FILE = "emu_selftest.cu"


@pytest.fixture(scope="module")
def rt():
    return EmuRuntime([KDIR])


def k(rt, name):
    return rt.kernel(FILE, name)


def test_1d_grid_stride_loop_covers_every_element(rt):
    n = 1000
    out = np.full(n, -1, np.int64)
    k(rt, "iota_i64")((3,), (128,), (out, np.int64(n)))  # 384 threads, each takes several elements
    np.testing.assert_array_equal(out, 3 * np.arange(n) + 1)


def test_3d_grid_and_block_indices():
    rt = EmuRuntime([KDIR])
    Z, Y, X = 5, 7, 9
    block = (4, 3, 2)
    grid = (math.ceil(X / 4), math.ceil(Y / 3), math.ceil(Z / 2))
    out = np.full((Z, Y, X, 4), -1, np.int32)
    k(rt, "coords_3d")(grid, block, (out, np.int32(Z), np.int32(Y), np.int32(X)))
    z, y, x = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    np.testing.assert_array_equal(out[..., 0], z)
    np.testing.assert_array_equal(out[..., 1], y)
    np.testing.assert_array_equal(out[..., 2], x)
    np.testing.assert_array_equal(out[..., 3], ((z % 2) * 3 + (y % 3)) * 4 + (x % 4))


def test_2d_launch_f64(rt):
    a = np.random.default_rng(0).standard_normal((13, 21))
    out = np.zeros_like(a)
    k(rt, "affine_2d_f64")((3, 2), (8, 8), (a, out, np.int32(13), np.int32(21)))
    np.testing.assert_array_equal(out, a * 2 + np.arange(13)[:, None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_memory_block_reduction(rt, dtype):
    n = 1000
    x = np.random.default_rng(1).standard_normal(n).astype(dtype)
    out = np.zeros(4, dtype)
    k(rt, "block_sum_" + ("f32" if dtype == np.float32 else "f64"))((4,), (256,), (x, out, np.int64(n)))
    want = np.add.reduceat(np.pad(x.astype(np.float64), (0, 24)), [0, 256, 512, 768])
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_shfl_down_reduction_per_warp_and_per_block(rt):
    n = 3 * 256 - 50
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    warp_out = np.zeros(3 * 8, np.float32)
    block_out = np.zeros(3, np.float32)
    k(rt, "shfl_down_sum_f32")((3,), (256,), (x, warp_out, block_out, np.int64(n)))
    padded = np.pad(x, (0, 50)).astype(np.float64)
    np.testing.assert_allclose(warp_out, padded.reshape(24, 32).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block_out, padded.reshape(3, 256).sum(1), rtol=1e-5, atol=1e-5)


def test_shfl_xor_butterfly_gives_every_lane_the_result(rt):
    x = np.random.default_rng(3).standard_normal(128)
    out = np.zeros_like(x)
    k(rt, "shfl_xor_max_f64")((2,), (64,), (x, out))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(4, 32).max(1), 32))


def test_shfl_from_a_lane_past_blockdim_reads_poison(rt):
    out = np.zeros(20, np.float32)
    k(rt, "shfl_partial_warp")((1,), (20,), (out,))
    np.testing.assert_array_equal(out[:16], np.arange(4, 20))
    assert np.isnan(out[16:]).all()  # lanes 20..23 do not exist; a GPU gives undefined values


def test_atomic_add_from_many_blocks(rt):
    n = 5000
    x = np.random.default_rng(4).random(n).astype(np.float32)
    sf, sd = np.zeros(1, np.float32), np.zeros(1, np.float64)
    si, su = np.zeros(1, np.int32), np.zeros(1, np.uint64)
    k(rt, "atomic_sums")((7,), (96,), (x, sf, sd, si, su, np.int64(n)))
    assert si[0] == n
    assert su[0] == n * (n - 1) // 2
    np.testing.assert_allclose(sd[0], x.astype(np.float64).sum(), rtol=1e-12)
    np.testing.assert_allclose(sf[0], x.astype(np.float64).sum(), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dynamic_shared_memory(rt, dtype):
    n, block = 300, 128
    x = np.arange(n, dtype=dtype)
    out = np.zeros_like(x)
    suffix = "f32" if dtype == np.float32 else "f64"
    k(rt, "reverse_blocks_" + suffix)((3,), (block,), (x, out, np.int64(n)), shared_mem=block * x.itemsize)
    want = np.concatenate([x[:128][::-1], x[128:256][::-1], x[256:][::-1]])
    np.testing.assert_array_equal(out, want)


def test_unwritten_dynamic_shared_memory_reads_nan(rt):
    out = np.zeros(32, np.float32)
    k(rt, "read_unwritten_shared")((1,), (32,), (out,), shared_mem=128)
    assert np.isnan(out).all()


def test_scalar_arguments_arrive_with_their_types(rt):
    out = np.zeros(5)
    k(rt, "echo_scalars")((1,), (1,), (out, np.int32(-7), np.int64(2**40 + 3), np.uint64(2**52 + 5),
                                      np.float32(0.1), np.float64(0.1)))
    np.testing.assert_array_equal(out, [-7, 2**40 + 3, 2**52 + 5, float(np.float32(0.1)), 0.1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_math_functions(rt, dtype):
    x = np.array([-3.5, -1.0, -0.25, 0.0, 0.3, 1.0, 2.5, 7.0, np.nan, np.inf], dtype)
    out = np.zeros((len(x), 12), dtype)
    k(rt, "math_" + ("f32" if dtype == np.float32 else "f64"))((1,), (len(x),), (x, out))
    a = np.abs(x).astype(np.float64)
    with np.errstate(all="ignore"):
        want = np.stack([np.exp(x), np.log(a + 1), np.tanh(x), [math.erf(v) for v in x], 1 / np.sqrt(a + 1),
                         np.log1p(a), np.expm1(x), a**1.5, np.floor(x), np.ceil(x),
                         np.where(np.isnan(x), 1, np.where(np.isinf(x), 2, 0)), np.clip(x, -1, 1)], 1)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out[:-2], want[:-2], rtol=rtol, atol=rtol)
    assert out[-2, 10] == 1 and out[-1, 10] == 2


# -- launch checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, err, match", [
    (lambda x, o: (x, o), TypeError, "takes 3 arguments"),
    (lambda x, o: (x.astype(np.float64), o, np.int64(8)), TypeError,
     "argument 0 \\(const float\\*\\) must be a float32 array, got float64"),
    (lambda x, o: (x[::2], o, np.int64(8)), ValueError, "C-contiguous"),
    (lambda x, o: (x, np.broadcast_to(o[:1], o.shape), np.int64(8)), ValueError, "read-only"),
    (lambda x, o: (x, o, 8), TypeError, "must be np.int64\\(...\\), got a int"),
    (lambda x, o: (x, o, np.int32(8)), TypeError, "must be np.int64\\(...\\), got a int32 scalar"),
    (lambda x, o: (x.tolist(), o, np.int64(8)), TypeError, "must be a numpy array"),
])
def test_bad_arguments_raise_before_the_launch(rt, bad, err, match):
    x = np.ones(16, np.float32)
    out = np.zeros(1, np.float32)
    with pytest.raises(err, match=match):
        k(rt, "block_sum_f32")((1,), (256,), bad(x, out))
    assert out[0] == 0


@pytest.mark.parametrize("grid, block, shared, match", [
    ((0,), (32,), 0, "below 1"),
    ((1,), (1025,), 0, "block.x = 1025 exceeds CUDA.s limit 1024"),
    ((1,), (32, 32, 2), 0, "more than 1024"),
    ((1,), (1, 1, 65), 0, "exceeds CUDA's limit 64"),
    ((1, 70000), (32,), 0, "exceeds CUDA's limit 65535"),
    ((1,), (32,), 49153, "shared_mem"),
    ((1, 1, 1, 1), (32,), 0, "tuple of 1 to 3 ints"),
])
def test_bad_launch_geometry_raises(rt, grid, block, shared, match):
    out = np.zeros(1024, np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        k(rt, "read_unwritten_shared")(grid, block, (out,), shared_mem=shared)


def test_unknown_kernel_and_file(rt):
    with pytest.raises(ValueError, match="has no kernel 'nope'.*block_sum_f32"):
        rt.kernel(FILE, "nope")
    with pytest.raises(FileNotFoundError, match="no kernel file 'nope.cu'"):
        rt.kernel("nope.cu", "x")


# -- bugs the emulator reports ---------------------------------------------------------------------


def test_barrier_after_early_return_is_reported(rt):
    out = np.zeros(64, np.float32)
    with pytest.raises(RuntimeError, match=r"__syncthreads\(\) in block \(0,0,0\) is reached by 40 of 64 threads"):
        k(rt, "early_return_then_sync")((1,), (64,), (out, np.int32(40)))
    k(rt, "early_return_then_sync")((1,), (64,), (out, np.int32(64)))  # the next launch starts clean
    np.testing.assert_array_equal(out, 1)


def test_threads_waiting_at_different_barriers_are_reported(rt):
    out = np.zeros(64, np.float32)
    with pytest.raises(RuntimeError, match="wait at different barriers.*threads 0-15 wait in a __shfl.*"
                                           "threads 16-63 wait in __syncthreads"):
        k(rt, "divergent_barriers")((1,), (64,), (out,))


@pytest.mark.parametrize("step", [1, -1])
def test_a_missing_barrier_shows_in_one_of_the_thread_orders(rt, step):
    """Threads run ascending in one block and descending in the next, so a read of a neighbour's
    shared write with no __syncthreads between gives a wrong value whichever neighbour it is."""
    x = np.arange(128, dtype=np.float32)
    out = np.zeros_like(x)
    k(rt, "missing_barrier")((2,), (64,), (x, out, np.int32(step)))
    want = np.roll(x.reshape(2, 64), -step, axis=1)
    wrong = (out.reshape(2, 64) != want).any(axis=1)
    assert wrong.any(), "the race went unnoticed in both blocks"


def test_a_partial_shuffle_mask_is_refused(rt):
    with pytest.raises(RuntimeError, match=r"__shfl_down_sync with mask 0x0000ffff in thread \(\d+,0,0\) of block "
                                           r"\(0,0,0\): the emulator supports only the full mask"):
        k(rt, "partial_mask")((1,), (32,), (np.zeros(32, np.float32),))


# -- the skip marker -------------------------------------------------------------------------------


def test_skip_marked_kernel_raises_not_implemented(rt):
    with pytest.raises(NotImplementedError, match="ptx_only"):
        rt.kernel(FILE, "ptx_only")


def test_strip_skipped_blanks_the_kernel_and_keeps_lines():
    src = ('#include "common.cuh"\n// emulator: skip\nextern "C" __global__ void a(float* o) {\n'
           '  asm("{ mov.f32 %0, 0f3F800000; }" : "=f"(o[0])); /* } */\n}\n'
           'extern "C" __global__ void b(float* o) { o[0] = 1; }\n')
    out, skipped = strip_skipped(src)
    assert skipped == ["a"]
    assert out.count("\n") == src.count("\n")
    assert "void a" not in out and 'extern "C" __global__ void b(float* o) { o[0] = 1; }' in out
    with pytest.raises(ValueError, match="must be right above"):
        strip_skipped("// emulator: skip\n__device__ void f() {}\n")


# -- build: cache, concurrency, the portable context switch -------------------------------------------


def test_cache_is_reused_and_concurrent_builds_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICNN_EMU_CACHE", str(tmp_path))
    results, errors = [], []

    def build():
        try:
            r = EmuRuntime([KDIR])
            out = np.zeros(10, np.int64)
            r.kernel(FILE, "iota_i64")((1,), (32,), (out, np.int64(10)))
            results.append(out)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out in results:
        np.testing.assert_array_equal(out, 3 * np.arange(10) + 1)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".so")] == [f for f in os.listdir(tmp_path)]
    monkeypatch.setattr(EmuRuntime, "_compile", lambda *a: pytest.fail("compiled again despite the cache"))
    EmuRuntime([KDIR]).kernel(FILE, "iota_i64")


def test_portable_context_switch_gives_the_same_results(tmp_path, monkeypatch):
    """The ucontext path (used off x86-64) runs the barrier and shuffle kernels the same way."""
    monkeypatch.setenv("MINICNN_EMU_CACHE", str(tmp_path))
    monkeypatch.setattr(_emulator, "CXX_FLAGS", _emulator.CXX_FLAGS + ("-DMINICNN_EMU_UCONTEXT",))
    r = EmuRuntime([KDIR])
    n = 600
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    warp_out, block_out = np.zeros(24, np.float32), np.zeros(3, np.float32)
    r.kernel(FILE, "shfl_down_sum_f32")((3,), (256,), (x, warp_out, block_out, np.int64(n)))
    np.testing.assert_allclose(block_out, np.pad(x, (0, 168)).reshape(3, 256).sum(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="reached by 10 of 64"):
        r.kernel(FILE, "early_return_then_sync")((1,), (64,), (np.zeros(64, np.float32), np.int32(10)))


def test_compile_error_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.cu").write_text(
        '#include "common.cuh"\nextern "C" __global__ void f(float* o) {\n  o[0] = undefined_name;\n}\n')
    with pytest.raises(RuntimeError, match=r"broken.cu:3:.*undefined_name"):
        EmuRuntime([str(tmp_path)]).kernel("broken.cu", "f")


@pytest.mark.parametrize("file", kernel_files())
def test_every_backend_kernel_file_builds_for_the_host(file):
    """Every kernel of the backend's files is found and compiled (or marked '// emulator: skip')."""
    import re

    from minicnn.backends.cupy import _compile_check

    rt = _emulator.emulated_runtime()
    kernels, skipped = rt._file(file)
    if _compile_check.nvrtc_absent() is None:
        # every kernel the GPU build has, macro-stamped ones included (NVRTC's PTX entry names)
        declared = _compile_check.entry_names(file)
    else:
        # without NVRTC: the kernels written out plainly (macro bodies, whose names the preprocessor makes, left aside)
        src = re.sub(r"//[^\n]*|/\*.*?\*/", "", _runtime.kernel_source(file), flags=re.S)
        src = "\n".join(ln for ln in src.split("\n") if not ln.rstrip().endswith("\\"))
        declared = set(re.findall(r'extern\s*"C"\s+__global__\s+void\s+(\w+)\s*\(', src))
    assert kernels or skipped, f"{file}: no kernels found"
    unbuilt = declared - set(kernels) - skipped
    assert not unbuilt, f"{file}: kernels the emulator did not build: {', '.join(sorted(unbuilt))}"


# -- the backend ------------------------------------------------------------------------------------


def test_runtime_arrays_and_generator():
    rt = EmuRuntime()
    v = np.arange(6.0).reshape(2, 3)[:, ::2]
    assert rt.asarray(v) is v and rt.is_native(v) and not rt.is_native([1.0])
    mc.manual_seed(3)
    a = rt.generator().random(4)
    mc.manual_seed(3)
    np.testing.assert_array_equal(rt.generator().random(4), a)
    np.testing.assert_array_equal(a, np.random.default_rng(3).random(4))


def test_runtime_empty_is_poisoned_like_unwritten_gpu_memory():
    """An output element no kernel writes must not pass as numpy's zeroed pages would."""
    xp = EmuRuntime().xp
    assert np.isnan(xp.empty((2, 3), np.float32)).all() and np.isnan(EmuRuntime().empty((4,), np.float64)).all()
    assert (xp.empty((3, 2), np.int64, order="F") == np.int64(-6510615555426900571)).all()  # 0xa5 bytes
    assert np.isnan(xp.empty_like(np.zeros((2, 2), np.float32))).all()
    assert xp.ascontiguousarray is np.ascontiguousarray and xp.float32 is np.float32
    out = xp.empty(300, np.float32)  # a launch that covers only the first block leaves NaN behind
    k = EmuRuntime([KDIR]).kernel(FILE, "reverse_blocks_f32")
    k((1,), (128,), (np.arange(300, dtype=np.float32), out, np.int64(300)), shared_mem=512)
    assert not np.isnan(out[:128]).any() and np.isnan(out[128:]).all()


def test_emulated_backend_fills_the_table():
    """Every op of minicnn.ops is in the cupy backend's table (fails while an op is missing)."""
    be = _emulator.emulated_backend()
    assert be.NAME == "cupy-emu"
    assert isinstance(be.generator(), np.random.Generator)
