"""The cupy backend proven on a device, and the host side of graph capture proven everywhere.

Tests marked ``gpu`` need CuPy and a CUDA device; elsewhere they are skipped with the reason
(``conftest.cupy_absent``). They run on the device in ``bash benchmarks/gpu_check.sh`` and check,
on ResNet-18 with fixed seeded weights: eval against the numpy backend and PyTorch CUDA (fp32,
1e-4 relative to the largest logit), the TF32 and bf16 modes at their stated tolerances, a
training step against the numpy backend's, that data stays on the device, and that the compiled
model and its captured graph give the eager numbers. The op-by-op checks, forward and backward,
are tests/test_conformance.py's (its cupy parameter is marked ``gpu`` too).

The unmarked tests run on any machine: the cuBLAS call plan graph capture uses (checked against
a numpy model of column-major cuBLAS), the example and workspace rules, the refusal on a backend
that cannot record, ``CompiledModel.capture`` on a fake recording backend, and the device-check
script's dry run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, inference, nn, optim
from minicnn.backends.cupy import graph
from minicnn.models.convnet import digits_convnet
from minicnn.models.resnet import ResNet, resnet18, seeded_state_dict

from conftest import cupy_absent

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "weights" / "reference" / "resnet18_seed0.npz"


def gpu(fn):
    """Mark a test ``gpu`` and skip it, with the reason, where CuPy has no device."""
    reason = cupy_absent()
    fn = pytest.mark.gpu(fn)
    if reason is not None:
        fn = pytest.mark.skip(reason=f"backend 'cupy' not usable here ({reason})")(fn)
    return fn


def _rel(ours, ref) -> float:
    """max |ours - ref| / max |ref| on the host in float64; NaN or a shape mismatch is infinite."""
    ours = np.asarray(backends.to_numpy(ours), np.float64)
    ref = np.asarray(backends.to_numpy(ref), np.float64)
    if ours.shape != ref.shape or not np.all(np.isfinite(ours)):
        return float("inf")
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ==== host-side rules of graph capture (any machine) ===================================================


def _strided(base, offset, shape, strides):
    """A view of the flat ``base`` starting ``offset`` elements in, with element ``strides``."""
    item = base.itemsize
    return np.lib.stride_tricks.as_strided(base[offset:], shape=shape, strides=[s * item for s in strides])


def _emulated_cublas(plan, a_base, a_off, b_base, b_off):
    """What cuBLAS's column-major ``gemmStridedBatched`` computes for ``plan`` (cuBLAS's A is our
    ``b``, its B our ``a``), read back as the row-major result; asserts cuBLAS's argument rules."""
    m, n, k, ldc = plan["m"], plan["n"], plan["k"], plan["ldc"]
    assert plan["lda"] >= max(1, m if plan["transa"] == 0 else k)
    assert plan["ldb"] >= max(1, k if plan["transb"] == 0 else n)
    assert ldc >= max(1, m)

    def operand(base, off, trans, rows, cols, ld, stride, i):
        stored = (rows, cols) if trans == 0 else (cols, rows)
        x = _strided(base, off + i * stride, stored, (1, ld))  # column-major: element (r, c) at r + c*ld
        return x if trans == 0 else x.T

    c = np.zeros(plan["batch"] * plan["stride_c"])
    for i in range(plan["batch"]):
        A = operand(b_base, b_off, plan["transa"], m, k, plan["lda"], plan["stride_a"], i)
        B = operand(a_base, a_off, plan["transb"], k, n, plan["ldb"], plan["stride_b"], i)
        _strided(c, i * plan["stride_c"], (m, n), (1, ldc))[...] = A @ B
    return c.reshape(plan["out_shape"])


