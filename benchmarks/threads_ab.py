"""The measurements behind ``_threads.SERIAL_MAX_WORK`` and ``_threads.SPLIT_MIN_MACS``: one workload
timed under every combination of the two, alternating configurations in one process (so a burst
of load on a shared machine hits all of them alike).

    python -m benchmarks.threads_ab --model digits --serial-max 131072,524288 --split-min 2000000,8000000
    python -m benchmarks.threads_ab --model b1 --serial-max 524288 --split-min 8000000 --gemm numba,pool

``--model``: ``digits`` (an SGD step of the digits convnet at batch 64, 40 rounds of 15 steps),
``b1`` (compiled ResNet-18 inference on one 224x224 image, 25 rounds of 5 calls), ``b8`` (the
same on 8 images, 10 rounds of 2 calls) or ``train16``
(an SGD step of ResNet-18 at batch 16, 6 rounds of 1 step); ``--rounds`` overrides the count.
The steps are those ``minicnn bench e2e`` times. docs/kernels.md ("Small calls run serially")
holds a run of it.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from . import harness

PLANS = {"digits": (40, 15), "b1": (25, 5), "b8": (10, 2), "train16": (6, 1)}


def _workload(model: str, size: int = 224):
    import minicnn as mc
    from minicnn import nn, optim

    from .end_to_end import _minicnn_step, _training_setup

    if model in ("b1", "b8"):
        from minicnn.inference import compile_inference
        from minicnn.models.resnet import resnet18, seeded_state_dict

        net = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
        with mc.backend("numba"):
            compiled = compile_inference(net)
        x = np.random.default_rng(0).standard_normal((int(model[1:]), 3, size, size)).astype(np.float32)

        def infer():
            with mc.backend("numba"):
                compiled(x)

        return infer
    name, batch = {"digits": ("digits convnet", 64), "train16": ("resnet18", 16)}[model]
    net, _, x, y = _training_setup(name, batch, size)
    net.train()
    step = _minicnn_step(net, optim.SGD(net.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss(), "numba")
    return lambda: step(x, y)


@contextlib.contextmanager
def _config(serial_max: int, split_min: int, gemm: str = "numba"):
    from minicnn.backends.numba import _threads

    saved = _threads.SPLIT_MIN_MACS, _threads.GEMM_THREADS
    _threads.SPLIT_MIN_MACS, _threads.GEMM_THREADS = split_min, gemm
    try:
        with _threads.serial_below(serial_max):
            yield
    finally:
        _threads.SPLIT_MIN_MACS, _threads.GEMM_THREADS = saved


def ab(model="digits", serial_max=(1 << 17, 1 << 19), split_min=(2_000_000, 8_000_000), rounds=None, reps=None,
       threads=2, size=224, gemm=("numba",)) -> dict:
    """{(serial_max, split_min, gemm): [seconds per call]} over interleaved rounds."""
    harness.set_threads(threads)
    default_rounds, default_reps = PLANS[model]
    rounds, reps = rounds or default_rounds, reps or default_reps
    run = _workload(model, size)
    configs = [(s, m, g) for s in serial_max for m in split_min for g in gemm]
    times = {c: [] for c in configs}
    for c in configs:
        with _config(*c):
            for _ in range(2):
                run()
    for _ in range(rounds):
        for c in configs:
            with _config(*c):
                run()  # one untimed call after switching
                for _ in range(reps):
                    t0 = time.perf_counter()
                    run()
                    times[c].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(PLANS), default="digits")
    ap.add_argument("--serial-max", default="131072,524288", help="comma-separated SERIAL_MAX_WORK values")
    ap.add_argument("--split-min", default="2000000,8000000", help="comma-separated SPLIT_MIN_MACS values")
    ap.add_argument("--gemm", default="numba", help="comma-separated GEMM_THREADS values (numba, pool)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    times = ab(args.model, [int(v) for v in args.serial_max.split(",")], [int(v) for v in args.split_min.split(",")],
               rounds=args.rounds, threads=args.threads, gemm=args.gemm.split(","))
    print(f"{args.model}: {harness.machine_info().get('cpu', '')}")
    print("| SERIAL_MAX_WORK | SPLIT_MIN_MACS | GEMM_THREADS | median ms | p25 ms | min ms | calls |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for (s, m, g), v in times.items():
        v = np.asarray(v) * 1e3
        print(f"| {s} | {m} | {g} | {np.median(v):.3f} | {np.percentile(v, 25):.3f} | {v.min():.3f} | {len(v)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
