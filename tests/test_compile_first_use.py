"""What a first run compiles: kernels reached only to be timed or to save microseconds are not.

numba fires a ``numba:compile`` event for each compilation that misses its cache. The tests here
run real kernels in a child process with an empty ``NUMBA_CACHE_DIR`` (so every kernel starts
uncompiled, whatever this process or the machine's cache holds) and record, from those events,
which kernels of this package compiled in each step:

- the autotuner (``minicnn.inference._autotune``) times only candidates whose kernels are
  compiled or cached: on a layer where the backend's rule picks im2col + GEMM, the Winograd
  variants' transforms are not compiled just to be timed; ``autotune="all"`` does compile them;
- a small call whose serial twin is not compiled while its parallel form is runs the parallel
  form (``_threads.TWIN_AFTER_CALLS`` calls), and then compiles the twin;
- inference max pooling on small planes runs the argmax table kernel training compiled, not a
  second kernel of its own.

Every step also checks its numbers against the numpy reference backend. No timings are asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from minicnn.backends.numba import _notice  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    from numba.core import event

    import minicnn as mc
    from minicnn import inference, ops
    from minicnn.backends.numba import _threads, activation, conv

    compiled = []  # "module.kernel" of this package's kernels whose compile finished

    class Record(event.Listener):
        def on_start(self, ev):
            pass

        def on_end(self, ev):
            disp = ev.data["dispatcher"]
            f = disp.py_func
            # a compile refused by compiled_only() ends without adding the signature
            done = tuple(ev.data["args"]) in disp.overloads
            if f.__module__.startswith("minicnn.") and done:
                compiled.append(f"{f.__module__.rsplit('.', 1)[-1]}.{f.__qualname__}")

    event.register("numba:compile", Record())
    out, rng = {}, np.random.default_rng(0)

    def step(name, fn):
        del compiled[:]
        result = fn()
        out[name] = {"compiled": list(compiled), "result": result}

    def rel_err(a, b):
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(float(np.max(np.abs(b))), 1e-30))

    # -- the autotuner: a 3x3 layer with 8 channels, which the rule sends to im2col + GEMM --------
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w.flags.writeable = False  # a compiled model's constant filter
    b = rng.standard_normal(8).astype(np.float32)
    args = (x, w, b, (1, 1), (1, 1), (1, 1), 1, None, True)
    with mc.backend("numpy"):
        want = np.asarray(ops.conv2d_fused_forward(*args))

    def tune(mode):
        with mc.backend("numba"):
            ctx = inference._Ctx(inference._BufferPool(), mode)
            kwargs = {"out": np.empty((1, 8, 8, 8), np.float32)}
            name, fn = inference._autotune(ctx, args, kwargs)
            rule = conv.choose_variant(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1, constant=True)
            return {"pick": name, "rule": rule, "err": rel_err(fn(*args, **kwargs), want)}

    step("autotune", lambda: tune(True))
    step("autotune_all", lambda: tune("all"))

    # -- serial twins: a large ReLU compiles the parallel form, then small ones -------------------
    big = rng.standard_normal(1 << 20).astype(np.float32)
    small = rng.standard_normal(1000).astype(np.float32)

    def relu(a):
        y = np.empty_like(a)
        _threads.run(activation.unary, 0, a, y)
        return bool(np.array_equal(y, np.maximum(a, 0)))  # ReLU is exact

    step("relu_large", lambda: relu(big))
    with _threads.tuning(TWIN_AFTER_CALLS=3):
        step("relu_small_1", lambda: relu(small))   # parallel form: the twin is not compiled
        step("relu_small_2", lambda: relu(small))   # still the parallel form
        step("relu_small_3", lambda: relu(small))   # the third small call compiles the twin
        step("relu_small_4", lambda: relu(small))   # and runs it from then on

    # -- max pooling on 8x8 planes: training (argmax), then inference (values only) ---------------
    xp = rng.standard_normal((64, 16, 8, 8)).astype(np.float32)
    with mc.backend("numpy"):
        pooled = np.asarray(ops.maxpool2d_forward(xp, (2, 2), (2, 2), (0, 0))[0])

    def pool(need_argmax):
        with mc.backend("numba"):
            y, am = ops.maxpool2d_forward(xp, (2, 2), (2, 2), (0, 0), need_argmax=need_argmax)
        return {"argmax": am is not None, "equal": bool(np.array_equal(np.asarray(y), pooled))}

    step("pool_train", lambda: pool(True))
    step("pool_eval", lambda: pool(False))
    json.dump(out, sys.stdout)
''')


@pytest.fixture(scope="module")
def first_use(tmp_path_factory):
    """The steps of CHILD, run once in a child process with an empty numba cache."""
    cache = tmp_path_factory.mktemp("numba_cache")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MINICNN_BACKEND", None)
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_autotuner_does_not_compile_a_variant_only_to_time_it(first_use):
    step = first_use["autotune"]
    assert step["result"]["rule"] == "im2col_gemm"
    # the rule's kernels compiled (the reference run), the Winograd transforms did not
    assert step["compiled"] and not [k for k in step["compiled"] if k.startswith("winograd.")], step["compiled"]
    assert step["result"]["pick"] in ("op", "im2col_gemm")
    assert step["result"]["err"] < 1e-5


def test_autotune_all_compiles_the_variants_it_times(first_use):
    step = first_use["autotune_all"]
    # (this layer is small: its calls run the kernels' serial forms)
    transforms = {k.removesuffix("_serial") for k in step["compiled"] if k.startswith("winograd.")}
    assert transforms == {"winograd._input_transform", "winograd._output_transform"}, step["compiled"]
    assert step["result"]["err"] < 1e-5  # whichever won, its numbers are the reference's


def test_a_small_call_runs_the_compiled_parallel_form_until_the_twin_pays(first_use):
    assert first_use["relu_large"]["compiled"] == ["activation.unary"]
    assert first_use["relu_small_1"]["compiled"] == []
    assert first_use["relu_small_2"]["compiled"] == []
    assert first_use["relu_small_3"]["compiled"] == ["activation.unary_serial"]
    assert first_use["relu_small_4"]["compiled"] == []
    for name in ("relu_large", "relu_small_1", "relu_small_2", "relu_small_3", "relu_small_4"):
        assert first_use[name]["result"] is True, name


def test_inference_pooling_on_small_planes_compiles_nothing_new(first_use):
    train, infer = first_use["pool_train"], first_use["pool_eval"]
    assert "pool._max_2x2" in train["compiled"]
    assert infer["compiled"] == []
    assert train["result"] == {"argmax": True, "equal": True}
    assert infer["result"] == {"argmax": False, "equal": True}


def _fresh_kernel():
    """A numba function defined "in the package" and never compiled (``cache=False``)."""
    def twice(a):
        return a * 2.0

    twice.__module__ = "minicnn.backends.numba.test_stand_in"
    return numba.njit(cache=False)(twice)


def test_compiled_only_refuses_a_compile_and_runs_what_is_compiled():
    kernel = _fresh_kernel()
    a = np.arange(4, dtype=np.float64)
    with pytest.raises(_notice.KernelNotCompiled, match="twice is not compiled"):
        with _notice.compiled_only():
            kernel(a)
    assert kernel.signatures == []  # nothing was compiled, and the kernel still compiles
    np.testing.assert_array_equal(kernel(a), a * 2)
    with _notice.compiled_only():
        np.testing.assert_array_equal(kernel(a + 1), (a + 1) * 2)  # compiled for float64 arrays: runs
        with pytest.raises(_notice.KernelNotCompiled):
            kernel(a.astype(np.float32))  # a new signature would compile
    np.testing.assert_array_equal(kernel(a.astype(np.float32)), a * 2)  # outside the block it compiles


# -- the compile helper: a second process compiling a command's listed kernels -------------------
#
# ``minicnn/data/first_run_kernels.json`` lists, per command, the kernels a cold run compiles; the
# command line starts ``_prewarm``'s helper, which compiles them last first into the same cache.
# The runs below are child processes on their own empty ``NUMBA_CACHE_DIR``.

from minicnn.backends.numba import _prewarm  # noqa: E402

LISTED = _prewarm.load_list()


def _alive(pid):
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid, seconds):
    for _ in range(int(seconds / 0.1)):
        if not _alive(pid):
            return True
        import time
        time.sleep(0.1)
    return not _alive(pid)


def _log(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def cold_runs(tmp_path_factory):
    """``cold_runs(workload)``: the workload's cold run with the helper off (``MINICNN_COMPILE_HELPER=0``),
    run once per module."""
    done = {}

    def get(workload):
        if workload not in done:
            tmp = tmp_path_factory.mktemp("cold")
            cache = tmp / "cache"
            cache.mkdir()
            log = tmp / "helper.jsonl"
            run = _prewarm.run_cold(workload, str(tmp), str(cache), helper=False,
                                    extra_env={_prewarm.LOG_ENV: str(log)})
            run["log"] = _log(str(log))
            done[workload] = run
        return done[workload]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("workload", sorted(_prewarm.WORKLOADS))
def test_the_shipped_list_is_what_a_cold_run_compiles(cold_runs, workload):
    # fails when the code changed what a first run compiles: regenerate the list with
    # `python -m minicnn.backends.numba._prewarm --record`
    from minicnn.backends.numba import _gemm

    from minicnn.backends.numba import _tiles

    if not _gemm.available():  # the list is recorded where the GEMM split calls OpenBLAS
        pytest.skip("no cblas GEMM here: a first run compiles other kernels than the recorded ones")
    if _tiles.VECTOR_BYTES != 64:  # ... and where channels-last convs default to cl_tiles (AVX-512)
        pytest.skip("no AVX-512 here: channels-last convs default to OpenBLAS, other kernels than the recorded ones")
    if workload == "train fashion-mnist":
        from minicnn.data import FashionMNIST

        try:
            FashionMNIST(train=False)
        except FileNotFoundError as e:
            pytest.skip(f"the command's data are absent here: {e}")
    run = cold_runs(workload)
    assert run["rc"] == 0, run["stderr"][-2000:]
    assert run["kernels"] == LISTED.get(workload), (
        f"{workload}: the list is stale, run `python -m minicnn.backends.numba._prewarm --record '{workload}'`")
    # every listed signature reads back to the types it was recorded from
    for module, qualname, exprs in run["kernels"]:
        assert [_prewarm.type_expr(t) for t in _prewarm.parse_types(exprs)] == exprs


@pytest.mark.slow
def test_helper_off_spawns_nothing(cold_runs):
    run = cold_runs("train digits")
    assert run["helper"] is False and run["log"] is None  # the helper writes its log first thing
    assert _notice.MESSAGE in run["stderr"] and "two processes" not in run["stderr"]


@pytest.mark.slow
def test_a_cold_run_with_the_helper_gives_the_same_output(cold_runs, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    log = tmp_path / "helper.jsonl"
    run = _prewarm.run_cold("classify", str(tmp_path), str(cache), helper=True,
                            extra_env={_prewarm.LOG_ENV: str(log)})
    off = cold_runs("classify")
    assert run["rc"] == 0 and run["helper"] is True, run["stderr"][-2000:]
    assert _notice.MESSAGE_TWO in run["stderr"]
    assert run["stdout"] == off["stdout"] and len(off["stdout"].splitlines()) == 6  # the file, its top 5
    # the command compiled only listed kernels, each at most once, whatever the helper had done
    listed = [[m, q, t] for m, q, t in LISTED["classify"]]
    assert all(k in listed for k in run["kernels"]) and len(run["kernels"]) <= len(listed)
    lines = _log(str(log))
    assert lines and lines[0]["workload"] == "classify"
    assert _gone_within(lines[0]["pid"], 30)  # stopped when the command returned


@pytest.mark.slow
def test_a_cache_the_helper_filled_leaves_the_command_nothing_to_compile(cold_runs, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MINICNN_BACKEND", None)
    log = tmp_path / "helper.jsonl"
    env[_prewarm.LOG_ENV] = str(log)
    helper = subprocess.run([sys.executable, "-m", "minicnn.backends.numba._prewarm", "--helper", "train digits"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert helper.returncode == 0, helper.stderr[-2000:]
    rows = _log(str(log))[1:]
    listed = LISTED["train digits"]
    assert [[r["module"], r["qualname"], r["types"]] for r in rows] == listed[::-1]  # last first
    skipped = [[r["module"], r["qualname"], r["types"]] for r in rows if r["status"] == "skipped"]
    # only kernels listed with several signatures are left to the command
    assert all(sum(k[:2] == s[:2] for k in listed) > 1 for s in skipped)
    assert [r for r in rows if r["status"] == "compiled"]
    run = _prewarm.run_cold("train digits", str(tmp_path), str(cache), helper=False)
    assert run["rc"] == 0, run["stderr"][-2000:]
    assert sorted(run["kernels"]) == sorted(skipped)
    # the same training, number for number (timings and the output path left out)
    assert _numbers(run["stdout"]) == _numbers(cold_runs("train digits")["stdout"])
    assert any(ln.startswith("test accuracy") for ln in _numbers(run["stdout"]))


def _numbers(stdout):
    import re

    return [re.sub(r"\s*\(\d+\.\d+ s\)$", "", ln) for ln in stdout.splitlines()
            if not ln.startswith(("trained in", "saved weights"))]


ORPHAN = textwrap.dedent(r'''
    import os, signal, sys, time
    from minicnn.backends.numba import _prewarm
    proc = _prewarm.start("classify")
    time.sleep(1.0)
    print(proc.pid, proc.poll() is None, flush=True)
    sys.stdin.readline()
    if sys.argv[1] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit: the helper sees its parent go
    sys.exit(0)  # atexit terminates the helper
''')


@pytest.mark.parametrize("how", ["exits", "killed"])
def test_no_helper_outlives_the_process_that_started_it(tmp_path, how):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[_prewarm.ENV] = "1"
    child = subprocess.Popen([sys.executable, "-c", ORPHAN, how], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        pid, running = child.stdout.readline().split()
        assert running == "True" and _alive(int(pid))  # compiling into an empty cache: still busy
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=60)
        assert child.returncode == (-9 if how == "killed" else 0)
        assert _gone_within(int(pid), 30)
    finally:
        if child.poll() is None:
            child.kill()


def test_helper_off_and_library_use_start_nothing(monkeypatch):
    monkeypatch.setenv(_prewarm.ENV, "0")
    assert not _prewarm.enabled()
    _prewarm.arm("classify")
    assert _prewarm._armed is None and not _prewarm.on_first_compile()
    monkeypatch.setenv(_prewarm.ENV, "1")
    # nothing armed (a program that imports minicnn): the first compile starts no process
    _prewarm.arm(None)
    assert not _prewarm.on_first_compile() and _prewarm._helper is None


def test_the_helper_skips_what_no_longer_compiles():
    rows = _prewarm.compile_list([
        ["minicnn.backends.numba.activation", "no_such_kernel", ["float32"]],
        ["minicnn.backends.numba.activation", "unary", ["int64"]],         # no longer its types
        ["minicnn.backends.numba.no_such_module", "unary", ["float32"]],
        ["minicnn.backends.numba.pool", "_max_table", ["float32"]],        # two signatures listed:
        ["minicnn.backends.numba.pool", "_max_table", ["float64"]],        # left to the command
    ])
    assert [r["status"] for r in rows] == ["skipped"] * 5
    assert [r["qualname"] for r in rows] == ["_max_table", "_max_table", "unary", "unary", "no_such_kernel"]
