"""minicnn against PyTorch's stored answers (``tests/fixtures/layers.npz``), no torch needed.

Every case (layer kind, arguments, inputs, initial state, upstream gradient) is replayed on each
backend that loads; outputs, dL/dx, every parameter's gradient and the whole state dict after
the forward steps (batch-norm running statistics and ``num_batches_tracked`` included) must
match what PyTorch computed. Regenerate with ``python tests/make_layer_fixtures.py``.
"""
import json

import numpy as np
import pytest

from make_layer_fixtures import CASES, FIXTURE, compare, load_fixtures, run_minicnn

FIXTURES = load_fixtures()


def test_fixture_file_matches_case_list():
    """A case edited or added in make_layer_fixtures.py without regenerating the file fails here."""
    assert sorted(FIXTURES) == sorted(CASES)
    for name, (cfg, _, _) in FIXTURES.items():
        assert cfg == json.loads(json.dumps(CASES[name], sort_keys=True)), name
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024


@pytest.mark.parametrize("case", sorted(FIXTURES))
def test_case_matches_torch(backend_name, case):
    cfg, inputs, expected = FIXTURES[case]
    got = run_minicnn(cfg, inputs, backend=backend_name)
    compare(got, expected, cfg.get("dtype", "float32"), f"{case} on {backend_name}")


def test_fixtures_cover_every_layer_and_loss():
    from minicnn import nn

    kinds = set()

    def walk(cfg):
        kinds.add(cfg["kind"])
        for sub in cfg.get("layers", []):
            walk(sub)

    for cfg, _, _ in FIXTURES.values():
        walk(cfg)
    covered = {
        "conv2d": nn.Conv2d, "batchnorm2d": nn.BatchNorm2d, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh, "identity": nn.Identity, "maxpool2d": nn.MaxPool2d, "avgpool2d": nn.AvgPool2d,
        "adaptive_avgpool2d": nn.AdaptiveAvgPool2d, "adaptive_maxpool2d": nn.AdaptiveMaxPool2d,
        "linear": nn.Linear, "flatten": nn.Flatten, "dropout": nn.Dropout, "cross_entropy": nn.CrossEntropyLoss,
        "bce_with_logits": nn.BCEWithLogitsLoss, "mse": nn.MSELoss, "sequential": nn.Sequential,
    }
    assert kinds == set(covered)
    # every layer and loss nn exports has PyTorch's answers committed somewhere: here, or in a
    # family's own fixture file whose generator lists what it covers in COVERED
    import importlib

    not_layers = {"Module", "Parameter", "ModuleList", "ModuleDict", "RemovableHandle", "init", "functional"}
    exported = {n for n in nn.__all__ if n not in not_layers}
    for family in ("loss", "pad_pool", "activation", "upsampling"):
        exported -= set(importlib.import_module(f"make_{family}_fixtures").COVERED)
    exported = {getattr(nn, n) for n in exported}
    assert exported <= set(covered.values()), exported - set(covered.values())


def test_batchnorm_running_stats_are_torchs():
    """The running-stat rule spelled out, against torch's stored numbers for three steps."""
    cfg, inputs, expected = FIXTURES["bn_train_3_steps"]
    mean, var = inputs["state.running_mean"].astype(np.float64), inputs["state.running_var"].astype(np.float64)
    for x in inputs["x"].astype(np.float64):
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mean = 0.9 * mean + 0.1 * x.mean(axis=(0, 2, 3))
        var = 0.9 * var + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1)  # unbiased
    np.testing.assert_allclose(expected["after.running_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(expected["after.running_var"], var, rtol=1e-5)
    assert int(expected["after.num_batches_tracked"]) == 3

    cfg, inputs, expected = FIXTURES["bn_train_momentum_none"]
    xs = inputs["x"].astype(np.float64)
    np.testing.assert_allclose(expected["after.running_mean"], xs.mean(axis=(1, 3, 4)).mean(axis=0), rtol=1e-5)


def test_huge_logits_stay_finite():
    cfg, inputs, expected = FIXTURES["cross_entropy_huge_logits"]
    assert np.abs(inputs["x"]).max() > 1e4
    got = run_minicnn(cfg, inputs)
    assert np.isfinite(got["loss"]) and np.all(np.isfinite(got["dx"]))
    assert expected["loss"] > 1e3  # the case really is in the regime where a naive exp overflows
