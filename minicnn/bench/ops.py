"""Per-op cases: every distinct ResNet-18 conv (forward, fused forward, dX, dW), the maxpool, the fc.

    minicnn bench ops [--quick] [--out DIR]      (or: python -m minicnn.bench.ops ...)

Each case builds float32 inputs in the minicnn op signature; ``minicnn.bench.harness`` validates every
variant against the numpy reference and times the ones that pass.
"""
from __future__ import annotations

import numpy as np

from .harness import Case
from .shapes import ConvShape, LinearShape, PoolShape, resnet18_layers, small_convs


def _randn(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _conv_params(s: ConvShape):
    return (s.stride, s.stride), (s.pad, s.pad), (1, 1), 1


def conv_forward_case(s: ConvShape, group="") -> Case:
    """y = conv(x, w) + b at shape ``s``."""
    stride, pad, dil, groups = _conv_params(s)

    def make(rng):
        x = _randn(rng, (s.n, s.c, s.h, s.w))
        w = _randn(rng, (s.k, s.c, s.r, s.s)) * np.float32(1 / np.sqrt(s.c * s.r * s.s))
        return (x, w, _randn(rng, (s.k,)), stride, pad, dil, groups)

    return Case("conv2d_forward", "conv2d_forward", s.label, make, lambda fn, a: fn(*a),
                s.flops, s.bytes_forward(), s.macs, s.count, s.as_dict(), group)


def conv_fused_case(s: ConvShape, group="") -> Case:
    """The inference epilogue: relu(conv(x, w) + b + residual) at shape ``s``."""
    stride, pad, dil, groups = _conv_params(s)

    def make(rng):
        x = _randn(rng, (s.n, s.c, s.h, s.w))
        w = _randn(rng, (s.k, s.c, s.r, s.s)) * np.float32(1 / np.sqrt(s.c * s.r * s.s))
        res = _randn(rng, (s.n, s.k, s.p, s.q))
        return (x, w, _randn(rng, (s.k,)), stride, pad, dil, groups, res, True)

    return Case("conv2d_fused_forward", "conv2d_fused_forward", s.label, make, lambda fn, a: fn(*a),
                s.flops, s.bytes_forward(residual=True), s.macs, s.count, s.as_dict(), group)


def _conv_backward_case(s: ConvShape, which: str, group="") -> Case:
    stride, pad, dil, groups = _conv_params(s)
    need_dx, need_dw = which == "dx", which == "dw"

    def make(rng):
        x = _randn(rng, (s.n, s.c, s.h, s.w))
        w = _randn(rng, (s.k, s.c, s.r, s.s)) * np.float32(1 / np.sqrt(s.c * s.r * s.s))
        dy = _randn(rng, (s.n, s.k, s.p, s.q))
        return (dy, x, w, stride, pad, dil, groups, need_dx, need_dw, False)

    def call(fn, a):
        dx, dw, _ = fn(*a)
        return dx if need_dx else dw

    nbytes = s.bytes_dx() if need_dx else s.bytes_dw()
    return Case(f"conv2d_backward_{which}", "conv2d_backward", s.label, make, call,
                s.flops, nbytes, s.macs, s.count, s.as_dict(), group)


def conv_backward_dx_case(s: ConvShape, group="") -> Case:
    """dL/dx of the conv at shape ``s`` (the full convolution of dy with the flipped kernel)."""
    return _conv_backward_case(s, "dx", group)


def conv_backward_dw_case(s: ConvShape, group="") -> Case:
    """dL/dw of the conv at shape ``s`` (the correlation of x with dy)."""
    return _conv_backward_case(s, "dw", group)


def maxpool_case(s: PoolShape, group="") -> Case:
    """Max pooling forward; the winner indices are validated too (exactly)."""
    def make(rng):
        return (_randn(rng, (s.n, s.c, s.h, s.w)), (s.r, s.r), (s.stride, s.stride), (s.pad, s.pad), (1, 1))

    return Case("maxpool2d_forward", "maxpool2d_forward", s.label, make, lambda fn, a: tuple(fn(*a)),
                s.flops, s.bytes_forward(), s.flops, s.count, s.as_dict(), group)


def linear_case(s: LinearShape, group="") -> Case:
    """The classifier: y = x W^T + b."""
    def make(rng):
        x = _randn(rng, (s.n, s.f))
        w = _randn(rng, (s.o, s.f)) * np.float32(1 / np.sqrt(s.f))
        return (x, w, _randn(rng, (s.o,)))

    return Case("linear_forward", "linear_forward", s.label, make, lambda fn, a: fn(*a),
                s.flops, s.bytes_forward(), s.macs, s.count, s.as_dict(), group)


def resnet18_cases(quick: bool = False, batches=None, backward: bool = True, fused: bool = True,
                   size: int = 224) -> list[Case]:
    """All cases of the ops suite.

    Full: forward and fused forward for every distinct ResNet-18 conv at batch 1 and 8, dX and dW
    at batch 8 (a training batch), the maxpool and fc at both batches, and the small digits convs
    (where the seven-loop kernel can run). Quick: batch 1 only, and backward at batch 1.
    """
    batches = batches or ((1,) if quick else (1, 8))
    cases: list[Case] = []
    for s in small_convs(8):
        cases.append(conv_forward_case(s, "digits n8"))
    for n in batches:
        convs, pool, fc = resnet18_layers(n, size)
        group = f"resnet18 n{n}"
        cases += [conv_forward_case(s, group) for s in convs]
        if fused:
            cases += [conv_fused_case(s, group) for s in convs]
        cases.append(maxpool_case(pool, group))
        cases.append(linear_case(fc, group))
    if backward:
        n = batches[-1]
        convs, _, _ = resnet18_layers(n, size)
        group = f"resnet18 n{n}"
        cases += [conv_backward_dx_case(s, group) for s in convs]
        cases += [conv_backward_dw_case(s, group) for s in convs]
    return cases


def run(quick: bool = False, out_dir: str | None = None, threads: int = 2, log=print, variants=None,
        cases=None, plot: bool = True, env=None, wait_quiet_s: float = 0.0) -> dict:
    """Run the ops suite; print the markdown table; write ``ops.json``, ``ops.md`` and
    ``roofline.png`` (when matplotlib is installed) to ``out_dir``. ``env`` reuses ceilings already
    measured in this process."""
    import importlib.util
    import os

    from . import harness

    if out_dir:
        out_dir = harness.check_out_dir(out_dir, quick)  # before the minutes of measuring, not after
    env = env or harness.setup(threads=threads, quick=quick, wait_quiet_s=wait_quiet_s, log=log)
    log(f"sgemm {env.sgemm_gflops:.1f} GFLOP/s (n={env.sgemm_n}), copy {env.copy_gbps:.1f} GB/s")
    variants = harness.discover_variants() if variants is None else variants
    try:
        import sys

        if "minicnn.backends.numba" in sys.modules:
            env.machine["numba_threading_layer"] = sys.modules["minicnn.backends.numba"].threading_layer()
    except Exception:  # noqa: BLE001 - informational only
        pass
    log("variants: " + ", ".join(sorted({f"{v.name}" for v in variants})))
    cases = resnet18_cases(quick=quick) if cases is None else cases
    results = harness.run_cases(cases, variants, env, log=log)
    text = harness.markdown(results, env)
    log("")
    log(text)
    payload = {"suite": "ops", "env": harness.env_dict(env), "results": results}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        payload["json"] = harness.write_json(os.path.join(out_dir, "ops.json"), payload)
        if plot and importlib.util.find_spec("matplotlib") is None:
            # an optional dependency (the "bench" extra): the measurements are written without the plot
            log("roofline.png not drawn: matplotlib is not installed (pip install matplotlib)")
        elif plot:
            from .roofline import plot_roofline

            payload["plot"] = plot_roofline(results, env.sgemm_gflops, env.copy_gbps,
                                            os.path.join(out_dir, "roofline.png"))
        with open(os.path.join(out_dir, "ops.md"), "w") as f:
            f.write(text + "\n")
    return payload


def main(argv=None) -> int:
    """Command-line entry: ``python -m minicnn.bench.ops [--quick] [--out DIR] [--threads N]``."""
    import argparse

    ap = argparse.ArgumentParser(description="validate and time every kernel variant on ResNet-18 shapes")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    ap.add_argument("--out", default="bench-results",
                    help="directory for ops.json, ops.md, roofline.png (default ./bench-results)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for other processes to leave the CPUs")
    a = ap.parse_args(argv)
    from .harness import check_out_dir

    try:
        check_out_dir(a.out, a.quick)
    except ValueError as e:
        ap.error(str(e))
    run(a.quick, a.out, a.threads, wait_quiet_s=a.wait_quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
