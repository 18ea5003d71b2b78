"""Padding layers, Conv2d's padding modes and padding='same', ceil_mode and return_indices pooling,
MaxUnpool2d, BatchNorm1d, Dropout2d and Linear on (*, in_features).

Checked three ways, on every backend that loads: against PyTorch's stored answers
(``tests/fixtures/pad_pool.npz``, no torch needed), against PyTorch live on random
configurations (skipped without torch), and against central differences in float64. Then the
error conditions (PyTorch's, one clear line naming the layer) and Dropout2d's masks.
The ops themselves are compared backend against reference in ``conformance/cases_pad_pool.py``.
"""
import json
import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicnn as mc
from gradcheck import check_layer
from make_pad_pool_fixtures import CASES, FIXTURE, check, load_fixtures, make_arrays, run_minicnn, run_torch
from minicnn import nn
from minicnn.nn.module import forward_pass
from minicnn.shapes import PAD_MODES, check_pad2d, conv_output_size

FIXTURES = load_fixtures()
dtypes = st.sampled_from(["float32", "float32", "float64"])
seeds = st.integers(0, 2**31 - 1)


# -- PyTorch's stored answers --------------------------------------------------------------------

def test_fixture_file_matches_case_list():
    """A case edited or added in make_pad_pool_fixtures.py without regenerating the file fails here."""
    assert sorted(FIXTURES) == sorted(CASES)
    for name, (cfg, _, _) in FIXTURES.items():
        assert cfg == json.loads(json.dumps(CASES[name], sort_keys=True)), name
    assert FIXTURE.stat().st_size < 512 * 1024


@pytest.mark.parametrize("case", sorted(FIXTURES))
def test_case_matches_torch(backend_name, case):
    cfg, inputs, expected = FIXTURES[case]
    check(run_minicnn(cfg, inputs, backend=backend_name), expected, cfg, f"{case} on {backend_name}")


def test_fixtures_cover_every_new_layer():
    classes = {cfg["cls"] for cfg, _, _ in FIXTURES.values()}
    assert {"ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d", "MaxUnpool2d",
            "BatchNorm1d", "Dropout2d", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveMaxPool2d", "Linear"} <= classes
    modes = {cfg["kwargs"].get("padding_mode") for cfg, _, _ in FIXTURES.values() if cfg["cls"] == "Conv2d"}
    assert {"reflect", "replicate", "circular"} <= modes


# -- PyTorch live, random configurations -----------------------------------------------------------

def _parity(cfg, seed, backend_name):
    pytest.importorskip("torch")
    arrays = make_arrays(cfg, np.random.default_rng(seed))
    want = run_torch(cfg, arrays)
    check(run_minicnn(cfg, arrays, backend=backend_name), want, cfg, f"{cfg} on {backend_name}")


@st.composite
def pad_cfgs(draw):
    cls = draw(st.sampled_from(["ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d",
                                "CircularPad2d"]))
    mode = {"ZeroPad2d": "constant", "ConstantPad2d": "constant", "ReflectionPad2d": "reflect",
            "ReplicationPad2d": "replicate", "CircularPad2d": "circular"}[cls]
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))]
    pads = [draw(st.integers(-2, 4)) for _ in range(4)]
    try:
        check_pad2d(shape, pads, mode)
    except ValueError:
        assume(False)
    if draw(st.booleans()):
        shape = shape[1:]  # unbatched (C, H, W)
    args = [pads] + ([draw(st.sampled_from([0.0, 2.5]))] if cls == "ConstantPad2d" else [])
    return {"cls": cls, "x_shape": shape, "args": args, "kwargs": {}, "dtype": draw(dtypes)}


