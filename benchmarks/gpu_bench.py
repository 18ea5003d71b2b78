"""ResNet-18 on the cupy backend beside PyTorch on the same GPU, in one process: every variant is
validated, then timed with CUDA events.

    PYTHONPATH=. python3 -m benchmarks.gpu_bench --out gpu_bench.md     # about 2-4 minutes on an H200
    PYTHONPATH=. python3 -m benchmarks.gpu_bench --dry-run              # the table's plumbing, no GPU

``bash benchmarks/gpu_check.sh`` runs it after the GPU tests and puts its table in the report.

Rows (minicnn on the cupy backend | PyTorch on the same GPU, measured in this run):

- cuBLAS sgemm 8192^3 fp32, TFLOP/s: ``cupy.matmul`` | ``torch.matmul`` with TF32 off. The roofline
  every other row is read against.
- ResNet-18 eval, batch 256, 224x224, img/s: the compiled model (``compile_inference`` with
  ``autotune=False``: each conv the op's own algorithm for the mode in force) in fp32 |
  cuDNN fp32 (TF32 off); in TF32 (``precision("tf32")``) | TF32 on for cuDNN and matmul; in bf16
  (``precision("bf16")``) | bf16 autocast, channels-last. PyTorch's TF32 switches are set for its
  rows only and restored.
- Batch-1 latency, ms: the compiled model launching its kernels one by one, and the same model
  captured as a CUDA graph (``fast.capture``) | PyTorch eager.
- ResNet-18 training step, batch 128, 224x224 (forward, cross-entropy, backward, SGD with
  momentum), ms per step | the same step in PyTorch, fp32.
- Conv kernels side by side on ResNet-18 layers at batch 32 (fused bias + ReLU epilogue): each
  algorithm the backend offers (its ``conv_variants`` table entry: im2col + GEMM, implicit GEMM)
  and its op's own choice, TFLOP/s | ``F.conv2d`` + bias + ReLU on cuDNN fp32.

Validation, before any timing: each inference variant's logits for the two reference images
(``weights/reference``; the rest of the batch is seeded noise) against the numpy backend's, at
1e-4 relative to the largest logit in fp32, 1e-2 in TF32 and 3e-2 in bf16 (the tolerances of
tests/test_gpu.py); each conv variant against the numpy backend's op on two images at 1e-4; the
training step's first loss (same weights, same batch) against the numpy backend's, at 1e-4;
sgemm against a float64 product of a 256x256 corner. A variant that fails is reported as FAIL
and not timed.

Timing: warm-up calls, then timed calls each between two CUDA events (``cupy.cuda.Event`` for
minicnn, ``torch.cuda.Event`` for PyTorch); the median is reported. Counts (warm-up + timed):
sgemm 3 + 10, batch 256 3 + 10, batch 1 10 + 50, training 1 + 3, conv 3 + 10. Every row is
guarded: an error is reported in its cell and the rest still run; rows that would start after
``--budget-s`` seconds are reported as skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "weights" / "reference" / "resnet18_seed0.npz"

TOL = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 3e-2}
COUNTS = {"sgemm": (3, 10), "b256": (3, 10), "b1": (10, 50), "train": (1, 3), "conv": (3, 10)}


class ValidationError(Exception):
    """A variant's output is not within tolerance of the reference: reported as FAIL, not timed."""


# -- rows and how they are run (plain Python, tested on the CPU) -----------------------------------------


@dataclass
class Row:
    """One line of the table: what is measured, its unit, and one measuring function per side.

    ``ours`` and ``torch`` return ``(value, check)``: the measured number in ``unit`` and a short
    note of the validation it passed. ``higher`` says which way is better (img/s, TFLOP/s: higher;
    ms: lower)."""

    name: str
    unit: str
    ours: Callable | None
    torch: Callable | None
    higher: bool = True
    target: str = ""
    note: str = ""


@dataclass
class Cell:
    value: float | None = None
    status: str = ""          # "ok", "FAIL: ...", "error: ...", "skipped (...)", "" (no such side)
    check: str = ""


