"""One Fashion-MNIST training step, minicnn against PyTorch in one process, op by op.

    python -m benchmarks.fashion_step [--batch 128] [--rounds 7] [--steps 5] [--threads 2] [--no-ops] [--chunked]

The net is ``fashion_convnet`` (conv 5x5 1->32 pad 2, ReLU, max pool 2, conv 5x5 32->64 pad 2,
ReLU, max pool 2, linear 3136->10), the step is forward, cross-entropy, backward and an Adam
update, both frameworks start from the same weights and see the same batch. Rounds alternate the
two frameworks (swapping which goes first) so that drift on a shared machine hits both alike;
the step time is each side's median over all rounds and the ratio is minicnn / PyTorch.
``--chunked`` adds a third side, minicnn with the per-image convolution
(``minicnn.backends.numba.conv_images``) declined, so its convolutions take the chunked im2col
path that ran before it: the A/B of that change in the same rounds.

The per-op table comes from separate rounds with timers on: minicnn's ops are wrapped at the op
seam (each call timed, named by the layer it belongs to in call order), PyTorch's step runs
under ``torch.profiler`` and each top-level event (a forward op, an autograd node's backward, the
optimizer step) is named the same way. The timers add a little to both sides; the untimed step
times above are the ones to quote.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import numpy as np

from . import harness

# the layers of the step in call order, as the per-op table names them
FORWARD = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "linear", "loss"]
BACKWARD = ["loss", "linear", "pool2", "relu2", "conv2", "pool1", "relu1", "conv1"]

# minicnn op names -> the kind of layer they belong to
_MC_KIND = {
    "conv2d_forward": "conv", "conv2d_fused_forward": "conv", "conv2d_backward": "conv",
    "relu_forward": "relu", "relu_backward": "relu",
    "activation_forward": "relu", "activation_backward": "relu",
    "maxpool2d_forward": "pool", "maxpool2d_backward": "pool",
    "linear_forward": "linear", "linear_backward": "linear",
    "softmax_cross_entropy_forward": "loss", "softmax_cross_entropy_backward": "loss",
    "cross_entropy_forward": "loss", "cross_entropy_backward": "loss",
}

# PyTorch top-level profiler events -> (kind, direction)
_TORCH_KIND = {
    "aten::conv2d": ("conv", "fwd"), "aten::relu": ("relu", "fwd"), "aten::max_pool2d": ("pool", "fwd"),
    "aten::linear": ("linear", "fwd"), "aten::cross_entropy_loss": ("loss", "fwd"),
    "ConvolutionBackward0": ("conv", "bwd"), "ReluBackward0": ("relu", "bwd"),
    "MaxPool2DWithIndicesBackward0": ("pool", "bwd"), "AddmmBackward0": ("linear", "bwd"),
    "NllLossBackward0": ("loss", "bwd"), "LogSoftmaxBackward0": ("loss", "bwd"),
}


def _names(direction):
    """Per kind, the layer names of one direction in call order (conv -> [conv1, conv2] forward)."""
    order = FORWARD if direction == "fwd" else BACKWARD
    out = defaultdict(list)
    for name in order:
        out[name.rstrip("12")].append(name)
    return out


def _problem(batch, seed=0):
    """(minicnn model, torch model, x, y): the same weights and batch for both."""
    import torch

    from minicnn.models.fashion import fashion_convnet

    rng = np.random.default_rng(seed)
    model = fashion_convnet()
    sd = model.state_dict()
    state = {}
    for k, v in sd.items():
        shape = np.shape(v)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 25
        state[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    model.load_state_dict(state)
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 10))
    mc_keys = [k for k in state]
    with torch.no_grad():
        for tp, k in zip(tm.parameters(), mc_keys):
            tp.copy_(torch.from_numpy(state[k]))
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    return model, tm, x, y


@contextlib.contextmanager
def _chunked(on):
    """Within the block (when ``on``) the numba convolutions decline the per-image path."""
    from minicnn.backends.numba import conv_images

    original = conv_images.applies
    if on:
        conv_images.applies = lambda *a, **k: False
    try:
        yield
    finally:
        conv_images.applies = original


def _minicnn_step(model, x, y):
    from minicnn import nn, optim

    model.train()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())
        opt.step()
        return loss

    return step, opt


def _torch_step(tm, x, y):
    import torch

    opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = loss_fn(tm(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


def _minicnn_ops(step, opt, steps):
    """{layer op: ms per step} of the minicnn step, timed at the op seam."""
    from minicnn.backends import load

    be = load("numba")
    original = dict(be.OPS)
    totals = defaultdict(float)
    counts = defaultdict(int)
    names = {"fwd": _names("fwd"), "bwd": _names("bwd")}

    def wrap(opname, fn):
        kind = _MC_KIND.get(opname)
        direction = "bwd" if opname.endswith("_backward") else "fwd"

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t0
            if kind is None:
                if not opname.endswith(("_forward", "_backward")):  # bookkeeping (is_native), not arithmetic
                    return out
                key = opname
            else:
                i = counts[(kind, direction)]
                counts[(kind, direction)] += 1
                layers = names[direction][kind]
                key = f"{layers[i % len(layers)]} {direction}"
            totals[key] += dt
            return out

        return timed

    opt_step = opt.step

    def timed_opt(*a, **k):
        t0 = time.perf_counter()
        out = opt_step(*a, **k)
        totals["adam step"] += time.perf_counter() - t0
        return out

    try:
        for opname, fn in original.items():
            be.OPS[opname] = wrap(opname, fn)
        opt.step = timed_opt
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        totals["(whole step)"] += time.perf_counter() - t0
    finally:
        be.OPS.clear()
        be.OPS.update(original)
        del opt.step
    return {k: v / steps * 1e3 for k, v in totals.items()}


def _torch_ops(step, steps):
    """{layer op: ms per step} of the PyTorch step, from its profiler's top-level events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        whole = time.perf_counter() - t0
    totals = defaultdict(float)
    counts = defaultdict(int)
    names = {"fwd": _names("fwd"), "bwd": _names("bwd")}
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        if ev.cpu_parent is not None:
            continue
        name = ev.name.replace("autograd::engine::evaluate_function: ", "")
        if name.startswith("Optimizer.step#"):
            totals["adam step"] += ev.cpu_time_total / 1e3
            continue
        kd = _TORCH_KIND.get(name)
        if kd is None:
            continue
        kind, direction = kd
        layers = names[direction][kind]
        if kind == "loss":  # several events make up the loss; they all count to the one layer
            key = f"loss {direction}"
        else:
            i = counts[kd]
            counts[kd] += 1
            key = f"{layers[i % len(layers)]} {direction}"
        totals[key] += ev.cpu_time_total / 1e3
    out = {k: v / steps for k, v in totals.items()}
    out["(whole step)"] = whole / steps * 1e3
    return out


