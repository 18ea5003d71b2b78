"""The cupy backend's host side, on the CPU: launch geometry and dtype rules (``_launch``), and what
importing and selecting the backend does on a machine without a usable GPU."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minicnn import backends
from minicnn.backends.cupy import _launch
from minicnn.backends.cupy._launch import ceil_div, grid_1d, i32, i64, suffix


@pytest.mark.parametrize("a, b, want", [(0, 1, 0), (1, 256, 1), (256, 256, 1), (257, 256, 2),
                                        (10**12 + 1, 10**6, 10**6 + 1), (2**63 - 1, 2, 2**62)])
def test_ceil_div(a, b, want):
    assert ceil_div(a, b) == want


def test_ceil_div_refuses_bad_operands():
    with pytest.raises(ValueError, match="divisor must be positive"):
        ceil_div(3, 0)
    with pytest.raises(ValueError, match="non-negative"):
        ceil_div(-1, 4)


@pytest.mark.parametrize("n, block, want", [(1, 256, 1), (256, 256, 1), (257, 256, 2), (1000, 128, 8),
                                            (65535 * 256, 256, 65535), (10**9, 256, 65535)])
def test_grid_1d(n, block, want):
    assert grid_1d(n, block) == (want,)


@pytest.mark.parametrize("n, block, cap", [(1, 1, 4), (1000, 128, 3), (12345, 256, 7), (300, 32, 100)])
def test_capped_grid_with_a_grid_stride_loop_covers_every_element_once(n, block, cap):
    """The loop the kernels run (``for i = blockIdx*blockDim + threadIdx; i < n; i += gridDim*blockDim``),
    replayed on the host over the grid grid_1d gives."""
    (blocks,) = grid_1d(n, block, max_blocks=cap)
    assert blocks <= cap
    seen = np.zeros(n, np.int64)
    stride = blocks * block
    for start in range(stride):
        seen[start:n:stride] += 1
    np.testing.assert_array_equal(seen, 1)


def test_grid_1d_refuses_an_empty_launch_and_bad_blocks():
    with pytest.raises(ValueError, match="skip the launch"):
        grid_1d(0)
    with pytest.raises(ValueError, match="1..1024"):
        grid_1d(10, 2048)


@pytest.mark.parametrize("dtype, want", [(np.float32, "f32"), (np.dtype("float64"), "f64"), ("float32", "f32")])
def test_suffix(dtype, want):
    assert suffix(dtype) == want


@pytest.mark.parametrize("dtype, name", [(np.float16, "float16"), (np.int64, "int64"), (np.complex64, "complex64"),
                                         ("bogus", "'bogus'")])
def test_suffix_names_the_unsupported_dtype(dtype, name):
    with pytest.raises(TypeError, match=f"float32 or float64, got {name}"):
        suffix(dtype)


def test_scalar_arguments_are_range_checked():
    assert type(i32(7)) is np.int32 and i32(-(2**31)) == -(2**31)
    assert type(i64(2**40)) is np.int64
    with pytest.raises(ValueError, match="stride = 2147483648 does not fit the kernel's 32-bit int"):
        i32(2**31, "stride")
    with pytest.raises(ValueError, match="64-bit"):
        i64(2**63)
    assert _launch.DEFAULT_BLOCK == 256


# -- importing and selecting the backend without a GPU ----------------------------------------------


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_import_touches_no_device():
    """Every function of cupy.cuda.runtime raises if called; importing the package and building its
    table must not call any."""
    pytest.importorskip("cupy", reason="CuPy is not importable here")
    out = _run("""
        import cupy.cuda.runtime as rt
        calls = []
        def make(name):
            def trap(*a, **k):
                calls.append(name)
                raise AssertionError(f"device call at import: cupy.cuda.runtime.{name}")
            return trap
        for name in dir(rt):
            if not name.startswith("_") and callable(getattr(rt, name)) and not isinstance(getattr(rt, name), type):
                setattr(rt, name, make(name))
        import minicnn.backends.cupy as be
        from minicnn.backends.cupy import _emulator
        assert callable(be.OPS["asarray"]) and be.NAME == "cupy"
        print("calls:", calls)
    """)
    assert out.strip() == "calls: []"


def test_import_works_without_cupy():
    out = _run("""
        import sys
        sys.modules["cupy"] = None  # import cupy raises ImportError
        import minicnn.backends.cupy as be
        print(be.unusable_reason())
    """)
    assert out.startswith("CuPy is not installed or does not import")


def test_selecting_cupy_without_a_driver_says_so_in_one_line(monkeypatch):
    cupy = pytest.importorskip("cupy", reason="CuPy is not importable here")
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    def no_driver():
        raise CUDARuntimeError(35)  # cudaErrorInsufficientDriver

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", no_driver)
    monkeypatch.delitem(backends._loaded, "cupy", raising=False)
    with pytest.raises(RuntimeError) as e:
        backends.load("cupy")
    msg = str(e.value)
    assert msg.startswith("backend 'cupy' is not usable here: CuPy found no usable CUDA driver")
    assert "\n" not in msg


def test_the_op_table_names_every_op():
    """The cupy package's table (built at import, no device needed) holds every op of minicnn.ops."""
    import minicnn.backends.cupy as cp_backend
    from minicnn.ops import ARRAY_FUNCS, OP_NAMES

    missing = [op for op in OP_NAMES + ARRAY_FUNCS if op not in cp_backend.OPS]
    assert not missing, f"the cupy backend lacks: {', '.join(missing)}"
    backends.make_backend("cupy", cp_backend)  # the same check backends.load makes


