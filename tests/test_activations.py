"""The activation and softmax layers: PyTorch parity (committed fixtures, and live when torch
imports), gradient checks, PyTorch's derivatives at the kinks, and PyTorch's argument errors.

Fixtures: ``tests/fixtures/activations.npz``, written by ``tests/make_activation_fixtures.py``.
"""
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import nn
from minicnn.nn.module import forward_pass
from gradcheck import check_layer
from make_activation_fixtures import CASES, FIXTURE, load_fixtures, make_arrays, run_minicnn, run_torch
from make_layer_fixtures import compare

FIXTURES = load_fixtures()


# -- PyTorch's stored answers --------------------------------------------------------------------------

def test_fixture_file_matches_case_list():
    """A case edited or added in make_activation_fixtures.py without regenerating the file fails here."""
    assert sorted(FIXTURES) == sorted(CASES)
    for name, (cfg, _, _) in FIXTURES.items():
        assert cfg == json.loads(json.dumps(CASES[name], sort_keys=True)), name
    assert FIXTURE.stat().st_size < 512 * 1024


def test_fixtures_cover_every_layer():
    layers = {cfg["layer"] for cfg, _, _ in FIXTURES.values()}
    assert layers == {"LeakyReLU", "ELU", "SELU", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "Softplus",
                      "Softsign", "PReLU", "Softmax", "LogSoftmax", "Softmin"}


@pytest.mark.parametrize("case", sorted(FIXTURES))
def test_case_matches_torch(backend_name, case):
    cfg, inputs, expected = FIXTURES[case]
    got = run_minicnn(cfg, inputs, backend=backend_name)
    compare(got, expected, cfg["dtype"], f"{case} on {backend_name}")


# -- live parity with PyTorch on random layers, shapes and values ---------------------------------------

@st.composite
def layer_cfgs(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    dtype = draw(st.sampled_from(["float32", "float32", "float64"]))
    real = st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))
    layer = draw(st.sampled_from(["LeakyReLU", "ELU", "SELU", "GELU", "SiLU", "Hardswish", "Hardsigmoid",
                                  "Softplus", "Softsign", "PReLU", "Softmax", "LogSoftmax", "Softmin"]))
    args = {}
    if layer == "LeakyReLU":
        args["negative_slope"] = draw(real)
    elif layer == "ELU":
        args["alpha"] = draw(real)
    elif layer == "GELU":
        args["approximate"] = draw(st.sampled_from(["none", "tanh"]))
    elif layer == "Softplus":
        args["beta"] = draw(st.sampled_from([1.0, 0.5, 2.0, -1.0]))
        args["threshold"] = draw(st.sampled_from([20.0, 1.0, 0.0, -2.0]))
    elif layer == "PReLU":
        if len(shape) >= 2 and draw(st.booleans()):
            args["num_parameters"] = shape[1]
        args["init"] = draw(real)
    elif layer in ("Softmax", "LogSoftmax", "Softmin"):
        args["dim"] = draw(st.integers(-len(shape), len(shape) - 1))
    return {"layer": layer, "args": args, "x_shape": shape, "dtype": dtype}


