"""Two checkouts of minicnn alternated, one fresh process per measurement: compiled ResNet-18 at
batch 1 and 8 and an SGD step of the digits convnet at batch 64 (median milliseconds).

    git worktree add /tmp/base <revision>
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.revision_ab /tmp/base . --rounds 3

Each round runs the first checkout then the second, so a burst of load from another process hits
both alike; compare them as ratios within a round. Used to check that a change did not slow a
path it was not meant to touch (docs/benchmarks.md, "Revision A/B").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import sys, time, statistics, json
sys.path.insert(0, sys.argv[1])
import numpy as np
import minicnn as mc
from minicnn import nn, optim
from minicnn.inference import compile_inference
from minicnn.models.resnet import resnet18, seeded_state_dict
out = {"minicnn": mc.__file__}
with mc.backend("numba"):
    fast = compile_inference(resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval())
    for b, rounds in ((1, 30), (8, 6)):
        x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
        fast(x); fast(x)
        ts = []
        for _ in range(rounds):
            t = time.perf_counter(); fast(x); ts.append(time.perf_counter() - t)
        out[f"b{b}_ms"] = 1e3 * statistics.median(ts)
    mc.manual_seed(0)
    model = mc.models.digits_convnet().train()
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(1).standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 10, 64)
    def step():
        model.zero_grad(); loss_fn(model(x), y); model.backward_params(loss_fn.backward()); opt.step()
    for _ in range(20):
        step()
    ts = []
    for _ in range(300):
        t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
    out["digits_step_ms"] = 1e3 * statistics.median(ts)
print(json.dumps(out))
"""


def measure(checkout: str) -> dict:
    """One fresh process importing minicnn from ``checkout``; its timings."""
    res = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(checkout)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="first checkout (the baseline)")
    ap.add_argument("b", help="second checkout")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    keys = ("b1_ms", "b8_ms", "digits_step_ms")
    print("| round | " + " | ".join(f"{k} A | {k} B | B/A" for k in keys) + " |")
    print("|---" * (1 + 3 * len(keys)) + "|")
    for r in range(1, args.rounds + 1):
        a, b = measure(args.a), measure(args.b)
        cells = [f"{a[k]:.2f} | {b[k]:.2f} | {b[k] / a[k]:.2f}" for k in keys]
        print(f"| {r} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