@pytest.mark.torch
@given(cfg=pad_cfgs(), seed=seeds)
def test_padding_layers_match_torch(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def conv_pad_cfgs(draw):
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    g = draw(st.integers(1, 2))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    hw = [draw(st.integers(2, 8)), draw(st.integers(2, 8))]
    if draw(st.booleans()):
        padding, stride = "same", [1, 1]
        pads = [d * (kk - 1) for d, kk in zip(dil, k)]
        pads = [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2]
    else:
        padding = [draw(st.integers(0, 3)), draw(st.integers(0, 3))]
        stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
        pads = [padding[1], padding[1], padding[0], padding[0]]
    if mode != "zeros":
        try:
            check_pad2d([1, 1] + hw, pads, {"reflect": "reflect", "replicate": "replicate",
                                            "circular": "circular"}[mode])
        except ValueError:
            assume(False)
    p, q = conv_output_size(hw[0] + pads[2] + pads[3], hw[1] + pads[0] + pads[1], *k, stride, (0, 0), dil)
    assume(p >= 1 and q >= 1)
    return {"cls": "Conv2d", "x_shape": [draw(st.integers(1, 2)), cin, *hw], "args": [cin, cout, k],
            "kwargs": {"stride": stride, "padding": padding, "dilation": dil, "groups": g,
                       "bias": draw(st.booleans()), "padding_mode": mode}, "dtype": draw(dtypes)}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.torch
@given(cfg=conv_pad_cfgs(), seed=seeds)
def test_conv_padding_modes_and_same_match_torch(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def pool_cfgs(draw):
    cls = draw(st.sampled_from(["MaxPool2d", "AvgPool2d"]))
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pad = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))] if cls == "MaxPool2d" else [1, 1]
    hw = [draw(st.integers(1, 10)), draw(st.integers(1, 10))]
    ceil = draw(st.booleans())
    p, q = conv_output_size(*hw, *k, stride, pad, dil, ceil)
    assume(p >= 1 and q >= 1)
    for axis, n in enumerate((p, q)):  # every dilated window must reach a real input (minicnn refuses the rest)
        taps = np.arange(n)[:, None] * stride[axis] - pad[axis] + np.arange(k[axis])[None, :] * dil[axis]
        assume(((taps >= 0) & (taps < hw[axis])).any(axis=1).all())
    kwargs = {"stride": stride, "padding": pad, "ceil_mode": ceil}
    if cls == "MaxPool2d":
        kwargs.update(dilation=dil, return_indices=draw(st.booleans()))
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
    return {"cls": cls, "x_shape": [draw(st.integers(1, 2)), draw(st.integers(1, 3)), *hw], "args": [k],
            "kwargs": kwargs, "dtype": draw(dtypes),
            "input": draw(st.sampled_from(["normal", "distinct", "ties"]))}


