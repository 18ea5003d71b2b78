"""The benchmark harness: validation catches wrong kernels, FLOP counts are right, reports get written.

No assertion here is about speed: timings only have to exist, not to be fast.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn.backends.numpy.conv import conv2d_forward as np_conv, conv2d_forward_naive
from minicnn.bench import end_to_end, harness, ops, shapes
from minicnn.bench.roofline import roofline_points


@pytest.fixture(autouse=True)
def _restore_numba_threads():
    """``harness.set_threads`` pins numba's count for the process, as a benchmark run wants; here it
    must not outlive the test (the tests that run after compare against their own serial calls)."""
    numba = sys.modules.get("numba")
    before = numba.get_num_threads() if numba is not None else None
    yield
    numba = sys.modules.get("numba")
    if numba is not None:
        want = before if before is not None else numba.config.NUMBA_NUM_THREADS
        if numba.get_num_threads() != want:
            numba.set_num_threads(want)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the sweeps and A/B scripts live in the checkout's benchmarks/ folder
    sys.path.insert(0, str(ROOT))

TINY = shapes.ConvShape(2, 3, 7, 6, 4, 3, 3, stride=1, pad=1, where="tiny")


@pytest.fixture(scope="module")
def env():
    # no ceilings: nothing here judges speed, and measuring them costs time
    e = harness.setup(threads=2, quick=True, ceilings=False)
    e.warmup, e.repeats, e.max_seconds = 0, 2, 0.05
    return e


def _variant(name, fn, kernel="conv2d_forward"):
    return harness.Variant(name, "test", kernel, fn)


# -- validation ----------------------------------------------------------------------------------


def test_wrong_kernels_fail_validation_and_are_not_timed(env):
    calls = {"dropped_bias": 0, "flipped": 0, "off_by_one": 0}

    def dropped_bias(x, w, b, *a):
        calls["dropped_bias"] += 1
        return np_conv(x, w, None, *a)  # forgets the bias

    def flipped(x, w, b, *a):
        calls["flipped"] += 1
        return np_conv(x, w[:, :, ::-1, ::-1].copy(), b, *a)  # convolution instead of correlation

    def off_by_one(x, w, b, *a):
        calls["off_by_one"] += 1
        y = np_conv(x, w, b, *a)
        return np.roll(y, 1, axis=-1)  # every output one pixel to the right

    def wrong_shape(x, w, b, *a):
        return np_conv(x, w, b, *a)[:, :, 1:]

    def nan_kernel(x, w, b, *a):
        y = np_conv(x, w, b, *a)
        y[0, 0, 0, 0] = np.nan
        return y

    def raises(x, w, b, *a):
        raise RuntimeError("kernel exploded")

    good = [_variant("naive", conv2d_forward_naive), _variant("im2col", np_conv)]
    bad = [_variant("dropped_bias", dropped_bias), _variant("flipped", flipped), _variant("off_by_one", off_by_one),
           _variant("wrong_shape", wrong_shape), _variant("nan", nan_kernel), _variant("raises", raises)]
    res = harness.run_cases([ops.conv_forward_case(TINY)], good + bad, env)
    rows = {r["variant"]: r for r in res[0]["variants"]}
    for v in good:
        r = rows[v.name]
        assert r["status"] == "ok", r
        assert r["max_rel_err"] < 1e-6
        assert r["runs"] >= 1 and r["median_ms"] is not None and r["gflops"] is not None
    for v in bad:
        r = rows[v.name]
        assert r["status"] == "FAIL", r
        assert r["median_ms"] is None and r["runs"] == 0 and r["gflops"] is None
    assert rows["dropped_bias"]["max_rel_err"] > 1e-2
    assert "kernel exploded" in rows["raises"]["note"]
    assert math.isinf(rows["wrong_shape"]["max_rel_err"]) and math.isinf(rows["nan"]["max_rel_err"])
    # validated once, never timed: exactly one call each
    assert calls == {"dropped_bias": 1, "flipped": 1, "off_by_one": 1}
    # the markdown lists the failures with their reason
    text = harness.markdown(res)
    assert "| conv 3->4 3x3 s1 7x6 n2 | 1 | flipped | FAIL |" in text
    assert "Failed validation" in text and "dropped_bias" in text


def test_backward_and_maxpool_validation_catch_wrong_gradients(env):
    from minicnn.backends.numpy.conv import conv2d_backward
    from minicnn.backends.numpy.pool import maxpool2d_forward

    def dx_times_two(dy, x, w, *a):
        dx, dw, db = conv2d_backward(dy, x, w, *a)
        return (None if dx is None else 2 * dx), dw, db

    def dw_transposed_taps(dy, x, w, *a):
        dx, dw, db = conv2d_backward(dy, x, w, *a)
        return dx, (None if dw is None else dw.transpose(0, 1, 3, 2).copy()), db

    def argmax_off(x, *a):
        y, idx = maxpool2d_forward(x, *a)
        return y, idx + 1  # right maxima, wrong winners: backward would route gradients wrongly

    variants = [harness.Variant("ref", "numpy", "conv2d_backward", conv2d_backward),
                harness.Variant("dx_times_two", "test", "conv2d_backward", dx_times_two),
                harness.Variant("dw_transposed", "test", "conv2d_backward", dw_transposed_taps),
                harness.Variant("ref", "numpy", "maxpool2d_forward", maxpool2d_forward),
                harness.Variant("argmax_off", "test", "maxpool2d_forward", argmax_off)]
    s = shapes.ConvShape(2, 3, 6, 6, 4, 3, 3, stride=2, pad=1)
    pool = shapes.PoolShape(2, 3, 9, 9, 3, 2, 1)
    cases = [ops.conv_backward_dx_case(s), ops.conv_backward_dw_case(s), ops.maxpool_case(pool)]
    res = harness.run_cases(cases, variants, env)
    status = {(r["op"], v["variant"]): v["status"] for r in res for v in r["variants"]}
    assert status == {
        ("conv2d_backward_dx", "ref"): "ok", ("conv2d_backward_dx", "dx_times_two"): "FAIL",
        ("conv2d_backward_dx", "dw_transposed"): "ok",  # dx is right; this case only looks at dx
        ("conv2d_backward_dw", "ref"): "ok", ("conv2d_backward_dw", "dx_times_two"): "ok",
        ("conv2d_backward_dw", "dw_transposed"): "FAIL",
        ("maxpool2d_forward", "ref"): "ok", ("maxpool2d_forward", "argmax_off"): "FAIL",
    }


def test_slow_and_unsupported_variants_are_skipped_not_failed(env):
    big = shapes.ConvShape(1, 8, 16, 16, 8, 3, 3, pad=1)
    naive = harness.Variant("naive", "numpy", "conv2d_forward", conv2d_forward_naive, max_macs=1000)
    only_1x1 = harness.Variant("only_1x1", "test", "conv2d_forward", np_conv, applies=lambda a: a[1].shape[2:] == (1, 1))
    res = harness.run_cases([ops.conv_forward_case(big)], [naive, only_1x1], env)
    rows = {r["variant"]: r for r in res[0]["variants"]}
    assert rows["naive"]["status"] == "skip" and "MACs" in rows["naive"]["note"]
    assert rows["only_1x1"]["status"] == "n/a"


def test_max_rel_error_rules():
    ref = np.array([[1.0, -2.0], [4.0, 0.5]], np.float32)
    assert harness.max_rel_error(ref, ref) == 0.0
    assert harness.max_rel_error(ref + np.float32(0.04), ref) == pytest.approx(0.01, rel=1e-5)
    assert math.isinf(harness.max_rel_error(ref[:1], ref))
    bad = ref.copy()
    bad[0, 0] = np.inf
    assert math.isinf(harness.max_rel_error(bad, ref))
    idx = np.array([0, 1, 2, 3])
    assert harness.max_rel_error(idx, idx) == 0.0
    assert harness.max_rel_error(np.array([0, 1, 2, 4]), idx) == 0.25


def usable_backends():
    from minicnn.backends import AVAILABLE, load

    out = []
    for name in AVAILABLE:
        try:
            load(name)
            out.append(name)
        except Exception:  # noqa: BLE001 - not usable here
            pass
    return out


def test_discovered_variants_include_reference_and_every_usable_backend():
    names = {(v.kernel, v.name) for v in harness.discover_variants(torch=False)}
    assert ("conv2d_forward", "numpy/naive") in names
    assert ("conv2d_forward", "numpy/im2col") in names
    for be in usable_backends():
        for kernel in harness.KERNELS:
            assert any(k == kernel and n.startswith(be + "/") for k, n in names), (be, kernel)
    # a backend's named conv variants are all offered (numba: conv.VARIANTS), for fused forward too
    if "numba" in usable_backends():
        from minicnn.backends.numba.conv import VARIANTS

        for vname in VARIANTS:
            assert ("conv2d_forward", f"numba/{vname}") in names


def test_every_discovered_variant_passes_on_small_shapes(env):
    """The real kernels of every usable backend pass validation on small ResNet-like shapes."""
    small = [shapes.ConvShape(2, 8, 9, 9, 16, 3, 3, 1, 1), shapes.ConvShape(2, 8, 9, 9, 16, 1, 1, 2, 0),
             shapes.ConvShape(1, 3, 20, 20, 8, 7, 7, 2, 3)]
    cases = [f(s) for s in small for f in (ops.conv_forward_case, ops.conv_fused_case, ops.conv_backward_dx_case,
                                            ops.conv_backward_dw_case)]
    cases += [ops.maxpool_case(shapes.PoolShape(2, 4, 11, 11, 3, 2, 1)), ops.linear_case(shapes.LinearShape(3, 20, 7))]
    res = harness.run_cases(cases, harness.discover_variants(torch=False), env)
    failed = [(r["op"], r["label"], v["variant"], v["note"]) for r in res for v in r["variants"] if v["status"] == "FAIL"]
    assert not failed
    assert all(v["status"] in ("ok", "n/a", "skip") for r in res for v in r["variants"])


# -- FLOP counts and shapes ----------------------------------------------------------------------


def test_flop_counts_for_known_shapes():
    convs, pool, fc = shapes.resnet18_layers(batch=1, size=224)
    conv1 = convs[0]
    assert (conv1.c, conv1.k, conv1.r, conv1.stride, conv1.p, conv1.q) == (3, 64, 7, 2, 112, 112)
    # 64 filters x 3x7x7 taps x 112x112 outputs, two FLOPs per multiply-add
    assert conv1.macs == 64 * 3 * 7 * 7 * 112 * 112 == 118_013_952
    assert conv1.flops == 236_027_904
    assert conv1.bytes_forward() == 4 * (3 * 224 * 224 + 64 * 3 * 49 + 64 * 112 * 112)
    # the whole network: torchvision lists ResNet-18 at 1.81 G multiply-adds ("GFLOPS") per image
    assert shapes.network_macs(convs, fc) == 1_814_073_344
    assert shapes.network_macs(*[shapes.resnet18_layers(batch=8)[i] for i in (0, 2)]) == 8 * 1_814_073_344
    assert len(convs) == 11 and sum(c.count for c in convs) == 20
    assert (pool.p, pool.q, pool.flops) == (56, 56, 64 * 56 * 56 * 9)
    assert fc.flops == 2 * 512 * 1000
    # a case carries the same counts the shape gives
    case = ops.conv_backward_dw_case(convs[1])
    assert case.flops == 2 * 64 * 64 * 9 * 56 * 56 and case.count == 4
    assert case.bytes == 4 * (64 * 56 * 56 + 64 * 56 * 56 + 64 * 64 * 9)


def test_shapes_match_the_real_resnet18():
    """Every conv the library's resnet18 runs, with its input shape, is in resnet18_layers with the right count."""
    import minicnn as mc
    from minicnn import nn
    from minicnn.models.resnet import resnet18

    model = resnet18().eval()
    seen = {}
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fwd = m.forward

            def rec(x, _m=m, _fwd=fwd):
                key = (_m.in_channels, x.shape[2], _m.out_channels, _m.kernel_size[0], _m.stride[0], _m.padding[0])
                seen[key] = seen.get(key, 0) + 1
                return _fwd(x)

            object.__setattr__(m, "forward", rec)
    with mc.backend("numpy"), mc.no_grad():
        model(np.zeros((1, 3, 64, 64), np.float32))
    convs, _, fc = shapes.resnet18_layers(batch=1, size=64)
    assert {(s.c, s.h, s.k, s.r, s.stride, s.pad): s.count for s in convs} == seen
    assert (fc.f, fc.o) == (model.fc.in_features, model.fc.out_features)