@pytest.mark.torch
@given(cfg=layer_cfgs(), seed=st.integers(0, 2**31 - 1))
def test_layer_matches_live_torch(backend_name, cfg, seed):
    pytest.importorskip("torch")
    arrays = make_arrays(cfg, np.random.default_rng(seed))
    got, want = run_minicnn(cfg, arrays, backend=backend_name), run_torch(cfg, arrays)
    if cfg["layer"] == "Hardsigmoid" and cfg["dtype"] == "float64":
        # PyTorch's hardsigmoid backward multiplies by the float constant 1.0f / 6.0f in every
        # dtype, so its float64 gradient is off by float32 rounding (2^-25 relative); ours is dy / 6
        np.testing.assert_allclose(got.pop("dx"), want.pop("dx"), rtol=1e-7, atol=0)
    compare(got, want, cfg["dtype"], f"{cfg} on {backend_name}")


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4), (2, 3, 2, 2)])
@pytest.mark.parametrize("layer", ["Softmax", "LogSoftmax", "Softmin"])
def test_implicit_dim_is_torchs(layer, shape):
    """dim=None: PyTorch's legacy choice (0 for 0-, 1- and 3-d input, else 1) and its warning."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with pytest.warns(UserWarning, match="Implicit dimension choice") as ours:
        y = getattr(nn, layer)()(x)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        want = getattr(torch.nn, layer)()(torch.tensor(x)).numpy()
    assert str(ours[0].message) == str(theirs[0].message)
    np.testing.assert_allclose(mc.to_numpy(y), want, rtol=1e-6, atol=1e-6)


# -- PyTorch's derivatives at the kinks, written down ------------------------------------------------------

@pytest.mark.parametrize("layer, x, dydx", [
    (nn.LeakyReLU(0.2), [-1.0, 0.0, 1.0], [0.2, 0.2, 1.0]),
    (nn.ELU(alpha=0.5), [0.0, 1.0], [0.5, 1.0]),
    (nn.SELU(), [0.0], [1.0507009873554804 * 1.6732632423543772]),
    (nn.Hardswish(), [-4.0, -3.0, 0.0, 3.0, 4.0], [0.0, 0.0, 0.5, 1.0, 1.0]),
    (nn.Hardsigmoid(), [-4.0, -3.0, 0.0, 3.0, 4.0], [0.0, 0.0, 1 / 6, 0.0, 0.0]),
    (nn.PReLU(init=0.375), [-1.0, 0.0, 1.0], [0.375, 0.375, 1.0]),
    (nn.Softplus(beta=1.0, threshold=-1.0), [0.0, -1.0], [1.0, 1.0 / (1.0 + np.e)]),
    (nn.Softsign(), [0.0, 1.0], [1.0, 0.25]),
])
def test_derivative_at_kinks(backend_name, layer, x, dydx):
    with mc.backend(backend_name):
        layer.to(np.float64)
        layer(np.array(x))
        got = mc.to_numpy(layer.backward(np.ones(len(x))))
    np.testing.assert_allclose(got, dydx, rtol=1e-12, atol=1e-15)


def test_softplus_beta_zero_is_torchs(backend_name):
    """PyTorch accepts beta=0: log(2)/0 = inf forward, 1/2 backward; threshold compares beta*x = 0."""
    with mc.backend(backend_name):
        m = nn.Softplus(beta=0.0)
        y = m(np.array([-1.0, 0.0, 2.0], np.float32))
        dx = m.backward(np.ones(3, np.float32))
    assert np.all(np.isposinf(mc.to_numpy(y)))
    np.testing.assert_array_equal(mc.to_numpy(dx), [0.5, 0.5, 0.5])


# -- gradient checks -------------------------------------------------------------------------------------

def _away_from(x, kinks, gap=0.05):
    """x with every entry moved at least ``gap`` away from each kink (finite differences straddle none)."""
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] >= k, gap, -gap) * 2
    return x


GRADCHECK = [
    (lambda: nn.LeakyReLU(0.1), (3, 4), [0.0]),
    (lambda: nn.LeakyReLU(-0.3), (3, 4), [0.0]),
    (lambda: nn.ELU(alpha=1.3), (2, 3, 2), [0.0]),
    (lambda: nn.SELU(), (3, 4), [0.0]),
    (lambda: nn.GELU(), (2, 3, 2), []),
    (lambda: nn.GELU("tanh"), (2, 3, 2), []),
    (lambda: nn.SiLU(), (3, 4), []),
    (lambda: nn.Hardswish(), (4, 5), [-3.0, 3.0]),
    (lambda: nn.Hardsigmoid(), (4, 5), [-3.0, 3.0]),
    (lambda: nn.Softplus(beta=2.0, threshold=3.0), (4, 5), [1.5]),
    (lambda: nn.Softsign(), (3, 4), [0.0]),
    (lambda: nn.PReLU(), (2, 3, 2, 2), [0.0]),
    (lambda: nn.PReLU(3, init=-0.2), (2, 3, 2, 2), [0.0]),
    (lambda: nn.Softmax(dim=1), (3, 4), []),
    (lambda: nn.Softmax(dim=-1), (2, 3, 4), []),
    (lambda: nn.LogSoftmax(dim=0), (3, 4), []),
    (lambda: nn.LogSoftmax(dim=2), (2, 3, 4), []),
    (lambda: nn.Softmin(dim=1), (2, 3, 2), []),
]


@pytest.mark.parametrize("make, shape, kinks", GRADCHECK, ids=lambda v: repr(v()) if callable(v) else None)
def test_gradcheck(backend_name, make, shape, kinks):
    x = _away_from(np.random.default_rng(3).standard_normal(shape) * 3.0, kinks)
    with mc.backend(backend_name):
        check_layer(make(), x)


# -- layers as modules -----------------------------------------------------------------------------------

def test_prelu_backward_params_and_frozen_weight(backend_name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4)).astype(np.float32)
    want = np.where(x > 0, 0, x * dy).sum(axis=(0, 2))
    with mc.backend(backend_name):
        m = nn.PReLU(3)
        m(x)
        assert m.backward_params(dy) is None
        np.testing.assert_allclose(mc.to_numpy(m.weight.grad), want, rtol=1e-5, atol=1e-6)
        m(x)
        m.backward(dy)  # gradients accumulate, as in PyTorch
        np.testing.assert_allclose(mc.to_numpy(m.weight.grad), 2 * want, rtol=1e-5, atol=1e-6)
        m.zero_grad()
        m.weight.requires_grad = False
        m(x)
        dx = m.backward(dy)
        assert m.weight.grad is None
        np.testing.assert_allclose(mc.to_numpy(dx), np.where(x > 0, dy, 0.25 * dy), rtol=1e-6)
    assert list(m.state_dict()) == ["weight"]


@pytest.mark.parametrize("layer", [nn.LeakyReLU(0.3), nn.GELU(), nn.Softmax(dim=1), nn.PReLU()])
def test_shared_module_pops_caches_in_reverse(backend_name, layer):
    """One module used twice before its backward: each backward uses its own call's cache."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 2, 3, 5))
    dya, dyb = rng.standard_normal((2, 2, 3, 5))
    with mc.backend(backend_name):
        layer.to(np.float64)
        layer(a)
        want_a = mc.to_numpy(layer.backward(dya))
        layer(b)
        want_b = mc.to_numpy(layer.backward(dyb))
        with forward_pass():  # one pass, as inside a model that calls the module twice
            layer(a)
            layer(b)
        np.testing.assert_allclose(mc.to_numpy(layer.backward(dyb)), want_b, rtol=1e-12)
        np.testing.assert_allclose(mc.to_numpy(layer.backward(dya)), want_a, rtol=1e-12)


