"""Which GEMM kernels numpy's OpenBLAS runs (most of a convolution's time is spent in them).

numpy's wheels ship OpenBLAS built for every x86 generation; when the library loads it reads the
CPU and picks a kernel set (``SkylakeX`` on AVX-512 CPUs, ``Haswell`` on AVX2 ones, ...), unless
the environment variable ``OPENBLAS_CORETYPE`` names one. A forced older set costs real speed:
on a 2-core AMD EPYC (Zen 5) VM, float32 2048x2048 ``a @ b`` ran at 219 GFLOP/s with
``OPENBLAS_CORETYPE=Haswell`` and 419 GFLOP/s with OpenBLAS's own choice, ``SkylakeX``
(docs/benchmarks.md). minicnn never overrides the variable; the benchmarks report the kernel set
in their machine line and say when the variable forced it.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["blas_core", "blas_note"]


def _openblas_libraries():
    import numpy as np

    paths = []
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    if os.path.isdir(libs):
        paths += [os.path.join(libs, f) for f in sorted(os.listdir(libs)) if "openblas" in f]
    try:
        libdir = np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("lib directory")
    except Exception:  # noqa: BLE001 - an older numpy: no build information to read
        libdir = None
    if libdir and os.path.isdir(libdir):
        paths += [os.path.join(libdir, f) for f in sorted(os.listdir(libdir)) if "openblas" in f and ".so" in f]
    return paths


def blas_core() -> str | None:
    """The kernel set numpy's OpenBLAS runs (``SkylakeX``, ``Haswell``, ...); None for another BLAS."""
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)  # numpy loaded it already: the same handle comes back
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                    "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def blas_note() -> str:
    """One line for a benchmark's machine description: the kernel set and whether the environment forced it."""
    core = blas_core()
    if core is None:
        return "BLAS: not OpenBLAS"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        return f"OpenBLAS kernels: {core} (forced by OPENBLAS_CORETYPE={forced})"
    return f"OpenBLAS kernels: {core} (chosen by OpenBLAS for this CPU)"
