"""End-to-end benchmarks: ResNet-18 inference and training against PyTorch and ONNX Runtime.

    minicnn bench e2e [--quick] [--out DIR] [--threads N] [--parts inference,training,memory,startup]
    python -m minicnn.bench.end_to_end ...          (the same, also the entry of its child processes)

- inference: ResNet-18, float32, 224x224, batch 1/8/32 (quick: 1), for minicnn on each usable
  backend (the plain model in eval mode, and the compiled fast path of ``minicnn.inference``),
  PyTorch (the plain-torch ResNet of ``minicnn.bench.torch_reference``) and ONNX Runtime (that model
  exported with ``torch.onnx.export``). All load the same seeded weights
  (``seeded_state_dict("resnet18")``); every framework's logits are cross-checked against the
  PyTorch ones (or minicnn-numpy's without torch) before any timing counts.
- training: one SGD step (forward, cross-entropy, backward, update) of the digits convnet at
  batch 64 and of ResNet-18 at batch 16, 224x224, minicnn vs PyTorch from identical weights; the
  first step's loss is cross-checked.
- memory: peak RSS growth during one batch-1 inference, each framework in its own subprocess
  (the kernel's high-water mark is reset after a warm-up call via /proc/self/clear_refs; where that
  is unavailable, ``ru_maxrss`` deltas over the first call), plus tracemalloc's peak for minicnn
  (numpy reports its allocations to tracemalloc).
- startup: wall time of a fresh process that classifies one image, twice in a row with the same
  empty numba cache directory: the first process compiles every kernel, the second loads them.

Every framework gets the same number of threads (``--threads``, default 2): BLAS through
threadpoolctl, ``numba.set_num_threads``, ``torch.set_num_threads``, ORT's intra_op_num_threads.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import harness

# the folder holding the minicnn package this process imported (a source checkout or site-packages):
# child processes start there, so ``python -m`` imports the same copy of minicnn
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
IMAGE = PACKAGE_ROOT / "minicnn" / "data" / "images" / "chelsea.jpg"
PARTS = ("inference", "training", "memory", "startup")


# -- frameworks --------------------------------------------------------------------------------


def torch_resnet_module():
    """The plain-PyTorch ResNet module, ``minicnn.bench.torch_reference`` (None without torch)."""
    if importlib.util.find_spec("torch") is None:
        return None
    from . import torch_reference

    return torch_reference


def minicnn_backends() -> list[str]:
    """minicnn backends usable here, fastest first (numba, cupy, then the numpy reference)."""
    from minicnn.backends import load

    out = []
    for name in ("numba", "cupy", "numpy"):
        try:
            load(name)
            out.append(name)
        except Exception:  # noqa: BLE001
            pass
    return out


def _sync_numpy(a):
    import minicnn as mc

    return np.asarray(mc.to_numpy(a))


def minicnn_runner(sd, backend: str, compiled: bool):
    """fn(x) -> numpy logits for the minicnn ResNet-18 (plain eval model, or the compiled fast path)."""
    import minicnn as mc
    from minicnn.inference import compile_inference
    from minicnn.models.resnet import resnet18

    model = resnet18(weights=sd).eval()
    if compiled:
        model = compile_inference(model)  # the plain model is dropped: only the fast path stays

    def run(x, _m=model):
        with mc.backend(backend), mc.no_grad():
            return _sync_numpy(_m(x))

    return run


def torch_runner(sd, threads):
    """PyTorch eval-mode ResNet-18 with the same weights (None without torch)."""
    tr = torch_resnet_module()
    if tr is None:
        return None
    import torch

    torch.set_num_threads(threads)
    model = tr.build("resnet18", state_dict=sd).eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run, model


def onnx_runner(torch_model, threads, tmpdir):
    """ONNX Runtime session on the exported torch model (None without onnxruntime or torch)."""
    if torch_model is None:
        return None
    try:
        import onnxruntime as ort
        import torch
    except Exception:  # noqa: BLE001
        return None
    path = os.path.join(tmpdir, "resnet18.onnx")
    x = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}})
        try:  # the TorchScript exporter needs no onnxscript
            torch.onnx.export(torch_model, (x,), path, dynamo=False, **kwargs)
        except TypeError:  # an older torch without the dynamo switch
            torch.onnx.export(torch_model, (x,), path, **kwargs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(x):
        return sess.run(None, {"x": x})[0]

    return run


def _rel(a, b) -> float:
    return harness.max_rel_error(np.asarray(a, np.float64), np.asarray(b, np.float64))


# -- inference ---------------------------------------------------------------------------------


def inference_frameworks() -> list[str]:
    """Every ResNet-18 inference runner available here, minicnn's first."""
    out = []
    for be in minicnn_backends():
        out += [f"minicnn {be}", f"minicnn {be} compiled"]
    if torch_resnet_module() is not None:
        out.append("pytorch")
        if importlib.util.find_spec("onnxruntime") is not None:
            out.append("onnxruntime")
    return out


