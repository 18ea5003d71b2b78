"""The backend-conformance cases: every entry of the op table, forward and backward, drawn at
random shapes and checked on every usable backend against the numpy reference.

A case file ``cases_<family>.py`` beside this one exports ``CASES``, a list of :class:`Case`.
``tests/test_conformance.py`` runs each case on every backend other than numpy and fails when an
op of ``minicnn.ops.OP_NAMES`` has no case. A case's ``draw(data)`` receives hypothesis's
``data`` object and returns ``(args, kwargs)`` built from numpy arrays and plain values; the
runner calls the numpy reference on a copy, moves every array argument into the backend under
test with its ``asarray`` (non-contiguous views stay views where the backend takes them), calls
the backend's op and compares every returned array (tuples element by element, ``None`` must
match ``None``) with :func:`assert_close` at the case's tolerance. A case whose outputs cannot be
equal on every backend (random draws) gives ``compare(ref, got, args, kwargs, backend)`` instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import strategies as st

# float32 agreement, relative to the output's largest magnitude (at least 1): both sides round
# each product-sum in float32 in different orders; Winograd F(4x4) amplifies rounding (see
# tests/test_numba_backend.py), so conv cases that may take it use F32_WINOGRAD
F32 = 1e-5
F32_WINOGRAD = 2e-4
F64 = 1e-10


@dataclass
class Case:
    """One op, one way of drawing its arguments."""

    op: str
    draw: Callable  # data -> (args, kwargs)
    name: str = ""  # tells several cases of one op apart in test ids
    tol32: float = F32
    tol64: float = F64
    compare: Callable | None = None  # (ref, got, args, kwargs, backend) -> None, replaces the default check
    marks: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.op}[{self.name}]" if self.name else self.op


def dtypes():
    return st.sampled_from([np.float32, np.float64])


def array(data, shape, dtype=np.float32, low=-2.0, high=2.0, layout=None):
    """A random array of ``shape``; ``layout`` None draws one of: contiguous, a strided view (every
    other element of a larger array along the last axis), a transposed copy viewed back (Fortran
    order). The values are the same whatever the layout."""
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    a = np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)
    layout = layout or data.draw(st.sampled_from(["c", "strided", "fortran"]), label="layout")
    if layout == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    return a


def tolerance(case: Case, dtype) -> float:
    return case.tol64 if np.dtype(dtype) == np.float64 else case.tol32


def assert_close(got, want, tol, what=""):
    """max |got - want| <= tol * max(1, max |want|); shapes and dtypes equal; NaN and inf where the
    reference has them."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if got.size == 0:
        return
    if want.dtype.kind in "iub":
        assert np.array_equal(got, want), f"{what}: integer outputs differ"
        return
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaNs in different places"
    inf = ~finite & ~np.isnan(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
    err = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]))) if finite.any() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"
