"""Backend conformance: every op of the table on every backend against the numpy reference.

The cases live in ``tests/conformance/cases_*.py`` (see ``tests/conformance/__init__.py`` for the
format). Per hypothesis example the runner draws the arguments once, computes the reference once,
then calls the backend's op in each of its kernel forms (:func:`kernel_forms`) and checks, for
every form:

- every output against the reference, at the case's tolerance (or with the case's ``compare``);
- that the op left its input arrays as they were (ops are functions: the reference keeps its
  own copy, the backend gets the very arrays the case drew, non-contiguous views included);
- that no output shares memory with an input (every op returns new arrays; ``out=`` excepted),
  and that a later call did not change an earlier call's result (no result is a workspace).

A backend that is declared but does not load is a failure here, not a skip, except CuPy where
CuPy or a CUDA device is absent (``conftest.backend_params``). The cupy backend's kernels also
run here on the host CUDA emulator (``cupy-emu``), skipped only where there is no C++ compiler.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import pkgutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import backends
from minicnn.ops import OP_NAMES

import conformance
from conftest import EMULATED, backend_params, use_emulator

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
    ids = [c.id for c in CASES]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    assert not twice, f"several cases share an id (give them distinct names): {', '.join(twice)}"


def kernel_forms(backend_name):
    """``(label, context)`` pairs: the ways a backend can run one op, all checked on every example.

    numba compiles each kernel twice (``minicnn.backends.numba._threads``): a serial twin the rule
    picks for calls below ``SERIAL_MAX_WORK`` and the ``parallel=True`` kernel for larger ones.
    Most drawn shapes are small, so the rule alone would leave the parallel kernels nearly
    untested; each example runs once with every call forced serial and once with every call
    forced parallel, while the draw and the reference are done once for both. Other backends
    have one form.
    """
    if backend_name == "numba":
        from minicnn.backends.numba import _threads

        return (("serial kernels", lambda: _threads.serial_below(2**62)),
                ("parallel kernels", lambda: _threads.serial_below(0)))
    return (("", contextlib.nullcontext),)


def _arrays(args, kwargs):
    """``(where, array)`` for every numpy array among the inputs, ``out=`` left aside."""
    found = []

    def walk(v, where):
        if isinstance(v, np.ndarray):
            found.append((where, v))
        elif isinstance(v, (tuple, list)):
            for i, t in enumerate(v):
                walk(t, f"{where}[{i}]")

    for i, a in enumerate(args):
        walk(a, f"argument {i}")
    for k, v in kwargs.items():
        if k != "out":
            walk(v, f"argument {k}=")
    return found


def _generator_for(rng, be):
    """A random generator for backend ``be`` standing for the case's numpy Generator ``rng``.

    A backend that draws from a numpy Generator (its ``generator()`` is one) gets a copy in the
    same state as the one the reference gets, so it must draw the same numbers; another backend
    gets its own generator, seeded through ``minicnn.manual_seed`` from ``rng``.
    """
    if isinstance(be.generator(), np.random.Generator):
        return copy.deepcopy(rng)
    mc.manual_seed(int(copy.deepcopy(rng).integers(2**31)))
    return be.generator()


def _to_backend(v, be, key=None):
    """The case's argument ``v`` as backend ``be`` takes it: arrays through its ``asarray`` (a
    numpy backend keeps the very array, views included), an ``out=`` buffer copied first (each
    call writes its own), a numpy Generator as :func:`_generator_for` says."""
    if isinstance(v, np.ndarray):
        return be.asarray(v.copy() if key == "out" else v)
    if isinstance(v, np.random.Generator):
        return _generator_for(v, be)
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
    assert be.is_native(got), f"{what}: the backend returned a {type(got).__name__}, not its own array type"
    conformance.assert_close(be.to_numpy(got), np.asarray(ref), tol, what)


def _outputs(got):
    if isinstance(got, tuple):
        return [g for t in got for g in _outputs(t)]
    return [] if got is None else [got]


def _dtype_of(args):
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return a.dtype
    return np.float32


def _same(a, b) -> bool:
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def check_case(case, backend_name, args, kwargs):
    """Run ``case``'s op on ``args``/``kwargs`` on backend ``backend_name`` in each of its kernel
    forms and check it against the reference (see the module docstring); AssertionError if not."""
    be = backends.load(backend_name)
    inputs = _arrays(args, kwargs)
    before = [np.array(a, copy=True) for _, a in inputs]
    with np.errstate(all="ignore"):  # drawn NaNs and infinities are meant to meet in the reference
        ref = REF.OPS[case.op](*copy.deepcopy(args), **copy.deepcopy(kwargs))
    tol = conformance.tolerance(case, _dtype_of(args))
    results = []
    for label, form in kernel_forms(backend_name):
        b_args = [_to_backend(a, be) for a in args]
        b_kwargs = {k: _to_backend(v, be, k) for k, v in kwargs.items()}
        with mc.backend(backend_name), form():
            got = be.OPS[case.op](*b_args, **b_kwargs)
        what = f"{case.id} on {backend_name}" + (f", {label}" if label else "")
        for (where, a), old in zip(inputs, before):
            assert _same(a, old), f"{what}: the op modified its input ({where})"
        out = b_kwargs.get("out")
        for g in _outputs(got):
            if isinstance(g, np.ndarray) and g is not out:
                for where, a in inputs:
                    assert not np.may_share_memory(g, a), f"{what}: an output shares memory with {where}"
        results.append((what, got))
    # compared once every form has run: a later call must not have changed an earlier result
    for what, got in results:
        if case.compare is not None:
            try:
                case.compare(ref, got, args, kwargs, be)
            except AssertionError as e:
                raise AssertionError(f"{what}: {e}") from None
        else:
            _compare(ref, got, tol, what, be)


@pytest.mark.parametrize("backend_name", backend_params([n for n in backends.AVAILABLE if n != "numpy"]))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@given(data=st.data())
def test_op_matches_the_reference(backend_name, case, data):
    args, kwargs = case.draw(data)
    check_case(case, backend_name, tuple(args), dict(kwargs))


# the cupy backend's kernels on the host CUDA emulator: as many examples as the CPU backends get,
# up to 25 (every CUDA thread is a coroutine: a long hunt of the "thorough" profile stays short)
EMULATED_EXAMPLES = min(settings().max_examples, 25)


@pytest.mark.parametrize("backend_name", backend_params([EMULATED]))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@settings(max_examples=EMULATED_EXAMPLES)
@given(data=st.data())
def test_op_matches_the_reference_emulated(backend_name, case, data):
    args, kwargs = case.draw(data)
    with use_emulator():
        check_case(case, backend_name, tuple(args), dict(kwargs))


# -- the runner catches what it is there to catch ------------------------------------------------


def _case(op_id):
    return next(c for c in CASES if c.id == op_id)


def _numpy_table_with(**replaced):
    """A module-like object: the numpy backend's table with some entries replaced."""
    import types

    table = {k: v for k, v in REF.module.OPS.items()}
    table.update(replaced)
    return types.SimpleNamespace(OPS=table)