def make_runner(framework: str, sd, threads: int):
    """fn(x) -> numpy logits for one framework name of ``inference_frameworks()``."""
    if framework.startswith("minicnn "):
        parts = framework.split()
        return minicnn_runner(sd, parts[1], compiled=parts[-1] == "compiled")
    tr = torch_runner(sd, threads)
    if tr is None:
        raise ValueError(f"{framework}: torch is needed (pip install torch)")
    if framework == "pytorch":
        return tr[0]
    if framework == "onnxruntime":
        # the session keeps the model in memory: the exported file can go when it is built
        with tempfile.TemporaryDirectory(prefix="minicnn-bench-") as tmp:
            run = onnx_runner(tr[1], threads, tmp)
        if run is None:
            raise ValueError("onnxruntime is not importable here")
        return run
    raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(inference_frameworks())}")


def _inference_input(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)


def _child_env(threads, quick, quiet_wait_s) -> harness.Env:
    env = harness.setup(threads=threads, quick=quick, ceilings=False)
    env.quiet_wait_s = float(quiet_wait_s)
    return env


def child_infer(framework, batches, size, threads, quick, quiet_wait_s, ref_path=None, save_path=None,
                tol=1e-3, timed=True) -> list[dict]:
    """In a fresh process: validate ``framework``'s logits against the reference file, then time it.

    The reference framework's own child writes its logits to ``save_path`` instead; with
    ``timed=False`` it only writes them (the reference of a run that does not time it) and its
    rows say "reference".
    """
    from minicnn.models.resnet import seeded_state_dict

    env = _child_env(threads, quick, quiet_wait_s)
    fn = make_runner(framework, seeded_state_dict("resnet18", seed=0), threads)
    ref = dict(np.load(ref_path)) if ref_path else None
    saved, rows = {}, []
    for n in batches:
        x = _inference_input(n, size)
        row = {"batch": n, "size": size, "framework": framework, "status": "", "max_rel_err": None,
               "median_ms": None, "min_ms": None, "runs": 0, "img_per_s": None, "ms_per_img": None}
        rows.append(row)
        try:
            y = fn(x)
        except Exception as e:  # noqa: BLE001 - report and go on
            row.update(status="FAIL", note=f"raised {type(e).__name__}: {e}"[:200])
            continue
        saved[f"n{n}"] = y
        if ref is not None and f"n{n}" not in ref:
            # the numpy reference stops at numpy_max_batch: an unchecked output is not timed
            row.update(status="FAIL", note=f"no reference logits at batch {n} (the numpy reference runs only the "
                                           f"smaller batches; with PyTorch installed it is the reference at every batch)")
            continue
        row["max_rel_err"] = 0.0 if ref is None else _rel(y, ref[f"n{n}"])
        if not timed:
            row["status"] = "reference"
            continue
        if not row["max_rel_err"] <= tol:
            row.update(status="FAIL", note=f"logits differ from the reference: max rel error {row['max_rel_err']:.3g} > {tol:g}")
            continue
        (med, mn, runs), other = harness.quietly(
            lambda: harness.median_time(lambda: fn(x), env.warmup, env.repeats, max(env.max_seconds, 2.0),
                                        min_repeats=2 if env.quick else 3), env)
        row.update(status="ok", median_ms=med, min_ms=mn, runs=runs, img_per_s=n / (med / 1e3), ms_per_img=med / n,
                   other_load=other)
        print(f"inference n={n:<3} {framework:<28} {med:9.2f} ms  {row['img_per_s']:7.1f} img/s  "
              f"err {row['max_rel_err']:.1e}", file=sys.stderr, flush=True)
    if save_path:
        np.savez(save_path, **saved)
    return rows


def _fail_rows(fw, batches, size, note):
    return [{"batch": n, "size": size, "framework": fw, "status": "FAIL", "note": note, "max_rel_err": None,
             "median_ms": None, "min_ms": None, "runs": 0, "img_per_s": None, "ms_per_img": None} for n in batches]


def _merge_round(kept: dict, row: dict) -> None:
    """Fold one round's row for (framework, batch), and model for a training row, into ``kept``: a
    failure in any round stands, else the round with the lowest median is kept; every round's
    median goes in ``rounds_ms``."""
    key = (row["framework"], row["batch"]) + ((row["model"],) if "model" in row else ())
    old = kept.get(key)
    history = (old or {}).get("rounds_ms", []) + [row.get("median_ms")]
    if old is None or (old["status"] == "ok" and (row["status"] != "ok" or row["median_ms"] < old["median_ms"])):
        kept[key] = row
    kept[key]["rounds_ms"] = history


