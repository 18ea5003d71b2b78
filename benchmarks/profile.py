"""Where a ResNet-18 forward (or training step) spends its time, op by op.

    python -m benchmarks.profile [--backend numba] [--batch 8] [--mode plain|compiled|train] [--repeats 3]

Every op of the chosen backend's table is wrapped with a timer for the duration of the run (the
op seam makes this a dictionary swap), so the table shows each op's share of the whole pass, and
the time outside ops (Python, the layers' bookkeeping). This is how a slow kernel is found before
the harness in ``minicnn/bench/ops.py`` (``minicnn bench ops``) is pointed at it.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from . import harness


@contextlib.contextmanager
def timed_ops(backend_name: str):
    """Within the block every op of ``backend_name`` adds its wall time to the yielded dict."""
    from minicnn.backends import load

    be = load(backend_name)
    stats: dict = {}
    original = dict(be.OPS)

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if backend_name == "cupy":  # kernels launch asynchronously: wait for them
                import cupy

                cupy.cuda.get_current_stream().synchronize()
            dt = time.perf_counter() - t0
            key = name
            if name.startswith("conv2d") and len(args) >= 2:
                x, w = (args[1], args[2]) if name == "conv2d_backward" else (args[0], args[1])
                key = f"{name} {w.shape[1]}->{w.shape[0]} {w.shape[2]}x{w.shape[3]} @{x.shape[2]}"
            tot = stats.setdefault(key, [0.0, 0])
            tot[0] += dt
            tot[1] += 1
            return out

        return timed

    try:
        for name, fn in original.items():
            be.OPS[name] = wrap(name, fn)
        yield stats
    finally:
        be.OPS.clear()
        be.OPS.update(original)


def profile(backend: str = "numba", batch: int = 8, mode: str = "plain", repeats: int = 3, size: int = 224,
            threads: int = 2) -> dict:
    """Per-op milliseconds per pass (mean over ``repeats`` after one warm-up) and the total."""
    import minicnn as mc
    from minicnn import nn, optim
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18, seeded_state_dict

    harness.set_threads(threads)
    model = resnet18(weights=seeded_state_dict("resnet18", seed=0))
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 1000, batch)
    if mode == "compiled":
        fast = compile_inference(model.eval())

        def step():
            return mc.to_numpy(fast(x))
    elif mode == "plain":
        model.eval()

        def step():
            with mc.no_grad():
                return mc.to_numpy(model(x))
    elif mode == "train":
        model.train()
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward_params(loss_fn.backward())
            opt.step()
            return loss
    else:
        raise ValueError(f"unknown mode {mode!r}; choose plain, compiled or train")
    with mc.backend(backend):
        step()  # warm-up: compilation, workspaces
        with timed_ops(backend) as stats:
            t0 = time.perf_counter()
            for _ in range(repeats):
                step()
            total = (time.perf_counter() - t0) / repeats * 1e3
    rows = sorted(((k, v[0] / repeats * 1e3, v[1] // repeats) for k, v in stats.items()), key=lambda r: -r[1])
    return {"backend": backend, "batch": batch, "mode": mode, "size": size, "total_ms": total,
            "ops_ms": sum(r[1] for r in rows), "rows": [{"op": k, "ms": ms, "calls": c} for k, ms, c in rows]}


def markdown(res: dict) -> str:
    """The breakdown as a table, largest first, with the time spent outside ops last."""
    lines = [f"ResNet-18 {res['mode']} pass, batch {res['batch']}, {res['size']}x{res['size']}, backend {res['backend']}: "
             f"{res['total_ms']:.1f} ms per pass", "",
             "| op (conv: in->out kxk @input side) | calls | ms per pass | share |", "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['op']} | {r['calls']} | {r['ms']:.2f} | {100 * r['ms'] / res['total_ms']:.1f}% |")
    rest = res["total_ms"] - res["ops_ms"]
    lines.append(f"| (outside ops) | | {rest:.2f} | {100 * rest / res['total_ms']:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry."""
    import argparse

    ap = argparse.ArgumentParser(description="per-op time breakdown of a ResNet-18 pass")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mode", default="plain", choices=["plain", "compiled", "train"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    print(markdown(profile(a.backend, a.batch, a.mode, a.repeats, a.size, a.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