# -- reports -------------------------------------------------------------------------------------


def test_tiny_ops_run_writes_json_markdown_and_roofline(tmp_path, env):
    cases = [ops.conv_forward_case(TINY, "tiny"), ops.conv_fused_case(TINY, "tiny"),
             ops.linear_case(shapes.LinearShape(2, 16, 5), "tiny")]
    variants = harness.discover_variants(backends=("numpy",), torch=False)
    logged = []
    payload = ops.run(quick=True, out_dir=str(tmp_path), variants=variants, cases=cases, env=env, log=logged.append)
    data = json.loads((tmp_path / "ops.json").read_text())
    assert data["suite"] == "ops" and len(data["results"]) == 3
    assert {r["op"] for r in data["results"]} == {"conv2d_forward", "conv2d_fused_forward", "linear_forward"}
    row = data["results"][0]
    assert row["flops"] == TINY.flops and row["shape"]["p"] == 7
    assert {v["variant"] for v in row["variants"]} == {"numpy/naive", "numpy/im2col"}
    assert all(v["status"] == "ok" and v["median_ms"] is not None for v in row["variants"])
    md = (tmp_path / "ops.md").read_text()
    assert "| shape | uses | variant | status | max rel err | median ms | min ms | GFLOP/s | % sgemm |" in md
    assert "### conv2d_fused_forward" in md and "numpy/naive" in md
    assert any("conv2d_forward" in line for line in logged)
    png = tmp_path / "roofline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and payload["plot"] == str(png)
    # every timed row is a point: naive + im2col conv, the im2col fused conv, the linear op
    assert len(roofline_points(data["results"])) == 4
    assert data["env"]["machine"]["numpy"] == np.__version__


