"""Optimizers and schedulers against PyTorch's results committed in tests/fixtures/optim.npz (no torch needed).

The fixtures are written by tests/make_optim_fixtures.py; the same checks run live against torch,
with random configurations, in tests/test_optim_torch.py.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, optim
from minicnn.nn import Parameter
from minicnn.optim import lr_scheduler

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "optim.npz")


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _cases(key):
    with np.load(FIXTURE) as f:
        return json.loads(str(f[key]))


def _groups(params, case):
    if case.get("groups") is None:
        return params
    return [dict(g, params=[params[i] for i in g["params"]]) for g in case["groups"]]


def _momentum(group):
    return group["betas"][0] if "betas" in group else group.get("momentum", 0.0)


# -- parity with PyTorch (committed fixtures) ------------------------------------------------------

@pytest.mark.parametrize("case", _cases("opt_cases"), ids=lambda c: c["name"])
def test_optimizer_matches_torch_fixture(case, fx):
    pre = f"opt/{case['name']}/"
    n = sum(1 for k in fx if k.startswith(pre) and k.endswith("_init"))
    params = [Parameter(fx[pre + f"p{j}_init"].copy()) for j in range(n)]
    dtype = params[0].data.dtype
    opt = getattr(optim, case["opt"])(_groups(params, case), **case["kwargs"])
    sched = None
    if case.get("scheduler"):
        sched = getattr(lr_scheduler, case["scheduler"])(opt, **case["sched_kwargs"])
    steps = fx[pre + "p0_grads"].shape[0]
    # float64 agrees to rounding (PyTorch fuses some multiply-adds); float32 to a few ulp after several steps
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-7)
    for t in range(steps):
        for j, p in enumerate(params):
            p.grad = fx[pre + f"p{j}_grads"][t].copy()
        opt.step()
        if sched is not None:
            sched.step()
        for j, p in enumerate(params):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, fx[pre + f"p{j}_after"][t], **tol,
                                       err_msg=f"{case['name']} param {j} step {t + 1}")


@pytest.mark.parametrize("case", _cases("sched_cases"), ids=lambda c: c["name"])
def test_scheduler_matches_torch_fixture(case, fx):
    params = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    opt = getattr(optim, case["opt"])([dict(params=[params[0]], lr=0.1), dict(params=[params[1]])], **case["kwargs"])
    sched = getattr(lr_scheduler, case["sched"])(opt, **case["sched_kwargs"])
    lrs, moms = [], []
    for _ in range(fx[f"sched/{case['name']}/lr"].shape[0]):
        lrs.append(sched.get_last_lr())
        moms.append([_momentum(g) for g in opt.param_groups])
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    # the same float operations in the same order as PyTorch: equal up to the platform's cos()
    np.testing.assert_allclose(np.array(lrs), fx[f"sched/{case['name']}/lr"], rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.array(moms), fx[f"sched/{case['name']}/momentum"], rtol=1e-13, atol=0)
    assert sched.last_epoch == len(lrs)


def test_end_to_end_sgd_momentum_matches_torch(fx):
    """Conv2d-ReLU-MaxPool2d-Flatten-Linear trained 5 SGD-momentum steps: losses and weights as PyTorch's."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 5))
    model.to(np.float64)
    model.load_state_dict({k[len("e2e/init/"):]: v for k, v in fx.items() if k.startswith("e2e/init/")})
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss().to(np.float64)
    losses = []
    with mc.backend("numpy"):
        for _ in range(len(fx["e2e/losses"])):
            opt.zero_grad()
            losses.append(loss_fn(model(fx["e2e/x"]), fx["e2e/y"]))
            model.backward(loss_fn.backward())
            opt.step()
    np.testing.assert_allclose(losses, fx["e2e/losses"], rtol=1e-10)
    assert losses[-1] < losses[0]
    final = model.state_dict()
    for k, v in fx.items():
        if k.startswith("e2e/final/"):
            np.testing.assert_allclose(final[k[len("e2e/final/"):]], v, rtol=1e-9, atol=1e-12, err_msg=k)


# -- frozen parameters ----------------------------------------------------------------------------

ALL_OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.RMSprop, dict(lr=0.1, momentum=0.5, centered=True, weight_decay=0.1)),
    (optim.Adam, dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
    (optim.AdamW, dict(lr=0.1, weight_decay=0.5)),
]


