"""The benchmark harness: validate every kernel variant against the numpy reference, then time it.

In the spirit of llm.c's ``dev/cuda``: for each case (an op at one shape) the numpy reference is
run once; then every variant of every backend is run on the same inputs and compared with it. A
variant whose output differs by more than ``tol`` (max |out - ref| / max |ref|, per output) is
reported as FAIL and is *not* timed: a fast wrong kernel is not a result. Variants that pass are
timed with warm-up runs and repeats (CUDA events on the GPU, ``perf_counter`` on the CPU) and
reported as median milliseconds, GFLOP/s, and percent of the float32 matrix-multiply (sgemm) rate
measured on this machine in the same run.

    from minicnn.bench import harness, ops
    env = harness.setup(threads=2)
    results = harness.run_cases(ops.resnet18_cases(quick=True), harness.discover_variants(), env)
    print(harness.markdown(results, env))
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

DEFAULT_TOL = 1e-3
"""Max relative error a variant may show and still pass. float32 sums of a few thousand terms in
another order differ by ~1e-6 of the output's scale; a kernel that is wrong (a shifted tap, a
missing channel, no bias) is off by far more than 1e-3."""


# -- what is measured --------------------------------------------------------------------------


@dataclass
class Case:
    """One op at one shape.

    ``op`` is what is measured (``conv2d_backward_dx``), ``kernel`` the op family whose variants can
    compute it (``conv2d_backward``); ``make_args(rng)`` returns the positional arguments in the
    minicnn op signature (numpy arrays, tuples); ``call(fn, args)`` runs a kernel and returns the
    outputs compared (a tuple of arrays); ``flops`` and ``bytes`` give GFLOP/s and arithmetic
    intensity; ``count`` is how often the network uses this shape; ``macs`` bounds slow variants.
    """

    op: str
    kernel: str
    label: str
    make_args: Callable[[np.random.Generator], tuple]
    call: Callable[[Callable, tuple], tuple]
    flops: int
    bytes: int
    macs: int = 0
    count: int = 1
    shape: dict = field(default_factory=dict)
    group: str = ""


@dataclass
class Variant:
    """One implementation of a kernel family.

    ``fn`` has the minicnn op's signature. ``prepare(args)`` moves the numpy arguments to where the
    variant computes (GPU memory, torch tensors) and ``fetch(out)`` brings one output back to numpy;
    neither is timed. ``max_macs`` skips cases bigger than the variant can finish in reasonable
    time (the seven-loop teaching kernel). ``device`` is ``"cpu"`` or ``"gpu"`` (timed with CUDA events).
    """

    name: str
    backend: str
    kernel: str
    fn: Callable
    device: str = "cpu"
    prepare: Callable[[tuple], tuple] | None = None
    fetch: Callable[[Any], np.ndarray] | None = None
    max_macs: int | None = None
    note: str = ""
    # a variant built outside the normal op signature (torch) supplies its own way to run a case
    call: Callable[[Callable, "Case", tuple], tuple] | None = None
    # ``applies(args) -> bool``: False marks a shape the variant does not handle (n/a, not FAIL)
    applies: Callable[[tuple], bool] | None = None


@dataclass
class Env:
    """The machine and its measured ceilings, shared by every case in a run."""

    threads: int
    quick: bool
    sgemm_gflops: float
    sgemm_n: int
    copy_gbps: float
    copy_mb: int
    machine: dict
    warmup: int = 1
    repeats: int = 7
    max_seconds: float = 0.5
    other_load_at_start: float | None = None
    # per measurement: wait up to this long for quiet first, and redo a measurement taken while
    # other processes used more than ``quiet_threshold`` cores (0 = measure whatever the load)
    quiet_wait_s: float = 0.0
    quiet_threshold: float = 0.3
    quiet_retries: int = 2


# -- the machine's other work -------------------------------------------------------------------


class LoadMeter:
    """CPU time other processes used while we measured, in cores (0.0 = the machine was ours).

    Timings on a shared machine are only as good as its quiet; every run records this so a
    reader can tell a slow kernel from a busy neighbour. Linux only (reads /proc/stat); elsewhere
    ``other_cores()`` returns None.
    """

    def __init__(self):
        self.start()

    @staticmethod
    def _busy_seconds():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self):
        self._t0, self._b0, self._o0 = time.perf_counter(), self._busy_seconds(), self._own_seconds()
        return self

    def other_cores(self):
        """Mean number of cores busy with other processes since ``start()``, between 0 and the
        machine's CPU count.

        /proc/stat counts in clock ticks (10 ms) and our own CPU time is read a moment apart from
        it, so over a short window the difference can claim more cores than exist; no other
        process can use more than all of them, and the reading is clamped there.
        """
        b1 = self._busy_seconds()
        if b1 is None or self._b0 is None:
            return None
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return None
        other = ((b1 - self._b0) - (self._own_seconds() - self._o0)) / wall
        return min(max(0.0, other), float(os.cpu_count() or 1))


def quietly(measure, env: "Env"):
    """``(result, other_cores)`` of ``measure()``, taken when the machine is quiet if it can be.

    With ``env.quiet_wait_s`` > 0: wait for quiet first, and if other processes still used more
    than ``env.quiet_threshold`` cores during the measurement, redo it (``env.quiet_retries``
    times); the least disturbed attempt is returned.
    """
    best = None
    for _ in range(1 + (env.quiet_retries if env.quiet_wait_s > 0 else 0)):
        if env.quiet_wait_s > 0:
            wait_for_quiet(env.quiet_wait_s, env.quiet_threshold)
        meter = LoadMeter()
        result = measure()
        other = meter.other_cores()
        if best is None or (other is not None and (best[1] is None or other < best[1])):
            best = (result, other)
        if env.quiet_wait_s <= 0 or other is None or other <= env.quiet_threshold:
            break
    return best


def wait_for_quiet(max_wait_s: float = 0.0, threshold: float = 0.25, log=None):
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold`` cores; return the last reading."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        meter = LoadMeter()
        time.sleep(1.0)
        other = meter.other_cores()
        if other is None or other < threshold or time.perf_counter() >= deadline:
            return other
        if log:
            log(f"waiting for a quiet machine: other processes use {other:.2f} cores")


# -- where results go ---------------------------------------------------------------------------

# The run that docs/benchmarks.md quotes, kept in a source checkout's benchmarks/results (beside
# this package's folder when it is imported from a checkout; absent in an installed copy).
COMMITTED_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "benchmarks", "results")


def is_committed_results(path: str) -> bool:
    """True for the checkout's ``benchmarks/results``: the one beside this package, or any
    ``benchmarks/results`` folder of a checkout (a ``pyproject.toml`` beside ``benchmarks/``),
    so an installed copy run inside a clone recognises it too."""
    real = os.path.realpath(path)
    if real == os.path.realpath(COMMITTED_RESULTS):
        return True
    parent = os.path.dirname(real)
    return (os.path.basename(real) == "results" and os.path.basename(parent) == "benchmarks"
            and os.path.isfile(os.path.join(os.path.dirname(parent), "pyproject.toml")))


def check_out_dir(out: str, quick: bool) -> str:
    """``out`` as an absolute path; a ``--quick`` run may not write over the committed results."""
    path = os.path.abspath(out)
    if quick and is_committed_results(path):
        raise ValueError(f"--quick results would overwrite the committed full run in {out}; name another --out DIR")
    return path


# -- ceilings ----------------------------------------------------------------------------------


def median_time(fn, warmup=2, repeats=10, max_seconds=1.0, min_repeats=3, timer="cpu") -> tuple[float, float, int]:
    """(median ms, min ms, runs) of ``fn()`` after ``warmup`` untimed calls.

    Stops after ``repeats`` runs or once ``max_seconds`` have been spent timing, whichever is
    first, but never before ``min_repeats`` runs. ``timer="gpu"`` brackets each call with CUDA
    events (cupy) so the time is the device's, not the launch's.
    """
    for _ in range(warmup):
        fn()
    if timer == "gpu":
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()

        def once():
            start.record()
            fn()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end)
    else:
        def once():
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

    times = []
    spent = time.perf_counter()
    while len(times) < repeats:
        times.append(once())
        if len(times) >= min_repeats and time.perf_counter() - spent > max_seconds:
            break
    return statistics.median(times), min(times), len(times)


def measure_sgemm(n=2048, repeats=5) -> float:
    """numpy float32 ``a @ b`` GFLOP/s for square n x n matrices: the compute ceiling we compare to."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    med, _, _ = median_time(lambda: np.matmul(a, b, out=out), warmup=1, repeats=repeats, max_seconds=5.0)
    return 2.0 * n ** 3 / (med * 1e-3) / 1e9


