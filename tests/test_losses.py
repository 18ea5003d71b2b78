"""The losses: PyTorch parity (committed fixtures, and live on random configurations when torch
imports), numerical gradient checks, the argument checks, and how the class losses treat targets.

Fixtures: ``tests/fixtures/losses.npz``, written by ``python tests/make_loss_fixtures.py``.
"""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import backends, nn
from minicnn.nn.module import forward_pass
from gradcheck import check_loss, eval_numerical_gradient_array, rel_error
from make_loss_fixtures import CASES, FIXTURE, case_seed, compare, load_fixtures, make_arrays, run_minicnn, run_torch

FIXTURES = load_fixtures()


# -- PyTorch's stored answers ----------------------------------------------------------------------

def test_fixture_file_matches_case_list():
    """A case edited or added in make_loss_fixtures.py without regenerating the file fails here."""
    assert sorted(FIXTURES) == sorted(CASES)
    for name, (cfg, _, _) in FIXTURES.items():
        assert cfg == json.loads(json.dumps(CASES[name], sort_keys=True)), name
    assert FIXTURE.stat().st_size < 256 * 1024


@pytest.mark.parametrize("case", sorted(CASES))
def test_case_matches_torch(backend_name, case):
    cfg, inputs, expected = FIXTURES[case]
    got = run_minicnn(cfg, inputs, backend=backend_name)
    compare(got, expected, cfg.get("dtype", "float32"), f"{case} on {backend_name}")


def test_fixtures_hold_the_cases_that_matter():
    """Real numbers: all-ignored is NaN with a zero gradient (PyTorch), huge logits stay finite."""
    _, inputs, expected = FIXTURES["ce_all_ignored_mean"]
    assert np.isnan(expected["loss"]) and np.all(expected["dx"] == 0)
    _, inputs, expected = FIXTURES["ce_huge_logits"]
    assert np.abs(inputs["x"]).max() > 1e3 and np.isfinite(expected["loss"]) and expected["loss"] > 100
    _, inputs, _ = FIXTURES["ce_seg_ignore_mean"]
    assert inputs["x"].ndim == 4 and (inputs["target"] == -100).any()


# -- live parity on random configurations -------------------------------------------------------------