@pytest.mark.parametrize("cls,kw", ALL_OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_frozen_and_gradless_params_are_never_moved(cls, kw):
    rng = np.random.default_rng(0)
    live = Parameter(rng.standard_normal((4, 3)).astype(np.float32))
    frozen = Parameter(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=False)
    frozen.grad = rng.standard_normal((4, 3)).astype(np.float32)  # a stale gradient must not be applied
    gradless = Parameter(rng.standard_normal(5).astype(np.float32))
    before_frozen, before_gradless, before_live = frozen.data.copy(), gradless.data.copy(), live.data.copy()
    opt = cls([live, frozen, gradless], **kw)
    for _ in range(3):
        live.grad = rng.standard_normal((4, 3)).astype(np.float32)
        opt.step()
    assert frozen.data.tobytes() == before_frozen.tobytes()
    assert gradless.data.tobytes() == before_gradless.tobytes()
    assert not np.array_equal(live.data, before_live)
    assert frozen not in opt.state and gradless not in opt.state


def test_frozen_layer_of_a_model_is_not_moved():
    mc.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].freeze()
    frozen_before = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("0.")}
    opt = optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    loss_fn = nn.MSELoss()
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    t = np.zeros((6, 2), np.float32)
    with mc.backend("numpy"):
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x), t)
            model.backward(loss_fn.backward())
            opt.step()
    after = model.state_dict()
    for k, v in frozen_before.items():
        assert after[k].tobytes() == v.tobytes(), k
    assert model[2].weight.grad is not None


# -- hyper-parameter validation ------------------------------------------------------------------

def _p():
    return [Parameter(np.zeros(3, np.float32))]


@pytest.mark.parametrize("make,match", [
    (lambda: optim.SGD(_p(), lr=-0.1), "learning rate"),
    (lambda: optim.SGD(_p(), lr=float("nan")), "learning rate"),
    (lambda: optim.SGD(_p(), momentum=-0.5), "momentum"),
    (lambda: optim.SGD(_p(), weight_decay=-1), "weight_decay"),
    (lambda: optim.SGD(_p(), nesterov=True), "Nesterov"),
    (lambda: optim.SGD(_p(), momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda: optim.RMSprop(_p(), alpha=-0.1), "alpha"),
    (lambda: optim.RMSprop(_p(), eps=-1e-8), "eps"),
    (lambda: optim.RMSprop(_p(), momentum=-1), "momentum"),
    (lambda: optim.Adam(_p(), betas=(1.0, 0.999)), "beta parameter at index 0"),
    (lambda: optim.Adam(_p(), betas=(0.9, -0.1)), "beta parameter at index 1"),
    (lambda: optim.Adam(_p(), betas=(0.9,)), "pair"),
    (lambda: optim.Adam(_p(), eps=-1.0), "epsilon"),
    (lambda: optim.AdamW(_p(), weight_decay=-0.01), "weight_decay"),
    (lambda: optim.Adam([{"params": _p(), "lr": -1.0}]), "learning rate"),
    (lambda: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda: optim.SGD([{"params": _p()}, {"params": [], "lr": 0.1}], lr=0.1).add_param_group(
        {"params": _p(), "momentum": -1}), "momentum"),
])
def test_bad_hyper_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_params_raise_type_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="parameters()"):
        optim.SGD(model, lr=0.1)
    with pytest.raises(TypeError, match="item 1"):
        optim.SGD([Parameter(np.zeros(2)), np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="set"):
        optim.SGD([{"params": set(model.parameters())}], lr=0.1)
    with pytest.raises(TypeError, match="real number"):
        optim.SGD(model.parameters(), lr="0.1")


def test_duplicate_and_shared_parameters_raise():
    p, q = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [q, p]})
    assert len(opt.param_groups) == 1


def test_gradient_shape_mismatch_names_both_shapes():
    p = Parameter(np.zeros((2, 3), np.float32))
    p.grad = np.zeros((3, 2), np.float32)
    opt = optim.SGD([("layer.weight", p)], lr=0.1)
    with pytest.raises(ValueError, match=r"layer\.weight.*\(3, 2\).*\(2, 3\)"):
        opt.step()


# -- groups, zero_grad, closure, dtype -----------------------------------------------------------

def test_param_groups_take_defaults_and_own_values():
    a, b, c = (Parameter(np.ones(2)) for _ in range(3))
    opt = optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b]}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    opt.add_param_group({"params": c, "momentum": 0.0})
    assert opt.param_groups[2]["params"] == [c] and opt.param_groups[2]["lr"] == 0.1
    for p in (a, b, c):
        p.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 0.5])
    np.testing.assert_array_equal(b.data, [0.9, 0.9])
    np.testing.assert_array_equal(c.data, [0.9, 0.9])


