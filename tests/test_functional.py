"""``minicnn.nn.functional`` against ``torch.nn.functional`` (live, when torch imports) and against
the modules' forward passes (always): same numbers, same dtype, nothing kept, no RNG drawn."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn.functional as F
from minicnn import nn


def _rng(seed=0):
    return np.random.default_rng(seed)


def _x(shape, seed=0, dtype=np.float64):
    return _rng(seed).standard_normal(shape).astype(dtype)


# (name, minicnn call, torch call): each takes the arrays made by ``inputs`` as numpy / torch tensors
CASES = {
    "conv2d": (lambda a: F.conv2d(a["x"], a["w"], a["b"], stride=2, padding=1, dilation=1),
               lambda t, a: t.nn.functional.conv2d(a["x"], a["w"], a["b"], stride=2, padding=1)),
    "conv2d_same_even": (lambda a: F.conv2d(a["x"], a["w4"], None, padding="same"),
                         lambda t, a: t.nn.functional.conv2d(a["x"], a["w4"], None, padding="same")),
    "conv2d_groups": (lambda a: F.conv2d(a["x"], a["wg"], None, groups=3, padding=(0, 1)),
                      lambda t, a: t.nn.functional.conv2d(a["x"], a["wg"], None, groups=3, padding=(0, 1))),
    "conv_transpose2d": (lambda a: F.conv_transpose2d(a["x"], a["wt"], a["bt"], stride=2, padding=1, output_padding=1),
                         lambda t, a: t.nn.functional.conv_transpose2d(a["x"], a["wt"], a["bt"], stride=2, padding=1,
                                                                      output_padding=1)),
    "linear": (lambda a: F.linear(a["x"], a["wl"], a["bl"]), lambda t, a: t.nn.functional.linear(a["x"], a["wl"], a["bl"])),
    "batch_norm_eval": (lambda a: F.batch_norm(a["x"], a["rm"], a["rv"], a["g"], a["be"], eps=1e-3),
                        lambda t, a: t.nn.functional.batch_norm(a["x"], a["rm"], a["rv"], a["g"], a["be"], eps=1e-3)),
    "relu": (lambda a: F.relu(a["x"]), lambda t, a: t.nn.functional.relu(a["x"])),
    "sigmoid": (lambda a: F.sigmoid(a["x"]), lambda t, a: t.sigmoid(a["x"])),
    "tanh": (lambda a: F.tanh(a["x"]), lambda t, a: t.tanh(a["x"])),
    "leaky_relu": (lambda a: F.leaky_relu(a["x"], 0.2), lambda t, a: t.nn.functional.leaky_relu(a["x"], 0.2)),
    "elu": (lambda a: F.elu(a["x"], 0.7), lambda t, a: t.nn.functional.elu(a["x"], 0.7)),
    "selu": (lambda a: F.selu(a["x"]), lambda t, a: t.nn.functional.selu(a["x"])),
    "gelu": (lambda a: F.gelu(a["x"]), lambda t, a: t.nn.functional.gelu(a["x"])),
    "gelu_tanh": (lambda a: F.gelu(a["x"], approximate="tanh"),
                  lambda t, a: t.nn.functional.gelu(a["x"], approximate="tanh")),
    "silu": (lambda a: F.silu(a["x"]), lambda t, a: t.nn.functional.silu(a["x"])),
    "hardswish": (lambda a: F.hardswish(a["x"]), lambda t, a: t.nn.functional.hardswish(a["x"])),
    "hardsigmoid": (lambda a: F.hardsigmoid(a["x"]), lambda t, a: t.nn.functional.hardsigmoid(a["x"])),
    "softplus": (lambda a: F.softplus(a["x"], beta=2.0, threshold=3.0),
                 lambda t, a: t.nn.functional.softplus(a["x"], beta=2.0, threshold=3.0)),
    "softsign": (lambda a: F.softsign(a["x"]), lambda t, a: t.nn.functional.softsign(a["x"])),
    "prelu": (lambda a: F.prelu(a["x"], a["slope"]), lambda t, a: t.nn.functional.prelu(a["x"], a["slope"])),
    "softmax": (lambda a: F.softmax(a["x"], dim=1), lambda t, a: t.softmax(a["x"], dim=1)),
    "log_softmax": (lambda a: F.log_softmax(a["x"], dim=-1), lambda t, a: t.log_softmax(a["x"], dim=-1)),
    "softmin": (lambda a: F.softmin(a["x"], dim=2), lambda t, a: t.nn.functional.softmin(a["x"], dim=2)),
    "max_pool2d": (lambda a: F.max_pool2d(a["x"], 3, 2, 1, ceil_mode=True),
                   lambda t, a: t.nn.functional.max_pool2d(a["x"], 3, 2, 1, ceil_mode=True)),
    "avg_pool2d": (lambda a: F.avg_pool2d(a["x"], 2, count_include_pad=False, padding=1),
                   lambda t, a: t.nn.functional.avg_pool2d(a["x"], 2, count_include_pad=False, padding=1)),
    "adaptive_avg_pool2d": (lambda a: F.adaptive_avg_pool2d(a["x"], (3, 2)),
                            lambda t, a: t.nn.functional.adaptive_avg_pool2d(a["x"], (3, 2))),
    "adaptive_max_pool2d": (lambda a: F.adaptive_max_pool2d(a["x"], 3),
                            lambda t, a: t.nn.functional.adaptive_max_pool2d(a["x"], 3)),
    "pad_reflect": (lambda a: F.pad(a["x"], (1, 2, 2, 0), mode="reflect"),
                    lambda t, a: t.nn.functional.pad(a["x"], (1, 2, 2, 0), mode="reflect")),
    "pad_constant": (lambda a: F.pad(a["x"], (1, 1), value=2.5),
                     lambda t, a: t.nn.functional.pad(a["x"], (1, 1), value=2.5)),
    "interpolate_bilinear": (lambda a: F.interpolate(a["x"], scale_factor=1.5, mode="bilinear", align_corners=False),
                             lambda t, a: t.nn.functional.interpolate(a["x"], scale_factor=1.5, mode="bilinear",
                                                                      align_corners=False)),
    "interpolate_nearest": (lambda a: F.interpolate(a["x"], size=(9, 4)),
                            lambda t, a: t.nn.functional.interpolate(a["x"], size=(9, 4))),
    "pixel_shuffle": (lambda a: F.pixel_shuffle(a["x4"], 2), lambda t, a: t.nn.functional.pixel_shuffle(a["x4"], 2)),
    "dropout_eval": (lambda a: F.dropout(a["x"], 0.5, training=False),
                     lambda t, a: t.nn.functional.dropout(a["x"], 0.5, training=False)),
    "cross_entropy": (lambda a: F.cross_entropy(a["logits"], a["t"], label_smoothing=0.1),
                      lambda t, a: t.nn.functional.cross_entropy(a["logits"], a["t"], label_smoothing=0.1)),
    "cross_entropy_seg": (lambda a: F.cross_entropy(a["x"], a["tseg"], reduction="none"),
                          lambda t, a: t.nn.functional.cross_entropy(a["x"], a["tseg"], reduction="none")),
    "nll_loss": (lambda a: F.nll_loss(a["logits"], a["t"], reduction="sum"),
                 lambda t, a: t.nn.functional.nll_loss(a["logits"], a["t"], reduction="sum")),
    "bce_with_logits": (lambda a: F.binary_cross_entropy_with_logits(a["logits"], a["p"]),
                        lambda t, a: t.nn.functional.binary_cross_entropy_with_logits(a["logits"], a["p"])),
    "mse_loss": (lambda a: F.mse_loss(a["logits"], a["p"]), lambda t, a: t.nn.functional.mse_loss(a["logits"], a["p"])),
    "l1_loss": (lambda a: F.l1_loss(a["logits"], a["p"]), lambda t, a: t.nn.functional.l1_loss(a["logits"], a["p"])),
    "smooth_l1_loss": (lambda a: F.smooth_l1_loss(a["logits"], a["p"], beta=0.5),
                       lambda t, a: t.nn.functional.smooth_l1_loss(a["logits"], a["p"], beta=0.5)),
    "huber_loss": (lambda a: F.huber_loss(a["logits"], a["p"], delta=0.3),
                   lambda t, a: t.nn.functional.huber_loss(a["logits"], a["p"], delta=0.3)),
}


def inputs():
    r = _rng(1)
    return {
        "x": _x((2, 3, 7, 6), 2), "x4": _x((2, 8, 3, 5), 3),
        "w": _x((4, 3, 3, 3), 4), "b": _x((4,), 5), "w4": _x((5, 3, 4, 2), 6), "wg": _x((6, 1, 2, 3), 7),
        "wt": _x((3, 2, 3, 3), 8), "bt": _x((2,), 9), "wl": _x((5, 6), 10), "bl": _x((5,), 11),
        "rm": _x((3,), 12), "rv": r.uniform(0.5, 2.0, 3), "g": _x((3,), 13), "be": _x((3,), 14),
        "slope": _x((3,), 15), "logits": _x((5, 4), 16), "t": r.integers(0, 4, 5), "p": r.uniform(0, 1, (5, 4)),
        "tseg": r.integers(0, 3, (2, 7, 6)),
    }


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_matches_torch(name, backend_name):
    torch = pytest.importorskip("torch")
    ours, theirs = CASES[name]
    a = inputs()
    with mc.backend(backend_name):
        got = ours(a)
    want = theirs(torch, {k: torch.from_numpy(np.asarray(v)) for k, v in a.items()})
    got = mc.to_numpy(got) if hasattr(got, "shape") else np.asarray(got)
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_functional_equals_the_modules_forward(backend_name):
    """Without torch: the functional forms compute what the modules compute, in the input's dtype,
    keep no cache and draw nothing from the library RNG."""
    a = inputs()
    with mc.backend(backend_name):
        mc.manual_seed(3)
        before = mc.random.get_rng().bit_generator.state
        conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
        conv.weight.data, conv.bias.data = a["w"], a["b"]
        after_init = mc.random.get_rng().bit_generator.state
        got = F.conv2d(a["x"], a["w"], a["b"], stride=2, padding=1)
        assert mc.random.get_rng().bit_generator.state == after_init != before
        with mc.no_grad():
            np.testing.assert_allclose(mc.to_numpy(got), mc.to_numpy(conv(a["x"])), rtol=1e-12, atol=1e-12)
        assert got.dtype == np.float64
        lin = nn.Linear(6, 5).double()
        lin.weight.data, lin.bias.data = a["wl"], a["bl"]
        with mc.no_grad():
            np.testing.assert_allclose(mc.to_numpy(F.linear(a["x"], a["wl"], a["bl"])), mc.to_numpy(lin(a["x"])),
                                       rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(mc.to_numpy(F.max_pool2d(a["x"], 2)),
                                       mc.to_numpy(nn.MaxPool2d(2).double()(a["x"])), rtol=0, atol=0)
            assert F.cross_entropy(a["logits"], a["t"]) == pytest.approx(
                nn.CrossEntropyLoss().double()(a["logits"], a["t"]), rel=1e-12)
        bn = nn.BatchNorm2d(3).double()
        bn.weight.data, bn.bias.data = a["g"], a["be"]
        bn._set_buffer("running_mean", a["rm"].copy())
        bn._set_buffer("running_var", a["rv"].copy())
        bn.eval()
        with mc.no_grad():
            np.testing.assert_allclose(mc.to_numpy(F.batch_norm(a["x"], a["rm"], a["rv"], a["g"], a["be"])),
                                       mc.to_numpy(bn(a["x"])), rtol=1e-12, atol=1e-12)


def test_batch_norm_training_updates_the_running_arrays_in_place():
    x = _x((4, 3, 5, 5), 1)
    rm, rv = np.zeros(3), np.ones(3)
    y = F.batch_norm(x, rm, rv, training=True, momentum=0.5)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(rm, 0.5 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * var * 100 / 99, rtol=1e-12)
    np.testing.assert_allclose(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("call, match", [
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 2, 3, 3))), "needs weight of shape"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), padding="same", stride=2), "strided"),
    (lambda: F.conv2d(np.ones((1, 3, 2, 2)), np.ones((2, 3, 3, 3))), "smaller than the dilated kernel"),
    (lambda: F.linear(np.ones((2, 4)), np.ones((3, 5))), "needs weight of shape"),
    (lambda: F.pad(np.ones((1, 1, 3, 3)), (1, 1, 1, 1), mode="wrap"), "mode must be one of"),
    (lambda: F.pad(np.ones((1, 1, 3, 3)), (1, 1, 1, 1), mode="reflect", value=1.0), "doesn't take in a value"),
    (lambda: F.batch_norm(np.ones((2, 3, 4)), np.zeros(2), np.ones(2)), r"running_mean must have shape \(3,\)"),
    (lambda: F.conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((2, 1, 3, 3)), output_padding=2, stride=2),
     "output_padding"),
])
def test_functional_bad_arguments_are_one_clear_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
