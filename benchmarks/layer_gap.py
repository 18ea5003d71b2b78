"""Per-layer time of the compiled ResNet-18 (numba backend) against ONNX Runtime's per-node profile.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.layer_gap --batches 1,8

For each batch size, in one process and on the same number of threads:

- minicnn: ``compile_inference(resnet18)`` is built and warmed (its autotuner picks every conv's
  variant), then ``--rounds`` forward passes time each fused conv as it runs in the pass ("in
  pass": its weights and input come from wherever the pass left them), and each conv is re-run
  on its recorded input ``--rounds`` times on its own ("alone": weights and workspaces warm in
  cache, as the autotuner times it). Of the rounds the best is kept (``--stat median``: the
  median). The stem row is the stem conv with its fused max pool; "rest" is, per timed pass, the
  pass's time minus its convs' times (the input's layout copy, average pool, fc, Python between
  layers), summarised the same way; "whole forward" comes from passes run without the timing.
- ONNX Runtime: the same weights (through the PyTorch reference model and ``torch.onnx.export``)
  in a session with ``enable_profiling``; every node's kernel time is collected over
  ``--rounds`` runs after two warm-up runs, summarised the same way. ORT's node names
  keep the exporter's module path (``_ort_name``), so each Conv node (fused with its Relu or
  Add + Relu by ORT) maps to one minicnn conv; the stem row adds ORT's MaxPool; layout
  reorders, Adds, Relus, the pool and Gemm go to "rest".

The table lists per conv: the variant minicnn's autotuner picked, its times, the ratio of the
in-pass time to ORT's (above 1: minicnn is slower), GFLOP/s of each (2 * MACs of the conv, so a
Winograd conv, which multiplies less, can pass the ceiling), and those as a share of numpy's sgemm
on the same threads (2048^3, measured at the start: the roofline's compute ceiling), so each
layer's remaining distance to the machine's GEMM peak shows beside its distance to ORT.
minicnn's batch split (one slice of a large batch per thread) is off here: each conv is timed in
one pass over the whole batch on all threads, as ORT runs it; ``minicnn bench e2e`` times the
whole forward as users get it.
The machine's load (``os.getloadavg``) is printed before and after: the numbers are only as good
as the quiet.
``--layout nchw`` or ``cl`` fixes minicnn's activation layout (default: the backend's choice, which
for numba is channels-last; ``compile_inference``'s ``channels_last``).
With ``--threads 1`` every kernel runs on the calling thread (numba's region and ORT's session
alike), so a last row gives each whole forward's CPU time on that thread, which time spent
waiting for a core on a busy machine does not inflate.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
import warnings

import numpy as np


def _conv_macs(x_shape, w_shape, y_shape) -> int:
    K, Cg, R, S = w_shape
    return int(np.prod(y_shape)) * Cg * R * S


@contextlib.contextmanager
def _recording(records, times):
    """While active, every fused conv call of a compiled model is timed (``times[name]`` gets one
    entry per call) and, unless ``records`` is None, recorded there as (name, variant, function,
    args, kwargs, conv output shape, weight shape) for the isolated rerun."""
    from minicnn import inference

    cls = inference._FusedConv
    call, pooled = cls.__call__, cls.pooled
    record = records is not None
    inside = []  # non-empty while a stem's pooled() runs (channels-last: its conv is an ordinary call)

    def rec_call(self, x, ctx, residual=None, epilogue=True):
        if inside:
            return call(self, x, ctx, residual, epilogue)
        t = time.perf_counter()
        y = call(self, x, ctx, residual, epilogue)
        times.setdefault(self.name, []).append(time.perf_counter() - t)
        if record:
            w, b = self.arrays(ctx.be)
            name, fn = self.chosen.get(self.tune_key(x, ctx, residual is not None), ("op", ctx.fused))
            args = (x.copy(), w, b, self.stride, self.padding, self.dilation, self.groups,
                    None if residual is None else residual.copy(), self.relu)
            records.append((self.name, name, fn, args, {"out": np.empty_like(y)}, y.shape, w.shape))
        return y

    def rec_pooled(self, x, ctx, fn, pool_args):
        t = time.perf_counter()
        inside.append(1)
        try:
            y = pooled(self, x, ctx, fn, pool_args)
        finally:
            inside.pop()
        times.setdefault(self.name, []).append(time.perf_counter() - t)
        if record:
            w, b = self.arrays(ctx.be)
            pk, ps, pp, pd = ((a, a) if isinstance(a, int) else tuple(a) for a in pool_args)
            args = (x.copy(), w, b, self.stride, self.padding, self.dilation, self.groups, self.relu, pk, ps, pp, pd)
            H, W = (x.shape[1], x.shape[2]) if ctx.cl else (x.shape[2], x.shape[3])
            conv_shape = (x.shape[0], w.shape[0],
                          (H + 2 * self.padding[0] - w.shape[2]) // self.stride[0] + 1,
                          (W + 2 * self.padding[1] - w.shape[3]) // self.stride[1] + 1)
            if ctx.cl:  # the bare conv the autotuner picked, then the max pool with bias and ReLU
                conv_fn = self.chosen.get(self.tune_key(x, ctx, False, False), ("op", ctx.fused))[1]
                be = ctx.be

                def fn(x, w, b, stride, padding, dilation, groups, relu, pk, ps, pp, pd, out, conv_fn=conv_fn):
                    h = conv_fn(x, w, None, stride, padding, dilation, groups, None, False)
                    return be.maxpool2d_forward_cl(h, pk, ps, pp, pd, out=out, bias=b, relu=relu)

            records.append((self.name, "conv+maxpool", fn, args, {"out": np.empty_like(y)}, conv_shape, w.shape))
        return y

    cls.__call__, cls.pooled = rec_call, rec_pooled
    try:
        yield
    finally:
        cls.__call__, cls.pooled = call, pooled


# how the rounds of one measurement are summarised: "min" (default: load from other processes
# only ever adds time, so the best run is the steadiest figure on a shared machine) or "median"
STAT = {"min": min, "median": statistics.median}
_stat = min


def _time_ms(fn, rounds, clock=time.perf_counter):
    ts = []
    for _ in range(rounds):
        t = clock()
        fn()
        ts.append(clock() - t)
    return 1e3 * _stat(ts)


def minicnn_layers(sd, n, rounds, size=224, channels_last=None):
    """[(conv name, variant, in-pass ms, isolated ms, MACs)], the whole forward's ms, its CPU ms on
    the calling thread, and the "rest" of the timed passes (each pass's time minus its convs'), at
    batch ``n``, without the batch split (one pass over the batch)."""
    from minicnn import inference

    x = np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)
    # one pass over the whole batch, every kernel on all threads, as ORT runs it: a batch split
    # across threads (CompiledModel._in_parts) would time each conv once per slice, on one thread
    split_at, inference.BATCH_SPLIT_MIN_IMAGES = inference.BATCH_SPLIT_MIN_IMAGES, n + 1
    try:
        return _minicnn_layers(sd, x, rounds, channels_last)
    finally:
        inference.BATCH_SPLIT_MIN_IMAGES = split_at


def _minicnn_layers(sd, x, rounds, channels_last=None):
    import minicnn as mc
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18

    with mc.backend("numba"), mc.no_grad():
        fast = compile_inference(resnet18(weights=sd).eval(), channels_last=channels_last)
        fast(x)
        fast(x)
        total = _time_ms(lambda: fast(x), rounds)
        cpu = _time_ms(lambda: fast(x), rounds, time.thread_time)
        records, times = [], {}
        with _recording(records, {}):
            fast(x)
        passes = []
        with _recording(None, times):
            for _ in range(rounds):
                t = time.perf_counter()
                fast(x)
                passes.append(time.perf_counter() - t)
        # every conv runs once per pass (no split here): entry i of each list is pass i's
        rest = 1e3 * _stat([p - sum(ts[i] for ts in times.values()) for i, p in enumerate(passes)])
        rows = []
        for name, variant, fn, args, kwargs, y_shape, w_shape in records:
            fn(*args, **kwargs)
            rows.append((name, variant, 1e3 * _stat(times[name]), _time_ms(lambda: fn(*args, **kwargs), rounds),
                         _conv_macs(args[0].shape, w_shape, y_shape)))
    return rows, total, cpu, rest


def _ort_name(node: str, op: str) -> str | None:
    """minicnn's conv name for an ORT node, "maxpool", or None (everything else).

    ORT names a node it rewrote (a Conv fused with its Relu or Add + Relu, in its NCHWc layout) by
    the tensor it outputs: a block's first conv by the block's ``relu``, its second by ``conv2``.
    """
    if op == "MaxPool":
        return "maxpool"
    if op not in ("Conv", "FusedConv"):
        return None
    if node.startswith("/relu/") or node.startswith("/conv1/"):
        return "conv1"
    m = re.match(r"^/layer\d/(layer\d\.\d)/(relu|conv1|conv2|downsample)/", node)
    if m is None:
        return None
    part = {"relu": "conv1"}.get(m.group(2), m.group(2))
    return f"{m.group(1)}.{part}"


def ort_layers(torch_model, n, threads, rounds, tmp, size=224):
    """{minicnn conv name or "rest": ms per run} from ORT's profile, the run's ms and its CPU ms
    on the calling thread."""
    import onnxruntime as ort
    import torch

    path = os.path.join(tmp, "resnet18.onnx")
    if not os.path.exists(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch_model, (torch.zeros(1, 3, size, size),), path, dynamo=False,
                              input_names=["x"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, f"ort_b{n}")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)
    warm = 2
    run_ms, cpu_ms = [], []
    for i in range(warm + rounds):
        t, c = time.perf_counter(), time.thread_time()
        sess.run(None, {"x": x})
        if i >= warm:
            run_ms.append(1e3 * (time.perf_counter() - t))
            cpu_ms.append(1e3 * (time.thread_time() - c))
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    starts = sorted(e["ts"] for e in runs)
    first = starts[warm] if len(starts) > warm else 0
    per_run: dict = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < first:
            continue
        run = sum(1 for s in starts if s <= e["ts"]) - 1
        key = _ort_name(e["name"], e.get("args", {}).get("op_name", "")) or "rest"
        per_run.setdefault(key, {}).setdefault(run, 0.0)
        per_run[key][run] += e["dur"] / 1e3
    return {k: _stat(list(v.values())) for k, v in per_run.items()}, _stat(run_ms), _stat(cpu_ms)


def table(rows, total, ort, ort_total, n, cpu=None, ort_cpu=None, peak=float("nan"), rest=None):
    lines = ["| conv | minicnn variant | minicnn ms in pass | alone | ORT ms | ratio | minicnn GFLOP/s | ORT GFLOP/s "
             "| minicnn % of sgemm | ORT % of sgemm |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    conv_sum = alone_sum = ort_sum = 0.0
    for name, variant, ms, alone, macs in rows:
        o = ort.get(name, float("nan")) + (ort.get("maxpool", 0.0) if name == "conv1" else 0.0)
        conv_sum += ms
        alone_sum += alone
        ort_sum += o
        mine, theirs = 2 * macs / ms / 1e6, 2 * macs / o / 1e6
        lines.append(f"| {name} | {variant} | {ms:.2f} | {alone:.2f} | {o:.2f} | {ms / o:.2f} | "
                     f"{mine:.0f} | {theirs:.0f} | {100 * mine / peak:.0f} | {100 * theirs / peak:.0f} |")
    lines.append(f"| convs | | {conv_sum:.2f} | {alone_sum:.2f} | {ort_sum:.2f} | {conv_sum / ort_sum:.2f} | | | | |")
    rest = total - conv_sum if rest is None else rest
    lines.append(f"| rest | | {rest:.2f} | | {ort.get('rest', 0.0):.2f} | | | | | |")
    lines.append(f"| whole forward | | {total:.2f} | | {ort_total:.2f} | {total / ort_total:.2f} | | | | |")
    if cpu is not None:  # one thread: all work on the calling thread, so CPU time leaves out waiting for a core
        lines.append(f"| whole forward, CPU time | | {cpu:.2f} | | {ort_cpu:.2f} | {cpu / ort_cpu:.2f} | | | | |")
    return f"Batch {n}:\n\n" + "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="timed runs per layer and per ORT session")
    ap.add_argument("--stat", choices=tuple(STAT), default="min", help="summary of the rounds (default min)")
    ap.add_argument("--layout", choices=("auto", "nchw", "cl"), default="auto",
                    help="minicnn's activations: the backend's choice (numba: channels-last), NCHW or channels-last")
    ap.add_argument("--skip-ort", action="store_true", help="minicnn's layers only (a quicker A/B)")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    global _stat
    _stat = STAT[args.stat]

    from minicnn.bench import harness

    # before numba starts: BLAS through threadpoolctl, numba through NUMBA_NUM_THREADS (calling
    # numba.set_num_threads slows every parallel region of the backend; see harness.set_threads)
    harness.set_threads(args.threads)
    from minicnn.models.resnet import seeded_state_dict

    sd = seeded_state_dict("resnet18", seed=0)
    torch_model = None
    if not args.skip_ort:  # ORT runs the PyTorch reference model, exported
        import torch

        from minicnn.bench import torch_reference

        torch.set_num_threads(args.threads)
        torch_model = torch_reference.build("resnet18", state_dict=sd).eval()
    # the roofline's compute ceiling on these threads: what a conv's GFLOP/s are a share of
    peak = harness.measure_sgemm(2048)
    print(f"load average before: {os.getloadavg()[0]:.2f}; threads {args.threads}; layout {args.layout}; "
          f"{args.stat} of {args.rounds} "
          f"rounds; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; numpy sgemm 2048^3 "
          f"{peak:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="minicnn-layer-gap-") as tmp:
        for n in batches:
            layout = {"auto": None, "nchw": False, "cl": True}[args.layout]
            rows, total, cpu, rest = minicnn_layers(sd, n, args.rounds, channels_last=layout)
            if args.skip_ort:
                ort, ort_total, ort_cpu = {}, float("nan"), float("nan")
            else:
                ort, ort_total, ort_cpu = ort_layers(torch_model, n, args.threads, args.rounds, tmp)
            one = args.threads == 1
            print(table(rows, total, ort, ort_total, n, cpu if one else None, ort_cpu if one else None, peak,
                        rest) + "\n", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
