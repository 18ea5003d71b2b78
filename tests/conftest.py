"""Shared test setup: the hypothesis profile and the list of backends the tests run on.

Every backend named in ``minicnn.backends.AVAILABLE`` becomes a test parameter; one that cannot
load here (cupy without a GPU, a backend that does not exist yet) is reported as skipped with the
reason, so a new backend is covered by the same tests the day it loads.
"""
from __future__ import annotations

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


def _why_unusable(name: str) -> str | None:
    """None when backend ``name`` loads and fills the op table, else the reason it does not."""
    try:
        backends.load(name)
    except Exception as e:  # noqa: BLE001 - any failure to load means "not usable here"
        return f"{type(e).__name__}: {e}"
    return None


def backend_params(names=None):
    """``pytest.param`` per backend, marked skip (with the reason) where it does not load.

    ``names`` defaults to every backend in ``minicnn.backends.AVAILABLE``; cupy params are
    also marked ``gpu``.
    """
    out = []
    for name in names or backends.AVAILABLE:
        marks = [pytest.mark.gpu] if name == "cupy" else []
        reason = _why_unusable(name)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=f"backend {name!r} not usable here ({reason})"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


BACKENDS = backend_params()


@pytest.fixture(params=BACKENDS, scope="session")
def backend_name(request):
    """Each usable backend's name in turn; tests enter it with ``with mc.backend(backend_name):``.

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
