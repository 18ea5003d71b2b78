"""Where the cupy backend's ops run: a :class:`Runtime` gives them an array module, compiled
kernels and a GEMM, and nothing else.

Every op of this backend is a plain function whose first argument is the runtime
(``def relu_forward(rt, x)``); :func:`build_table` binds them to one runtime to make a backend
table. Two runtimes fill the same interface:

- :class:`CupyRuntime` (the ``cupy`` backend): CuPy arrays on the current CUDA device, kernels
  from ``kernels/*.cu`` compiled by NVRTC through ``cupy.RawModule``, GEMMs through cuBLAS
  (``cupy.matmul``). Nothing touches the device until the first op runs, so importing the
  backend works on a machine with CuPy and no GPU.
- ``_emulator.EmuRuntime`` (tests, teaching): numpy arrays, the same ``.cu`` files compiled for
  the host by the system C++ compiler against ``kernels/cuda_emu.h``, each launch run block by
  block with one host thread per CUDA thread. It lets CI check every kernel's arithmetic against
  the numpy reference without a GPU; it says nothing about speed, and a race the GPU would show
  may not show there (see docs/gpu.md).

Kernel launch convention (the same on both runtimes, and CuPy's ``RawKernel`` call):
``rt.kernel("conv.cu", "im2col_f32")(grid, block, args, shared_mem=0)`` where ``grid`` and
``block`` are 1-3 tuples of ints, and ``args`` a tuple of C-contiguous arrays of the runtime
(passed as pointers) and numpy scalars whose type matches the kernel's parameter exactly
(``np.int32`` for ``int``, ``np.int64`` for ``long long``, ``np.float32``/``np.float64``).
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

KERNEL_DIR = os.path.join(os.path.dirname(__file__), "kernels")

# NVRTC options every kernel file is compiled with, at run time and by the compile check
# (_compile_check.py, tests/test_cupy_compile.py). At run time CuPy adds the device's -arch and
# the CUDA headers' include path; the compile check adds both itself
NVRTC_OPTIONS = ("--std=c++17",)


def nvrtc_options() -> tuple:
    """The options ``CupyRuntime`` gives ``cupy.RawModule``: :data:`NVRTC_OPTIONS` and ``kernels/``
    on the include path (for ``#include "common.cuh"``)."""
    return NVRTC_OPTIONS + ("-I" + KERNEL_DIR,)


def kernel_source(file: str) -> str:
    """The text of ``kernels/<file>``."""
    with open(os.path.join(KERNEL_DIR, file), encoding="utf-8") as f:
        return f.read()


def kernel_files() -> list[str]:
    """Every ``.cu`` file of the backend, sorted."""
    return sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))


class Runtime:
    """The interface an op sees; see the module docstring."""

    name = "runtime"
    xp = np  # the array module: numpy's API on this runtime's arrays
    # False where numpy arrays are not this runtime's own: build_table then copies a numpy array
    # given to an op into the runtime's memory first (see there)
    host_arrays_native = True

    def kernel(self, file: str, name: str):
        """The compiled kernel ``name`` of ``kernels/<file>``, callable as ``k(grid, block, args, shared_mem=0)``."""
        raise NotImplementedError

    def matmul(self, a, b, out=None):
        """``a @ b`` (batched as ``np.matmul``), fp32/fp64 accumulation; ``out`` as numpy's."""
        return self.xp.matmul(a, b, out=out)

    def asarray(self, a):
        raise NotImplementedError

    def is_native(self, a) -> bool:
        raise NotImplementedError

    def to_numpy(self, a):
        raise NotImplementedError

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def generator(self):
        """The random generator dropout draws from (``minicnn.manual_seed`` reseeds it)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until every launched kernel has finished (the emulator runs each launch to its end)."""


class CupyRuntime(Runtime):
    """CuPy on the current device; see the module docstring."""

    name = "cupy"
    host_arrays_native = False

    def __init__(self):
        self._modules: dict = {}
        self._lock = threading.Lock()

    @property
    def xp(self):
        import cupy

        return cupy

    def kernel(self, file: str, name: str):
        return self._module(file).get_function(name)

    def _module(self, file: str):
        # one RawModule per file and device; compiled by NVRTC on first use (CuPy caches the
        # binary on disk, so a later process loads it without compiling)
        import cupy

        key = (file, cupy.cuda.runtime.getDevice())
        mod = self._modules.get(key)
        if mod is None:
            with self._lock:
                mod = self._modules.get(key)
                if mod is None:
                    mod = cupy.RawModule(code=kernel_source(file), options=nvrtc_options())
                    self._modules[key] = mod
        return mod

    def matmul(self, a, b, out=None):
        # cupy.matmul, except while a CUDA graph is being recorded: CuPy refuses cuBLAS calls on a
        # capturing stream, so graph.matmul then calls cuBLAS itself (see graph.py)
        from . import graph

        return graph.matmul(a, b, out=out)

    def asarray(self, a):
        import cupy

        return cupy.asarray(a)

    def is_native(self, a) -> bool:
        import cupy

        return isinstance(a, cupy.ndarray)

    def to_numpy(self, a):
        import cupy

        return cupy.asnumpy(a)

    def synchronize(self) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def generator(self):
        import cupy

        from ...random import backend_generator

        return backend_generator("cupy", lambda seed: cupy.random.default_rng(seed))


def build_table(rt: Runtime, modules) -> dict:
    """The backend table: every name in each module's ``__all__`` bound to ``rt``, plus the
    runtime's array functions and generator.

    Where numpy arrays are not the runtime's own (:class:`CupyRuntime`), a numpy array given to an
    op, positionally or by keyword, is first copied into the runtime's memory with ``rt.asarray``:
    a module's forward does the same with its input, so a backward given a host ``dy`` (as the
    numpy and numba backends accept) works too. ``out=`` is never copied: an op writes into it,
    and writing into a copy would lose the result, so a host ``out`` reaches the op and fails there.
    """
    table = {"asarray": rt.asarray, "is_native": rt.is_native, "to_numpy": rt.to_numpy,
             "empty": rt.empty, "generator": rt.generator, "synchronize": rt.synchronize}
    for mod in modules:
        for name in mod.__all__:
            table[name] = _bind(rt, getattr(mod, name))
    return table


def _bind(rt: Runtime, fn):
    """``fn`` with ``rt`` as its first argument; see :func:`build_table` for host arrays."""
    if rt.host_arrays_native:
        bound = functools.partial(fn, rt)
    else:
        def bound(*args, **kwargs):
            args = [rt.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            for k, v in kwargs.items():
                if k != "out" and isinstance(v, np.ndarray):
                    kwargs[k] = rt.asarray(v)
            return fn(rt, *args, **kwargs)
    functools.update_wrapper(bound, fn)
    return bound