def test_named_parameters_are_accepted_and_kept():
    model = nn.Linear(3, 2)
    opt = optim.Adam(model.named_parameters(), lr=0.01)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    assert opt.param_groups[0]["params"] == list(model.parameters())


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 2.0, np.float32)
    grad_array = p.grad
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert p.grad is None
    else:
        assert p.grad is grad_array and np.all(p.grad == 0)


def test_step_updates_in_place_and_returns_closure_loss():
    p = Parameter(np.ones(3, np.float32))
    data = p.data
    p.grad = np.ones(3, np.float32)
    assert optim.Adam([p], lr=0.1).step(closure=lambda: 1.25) == 1.25
    assert p.data is data
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-6)


@pytest.mark.parametrize("cls,kw", ALL_OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_float32_stays_float32_with_numpy_scalar_hyper_parameters(cls, kw):
    p = Parameter(np.ones(4, np.float32))
    kw = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in kw.items()}
    opt = cls([p], **kw)
    for _ in range(2):
        p.grad = np.full(4, 0.5, np.float32)
        opt.step()
    assert p.data.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state[p].values() if hasattr(v, "dtype"))


def test_grad_is_not_modified_by_step():
    p = Parameter(np.ones(3))
    p.grad = np.full(3, 0.5)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True, maximize=True)
    opt.step()
    opt.step()
    np.testing.assert_array_equal(p.grad, 0.5)


def test_sgd_reference_equations_by_hand():
    """Two SGD-momentum-Nesterov steps written out with plain floats."""
    p = Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    p.grad = np.array([2.0])
    opt.step()
    g1 = 2.0 + 0.5 * 1.0                 # 2.5
    b1 = g1                              # first buffer is the gradient
    p1 = 1.0 - 0.1 * (g1 + 0.9 * b1)     # 0.525
    assert p.data[0] == pytest.approx(p1, rel=1e-15)
    opt.step()
    g2 = 2.0 + 0.5 * p1
    b2 = 0.9 * b1 + g2
    assert p.data[0] == pytest.approx(p1 - 0.1 * (g2 + 0.9 * b2), rel=1e-15)


# -- state dicts ---------------------------------------------------------------------------------

def _train(opt, params, grads):
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.copy()
        opt.step()


@pytest.mark.parametrize("cls,kw", ALL_OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_round_trip_resumes_exactly(cls, kw):
    rng = np.random.default_rng(3)
    init = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(x.shape) for x in init] for _ in range(5)]
    ref = [Parameter(x.copy()) for x in init]
    _train(cls([{"params": ref[:1], "lr": 0.05}, {"params": ref[1:]}], **kw), ref, grads)

    a = [Parameter(x.copy()) for x in init]
    opt_a = cls([{"params": a[:1], "lr": 0.05}, {"params": a[1:]}], **kw)
    _train(opt_a, a, grads[:3])
    sd = opt_a.state_dict()
    assert sorted(sd["state"]) == [0, 1] and sd["param_groups"][0]["params"] == [0]
    for st in sd["state"].values():  # a copy: changing it must not change the optimizer
        for v in st.values():
            if isinstance(v, np.ndarray):
                v[...] = 1e9
    sd = opt_a.state_dict()
    b = [Parameter(p.data.copy()) for p in a]
    opt_b = cls(b, lr=123.0)  # hyper-parameters and groups come from the state dict
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt_b.load_state_dict(sd)
    opt_b = cls([{"params": b[:1]}, {"params": b[1:]}], lr=123.0)
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["lr"] == 0.05 and opt_b.param_groups[0]["params"] == [b[0]]
    _train(opt_b, b, grads[3:])
    for r, x in zip(ref, b):
        assert r.data.tobytes() == x.data.tobytes()