def measure_copy_bandwidth(mb=256, repeats=5) -> float:
    """GB/s of a large float32 array copy (bytes read + bytes written): the memory ceiling."""
    n = mb * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    med, _, _ = median_time(lambda: np.copyto(dst, src), warmup=1, repeats=repeats, max_seconds=5.0)
    return 2.0 * src.nbytes / (med * 1e-3) / 1e9


def machine_info() -> dict:
    """CPU model, core count and library versions, for the report."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        with open("/proc/loadavg") as f:  # other work on the machine skews timings; say so in the report
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    from importlib import metadata

    # versions from the installed metadata: importing torch here would start its OpenMP runtime
    # before numba's, which slowed the numba backend's parallel kernels about tenfold
    for mod, dist in (("numba", "numba"), ("torch", "torch"), ("onnxruntime", "onnxruntime"), ("cupy", None)):
        names = [dist] if dist else ["cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"]
        info[mod] = None
        for name in names:
            try:
                info[mod] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    from minicnn._blas import blas_note

    info["blas_kernels"] = blas_note()
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted({f"{d.get('internal_api')} {d.get('version')}" for d in threadpool_info()
                               if d.get("user_api") == "blas"})
    except Exception:  # noqa: BLE001
        pass
    return info


def set_threads(threads: int) -> None:
    """Pin BLAS, numba and (if already imported) torch to ``threads`` threads, so every framework
    gets the same cores. torch is not imported here: startup timings must not pay for it.

    numba's count is set through ``NUMBA_NUM_THREADS`` before numba is imported;
    ``numba.set_num_threads`` is called only when numba is already loaded with a different count,
    because calling it (even with the count already in force) made every parallel region of the
    numba backend several times slower on the 2-core machine of docs/benchmarks.md.
    """
    import sys

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except Exception:  # noqa: BLE001 - without threadpoolctl the BLAS keeps its own default
        pass
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    else:
        numba = sys.modules["numba"]
        if numba.config.NUMBA_NUM_THREADS != threads:
            try:
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            except Exception:  # noqa: BLE001
                pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def setup(threads: int = 2, quick: bool = False, ceilings: bool = True, wait_quiet_s: float = 0.0, log=None) -> Env:
    """Pin threads, measure the sgemm and copy ceilings (smaller in quick mode), return the Env.

    ``wait_quiet_s`` > 0 first waits up to that long for other processes to leave the CPUs, and
    makes every later measurement wait (up to that long) and retry the same way (see ``quietly``).
    """
    other = wait_for_quiet(wait_quiet_s, log=log) if wait_quiet_s > 0 else None
    set_threads(threads)
    n, mb = (1024, 64) if quick else (2048, 256)
    env = Env(threads=threads, quick=quick, sgemm_gflops=float("nan"), sgemm_n=n, copy_gbps=float("nan"),
              copy_mb=mb, machine=machine_info(), other_load_at_start=other, quiet_wait_s=wait_quiet_s)
    if ceilings:
        # the best of the quiet attempts: a ceiling measured while disturbed would flatter every kernel
        env.sgemm_gflops = quietly(lambda: measure_sgemm(n), env)[0]
        env.copy_gbps = quietly(lambda: measure_copy_bandwidth(mb), env)[0]
    if quick:
        env.warmup, env.repeats, env.max_seconds = 1, 3, 0.3
    return env


# -- validation and timing ---------------------------------------------------------------------


def max_rel_error(out, ref) -> float:
    """max |out - ref| / max |ref| for floats; the fraction of differing entries for integers.

    Shape mismatch or a non-finite value where the reference is finite counts as infinite error.
    """
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    if ref.dtype.kind in "iub":
        return float(np.mean(out != ref))
    o = out.astype(np.float64)
    r = ref.astype(np.float64)
    if not np.array_equal(np.isfinite(o), np.isfinite(r)):
        return math.inf
    fin = np.isfinite(r)
    scale = float(np.max(np.abs(r[fin]))) if fin.any() else 0.0
    diff = float(np.max(np.abs(o[fin] - r[fin]))) if fin.any() else 0.0
    return diff / scale if scale > 0 else diff


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def run_variant(case: Case, variant: Variant, args: tuple, ref: tuple, env: Env, tol: float = DEFAULT_TOL) -> dict:
    """Validate ``variant`` on ``case`` against ``ref``; time it only if it passes. Returns one result row."""
    row = {"variant": variant.name, "backend": variant.backend, "device": variant.device, "status": "",
           "max_rel_err": None, "median_ms": None, "min_ms": None, "runs": 0, "gflops": None,
           "pct_sgemm": None, "note": variant.note}
    if variant.max_macs is not None and case.macs > variant.max_macs:
        row["status"] = "skip"
        row["note"] = f"too slow for this shape ({case.macs / 1e6:.0f}M MACs > {variant.max_macs / 1e6:g}M)"
        return row
    if variant.applies is not None and not variant.applies(args):
        row["status"] = "n/a"
        row["note"] = "shape not supported by this variant"
        return row
    try:
        dev_args = variant.prepare(args) if variant.prepare else args
        runner = (lambda: variant.call(variant.fn, case, dev_args)) if variant.call else \
            (lambda: case.call(variant.fn, dev_args))
        outs = _as_tuple(runner())
        fetch = variant.fetch or np.asarray
        errs = [max_rel_error(fetch(o), r) for o, r in zip(outs, ref)]
        if len(outs) != len(ref):
            errs.append(math.inf)
    except Exception as e:  # noqa: BLE001 - a crashing variant is a failed variant, not a crashed run
        row["status"] = "FAIL"
        row["note"] = f"raised {type(e).__name__}: {e}"[:200]
        return row
    err = max(errs) if errs else 0.0
    row["max_rel_err"] = err
    if not err <= tol:  # also catches NaN
        row["status"] = "FAIL"
        row["note"] = f"max rel error {err:.3g} > tol {tol:g}"
        return row
    row["status"] = "ok"
    med, mn, runs = median_time(runner, env.warmup, env.repeats, env.max_seconds,
                                min_repeats=1 if env.quick else 3,
                                timer="gpu" if variant.device == "gpu" else "cpu")
    row.update(median_ms=med, min_ms=mn, runs=runs)
    if case.flops and med > 0:
        gf = case.flops / (med * 1e-3) / 1e9
        row["gflops"] = gf
        if env.sgemm_gflops and math.isfinite(env.sgemm_gflops):
            row["pct_sgemm"] = 100.0 * gf / env.sgemm_gflops
    return row


def run_cases(cases, variants, env: Env, tol: float = DEFAULT_TOL, seed: int = 0, log=None) -> list[dict]:
    """Every applicable variant on every case. Returns one dict per case with its ``variants`` rows.

    The numpy reference (the ``numpy`` backend's op, the readable im2col path) produces the
    expected output; ``log`` (e.g. ``print``) gets one progress line per case.
    """
    from minicnn.backends import load

    reference = load("numpy").OPS
    results = []
    for i, case in enumerate(cases):
        rng = np.random.default_rng(seed + i)
        args = case.make_args(rng)
        ref = tuple(np.asarray(r) for r in _as_tuple(case.call(reference[case.kernel], args)))
        rows = []
        for v in variants:
            if v.kernel != case.kernel:
                continue
            row, row_other = quietly(lambda: run_variant(case, v, args, ref, env, tol), env)
            row["other_load"] = row_other
            rows.append(row)
        loads = [r["other_load"] for r in rows if r["other_load"] is not None]
        other = max(loads) if loads else None
        results.append({"op": case.op, "kernel": case.kernel, "label": case.label, "group": case.group,
                        "flops": case.flops, "bytes": case.bytes, "macs": case.macs, "count": case.count,
                        "intensity": case.flops / case.bytes if case.bytes else None,
                        "shape": case.shape, "variants": rows, "other_load": other})
        if log:
            best = min((r for r in rows if r["status"] == "ok"), key=lambda r: r["median_ms"], default=None)
            fails = [r["variant"] for r in rows if r["status"] == "FAIL"]
            msg = f"[{i + 1}/{len(cases)}] {case.op:<22} {case.label:<40}"
            if best:
                msg += f" best {best['variant']} {best['median_ms']:.3f} ms"
            if fails:
                msg += f"  FAIL: {', '.join(fails)}"
            other = results[-1]["other_load"]
            if other is not None and other > 0.25:
                msg += f"  (other processes used {other:.1f} cores)"
            log(msg)
    return results


# -- variants ----------------------------------------------------------------------------------


def _load_backend(name):
    from minicnn.backends import load

    try:
        return load(name)
    except Exception:  # noqa: BLE001 - not usable here (no GPU, not written yet)
        return None


KERNELS = ("conv2d_forward", "conv2d_fused_forward", "conv2d_backward", "maxpool2d_forward", "linear_forward")


def _takes(fn, *names) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names)


def _conv_variant_tables(backend_name: str):
    """Named alternative kernels a backend's conv module exposes, by kernel family, and its
    ``supports(name, x_shape, w_shape, stride, padding, dilation, groups)`` rule if it has one.

    ``VARIANTS`` (name -> conv2d_forward-compatible function) is the convention; a variant that
    also takes the fused epilogue's ``residual`` and ``relu`` keywords is a fused variant too.
    ``FUSED_VARIANTS`` and ``BACKWARD_VARIANTS`` are read the same way when a backend offers them.
    """
    import importlib

    try:
        mod = importlib.import_module(f"minicnn.backends.{backend_name}.conv")
    except Exception:  # noqa: BLE001
        return {}, None
    tables: dict = {}
    for attr, kernel in (("VARIANTS", "conv2d_forward"), ("FUSED_VARIANTS", "conv2d_fused_forward"),
                         ("BACKWARD_VARIANTS", "conv2d_backward")):
        table = getattr(mod, attr, None)
        if isinstance(table, dict):
            tables.setdefault(kernel, {}).update(table)
            if attr == "VARIANTS":
                fused = {k: fn for k, fn in table.items() if _takes(fn, "residual", "relu")}
                tables.setdefault("conv2d_fused_forward", {}).update(fused)
    supports = getattr(mod, "supports", None)
    return tables, (supports if callable(supports) else None)


def _applies(supports, vname, kernel):
    """``applies(args)`` from a backend's ``supports`` rule (conv kernels only)."""
    if supports is None or not kernel.startswith("conv2d"):
        return None

    def applies(args):
        if kernel == "conv2d_backward":
            _, x, w, stride, padding, dilation, groups = args[:7]
        else:
            x, w, _, stride, padding, dilation, groups = args[:7]
        try:
            return bool(supports(vname, np.shape(x), np.shape(w), stride, padding, dilation, groups))
        except ValueError:  # a name the rule does not know: let validation decide
            return True

    return applies


def discover_variants(kernels=KERNELS, backends=("numpy", "numba", "cupy"), torch: bool = True,
                      naive_max_macs: int = 1_000_000) -> list[Variant]:
    """Every implementation available here: each backend's op, its named conv variants, PyTorch.

    numpy contributes the seven-loop teaching conv (``numpy/naive``, only on shapes up to
    ``naive_max_macs`` multiply-adds) and its im2col ops; numba its op table and
    ``conv.VARIANTS``; cupy the same when cupy and a GPU are usable; torch (``torch/...``, a
    reference point, 2 threads) when importable.
    """
    out: list[Variant] = []
    for bname in backends:
        be = _load_backend(bname)
        if be is None:
            continue
        launch = getattr(be, "threading_layer", None)
        if callable(launch):
            # start numba's thread pool before torch (below) loads its own OpenMP runtime: in the
            # other order the numba kernels ran about ten times slower on the 2-core machine
            launch()
        device = "gpu" if bname == "cupy" else "cpu"
        prepare = fetch = None
        if device == "gpu":
            import cupy

            def prepare(args, _cp=cupy):
                return tuple(_cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)

            def fetch(a, _cp=cupy):
                return _cp.asnumpy(a)
        tables, supports = _conv_variant_tables(bname)
        for kernel in kernels:
            seen = set()
            if bname == "numpy" and kernel == "conv2d_forward":
                from minicnn.backends.numpy.conv import conv2d_forward_naive

                out.append(Variant("numpy/naive", "numpy", kernel, conv2d_forward_naive, max_macs=naive_max_macs,
                                   note="seven nested loops"))
            op_fn = be.OPS.get(kernel)
            for vname, fn in tables.get(kernel, {}).items():
                out.append(Variant(f"{bname}/{vname}", bname, kernel, fn, device, prepare, fetch,
                                   applies=_applies(supports, vname, kernel)))
                seen.add(id(fn))
            if op_fn is not None and id(op_fn) not in seen:
                label = "im2col" if (bname == "numpy" and kernel.startswith("conv2d")) else "op"
                out.append(Variant(f"{bname}/{label}", bname, kernel, op_fn, device, prepare, fetch,
                                   note="the op table's choice" if label == "op" else ""))
    if torch:
        out.extend(torch_variants(kernels))
    return out


def torch_variants(kernels=KERNELS) -> list[Variant]:
    """PyTorch's CPU kernels for the same cases, as a reference point (empty without torch)."""
    try:
        import torch
        import torch.nn.functional as F
    except Exception:  # noqa: BLE001
        return []

    def prepare(args):
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)

    def fetch(t):
        return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)

    def conv(fn, case, a):
        x, w, b, stride, padding, dilation, groups = a[:7]
        with torch.no_grad():
            return F.conv2d(x, w, b, stride, padding, dilation, groups)

    def fused(fn, case, a):
        x, w, b, stride, padding, dilation, groups, residual, relu = a
        with torch.no_grad():
            y = F.conv2d(x, w, b, stride, padding, dilation, groups)
            if residual is not None:
                y += residual
            return torch.relu_(y) if relu else y

    def backward(fn, case, a):
        dy, x, w, stride, padding, dilation, groups, need_dx, need_dw, need_db = a
        with torch.no_grad():
            if need_dx:
                return torch.nn.grad.conv2d_input(x.shape, w, dy, stride, padding, dilation, groups)
            return torch.nn.grad.conv2d_weight(x, w.shape, dy, stride, padding, dilation, groups)

    def maxpool(fn, case, a):
        x, k, stride, padding, dilation = a
        with torch.no_grad():
            return F.max_pool2d(x, k, stride, padding, dilation, return_indices=True)

    def linear(fn, case, a):
        x, w, b = a
        with torch.no_grad():
            return F.linear(x, w, b)

    table = {"conv2d_forward": conv, "conv2d_fused_forward": fused, "conv2d_backward": backward,
             "maxpool2d_forward": maxpool, "linear_forward": linear}
    return [Variant("torch", "torch", k, None, "cpu", prepare, fetch, call=table[k],
                    note=f"PyTorch {torch.__version__} (reference point)") for k in kernels if k in table]