def inference(env: harness.Env, batches=(1, 8, 32), log=print, numpy_max_batch=8, tol=1e-3, size=224,
              frameworks=None, rounds: int = 1) -> list[dict]:
    """ResNet-18 forward at each batch for every framework, each framework in its own process.

    Separate processes keep one framework's thread pools (OpenMP, TBB, BLAS) from spinning while
    another computes, which on a 2-core machine slowed minicnn's numba kernels several-fold when
    they shared a process with PyTorch. The reference framework (PyTorch, else the numpy backend)
    runs first and writes its logits; every other child checks its own against them before timing.
    With PyTorch installed it is the reference even when ``frameworks`` leaves it out: its child then
    only writes the logits (the numpy backend, the fallback, stops at ``numpy_max_batch``).
    ``size`` is the image side (224 for the real benchmark; tests use a tiny one); ``frameworks``
    a subset of ``inference_frameworks()``.

    ``rounds`` > 1 runs every framework's child that many times, the frameworks taking turns, and
    reports for each (framework, batch) the round with the lowest median (each round's median is
    in ``rounds_ms``): on a shared machine a slow phase lasts minutes, longer than one child, and
    would otherwise fall on whichever framework happened to be running.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    available = inference_frameworks()
    frameworks = available if frameworks is None else [f for f in available if f in frameworks]
    ref_fw = "pytorch" if "pytorch" in available else "minicnn numpy"
    with tempfile.TemporaryDirectory(prefix="minicnn-bench-") as tmp:
        kept = _inference_rounds(env, batches, size, rounds, tol, numpy_max_batch, frameworks, ref_fw,
                                 os.path.join(tmp, "reference_logits.npz"), log)
    return _inference_rows(kept, frameworks, ref_fw, batches, size, numpy_max_batch, rounds, log)


def _inference_rounds(env, batches, size, rounds, tol, numpy_max_batch, frameworks, ref_fw, ref_path, log) -> dict:
    """Every round's child processes; the kept (best-round) row per (framework, batch)."""
    kept: dict = {}
    order = [ref_fw] + [f for f in frameworks if f != ref_fw]
    for rnd in range(rounds):
        for fw in order:
            timed = fw in frameworks
            if not (timed or rnd == 0):
                continue
            run_batches = [n for n in batches if not (fw.startswith("minicnn numpy") and n > numpy_max_batch)]
            args = ["--child", "infer", "--framework", fw, "--batches", ",".join(map(str, run_batches)),
                    "--size", str(size), "--threads", str(env.threads), "--quiet-wait", str(env.quiet_wait_s),
                    "--tol", str(tol)]
            args += (["--save", ref_path] if fw == ref_fw and rnd == 0 else ["--ref", ref_path])
            if not timed:
                args.append("--untimed")
            if env.quick:
                args.append("--quick")
            try:
                got, _ = _child(args, live_stderr=True, timeout=3600)
            except Exception as e:  # noqa: BLE001
                got = _fail_rows(fw, run_batches, size, str(e)[:200])
                log(f"inference {fw:<28} FAIL {str(e)[:200]}")
                if fw == ref_fw and rnd == 0:
                    raise RuntimeError(f"the reference framework {fw} failed, nothing can be checked: {e}") from e
            if not timed:
                continue
            for r in got:
                r["reference"] = ref_fw
                _merge_round(kept, r)
    return kept


def _inference_rows(kept, frameworks, ref_fw, batches, size, numpy_max_batch, rounds, log) -> list[dict]:
    """The rows of ``inference``, sorted and logged, with skip rows for what was not timed."""
    order = [ref_fw] * (ref_fw in frameworks) + [f for f in frameworks if f != ref_fw]
    rows = list(kept.values())
    for fw in order:
        run_batches = [n for n in batches if not (fw.startswith("minicnn numpy") and n > numpy_max_batch)]
        for n in batches:
            if n not in run_batches:
                rows.append({"batch": n, "size": size, "framework": fw, "reference": ref_fw, "status": "skip",
                             "note": f"numpy reference backend timed up to batch {numpy_max_batch}",
                             "max_rel_err": None, "median_ms": None, "min_ms": None, "runs": 0, "img_per_s": None,
                             "ms_per_img": None})
    order_ix = {fw: i for i, fw in enumerate(frameworks)}
    rows.sort(key=lambda r: (r["batch"], order_ix.get(r["framework"], len(order_ix))))
    for r in rows:
        if r["status"] == "ok":
            tail = "" if rounds == 1 else "  rounds " + " ".join(_f(v, ".1f") for v in r["rounds_ms"])
            log(f"inference n={r['batch']:<3} {r['framework']:<28} {r['median_ms']:9.2f} ms  {r['img_per_s']:7.1f} img/s  "
                f"err {r['max_rel_err']:.1e}{tail}")
        else:
            log(f"inference n={r['batch']:<3} {r['framework']:<28} {r['status']} {r.get('note', '')}")
    return rows


