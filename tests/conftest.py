"""Shared test setup: the hypothesis profile and the list of backends the tests run on.

Every backend named in ``minicnn.backends.AVAILABLE`` becomes a test parameter. A backend that
should load here and does not is a failing test, never a skip: the tests that take it call
``backends.load`` (or ``mc.backend``) and report the error. The one exception is ``cupy`` where
CuPy is truly absent: CuPy does not import, or it finds no usable CUDA driver or device; those
params are skipped with the reason (see :func:`cupy_absent`). ``cupy-emu``, the cupy backend's
kernels on the host CUDA emulator, is a param only where a test names it (:func:`use_emulator`).
"""
from __future__ import annotations

import contextlib
import functools
import os

import pytest
from hypothesis import HealthCheck, settings

import minicnn as mc
from minicnn import backends

# derandomized in CI so a red build replays exactly; locally each run explores new examples
settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# a long hunt for counterexamples, e.g. after touching a kernel: HYPOTHESIS_PROFILE=thorough pytest ...
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@functools.lru_cache(maxsize=None)
def cupy_absent() -> str | None:
    """Why CuPy cannot run here (not importable, or no usable CUDA driver or device), else None.

    Only these two reasons excuse the ``cupy`` backend from the tests; any other failure to load
    it (a kernel that does not compile, a missing table entry) fails the tests that use it.
    """
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - ImportError, or CUDA libraries CuPy cannot open
        return f"CuPy is not importable: {type(e).__name__}: {e}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError: no driver, driver too old, no device
        return f"no usable CUDA driver or device: {type(e).__name__}: {e}"
    if count < 1:
        return "no usable CUDA driver or device: CUDA reports 0 devices"
    return None


# the cupy backend on the host CUDA emulator (minicnn/backends/cupy/_emulator.py): its kernels,
# compiled by the C++ compiler, checked against the reference without a GPU
EMULATED = "cupy-emu"


@functools.lru_cache(maxsize=None)
def emulator_absent() -> str | None:
    """Why the CUDA emulator cannot run here (no C++ compiler), else None. Only this excuses
    the ``cupy-emu`` params; a cupy package that does not import fails them instead."""
    try:
        from minicnn.backends.cupy._emulator import emulator_absent as absent
    except Exception:  # noqa: BLE001 - a broken package is the tests' failure, reported by use_emulator
        return None
    return absent()


def _lacking(op):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"the cupy backend has no op {op!r} yet")

    missing.__name__ = op
    return missing


@functools.lru_cache(maxsize=None)
def _emulated_module():
    from minicnn.backends.cupy import _emulator
    from minicnn.ops import OP_NAMES

    mod = _emulator.emulated_module()
    for op in OP_NAMES:
        mod.OPS.setdefault(op, _lacking(op))
    return mod


@contextlib.contextmanager
def use_emulator():
    """``with use_emulator():`` the ``cupy-emu`` backend (the cupy backend's table on the
    emulator) is registered, so ``mc.backend("cupy-emu")`` selects it; raises what prevents it.

    Registered only inside the block: a registered backend that computes on numpy arrays would
    claim every host array (``backends.owner``) in the tests that run after. Registered even
    while an op of the table is missing: that op's calls raise NotImplementedError, so each of its
    cases fails and the others run (``tests/test_cupy_emulator.py`` fails until the table is complete).
    """
    if EMULATED in backends.names():
        yield
        return
    backends.register(EMULATED, _emulated_module())
    try:
        yield
    finally:
        backends.unregister(EMULATED)


def backend_params(names=None):
    """``pytest.param`` per backend; cupy params are marked ``gpu``, and skipped (with the reason)
    only where :func:`cupy_absent` says CuPy cannot run here; ``cupy-emu`` params (only when
    named: the emulator is too slow for every model test) are skipped only where
    :func:`emulator_absent` says so, and the tests that take one run inside :func:`use_emulator`.

    ``names`` defaults to every backend in ``minicnn.backends.AVAILABLE``. Nothing here loads a
    backend: a test that receives a name which does not load fails when it selects it.
    """
    out = []
    for name in names or backends.AVAILABLE:
        marks = []
        if name == "cupy":
            marks.append(pytest.mark.gpu)
            reason = cupy_absent()
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"backend 'cupy' not usable here ({reason})"))
        if name == EMULATED:
            reason = emulator_absent()
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"backend {EMULATED!r} not usable here ({reason})"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


BACKENDS = backend_params()


@pytest.fixture(params=BACKENDS, scope="session")
def backend_name(request):
    """Each backend's name in turn (see :func:`backend_params`); tests enter it with
    ``with mc.backend(backend_name):``, which fails for a backend that should load and does not.

    Session-scoped (and only a name, no state) so hypothesis tests may use it.
    """
    return request.param


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts with the library's RNG at a fixed seed; a ``set_backend`` it makes is undone."""
    prev = backends._global_name
    mc.manual_seed(0)
    yield
    backends._global_name = prev
