"""Shared test setup: the hypothesis profile and the list of backends the tests run on.

Every backend named in ``minicnn.backends.AVAILABLE`` becomes a test parameter. A backend that
should load here and does not is a failing test, never a skip: the tests that take it call
``backends.load`` (or ``mc.backend``) and report the error. The one exception is ``cupy`` where
CuPy is truly absent: CuPy does not import, or it finds no usable CUDA driver or device; those
params are skipped with the reason (see :func:`cupy_absent`).
"""
from __future__ import annotations

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


def backend_params(names=None):
    """``pytest.param`` per backend; cupy params are marked ``gpu``, and skipped (with the reason)
    only where :func:`cupy_absent` says CuPy cannot run here.

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
