"""A compiled ResNet-18 with and without the batch split across threads, alternating in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.batch_split_ab --batches 2,4,8,32

``CompiledModel._in_parts`` runs a batch of at least ``inference.BATCH_SPLIT_MIN_IMAGES`` images
per thread as one slice per thread, each slice's whole forward on one thread ("split"); below
that, one pass runs every kernel on all threads ("whole"). For each batch size both forms run on
the same compiled model (its autotuner warmed for both) and the same input, in turns, the order
reversed every round, so a change of the machine's speed hits both alike; each form's median and
best pass are printed with their ratio. Logits of the two forms are compared first. Like every
two-thread number, only as good as the machine is quiet (the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="2,4,8,32", help="comma-separated batch sizes")
    ap.add_argument("--rounds", type=int, default=0, help="passes per form (default: 20, 6 from batch 32)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)

    import minicnn as mc
    from minicnn import inference
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18, seeded_state_dict

    net = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
    split_at = inference.BATCH_SPLIT_MIN_IMAGES
    print(f"load average before: {os.getloadavg()[0]:.2f}; BATCH_SPLIT_MIN_IMAGES {split_at}")
    print("| batch | whole median ms | whole best | split median ms | split best | split / whole (median) | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with mc.backend("numba"):
        fast = compile_inference(net)
        for n in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(n).standard_normal((n, 3, args.size, args.size)).astype(np.float32)

            def run(minimum):
                inference.BATCH_SPLIT_MIN_IMAGES = minimum
                try:
                    t0 = time.perf_counter()
                    y = fast(x)
                    return time.perf_counter() - t0, y
                finally:
                    inference.BATCH_SPLIT_MIN_IMAGES = split_at

            forms = {"whole": n + 1, "split": 1}  # a minimum above n never splits; 1 always does (2+ images)
            outs = {}
            for name, minimum in forms.items():  # warm-up: autotuning for each form's shapes
                for _ in range(2):
                    outs[name] = run(minimum)[1]
            diff = float(np.max(np.abs(outs["whole"] - outs["split"])))
            times = {name: [] for name in forms}
            rounds = args.rounds or (6 if n >= 32 else 20)
            for r in range(rounds):
                order = list(forms.items()) if r % 2 == 0 else list(forms.items())[::-1]
                for name, minimum in order:
                    times[name].append(run(minimum)[0] * 1e3)
            w, s = times["whole"], times["split"]
            print(f"| {n} | {np.median(w):.1f} | {min(w):.1f} | {np.median(s):.1f} | {min(s):.1f} | "
                  f"{np.median(s) / np.median(w):.3f} | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
