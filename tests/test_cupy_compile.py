"""Every kernel file of the cupy backend compiles with NVRTC for sm_80 and sm_90, with the options
the backend uses at run time (no GPU needed; ``minicnn.backends.cupy._compile_check``).

Skipped only where NVRTC itself is absent (CuPy, the nvidia-cuda-nvrtc or nvidia-cuda-runtime
wheel not installed); ``.ci/run`` installs them.
"""
from __future__ import annotations

import functools
import os

import pytest

from minicnn.backends.cupy import _compile_check as cc
from minicnn.backends.cupy._runtime import kernel_files, nvrtc_options

pytestmark = pytest.mark.skipif(cc.nvrtc_absent() is not None, reason=f"NVRTC not usable here: {cc.nvrtc_absent()}")

# each file is compiled once per architecture; main() below reuses the results
_check_file = functools.lru_cache(maxsize=None)(cc.check_file)

SELFTEST = os.path.join(os.path.dirname(__file__), "cuda_emu_kernels", "emu_selftest.cu")


def test_there_are_kernel_files():
    assert kernel_files(), "no .cu files in minicnn/backends/cupy/kernels"


@pytest.mark.parametrize("arch", cc.ARCHS)
@pytest.mark.parametrize("file", kernel_files())
def test_kernel_file_compiles(file, arch):
    ok, log, size = _check_file(file, arch)
    assert ok, f"NVRTC cannot compile {file} for {arch}:\n{log}"
    assert size > 0


@pytest.mark.parametrize("arch", cc.ARCHS)
def test_emulator_selftest_kernels_are_valid_cuda(arch):
    """The emulator's own test kernels (shared memory, shuffles, atomics, inline PTX) compile for
    the GPU too: the emulator accepts CUDA, not a dialect of its own."""
    with open(SELFTEST, encoding="utf-8") as f:
        ok, log, _ = cc.compile_source(f.read(), "emu_selftest.cu", arch)
    assert ok, log


@pytest.mark.parametrize("src, needle", [
    ('#include "common.cuh"\nextern "C" __global__ void f(float* o) { o[0] = 1.0f }\n', "expected a \";\""),
    ('extern "C" __global__ void f(float* o) { o[0] = undefined_name; }\n', "undefined_name"),
    ('#include "no_such_header.cuh"\n', "no_such_header.cuh"),
])
def test_a_broken_source_is_reported(src, needle):
    ok, log, size = cc.compile_source(src, "broken.cu", "sm_90")
    assert not ok and size == 0
    assert "broken.cu" in log and needle in log, log


def test_options_are_the_runtime_options(monkeypatch):
    """The check compiles with exactly what CupyRuntime gives cupy.RawModule, plus -arch and the CUDA headers."""
    opts = cc.options("sm_90")
    assert opts[0] == "-arch=sm_90"
    assert opts[1:1 + len(nvrtc_options())] == list(nvrtc_options())
    assert opts[-1] == "-I" + cc.cuda_include_dir()

    import cupy

    from minicnn.backends.cupy._runtime import CupyRuntime

    seen = {}

    class FakeModule:
        def __init__(self, code, options):
            seen["options"] = options

    monkeypatch.setattr(cupy, "RawModule", FakeModule)
    monkeypatch.setattr(cupy.cuda.runtime, "getDevice", lambda: 0)
    CupyRuntime()._module(kernel_files()[0])
    assert seen["options"] == nvrtc_options()


def test_main_prints_one_line_per_file_and_arch(capsys, monkeypatch):
    monkeypatch.setattr(cc, "check_file", _check_file)
    assert cc.main() == 0
    lines = capsys.readouterr().out.splitlines()
    for f in kernel_files():
        for arch in cc.ARCHS:
            assert any(ln.startswith(f"{f} {arch}: ok") for ln in lines), lines