@dataclass
class Result:
    row: Row
    ours: Cell = field(default_factory=Cell)
    torch: Cell = field(default_factory=Cell)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def measure(fn, log=None) -> Cell:
    """Run one side's measuring function, turning a failed validation or an error into the cell's
    status (the traceback goes to ``log``) so that the rows after it still run."""
    if fn is None:
        return Cell()
    try:
        value, check = fn()
    except ValidationError as e:
        return Cell(status=f"FAIL: {e}")
    except Exception as e:  # noqa: BLE001 - any failure of one row is reported, not raised
        if log is not None:
            traceback.print_exc(file=log)
        return Cell(status=f"error: {_one_line(e)}")
    return Cell(value=float(value), status="ok", check=check)


def run_rows(rows, budget_s: float, clock=time.monotonic, log=None, dry_run: bool = False, on_row=None) -> list:
    """Measure every row in order; a row that would start after ``budget_s`` seconds is skipped.
    ``on_row(results so far)`` is called after each row (the script rewrites its table, so a run
    stopped from outside still leaves the rows it finished)."""
    start = clock()
    out = []
    for row in rows:
        res = Result(row)
        if dry_run:
            reason = "skipped (dry run)"
        elif clock() - start > budget_s:
            reason = f"skipped (past the {budget_s:.0f} s budget)"
        else:
            reason = None
        if reason:
            res.ours = Cell(status=reason) if row.ours else Cell()
            res.torch = Cell(status=reason) if row.torch else Cell()
        else:
            res.ours = measure(row.ours, log)
            res.torch = measure(row.torch, log)
        if log is not None:
            print(f"[gpu_bench] {row.name}: ours {_cell_text(res.ours, row)} | torch {_cell_text(res.torch, row)}",
                  file=log, flush=True)
        out.append(res)
        if on_row is not None:
            on_row(out)
    return out


def _fmt(value: float, unit: str) -> str:
    if unit == "img/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.1f}"


def _cell_text(cell: Cell, row: Row) -> str:
    if cell.status == "ok":
        return f"{_fmt(cell.value, row.unit)} {row.unit}"
    return cell.status or "-"


def speed_ratio(ours: float | None, torch: float | None, higher: bool) -> float | None:
    """How many times PyTorch's speed minicnn's is (above 1: minicnn faster), whatever the unit."""
    if not ours or not torch:
        return None
    return ours / torch if higher else torch / ours


