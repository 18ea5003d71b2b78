"""Backends: one op table per folder, selected at run time.

A backend is a module that exposes ``NAME``, ``OPS`` (a dict op name -> function) and three array
helpers: ``asarray(a)`` (bring an array into the backend's memory), ``is_native(a)`` and
``to_numpy(a)``. ``numpy`` is the readable reference, ``numba`` the fast CPU path (default),
``cupy`` the GPU path. Adding a backend means adding a folder that fills the same table; nothing
above this package changes.

Selection, innermost wins: ``with minicnn.backend(name):`` (per thread), ``minicnn.set_backend(name)``,
the ``MINICNN_BACKEND`` environment variable, then the default ``numba``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading

from ..ops import OP_NAMES

AVAILABLE = ("numpy", "numba", "cupy")
DEFAULT = "numba"

_loaded: dict = {}
_global_name: str | None = None
_local = threading.local()


def load(name: str):
    """Import backend ``name`` and check that it fills the whole op table."""
    if name not in AVAILABLE:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(AVAILABLE)}")
    if name not in _loaded:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:  # cupy without a GPU, numba missing, ...
            raise RuntimeError(f"backend {name!r} is not usable here: {e}") from e
        table = getattr(mod, "OPS", None)
        if table is None:
            raise RuntimeError(f"backend {name!r} is not implemented in this version")
        missing = [op for op in OP_NAMES if op not in table]
        if missing:
            raise RuntimeError(f"backend {name!r} lacks ops: {', '.join(missing)}")
        _loaded[name] = mod
    return _loaded[name]


def _default_name() -> str:
    env = os.environ.get("MINICNN_BACKEND", "").strip().lower()
    return env or DEFAULT


def current():
    """The backend module in force for this thread."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return load(_global_name or _default_name())


def set_backend(name: str) -> None:
    """Make ``name`` the process-wide backend (``numpy``, ``numba`` or ``cupy``)."""
    global _global_name
    load(name)
    _global_name = name


def get_backend() -> str:
    """Name of the backend in force for this thread."""
    return current().NAME


@contextlib.contextmanager
def backend(name: str):
    """``with minicnn.backend("numpy"): ...`` runs the block on that backend (this thread only)."""
    mod = load(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(mod)
    try:
        yield mod
    finally:
        stack.pop()


def to_numpy(a):
    """Bring an array from any backend back to a numpy array (no copy for numpy input)."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # cupy.ndarray
    if callable(get):
        return get()
    return np.asarray(a)