@pytest.mark.torch
@given(cfg=pool_cfgs(), seed=seeds)
def test_pooling_ceil_mode_and_indices_match_torch(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def unpool_cfgs(draw):
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k // 2))
    hw = [draw(st.integers(k, 9)), draw(st.integers(k, 9))]
    p, q = conv_output_size(*hw, k, k, (stride, stride), (pad, pad), (1, 1))
    assume(p >= 1 and q >= 1)
    cfg = {"cls": "MaxUnpool2d", "pool_shape": [draw(st.integers(1, 2)), draw(st.integers(1, 3)), *hw],
           "args": [k], "kwargs": {"stride": stride, "padding": pad}, "dtype": draw(dtypes)}
    default = [(n - 1) * stride - 2 * pad + k for n in (p, q)]
    if default != hw:  # indices address the pooled input's plane: say its size when the default differs
        assume(all(d - stride < h < d + stride for d, h in zip(default, hw)))
        cfg["call"] = {"output_size": hw}
    return cfg


@pytest.mark.torch
@given(cfg=unpool_cfgs(), seed=seeds)
def test_maxunpool_matches_torch(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@st.composite
def misc_cfgs(draw):
    kind = draw(st.sampled_from(["BatchNorm1d", "Linear", "Dropout2d", "AdaptiveMaxPool2d"]))
    dt = draw(dtypes)
    if kind == "BatchNorm1d":
        c = draw(st.integers(1, 4))
        shape = [draw(st.integers(1, 4)), c] + ([draw(st.integers(1, 4))] if draw(st.booleans()) else [])
        train, track = draw(st.booleans()), draw(st.booleans())
        if train or not track:
            assume(int(np.prod(shape)) // c > 1)
        return {"cls": kind, "x_shape": shape, "args": [c], "dtype": dt, "train": train,
                "steps": draw(st.integers(1, 3)),
                "kwargs": {"eps": draw(st.sampled_from([1e-5, 1e-3])), "momentum": draw(st.sampled_from([0.1, None])),
                           "affine": draw(st.booleans()), "track_running_stats": track}}
    if kind == "Linear":
        fin, fout = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
        return {"cls": kind, "x_shape": lead + [fin], "args": [fin, fout], "dtype": dt,
                "kwargs": {"bias": draw(st.booleans())}}
    if kind == "Dropout2d":  # torch draws its own mask, so only the deterministic modes compare
        train = draw(st.booleans())
        return {"cls": kind, "x_shape": [2, 3, 2, 2], "args": [0.0 if train else draw(st.floats(0, 1))],
                "kwargs": {}, "dtype": dt, "train": train}
    return {"cls": kind, "x_shape": [draw(st.integers(1, 2)), 2, draw(st.integers(1, 7)), draw(st.integers(1, 7))],
            "args": [[draw(st.integers(1, 5)), draw(st.integers(1, 5))]], "kwargs": {"return_indices": True},
            "dtype": dt, "input": draw(st.sampled_from(["normal", "ties"]))}


@pytest.mark.torch
@given(cfg=misc_cfgs(), seed=seeds)
def test_batchnorm1d_linear_dropout2d_adaptive_indices_match_torch(backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


# -- numerical gradients ---------------------------------------------------------------------------

def _distinct(rng, shape, step=0.01):
    """Values at least ``step`` apart: max pooling never meets a tie within the difference step."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * step


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.ZeroPad2d((2, -1, 1, 3)), (2, 2, 3, 4)),
    (lambda: nn.ConstantPad2d(1, 0.7), (2, 3, 3)),
    (lambda: nn.ReflectionPad2d((2, 1, 1, 2)), (1, 2, 3, 4)),
    (lambda: nn.ReplicationPad2d((3, 0, 2, 1)), (1, 2, 3, 3)),
    (lambda: nn.CircularPad2d((1, 3, 2, 0)), (2, 1, 3, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 4, 4)),
    (lambda: nn.Conv2d(2, 2, 2, padding="same", padding_mode="replicate", dilation=(1, 2)), (1, 2, 4, 5)),
    (lambda: nn.Conv2d(2, 2, (2, 3), padding="same"), (1, 2, 4, 4)),
    (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=2, groups=2, padding_mode="circular"), (1, 2, 5, 4)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 2, 6, 5)),
    (lambda: nn.AvgPool2d((2, 3), stride=(3, 2), ceil_mode=True, count_include_pad=False), (1, 2, 7, 6)),
    (lambda: nn.BatchNorm1d(3), (5, 3)),
    (lambda: nn.BatchNorm1d(2, affine=False), (3, 2, 4)),
    (lambda: nn.Linear(4, 3), (2, 3, 4)),
    (lambda: nn.Linear(3, 2), (3,)),
])
def test_gradients(backend_name, make, shape):
    with mc.backend(backend_name):
        check_layer(make(), np.random.default_rng(0).standard_normal(shape))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2, stride=2, ceil_mode=True),
                                    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True),
                                    dict(kernel_size=(3, 2), stride=(2, 3), dilation=(1, 2), ceil_mode=True)])
def test_maxpool_ceil_gradients(backend_name, kwargs):
    pool = nn.MaxPool2d(**kwargs)
    if kwargs.get("return_indices"):
        forward = pool.forward
        pool.forward = lambda x: forward(x)[0]  # check the values; indices have no gradient
    with mc.backend(backend_name):
        check_layer(pool, _distinct(np.random.default_rng(1), (2, 2, 7, 6)))


def test_maxunpool_gradient(backend_name):
    """Distinct indices (windows that do not overlap): then PyTorch's backward, a gather at each
    index, is the exact gradient. (With a repeated index the last value stays, and PyTorch still
    gives every input the gradient at its index; the fixtures check that rule.)"""
    rng = np.random.default_rng(2)
    with mc.backend(backend_name), mc.no_grad():
        y, idx = nn.MaxPool2d(2, stride=2, return_indices=True)(_distinct(rng, (2, 2, 7, 8)))
    idx = mc.to_numpy(idx)  # host indices: check_layer also runs the layer on the numpy reference
    unpool = nn.MaxUnpool2d(2, stride=2)
    forward = unpool.forward
    unpool.forward = lambda x: forward(x, idx, output_size=(7, 8))
    with mc.backend(backend_name):
        check_layer(unpool, mc.to_numpy(y))


def test_dropout2d_gradient(backend_name):
    with mc.backend(backend_name):
        check_layer(nn.Dropout2d(0.4), np.random.default_rng(3).standard_normal((3, 4, 2, 3)), reseed=7)


# -- behaviour ---------------------------------------------------------------------------------------

def test_dropout2d_drops_whole_channels_with_the_same_mask_on_every_backend():
    x = np.random.default_rng(0).standard_normal((8, 16, 3, 4)).astype(np.float32)
    outs = {}
    for name in ("numpy", "numba"):
        with mc.backend(name):
            mc.manual_seed(11)
            outs[name] = mc.to_numpy(nn.Dropout2d(0.3)(x))
    assert np.array_equal(outs["numpy"], outs["numba"])
    y = outs["numpy"]
    zero = np.all(y == 0, axis=(2, 3))
    kept = ~zero
    np.testing.assert_allclose(y[kept], (x / 0.7)[kept], rtol=1e-6)  # survivors scaled by 1/(1-p)
    assert 0 < zero.sum() < zero.size  # some channels of 128 dropped, not all
    assert np.array_equal(nn.Dropout2d(0.3).eval()(x), x)
    assert np.array_equal(nn.Dropout2d(1.0)(x), np.zeros_like(x))


def test_dropout2d_backward_routes_through_the_mask():
    x = np.ones((2, 5, 2, 2))
    d = nn.Dropout2d(0.5)
    y = mc.to_numpy(d(x))
    dx = mc.to_numpy(d.backward(np.full(x.shape, 3.0)))
    np.testing.assert_allclose(dx, 3.0 * y, rtol=1e-6)


def test_maxpool_return_indices_under_no_grad_and_unpool_round_trip(backend_name):
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
    with mc.backend(backend_name), mc.no_grad():
        y, idx = nn.MaxPool2d(2, return_indices=True)(x)
        assert idx.dtype == np.int64 and idx.shape == y.shape
        back = mc.to_numpy(nn.MaxUnpool2d(2)(y, idx))
    # every window's maximum is back in place, the rest is zero
    assert np.array_equal(np.where(back != 0, x, 0), back)
    assert np.count_nonzero(back) == y.size


def test_linear_shapes_and_a_module_used_twice():
    lin = nn.Linear(4, 3)
    x3 = np.random.default_rng(5).standard_normal((2, 5, 4))
    assert lin(x3).shape == (2, 5, 3) and lin(np.zeros(4)).shape == (3,)
    lin.zero_grad()
    a, b = x3[0], x3[1]
    with forward_pass():  # one pass, two calls: backward pops them in reverse
        lin(a), lin(b)
    lin.backward(np.ones((5, 3)))
    lin.backward(np.ones((5, 3)))
    np.testing.assert_allclose(lin.bias.grad, np.full(3, 10.0))
    np.testing.assert_allclose(lin.weight.grad, np.ones((3, 1)) * x3.reshape(-1, 4).sum(0), rtol=1e-5)


def test_state_dicts_are_torchs():
    assert list(nn.BatchNorm1d(3).state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                                    "num_batches_tracked"]
    for mode in ("zeros", "reflect", "replicate", "circular"):
        assert list(nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode).state_dict()) == ["weight", "bias"]
    assert nn.Conv2d(1, 1, 4, padding="same").padding == "same"
    assert nn.Conv2d(1, 1, 3, padding="same").padding == (1, 1)  # the symmetric fast path: the conv op pads


def test_reprs():
    assert repr(nn.ReflectionPad2d(1)) == "ReflectionPad2d((1, 1, 1, 1))"
    assert repr(nn.ConstantPad2d((1, 2, 3, 4), 2)) == "ConstantPad2d(padding=(1, 2, 3, 4), value=2.0)"
    assert "padding_mode=circular" in repr(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"))
    assert "ceil_mode=True" in repr(nn.MaxPool2d(2, ceil_mode=True))


# -- bad arguments: PyTorch's conditions, one line naming the layer ---------------------------------

def _raises(exc, fn, *parts):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


@pytest.mark.parametrize("fn,parts", [
    (lambda: nn.ZeroPad2d((1, 2, 3)), ("ZeroPad2d", "4-tuple", "(1, 2, 3)")),
    (lambda: nn.ReflectionPad2d(1.5), ("ReflectionPad2d", "1.5")),
    (lambda: nn.ReflectionPad2d(3)(np.zeros((1, 1, 3, 5))), ("ReflectionPad2d", "less than", "height 3")),
    (lambda: nn.CircularPad2d((5, 0, 0, 0))(np.zeros((1, 1, 3, 4))), ("CircularPad2d", "at most", "width 4")),
    (lambda: nn.ZeroPad2d((-3, -2, 0, 0))(np.zeros((1, 1, 3, 4))), ("ZeroPad2d", "crops more", "width 4")),
    (lambda: nn.ReflectionPad2d(1)(np.zeros((3, 4))), ("ReflectionPad2d", "(C, H, W) or (N, C, H, W)", "(3, 4)")),
    (lambda: nn.Conv2d(1, 1, 3, padding_mode="mirror"), ("Conv2d", "padding_mode", "'mirror'")),
    (lambda: nn.Conv2d(1, 1, 3, padding="same", stride=2), ("Conv2d", "'same'", "strided")),
    (lambda: nn.Conv2d(1, 1, 3, padding=2, padding_mode="reflect")(np.zeros((1, 1, 2, 5))),
     ("Conv2d", "reflect", "less than", "height 2")),
    (lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True)(np.zeros((1, 1, 1, 1))), ("MaxPool2d", "smaller")),
    (lambda: nn.MaxUnpool2d(2)(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), output_size=(6, 4)),
     ("MaxUnpool2d", "output_size", "between 2 and 6")),
    (lambda: nn.MaxUnpool2d(2)(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), output_size=(4, 4, 4)),
     ("MaxUnpool2d", "2 or 4")),
    (lambda: nn.MaxUnpool2d(2)(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2), np.int64)),
     ("MaxUnpool2d", "indices shape (1, 2, 2)", "(1, 1, 2, 2)")),
    (lambda: nn.MaxUnpool2d(2)(np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16)), ("maxunpool2d", "outside the 4x4")),
    (lambda: nn.MaxUnpool2d(0), ("MaxUnpool2d", "kernel_size")),
    (lambda: nn.BatchNorm1d(3)(np.zeros((2, 3, 1, 1))), ("BatchNorm1d", "2-D (N, C) or 3-D (N, C, L)", "(2, 3, 1, 1)")),
    (lambda: nn.BatchNorm1d(3)(np.zeros((2, 4))), ("BatchNorm1d", "(N, 3)", "(2, 4)")),
    (lambda: nn.BatchNorm1d(3)(np.zeros((1, 3))), ("BatchNorm1d", "more than 1 value per channel", "(1, 3)")),
    (lambda: nn.Linear(3, 2)(np.zeros((2, 4))), ("Linear", "(N, 3)", "(2, 4)")),
    (lambda: nn.Linear(3, 2)(np.zeros((2, 5, 4))), ("Linear", "(*, 3)", "(2, 5, 4)")),
    (lambda: nn.Linear(3, 2)(np.float32(1.0)), ("Linear", "(*, 3)", "()")),
    (lambda: nn.Dropout2d(1.5), ("Dropout2d", "[0, 1]")),
    (lambda: nn.Dropout2d(0.5)(np.zeros((2, 3, 4))), ("Dropout2d", "4-D", "(2, 3, 4)", "(N, C, L, 1)")),
])
def test_bad_arguments(fn, parts):
    msg = _raises((ValueError, TypeError), fn, *parts)
    assert re.match(r"\w+", msg)


def test_every_pad_mode_has_a_layer():
    layers = {nn.ZeroPad2d: "constant", nn.ConstantPad2d: "constant", nn.ReflectionPad2d: "reflect",
              nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}
    assert set(layers.values()) == set(PAD_MODES)
    assert all(cls.mode == mode for cls, mode in layers.items())