# -- training ----------------------------------------------------------------------------------


def _torch_sequential(model):
    """A torch.nn.Sequential with the same layers and weights as a minicnn Sequential."""
    import torch
    from torch import nn as tnn

    from minicnn import nn

    layers = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            t = tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                           bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            t = tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, nn.ReLU):
            t = tnn.ReLU()
        elif isinstance(m, nn.MaxPool2d):
            t = tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation)
        elif isinstance(m, nn.Flatten):
            t = tnn.Flatten(m.start_dim, m.end_dim)
        elif isinstance(m, nn.Dropout):
            t = tnn.Dropout(m.p)
        else:
            raise ValueError(f"no torch equivalent wired for {type(m).__name__}")
        layers.append(t)
    tm = tnn.Sequential(*layers)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tm


def _minicnn_step(model, opt, loss_fn, be):
    import minicnn as mc

    def step(x, y):
        with mc.backend(be):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            model.backward_params(loss_fn.backward())
            opt.step()
        return float(mc.to_numpy(loss))

    return step


def _torch_step(model, opt):
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


TRAIN_MODELS = ("digits convnet", "resnet18")


def _training_setup(model_name: str, batch: int, size: int):
    """(minicnn model, state dict, x, y) - identical in every process for the same arguments."""
    import minicnn as mc
    from minicnn.models.convnet import digits_convnet
    from minicnn.models.resnet import resnet18, seeded_state_dict

    if model_name == "resnet18":
        sd = seeded_state_dict("resnet18", seed=0)
        model, shape, classes, seed = resnet18(weights=sd), (batch, 3, size, size), 1000, 11
    elif model_name == "digits convnet":
        mc.manual_seed(0)
        model = digits_convnet()
        sd, shape, classes, seed = model.state_dict(), (batch, 1, 8, 8), 10, 10
    else:
        raise ValueError(f"unknown training model {model_name!r}; choose from {', '.join(TRAIN_MODELS)}")
    rng = np.random.default_rng(seed)
    return model, sd, rng.standard_normal(shape).astype(np.float32), rng.integers(0, classes, batch)


def child_train(framework, model_name, batch, size, threads, quick, quiet_wait_s, ref_loss=None) -> dict:
    """In a fresh process: one SGD step (lr 0.01, momentum 0.9) from the shared weights, checked
    against PyTorch's first-step loss (``ref_loss``), then timed."""
    from minicnn import nn, optim

    env = _child_env(threads, quick, quiet_wait_s)
    model, sd, x, y = _training_setup(model_name, batch, size)
    if framework == "pytorch":
        import torch

        torch.set_num_threads(threads)
        tr = torch_resnet_module()
        tm = tr.build("resnet18", state_dict=sd) if model_name == "resnet18" else _torch_sequential(model)
        tm.train()
        step = _torch_step(tm, torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9))
    elif framework.startswith("minicnn "):
        model.train()
        step = _minicnn_step(model, optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss(),
                             framework.split()[1])
    else:
        raise ValueError(f"unknown framework {framework!r}")
    first = step(x, y)
    loss_err = None if ref_loss is None else abs(first - ref_loss) / max(abs(ref_loss), 1e-12)
    row = {"model": model_name, "batch": batch, "framework": framework, "first_loss": first,
           "loss_rel_err_vs_pytorch": 0.0 if framework == "pytorch" else loss_err, "status": "ok",
           "median_ms": None, "min_ms": None, "runs": 0, "img_per_s": None}
    if loss_err is not None and not loss_err < 1e-3:
        row.update(status="FAIL", note=f"first-step loss {first:.6g} differs from PyTorch's {ref_loss:.6g}")
        return row
    # a step of milliseconds (the digits convnet) gets more warm-up and as many runs as fit in the
    # time allowed, not the handful a ResNet step gets: seven 2 ms steps were one moment's noise
    small = model_name != "resnet18" and not env.quick
    warmup, repeats = (10, 500) if small else (1, env.repeats)
    (med, mn, runs), other = harness.quietly(
        lambda: harness.median_time(lambda: step(x, y), warmup, repeats, max(env.max_seconds, 3.0),
                                    min_repeats=2 if env.quick else 3), env)
    row.update(median_ms=med, min_ms=mn, runs=runs, img_per_s=batch / (med / 1e3), other_load=other)
    return row


