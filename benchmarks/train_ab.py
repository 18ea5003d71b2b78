"""A/B of the Winograd backward on a whole ResNet-18 training step, in one process.

    python -m benchmarks.train_ab [--batch 16] [--steps 8] [--off dw|dx|both] [--threads 2]

Runs one SGD step (forward, cross-entropy, backward, momentum update) alternately with the
numba backend as it is ("on") and with dW and/or dX of the 3x3 layers sent back to GEMM (+ col2im)
("off"), swapping the order every round so that drift on a shared machine hits both sides alike,
and prints each side's median and minimum. Both sides are checked to give the same loss curve.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from . import harness


def ab(batch: int = 16, steps: int = 8, off: str = "dw", threads: int = 2, size: int = 224) -> dict:
    """{"on": [seconds], "off": [seconds]} of ``steps`` training steps each."""
    import minicnn as mc
    from minicnn import nn, optim
    from minicnn.backends.numba import conv
    from minicnn.models.resnet import resnet18, seeded_state_dict

    harness.set_threads(threads)
    model = resnet18(weights=seeded_state_dict("resnet18", seed=0))
    model.train()
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 1000, batch)
    opt = optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: every step sees the same weights
    loss_fn = nn.CrossEntropyLoss()
    originals = {"dw": conv._dw_by_winograd, "dx": conv._dx_by_winograd}
    disabled = ("dw", "dx") if off == "both" else (off,)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward_params(loss_fn.backward())
        opt.step()
        return float(mc.to_numpy(loss))

    times = {"on": [], "off": []}
    losses = {"on": set(), "off": set()}
    try:
        with mc.backend("numba"):
            step()
            for r in range(steps):
                for side in ("on", "off") if r % 2 else ("off", "on"):
                    for name in disabled:
                        setattr(conv, f"_{name}_by_winograd",
                                originals[name] if side == "on" else (lambda *a, **k: None))
                    t0 = time.perf_counter()
                    losses[side].add(round(step(), 4))
                    times[side].append(time.perf_counter() - t0)
    finally:
        conv._dw_by_winograd, conv._dx_by_winograd = originals["dw"], originals["dx"]
    if losses["on"] != losses["off"]:
        raise RuntimeError(f"the two sides disagree on the loss: {losses}")
    return times


def main(argv=None) -> int:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description="A/B the Winograd backward on a ResNet-18 training step")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--off", default="dw", choices=["dw", "dx", "both"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    times = ab(a.batch, a.steps, a.off, a.threads)
    for side, ts in times.items():
        label = "as is" if side == "on" else f"{a.off} by GEMM"
        print(f"{label:>14}: median {np.median(ts) * 1e3:.1f} ms, min {np.min(ts) * 1e3:.1f} ms over {len(ts)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
