"""A compiled ResNet-18 with NCHW activations and with channels-last ones, alternating in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.layout_ab --batches 1,8,32

``compile_inference(model, channels_last=False)`` keeps NCHW activations and calls the backend's
NCHW ops; ``channels_last=True`` keeps (N, H, W, C) activations and calls its ``*_cl`` ops
(numba: ``backends/numba/channels_last.py``). For each batch size both models are warmed up
(their autotuners pick per layer), their logits compared, then called in turns on the same
input, the order reversed every round, so a change of the machine's speed hits both alike; each
layout's median and best pass are printed with their ratio. Batches of 4+ images per thread are
split across threads in both (``inference.BATCH_SPLIT_MIN_IMAGES``). Like every two-thread
number, only as good as the machine is quiet (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=0, help="passes per layout (default: 30, 12 from batch 8, 6 from 32)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)

    import minicnn as mc
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18, seeded_state_dict

    net = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| batch | NCHW median ms | NCHW best | channels-last median ms | channels-last best | "
          "channels-last / NCHW (median) | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with mc.backend("numba"):
        models = {"nchw": compile_inference(net, channels_last=False), "cl": compile_inference(net, channels_last=True)}
        for n in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(n).standard_normal((n, 3, args.size, args.size)).astype(np.float32)
            outs = {}
            for name, fast in models.items():  # warm-up: autotuning for this shape
                for _ in range(2):
                    outs[name] = fast(x)
            diff = float(np.max(np.abs(outs["nchw"] - outs["cl"])))
            times = {name: [] for name in models}
            rounds = args.rounds or (6 if n >= 32 else 12 if n >= 8 else 30)
            for r in range(rounds):
                order = list(models.items()) if r % 2 == 0 else list(models.items())[::-1]
                for name, fast in order:
                    t0 = time.perf_counter()
                    fast(x)
                    times[name].append((time.perf_counter() - t0) * 1e3)
            a, c = times["nchw"], times["cl"]
            print(f"| {n} | {np.median(a):.1f} | {min(a):.1f} | {np.median(c):.1f} | {min(c):.1f} | "
                  f"{np.median(c) / np.median(a):.3f} | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
