"""Calling one function from many threads at once, as a thread-pool server does: the helpers the
concurrency tests of compiled models (native and ONNX-imported) share, and the batch-split tests'
(two reported threads, a call on one thread)."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import minicnn as mc

THREADS = 8
CALLS = 3


def run_concurrently(fn, inputs, backend):
    """``fn(x)`` for every input, THREADS threads at once (thread t takes inputs[t::THREADS])."""
    results = [None] * len(inputs)
    errors = []
    start = threading.Barrier(THREADS)
    # numba's thread count is per thread and part of an autotuned pick's key: each worker runs with
    # the caller's count, so its calls are the very calls the serial run made
    numba = sys.modules.get("numba")
    count = numba.get_num_threads() if numba is not None else None

    def worker(t):
        try:
            if count is not None and numba.get_num_threads() != count:
                numba.set_num_threads(count)
            with mc.backend(backend):
                start.wait()
                for i in range(t, len(inputs), THREADS):
                    results[i] = np.array(mc.to_numpy(fn(inputs[i])), copy=True)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def two_threads(monkeypatch):
    """The numba backend reports two kernel threads (so compiled models split a large batch on any
    machine), and every map_one_thread call is recorded: the fixture's value lists their items."""
    from minicnn import backends

    calls = []
    table = backends.load("numba").OPS
    real = table["map_one_thread"]

    def spy(fn, items):
        calls.append(list(items))
        return real(fn, items)

    monkeypatch.setitem(table, "threads", lambda: 2)
    monkeypatch.setitem(table, "map_one_thread", spy)
    return calls


def on_one_thread(fn, x):
    """fn(x) under the numba backend on a fresh thread whose kernels use one thread."""
    import numba

    out = {}

    def work():
        numba.set_num_threads(1)
        with mc.backend("numba"):
            out["y"] = np.array(fn(x), copy=True)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out["y"]