# (a shape, a element strides, b shape, b element strides, operands that need a contiguous copy)
GEMM_LAYOUTS = [
    ((3, 4), (4, 1), (4, 5), (5, 1), ()),                 # both row-major
    ((3, 4), (1, 3), (4, 5), (1, 4), ()),                 # both column-major (transposed views)
    ((3, 4), (6, 1), (4, 5), (1, 7), ()),                 # padded leading dimensions
    ((1, 4), (100, 1), (4, 1), (1, 100), ()),             # a row times a column
    ((3, 1), (5, 9), (1, 5), (8, 1), ()),                 # an outer product (K = 1)
    ((2, 3, 4), (12, 4, 1), (4, 5), (5, 1), ()),          # batched a, shared b (stride 0)
    ((4, 5), (1, 4), (2, 5, 3), (15, 3, 1), ()),          # shared transposed a, batched b
    ((2, 3, 3, 4), (36, 12, 4, 1), (2, 3, 4, 5), (60, 20, 5, 1), ()),  # two batch axes, one stride
    ((3, 4), (2, 2), (4, 5), (5, 1), ("a",)),             # neither rows nor columns contiguous
    ((2, 3, 3, 4), (36, 12, 4, 1), (1, 3, 4, 5), (60, 20, 5, 1), ("b",)),  # broadcast over one batch axis only
    ((3, 3, 4), (12, 4, 1), (2, 3, 4, 5), (60, 20, 5, 1), ("a",)),  # a broadcast over the outer batch axis
    ((2, 3, 3, 4), (100, 12, 4, 1), (4, 5), (5, 1), ("a",)),  # batch strides that are not one walk
    ((3, 4), (-4, 1), (4, 5), (5, 1), ("a",)),           # rows reversed
]