def training(env: harness.Env, log=print, resnet_batch=16, digits_batch=64, resnet_size=224, rounds: int = 1) -> list[dict]:
    """Time one SGD step of the digits convnet and of ResNet-18, minicnn vs PyTorch, each in its own process.

    minicnn runs on its fastest CPU backend; PyTorch runs first and its first-step loss is what
    minicnn's must match (to 1e-3) before it is timed. ``rounds`` > 1: the two take that many
    turns per model and each row is the framework's round with the lowest median (all of them in
    ``rounds_ms``), as in ``inference``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    be = ([b for b in minicnn_backends() if b not in ("numpy", "cupy")] or ["numpy"])[0]
    frameworks = (["pytorch"] if torch_resnet_module() is not None else []) + [f"minicnn {be}"]
    kept: dict = {}
    for model_name, n in (("digits convnet", digits_batch), ("resnet18", resnet_batch)):
        ref_loss = None
        for _ in range(rounds):
            for fw in frameworks:
                args = ["--child", "train", "--framework", fw, "--model", model_name, "--batches", str(n),
                        "--size", str(resnet_size), "--threads", str(env.threads),
                        "--quiet-wait", str(env.quiet_wait_s)]
                if ref_loss is not None and fw != "pytorch":
                    args += ["--ref-loss", repr(ref_loss)]
                if env.quick:
                    args.append("--quick")
                try:
                    row, _ = _child(args, timeout=3600)
                except Exception as e:  # noqa: BLE001
                    row = {"model": model_name, "batch": n, "framework": fw, "status": "FAIL", "note": str(e)[:200],
                           "first_loss": None, "loss_rel_err_vs_pytorch": None, "median_ms": None, "img_per_s": None}
                if fw == "pytorch" and row["status"] == "ok" and ref_loss is None:
                    ref_loss = row["first_loss"]
                _merge_round(kept, row)
                if row["status"] == "ok":
                    log(f"training {model_name:<15} n={n:<3} {fw:<16} {row['median_ms']:9.2f} ms/step  "
                        f"{row['img_per_s']:7.1f} img/s  first loss {row['first_loss']:.5f}")
                else:
                    log(f"training {model_name:<15} n={n:<3} {fw:<16} FAIL {row.get('note', '')}")
    return list(kept.values())


# -- memory and startup (subprocesses) ---------------------------------------------------------


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS after loading counts only live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001 - not glibc: the measurement is just less tight
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(framework: str, threads: int) -> dict:
    """In a fresh process: peak memory of one batch-1 ResNet-18 inference with ``framework``.

    Read from /proc/self/status: VmHWM (the kernel's high-water mark, reset through
    /proc/self/clear_refs) against VmRSS once the model is loaded. ``ru_maxrss`` is not used: it
    survives exec, so a child would inherit the parent's peak.
    """
    import tracemalloc

    harness.set_threads(threads)
    from minicnn.models.resnet import seeded_state_dict

    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    fn = make_runner(framework, seeded_state_dict("resnet18", seed=0), threads)
    gc.collect()
    _trim_heap()
    load_peak = _status_kb("VmHWM")
    rss0 = _status_kb("VmRSS")
    out = {"framework": framework, "rss_model_mb": rss0 / 1024}
    resettable = _reset_peak()
    fn(x)  # the first call also pays for JIT compilation, allocator pools, oneDNN primitives
    first_hwm = _status_kb("VmHWM")
    if resettable or first_hwm > load_peak:
        out["first_call_peak_mb"] = (first_hwm - rss0) / 1024
    resettable = _reset_peak()
    tracemalloc.start()
    fn(x)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    later_hwm = _status_kb("VmHWM")
    out.update(method="VmHWM (reset via clear_refs) - VmRSS after model load" if resettable else
               "VmHWM - VmRSS after model load (no reset available)",
               steady_peak_mb=(later_hwm - rss0) / 1024 if resettable else None,
               tracemalloc_peak_mb=traced_peak / 2 ** 20 if framework.startswith("minicnn") else None,
               process_peak_mb=max(load_peak, first_hwm, later_hwm) / 1024)
    return out


def child_classify(backend: str, threads: int) -> dict:
    """In a fresh process: read, preprocess and classify one image with ResNet-18; time the stages."""
    t0 = time.perf_counter()
    harness.set_threads(threads)
    import minicnn as mc
    from minicnn.io.images import preprocess
    from minicnn.models.resnet import resnet18, seeded_state_dict

    t_import = time.perf_counter()
    model = resnet18(weights=seeded_state_dict("resnet18", seed=0)).eval()
    x = preprocess(str(IMAGE))[None]
    t_ready = time.perf_counter()
    with mc.backend(backend), mc.no_grad():
        logits = mc.to_numpy(model(x))
    t_first = time.perf_counter()
    with mc.backend(backend), mc.no_grad():
        mc.to_numpy(model(x))
    t_second = time.perf_counter()
    return {"backend": backend, "top1": int(np.argmax(logits[0])), "import_s": t_import - t0,
            "setup_s": t_ready - t_import, "first_forward_s": t_first - t_ready, "second_forward_s": t_second - t_first}


def _process_env(threads, env_extra: dict | None) -> dict:
    """The environment of a child process: ours, every framework pinned to ``threads`` threads, and
    the folder holding this minicnn on PYTHONPATH unless it is this interpreter's site-packages."""
    import sysconfig

    env = dict(os.environ)
    site_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    if os.path.realpath(PACKAGE_ROOT) not in site_dirs:  # a source checkout, not an installed copy
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] +
                                            [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env.update(env_extra or {})
    return env


def _child(args: list[str], env_extra: dict | None = None, timeout=600, live_stderr=False) -> tuple[dict, float]:
    """Run ``python -m minicnn.bench.end_to_end ARGS`` in a fresh process; (its last stdout line as JSON, wall s).

    ``live_stderr`` lets the child's progress lines through to our stderr as they come.
    """
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    env = _process_env(threads, env_extra)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "minicnn.bench.end_to_end", *args], cwd=str(PACKAGE_ROOT), env=env,
                          stdout=subprocess.PIPE, stderr=None if live_stderr else subprocess.PIPE, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"child {' '.join(args)} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def memory(env: harness.Env, log=print, frameworks=None) -> list[dict]:
    """Batch-1 inference peak memory per framework, each in its own process; ``frameworks`` a
    subset of ``inference_frameworks()`` (default: all of them)."""
    available = inference_frameworks()
    frameworks = available if frameworks is None else [f for f in available if f in frameworks]
    rows = []
    for fw in frameworks:
        try:
            res, _ = _child(["--child", "memory", "--framework", fw, "--threads", str(env.threads)])
            res["status"] = "ok"
            log(f"memory {fw:<28} +{res['first_call_peak_mb']:.1f} MB first call, "
                f"+{_f(res.get('steady_peak_mb'), '.1f')} MB later calls over {res['rss_model_mb']:.0f} MB after load")
        except Exception as e:  # noqa: BLE001
            res = {"framework": fw, "status": "FAIL", "note": str(e)[:200]}
            log(f"memory {fw:<28} FAIL {res['note']}")
        rows.append(res)
    return rows