def run(batch=128, rounds=7, steps=5, threads=2, ops=True, chunked=False) -> dict:
    """Step times of both frameworks (alternating rounds) and, with ``ops``, the per-op tables;
    ``chunked`` adds minicnn with the per-image convolution declined as a third side."""
    harness.set_threads(threads)
    import torch

    import minicnn as mc

    torch.set_num_threads(threads)
    model, tm, x, y = _problem(batch)
    with mc.backend("numba"):
        mc_step, mc_opt = _minicnn_step(model, x, y)
        t_step = _torch_step(tm, x, y)
        # the first losses agree: the same net, weights and batch on both sides
        l_mc, l_t = float(mc.to_numpy(mc_step())), float(t_step().item())
        if abs(l_mc - l_t) > 1e-4 * max(1.0, abs(l_t)):
            raise RuntimeError(f"first-step losses differ: minicnn {l_mc:.6f}, PyTorch {l_t:.6f}")
        names = ["minicnn", "pytorch"] + (["chunked"] if chunked else [])
        for _ in range(2):  # warm-up: compilation, workspaces, allocator
            for side in names:
                with _chunked(side == "chunked"):
                    (t_step if side == "pytorch" else mc_step)()
        times = {side: [] for side in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # each side goes first in turn
            for side in order:
                fn = t_step if side == "pytorch" else mc_step
                with _chunked(side == "chunked"):
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        fn()
                        times[side].append(time.perf_counter() - t0)
        res = {"batch": batch, "threads": threads, "rounds": rounds, "steps": steps,
               "step_ms": {side: float(np.median(ts) * 1e3) for side, ts in times.items()}}
        if ops:
            rows = {side: defaultdict(list) for side in names}
            for r in range(max(3, rounds // 2)):
                order = names[r % len(names):] + names[:r % len(names)]
                for side in order:
                    with _chunked(side == "chunked"):
                        got = _torch_ops(t_step, steps) if side == "pytorch" else _minicnn_ops(mc_step, mc_opt, steps)
                    for k, v in got.items():
                        rows[side][k].append(v)
            res["ops"] = {side: {k: float(np.median(v)) for k, v in got.items()} for side, got in rows.items()}
    return res


# the sides as the tables name them
LABELS = {"minicnn": "minicnn", "chunked": "minicnn, chunked conv", "pytorch": "PyTorch"}


def markdown(res: dict) -> str:
    """The step times and (if measured) the per-op table, with each minicnn side's ratio to PyTorch."""
    st = res["step_ms"]
    minis = [s for s in ("minicnn", "chunked") if s in st]
    lines = [f"Fashion-MNIST step (fashion_convnet, Adam), batch {res['batch']}, {res['threads']} threads, "
             f"medians of {res['rounds']} alternating rounds x {res['steps']} steps: "
             + ", ".join(f"{LABELS[s]} {v:.1f} ms" for s, v in st.items()) + "; "
             + ", ".join(f"{LABELS[s]} / PyTorch {st[s] / st['pytorch']:.2f}x" for s in minis)]
    if "ops" in res:
        ops = res["ops"]
        order = [f"{n} fwd" for n in FORWARD] + [f"{n} bwd" for n in BACKWARD] + ["adam step", "(whole step)"]
        seen = set().union(*(set(v) for v in ops.values()))
        keys = [k for k in order if k in seen] + sorted(k for k in seen if k not in order)
        sides = minis + ["pytorch"]
        lines += ["", "| op | " + " | ".join(f"{LABELS[s]} ms" for s in sides) + " | "
                  + " | ".join(f"{LABELS[s]} / PyTorch" for s in minis) + " |",
                  "|---|" + "---:|" * (len(sides) + len(minis))]
        for k in keys:
            vals = [ops[s].get(k) for s in sides]
            t = ops["pytorch"].get(k)
            cells = [f"{v:.2f}" if v is not None else "" for v in vals]
            ratios = [f"{ops[s][k] / t:.2f}" if t and ops[s].get(k) is not None else "" for s in minis]
            lines.append(f"| {k} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description="time one Fashion-MNIST training step, minicnn against PyTorch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ops", action="store_true", help="step times only, no per-op table")
    ap.add_argument("--chunked", action="store_true",
                    help="also time minicnn with the per-image convolution declined (the chunked im2col path)")
    a = ap.parse_args(argv)
    for name, v in (("--batch", a.batch), ("--rounds", a.rounds), ("--steps", a.steps), ("--threads", a.threads)):
        if v < 1:
            ap.error(f"{name} must be at least 1, got {v}")
    print(markdown(run(a.batch, a.rounds, a.steps, a.threads, ops=not a.no_ops, chunked=a.chunked)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