def markdown(results, meta: dict | None = None) -> str:
    """The results as a markdown table, with the run's setup as a list above it."""
    lines = []
    for k, v in (meta or {}).items():
        lines.append(f"- {k}: {v}")
    if lines:
        lines.append("")
    lines += ["| row | minicnn (cupy) | PyTorch | minicnn / PyTorch speed | target | check | notes |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = speed_ratio(r.ours.value, r.torch.value, r.row.higher)
        checks = "; ".join(c for c in (r.ours.check, r.torch.check and f"torch {r.torch.check}") if c)
        cells = [r.row.name, _cell_text(r.ours, r.row), _cell_text(r.torch, r.row),
                 "-" if ratio is None else f"{ratio:.2f}x", r.row.target or "", checks, r.row.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def rel_error(ours, ref) -> float:
    """max |ours - ref| / max |ref| in float64; NaN, inf or a shape mismatch is infinite."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape or not np.all(np.isfinite(ours)):
        return float("inf")
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def validate(ours, ref, tol: float, what: str) -> str:
    """Raise ValidationError when ``ours`` is not within ``tol`` of ``ref``; else the check's note."""
    err = rel_error(ours, ref)
    if not err <= tol:
        raise ValidationError(f"{what} off by {err:.2e} relative (tolerance {tol:.0e})")
    return f"{err:.1e} (tol {tol:.0e})"


def conv_flops(x_shape, w_shape, out_hw) -> int:
    """2 x multiply-adds of a convolution: N*K*P*Q * C/groups*R*S."""
    n, k, (p, q) = x_shape[0], w_shape[0], out_hw
    return 2 * n * k * p * q * w_shape[1] * w_shape[2] * w_shape[3]


# -- the GPU side -------------------------------------------------------------------------------------


def _median_ms(times) -> float:
    return float(statistics.median(times))


def time_cupy(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events on the current stream, after warm-up."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(iters):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return _median_ms(times)


def time_torch(fn, warmup: int, iters: int) -> float:
    """As :func:`time_cupy`, with PyTorch's CUDA events on its current stream."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return _median_ms(times)


@contextlib.contextmanager
def torch_tf32(on: bool):
    """PyTorch's TF32 switches (cuDNN and matmul) set for the block and restored after it."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _precision(mode):
    """The cupy backend's reduced-precision context manager (``fp32`` is the default: no change)."""
    if mode == "fp32":
        return contextlib.nullcontext()
    return importlib.import_module("minicnn.backends.cupy.precision").precision(mode)


def _torch_resnet_module():
    """tests/torch_resnet.py (the plain-PyTorch ResNet with torchvision's names), loaded by path."""
    spec = importlib.util.spec_from_file_location("torch_resnet", ROOT / "tests" / "torch_resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bench:
    """What the rows share, built on first use: weights, inputs, reference outputs, models."""

    def __init__(self):
        self._cache = {}

    def get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- shared data
    def sd(self):
        from minicnn.models.resnet import seeded_state_dict

        return self.get("sd", lambda: seeded_state_dict("resnet18", seed=0))

    def images(self, n):
        """n images (host float32): the two reference images first, then seeded noise."""
        def make():
            ref = np.load(REFERENCE)["inputs"].astype(np.float32)
            rng = np.random.default_rng(n)
            rest = rng.standard_normal((max(n - 2, 0), 3, 224, 224), dtype=np.float32)
            return np.concatenate([ref, rest])[:n]
        return self.get(("images", n), make)

    def ref_logits(self):
        """The numpy backend's logits for the two reference images."""
        def make():
            import minicnn as mc
            from minicnn.models.resnet import resnet18

            model = resnet18(weights=self.sd()).eval()
            with mc.backend("numpy"), mc.no_grad():
                return np.array(model(self.images(2)))
        return self.get("ref_logits", make)

    def device_images(self, n):
        import cupy

        return self.get(("dev", n), lambda: cupy.asarray(self.images(n)))

    def compiled(self, mode="fp32"):
        """The compiled model for one precision mode, with the op's own algorithm choice
        (``autotune=False``): the autotuner's picks are kept per input shape, not per mode, and
        it times with a host clock, which on a GPU measures launches, not kernels."""
        from minicnn import inference
        from minicnn.models.resnet import resnet18

        return self.get(("compiled", mode),
                        lambda: inference.compile_inference(resnet18(weights=self.sd()).eval(), autotune=False))

    def torch_model(self):
        def make():
            return _torch_resnet_module().build("resnet18", state_dict=self.sd()).cuda().eval()
        return self.get("torch_model", make)

    def torch_images(self, n):
        import torch

        return self.get(("tdev", n), lambda: torch.from_numpy(self.images(n)).cuda())


# -- rows ----------------------------------------------------------------------------------------------


def sgemm_row(b: Bench, n=8192):
    flops = 2 * n**3
    warm, iters = COUNTS["sgemm"]

    def data():
        import cupy

        g = cupy.random.default_rng(0)
        return g.standard_normal((n, n), dtype=cupy.float32), g.standard_normal((n, n), dtype=cupy.float32)

    def corner_check(c):
        import cupy

        A, B = b.get("sgemm_data", data)
        want = cupy.asnumpy(A[:256]).astype(np.float64) @ cupy.asnumpy(B[:, :256]).astype(np.float64)
        return validate(c[:256, :256], want, 1e-4, "sgemm corner")

    def ours():
        import cupy

        A, B = b.get("sgemm_data", data)
        check = corner_check(cupy.asnumpy(cupy.matmul(A, B)))
        ms = time_cupy(lambda: cupy.matmul(A, B), warm, iters)
        return flops / (ms * 1e-3) / 1e12, check

    def torch_side():
        import torch

        A, B = b.get("sgemm_data", data)
        tA, tB = torch.from_dlpack(A), torch.from_dlpack(B)
        with torch_tf32(False):
            check = corner_check(torch.matmul(tA, tB).cpu().numpy())
            ms = time_torch(lambda: torch.matmul(tA, tB), warm, iters)
        return flops / (ms * 1e-3) / 1e12, check

    return Row(f"cuBLAS sgemm {n}^3 fp32 (roofline)", "TFLOP/s", ours, torch_side,
               note=f"{warm}+{iters} runs; TF32 off")


def resnet_b256_row(b: Bench, mode: str, batch=256):
    warm, iters = COUNTS["b256"]
    target = {"fp32": ">= 1.0x", "tf32": ">= 1.0x", "bf16": ">= 0.8x"}[mode]
    torch_desc = {"fp32": "cuDNN fp32 (TF32 off)", "tf32": "cuDNN TF32", "bf16": "bf16 autocast, channels-last"}[mode]

    def ours():
        import minicnn as mc

        fast, x = b.compiled(mode), b.device_images(batch)
        with mc.backend("cupy"), _precision(mode):
            check = validate(mc.to_numpy(fast(x)[:2]), b.ref_logits(), TOL[mode], f"{mode} logits")
            ms = time_cupy(lambda: fast(x), warm, iters)
        return batch / (ms * 1e-3), check

    def torch_side():
        import torch

        model, x = b.torch_model(), b.torch_images(batch)
        if mode == "bf16":
            model = b.get("torch_cl", lambda: _torch_resnet_module().build("resnet18", state_dict=b.sd())
                          .cuda().eval().to(memory_format=torch.channels_last))
            x = b.get(("tdev_cl", batch), lambda: x.contiguous(memory_format=torch.channels_last))
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            ctx = contextlib.nullcontext()
        with torch.no_grad(), torch_tf32(mode == "tf32"), ctx:
            check = validate(model(x)[:2].float().cpu().numpy(), b.ref_logits(), TOL[mode], f"{mode} logits")
            ms = time_torch(lambda: model(x), warm, iters)
        return batch / (ms * 1e-3), check

    return Row(f"ResNet-18 eval {mode}, batch {batch}", "img/s", ours, torch_side, target=target,
               note=f"ours: compiled, the op's own conv choice; PyTorch: {torch_desc}; {warm}+{iters} runs")


def latency_row(b: Bench, graph: bool):
    warm, iters = COUNTS["b1"]

    def ours():
        import minicnn as mc

        fast = b.compiled()
        x = b.device_images(2)[:1]
        ref = b.ref_logits()[:1]
        with mc.backend("cupy"):
            if graph:
                g = b.get("captured", lambda: fast.capture(x))
                run = lambda: g(x)  # noqa: E731
            else:
                run = lambda: fast(x)  # noqa: E731
            check = validate(mc.to_numpy(run()), ref, TOL["fp32"], "batch-1 logits")
            ms = time_cupy(run, warm, iters)
        return ms, check

    def torch_side():
        import torch

        model, x = b.torch_model(), b.torch_images(2)[:1]
        with torch.no_grad(), torch_tf32(False):
            check = validate(model(x).cpu().numpy(), b.ref_logits()[:1], TOL["fp32"], "batch-1 logits")
            ms = time_torch(lambda: model(x), warm, iters)
        return ms, check

    name = "ResNet-18 batch-1 latency, " + ("compiled + CUDA graph" if graph else "compiled, kernel by kernel")
    return Row(name, "ms", ours, torch_side, higher=False, target="<= 1.0 ms" if graph else "",
               note=f"fp32; PyTorch eager; {warm}+{iters} runs")


def train_row(b: Bench, batch=128, lr=0.01):
    warm, iters = COUNTS["train"]

    def batch_data():
        x = b.images(batch)
        y = np.random.default_rng(5).integers(0, 1000, batch)
        return x, y

    def ref_loss():
        """The numpy backend's loss for the first step (train-mode forward, batch statistics)."""
        def make():
            import minicnn as mc
            from minicnn import nn
            from minicnn.models.resnet import resnet18

            x, y = batch_data()
            model = resnet18(weights=b.sd())
            model.train()
            with mc.backend("numpy"):
                return nn.CrossEntropyLoss()(model(x), y)
        return b.get("train_ref_loss", make)

    def ours():
        import cupy

        import minicnn as mc
        from minicnn import nn, optim
        from minicnn.models.resnet import resnet18

        x, y = batch_data()
        xd, yd = cupy.asarray(x), cupy.asarray(y)
        model = resnet18(weights=b.sd())
        model.train()
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        with mc.backend("cupy"):
            def step():
                model.zero_grad()
                loss = loss_fn(model(xd), yd)
                model.backward(loss_fn.backward())
                opt.step()
                return loss
            check = validate(step(), ref_loss(), 1e-4, "first-step loss")
            ms = time_cupy(step, warm, iters)
        return ms, check

    def torch_side():
        import torch

        x, y = batch_data()
        xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
        model = _torch_resnet_module().build("resnet18", state_dict=b.sd()).cuda().train()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt), yt)
            loss.backward()
            opt.step()
            return loss

        with torch_tf32(False):
            check = validate(float(step()), ref_loss(), 1e-4, "first-step loss")
            ms = time_torch(step, warm, iters)
        return ms, check

    return Row(f"ResNet-18 training step, batch {batch}", "ms", ours, torch_side, higher=False,
               target="reported", note=f"fp32, SGD momentum 0.9; {warm}+{iters} steps")


# ResNet-18 conv layers: (label, C, K, kernel, stride, padding, H)
CONV_SHAPES = [
    ("stem 7x7/2 3->64 224", 3, 64, 7, 2, 3, 224),
    ("layer1 3x3 64->64 56", 64, 64, 3, 1, 1, 56),
    ("layer2 3x3/2 64->128 56", 64, 128, 3, 2, 1, 56),
    ("layer3 3x3 256->256 14", 256, 256, 3, 1, 1, 14),
    ("layer4 3x3 512->512 7", 512, 512, 3, 1, 1, 7),
    ("downsample 1x1/2 256->512 14", 256, 512, 1, 2, 0, 14),
]


def conv_rows(b: Bench, batch=32) -> list:
    """One row per (layer shape, algorithm): each algorithm the backend's ``conv_variants`` offers
    and its op's own choice, validated against the numpy op on two images; cuDNN beside each."""
    warm, iters = COUNTS["conv"]
    rows = []
    for label, C, K, R, stride, pad, H in CONV_SHAPES:
        geom = ((stride, stride), (pad, pad), (1, 1), 1)
        P = (H + 2 * pad - R) // stride + 1
        flops = conv_flops((batch, C, H, H), (K, C, R, R), (P, P))

        def data(C=C, K=K, R=R, H=H):
            rng = np.random.default_rng(C * 1000 + K + R)
            x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((K, C, R, R), dtype=np.float32) * np.sqrt(2.0 / (C * R * R))).astype(np.float32)
            bias = rng.standard_normal(K, dtype=np.float32) * 0.1
            return x, w, bias

        def ref(label=label, data=data, geom=geom):
            def make():
                from minicnn import backends

                x, w, bias = b.get(("conv", label), data)
                return backends.load("numpy").OPS["conv2d_fused_forward"](x[:2], w, bias, *geom, None, True)
            return b.get(("conv_ref", label), make)

        def variants(label=label, data=data, geom=geom):
            from minicnn import backends

            be = backends.load("cupy")
            x, w, _ = b.get(("conv", label), data)
            found = dict(be.conv_variants(x.shape, w.shape, *geom))
            found["op"] = be.OPS["conv2d_fused_forward"]
            return found

        def ours_for(name, label=label, data=data, geom=geom, ref=ref, variants=variants, flops=flops):
            def ours():
                import cupy

                import minicnn as mc

                fn = variants()[name]
                x, w, bias = b.get(("conv", label), data)
                xd, wd, bd = (b.get(("conv_dev", label, i), lambda a=a: cupy.asarray(a)) for i, a in enumerate((x, w, bias)))
                with mc.backend("cupy"):
                    run = lambda: fn(xd, wd, bd, *geom, None, True)  # noqa: E731
                    check = validate(cupy.asnumpy(run()[:2]), ref(), TOL["fp32"], f"{name} output")
                    ms = time_cupy(run, warm, iters)
                return flops / (ms * 1e-3) / 1e12, check
            return ours

        def torch_side(label=label, data=data, stride=stride, pad=pad, ref=ref, flops=flops):
            import torch
            import torch.nn.functional as F

            x, w, bias = b.get(("conv", label), data)
            xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x, w, bias))
            run = lambda: torch.relu(F.conv2d(xt, wt, bt, stride, pad))  # noqa: E731
            with torch.no_grad(), torch_tf32(False):
                check = validate(run()[:2].cpu().numpy(), ref(), TOL["fp32"], "cuDNN output")
                ms = time_torch(run, warm, iters)
            return flops / (ms * 1e-3) / 1e12, check

        try:
            names = sorted(variants(), key=lambda n: (n == "op", n))
        except Exception as e:  # noqa: BLE001 - the backend does not load: one row says why
            rows.append(Row(f"conv {label} b{batch}", "TFLOP/s", _raiser(e), torch_side, note="fp32 + bias + ReLU"))
            continue
        for name in names:
            rows.append(Row(f"conv {label} b{batch}: {name}", "TFLOP/s", ours_for(name), torch_side,
                            note=f"fp32 + bias + ReLU; {warm}+{iters} runs"))
    return rows