def startup(env: harness.Env, log=print, breakdown: bool = True) -> list[dict]:
    """First vs second fresh process classifying one image, sharing one initially empty numba cache.

    Measured on the real command, ``minicnn --backend B classify IMAGE --weights W`` (the seeded
    weights written to a temporary safetensors file), and, with ``breakdown``, on a child that
    times import, setup and the first and second forward separately (with its own empty cache).
    """
    # the seeded weights (45 MB) and the numba caches: all removed when the measurement ends
    with tempfile.TemporaryDirectory(prefix="minicnn-bench-") as tmp:
        return _startup_rows(env, log, breakdown, tmp)


def _startup_rows(env: harness.Env, log, breakdown: bool, tmp: str) -> list[dict]:
    from minicnn.io.safetensors import save_file
    from minicnn.models.resnet import seeded_state_dict

    weights = os.path.join(tmp, "resnet18-seeded.safetensors")
    save_file(seeded_state_dict("resnet18", seed=0), weights)
    rows = []
    order = ("first process (cold JIT cache)", "second process (warm JIT cache)")
    for be in [b for b in minicnn_backends() if b != "cupy"]:
        cache = tempfile.mkdtemp(prefix="numba-cache-", dir=tmp)
        for which in order:
            row = {"backend": be, "process": which, "how": "minicnn classify"}
            try:
                wall = _run_cli(["--backend", be, "classify", str(IMAGE), "--weights", weights, "--topk", "1"],
                                {"NUMBA_CACHE_DIR": cache}, env.threads)
                row.update(status="ok", wall_s=wall)
                log(f"startup {be:<6} minicnn classify  {which:<32} {wall:6.2f} s")
            except Exception as e:  # noqa: BLE001
                row.update(status="FAIL", note=str(e)[:200])
                log(f"startup {be:<6} minicnn classify  {which:<32} FAIL {row['note']}")
            rows.append(row)
        if not breakdown:
            continue
        cache = tempfile.mkdtemp(prefix="numba-cache-", dir=tmp)
        for which in order:
            try:
                res, wall = _child(["--child", "classify", "--backend", be, "--threads", str(env.threads)],
                                   {"NUMBA_CACHE_DIR": cache})
                res.update(status="ok", process=which, wall_s=wall, how="timed child")
                log(f"startup {be:<6} timed child       {which:<32} {wall:6.2f} s, first forward "
                    f"{res['first_forward_s']:.2f} s")
            except Exception as e:  # noqa: BLE001
                res = {"backend": be, "process": which, "how": "timed child", "status": "FAIL", "note": str(e)[:200]}
                log(f"startup {be:<6} timed child       {which:<32} FAIL {res['note']}")
            rows.append(res)
    return rows


