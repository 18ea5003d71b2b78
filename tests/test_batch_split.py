"""A compiled model runs a large batch as one slice per thread, each slice's forward on one thread.

``CompiledModel._in_parts`` hands the slices to the backend's ``map_one_thread``. Each slice must be
exactly what the model computes for that slice called on its own on one thread (no buffer or
workspace shared between the slices, no image mixed into another slice), and the whole must agree
with the eval model. A ResNet's slices join again at ``inference.BATCH_JOIN_STAGE`` and run the
rest as one batch; the tests of whole slices turn the join off. The backend's thread count is set to 2 here so that the split happens on any
machine, one core or many.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

import minicnn as mc
from minicnn import backends, inference
from minicnn.backends import numba as numba_package
from minicnn.backends.numba import _gemm, _threads
from minicnn.models.resnet import resnet18, seeded_state_dict

from concurrency import on_one_thread, run_concurrently, two_threads  # noqa: F401 - two_threads is a fixture


@pytest.fixture(scope="module")
def seeded_resnet():
    return resnet18(weights=seeded_state_dict("resnet18", seed=7)).eval()



@pytest.mark.parametrize("method", ["forward", "embed", "forward_features"])
def test_split_batch_is_each_slice_computed_alone(method, seeded_resnet, two_threads, monkeypatch):
    monkeypatch.setattr(inference, "BATCH_JOIN_STAGE", None)
    x = np.random.default_rng(2).standard_normal((9, 3, 32, 32)).astype(np.float32)
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numba"):
        y = getattr(fast, method)(x)
    # 9 images, 2 threads: slices [0, 4) and [4, 9)
    assert two_threads == [[(0, 4), (4, 9)]]
    for lo, hi in two_threads[0]:
        alone = on_one_thread(getattr(fast, method), x[lo:hi])
        np.testing.assert_array_equal(y[lo:hi], alone)
    with mc.no_grad():
        eager = mc.to_numpy(getattr(seeded_resnet, method)(x))
    np.testing.assert_allclose(y, eager, rtol=1e-4, atol=1e-4)


def _stage(conv_name):
    """0 for the stem, i for a conv of layer{i}."""
    return int(conv_name[len("layer")]) if conv_name.startswith("layer") else 0


@pytest.mark.parametrize("stage", [None, 1, 3, 4])
def test_a_split_batch_joins_for_the_last_stages(stage, seeded_resnet, two_threads, monkeypatch):
    """Up to ``BATCH_JOIN_STAGE`` each slice runs alone; from there the stacked slices run as one
    batch: the convs before the join are tuned for the slices' shapes (4 and 5 images), the ones
    after it for the whole batch (9)."""
    monkeypatch.setattr(inference, "BATCH_JOIN_STAGE", stage)
    x = np.random.default_rng(3).standard_normal((9, 3, 32, 32)).astype(np.float32)
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numba"):
        y = fast(x)
        emb = fast.embed(x)
        feats = fast.forward_features(x)
    assert two_threads == [[(0, 4), (4, 9)]] * 3
    for conv in fast.convs():
        batches = {key[0][0] for key in conv.chosen}
        joined = stage is not None and _stage(conv.name) >= stage
        assert batches == ({9} if joined else {4, 5}), conv.name
    if stage is not None:
        # the same numbers as the slices' heads computed alone, stacked, then the rest as one batch
        heads = np.concatenate([on_one_thread(fast._up_to_join, x[lo:hi]) for lo, hi in two_threads[0]])
        with mc.backend("numba"):
            np.testing.assert_array_equal(y, fast._forward(x, heads))
    with mc.no_grad():
        np.testing.assert_allclose(y, mc.to_numpy(seeded_resnet(x)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(emb, mc.to_numpy(seeded_resnet.embed(x)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(feats, mc.to_numpy(seeded_resnet.forward_features(x)), rtol=1e-4, atol=1e-4)


def test_split_vgg_is_each_slice_computed_alone(two_threads):
    from minicnn.models.vgg import vgg11_bn

    model = vgg11_bn(width=8, hidden=64, num_classes=10).eval()
    fast = inference.compile_inference(model)
    x = np.random.default_rng(4).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with mc.backend("numba"):
        y = fast(x)
    assert two_threads == [[(0, 4), (4, 8)]]
    for lo, hi in two_threads[0]:
        np.testing.assert_array_equal(y[lo:hi], on_one_thread(fast, x[lo:hi]))
    with mc.no_grad():
        np.testing.assert_allclose(y, mc.to_numpy(model(x)), rtol=1e-4, atol=1e-4)


def test_small_batches_and_one_thread_backends_are_not_split(seeded_resnet, two_threads):
    fast = inference.compile_inference(seeded_resnet, autotune=False)
    x = np.random.default_rng(5).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with mc.backend("numba"):
        fast(x)  # 7 images: under BATCH_SPLIT_MIN_IMAGES per thread for two threads
    with mc.backend("numpy"):
        y = fast(np.concatenate([x, x]))  # 14 images on a backend of one thread
    assert two_threads == []
    with mc.no_grad():
        np.testing.assert_allclose(y[:7], mc.to_numpy(seeded_resnet(x)), rtol=1e-4, atol=1e-4)


def test_a_batch_splits_into_one_slice_per_thread_or_not_at_all(seeded_resnet, two_threads, monkeypatch):
    """Fewer slices than threads would leave threads idle where one pass uses them all."""
    monkeypatch.setitem(backends.load("numba").OPS, "threads", lambda: 3)
    fast = inference.compile_inference(seeded_resnet, autotune=False)
    x = np.random.default_rng(6).standard_normal((12, 3, 32, 32)).astype(np.float32)
    with mc.backend("numba"):
        fast(x[:11])  # under 4 images for each of 3 threads: one pass
        y = fast(x)
    assert two_threads == [[(0, 4), (4, 8), (8, 12)]]
    with mc.no_grad():
        np.testing.assert_allclose(y, mc.to_numpy(seeded_resnet(x)), rtol=1e-4, atol=1e-4)


def test_bad_input_is_refused_before_any_split(seeded_resnet, two_threads):
    fast = inference.compile_inference(seeded_resnet, autotune=False)
    with mc.backend("numba"), pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        fast(np.zeros((8, 4, 32, 32), np.float32))
    assert two_threads == []


def test_concurrent_callers_of_a_split_batch_get_serial_results(seeded_resnet, two_threads):
    fast = inference.compile_inference(seeded_resnet)
    rng = np.random.default_rng(8)
    inputs = [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    with mc.backend("numba"):
        serial = [np.array(fast(x), copy=True) for x in inputs]
    got = run_concurrently(fast, inputs, "numba")
    for i, (a, b) in enumerate(zip(got, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
    assert len(two_threads) == 2 * len(inputs)


def test_map_one_thread_runs_each_item_on_a_one_thread_worker():
    before = numba.get_num_threads()

    def probe(i):
        return i, threading.get_ident(), numba.get_num_threads()

    got = _threads.map_one_thread(probe, range(3))
    assert [g[0] for g in got] == [0, 1, 2]
    if not _threads._needs_lock:
        assert all(g[2] == 1 for g in got)
        assert threading.get_ident() not in {g[1] for g in got}
    assert numba.get_num_threads() == before  # the caller's count is its own
    # one item runs on the calling thread as it is
    assert _threads.map_one_thread(probe, [5]) == [(5, threading.get_ident(), before)]


def test_matmul_on_a_one_thread_worker_is_not_split(monkeypatch):
    if numba.get_num_threads() < 2 or not _gemm.available():
        pytest.skip("needs two numba threads and the split GEMM")
    calls = []
    real = _gemm.split

    def spy(a, b, out, parts):
        calls.append(parts)
        return real(a, b, out, parts)

    monkeypatch.setattr(_gemm, "split", spy)
    monkeypatch.setattr(_threads._blas, "blas_threads", lambda: 2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((128, 256)).astype(np.float32)
    b = rng.standard_normal((256, 512)).astype(np.float32)  # 16.8M multiply-adds: split on two threads
    want = a @ b
    np.testing.assert_allclose(_threads.matmul(a, b, np.empty((128, 512), np.float32)), want, rtol=1e-5, atol=1e-4)
    assert calls == [2]
    got = _threads.map_one_thread(lambda _: _threads.matmul(a, b, np.empty((128, 512), np.float32)), [0, 1])
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-4)
    assert calls == [2]  # the workers multiplied on their own thread


def test_every_numba_kernel_releases_the_gil():
    """map_one_thread's workers only overlap if no kernel holds the GIL while it runs."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    kernels = []
    for info in pkgutil.iter_modules(numba_package.__path__):
        mod = importlib.import_module(f"{numba_package.__name__}.{info.name}")
        kernels += [(f"{info.name}.{k}", v) for k, v in vars(mod).items()
                    if isinstance(v, CPUDispatcher) and v.__module__ == mod.__name__]
    assert len(kernels) > 40
    assert [name for name, k in kernels if not k.targetoptions.get("nogil")] == []