def test_load_state_dict_checks_shapes_and_sizes():
    p = Parameter(np.zeros((2, 3)))
    p.grad = np.ones((2, 3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    other = optim.SGD([Parameter(np.zeros((3, 2)))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum_buffer.*\(2, 3\).*\(3, 2\)"):
        other.load_state_dict(sd)
    two = optim.SGD([Parameter(np.zeros((2, 3))), Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="1 parameters in the saved state and 2"):
        two.load_state_dict(sd)
    f32 = Parameter(np.zeros((2, 3), np.float32))
    opt32 = optim.SGD([f32], lr=0.1, momentum=0.9)
    opt32.load_state_dict(sd)
    assert opt32.state[f32]["momentum_buffer"].dtype == np.float32


def test_scheduler_state_dict_round_trip():
    def make():
        p = Parameter(np.zeros(2))
        opt = optim.SGD([p], lr=0.1, momentum=0.9)
        return opt, lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=20)

    opt, s = make()
    for _ in range(7):
        opt.step()
        s.step()
    saved_opt, saved = opt.state_dict(), s.state_dict()
    expected = []
    for _ in range(5):
        opt.step()
        s.step()
        expected.append((s.get_last_lr()[0], opt.param_groups[0]["momentum"]))
    opt2, s2 = make()
    s2.load_state_dict(saved)
    opt2.load_state_dict(saved_opt)
    got = []
    for _ in range(5):
        opt2.step()
        s2.step()
        got.append((s2.get_last_lr()[0], opt2.param_groups[0]["momentum"]))
    assert got == expected


def test_resuming_with_last_epoch_keeps_the_restored_rate():
    """As PyTorch: the constructor's step keeps the group's rate, later steps continue the recursion."""
    p = Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=0.2)
    opt.param_groups[0]["initial_lr"] = 0.2
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=10, last_epoch=3)
    assert s.last_epoch == 4 and s.get_last_lr() == [0.2]
    opt.step()
    s.step()
    ratio = (1 + np.cos(np.pi * 5 / 10)) / (1 + np.cos(np.pi * 4 / 10))
    assert s.get_last_lr()[0] == pytest.approx(0.2 * ratio, rel=1e-14)  # PyTorch: 0.15278640450004208
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(optim.SGD([Parameter(np.zeros(1))], lr=0.1), step_size=2, last_epoch=5)


def test_scheduler_bad_arguments_raise():
    opt = optim.SGD([{"params": [Parameter(np.zeros(1))]}, {"params": [Parameter(np.zeros(1))]}], lr=0.1)
    with pytest.raises(ValueError, match="one value per parameter group"):
        lr_scheduler.OneCycleLR(opt, max_lr=[0.1, 0.2, 0.3], total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        lr_scheduler.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="pct_start"):
        lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=1.5)
    with pytest.raises(ValueError, match="anneal_strategy"):
        lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="step_size"):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(TypeError, match="not an Optimizer"):
        lr_scheduler.ExponentialLR(object(), gamma=0.9)
    s = lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="total_steps=3"):
        s.step()


def test_onecycle_endpoints():
    """Starts at max_lr/div_factor with max_momentum, peaks at max_lr with base_momentum, ends at the minimum."""
    opt = optim.Adam([Parameter(np.zeros(1))], lr=1.0)
    s = lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=20, pct_start=0.3)  # peak at step 0.3*20-1
    lrs, moms = [], []
    for _ in range(20):
        lrs.append(s.get_last_lr()[0])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        if len(lrs) < 20:
            s.step()
    assert lrs[0] == pytest.approx(0.4 / 25) and moms[0] == pytest.approx(0.95)
    assert int(np.argmax(lrs)) == 5 and max(lrs) == pytest.approx(0.4) and moms[5] == pytest.approx(0.85)
    assert lrs[-1] == pytest.approx(0.4 / 25 / 1e4)
    assert opt.param_groups[0]["betas"][1] == 0.999


def test_optim_is_reachable_from_the_package():
    assert mc.optim.SGD is optim.SGD and mc.optim.lr_scheduler.StepLR is lr_scheduler.StepLR
    assert "Parameter Group 0" in repr(optim.SGD(_p(), lr=0.1))


# -- GPU: the same update code on CuPy arrays ------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cls,kw", ALL_OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_cupy_arrays_match_numpy(cls, kw):
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # cupy installed without a usable device
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(5)
    init = rng.standard_normal((7, 5)).astype(np.float32)
    grads = rng.standard_normal((4, 7, 5)).astype(np.float32)
    host, dev = Parameter(init.copy()), Parameter(cp.asarray(init))
    opt_h, opt_d = cls([host], **kw), cls([dev], **kw)
    for g in grads:
        host.grad, dev.grad = g.copy(), cp.asarray(g)
        opt_h.step()
        opt_d.step()
    assert isinstance(dev.data, cp.ndarray)
    assert all(isinstance(v, cp.ndarray) for v in opt_d.state[dev].values() if hasattr(v, "shape"))
    np.testing.assert_allclose(cp.asnumpy(dev.data), host.data, rtol=1e-5, atol=1e-6)
    sd = opt_d.state_dict()  # saved as numpy, loadable into a numpy optimizer
    assert all(isinstance(v, np.ndarray) for v in sd["state"][0].values() if hasattr(v, "shape"))
    cls([Parameter(init.copy())], **kw).load_state_dict(sd)
