"""A compiled ResNet-18 with and without the batch split across threads, alternating in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.batch_split_ab --batches 2,4,8,32
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.batch_split_ab --batches 8,32 --joins none,4,3

``CompiledModel._in_parts`` runs a batch of at least ``inference.BATCH_SPLIT_MIN_IMAGES`` images
per thread as one slice per thread, each slice's forward on one thread up to the stage
``inference.BATCH_JOIN_STAGE``, the rest as one batch ("split"); below that, one pass runs every
kernel on all threads ("whole"). ``--joins`` times one split form per join stage instead ("none":
the slices run to the end). For each batch size every form runs on the same compiled model (its
autotuner warmed for each) and the same input, in turns, the order reversed every round, so a
change of the machine's speed hits all alike; each form's median and best pass are printed, with
the median's ratio to the first form's. The largest difference of each form's logits from the
first form's is printed too. Like every two-thread number, only as good as the machine is quiet
(the load average is printed).
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
    ap.add_argument("--joins", default="", help="comma-separated join stages of split forms to compare (1-4 or "
                    "'none'); default: the whole pass against the split with the library's join stage")
    args = ap.parse_args(argv)

    import minicnn as mc
    from minicnn import inference
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18, seeded_state_dict

    def stage(text):
        if text.strip().lower() == "none":
            return None
        if text.strip() not in ("1", "2", "3", "4"):
            raise SystemExit(f"batch_split_ab: --joins takes stages 1-4 or 'none', got {text!r}")
        return int(text)

    net = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
    split_at, join_at = inference.BATCH_SPLIT_MIN_IMAGES, inference.BATCH_JOIN_STAGE
    # name -> (BATCH_SPLIT_MIN_IMAGES, BATCH_JOIN_STAGE); a minimum above the batch never splits, 1 always does
    if args.joins:
        forms = {f"split, join {j}": (1, j) for j in (stage(t) for t in args.joins.split(","))}
    else:
        forms = {"whole": (None, join_at), "split": (1, join_at)}
    names = list(forms)
    print(f"load average before: {os.getloadavg()[0]:.2f}; BATCH_SPLIT_MIN_IMAGES {split_at}; "
          f"BATCH_JOIN_STAGE {join_at}")
    print("| batch | " + " | ".join(f"{m} median ms | {m} best" for m in names) + " | "
          + " | ".join(f"{m} / {names[0]}" for m in names[1:]) + " | max abs diff |")
    print("|---:|" + "---:|---:|" * len(names) + "---:|" * (len(names) - 1) + "---:|")
    with mc.backend("numba"):
        fast = compile_inference(net)
        for n in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(n).standard_normal((n, 3, args.size, args.size)).astype(np.float32)

            def run(form):
                minimum, join = form
                inference.BATCH_SPLIT_MIN_IMAGES = n + 1 if minimum is None else minimum
                inference.BATCH_JOIN_STAGE = join
                try:
                    t0 = time.perf_counter()
                    y = fast(x)
                    return time.perf_counter() - t0, y
                finally:
                    inference.BATCH_SPLIT_MIN_IMAGES, inference.BATCH_JOIN_STAGE = split_at, join_at

            outs = {}
            for name, form in forms.items():  # warm-up: autotuning for each form's shapes
                for _ in range(2):
                    outs[name] = run(form)[1]
            diff = max(float(np.max(np.abs(outs[m] - outs[names[0]]))) for m in names)
            times = {name: [] for name in forms}
            rounds = args.rounds or (6 if n >= 32 else 20)
            for r in range(rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    times[name].append(run(forms[name])[0] * 1e3)
            med = {m: float(np.median(times[m])) for m in names}
            print(f"| {n} | " + " | ".join(f"{med[m]:.1f} | {min(times[m]):.1f}" for m in names) + " | "
                  + " | ".join(f"{med[m] / med[names[0]]:.3f}" for m in names[1:]) + f" | {diff:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
