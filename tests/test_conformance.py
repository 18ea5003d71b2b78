"""Backend conformance: every op of the table on every usable backend against the numpy reference.

The cases live in ``tests/conformance/cases_*.py`` (see ``tests/conformance/__init__.py`` for the
format). A backend that is declared but does not load is a failure here, not a skip, except CuPy
where CuPy or a device is absent (``conftest.backend_params``).
"""
from __future__ import annotations

import copy
import importlib
import pkgutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import backends
from minicnn.ops import OP_NAMES

import conformance
from conftest import backend_params

CASES = []
for _info in sorted(pkgutil.iter_modules(conformance.__path__), key=lambda i: i.name):
    if _info.name.startswith("cases_"):
        CASES += importlib.import_module(f"{conformance.__name__}.{_info.name}").CASES

REF = backends.load("numpy")


def test_every_op_has_a_case():
    covered = {c.op for c in CASES}
    missing = [op for op in OP_NAMES if op not in covered]
    assert not missing, f"ops without a conformance case: {', '.join(missing)}"
    unknown = sorted(covered - set(OP_NAMES))
    assert not unknown, f"conformance cases for ops the table does not declare: {', '.join(unknown)}"


def _to_backend(v, be):
    if isinstance(v, np.ndarray):
        return be.asarray(v)
    if isinstance(v, tuple):
        return tuple(_to_backend(t, be) for t in v)
    if isinstance(v, list):
        return [_to_backend(t, be) for t in v]
    return v


def _compare(ref, got, tol, what, be):
    if ref is None:
        assert got is None, f"{what}: the reference returns None, the backend {type(got).__name__}"
        return
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref), f"{what}: expected a {len(ref)}-tuple"
        for i, (r, g) in enumerate(zip(ref, got)):
            _compare(r, g, tol, f"{what}[{i}]", be)
        return
    conformance.assert_close(be.to_numpy(got), np.asarray(ref), tol, what)


def _dtype_of(args):
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return a.dtype
    return np.float32


@pytest.mark.parametrize("backend_name", backend_params([n for n in backends.AVAILABLE if n != "numpy"]))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@given(data=st.data())
def test_op_matches_the_reference(backend_name, case, data):
    be = backends.load(backend_name)
    args, kwargs = case.draw(data)
    ref = REF.OPS[case.op](*copy.deepcopy(args), **copy.deepcopy(kwargs))
    with mc.backend(backend_name):
        got = be.OPS[case.op](*_to_backend(args, be), **_to_backend(kwargs, be))
    if case.compare is not None:
        case.compare(ref, got, args, kwargs, be)
    else:
        _compare(ref, got, conformance.tolerance(case, _dtype_of(args)), case.id, be)
