"""A compiled model called from several threads at once, as a thread-pool server calls it.

Every thread runs its own inputs through one shared ``compile_inference`` model; each output must
equal, bit for bit, what the same model returned for that input when called serially. Before the
model gave each call its own activation buffers, concurrent calls overwrote each other's
activations: wrong logits without an error, or the fused op's "out must not overlap" error.
"""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn import inference
from minicnn.models.resnet import resnet18, seeded_state_dict

from concurrency import CALLS, THREADS, run_concurrently


@pytest.fixture(scope="module")
def seeded_resnet():
    return resnet18(weights=seeded_state_dict("resnet18", seed=3)).eval()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("method", ["forward", "embed", "forward_features"])
def test_compiled_resnet_concurrent_calls_equal_serial(backend, method, seeded_resnet):
    rng = np.random.default_rng(11)
    # a distinct input per call, so one call's activations showing up in another's output is caught
    inputs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(THREADS * CALLS)]
    fast = inference.compile_inference(seeded_resnet)
    fn = getattr(fast, method)
    with mc.backend(backend):
        serial = [np.array(mc.to_numpy(fn(x)), copy=True) for x in inputs]
        # the serial results are the model's: compiled and eval outputs agree to float32 rounding
        with mc.no_grad():
            eager = getattr(seeded_resnet, method)(inputs[0])
        np.testing.assert_allclose(serial[0], mc.to_numpy(eager), rtol=1e-4, atol=1e-4)
    held = fast.buffer_bytes()
    got = run_concurrently(fn, inputs, backend)
    for i, (a, b) in enumerate(zip(got, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
    # concurrent calls borrowed extra buffer sets; a serial call afterwards still gives the same numbers
    assert fast.buffer_bytes() >= held
    with mc.backend(backend):
        np.testing.assert_array_equal(mc.to_numpy(fn(inputs[0])), serial[0])


def test_concurrent_first_calls_share_one_autotuned_pick(seeded_resnet):
    """Threads that meet a new input shape together wait for one autotuning per conv, so they all
    run the same variants and agree bit for bit with a serial call made afterwards."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1, 3, 36, 36)).astype(np.float32) for _ in range(THREADS)]
    fast = inference.compile_inference(seeded_resnet)
    got = run_concurrently(fast, inputs, "numba")
    picks = fast.variants()
    # one pick per conv for this one shape, however many threads asked
    assert picks and all(len(v) == 1 for v in picks.values())
    with mc.backend("numba"):
        for x, y in zip(inputs, got):
            np.testing.assert_array_equal(mc.to_numpy(fast(x)), y)
    assert fast.variants() == picks


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_compiled_vgg_concurrent_calls_equal_serial(backend):
    from minicnn.models.vgg import vgg11_bn

    model = vgg11_bn(width=8, hidden=64, num_classes=10).eval()
    fast = inference.compile_inference(model)
    assert isinstance(fast, inference.CompiledVGG)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(THREADS * CALLS)]
    with mc.backend(backend):
        serial = [np.array(mc.to_numpy(fast(x)), copy=True) for x in inputs]
    got = run_concurrently(fast, inputs, backend)
    for i, (a, b) in enumerate(zip(got, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_digits_convnet_concurrent_calls_equal_serial(backend):
    """The digits convnet is a plain Sequential (``compile_inference`` takes ResNets and VGGs): its
    eval model, called from several threads under ``no_grad``, gives the serial outputs too."""
    from minicnn.models import digits_convnet

    model = digits_convnet().eval()
    with pytest.raises(ValueError):
        inference.compile_inference(model)
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((4, 1, 8, 8)).astype(np.float32) for _ in range(THREADS * CALLS)]

    def run(x):
        with mc.no_grad():
            return model(x)

    with mc.backend(backend):
        serial = [np.array(mc.to_numpy(run(x)), copy=True) for x in inputs]
    got = run_concurrently(run, inputs, backend)
    for i, (a, b) in enumerate(zip(got, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
