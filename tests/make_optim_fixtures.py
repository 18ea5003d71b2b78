"""Write tests/fixtures/optim.npz: PyTorch's optimizer and scheduler results for the committed parity tests.

    python tests/make_optim_fixtures.py

Needs torch (only here: the tests that read the file do not). Contents, all float64 unless a case
says float32:

* ``opt/<case>/p<j>_init``, ``opt/<case>/p<j>_grads`` (steps, *shape) and ``opt/<case>/p<j>_after``
  (steps, *shape): parameter j before any step, the gradient fed at each step, and PyTorch's value
  after each step. The case's optimizer, hyper-parameters, param groups and optional scheduler are
  in the JSON string ``opt_cases``.
* ``sched/<case>/lr`` and ``sched/<case>/momentum`` (steps, groups): each group's learning rate and
  momentum (``betas[0]`` for Adam) before each optimizer step, for the schedulers in ``sched_cases``.
* ``e2e/...``: a small Conv2d-ReLU-MaxPool2d-Flatten-Linear model trained for a few SGD-momentum
  steps on cross-entropy: initial weights, inputs, targets, the loss at each step, final weights.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "optim.npz")

SHAPES = [(3, 4), (5,), (2, 1, 3, 3)]
STEPS = 4

# name, optimizer, constructor kwargs, param groups (None = one group of all params), dtype, scheduler
OPT_CASES = [
    dict(name="sgd_plain", opt="SGD", kwargs=dict(lr=0.1)),
    dict(name="sgd_momentum", opt="SGD", kwargs=dict(lr=0.05, momentum=0.9)),
    dict(name="sgd_momentum_dampening", opt="SGD", kwargs=dict(lr=0.05, momentum=0.8, dampening=0.3)),
    dict(name="sgd_nesterov_wd", opt="SGD", kwargs=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    dict(name="sgd_maximize", opt="SGD", kwargs=dict(lr=0.02, momentum=0.5, maximize=True)),
    dict(name="sgd_two_groups", opt="SGD", kwargs=dict(lr=0.1, momentum=0.9),
         groups=[dict(params=[0], lr=0.01), dict(params=[1, 2], weight_decay=0.1)]),
    dict(name="sgd_momentum_f32", opt="SGD", kwargs=dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dtype="float32"),
    dict(name="rmsprop_default", opt="RMSprop", kwargs=dict()),
    dict(name="rmsprop_centered", opt="RMSprop", kwargs=dict(lr=0.01, alpha=0.9, centered=True)),
    dict(name="rmsprop_momentum_wd", opt="RMSprop", kwargs=dict(lr=0.01, momentum=0.9, weight_decay=0.05, eps=1e-6)),
    dict(name="rmsprop_centered_momentum", opt="RMSprop", kwargs=dict(lr=0.005, momentum=0.5, centered=True)),
    dict(name="adam_default", opt="Adam", kwargs=dict()),
    dict(name="adam_betas_wd", opt="Adam", kwargs=dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    dict(name="adam_amsgrad", opt="Adam", kwargs=dict(lr=0.01, amsgrad=True)),
    dict(name="adam_small_beta1", opt="Adam", kwargs=dict(lr=0.01, betas=(0.3, 0.9), eps=1e-4)),
    dict(name="adam_two_groups", opt="Adam", kwargs=dict(lr=0.01),
         groups=[dict(params=[0, 2], lr=0.001, betas=(0.5, 0.9)), dict(params=[1], amsgrad=True)]),
    dict(name="adamw_default", opt="AdamW", kwargs=dict(lr=0.01)),
    dict(name="adamw_amsgrad_wd", opt="AdamW", kwargs=dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    dict(name="adam_f32", opt="Adam", kwargs=dict(lr=0.01, weight_decay=0.01), dtype="float32"),
    dict(name="sgd_onecycle", opt="SGD", kwargs=dict(lr=0.1, momentum=0.9), steps=8,
         scheduler="OneCycleLR", sched_kwargs=dict(max_lr=0.3, total_steps=8)),
    dict(name="adam_onecycle_groups", opt="Adam", kwargs=dict(lr=0.01), steps=8,
         groups=[dict(params=[0]), dict(params=[1, 2])],
         scheduler="OneCycleLR", sched_kwargs=dict(max_lr=[0.01, 0.05], total_steps=8, three_phase=True)),
]

# scheduler cases run over two param groups with lr 0.1 and the optimizer's default lr
SCHED_STEPS = 30
SCHED_CASES = [
    dict(name="step", opt="SGD", kwargs=dict(lr=0.05), sched="StepLR", sched_kwargs=dict(step_size=7, gamma=0.5)),
    dict(name="multistep", opt="SGD", kwargs=dict(lr=0.05), sched="MultiStepLR",
         sched_kwargs=dict(milestones=[3, 10, 10, 21], gamma=0.3)),
    dict(name="exponential", opt="SGD", kwargs=dict(lr=0.05), sched="ExponentialLR", sched_kwargs=dict(gamma=0.9)),
    dict(name="cosine", opt="SGD", kwargs=dict(lr=0.05), sched="CosineAnnealingLR", sched_kwargs=dict(T_max=30)),
    dict(name="cosine_past_tmax", opt="SGD", kwargs=dict(lr=0.05), sched="CosineAnnealingLR",
         sched_kwargs=dict(T_max=8, eta_min=0.001)),
    dict(name="onecycle_sgd", opt="SGD", kwargs=dict(lr=0.05, momentum=0.9), sched="OneCycleLR",
         sched_kwargs=dict(max_lr=[0.5, 0.2], total_steps=30)),
    dict(name="onecycle_adam_linear_3phase", opt="Adam", kwargs=dict(lr=0.05), sched="OneCycleLR",
         sched_kwargs=dict(max_lr=0.5, epochs=3, steps_per_epoch=10, three_phase=True, anneal_strategy="linear")),
    dict(name="onecycle_rmsprop_pct", opt="RMSprop", kwargs=dict(lr=0.05), sched="OneCycleLR",
         sched_kwargs=dict(max_lr=0.5, total_steps=31, pct_start=0.25, base_momentum=[0.8, 0.7],
                           div_factor=10.0, final_div_factor=100.0)),
    dict(name="onecycle_no_momentum", opt="SGD", kwargs=dict(lr=0.05), sched="OneCycleLR",
         sched_kwargs=dict(max_lr=0.5, total_steps=30, cycle_momentum=False)),
]


def _groups(params, case):
    if case.get("groups") is None:
        return params
    return [dict(g, params=[params[i] for i in g["params"]]) for g in case["groups"]]


def _momentum(group):
    return group["betas"][0] if "betas" in group else group.get("momentum", 0.0)


def make_opt_case(case, rng, out):
    dtype = np.dtype(case.get("dtype", "float64"))
    steps = case.get("steps", STEPS)
    inits = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [rng.standard_normal((steps, *s)).astype(dtype) for s in SHAPES]
    params = [torch.tensor(p.copy(), requires_grad=True) for p in inits]
    opt = getattr(torch.optim, case["opt"])(_groups(params, case), **case["kwargs"])
    sched = None
    if case.get("scheduler"):
        sched = getattr(torch.optim.lr_scheduler, case["scheduler"])(opt, **case["sched_kwargs"])
    after = [np.zeros((steps, *s), dtype) for s in SHAPES]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[t].copy())
        opt.step()
        if sched is not None:
            sched.step()
        for j, p in enumerate(params):
            after[j][t] = p.detach().numpy()
    pre = f"opt/{case['name']}/"
    for j in range(len(SHAPES)):
        out[pre + f"p{j}_init"] = inits[j]
        out[pre + f"p{j}_grads"] = grads[j]
        out[pre + f"p{j}_after"] = after[j]


def make_sched_case(case, out):
    params = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    opt = getattr(torch.optim, case["opt"])([dict(params=[params[0]], lr=0.1), dict(params=[params[1]])],
                                            **case["kwargs"])
    sched = getattr(torch.optim.lr_scheduler, case["sched"])(opt, **case["sched_kwargs"])
    lrs, moms = [], []
    for _ in range(SCHED_STEPS):
        lrs.append(sched.get_last_lr())
        moms.append([_momentum(g) for g in opt.param_groups])
        opt.step()
        sched.step()
    out[f"sched/{case['name']}/lr"] = np.array(lrs, np.float64)
    out[f"sched/{case['name']}/momentum"] = np.array(moms, np.float64)


E2E_STEPS = 5


def make_e2e(rng, out):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(27, 5),
    ).double()
    for k, v in model.state_dict().items():
        out[f"e2e/init/{k}"] = v.numpy().copy()
    x = rng.standard_normal((8, 2, 6, 6))
    y = rng.integers(0, 5, size=8)
    out["e2e/x"], out["e2e/y"] = x, y
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(E2E_STEPS):
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out["e2e/losses"] = np.array(losses)
    for k, v in model.state_dict().items():
        out[f"e2e/final/{k}"] = v.numpy().copy()


def main():
    warnings.filterwarnings("ignore", category=UserWarning)
    rng = np.random.default_rng(2024)
    out = {}
    for case in OPT_CASES:
        make_opt_case(case, rng, out)
    for case in SCHED_CASES:
        make_sched_case(case, out)
    make_e2e(rng, out)
    out["opt_cases"] = np.array(json.dumps(OPT_CASES))
    out["sched_cases"] = np.array(json.dumps(SCHED_CASES))
    out["meta/shapes"] = np.array(json.dumps(SHAPES))
    out["meta/torch_version"] = np.array(torch.__version__)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT}: {len(OPT_CASES)} optimizer cases, {len(SCHED_CASES)} scheduler cases, e2e model")


if __name__ == "__main__":
    main()