@pytest.mark.parametrize("a_shape,a_strides,b_shape,b_strides,copy", GEMM_LAYOUTS)
def test_gemm_plan_computes_matmul_as_column_major_cublas(a_shape, a_strides, b_shape, b_strides, copy):
    rng = np.random.default_rng(len(a_shape) * 7 + sum(a_strides))
    a_base, b_base = rng.standard_normal(4096), rng.standard_normal(4096)
    a = _strided(a_base, 64, a_shape, a_strides)  # offsets leave room for negative strides
    b = _strided(b_base, 96, b_shape, b_strides)
    want = np.matmul(a, b)
    plan = graph.gemm_plan(a_shape, a_strides, b_shape, b_strides)
    assert plan["copy"] == copy and plan["out_shape"] == want.shape
    if copy:  # made contiguous (broadcast to the full batch shape), then planned again, as graph._gemm does
        full = want.shape[:-2]
        if "a" in copy:
            a = np.ascontiguousarray(np.broadcast_to(a, full + a.shape[-2:]))
        if "b" in copy:
            b = np.ascontiguousarray(np.broadcast_to(b, full + b.shape[-2:]))
        a_base, b_base = a.reshape(-1), b.reshape(-1)
        elems = lambda v: tuple(s // v.itemsize for s in v.strides)  # noqa: E731
        plan = graph.gemm_plan(a.shape, elems(a), b.shape, elems(b))
        assert plan["copy"] == ()
        got = _emulated_cublas(plan, a_base, 0, b_base, 0)
    else:
        got = _emulated_cublas(plan, a_base, 64, b_base, 96)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_gemm_plan_refuses_what_does_not_multiply():
    with pytest.raises(ValueError, match=r"shapes \(3, 4\) and \(5, 2\) do not multiply \(4 != 5\)"):
        graph.gemm_plan((3, 4), (4, 1), (5, 2), (2, 1))
    with pytest.raises(ValueError, match=r"batch shapes of \(2, 3, 4\) and \(3, 4, 5\) do not broadcast"):
        graph.gemm_plan((2, 3, 4), (12, 4, 1), (3, 4, 5), (20, 5, 1))
    with pytest.raises(ValueError, match=r"k=2147483648 exceeds cuBLAS's 32-bit int"):
        graph.gemm_plan((2, 2**31), (2**31, 1), (2**31, 2), (2, 1))


def test_matrix_layout_and_workspace_rules():
    assert graph.matrix_layout((3, 4), (4, 1)) == ("row", 4)
    assert graph.matrix_layout((3, 4), (1, 3)) == ("col", 3)
    assert graph.matrix_layout((3, 4), (1, 2)) is None  # columns overlap: not a matrix cuBLAS reads
    assert graph.matrix_layout((3, 4), (0, 1)) is None  # broadcast rows
    assert graph.matrix_layout((1, 4), (0, 1)) == ("row", 4)  # one row: its stride does not matter
    assert graph.matrix_layout((3, 1), (7, 0)) == ("row", 7)  # one column likewise
    assert graph.workspace_bytes(9) == 32 * 2**20 and graph.workspace_bytes(10) == 32 * 2**20
    assert graph.workspace_bytes(8) == 4 * 2**20


def test_the_loaded_library_lookup_reads_the_process_maps():
    """How graph capture finds the cuBLAS CuPy loaded: by name among the process's mapped files."""
    found = graph._loaded_library_paths("libc.so")
    assert found and all(os.path.isabs(p) and "libc.so" in os.path.basename(p) for p in found)
    assert graph._loaded_library_paths("no-such-library-here.so") == []


def test_check_example_refuses_what_cannot_be_recorded():
    graph.check_example((1, 3, 224, 224), np.float32)
    with pytest.raises(ValueError, match=r"at least one axis, got a scalar"):
        graph.check_example((), np.float32)
    with pytest.raises(ValueError, match=r"has an empty axis \(shape \(0, 3, 8, 8\)\)"):
        graph.check_example((0, 3, 8, 8), np.float32)
    with pytest.raises(TypeError, match=r"must be float32 or float64, got int64"):
        graph.check_example((1, 3), np.int64)


def test_capture_failures_say_what_to_change():
    """The errors CuPy and CUDA raise inside a capture, as the line capture_graph reports."""
    cublas = graph._capture_failure(NotImplementedError("calling cuBLAS API during stream capture is currently unsupported"))
    assert cublas.startswith("graph capture failed while recording: NotImplementedError: calling cuBLAS API")
    assert "GEMMs must go through minicnn.backends.cupy.graph.matmul" in cublas
    sync = graph._capture_failure(RuntimeError("the current stream is capturing, so synchronous API calls are disallowed"))
    assert sync.endswith("something waited for the device (a copy to the host, a synchronize) while recording")
    other = graph._capture_failure(ValueError("bad shape"))
    assert other == "graph capture failed while recording: ValueError: bad shape"


# ---- CompiledModel.capture through the table ----------------------------------------------------------


def _small_resnet():
    mc.manual_seed(4)
    model = ResNet(num_classes=10, width=8)
    rng = np.random.default_rng(4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.bias.data = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m._set_buffer("running_mean", (rng.standard_normal(c) * 0.1).astype(np.float32))
            m._set_buffer("running_var", rng.uniform(0.5, 1.5, c).astype(np.float32))
    return model.eval()


def test_capture_on_a_backend_that_cannot_record_says_so():
    fast = inference.compile_inference(_small_resnet())
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for name in ("numpy", "numba"):
        with mc.backend(name), pytest.raises(RuntimeError, match=rf"^backend '{name}' cannot capture a graph: "):
            fast.capture(x)


class _HostRecorder:
    """A fake backend's ``capture_graph``: warms up, "records" by keeping the function and its
    input buffer, and replays by copying the input in and running the function again. It is
    what the device recording does, minus the device, so it checks the plumbing above it."""

    def __init__(self):
        self.calls = []  # "warm" / "record" / "replay", in order

    def __call__(self, fn, example):
        for _ in range(2):
            self.calls.append("warm")
            fn(example)
        static_in = example.copy()
        self.calls.append("record")
        static_out = fn(static_in)

        def replay(x):
            self.calls.append("replay")
            static_in[...] = x
            static_out[...] = fn(static_in)
            return static_out.copy()

        return replay


@pytest.fixture
def recorder():
    rec = _HostRecorder()
    table = dict(backends.load("numpy").OPS)
    table["capture_graph"] = rec
    backends.register("hostgraph", types.SimpleNamespace(NAME="hostgraph", OPS=table))
    yield rec
    backends.unregister("hostgraph")


def test_captured_model_replays_the_compiled_forward(recorder):
    fast = inference.compile_inference(_small_resnet())
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((1, 3, 40, 36)).astype(np.float32) for _ in range(2))
    with mc.backend("hostgraph"):
        want1, want2 = np.array(fast(x1)), np.array(fast(x2))
        kept = fast.buffer_bytes()
        g = fast.capture(x1)
        assert recorder.calls == ["warm", "warm", "record"]
        assert g.input_shape == (1, 3, 40, 36) and "hostgraph" in repr(g)
        y2 = g(x2)
        y1 = g(x1.astype(np.float64))  # converted to the model's dtype, as the compiled model does
        assert recorder.calls[-2:] == ["replay", "replay"]
        # every call a new array, equal to the compiled forward on the same input
        assert y1 is not y2 and y1.dtype == np.float32
        np.testing.assert_array_equal(y2, want2)
        np.testing.assert_array_equal(y1, want1)
        # the recording owns its buffers: the compiled model's stay as they were, and it still works
        assert fast.buffer_bytes() == kept
        np.testing.assert_array_equal(fast(x2), want2)
        with pytest.raises(ValueError, match=r"recorded for input shape \(1, 3, 40, 36\), got \(2, 3, 40, 36\); capture again"):
            g(np.concatenate([x1, x2]))
    with mc.backend("numpy"), pytest.raises(RuntimeError, match=r"recorded on backend 'hostgraph', called under 'numpy'"):
        g(x1)


# ---- the benchmark's plumbing and the device-check script ----------------------------------------------


def _gpu_bench():
    if str(ROOT) not in sys.path:  # the benchmarks live in the checkout, not in the package
        sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_bench

    return gpu_bench


def test_bench_rows_are_guarded_validated_and_budgeted():
    gb = _gpu_bench()

    def failing_check():
        return gb.validate(np.array([1.0, 2.5]), np.array([1.0, 2.0]), 1e-4, "logits"), None

    def broken():
        raise RuntimeError("kernel launch failed\nsecond line")

    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0, 500.0])
    rows = [
        gb.Row("fast", "img/s", lambda: (2000.0, "ok 1e-6"), lambda: (1000.0, "ok 2e-6"), target=">= 1.0x"),
        gb.Row("latency", "ms", lambda: (0.5, ""), lambda: (2.0, ""), higher=False),
        gb.Row("wrong", "img/s", failing_check, lambda: (1.0, "")),
        gb.Row("late", "ms", lambda: (1.0, ""), None, higher=False),
    ]
    rows.insert(3, gb.Row("broken", "TFLOP/s", broken, lambda: (40.0, "")))
    res = gb.run_rows(rows, budget_s=100, clock=lambda: next(ticks))
    assert [r.ours.status for r in res] == [
        "ok", "ok", "FAIL: logits off by 2.50e-01 relative (tolerance 1e-04)",
        "error: RuntimeError: kernel launch failed", "skipped (past the 100 s budget)"]
    assert res[2].torch.status == "ok" and res[3].torch.value == 40.0  # the other side still ran
    assert res[4].torch.status == ""  # no PyTorch side for that row
    text = gb.markdown(res, {"GPU": "none"})
    assert text.startswith("- GPU: none\n\n| row | minicnn (cupy) | PyTorch |")
    assert "| fast | 2,000 img/s | 1,000 img/s | 2.00x | >= 1.0x | ok 1e-6; torch ok 2e-6 |" in text
    assert "| latency | 0.500 ms | 2.000 ms | 4.00x |" in text  # lower is better: 2.0 / 0.5
    assert gb.speed_ratio(None, 3.0, True) is None
    assert gb.rel_error([1.0, np.nan], [1.0, 1.0]) == float("inf")
    assert gb.conv_flops((32, 64, 56, 56), (64, 64, 3, 3), (56, 56)) == 2 * 32 * 64 * 56 * 56 * 64 * 9


