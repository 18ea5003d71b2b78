"""Backends: one op table per folder, selected at run time.

A backend is a folder whose module exposes ``NAME`` and ``OPS``, one dict that fills the table
``minicnn.ops`` declares: every op (``ops.OP_NAMES``), the array functions (``ops.ARRAY_FUNCS``:
``asarray``, ``is_native``, ``to_numpy``, ``empty``) and any of the optional entries
(``ops.OPTIONAL``), whose defaults live in ``_defaults.py``. ``load`` checks the table and returns
a :class:`Backend`: the name and the complete table, each entry also readable as an attribute
(``be.asarray``, ``be.OPS["relu_forward"]``). ``numpy`` is the readable reference, ``numba`` the
fast CPU path (default), ``cupy`` the GPU path. Adding a backend means adding a folder that fills
the same table; nothing above this package changes.

Selection, innermost wins: ``with minicnn.backend(name):`` (per thread), ``minicnn.set_backend(name)``,
the ``MINICNN_BACKEND`` environment variable, then the default ``numba``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading

from ..ops import ARRAY_FUNCS, OP_NAMES, OPTIONAL
from ._defaults import DEFAULTS

AVAILABLE = ("numpy", "numba", "cupy")
DEFAULT = "numba"

_loaded: dict = {}
_global_name: str | None = None
_local = threading.local()


class Backend:
    """A loaded backend: ``NAME``, ``OPS`` (the complete table, defaults filled in) and every
    table entry as an attribute. ``module`` is the backend's package, for its own tests."""

    def __init__(self, name: str, module, table: dict):
        self.NAME = name
        self.module = module
        self.OPS = table

    def __getattr__(self, item):
        try:
            return self.__dict__["OPS"][item]
        except KeyError:
            raise AttributeError(f"backend {self.__dict__.get('NAME')!r} has no table entry {item!r}") from None

    def __repr__(self):
        return f"<minicnn backend {self.NAME!r}>"


def make_backend(name: str, module) -> Backend:
    """Check ``module.OPS`` against the declared table and fill the optional entries' defaults."""
    table = getattr(module, "OPS", None)
    if not isinstance(table, dict):
        raise RuntimeError(f"backend {name!r} is not implemented in this version (no OPS table)")
    missing = [op for op in OP_NAMES + ARRAY_FUNCS if op not in table]
    if missing:
        raise RuntimeError(f"backend {name!r} lacks table entries: {', '.join(missing)}")
    unknown = sorted(set(table) - set(OP_NAMES) - set(ARRAY_FUNCS) - set(OPTIONAL))
    if unknown:
        raise RuntimeError(f"backend {name!r} has table entries minicnn.ops does not declare: {', '.join(unknown)}")
    full = dict(DEFAULTS)
    full.update(table)
    return Backend(name, module, full)


def load(name: str) -> Backend:
    """Import backend ``name`` and check that it fills the whole table (see ``minicnn.ops``)."""
    if name not in AVAILABLE:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(AVAILABLE)}")
    if name not in _loaded:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:  # numba or CuPy not installed
            raise RuntimeError(f"backend {name!r} is not usable here: {e}") from e
        usable = getattr(mod, "unusable_reason", None)
        why = usable() if callable(usable) else None
        if why:
            raise RuntimeError(f"backend {name!r} is not usable here: {why}")
        _loaded[name] = make_backend(name, mod)
    return _loaded[name]


def refuse_device_array(a, backend_name: str) -> None:
    """Raise TypeError for an array that lives on a GPU (it has ``__cuda_array_interface__``):
    a CPU backend does not copy device arrays to the host behind the caller's back."""
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(
            f"backend {backend_name!r} computes on host memory but got a {type(a).__module__}.{type(a).__name__} "
            "on a GPU: bring it to the host with minicnn.to_numpy(x), or select the 'cupy' backend"
        )


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
    """Bring an array from any backend back to a numpy array (no copy for numpy input).

    Asks each loaded backend whose array this is, so nothing here knows a device library."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return a
    for be in list(_loaded.values()):
        if be.is_native(a):
            return be.to_numpy(a)
    return np.asarray(a)


def move(a, be: Backend):
    """``a`` (an array of any loaded backend, or a host array) in the memory of backend ``be``.

    What moves a module's parameters and buffers when it is called under another backend; input
    arrays are not moved this way (``asarray`` refuses another device's array)."""
    if be.is_native(a):
        return a
    return be.asarray(to_numpy(a))