def test_ops_run_without_matplotlib_writes_everything_but_the_plot(tmp_path, env, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it fails
    logged = []
    payload = ops.run(quick=True, out_dir=str(tmp_path), variants=[_variant("im2col", np_conv)],
                      cases=[ops.conv_forward_case(TINY)], env=env, log=logged.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.json", "ops.md"] and "plot" not in payload
    assert "roofline.png not drawn: matplotlib is not installed (pip install matplotlib)" in logged
    assert json.loads((tmp_path / "ops.json").read_text())["results"][0]["variants"][0]["status"] == "ok"


@pytest.mark.torch
def test_tiny_end_to_end_run_cross_checks_frameworks(tmp_path, env):
    pytest.importorskip("torch")
    # the numpy backend and the two references: each runs in its own process, so keep the list short
    frameworks = ["minicnn numpy", "minicnn numpy compiled", "pytorch", "onnxruntime"]
    payload = end_to_end.run(quick=True, out_dir=str(tmp_path), parts=("inference",), batches=(1,), size=32,
                             env=env, log=lambda *_: None, frameworks=frameworks)
    data = json.loads((tmp_path / "e2e.json").read_text())
    rows = {r["framework"]: r for r in data["inference"]}
    assert set(rows) == set(frameworks) - (set() if importlib.util.find_spec("onnxruntime") else {"onnxruntime"})
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r)
        assert r["max_rel_err"] < 1e-4 and r["img_per_s"] > 0
    md = (tmp_path / "e2e.md").read_text()
    assert "### ResNet-18 inference (fp32, 32x32)" in md and "| 1 | pytorch |" in md
    assert payload["inference"][0]["reference"] == "pytorch"


@pytest.mark.torch
def test_pytorch_is_the_reference_of_every_batch_even_when_not_timed(env):
    # with torch installed, a run that times only minicnn is still checked at batches the numpy
    # reference would not run (here above numpy_max_batch=1); PyTorch's child is not reported
    pytest.importorskip("torch")
    rows = end_to_end.inference(env, batches=(1, 2), log=lambda *_: None, numpy_max_batch=1, size=32,
                                frameworks=["minicnn numba compiled"])
    assert [(r["framework"], r["batch"], r["status"], r["reference"]) for r in rows] == [
        ("minicnn numba compiled", 1, "ok", "pytorch"), ("minicnn numba compiled", 2, "ok", "pytorch")]
    assert all(r["max_rel_err"] < 1e-4 for r in rows)


def test_a_batch_the_reference_did_not_run_is_refused_not_timed(tmp_path, env):
    # the numpy reference runs only the small batches (no PyTorch): a larger batch has nothing to be
    # checked against, so it fails in one line instead of raising KeyError or passing unchecked
    ref = str(tmp_path / "ref.npz")
    end_to_end.child_infer("minicnn numpy", (1,), 32, 1, True, 0.0, save_path=ref)
    rows = end_to_end.child_infer("minicnn numpy compiled", (1, 2), 32, 1, True, 0.0, ref_path=ref)
    assert rows[0]["status"] == "ok" and rows[0]["max_rel_err"] < 1e-4
    assert rows[1]["status"] == "FAIL" and rows[1]["median_ms"] is None
    assert "no reference logits at batch 2" in rows[1]["note"]


def test_end_to_end_markdown_and_part_checks():
    payload = {
        "training": [{"model": "digits convnet", "batch": 64, "framework": "minicnn numba", "first_loss": 2.3,
                      "loss_rel_err_vs_pytorch": 1e-7, "status": "ok", "median_ms": 5.0, "img_per_s": 12800.0}],
        "memory": [{"framework": "pytorch", "rss_model_mb": 300.0, "first_call_peak_mb": 20.0, "steady_peak_mb": 12.0,
                    "tracemalloc_peak_mb": None, "process_peak_mb": 330.0, "status": "ok"}],
    }
    md = end_to_end.markdown(payload)
    assert "| digits convnet | 64 | minicnn numba | 5.00 | 12800.0 | 2.30000 | 1.0e-07 |  | ok |" in md
    assert "| pytorch | 300 | 20.0 | 12.0 |  | 330 | ok  |" in md
    with pytest.raises(ValueError, match="unknown benchmark part.*bogus"):
        end_to_end.check_parts(["inference", "bogus"])


def test_cli_bench_rejects_bad_arguments(capsys):
    from minicnn.cli import main

    assert main(["bench", "e2e", "--parts", "inference,nope"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["minicnn bench: error: unknown benchmark part(s) nope; choose from "
                                        "inference, training, memory, startup"]
    assert main(["bench", "ops", "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(["bench", "e2e", "--rounds", "0"]) == 1
    assert "--rounds must be at least 1" in capsys.readouterr().err


def test_inference_rounds_keep_each_frameworks_best_round_and_any_failure():
    kept = {}
    row = lambda fw, ms, status="ok": {"framework": fw, "batch": 1, "median_ms": ms, "status": status}  # noqa: E731
    for r in (row("a", 12.0), row("b", 20.0), row("a", 10.0), row("b", 25.0), row("a", 11.0), row("b", None, "FAIL")):
        end_to_end._merge_round(kept, r)
    assert kept[("a", 1)]["median_ms"] == 10.0 and kept[("a", 1)]["rounds_ms"] == [12.0, 10.0, 11.0]
    # a failed round is reported whatever the others measured
    assert kept[("b", 1)]["status"] == "FAIL" and kept[("b", 1)]["rounds_ms"] == [20.0, 25.0, None]
    md = end_to_end.markdown({"inference": [dict(kept[("a", 1)], size=224, min_ms=9.5, ms_per_img=10.0,
                                                 img_per_s=100.0, max_rel_err=1e-7)]})
    assert "3 rounds, the frameworks' processes taking turns" in md
    assert md.splitlines()[-1] == "| 1 | a | 10.0 | 9.5 | 10.0 | 100.0 | 1.0e-07 |  | ok | 12.0 / 10.0 / 11.0 |"


def test_tiny_end_to_end_run_in_rounds(tmp_path, env):
    """Two rounds of two numpy-backend frameworks at 32x32: every row checked and timed twice."""
    frameworks = ["minicnn numpy", "minicnn numpy compiled"]
    payload = end_to_end.run(quick=True, out_dir=str(tmp_path), parts=("inference",), batches=(1,), size=32,
                             env=env, log=lambda *_: None, frameworks=frameworks, rounds=2)
    rows = {r["framework"]: r for r in payload["inference"]}
    assert set(rows) == set(frameworks)
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r)
        assert len(r["rounds_ms"]) == 2 and r["median_ms"] == min(r["rounds_ms"])
    assert rows["minicnn numpy compiled"]["max_rel_err"] < 1e-4
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        end_to_end.inference(env, (1,), rounds=0)


def test_training_in_rounds_keeps_each_frameworks_best_round(env):
    """Two rounds of the training part (ResNet-18 at 32x32, batch 2): each (model, framework) row
    is its best round, both rounds' medians kept; minicnn's first loss checked against PyTorch's."""
    rows = end_to_end.training(env, log=lambda *_: None, resnet_batch=2, resnet_size=32, rounds=2)
    torch_here = end_to_end.torch_resnet_module() is not None
    fws = (["pytorch"] if torch_here else []) + ["minicnn numba"]
    assert sorted((r["model"], r["framework"]) for r in rows) == sorted(
        (m, fw) for m in ("digits convnet", "resnet18") for fw in fws)
    for r in rows:
        assert r["status"] == "ok", r
        assert len(r["rounds_ms"]) == 2 and r["median_ms"] == min(r["rounds_ms"])
        if torch_here and r["framework"] != "pytorch":
            assert r["loss_rel_err_vs_pytorch"] < 1e-3
    md = end_to_end.markdown({"training": rows})
    assert "2 rounds per model, the frameworks' processes taking turns" in md
    row = next(r for r in rows if r["model"] == "resnet18" and r["framework"] == "minicnn numba")
    assert md.splitlines()[-1].count("|") == 11  # ten columns and the round medians
    ms = ".2f" if row["median_ms"] < 10 else ".1f"  # a step of a few ms gets two decimals
    assert " / ".join(format(v, ms) for v in row["rounds_ms"]) in md
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        end_to_end.training(env, rounds=0)


def test_quietly_redoes_disturbed_measurements_and_keeps_the_least_disturbed(monkeypatch):
    loads = iter([1.5, 0.9, 1.2, 1.4, 0.1])
    monkeypatch.setattr(harness, "wait_for_quiet", lambda *a, **k: None)
    monkeypatch.setattr(harness.LoadMeter, "other_cores", lambda self: next(loads))
    e = harness.Env(threads=2, quick=True, sgemm_gflops=1.0, sgemm_n=1, copy_gbps=1.0, copy_mb=1, machine={},
                    quiet_wait_s=5.0, quiet_threshold=0.3, quiet_retries=2)
    calls = []
    # three attempts, all disturbed: the second (0.9 cores) is kept
    assert harness.quietly(lambda: calls.append(1) or len(calls), e) == (2, 0.9)
    assert len(calls) == 3
    # a quiet attempt ends the retries at once
    calls.clear()
    assert harness.quietly(lambda: calls.append(1) or len(calls), e) == (2, 0.1)
    # without a quiet wait, one measurement whatever the load
    e.quiet_wait_s = 0.0
    monkeypatch.setattr(harness.LoadMeter, "other_cores", lambda self: 1.9)
    calls.clear()
    assert harness.quietly(lambda: calls.append(1) or len(calls), e) == (1, 1.9)


def test_variant_sweep_times_every_variant_and_reports_the_rule(monkeypatch):
    """The sweep behind choose_variant: every variant validated then timed on each pass, with the
    rule's pick alongside (small shapes here; the real run uses ResNet-18's)."""
    pytest.importorskip("numba")
    from benchmarks import variant_sweep
    from minicnn.backends.numba import conv

    monkeypatch.setattr(variant_sweep, "SHAPES", ((32, 8),))
    rows = variant_sweep.sweep(batches=(2,), rounds=1, threads=1, extra=False, log=lambda line: None)
    assert [r["pass"] for r in rows] == ["const fwd", "fwd", "dX", "dW"]
    for r in rows:
        assert all(isinstance(r[v], float) and r[v] > 0 for v in variant_sweep.VARIANTS), r
        want = conv.choose_variant((2, 32, 8, 8), (32, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1,
                                   constant=r["pass"] == "const fwd")
        assert r["rule"] == want
    assert variant_sweep._line(rows[0]).count("|") == 8
    # --kernel 5: im2col against F(2x2, 5x5), both validated against the reference before timing
    monkeypatch.setattr(variant_sweep, "SHAPES_5X5", ((32, 8, 6),))
    rows = variant_sweep.sweep(batches=(8,), rounds=1, threads=1, log=lambda line: None, kernel=5)
    assert [r["pass"] for r in rows] == ["const fwd", "fwd", "dX", "dW"]
    for r in rows:
        assert all(isinstance(r[v], float) and r[v] > 0 for v in variant_sweep.VARIANTS_5X5), r
        want = conv.choose_variant((8, 32, 6, 6), (8, 32, 5, 5), (1, 1), (2, 2), (1, 1), 1,
                                   constant=r["pass"] == "const fwd")
        assert r["rule"] == want
    # 72 2x2 tiles: above the constant filter's floor, below the writeable one's
    assert [r["rule"] for r in rows[:2]] == ["winograd_f2x2_5x5", "im2col_gemm"]


def test_train_ab_runs_both_sides_to_the_same_loss():
    """The Winograd-backward A/B: both sides run and agree on the loss (it raises otherwise)."""
    pytest.importorskip("numba")
    from benchmarks import train_ab
    from minicnn.backends.numba import conv

    before = (conv._dw_by_winograd, conv._dx_by_winograd)
    times = train_ab.ab(batch=2, steps=2, off="both", threads=1, size=32)
    assert len(times["on"]) == len(times["off"]) == 2 and min(times["on"] + times["off"]) > 0
    assert (conv._dw_by_winograd, conv._dx_by_winograd) == before  # restored


def test_unfold_sweep_checks_and_times_both_forms(monkeypatch):
    """The sweep behind unfold_mode: both forms of the unfold and the fold are checked against the
    reference (a broken form raises) and timed, with the rule's picks alongside."""
    pytest.importorskip("numba")
    from benchmarks import unfold_sweep
    from minicnn.backends.numba import im2col

    monkeypatch.setattr(unfold_sweep, "CASES", ((2, 3, 6, 6, 3, 1, 1), (1, 2, 9, 9, 3, 2, 1)))
    rows = unfold_sweep.sweep(rounds=1, threads=1, log=lambda line: None)
    assert [r["unfold mode"] for r in rows] == ["table", "table"]
    for r in rows:
        times = [v for k, v in r.items() if k.endswith("(us)")]
        assert len(times) == 8 and all(isinstance(t, float) and t > 0 for t in times), r
    assert unfold_sweep.markdown(rows).count("\n") == 3

    real = im2col.im2col

    def broken(x, n0, nc, cols, *args, mode=None):
        real(x, n0, nc, cols, *args, mode=mode)
        if mode == im2col.ROWS:
            cols[0, 0] += 1

    monkeypatch.setattr(im2col, "im2col", broken)
    with pytest.raises(AssertionError, match="im2col mode 1 differs"):
        unfold_sweep.sweep(rounds=1, threads=1, log=lambda line: None)


def test_threads_ab_times_every_configuration_and_restores_the_settings():
    pytest.importorskip("numba")
    from benchmarks import threads_ab
    from minicnn.backends.numba import _threads

    before = (_threads.SPLIT_MIN_MACS, _threads.SERIAL_MAX_WORK, _threads.GEMM_THREADS)
    times = threads_ab.ab("digits", serial_max=(0, 1 << 40), split_min=(1, 1 << 40), rounds=1, reps=2, threads=1,
                          gemm=("numba", "pool"))
    assert sorted(times) == [(s, m, g) for s in (0, 1 << 40) for m in (1, 1 << 40) for g in ("numba", "pool")]
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    assert (_threads.SPLIT_MIN_MACS, _threads.SERIAL_MAX_WORK, _threads.GEMM_THREADS) == before


def test_unfold_sweep_pools_checks_and_times_every_max_pool_form(monkeypatch):
    pytest.importorskip("numba")
    from benchmarks import unfold_sweep
    from minicnn.backends.numba import pool

    before = pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX
    monkeypatch.setattr(unfold_sweep, "POOL_CASES", ((2, 3, 6, 6),))
    rows = unfold_sweep.pool_sweep(rounds=1, threads=1, log=lambda line: None)
    assert len(rows) == 1 and all(rows[0][f"{form} (us)"] > 0 for form in ("2x2", "rows", "table", "windows"))
    assert (pool.TWO_BY_TWO, pool.ROWS_MIN_Q, pool.TABLE_MAX) == before  # restored


# -- where results and temporary files go --------------------------------------------------------


def test_other_cores_never_exceeds_the_machine(monkeypatch):
    import os

    meter = harness.LoadMeter()
    # a short window's tick rounding: /proc/stat says 50 busy core-seconds went by, we used none
    busy = iter([100.0, 150.0])
    monkeypatch.setattr(harness.LoadMeter, "_busy_seconds", staticmethod(lambda: next(busy)))
    monkeypatch.setattr(harness.LoadMeter, "_own_seconds", staticmethod(lambda: 0.0))
    meter.start()
    assert meter.other_cores() == float(os.cpu_count())
    # and never below zero when our own time outran the machine's count
    busy = iter([100.0, 100.0])
    monkeypatch.setattr(harness.LoadMeter, "_own_seconds", staticmethod(iter([0.0, 5.0]).__next__))
    meter.start()
    assert meter.other_cores() == 0.0


def test_quick_runs_never_write_over_the_committed_results(tmp_path, env, capsys, monkeypatch):
    from minicnn.cli import main

    committed = harness.COMMITTED_RESULTS
    assert Path(committed) == ROOT / "benchmarks" / "results"
    with pytest.raises(ValueError, match="--quick results would overwrite the committed full run"):
        harness.check_out_dir(committed, quick=True)
    assert harness.check_out_dir(committed, quick=False) == committed  # a full run may, when named
    before = {p.name: p.stat().st_mtime_ns for p in Path(committed).iterdir()}
    # the library entry points refuse before measuring anything
    with pytest.raises(ValueError, match="committed full run"):
        ops.run(quick=True, out_dir=committed, env=env, cases=[], variants=[], log=lambda *_: None)
    with pytest.raises(ValueError, match="committed full run"):
        end_to_end.run(quick=True, out_dir=committed, parts=("memory",), env=env, log=lambda *_: None)
    # the command: one line, exit status 1, nothing written
    assert main(["bench", "ops", "--quick", "--out", committed]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would overwrite the committed full run" in err[0]
    with pytest.raises(SystemExit) as e:
        ops.main(["--quick", "--out", committed])
    assert e.value.code == 2 and "committed full run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in Path(committed).iterdir()} == before
    # by default a run writes into ./bench-results of the working directory
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(ops, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(harness, "setup", lambda **kw: env)
    assert main(["bench", "ops", "--quick"]) == 0
    assert seen["out_dir"] == str(tmp_path / "bench-results") and (tmp_path / "bench-results").is_dir()
    capsys.readouterr()


def test_end_to_end_parts_leave_no_temporary_folders(tmp_path, env, monkeypatch):
    """Each part that writes files (the reference logits, the exported ONNX model, the seeded
    weights and numba caches of the start-up part) writes them under one temporary folder per
    run, and removes it when the part ends, whether it succeeded or not."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made = []
    real = tempfile.TemporaryDirectory

    def tracked(*a, **k):
        d = real(*a, **k)
        made.append(Path(d.name))
        return d

    monkeypatch.setattr(tempfile, "TemporaryDirectory", tracked)
    end_to_end.run(quick=True, out_dir=str(tmp_path / "out"), parts=("inference",), batches=(1,), size=32,
                   env=env, log=lambda *_: None, frameworks=["minicnn numpy"])
    assert made and all(p.parent == scratch for p in made)
    # start-up: the commands are replaced by stand-ins that check what they were given
    seen = []

    def fake_cli(args, env_extra, threads, timeout=600):
        weights = Path(args[args.index("--weights") + 1])
        assert weights.stat().st_size > 40e6 and Path(env_extra["NUMBA_CACHE_DIR"]).is_dir()
        seen.append(weights)
        return 0.1

    monkeypatch.setattr(end_to_end, "_run_cli", fake_cli)
    monkeypatch.setattr(end_to_end, "_child", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("child failed")))
    rows = end_to_end.startup(env, log=lambda *_: None, breakdown=True)
    assert seen and any(r["status"] == "FAIL" for r in rows)  # the failing child is reported, not raised
    assert all(not w.exists() for w in seen)
    assert list(scratch.iterdir()) == []


# -- the suite inside the package, and an installed copy -----------------------------------------


def test_benchmarks_names_are_aliases_of_the_package_modules():
    """``benchmarks.X`` (docs, the sweeps, ``python -m benchmarks.X``) is the package's module itself."""
    import importlib

    import minicnn.bench

    for name in ("harness", "shapes", "ops", "roofline", "end_to_end"):
        assert importlib.import_module(f"benchmarks.{name}") is importlib.import_module(f"minicnn.bench.{name}")
    from benchmarks import threads_ab

    assert threads_ab.harness is harness  # the scripts beside it reach the package's harness through it
    assert Path(minicnn.bench.__file__).parent == ROOT / "minicnn" / "bench"


def test_the_suite_imports_no_torch():
    """Importing the suite, the command and the torch reference module loads neither torch nor onnxruntime."""
    import subprocess

    code = ("import sys, minicnn.bench.end_to_end, minicnn.bench.ops, minicnn.bench.roofline, "
            "minicnn.bench.torch_reference as t, minicnn.cli.bench; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib') if m in sys.modules), sorted(t.LAYERS)); "
            "from minicnn.cli import build_parser; build_parser(); "  # what `minicnn bench --help` runs
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[] ['resnet18', 'resnet34']", "[]"]


@pytest.mark.torch
def test_torch_reference_is_the_one_definition_the_tests_use():
    pytest.importorskip("torch")
    import torch
    import torch_resnet

    from minicnn.bench import torch_reference
    from minicnn.models.resnet import resnet18, seeded_state_dict

    assert torch_resnet.ResNet is torch_reference.ResNet and torch_resnet.build is torch_reference.build
    assert torch_reference.ResNet.__qualname__ == "ResNet" and torch_reference.BasicBlock.__module__ == torch_reference.__name__
    sd = seeded_state_dict("resnet18", seed=0)
    model = torch_reference.build("resnet18", state_dict=sd).eval()
    assert set(model.state_dict()) == set(sd)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    import minicnn as mc

    with mc.backend("numpy"), mc.no_grad():
        ref = np.asarray(mc.to_numpy(resnet18(weights=sd).eval()(x)))
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert harness.max_rel_error(got, ref) < 1e-4
    # an unknown name is still an AttributeError, not a torch import
    with pytest.raises(AttributeError, match="no attribute 'ResNet50'"):
        torch_reference.ResNet50  # noqa: B018


def test_quick_runs_refuse_any_checkouts_committed_results(tmp_path):
    """An installed copy run inside a clone knows that clone's benchmarks/results too."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    assert harness.is_committed_results(str(results)) and harness.is_committed_results(harness.COMMITTED_RESULTS)
    with pytest.raises(ValueError, match="would overwrite the committed full run"):
        harness.check_out_dir(str(results), quick=True)
    assert harness.check_out_dir(str(results), quick=False) == str(results)
    # a results folder outside a checkout, or any other folder, is the user's to fill
    (tmp_path / "pyproject.toml").unlink()
    assert not harness.is_committed_results(str(results))
    assert harness.check_out_dir(str(tmp_path / "out"), quick=True) == str(tmp_path / "out")


def test_cli_bench_frameworks_are_checked_before_anything_runs(tmp_path, capsys):
    from minicnn.cli import main

    out = tmp_path / "out"
    assert main(["bench", "e2e", "--frameworks", "minicnn numpy,tensorflow", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minicnn bench: error: framework(s) 'tensorflow' not available here; "
                                               "choose from ") and "minicnn numpy compiled" in err[0]
    assert main(["bench", "ops", "--frameworks", "pytorch", "--out", str(out)]) == 1
    assert "does not apply to 'ops'" in capsys.readouterr().err
    assert not out.exists()
    assert end_to_end.split_list(" minicnn numpy, ,pytorch,") == ["minicnn numpy", "pytorch"]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_bench_outside_the_checkout(tmp_path):
    """Build a wheel from the package, install it (no dependencies, no network) into a fresh venv
    that borrows this interpreter's numpy and numba, and run ``minicnn bench`` from a folder
    outside the source tree: the suite and its child processes run from the installed copy,
    results land in --out and nowhere else, and no temporary folder is left behind."""
    import shutil
    import subprocess
    import zipfile

    pytest.importorskip("setuptools", minversion="64")  # the build backend pyproject.toml names, used offline
    # build from a copy, so the build's own folders (build/, *.egg-info) stay out of the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "minicnn", src / "minicnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("minicnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("harness", "shapes", "ops", "roofline", "end_to_end", "torch_reference"):
        assert f"minicnn/bench/{module}.py" in names
    assert "minicnn/data/images/chelsea.jpg" in names and not any(n.startswith("benchmarks/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    py, cmd = venv / "bin" / "python", venv / "bin" / "minicnn"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, env=env)
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)  # every temporary folder of the run, its children's too, goes here

    def run(*args):
        return subprocess.run([*map(str, args)], cwd=work, env=env, capture_output=True, text=True, timeout=900)

    where = run(py, "-c", "import minicnn.bench; print(minicnn.bench.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(venv), where
    helped = run(cmd, "bench", "--help")
    assert helped.returncode == 0 and "--out DIR" in helped.stdout and "--frameworks" in helped.stdout
    out = tmp_path / "results"
    done = run(cmd, "bench", "e2e", "--quick", "--parts", "inference", "--frameworks", "minicnn numpy",
               "--threads", "1", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"results written to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["e2e.json", "e2e.md"]
    data = json.loads((out / "e2e.json").read_text())
    (row,) = data["inference"]
    assert (row["framework"], row["batch"], row["size"], row["status"]) == ("minicnn numpy", 1, 224, "ok")
    # checked against PyTorch's logits where torch is importable (the venv sees the site packages),
    # else the reference itself, checked against its own
    torch_here = importlib.util.find_spec("torch") is not None
    assert row["reference"] == ("pytorch" if torch_here else "minicnn numpy") and row["median_ms"] > 0
    assert row["max_rel_err"] < 1e-4 if torch_here else row["max_rel_err"] == 0.0
    assert "| 1 | minicnn numpy |" in (out / "e2e.md").read_text()
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []
