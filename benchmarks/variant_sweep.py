"""The measurements behind ``choose_variant``: every 3x3 conv variant of the numba backend on
ResNet-18's stride-1 layers, for constant (inference) and writeable (training) filters, forward,
dX and dW, side by side; with ``--kernel 5``, im2col against Winograd F(2x2, 5x5) on the
Fashion-MNIST nets' 32->64 5x5 layer (14x14, padding 2).

    python -m benchmarks.variant_sweep [--batches 1,8,16] [--rounds 3] [--threads 2]
    python -m benchmarks.variant_sweep --kernel 5 --batches 1,8,32,128

Each (shape, batch, pass) row times im2col + GEMM, Winograd F(2x2) and F(4x4) forced through
``prefer_variant``, in ``--rounds`` interleaved rounds (the minimum over rounds of each median, so
a burst of load on a shared machine hits all variants alike), after checking every variant's
result against the numpy reference (relative error < 1e-3, else FAIL and not timed). The last
column is what the rule picks. docs/kernels.md ("Selection rule") holds a run of it.
"""
from __future__ import annotations

import argparse

import numpy as np

from . import harness

VARIANTS = ("im2col_gemm", "winograd_f2x2_3x3", "winograd_f4x4_3x3")
VARIANTS_5X5 = ("im2col_gemm", "winograd_f2x2_5x5")
SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # (channels, side) of ResNet-18's 3x3 stride-1 layers
EXTRA = ((64, 1, 16, 8), (64, 16, 32, 4))  # the digits convnet's two layers: (batch, C, K, side)
SHAPES_5X5 = ((32, 64, 14),)  # (C, K, side) of the Fashion-MNIST nets' second 5x5 layer


def _passes(conv, ref_ops, x, w, dy):
    """(name, run, reference) of the forward with a constant filter, forward, dX and dW with a
    writeable one; "same" padding (kernel // 2)."""
    p = w.shape[2] // 2
    wc = w.copy()
    wc.flags.writeable = False
    fwd_ref = ref_ops["conv2d_forward"](x, w, None, (1, 1), (p, p), (1, 1), 1)
    dx_ref, dw_ref, _ = ref_ops["conv2d_backward"](dy, x, w, (1, 1), (p, p), (1, 1), 1)
    return (
        ("const fwd", lambda: conv.conv2d_forward(x, wc, None, 1, p, 1, 1), fwd_ref),
        ("fwd", lambda: conv.conv2d_forward(x, w, None, 1, p, 1, 1), fwd_ref),
        ("dX", lambda: conv.conv2d_backward(dy, x, w, 1, p, 1, 1, need_dw=False, need_db=False)[0], dx_ref),
        ("dW", lambda: conv.conv2d_backward(dy, x, w, 1, p, 1, 1, need_dx=False, need_db=False)[1], dw_ref),
    )


def sweep(batches=(1, 8, 16), rounds: int = 3, threads: int = 2, extra: bool = True, log=print,
          kernel: int = 3) -> list[dict]:
    """One row per (batch, layer, pass): {variant: ms or "FAIL"} and the rule's pick."""
    from minicnn.backends import load
    from minicnn.backends.numba import conv

    harness.set_threads(threads)
    ref_ops = load("numpy").OPS
    rng = np.random.default_rng(0)
    if kernel == 5:
        variants = VARIANTS_5X5
        cases = [(n, c, k, h) for n in batches for c, k, h in SHAPES_5X5]
    else:
        variants = VARIANTS
        cases = [(n, c, c, h) for n in batches for c, h in SHAPES] + (list(EXTRA) if extra else [])
    p = kernel // 2
    rows = []
    for n, c, k, h in cases:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        w = (rng.standard_normal((k, c, kernel, kernel)) / np.sqrt(kernel * kernel * c)).astype(np.float32)
        dy = rng.standard_normal((n, k, h, h)).astype(np.float32)
        passes = _passes(conv, ref_ops, x, w, dy)
        best: dict = {}
        for _ in range(rounds):
            for v in variants:
                with conv.prefer_variant(v):
                    for name, run, ref in passes:
                        key = (name, v)
                        if best.get(key) == "FAIL":
                            continue
                        if key not in best and harness.max_rel_error(run(), ref) > harness.DEFAULT_TOL:
                            best[key] = "FAIL"
                            continue
                        ms = harness.median_time(run, warmup=1, repeats=7, max_seconds=2.0)[0]
                        best[key] = min(best.get(key, float("inf")), ms)
        for name, _, _ in passes:
            constant = name.startswith("const")
            rule = conv.choose_variant(x.shape, w.shape, (1, 1), (p, p), (1, 1), 1, constant=constant)
            row = {"batch": n, "C": c, "K": k, "side": h, "pass": name, "rule": rule,
                   **{v: best[(name, v)] for v in variants}}
            rows.append(row)
            log(_line(row, variants))
    return rows


def _line(row: dict, variants=VARIANTS) -> str:
    cells = [f"{row[v]:.2f}" if isinstance(row[v], float) else row[v] for v in variants]
    times = {v: row[v] for v in variants if isinstance(row[v], float)}
    fastest = min(times, key=times.get) if times else "-"
    cells = [f"**{c}**" if v == fastest else c for v, c in zip(variants, cells)]
    return (f"| {row['batch']} | {row['C']}→{row['K']}, {row['side']}² | {row['pass']} | "
            + " | ".join(cells) + f" | {row['rule']} |")


HEADER = ("| batch | layer | pass | im2col | F(2x2) | F(4x4) | rule |\n"
          "|---:|---|---|---:|---:|---:|---|")
HEADER_5X5 = ("| batch | layer | pass | im2col | F(2x2, 5x5) | rule |\n"
              "|---:|---|---|---:|---:|---|")


def main(argv=None) -> int:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description="time every 3x3 conv variant on ResNet-18's layers (ms)")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-extra", action="store_true", help="skip the digits convnet's layers")
    ap.add_argument("--kernel", type=int, choices=(3, 5), default=3,
                    help="5: im2col against F(2x2, 5x5) on the Fashion-MNIST nets' 32->64 layer")
    a = ap.parse_args(argv)
    print(HEADER_5X5 if a.kernel == 5 else HEADER)
    sweep(tuple(int(b) for b in a.batches.split(",")), a.rounds, a.threads, not a.no_extra, kernel=a.kernel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