@pytest.mark.parametrize("fault", ["off", "mutates", "aliases", "computes_unneeded", "not_native"])
def test_the_runner_fails_a_faulty_backend(fault, monkeypatch):
    """A backend with one planted fault, run through ``check_case`` in numba's place, is refused:
    a result off by more than the tolerance, an op that writes into its input, one that returns
    its input, a gradient computed though its need_ flag was False, a result of a foreign type."""
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    relu = REF.OPS["relu_forward"]
    lin = REF.OPS["linear_backward"]
    faults = {
        "off": {"relu_forward": lambda a: relu(a) + np.float32(1e-3)},
        "mutates": {"relu_forward": lambda a: np.maximum(a, 0, out=a)},
        "aliases": {"relu_forward": lambda a: a.reshape(a.shape)},
        "computes_unneeded": {"linear_backward": lambda dy, x, w, nx, nw, nb: lin(dy, x, w, True, True, True)},
        "not_native": {"relu_forward": lambda a: relu(a).tolist()},
    }
    fake = backends.make_backend("numba", _numpy_table_with(**faults[fault]))
    monkeypatch.setitem(backends._loaded, "numba", fake)
    if fault == "computes_unneeded":
        rng = np.random.default_rng(0)
        case = _case("linear_backward")
        args = (rng.standard_normal((3, 4)), rng.standard_normal((3, 5)), rng.standard_normal((4, 5)),
                False, True, True)
    else:
        case, args = _case("relu_forward"), (x,)
    check_case(case, "numpy", args, {})  # the same call against the reference itself passes
    with pytest.raises(AssertionError):
        check_case(case, "numba", args, {})
