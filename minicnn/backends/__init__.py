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

A backend need not live in this package. ``register(name, module)`` adds an out-of-tree one: any
module (or object) with ``NAME`` and ``OPS`` whose table ``make_backend`` accepts; from then on
``name`` selects it like a built-in one (``minicnn.set_backend(name)``, ``with minicnn.backend(name):``)::

    import minicnn as mc
    import my_backend                      # NAME = "mine", OPS = {"conv2d_forward": ..., ...}
    mc.backends.register("mine", my_backend)
    with mc.backend("mine"):
        logits = model(x)

The built-in names cannot be taken; registering a name again replaces that backend, and
``unregister(name)`` removes it. The tests build a fake device backend this way
(``tests/test_device_agnostic.py``).
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
_registered: dict = {}  # name -> Backend, added by register()
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


def register(name: str, module) -> Backend:
    """Make the out-of-tree backend ``module`` (with ``NAME`` and ``OPS``) selectable as ``name``.

    The table is checked by :func:`make_backend` now (and the module's ``unusable_reason()``, if it
    has one, asked), so an incomplete or unusable backend is refused here rather than at first use.
    Returns the loaded :class:`Backend`. A built-in name cannot be taken (ValueError); a name
    registered before is replaced.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backends.register: name must be a non-empty str, got {name!r}")
    if name in AVAILABLE:
        raise ValueError(f"backends.register: {name!r} is a built-in backend; register under another name")
    usable = getattr(module, "unusable_reason", None)
    why = usable() if callable(usable) else None
    if why:
        raise RuntimeError(f"backend {name!r} is not usable here: {why}")
    be = make_backend(name, module)
    _registered[name] = be
    _loaded[name] = be
    return be


def unregister(name: str) -> None:
    """Remove a backend added by :func:`register` (KeyError if there is none by that name)."""
    if name not in _registered:
        raise KeyError(f"backends.unregister: no registered backend {name!r}")
    del _registered[name]
    _loaded.pop(name, None)


def names() -> tuple:
    """Every selectable name: the built-in ones, then the registered ones."""
    return AVAILABLE + tuple(_registered)


def load(name: str) -> Backend:
    """Import backend ``name`` and check that it fills the whole table (see ``minicnn.ops``)."""
    if name in _registered:
        return _registered[name]
    if name not in AVAILABLE:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(names())}")
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
    """Make ``name`` the process-wide backend (``numpy``, ``numba``, ``cupy`` or a registered one)."""
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


def owner(a):
    """The loaded backend whose own array type ``a`` is (its ``is_native`` says so), or None.

    Registered backends are asked first: an out-of-tree array type may subclass ``np.ndarray``,
    which the host backends accept too, and then the registered backend is the one that owns it.
    An array no loaded backend claims that is not numpy's (a GPU array made before its backend
    ran anything) is offered to the built-in backends not loaded yet, each loaded if it can be.
    """
    import numpy as np

    ordered = list(_registered.values()) + [b for n, b in list(_loaded.items()) if n not in _registered]
    for be in ordered:
        if be.is_native(a):
            return be
    if hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, (np.ndarray, np.generic)):
        for name in AVAILABLE:
            if name in _loaded:
                continue
            try:
                be = load(name)
            except RuntimeError:  # not usable here, or not written yet
                continue
            if be.is_native(a):
                return be
    return None


def to_numpy(a):
    """Bring an array from any backend back to a numpy array (no copy for numpy input).

    Asks each loaded backend whose array this is, so nothing here knows a device library. Only
    a plain ``np.ndarray`` is returned as it is: a backend's array type may subclass it."""
    import numpy as np

    if type(a) is np.ndarray:
        return a
    be = owner(a)
    return np.asarray(a) if be is None else be.to_numpy(a)


def move(a, be: Backend):
    """``a`` (an array of any loaded backend, or a host array) in the memory of backend ``be``.

    What moves a module's parameters and buffers when it is called under another backend; input
    arrays are not moved this way (``asarray`` refuses another device's array)."""
    if be.is_native(a):
        return a
    return be.asarray(to_numpy(a))
