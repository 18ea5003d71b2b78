"""Conformance cases: batch normalisation, train and eval, forward and backward (see ``__init__.py``).

Inputs are drawn around 0 or shifted by 3 (a mean that is not small beside the spread), with
any layout and the ``need_*`` flags; backward cases take the statistics the reference forward
computes. The backward sums two reductions over (N, H, W) before it writes dx, so its float32
tolerance is 4x the forward's. ``large_mean`` checks what a single-pass statistics kernel can
get wrong and the reference cannot show: a mean of 1000 with a spread of 0.01, where the sums of
x and x^2 in float32 cancel to nothing; it is judged against the exact float64 statistics.
``large`` crosses numba's ``SERIAL_MAX_WORK``.
"""
from hypothesis import assume
from hypothesis import strategies as st
import numpy as np

from minicnn import backends

from . import F32, F64, Case, array, dtypes

REF = backends.load("numpy").OPS
EPS = st.sampled_from([1e-5, 1e-3, 0.1])


def _shape(data, large):
    if large:
        return (data.draw(st.integers(6, 8)), 16, data.draw(st.integers(18, 22)), data.draw(st.integers(18, 22)))
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)),
                      label="shape")
    assume(shape[0] * shape[2] * shape[3] > 1)  # one value per channel has no batch variance
    return shape


def _inputs(data, large=False):
    dt = data.draw(dtypes())
    shape = _shape(data, large)
    c = shape[1]
    offset = data.draw(st.sampled_from([0.0, 3.0]), label="offset")
    x = array(data, shape, dt, low=offset - 2, high=offset + 2)
    gamma, beta = array(data, (c,), dt, 0.5, 1.5), array(data, (c,), dt)
    return x, gamma, beta, data.draw(EPS, label="eps")


def _train(large):
    def draw(data):
        x, gamma, beta, eps = _inputs(data, large)
        return (x, gamma, beta, eps), {}
    return draw


def _backward_train(large):
    def draw(data):
        x, gamma, _, eps = _inputs(data, large)
        _, mean, var = REF["batchnorm2d_forward_train"](x, gamma, np.zeros_like(gamma), eps)
        need = data.draw(st.tuples(st.booleans(), st.booleans()), label="need dx, dparams")
        return (array(data, x.shape, x.dtype), x, gamma, mean, var, eps, *need), {}
    return draw


def _running(data, x):
    c = x.shape[1]
    return array(data, (c,), x.dtype), array(data, (c,), x.dtype, 0.5, 1.5)


def _eval(data):
    x, gamma, beta, eps = _inputs(data)
    rm, rv = _running(data, x)
    return (x, gamma, beta, rm, rv, eps), {}


def _backward_eval(data):
    x, gamma, _, eps = _inputs(data)
    rm, rv = _running(data, x)
    need = data.draw(st.tuples(st.booleans(), st.booleans()), label="need dx, dparams")
    return (array(data, x.shape, x.dtype), x, gamma, rm, rv, eps, *need), {}


def _large_mean(data):
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    x64 = np.random.default_rng(seed).standard_normal((4, 3, 16, 16)) * 0.01 + 1000.0
    layout = data.draw(st.sampled_from(["c", "fortran"]), label="layout")
    x = x64.astype(np.float32, order="F" if layout == "fortran" else "C")
    return (x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-5), {}


def _against_float64(ref, got, args, kwargs, be):
    """mean to float32 rounding and var to 1e-4 relative of the exact float64 statistics; y to a
    few float32 ulps of x * (1/std), the size of the terms an affine y = x * scale + shift adds."""
    x, gamma, beta, eps = args
    y, mean, var = (np.asarray(be.to_numpy(g)) for g in got)
    x64 = x.astype(np.float64)
    exact_mean, exact_var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    assert mean.dtype == var.dtype == y.dtype == np.float32
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-7, err_msg="mean")
    np.testing.assert_allclose(var, exact_var, rtol=1e-4, err_msg="var: the statistics cancelled")
    # y = x * scale + shift in float32 rounds terms of |x| / std = 1e5 (ulp 0.008); a variance
    # computed by cancelling sums would be off by orders of magnitude
    rstd = 1 / np.sqrt(exact_var + eps)
    exact_y = (x64 - exact_mean.reshape(1, -1, 1, 1)) * rstd.reshape(1, -1, 1, 1)
    atol = 4 * float(np.spacing(np.float32(np.abs(x64).max() * rstd.max())))
    np.testing.assert_allclose(y, exact_y, rtol=0, atol=atol, err_msg="y")


CASES = [
    Case("batchnorm2d_forward_train", _train(False)),
    Case("batchnorm2d_forward_train", _train(True), name="large"),
    Case("batchnorm2d_forward_train", _large_mean, name="large_mean", compare=_against_float64),
    Case("batchnorm2d_backward_train", _backward_train(False), tol32=4 * F32, tol64=4 * F64),
    Case("batchnorm2d_backward_train", _backward_train(True), name="large", tol32=4 * F32, tol64=4 * F64),
    Case("batchnorm2d_forward_eval", _eval),
    Case("batchnorm2d_backward_eval", _backward_eval, tol32=4 * F32, tol64=4 * F64),
]