def _raiser(e):
    def f():
        raise e
    return f


def all_rows(b: Bench, dry_run: bool = False) -> list:
    # the targets first (fp32 throughput, batch-1 latency, TF32, bf16, training), then the kernels
    rows = [sgemm_row(b), resnet_b256_row(b, "fp32"), latency_row(b, graph=False), latency_row(b, graph=True)]
    rows += [resnet_b256_row(b, m) for m in ("tf32", "bf16")]
    rows += [train_row(b)]
    if dry_run:  # no backend to ask for its conv variants: one row per shape
        rows += [Row(f"conv {label} b32", "TFLOP/s", _raiser(RuntimeError("dry run")), None)
                 for label, *_ in CONV_SHAPES]
    else:
        rows += conv_rows(b)
    return rows


def setup_lines(dry_run: bool) -> dict:
    meta = {"python": platform.python_version(), "numpy": np.__version__}
    if dry_run:
        meta["mode"] = "dry run: no GPU step ran; not run on a GPU"
        return meta
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        meta["GPU"] = name.decode() if isinstance(name, bytes) else str(name)
        meta["CuPy"] = cupy.__version__
        meta["CUDA runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as e:  # noqa: BLE001
        meta["CuPy"] = f"unavailable ({_one_line(e)})"
    try:
        import torch

        meta["PyTorch"] = f"{torch.__version__} (cuDNN {torch.backends.cudnn.version()})"
    except Exception as e:  # noqa: BLE001
        meta["PyTorch"] = f"unavailable ({_one_line(e)})"
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the markdown table here too")
    p.add_argument("--budget-s", type=float, default=240.0, help="rows that would start later are skipped")
    p.add_argument("--dry-run", action="store_true", help="no GPU: every row skipped, the table still written")
    args = p.parse_args(argv)
    b = Bench()
    meta = setup_lines(args.dry_run)

    def write(results):
        if args.out:
            Path(args.out).write_text(markdown(results, meta), encoding="utf-8")

    results = run_rows(all_rows(b, args.dry_run), args.budget_s, log=sys.stderr, dry_run=args.dry_run, on_row=write)
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
