"""Compile every kernel file of the cupy backend with NVRTC for the GPUs it targets, without a GPU.

NVRTC (the ``nvidia-cuda-nvrtc`` wheel) compiles CUDA C to a cubin with no driver and no device;
the CUDA headers come from the ``nvidia-cuda-runtime`` wheel (``<site-packages>/nvidia/cu13/include``).
CuPy's own compile functions need a driver, so this calls NVRTC through
``cupy_backends.cuda.libs.nvrtc`` directly, with the options the backend uses at run time
(:func:`._runtime.nvrtc_options`) plus the ``-arch`` and CUDA include path CuPy adds there.
Every kernel is compiled, including those marked ``// emulator: skip``.

Run it: ``python -m minicnn.backends.cupy._compile_check`` (one line per file and architecture;
exit status 1 if any fails). ``tests/test_cupy_compile.py`` runs the same check in CI.
"""
from __future__ import annotations

import os
import sys

from ._runtime import KERNEL_DIR, kernel_files, kernel_source, nvrtc_options

ARCHS = ("sm_80", "sm_90")


def cuda_include_dir() -> str | None:
    """The CUDA headers of the ``nvidia-cuda-runtime`` wheel, or None when it is not installed."""
    try:
        import nvidia
    except ImportError:
        return None
    for base in getattr(nvidia, "__path__", []):
        inc = os.path.join(base, "cu13", "include")
        if os.path.isfile(os.path.join(inc, "cuda_runtime.h")) or os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
            return inc
    return None


def nvrtc_absent() -> str | None:
    """Why NVRTC cannot compile here (CuPy, the NVRTC library or the CUDA headers missing), else None."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - ImportError, or the NVRTC library cannot be opened
        return f"NVRTC is not usable ({type(e).__name__}: {e}); pip install cupy-cuda13x nvidia-cuda-nvrtc"
    if cuda_include_dir() is None:
        return "the CUDA headers are not installed; pip install nvidia-cuda-runtime"
    return None


def options(arch: str) -> list[str]:
    """The NVRTC options for ``arch`` (``"sm_90"``): the run-time options, ``-arch``, the CUDA headers."""
    inc = cuda_include_dir()
    return [f"-arch={arch}", *nvrtc_options()] + ([f"-I{inc}"] if inc else [])


def compile_source(src: str, name: str, arch: str) -> tuple[bool, str, int]:
    """Compile ``src`` (named ``name`` in messages) for ``arch``: ``(ok, NVRTC's log, cubin bytes)``."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(src, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options(arch))
        except nvrtc.NVRTCError as e:
            return False, (nvrtc.getProgramLog(prog) or str(e)).strip(), 0
        return True, (nvrtc.getProgramLog(prog) or "").strip(), len(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)


def entry_names(file: str, arch: str = "sm_80") -> set[str]:
    """The kernels NVRTC compiles ``kernels/<file>`` into (the PTX's ``.entry`` names), macro-made
    ones included: what a launch by name can find. Raises RuntimeError if the file does not compile."""
    import re

    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(kernel_source(file), file, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options(arch))
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC cannot compile {file} for {arch}: {(nvrtc.getProgramLog(prog) or str(e)).strip()}") from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


def check_file(file: str, arch: str) -> tuple[bool, str, int]:
    """Compile ``kernels/<file>`` for ``arch``; see :func:`compile_source`."""
    return compile_source(kernel_source(file), file, arch)


def main(argv=None) -> int:
    """Check every kernel file for every architecture of :data:`ARCHS`; print one line each."""
    why = nvrtc_absent()
    if why:
        print(f"compile check not run: {why}")
        return 1
    failed = 0
    for file in kernel_files():
        for arch in ARCHS:
            ok, log, size = check_file(file, arch)
            if ok:
                note = f" ({len(log.splitlines())} lines of warnings)" if log else ""
                print(f"{file} {arch}: ok, {size} bytes of cubin{note}")
            else:
                failed += 1
                print(f"{file} {arch}: FAILED\n{log}")
    print(f"{len(kernel_files())} files in {KERNEL_DIR}, {len(ARCHS)} architectures: "
          + ("all compile" if not failed else f"{failed} failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
