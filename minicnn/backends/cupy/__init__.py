"""The cupy backend: every op of the table as CUDA kernels of our own, on CuPy arrays.

Kernels are CUDA C in ``kernels/*.cu`` (one file per concern, beside the Python that launches
them), compiled at run time by NVRTC through ``cupy.RawModule``; GEMMs go to cuBLAS through
``cupy.matmul``; cuDNN is not used. Each op is a function of a :class:`~._runtime.Runtime` and
its arguments (``_runtime`` says why: the same ops run on the host emulator in CI). Data stays
on the device between layers; ``minicnn.to_numpy`` brings a result back.

The same ops run on numpy arrays on the host CUDA emulator (``_emulator``, the ``cupy-emu``
backend of the tests), and NVRTC compiles every kernel file without a GPU (``_compile_check``);
docs/gpu.md describes both.

Importing this package touches no device (it works wherever CuPy is installed, or not at all);
``unusable_reason()`` says in one line what is missing when the backend cannot run here.
"""
from __future__ import annotations

from . import activation, batchnorm, conv, conv_transpose, dropout, graph, linear, loss, pad, pool, upsample
from ._runtime import CupyRuntime, build_table
from .precision import precision, get_precision

NAME = "cupy"

OP_MODULES = (conv, conv_transpose, linear, pool, pad, upsample, batchnorm, activation, dropout, loss)

RUNTIME = CupyRuntime()
OPS = build_table(RUNTIME, OP_MODULES)
# CUDA-graph capture of a compiled model (minicnn.inference.capture); the host emulator has none
OPS["capture_graph"] = graph.capture_graph


def unusable_reason() -> str | None:
    """Why this backend cannot run here, in one line (CuPy missing, no usable driver, no device), else None."""
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - ImportError, or CUDA libraries CuPy cannot open
        return f"CuPy is not installed or does not import ({type(e).__name__}: {e}); pip install cupy-cuda13x"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError: no driver, a driver too old
        return f"CuPy found no usable CUDA driver ({e})"
    if count < 1:
        return "CuPy found no CUDA device"
    return None