@st.composite
def loss_cfgs(draw):
    loss = draw(st.sampled_from(["CrossEntropyLoss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss",
                                 "L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    kwargs = {"reduction": reduction}
    cfg = {"loss": loss, "dtype": dtype, "kwargs": kwargs}
    if loss in ("CrossEntropyLoss", "NLLLoss"):
        n, c = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        shape = [n, c] + draw(st.lists(st.integers(1, 4), max_size=2))  # (N, C) or segmentation layouts
        soft = loss == "CrossEntropyLoss" and draw(st.booleans())
        cfg["target"] = "prob" if soft else "index"
        if not soft and draw(st.booleans()):
            kwargs["ignore_index"] = draw(st.sampled_from([-100, -1, 0, c - 1]))
            cfg["ignore"] = draw(st.sampled_from([0.2, 0.5, 1.0]))
        if draw(st.booleans()):
            cfg["weight_shape"] = [c]
        if loss == "CrossEntropyLoss" and draw(st.booleans()):
            kwargs["label_smoothing"] = draw(st.sampled_from([0.05, 0.3, 1.0]))
        cfg["input"] = draw(st.sampled_from(["normal", "wide"]))
    else:
        shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
        if loss == "BCEWithLogitsLoss":
            cfg["target"] = "binary"
            cfg["input"] = draw(st.sampled_from(["normal", "wide"]))
            for name in ("weight", "pos_weight"):
                if draw(st.booleans()):  # a shape that broadcasts to the input's (pos_weight: the class dim)
                    k = draw(st.integers(1, len(shape)))
                    cfg[f"{name}_shape"] = [d if draw(st.booleans()) else 1 for d in shape[len(shape) - k:]]
        else:
            cfg["target"] = "regression"
            cfg["target_scale"] = draw(st.sampled_from([0.3, 1.0, 3.0]))
            if loss == "SmoothL1Loss":
                kwargs["beta"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
            if loss == "HuberLoss":
                kwargs["delta"] = draw(st.sampled_from([0.3, 1.0, 2.0]))
    cfg["x_shape"] = shape
    return cfg


@given(cfg=loss_cfgs(), seed=st.integers(0, 2**31 - 1))
def test_live_parity_with_torch(backend_name, cfg, seed):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    arrays = make_arrays(cfg, np.random.default_rng(seed))
    want = run_torch(cfg, arrays)
    got = run_minicnn(cfg, arrays, backend=backend_name)
    compare(got, want, cfg["dtype"], f"{cfg} on {backend_name}")


def test_fast_path_matches_the_general_op(backend_name):
    """The plain (N, C) case takes softmax_cross_entropy_*; weight=ones forces the general op: same numbers."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((9, 7)) * 5).astype(np.float32)
    t = rng.integers(0, 7, 9)
    with mc.backend(backend_name):
        for reduction in ("mean", "sum"):
            plain = nn.CrossEntropyLoss(reduction=reduction)
            general = nn.CrossEntropyLoss(np.ones(7), reduction=reduction)
            a, b = plain(x, t), general(x, t)
            assert a == pytest.approx(b, rel=1e-6)
            np.testing.assert_allclose(mc.to_numpy(plain.backward(1.7)), mc.to_numpy(general.backward(1.7)),
                                       rtol=1e-5, atol=1e-7)
    # and the value is the textbook one: mean of logsumexp(z) - z[t]
    z = x.astype(np.float64)
    want = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(9), t])
    with mc.backend(backend_name):
        assert nn.CrossEntropyLoss()(x, t) == pytest.approx(want, rel=1e-6)


def test_smoothing_and_weights_by_hand():
    """Label smoothing with weights and an ignored target, written out for one tiny case."""
    z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]])
    t = np.array([1, -100, 2])
    w = np.array([0.5, 2.0, 1.0])
    eps = 0.3
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    per = [-(w * ((1 - eps) * (np.arange(3) == k) + eps / 3) * logp[i]).sum() for i, k in enumerate(t) if k != -100]
    want = sum(per) / (w[1] + w[2])
    loss = nn.CrossEntropyLoss(w, label_smoothing=eps).to(np.float64)(z, t)
    assert loss == pytest.approx(want, rel=1e-12)


# -- gradients -----------------------------------------------------------------------------------------

def _check_none(loss_fn, pred, target, rng, tol=1e-6):
    """reduction='none': backward(g) against central differences of sum(g * loss)."""
    loss_fn.to(np.float64)
    pred = np.array(pred, dtype=np.float64)
    g = rng.standard_normal(np.shape(mc.to_numpy(loss_fn(pred, target))))
    analytic = mc.to_numpy(loss_fn.backward(g))
    numeric = eval_numerical_gradient_array(lambda p: mc.to_numpy(loss_fn(p, target)), pred.copy(), g)
    assert rel_error(analytic, numeric) < tol


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_class_losses(backend_name, reduction):
    rng = np.random.default_rng(21)
    x = 2 * rng.standard_normal((3, 4, 2, 3))
    t = rng.integers(0, 4, (3, 2, 3))
    t[0, 1, 2] = t[2, 0, 0] = -100
    y = rng.random(x.shape)
    y /= y.sum(axis=1, keepdims=True)
    w = rng.uniform(0.3, 2.0, 4)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    with mc.backend(backend_name):
        cases = [(nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.2), x, t),
                 (nn.CrossEntropyLoss(reduction=reduction), x[:, :, 0, 0], t[:, 1, 1]),
                 (nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.1), x, y),
                 (nn.NLLLoss(w, reduction=reduction, ignore_index=1), logp, t.clip(0))]
        for fn, pred, target in cases:
            if reduction == "none":
                _check_none(fn, pred, target, rng)
            else:
                check_loss(fn, pred, target)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_elementwise_losses(backend_name, reduction):
    rng = np.random.default_rng(22)
    x = 3 * rng.standard_normal((3, 4))
    tb = rng.uniform(0, 1, (3, 4))
    # regression targets kept away from the kinks (|d| = 0, beta, delta) central differences cannot see
    d = rng.uniform(0.05, 0.45, (3, 4)) * rng.choice([-1, 1], (3, 4)) + rng.choice([0.0, 1.0, -2.0], (3, 4))
    d[np.abs(np.abs(d) - 0.25) < 0.02] += 0.05
    tr = x - d
    with mc.backend(backend_name):
        cases = [(nn.BCEWithLogitsLoss(rng.uniform(0, 2, (3, 1)), reduction=reduction,
                                       pos_weight=rng.uniform(0.5, 3, 4)), tb),
                 (nn.L1Loss(reduction=reduction), tr), (nn.MSELoss(reduction=reduction), tr),
                 (nn.SmoothL1Loss(reduction=reduction, beta=0.25), tr),
                 (nn.SmoothL1Loss(reduction=reduction, beta=0), tr),
                 (nn.HuberLoss(reduction=reduction, delta=0.25), tr)]
        for fn, target in cases:
            if reduction == "none":
                _check_none(fn, x, target, rng)
            else:
                check_loss(fn, x, target)


# -- targets on the backend, checked once ---------------------------------------------------------------

class _CountingTargets(np.ndarray):
    """An int array that counts its min/max reductions (what a range check costs)."""

    calls = 0

    def min(self, *a, **k):
        _CountingTargets.calls += 1
        return super().min(*a, **k)

    def max(self, *a, **k):
        _CountingTargets.calls += 1
        return super().max(*a, **k)


@pytest.mark.parametrize("make", [lambda: nn.CrossEntropyLoss(), lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
                                  lambda: nn.NLLLoss()], ids=["ce-plain", "ce-general", "nll"])
def test_targets_checked_once_and_never_copied_to_host(backend_name, make, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    with mc.backend(backend_name):
        be = backends.current()
        fn = make()
        x = be.asarray(x)
        t = rng.integers(0, 4, 6)
        # the counting subclass is a host array: on a device backend the targets are the device's
        # own (a host array would be moved in first), whose reductions this test cannot count
        counted = be.is_native(t)
        t = t.view(_CountingTargets) if counted else be.asarray(t)

        def no_host_copy(a):
            raise AssertionError("a loss moved an array to the host")

        monkeypatch.setattr(backends, "to_numpy", no_host_copy)
        monkeypatch.setitem(be.OPS, "to_numpy", no_host_copy)
        _CountingTargets.calls = 0
        fn(x, t)
        assert _CountingTargets.calls == (2 if counted else 0)  # one min, one max: the range check, once
        fn.backward()
        assert _CountingTargets.calls == (2 if counted else 0)


# -- bad input, in one line ------------------------------------------------------------------------------

def _raises(exc, fn, *parts):
    with pytest.raises(exc) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_class_loss_bad_input():
    x = np.zeros((2, 3, 4), np.float32)
    ce = nn.CrossEntropyLoss()
    _raises(ValueError, lambda: ce(x, np.zeros((2, 3), np.int64)), "CrossEntropyLoss", "(2, 3, 4)", "(2, 4)", "(2, 3)")
    _raises(ValueError, lambda: ce(x, np.zeros((2, 3, 4), np.int64)), "floating point", "int64")
    _raises(ValueError, lambda: ce(x, np.full((2, 4), 3)), "target 3 is out of bounds", "[0, 3)")
    _raises(ValueError, lambda: nn.CrossEntropyLoss(ignore_index=3)(x, np.array([[0, 3, -1, 2], [0] * 4])),
            "target -1", "ignore_index=3")
    _raises(ValueError, lambda: nn.CrossEntropyLoss(np.ones(4))(x, np.zeros((2, 4), np.int64)), "3 classes", "(4,)")
    _raises(ValueError, lambda: nn.CrossEntropyLoss(np.ones((3, 1))), "weight", "1-D", "(3, 1)")
    _raises(ValueError, lambda: nn.CrossEntropyLoss(ignore_index=0)(x, np.full(x.shape, 1 / 3, np.float32)),
            "ignore_index=0", "probability")
    _raises(ValueError, lambda: nn.CrossEntropyLoss(label_smoothing=1.5), "label_smoothing", "1.5")
    _raises(ValueError, lambda: ce(np.zeros((), np.float32), np.int64(0)), "0-d")
    _raises(ValueError, lambda: nn.NLLLoss()(x, np.full(x.shape, 0.5, np.float32)), "NLLLoss", "(2, 4)")
    _raises(TypeError, lambda: nn.NLLLoss(ignore_index=1.5), "ignore_index", "1.5")
    # what is still fine: ignore_index itself, integer-valued floats, an unbatched input
    assert np.isnan(nn.CrossEntropyLoss(ignore_index=7)(x, np.full((2, 4), 7)))
    assert ce(x, np.ones((2, 4))) == pytest.approx(np.log(3), rel=1e-6)
    assert ce(np.zeros(5, np.float32), 2) == pytest.approx(np.log(5), rel=1e-6)


def test_elementwise_loss_bad_input():
    _raises(ValueError, lambda: nn.BCEWithLogitsLoss(pos_weight=np.ones(3))(np.zeros((2, 4)), np.zeros((2, 4))),
            "pos_weight", "(3,)", "(2, 4)")
    _raises(ValueError, lambda: nn.BCEWithLogitsLoss(np.ones((3, 4)))(np.zeros((2, 4)), np.zeros((2, 4))),
            "weight", "(3, 4)")
    _raises(ValueError, lambda: nn.SmoothL1Loss(beta=-1), "beta", "-1")
    _raises(ValueError, lambda: nn.HuberLoss(delta=0), "delta", "0")
    _raises(ValueError, lambda: nn.L1Loss()(np.zeros((2, 3)), np.zeros((3, 2))), "L1Loss", "(2, 3)", "(3, 2)")
    _raises(ValueError, lambda: nn.HuberLoss(reduction="avg"), "'avg'", "'none', 'mean' or 'sum'")
    with pytest.raises(TypeError):
        nn.MSELoss("sum")  # torch's positional order is (size_average, reduce, reduction): keywords only


@pytest.mark.parametrize("make", [nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.L1Loss, nn.MSELoss,
                                  nn.SmoothL1Loss, nn.HuberLoss])
def test_none_reduction_needs_an_upstream_array(make):
    fn = make(reduction="none")
    x = np.zeros((3, 2), np.float32)
    target = np.array([0, 1, 1]) if make in (nn.CrossEntropyLoss, nn.NLLLoss) else np.ones((3, 2))
    loss = fn(x, target)
    assert mc.to_numpy(loss).shape == ((3,) if make in (nn.CrossEntropyLoss, nn.NLLLoss) else (3, 2))
    _raises(ValueError, lambda: fn.backward(1.0), make.__name__, "dloss", str(tuple(mc.to_numpy(loss).shape)))
    fn2 = make(reduction="sum")
    fn2(x, target)
    _raises(ValueError, lambda: fn2.backward(np.ones(3)), "dloss must be a number")


# -- module behaviour ---------------------------------------------------------------------------------------

def test_weights_are_buffers_like_torch():
    ce = nn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])
    assert list(ce.state_dict()) == ["weight"]
    bce = nn.BCEWithLogitsLoss(pos_weight=np.ones(4))
    assert list(bce.state_dict()) == ["pos_weight"]
    assert nn.CrossEntropyLoss().state_dict() == {}
    assert ce.to(np.float64).weight.dtype == np.float64
    assert "label_smoothing=0.1" in repr(nn.CrossEntropyLoss(label_smoothing=0.1))


def test_shared_loss_two_forwards_then_two_backwards(backend_name):
    """A loss called twice before its backwards pops its caches in reverse, like any module."""
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((2, 3, 2))
    ta, tb = rng.integers(0, 3, (4, 2)), rng.integers(0, 3, (2, 2))
    with mc.backend(backend_name):
        fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        ref_a = mc.to_numpy((fn(a, ta), fn.backward())[1])
        with forward_pass():  # one pass: the second call stacks on the first
            fn(a, ta)
            fn(b, tb)
        assert mc.to_numpy(fn.backward()).shape == b.shape
        np.testing.assert_array_equal(mc.to_numpy(fn.backward()), ref_a)


def test_seed_of_each_fixture_case_is_stable():
    """make_arrays draws from the case's own seed: the committed inputs are reproducible."""
    name = "ce_seg_smooth_weight_sum"
    arrays = make_arrays(CASES[name], np.random.default_rng(case_seed(name)))
    _, inputs, _ = FIXTURES[name]
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, inputs[k])