def test_bench_dry_run_writes_a_table_without_a_gpu(tmp_path):
    gb = _gpu_bench()
    out = tmp_path / "bench.md"
    assert gb.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert "not run on a GPU" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 7 + len(gb.CONV_SHAPES)
    assert all("skipped (dry run)" in line for line in rows)


# ---- the device-check script ------------------------------------------------------------------------


def test_gpu_check_script_parses():
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_writes_the_report(tmp_path):
    """The script's report plumbing, GPU steps skipped: the report names each step's outcome."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    env.update(OUT=str(tmp_path), GPU_CHECK_DRY_RUN="1")
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = (tmp_path / "gpu_report.md").read_text()
    for heading in ("# GPU check", "## Machine", "## Tests", "## Benchmarks"):
        assert heading in report, heading
    assert "dry run" in report and "not run on a GPU" in report
    assert "| row |" in report  # the benchmark table, every row skipped
    assert "skipped (dry run)" in report


# ==== on the device ===================================================================================


@pytest.fixture(scope="module")
def resnet_ref():
    """ResNet-18 with the seeded reference weights, its two stored inputs, and the numpy backend's
    logits and features on them (computed once)."""
    ref = np.load(REFERENCE)
    sd = seeded_state_dict("resnet18", seed=0)
    x = ref["inputs"].astype(np.float32)
    model = resnet18(weights=sd).eval()
    with mc.backend("numpy"), mc.no_grad():
        logits = np.array(model(x))
        feats = np.array(model.forward_features(x))
    return types.SimpleNamespace(sd=sd, x=x, logits=logits, feats=feats, torch_logits=ref["logits"])


@gpu
def test_resnet18_eval_on_cupy_matches_numpy(resnet_ref):
    import cupy

    model = resnet18(weights=resnet_ref.sd).eval()
    with mc.backend("cupy"), mc.no_grad():
        logits = model(resnet_ref.x)
        feats = model.forward_features(cupy.asarray(resnet_ref.x))
    assert isinstance(logits, cupy.ndarray) and isinstance(feats, cupy.ndarray)
    assert _rel(logits, resnet_ref.logits) < 1e-4
    assert _rel(feats, resnet_ref.feats) < 1e-4
    # the stored reference was written by PyTorch (CPU) from the same weights
    assert _rel(logits, resnet_ref.torch_logits) < 1e-4
    np.testing.assert_array_equal(np.argsort(-mc.to_numpy(logits), axis=1)[:, :5],
                                  np.argsort(-resnet_ref.logits, axis=1)[:, :5])


@gpu
def test_resnet18_eval_on_cupy_matches_torch_cuda(resnet_ref):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    import torch_resnet

    tmodel = torch_resnet.build("resnet18", state_dict=resnet_ref.sd).cuda().eval()
    # fp32 reference: cuDNN convolutions default to TF32 on Ampere and newer, so turn it off here only
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            want = tmodel(torch.from_numpy(resnet_ref.x).cuda()).cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    model = resnet18(weights=resnet_ref.sd).eval()
    with mc.backend("cupy"), mc.no_grad():
        got = model(resnet_ref.x)
    assert _rel(got, want) < 1e-4


def _precision(mode):
    """``minicnn.backends.cupy.precision(mode)``, the context manager of the reduced-precision modes."""
    import importlib

    mod = importlib.import_module("minicnn.backends.cupy.precision")
    return mod.precision(mode)


# TF32 rounds each convolution's operands to a 10-bit mantissa (unit roundoff 2^-11, about 4.9e-4)
# and accumulates in fp32; bf16 keeps 7 bits (2^-8, about 3.9e-3). Simulated on the host (the
# numpy backend with every conv's x and w rounded so, on these weights and images), the logits
# move by 4.1e-4 (tf32) and 2.8e-3 (bf16) of the largest one; the tolerances leave about 25x and
# 10x for the GPU's own summation order and rounding. A wrong kernel (a lost channel, a shifted
# tap) is off by O(1), far above both.
PRECISION_TOL = {"tf32": 1e-2, "bf16": 3e-2}


@gpu
@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_resnet18_reduced_precision_modes(resnet_ref, mode):
    model = resnet18(weights=resnet_ref.sd).eval()
    with mc.backend("cupy"), mc.no_grad():
        fp32 = mc.to_numpy(model(resnet_ref.x))
        with _precision(mode):
            low = mc.to_numpy(model(resnet_ref.x))
        again = mc.to_numpy(model(resnet_ref.x))
    assert np.all(np.isfinite(low))
    err = _rel(low, resnet_ref.logits)
    assert err < PRECISION_TOL[mode], f"{mode}: {err:.2e} relative to the largest logit"
    # the mode took effect (rounding changed the numbers), and ended with the block
    assert not np.array_equal(low, fp32)
    assert _rel(again, resnet_ref.logits) < 1e-4


def _train_step(backend, build, x, y, lr=0.05):
    """One SGD step (momentum 0.9) of a freshly built model on ``backend``: the loss, the
    gradients and the parameters after the step, all as host arrays; plus the model."""
    model = build()
    model.train()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with mc.backend(backend):
        model.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        grads = {n: np.array(mc.to_numpy(p.grad)) for n, p in model.named_parameters()}
        opt.step()
    params = {n: np.array(mc.to_numpy(p.data)) for n, p in model.named_parameters()}
    return loss, grads, params, model


def _digits():
    mc.manual_seed(0)
    return digits_convnet()  # dropout 0: the masks would come from different generators


def _resnet():
    return resnet18(weights=seeded_state_dict("resnet18", seed=0))


# Gradients get 2e-4 of the largest one: two correct fp32 implementations sum in different orders,
# and batch-statistics batchnorm backward subtracts means of products, which amplifies that; on
# these inputs the numba and numpy backends differ by at most 5e-6 (loss 4e-7, parameters after
# the step 4e-6). A wrong kernel is off by 1e-2 or more. The inputs are 64x64 on purpose: at
# 32x32 layer4 normalises two values per channel and the gradients blow up (to ~1e3), where even
# the two CPU backends differ by 5e-3.
@gpu
@pytest.mark.parametrize("which", ["digits", "resnet18"])
def test_training_step_on_cupy_equals_numpy(which):
    import cupy

    rng = np.random.default_rng(3)
    if which == "digits":
        build, x, y = _digits, rng.standard_normal((16, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 16)
        names = ["0.weight", "0.bias", "3.weight", "7.weight", "10.bias"]
    else:
        build, x, y = _resnet, rng.standard_normal((4, 3, 64, 64)).astype(np.float32), rng.integers(0, 1000, 4)
        names = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                 "layer3.1.bn2.bias", "layer4.1.conv2.weight", "fc.weight", "fc.bias"]
    loss, grads, params, model = _train_step("cupy", build, x, y)
    ref_loss, ref_grads, ref_params, _ = _train_step("numpy", build, x, y)
    assert np.isfinite(loss) and abs(loss - ref_loss) <= 1e-5 * max(abs(ref_loss), 1.0)
    for n in names:
        assert _rel(grads[n], ref_grads[n]) < 2e-4, n
        assert _rel(params[n], ref_params[n]) < 1e-4, n
    # the step happened on the device: parameters, gradients and optimizer state live there
    for n, p in model.named_parameters():
        assert isinstance(p.data, cupy.ndarray) and isinstance(p.grad, cupy.ndarray), n


@gpu
def test_data_stays_on_the_device(resnet_ref):
    import cupy

    model = resnet18(weights=resnet_ref.sd).eval()
    x = resnet_ref.x[:1]
    with mc.backend("cupy"), mc.no_grad():
        stages = model.activations(x)
        from_device = model(cupy.asarray(x))
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    for name, a in stages.items():
        assert isinstance(a, cupy.ndarray), f"{name} came back as {type(a).__name__}"
    for name, b in model.named_buffers():
        assert isinstance(b, cupy.ndarray), name
    # numpy input and CuPy input give the same numbers (1e-6: a kernel may sum in a different
    # order from run to run, e.g. split-K atomics; the inputs are the same)
    assert isinstance(from_device, cupy.ndarray)
    assert _rel(from_device, stages["fc"]) < 1e-6
    assert _rel(stages["fc"], resnet_ref.logits[:1]) < 1e-4


@gpu
def test_compiled_model_on_cupy_equals_eager(resnet_ref):
    import cupy

    model = resnet18(weights=resnet_ref.sd).eval()
    fast = inference.compile_inference(model)
    with mc.backend("cupy"), mc.no_grad():
        eager = model(resnet_ref.x)
        got = fast(resnet_ref.x)
        again = fast(cupy.asarray(resnet_ref.x))
    assert isinstance(got, cupy.ndarray)
    assert _rel(got, eager) < 1e-4 and _rel(got, resnet_ref.logits) < 1e-4
    assert _rel(again, got) < 1e-6


@gpu
def test_graph_matmul_direct_cublas_equals_cupy_matmul():
    """graph.matmul's own cuBLAS path (the one a recording takes) on the layouts the backend
    passes: transposed, padded, batched and broadcast operands, float32 and float64."""
    import ctypes

    import cupy

    rng = np.random.default_rng(7)
    rec = types.SimpleNamespace(lib=graph._cublas(), handle=graph._handle(cupy.cuda.Device().id))
    # outside a recording the handle runs on the current stream (setting it also restores
    # cuBLAS's own workspace)
    rec.lib.call("cublasSetStream_v2", rec.handle, ctypes.c_void_p(cupy.cuda.get_current_stream().ptr))

    def operands(dtype):
        def r(*shape):
            return cupy.asarray(rng.standard_normal(shape).astype(dtype))
        yield r(64, 96), r(96, 40)                      # row-major
        yield r(96, 64).T, r(40, 96).T                  # column-major views
        yield r(64, 128)[:, :96], r(96, 50)[:, 5:45]    # padded leading dimensions, offset start
        yield r(8, 64, 96), r(96, 40)                   # batched a, shared b
        yield r(64, 96), r(3, 96, 40)                   # shared a, batched b
        yield r(2, 3, 16, 24), r(1, 3, 24, 8)           # broadcast over one batch axis: copied first

    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        for a, b in operands(dtype):
            want = cupy.matmul(a, b)
            out = cupy.empty(want.shape, dtype)
            graph._local.recording = rec
            try:
                got = graph.matmul(a, b)
                assert graph.matmul(a, b, out=out) is out
            finally:
                graph._local.recording = None
            assert got.shape == want.shape and _rel(got, want) < tol, (a.shape, b.shape, dtype)
            assert _rel(out, want) < tol


@gpu
def test_capture_graph_records_kernels_and_gemms():
    """graph.capture_graph on its own: elementwise kernels and a GEMM (cuBLAS through its C API
    while recording), replayed on new inputs, each replay a new array equal to the eager result."""
    import cupy

    rng = np.random.default_rng(11)
    w = cupy.asarray(rng.standard_normal((96, 40)).astype(np.float32))

    def f(a):
        return cupy.tanh(graph.matmul(a * 0.5, w)) + 1.0

    xs = [cupy.asarray(rng.standard_normal((8, 96)).astype(np.float32)) for _ in range(3)]
    g = graph.capture_graph(f, xs[0])
    assert g.shape == (8, 96) and g.out_shape == (8, 40) and g.nbytes > 0
    outs = [g(x) for x in xs]
    for x, y in zip(xs, outs):
        assert isinstance(y, cupy.ndarray) and _rel(y, f(x)) < 1e-5
    assert outs[0] is not outs[1] and _rel(outs[0], outs[1]) > 1e-2
    with pytest.raises(ValueError, match=r"recorded for input shape \(8, 96\), got \(4, 96\)"):
        g(xs[0][:4])


@gpu
def test_capture_graph_refuses_a_function_that_waits_for_the_device():
    import cupy

    x = cupy.arange(6, dtype=cupy.float32)

    def syncs(a):
        return cupy.asarray(cupy.asnumpy(a) * 2)  # a copy to the host: nothing a graph can hold

    with pytest.raises(RuntimeError, match=r"^graph capture failed while recording: "):
        graph.capture_graph(syncs, x)
    # no stream was left capturing, and the next recording works
    assert float((x * 2).sum()) == 30.0
    g = graph.capture_graph(lambda a: a * 3, x)
    assert float(g(x).sum()) == 45.0


@gpu
def test_captured_graph_equals_eager_at_batch_1(resnet_ref):
    import cupy

    model = resnet18(weights=resnet_ref.sd).eval()
    fast = inference.compile_inference(model)
    x1, x2 = resnet_ref.x[:1], resnet_ref.x[1:]
    with mc.backend("cupy"), mc.no_grad():
        eager1, eager2 = fast(x1), fast(x2)
        g = fast.capture(cupy.asarray(x1))
        got2 = g(x2)
        got1 = g(cupy.asarray(x1))
        got2_again = g(x2)
    assert isinstance(got1, cupy.ndarray) and got1 is not got2
    assert _rel(got2, eager2) < 1e-4 and _rel(got1, eager1) < 1e-4
    assert _rel(got2, resnet_ref.logits[1:]) < 1e-4
    # each replay takes its own input: the two images' logits differ, and a replay repeats exactly
    assert _rel(got1, got2) > 1e-3
    assert _rel(got2_again, got2) < 1e-6
