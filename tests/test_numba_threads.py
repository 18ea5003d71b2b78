"""The numba backend under concurrency: several Python threads running one model at once must
each get exactly the single-threaded result, whatever threading layer numba runs on."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np

import minicnn as mc
from minicnn import nn
from minicnn.backends.numba import _threads

ROOT = Path(__file__).resolve().parents[1]


class _Block(nn.Module):
    """conv-bn-relu-conv-bn + identity, joined by add_relu: the residual pattern of ResNet."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        from minicnn import ops

        out = self.relu(self.bn1(self.conv1(x)))
        return ops.add_relu_forward(self.bn2(self.conv2(out)), x)


def _model():
    """A small network whose layers take every conv path: Winograd F(4x4) and F(2x2), im2col, 1x1."""
    mc.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        _Block(16), nn.Conv2d(16, 300, 1), nn.ReLU(), nn.Conv2d(300, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    rng = np.random.default_rng(1)
    for name, b in model.named_buffers():  # non-trivial running statistics
        if name.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape) * 0.1
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 1.5, b.shape)
    return model.eval()


def _run_concurrently(fn, n_threads, repeats):
    """Start n_threads threads at one barrier, each calling fn(i) ``repeats`` times; return all results."""
    barrier = threading.Barrier(n_threads)
    results = [[] for _ in range(n_threads)]
    errors = []

    def worker(i):
        try:
            barrier.wait()
            for _ in range(repeats):
                results[i].append(fn(i))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_one_model_in_several_threads_gives_the_single_thread_result():
    model = _model()
    inputs = [np.random.default_rng(10 + i).standard_normal((2, 3, 96, 96)).astype(np.float32) for i in range(4)]
    with mc.no_grad():
        with mc.backend("numba"):
            alone = [model(x) for x in inputs]
        with mc.backend("numpy"):
            ref = [model(x) for x in inputs]
    for a, r in zip(alone, ref):  # and the single-thread result is right
        assert np.abs(a - r).max() <= 1e-4 * np.abs(r).max()

    def infer(i):
        with mc.backend("numba"), mc.no_grad():  # both are per-thread settings
            return model(inputs[i])

    for outs, want in zip(_run_concurrently(infer, 4, 3), alone):
        for out in outs:
            assert np.array_equal(out, want), "a concurrent run differs from the single-threaded one"


def test_constant_filters_shared_by_threads_give_the_single_thread_result():
    """Threads that first meet one read-only filter at the same moment all fill or read its cached
    transform; every result must equal the one computed alone."""
    from minicnn.backends.numba import _filters, conv

    rng = np.random.default_rng(30)
    w = rng.standard_normal((24, 24, 3, 3)).astype(np.float32)
    w.flags.writeable = False
    inputs = [rng.standard_normal((2, 24, 20, 20)).astype(np.float32) for _ in range(4)]
    names = ("winograd_f2x2_3x3", "winograd_f4x4_3x3")
    alone = [[conv.VARIANTS[n](x, np.array(w), None, 1, 1, 1, 1) for n in names] for x in inputs]
    _filters.clear()

    def run(i):
        return [conv.VARIANTS[n](inputs[i], w, None, 1, 1, 1, 1) for n in names]

    for outs, want in zip(_run_concurrently(run, 4, 3), alone):
        for got in outs:
            for g, wnt in zip(got, want):
                assert np.array_equal(g, wnt)
    assert _filters.cached_entries() == 2


def test_training_steps_in_parallel_threads_match_sequential_ones():
    """Forward and backward (the im2col/col2im and batchnorm-train paths) on per-thread model copies."""
    from minicnn import ops

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)

    def step(i):
        with mc.backend("numba"):
            xi = x * (i + 1)
            y = ops.conv2d_forward(xi, w, None, (1, 1), (1, 1), (1, 1), 1)
            z, mean, var = ops.batchnorm2d_forward_train(y, g, b, 1e-5)
            dz = np.cos(z)
            dy, dg, db = ops.batchnorm2d_backward_train(dz, y, g, mean, var, 1e-5)
            dx, dw, _ = ops.conv2d_backward(dy, xi, w, (1, 1), (1, 1), (1, 1), 1)
            return z, dg, dx, dw

    want = [step(i) for i in range(3)]
    for i, outs in enumerate(_run_concurrently(step, 3, 4)):
        for out in outs:
            for got, exp in zip(out, want[i]):
                assert np.array_equal(got, exp)


def test_workspaces_are_per_thread():
    mine = _threads.workspace("test.ws", (4, 4), np.float32)
    seen = []
    t = threading.Thread(target=lambda: seen.append(_threads.workspace("test.ws", (4, 4), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(mine, seen[0])
    assert np.shares_memory(mine, _threads.workspace("test.ws", (2, 2), np.float32))  # reused in-thread
    _threads.clear_workspaces()
    assert _threads.workspace_bytes() == 0


_WORKQUEUE_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    from minicnn.backends.numba import _threads, conv
    assert _threads.threading_layer() == "workqueue" and _threads.needs_lock()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    want = conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    bad = []
    def work():
        for _ in range(20):
            if not np.array_equal(conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1), want):
                bad.append(1)
    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print("ok" if not bad else "MISMATCH")
""")


def test_workqueue_layer_is_serialised_by_the_lock():
    """numba's workqueue layer aborts on concurrent parallel regions; under it the backend must lock."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _WORKQUEUE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