# -- reports -----------------------------------------------------------------------------------


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown(results: list[dict], env: Env | None = None) -> str:
    """One table per op: shape, variant, status, max rel error, median ms, GFLOP/s, % of sgemm."""
    lines = []
    if env is not None:
        m = env.machine
        lines += [f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {env.threads} threads; numpy {m.get('numpy')}, "
                  f"numba {m.get('numba')}, torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; "
                  f"{m.get('blas_kernels', '')}",
                  f"Ceilings: numpy sgemm {env.sgemm_gflops:.1f} GFLOP/s (n={env.sgemm_n}), "
                  f"array copy {env.copy_gbps:.1f} GB/s ({env.copy_mb} MB)"]
        loads = [r["other_load"] for r in results if r.get("other_load") is not None]
        if loads:
            lines.append(f"Other processes' CPU use while measuring: mean {sum(loads) / len(loads):.2f} cores, "
                         f"max {max(loads):.2f} cores (0 = a quiet machine)")
        lines.append("")
    ops_seen = []
    for r in results:
        if r["op"] not in ops_seen:
            ops_seen.append(r["op"])
    for op in ops_seen:
        lines += [f"### {op}", "",
                  "| shape | uses | variant | status | max rel err | median ms | min ms | GFLOP/s | % sgemm |",
                  "|---|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in results if r["op"] == op):
            for v in r["variants"]:
                lines.append(
                    f"| {r['label']} | {r['count']} | {v['variant']} | {v['status']} | {_fmt(v['max_rel_err'], '.1e')} "
                    f"| {_fmt(v['median_ms'], '.3f')} | {_fmt(v['min_ms'], '.3f')} | {_fmt(v['gflops'], '.1f')} "
                    f"| {_fmt(v['pct_sgemm'], '.0f')} |"
                )
        lines.append("")
        totals = network_totals(results, op)
        if totals:
            lines += [f"Whole-network {op} time (sum over shapes of median ms x uses), by group:", "",
                      "| group | variant | ms |", "|---|---|---:|"]
            for (group, variant), ms in totals.items():
                lines.append(f"| {group} | {variant} | {ms:.2f} |")
            lines.append("")
    fails = [(r["label"], v["variant"], v["note"]) for r in results for v in r["variants"] if v["status"] == "FAIL"]
    if fails:
        lines += ["Failed validation (not timed):", ""]
        lines += [f"- {lab}: {var}: {note}" for lab, var, note in fails]
        lines.append("")
    return "\n".join(lines)


def network_totals(results: list[dict], op: str) -> dict:
    """{(group, variant): ms} summed over one group's shapes, for variants that ran on all of them."""
    by_group: dict = {}
    for r in results:
        if r["op"] == op and r["group"]:
            by_group.setdefault(r["group"], []).append(r)
    totals = {}
    for group, rs in by_group.items():
        names = [v["variant"] for v in rs[0]["variants"]]
        for name in names:
            ms = 0.0
            for r in rs:
                row = next((v for v in r["variants"] if v["variant"] == name), None)
                if row is None or row["status"] != "ok":
                    break
                ms += row["median_ms"] * r["count"]
            else:
                totals[(group, name)] = ms
    return totals


def env_dict(env: Env) -> dict:
    """The Env as plain JSON-able data."""
    return {"threads": env.threads, "quick": env.quick, "sgemm_gflops": env.sgemm_gflops, "sgemm_n": env.sgemm_n,
            "copy_gbps": env.copy_gbps, "copy_mb": env.copy_mb, "machine": env.machine,
            "other_load_at_start": env.other_load_at_start, "quiet_wait_s": env.quiet_wait_s,
            "quiet_threshold": env.quiet_threshold,
            "warmup": env.warmup, "repeats": env.repeats, "max_seconds": env.max_seconds}


def write_json(path, payload: dict) -> str:
    """Write ``payload`` as indented JSON (NaN/inf become null) and return the path."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return clean(o.item())
        return o

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=1)
        f.write("\n")
    return str(path)
