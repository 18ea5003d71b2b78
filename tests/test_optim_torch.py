"""Optimizers and schedulers live against PyTorch, on random configurations (skipped without torch).

The committed-fixture versions of these checks are in tests/test_optim.py.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import nn, optim
from minicnn.nn import Parameter
from minicnn.optim import lr_scheduler

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

rates = st.sampled_from([1e-3, 0.01, 0.05, 0.1])
decays = st.sampled_from([0.0, 0.0, 1e-3, 0.1])
fractions = st.sampled_from([0.0, 0.5, 0.9, 0.99])


@st.composite
def sgd_config(draw):
    momentum = draw(fractions)
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5]))
    return "SGD", dict(lr=draw(rates), momentum=momentum, dampening=dampening, weight_decay=draw(decays),
                       nesterov=nesterov, maximize=draw(st.booleans()))


@st.composite
def rmsprop_config(draw):
    return "RMSprop", dict(lr=draw(rates), alpha=draw(st.sampled_from([0.9, 0.99, 0.5])),
                           eps=draw(st.sampled_from([1e-8, 1e-4])), weight_decay=draw(decays),
                           momentum=draw(fractions), centered=draw(st.booleans()), maximize=draw(st.booleans()))


@st.composite
def adam_config(draw):
    name = draw(st.sampled_from(["Adam", "AdamW"]))
    betas = (draw(st.sampled_from([0.0, 0.3, 0.9])), draw(st.sampled_from([0.5, 0.9, 0.999])))
    return name, dict(lr=draw(rates), betas=betas, eps=draw(st.sampled_from([1e-8, 1e-3])),
                      weight_decay=draw(decays), amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))


shapes = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3)


@SETTINGS
@given(config=st.one_of(sgd_config(), rmsprop_config(), adam_config()), shapes=shapes,
       steps=st.integers(1, 6), two_groups=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_optimizer_matches_torch(config, shapes, steps, two_groups, seed):
    name, kw = config
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ours = [Parameter(x.copy()) for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]

    def groups(ps):
        if not two_groups:
            return ps
        return [{"params": ps[:1], "lr": kw["lr"] * 3}, {"params": ps[1:]}]

    opt = getattr(optim, name)(groups(ours), **kw)
    ref = getattr(torch.optim, name)(groups(theirs), **kw)
    for g in grads:
        for p, q, gi in zip(ours, theirs, g):
            p.grad = gi.copy()
            q.grad = torch.tensor(gi)
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-11, atol=1e-13)


@SETTINGS
@given(config=st.one_of(sgd_config(), rmsprop_config(), adam_config()), seed=st.integers(0, 2**31 - 1))
def test_float32_matches_torch(config, seed):
    name, kw = config
    rng = np.random.default_rng(seed)
    init = rng.standard_normal((6, 5)).astype(np.float32)
    p, q = Parameter(init.copy()), torch.tensor(init.copy(), requires_grad=True)
    opt, ref = getattr(optim, name)([p], **kw), getattr(torch.optim, name)([q], **kw)
    for _ in range(3):
        g = rng.standard_normal((6, 5)).astype(np.float32)
        p.grad, q.grad = g.copy(), torch.tensor(g)
        opt.step()
        ref.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-5, atol=1e-6)


def _torch_state_to_numpy(sd):
    state = {i: {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


@SETTINGS
@given(config=st.one_of(sgd_config(), rmsprop_config(), adam_config()), seed=st.integers(0, 2**31 - 1))
def test_state_matches_torch_and_torch_state_loads(config, seed):
    """Same state entries as PyTorch's optimizer; a converted PyTorch state dict resumes identically."""
    name, kw = config
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    ours = [Parameter(x.copy()) for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt, ref = getattr(optim, name)(ours, **kw), getattr(torch.optim, name)(theirs, **kw)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = g.copy(), torch.tensor(g)
        opt.step()
        ref.step()
    mine, theirs_sd = opt.state_dict(), _torch_state_to_numpy(ref.state_dict())
    for i, st_ref in theirs_sd["state"].items():
        keys = {k for k, v in st_ref.items() if v is not None}
        assert set(mine["state"][i]) == keys
        for k in keys:
            np.testing.assert_allclose(mine["state"][i][k], st_ref[k], rtol=1e-11, atol=1e-13, err_msg=k)
    resumed = [Parameter(q.detach().numpy().copy()) for q in theirs]
    opt2 = getattr(optim, name)(resumed, lr=0.5)
    opt2.load_state_dict(theirs_sd)
    for p, q in zip(resumed, theirs):
        g = rng.standard_normal(p.shape)
        p.grad, q.grad = g.copy(), torch.tensor(g)
    opt2.step()
    ref.step()
    for p, q in zip(resumed, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-11, atol=1e-13)


@st.composite
def sched_config(draw):
    kind = draw(st.sampled_from(["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR"]))
    if kind == "StepLR":
        kw = dict(step_size=draw(st.integers(1, 10)), gamma=draw(st.sampled_from([0.1, 0.5, 0.9])))
    elif kind == "MultiStepLR":
        kw = dict(milestones=draw(st.lists(st.integers(1, 30), max_size=5)), gamma=draw(st.sampled_from([0.1, 0.5])))
    elif kind == "ExponentialLR":
        kw = dict(gamma=draw(st.sampled_from([0.5, 0.9, 0.99])))
    elif kind == "CosineAnnealingLR":
        kw = dict(T_max=draw(st.integers(1, 40)), eta_min=draw(st.sampled_from([0.0, 1e-4, 0.01])))
    else:
        kw = dict(max_lr=draw(st.sampled_from([0.1, 1.0, [0.3, 0.03]])), total_steps=draw(st.integers(30, 60)),
                  pct_start=draw(st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0])),
                  anneal_strategy=draw(st.sampled_from(["cos", "linear"])), cycle_momentum=draw(st.booleans()),
                  base_momentum=draw(st.sampled_from([0.85, [0.8, 0.7]])), max_momentum=0.95,
                  div_factor=draw(st.sampled_from([25.0, 10.0])), final_div_factor=draw(st.sampled_from([1e4, 100.0])),
                  three_phase=draw(st.booleans()))
    opt = draw(st.sampled_from([("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                ("RMSprop", dict(lr=0.01))]))
    return kind, kw, opt


@SETTINGS
@given(config=sched_config())
def test_scheduler_matches_torch(config):
    kind, kw, (opt_name, opt_kw) = config

    def run(mod, make_param):
        ps = [make_param(2), make_param(3)]
        opt = getattr(mod, opt_name)([{"params": ps[:1], "lr": 0.2}, {"params": ps[1:]}], **opt_kw)
        s = getattr(mod.lr_scheduler, kind)(opt, **kw)
        out = []
        for _ in range(30):
            out.append(list(s.get_last_lr()) + [g["betas"][0] if "betas" in g else g["momentum"]
                                                for g in opt.param_groups])
            opt.step()
            s.step()
        return np.array(out, dtype=np.float64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = run(torch.optim, lambda n: torch.zeros(n, requires_grad=True))
        except ZeroDivisionError:
            # torch's OneCycleLR divides by a zero-length phase (e.g. pct_start=1.0 with two phases):
            # there is no reference value to compare with
            assume(False)
    got = run(optim, lambda n: Parameter(np.zeros(n)))
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)


def _torch_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 6),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_end_to_end_training_matches_torch(dtype):
    """A small convnet trained with SGD momentum (Nesterov, weight decay, one frozen bias, a cosine
    schedule) for a few steps on the numpy backend ends with PyTorch's parameters."""
    torch.manual_seed(1)
    ref = _torch_model().to(torch.float64 if dtype == np.float64 else torch.float32)
    ref[0].bias.requires_grad_(False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 6))
    model.to(dtype)
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    model[0].bias.requires_grad = False
    loss_fn = nn.CrossEntropyLoss().to(dtype)
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt, ref_opt = optim.SGD(model.parameters(), **kw), torch.optim.SGD(ref.parameters(), **kw)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 8, 8)).astype(dtype)
    y = rng.integers(0, 6, size=10)
    with mc.backend("numpy"):
        for _ in range(6):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            sched.step()
            ref_opt.zero_grad()
            ref_loss = torch.nn.functional.cross_entropy(ref(torch.tensor(x)), torch.tensor(y))
            ref_loss.backward()
            ref_opt.step()
            ref_sched.step()
            assert loss == pytest.approx(ref_loss.item(), rel=1e-5 if dtype == np.float32 else 1e-11)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    got = model.state_dict()
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(got[k], v.numpy(), **tol, err_msg=k)
    assert np.array_equal(got["0.bias"], ref[0].bias.detach().numpy())