def test_inplace_is_accepted_and_leaves_the_input():
    x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    keep = x.copy()
    for m in (nn.LeakyReLU(inplace=True), nn.ELU(inplace=True), nn.SELU(inplace=True), nn.SiLU(inplace=True),
              nn.Hardswish(inplace=True), nn.Hardsigmoid(inplace=True)):
        y = m(x)
        assert not np.shares_memory(y, x)
        np.testing.assert_array_equal(x, keep)


def test_repr_is_torchs():
    assert repr(nn.LeakyReLU(0.2, inplace=True)) == "LeakyReLU(negative_slope=0.2, inplace=True)"
    assert repr(nn.ELU()) == "ELU(alpha=1.0)"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
    assert repr(nn.Softplus()) == "Softplus(beta=1.0, threshold=20.0)"
    assert repr(nn.PReLU(3)) == "PReLU(num_parameters=3)"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(nn.Softmin()) == "Softmin(dim=None)"


def test_softmax_of_a_scalar_and_the_implicit_rule():
    with pytest.warns(UserWarning, match="dim=X"):
        y = nn.Softmax()(np.float32(3.0))
    assert y.shape == () and float(y) == 1.0
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(mc.to_numpy(nn.Softmax()(x)).sum(axis=0), 1.0, rtol=1e-6)  # 3-d: dim 0
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(mc.to_numpy(nn.Softmax()(x[0])).sum(axis=1), 1.0, rtol=1e-6)  # 2-d: dim 1


def test_no_grad_keeps_nothing():
    m = nn.ELU()
    with mc.no_grad():
        m(np.ones(3))
    with pytest.raises(RuntimeError, match="ELU"):
        m.backward(np.ones(3))


# -- bad arguments: what PyTorch rejects, one clear line ---------------------------------------------------

@pytest.mark.parametrize("make, exc, match", [
    (lambda: nn.GELU(approximate="fast"), ValueError, "GELU: approximate must be 'none' or 'tanh', got 'fast'"),
    (lambda: nn.PReLU(0), ValueError, "PReLU: num_parameters must be >= 1, got 0"),
    (lambda: nn.PReLU(2.5), TypeError, "PReLU: num_parameters must be an int"),
    (lambda: nn.LeakyReLU("a"), TypeError, "LeakyReLU: negative_slope must be a real number, got str"),
    (lambda: nn.Softplus(beta=None), TypeError, "Softplus: beta must be a real number"),
    (lambda: nn.Softmax(dim=1.5), TypeError, "Softmax: dim must be an int or None, got float 1.5"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_bad_inputs(backend_name):
    with mc.backend(backend_name):
        with pytest.raises(ValueError, match=r"PReLU\(num_parameters=3\): expected input of shape \(N, 3, \*\)"):
            nn.PReLU(3)(np.ones((2, 4)))
        with pytest.raises(ValueError, match=r"PReLU\(num_parameters=3\).*got shape \(3,\)"):
            nn.PReLU(3)(np.ones(3))
        with pytest.raises(IndexError, match=r"Softmax\(dim=2\): dim out of range .*\[-2, 1\], but got 2"):
            nn.Softmax(dim=2)(np.ones((2, 3)))
        with pytest.raises(IndexError, match=r"LogSoftmax\(dim=-3\)"):
            nn.LogSoftmax(dim=-3)(np.ones((2, 3)))
        with pytest.raises(ValueError, match="unknown kind 'swish'"):
            mc.ops.activation_forward(np.ones(2), "swish", ())
        with pytest.raises(ValueError, match="kind 'softplus' takes"):
            mc.ops.activation_forward(np.ones(2), "softplus", (1.0,))
        with pytest.raises(ValueError, match="prelu_forward: weight of shape \\(2,\\)"):
            mc.ops.prelu_forward(np.ones((2, 3)), np.ones(2))
