"""The measurements behind ``im2col.unfold_mode``: both forms of the numba unfold (im2col) and of
its adjoint (col2im), the gather table and the row runs, on the chunks the digits convnet and a
ResNet-18 training step unfold, on one thread (the serial twins) and on two.

    python -m benchmarks.unfold_sweep [--rounds 2] [--threads 2]

Every form is first checked against the numpy reference unfold and fold (the unfold exactly, the
fold to 1e-5), then timed: the median of repeated calls, the minimum over ``--rounds`` interleaved
rounds. The "mode" columns are what ``unfold_mode`` picks. docs/kernels.md ("im2col: a gather
table for short rows") holds a run of it.

``--pools`` times the max pool with argmax the same way, each of its forms forced on 2x2
stride-2 pools (every form checked against the numpy reference first).
"""
from __future__ import annotations

import argparse

import numpy as np

from . import harness

# (N, C, H, W, kernel, stride, padding): the digits convnet at batch 64, then the chunks of a
# ResNet-18 training step at batch 16 (the stem one image at a time)
CASES = (
    (64, 16, 4, 4, 3, 1, 1), (64, 1, 8, 8, 3, 1, 1),
    (1, 3, 224, 224, 7, 2, 3), (8, 64, 56, 56, 3, 1, 1), (3, 64, 56, 56, 3, 2, 1), (3, 64, 56, 56, 1, 2, 0),
    (8, 128, 28, 28, 3, 1, 1), (11, 128, 28, 28, 3, 2, 1), (11, 128, 28, 28, 1, 2, 0),
    (16, 256, 14, 14, 3, 2, 1), (16, 512, 7, 7, 3, 1, 1),
)


def _check(im2col_mod, x, k, s, p, P, Q, cols, dx, g):
    from minicnn.backends.numpy.conv import col2im as ref_col2im
    from minicnn.backends.numpy.conv import im2col as ref_im2col

    N, C, H, W = x.shape
    want = ref_im2col(x, k, k, (s, s), (p, p), (1, 1)).transpose(1, 2, 3, 0, 4, 5).reshape(cols.shape)
    fold = ref_col2im(g.reshape(C, k, k, N, P, Q).transpose(3, 0, 1, 2, 4, 5), x.shape, (s, s), (p, p), (1, 1))
    geo = im2col_mod.geometry(k, k, (s, s), (p, p), (1, 1), P, Q)
    for mode in (im2col_mod.TABLE, im2col_mod.ROWS):
        im2col_mod.im2col(x, 0, N, cols, geo, mode=mode)
        if not np.array_equal(cols, want):
            raise AssertionError(f"im2col mode {mode} differs from the reference on {x.shape}")
        im2col_mod.col2im(g, dx, 0, N, geo, mode=mode)
        if harness.max_rel_error(dx, fold) > 1e-5:
            raise AssertionError(f"col2im mode {mode} differs from the reference on {x.shape}")


def sweep(rounds: int = 2, threads: int = 2, log=print) -> list[dict]:
    harness.set_threads(threads)
    from minicnn.backends.numba import _threads
    from minicnn.backends.numba import im2col as im

    rows = []
    rng = np.random.default_rng(0)
    for N, C, H, W, k, s, p in CASES:
        P, Q = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        cols = np.empty((C * k * k, N * P * Q), np.float32)
        g = rng.standard_normal(cols.shape).astype(np.float32)
        dx = np.empty_like(x)
        _check(im, x, k, s, p, P, Q, cols, dx, g)
        a = (im.geometry(k, k, (s, s), (p, p), (1, 1), P, Q),)
        fns = {
            "unfold table": lambda: im.im2col(x, 0, N, cols, *a, mode=im.TABLE),
            "unfold rows": lambda: im.im2col(x, 0, N, cols, *a, mode=im.ROWS),
            "fold table": lambda: im.col2im(g, dx, 0, N, *a, mode=im.TABLE),
            "fold rows": lambda: im.col2im(g, dx, 0, N, *a, mode=im.ROWS),
        }
        row = {"chunk": f"{N}x{C}x{H}x{W}", "kernel": f"{k}x{k}/{s}",
               "unfold mode": "table" if im.unfold_mode(k, k, (s, s), P, Q) == im.TABLE else "rows",
               "fold mode": "table" if im.unfold_mode(k, k, (s, s), P, Q, adjoint=True) == im.TABLE else "rows"}
        repeats = 50 if cols.size < 10**6 else 10
        for label, serial_below in (("1 thread", 1 << 62), ("2 threads", _threads.SERIAL_MAX_WORK)):
            with _threads.serial_below(serial_below):
                best = {}
                for _ in range(rounds):
                    for name, fn in fns.items():
                        med, _, _ = harness.median_time(fn, 3, repeats, 5.0, min_repeats=3)
                        best[name] = min(best.get(name, np.inf), med * 1e3)
            for name, us in best.items():
                row[f"{name}, {label} (us)"] = us
        rows.append(row)
        log(" | ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in row.values()))
    return rows


# (N, C, H, W) of 2x2/2 max pools: the digits convnet's two at batch 64, the Fashion-MNIST
# convnet's first (a row of 14 outputs) at batch 128, then ResNet-sized planes with short rows
POOL_CASES = ((64, 16, 8, 8), (64, 32, 4, 4), (128, 32, 28, 28), (16, 256, 14, 14), (16, 512, 7, 7))

# the forms of the max pool with argmax, each forced through the module's switches:
# (TWO_BY_TWO, ROWS_MIN_Q, TABLE_MAX); None keeps the module's value
POOL_FORMS = {"2x2": (True, None, None), "rows": (False, 1, None), "table": (False, 10**9, None),
              "windows": (False, 10**9, 0)}


def pool_sweep(rounds: int = 3, threads: int = 2, log=print) -> list[dict]:
    """Max pool with argmax, every form on every case (``threads`` threads): its own 2x2 kernel,
    row by row, tap by tap through the gather table, window by window."""
    harness.set_threads(threads)
    from minicnn.backends.numba import pool
    from minicnn.backends.numpy.pool import maxpool2d_forward as ref_pool

    rows = []
    rng = np.random.default_rng(1)
    for shape in POOL_CASES:
        x = rng.standard_normal(shape).astype(np.float32)
        want = ref_pool(x, (2, 2), (2, 2), (0, 0))
        row = {"input": "x".join(map(str, shape)), "pool": "2x2/2"}
        best = {}
        saved = pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX
        try:
            for _ in range(rounds):
                for name, switches in POOL_FORMS.items():
                    pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX = (
                        s if s is not None else keep for s, keep in zip(switches, saved))
                    got = pool.maxpool2d_forward(x, 2, 2, 0)
                    if not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])):
                        raise AssertionError(f"max pool form {name} differs from the reference on {shape}")
                    med, _, _ = harness.median_time(lambda: pool.maxpool2d_forward(x, 2, 2, 0), 3, 200, 5.0,
                                                    min_repeats=3)
                    best[name] = min(best.get(name, np.inf), med * 1e3)
        finally:
            pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX = saved
        for name, us in best.items():
            row[f"{name} (us)"] = us
        rows.append(row)
        log(" | ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in row.values()))
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[k]:.0f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pools", action="store_true", help="time the max pool's forms instead")
    args = ap.parse_args(argv)
    if args.pools:
        rows = pool_sweep(rounds=args.rounds, threads=args.threads)
    else:
        rows = sweep(rounds=args.rounds, threads=args.threads)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