def _run_cli(cli_args: list[str], env_extra: dict, threads: int, timeout=600) -> float:
    """Wall seconds of ``python -m minicnn CLI_ARGS`` in a fresh process (raises if it fails)."""
    env = _process_env(threads, env_extra)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "minicnn", *cli_args], cwd=str(PACKAGE_ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"minicnn {' '.join(cli_args)} failed: {tail[0]}")
    return wall


# -- report ------------------------------------------------------------------------------------


def _f(v, spec):
    return "" if v is None else format(v, spec)


def markdown(payload: dict) -> str:
    """Tables for whichever parts ran."""
    lines = []
    env = payload.get("env")
    if env:
        m = env["machine"]
        lines += [f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {env['threads']} threads; numpy {m.get('numpy')}, "
                  f"numba {m.get('numba')}, torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; "
                  f"{m.get('blas_kernels', '')}"]
        if payload.get("other_load") is not None:
            lines.append(f"Other processes' CPU use during the run: {payload['other_load']:.2f} cores (0 = a quiet machine)")
        lines.append("")
    if payload.get("inference"):
        side = payload["inference"][0].get("size", 224)
        n_rounds = max(len(r.get("rounds_ms") or [None]) for r in payload["inference"])
        lines += [f"### ResNet-18 inference (fp32, {side}x{side})", ""]
        if n_rounds > 1:
            lines += [f"{n_rounds} rounds, the frameworks' processes taking turns; each row is its framework's round "
                      "with the lowest median, and the last column lists every round's median.", ""]
        lines += ["| batch | framework | median ms | min ms | ms/img | img/s | max rel err of logits | other load | status "
                  "| round medians ms |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in payload["inference"]:
            per_round = " / ".join(_f(v, ".1f") for v in (r.get("rounds_ms") or []))
            lines.append(f"| {r['batch']} | {r['framework']} | {_f(r['median_ms'], '.1f')} | {_f(r['min_ms'], '.1f')} "
                         f"| {_f(r['ms_per_img'], '.1f')} | {_f(r['img_per_s'], '.1f')} | {_f(r['max_rel_err'], '.1e')} "
                         f"| {_f(r.get('other_load'), '.2f')} | {r['status']} | {per_round} |")
        lines.append("")
    if payload.get("training"):
        n_rounds = max(len(r.get("rounds_ms") or [None]) for r in payload["training"])
        lines += ["### Training step (SGD, momentum 0.9)", ""]
        if n_rounds > 1:
            lines += [f"{n_rounds} rounds per model, the frameworks' processes taking turns; each row is its "
                      "framework's round with the lowest median, and the last column lists every round's median.", ""]
        lines += ["| model | batch | framework | median ms/step | img/s | first loss | rel err vs PyTorch | other load "
                  "| status |" + (" round medians ms |" if n_rounds > 1 else ""),
                  "|---|---:|---|---:|---:|---:|---:|---:|---|" + ("---|" if n_rounds > 1 else "")]
        for r in payload["training"]:
            # a step of a few ms (the digits convnet) needs its second decimal to be compared
            ms = ".2f" if (r.get("median_ms") or 0) < 10 else ".1f"
            per_round = (" " + " / ".join(_f(v, ms) for v in (r.get("rounds_ms") or [])) + " |") if n_rounds > 1 else ""
            lines.append(f"| {r['model']} | {r['batch']} | {r['framework']} | {_f(r['median_ms'], ms)} "
                         f"| {_f(r['img_per_s'], '.1f')} | {_f(r['first_loss'], '.5f')} "
                         f"| {_f(r['loss_rel_err_vs_pytorch'], '.1e')} | {_f(r.get('other_load'), '.2f')} | {r['status']} |"
                         + per_round)
        lines.append("")
    if payload.get("memory"):
        lines += ["### Peak memory, batch-1 inference (own process each)", "",
                  "Peak RSS above the RSS after the model is loaded: during the first call (which also compiles, "
                  "fills allocator pools) and during a later call; tracemalloc sees numpy's allocations only.", "",
                  "| framework | RSS after load MB | first call peak +MB | later call peak +MB | tracemalloc peak MB "
                  "| process peak MB | status |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in payload["memory"]:
            lines.append(f"| {r['framework']} | {_f(r.get('rss_model_mb'), '.0f')} | {_f(r.get('first_call_peak_mb'), '.1f')} "
                         f"| {_f(r.get('steady_peak_mb'), '.1f')} | {_f(r.get('tracemalloc_peak_mb'), '.1f')} "
                         f"| {_f(r.get('process_peak_mb'), '.0f')} | {r['status']} {r.get('note', '')} |")
        lines.append("")
    if payload.get("startup"):
        lines += ["### Classify one image in a fresh process (JIT cache cold vs warm)", "",
                  "| backend | what ran | process | wall s | import s | model + image s | first forward s "
                  "| second forward s | top-1 |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in payload["startup"]:
            lines.append(f"| {r['backend']} | {r.get('how', '')} | {r['process']} | {_f(r.get('wall_s'), '.2f')} "
                         f"| {_f(r.get('import_s'), '.2f')} "
                         f"| {_f(r.get('setup_s'), '.2f')} "
                         f"| {_f(r.get('first_forward_s'), '.2f')} | {_f(r.get('second_forward_s'), '.3f')} "
                         f"| {r.get('top1', '')} |")
        lines.append("")
    return "\n".join(lines)


def check_frameworks(names) -> list[str]:
    """The frameworks list, or ValueError naming those that are not available here."""
    names = list(names)
    available = inference_frameworks()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"framework(s) {', '.join(repr(n) for n in unknown)} not available here; "
                         f"choose from {', '.join(available)}")
    return names


def check_parts(parts) -> list[str]:
    """The parts list, or ValueError naming the unknown ones."""
    parts = list(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown benchmark part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return parts


def run(quick: bool = False, out_dir: str | None = None, threads: int = 2, parts=PARTS, log=print,
        batches=None, env=None, wait_quiet_s: float = 0.0, size: int = 224, frameworks=None, rounds: int = 1) -> dict:
    """Run the chosen parts; print the markdown tables; write ``e2e.json`` and ``e2e.md`` to ``out_dir``.

    ``env`` reuses a ``harness.Env`` already set up in this process (thread pinning, ceilings);
    ``rounds`` is the number of turns each framework's inference and training processes take (see
    ``inference`` and ``training``);
    ``frameworks`` limits the inference and memory parts to a subset of ``inference_frameworks()``.
    """
    parts = check_parts(parts)
    if out_dir:
        out_dir = harness.check_out_dir(out_dir, quick)  # before the minutes of measuring, not after
    env = env or harness.setup(threads=threads, quick=quick, wait_quiet_s=wait_quiet_s, log=log)
    meter = harness.LoadMeter()
    payload = {"suite": "e2e", "env": harness.env_dict(env)}
    if "inference" in parts:
        payload["inference"] = inference(env, batches or ((1,) if quick else (1, 8, 32)), log=log, size=size,
                                         frameworks=frameworks, rounds=rounds)
    if "training" in parts:
        payload["training"] = training(env, log=log, resnet_batch=2 if quick else 16, rounds=rounds)
    if "memory" in parts:
        payload["memory"] = memory(env, log=log, frameworks=frameworks)
    if "startup" in parts:
        payload["startup"] = startup(env, log=log, breakdown=not quick)
    payload["other_load"] = meter.other_cores()
    text = markdown(payload)
    log("")
    log(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        payload["json"] = harness.write_json(os.path.join(out_dir, "e2e.json"), payload)
        with open(os.path.join(out_dir, "e2e.md"), "w") as f:
            f.write(text + "\n")
    return payload


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated option's items."""
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv=None) -> int:
    """Command-line entry (also the subprocess entry for the memory and startup children)."""
    import argparse

    ap = argparse.ArgumentParser(description="ResNet-18 end to end: minicnn vs PyTorch vs ONNX Runtime")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, ResNet training at batch 2, fewer repeats")
    ap.add_argument("--out", default="bench-results", help="directory for e2e.json and e2e.md (default ./bench-results)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--wait-quiet", "--quiet-wait", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for other processes to leave the CPUs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="inference and training: turns each framework's process takes; the best round is reported")
    ap.add_argument("--frameworks", default=None,
                    help="inference and memory: comma-separated subset, e.g. 'minicnn numba compiled,onnxruntime'")
    ap.add_argument("--child", choices=["memory", "classify", "infer", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--framework", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batches", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    ap.add_argument("--tol", type=float, default=1e-3, help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    ap.add_argument("--untimed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ref-loss", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child == "infer":
        batches = [int(b) for b in a.batches.split(",") if b]
        print(json.dumps(child_infer(a.framework, batches, a.size, a.threads, a.quick, a.wait_quiet, a.ref, a.save,
                                     a.tol, timed=not a.untimed)))
        return 0
    if a.child == "train":
        print(json.dumps(child_train(a.framework, a.model, int(a.batches), a.size, a.threads, a.quick, a.wait_quiet,
                                     a.ref_loss)))
        return 0
    if a.child == "memory":
        print(json.dumps(child_memory(a.framework, a.threads)))
        return 0
    if a.child == "classify":
        print(json.dumps(child_classify(a.backend, a.threads)))
        return 0
    try:
        harness.check_out_dir(a.out, a.quick)
        frameworks = check_frameworks(split_list(a.frameworks)) if a.frameworks else None
    except ValueError as e:
        ap.error(str(e))
    run(a.quick, a.out, a.threads, split_list(a.parts), wait_quiet_s=a.wait_quiet, rounds=a.rounds,
        frameworks=frameworks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
