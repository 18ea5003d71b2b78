"""Which GEMM kernels numpy's OpenBLAS runs, and running it on one thread for a while.

numpy's wheels ship OpenBLAS built for every x86 generation; when the library loads it reads the
CPU and picks a kernel set (``SkylakeX`` on AVX-512 CPUs, ``Haswell`` on AVX2 ones, ...), unless
the environment variable ``OPENBLAS_CORETYPE`` names one. A forced older set costs real speed
(docs/kernels.md, "Which GEMM kernels OpenBLAS runs", has the measurement). minicnn never
overrides the variable; the benchmarks report the kernel set in their machine line and say when
the variable forced it (``blas_core``, ``blas_note``).

OpenBLAS's own threads are the other thing worth knowing about. After a multithreaded GEMM its
worker threads keep spinning for a while (``OPENBLAS_THREAD_TIMEOUT``, 2^28 cycles by default)
waiting for the next one, so a numba kernel that runs right after a GEMM shares the cores with
them. ``single_threaded()`` lets the numba backend run OpenBLAS on the calling thread only and
split its GEMMs over its own threads instead (``backends/numba/_threads.matmul``), so that no
BLAS worker ever spins.

What this changes in the process: inside a ``single_threaded`` block OpenBLAS's thread count is
1, and the count in force before the outermost block is put back when the last block exits
(also on an error). OpenBLAS keeps one count for the whole process, so a GEMM another thread
starts meanwhile also runs on one thread; nothing else is changed, and nothing outside a block.
The count is read and set through OpenBLAS's own ``openblas_get_num_threads`` and
``openblas_set_num_threads``; threadpoolctl (not a dependency) would set the same process-wide
count through the same functions, so it would not narrow the scope. docs/kernels.md, "What this
backend changes in your process", lists this with the backend's other process-wide settings.
"""
from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["blas_core", "blas_note", "blas_threads", "cblas_function", "single_threaded"]


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


def _symbol(name: str):
    """numpy's OpenBLAS function ``name`` under whichever of its spellings this build exports
    (scipy-openblas wheels prefix ``scipy_`` and, for 64-bit integers, suffix ``64_``), or None."""
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)  # numpy loaded it already: the same handle comes back
        except OSError:
            continue
        for sym in (f"scipy_{name}64_", f"scipy_{name}", f"{name}64_", name):
            fn = getattr(lib, sym, None)
            if fn is not None:
                return fn
    return None


def _function(stem: str):
    """numpy's OpenBLAS ``openblas_<stem>`` (thread count, kernel set name), or None."""
    return _symbol(f"openblas_{stem}")


def cblas_function(stem: str):
    """numpy's OpenBLAS ``cblas_<stem>`` (``sgemm``, ``dgemm``) as a ctypes function without a
    declared signature, or None."""
    return _symbol(f"cblas_{stem}")


def blas_core() -> str | None:
    """The kernel set numpy's OpenBLAS runs (``SkylakeX``, ``Haswell``, ...); None for another BLAS."""
    fn = _function("get_corename")
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


_get_threads = _set_threads = None
_looked_up = False
_lock = threading.Lock()
_depth = 0
_saved = None


def _thread_functions():
    global _get_threads, _set_threads, _looked_up
    if not _looked_up:
        get, put = _function("get_num_threads"), _function("set_num_threads")
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            _get_threads, _set_threads = get, put
        _looked_up = True
    return _get_threads, _set_threads


def blas_threads() -> int | None:
    """Threads numpy's OpenBLAS runs a GEMM on (outside any ``single_threaded`` block); None when
    numpy's BLAS is not an OpenBLAS whose thread count can be read and set."""
    get, _ = _thread_functions()
    if get is None:
        return None
    with _lock:
        return _saved if _depth else int(get())


class single_threaded:
    """``with single_threaded():`` numpy's OpenBLAS runs every GEMM on the calling thread.

    Nests and may be entered by several threads at once: the count in force before the
    outermost entry is restored when the last block exits. The setting is process-wide, so a
    GEMM another thread runs meanwhile is single-threaded too. A no-op for another BLAS.
    """

    def __enter__(self):
        global _depth, _saved
        get, put = _thread_functions()
        if put is not None:
            with _lock:
                if _depth == 0:
                    _saved = int(get())
                    put(1)
                _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        _, put = _thread_functions()
        if put is not None:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    put(_saved)
        return False


def blas_note() -> str:
    """One line for a benchmark's machine description: the kernel set and whether the environment forced it."""
    core = blas_core()
    if core is None:
        return "BLAS: not OpenBLAS"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        return f"OpenBLAS kernels: {core} (forced by OPENBLAS_CORETYPE={forced})"
    return f"OpenBLAS kernels: {core} (chosen by OpenBLAS for this CPU)"