class _Device:
    """Stands for a device array: holds a host array, and is not an np.ndarray."""

    def __init__(self, a):
        self.a = np.asarray(a)


def test_ops_of_a_device_runtime_copy_host_arrays_in_but_never_out(monkeypatch):
    """build_table on a runtime whose arrays are not numpy's (CupyRuntime): a host array given to
    an op, positionally or by keyword, reaches it as the runtime's array (a backward handed a host
    ``dy``); ``out=`` and what is not an ndarray reach it untouched; on a runtime whose own arrays
    are numpy's (the emulator) nothing is wrapped."""
    import types

    from minicnn.backends.cupy._runtime import Runtime, build_table

    seen = {}

    def scale_backward(rt, dy, factor, mask=None, out=None):
        seen.update(rt=rt, dy=dy, factor=factor, mask=mask, out=out)
        return "done"

    mod = types.SimpleNamespace(__all__=["scale_backward"], scale_backward=scale_backward)

    class DeviceRuntime(Runtime):
        host_arrays_native = False

        def asarray(self, a):
            return _Device(a)

        def is_native(self, a):
            return isinstance(a, _Device)

    rt = DeviceRuntime()
    op = build_table(rt, [mod])["scale_backward"]
    assert op.__name__ == "scale_backward" and op.__doc__ == scale_backward.__doc__
    dy, mask, out = np.arange(6.0).reshape(2, 3), np.ones(3, bool), np.empty((2, 3))
    assert op(dy, 2.5, mask=mask, out=out) == "done"
    assert seen["rt"] is rt and isinstance(seen["dy"], _Device) and isinstance(seen["mask"], _Device)
    np.testing.assert_array_equal(seen["dy"].a, dy)
    np.testing.assert_array_equal(seen["mask"].a, mask)
    assert seen["out"] is out and seen["factor"] == 2.5
    dev = _Device(dy)
    op(dev, 1.0)
    assert seen["dy"] is dev  # the runtime's own array is passed as it is

    emu = Runtime()  # numpy arrays are its own
    build_table(emu, [mod])["scale_backward"](dy, 1.0)
    assert seen["rt"] is emu and seen["dy"] is dy
