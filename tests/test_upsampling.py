"""ConvTranspose2d, Upsample/interpolate, PixelShuffle/PixelUnshuffle.

- PyTorch parity on random configurations, live where torch imports (forward, dL/dx, dW, db),
  and against the committed answers in ``tests/fixtures/upsampling.npz`` everywhere
  (``python tests/make_upsampling_fixtures.py`` rewrites them);
- the reference's transposed convolution against its scatter-loop form, and against a
  convolution it is the adjoint of (<conv(x), y> = <x, conv_transpose(y)>);
- numerical gradient checks of every layer;
- PyTorch's argument errors, one line each, naming the layer and the values.
The op-level numba-against-numpy checks live in ``tests/conformance/cases_upsampling.py``.
"""
import json

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import nn
from minicnn.backends.numpy import conv as ref_conv
from minicnn.backends.numpy import conv_transpose as ref_ct
from minicnn.nn.module import forward_pass
from minicnn.nn.upsampling import interpolate, pixel_shuffle, pixel_unshuffle
from minicnn.shapes import conv_transpose_output_size

from gradcheck import check_layer
from make_upsampling_fixtures import CASES, FIXTURE, compare, load_fixtures, make_arrays, run_minicnn, run_torch

FIXTURES = load_fixtures()
seeds = st.integers(0, 2**31 - 1)


# -- committed PyTorch answers -----------------------------------------------------------------

def test_fixture_file_matches_case_list():
    """A case edited or added in make_upsampling_fixtures.py without regenerating the file fails here."""
    assert sorted(FIXTURES) == sorted(CASES)
    for name, (cfg, _, _) in FIXTURES.items():
        assert cfg == json.loads(json.dumps(CASES[name], sort_keys=True)), name
    assert FIXTURE.stat().st_size < 512 * 1024


@pytest.mark.parametrize("case", sorted(FIXTURES))
def test_fixture_matches_torch(backend_name, case):
    cfg, inputs, expected = FIXTURES[case]
    got = run_minicnn(cfg, inputs, backend=backend_name)
    compare(got, expected, cfg.get("dtype", "float32"), f"{case} on {backend_name}")


# -- live PyTorch parity -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: torch's thread pool only adds contention
    yield torch
    torch.set_num_threads(prev)


@st.composite
def conv_t_cfgs(draw):
    g = draw(st.integers(1, 3))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 3))
    k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dil = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pad = [draw(st.integers(0, 3)), draw(st.integers(0, 3))]
    op = [draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dil)]
    x = [draw(st.integers(1, 3)), cin, draw(st.integers(1, 7)), draw(st.integers(1, 7))]
    oh, ow = conv_transpose_output_size(x[2], x[3], *k, stride, pad, dil, op)
    assume(oh >= 1 and ow >= 1)
    args = {"cin": cin, "cout": cout, "k": k, "stride": stride, "padding": pad, "dilation": dil, "groups": g,
            "bias": draw(st.booleans())}
    cfg = {"kind": "conv_transpose2d", "x": x, "args": args, "dtype": draw(st.sampled_from(["float32", "float64"]))}
    if draw(st.booleans()) or any(o >= s for o, s in zip(op, stride)):
        args["output_padding"] = op
    else:  # the same output padding asked for through forward's output_size (it reaches stride - 1 only)
        cfg["output_size"] = [oh, ow]
    return cfg


@st.composite
def upsample_cfgs(draw):
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    x = [draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8))]
    args = {"mode": mode}
    if mode == "bilinear":
        args["align_corners"] = draw(st.sampled_from([None, False, True]))
    if draw(st.booleans()):
        args["size"] = [draw(st.integers(1, 12)), draw(st.integers(1, 12))]
    else:
        f = [draw(st.sampled_from([0.5, 0.6, 1.0, 1.1, 1.3, 1.5, 1.7, 2.0, 2.5, 3.0, 3.3])) for _ in range(2)]
        assume(int(x[2] * f[0]) >= 1 and int(x[3] * f[1]) >= 1)
        args["scale_factor"] = f
        args["recompute_scale_factor"] = draw(st.sampled_from([None, False, True]))
    return {"kind": "upsample", "x": x, "args": args, "dtype": draw(st.sampled_from(["float32", "float64"]))}


@st.composite
def shuffle_cfgs(draw):
    r = draw(st.integers(1, 3))
    lead = [draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        x = lead + [r * r * draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))]
        return {"kind": "pixel_shuffle", "x": x, "args": {"r": r}}
    x = lead + [draw(st.integers(1, 3)), r * draw(st.integers(1, 3)), r * draw(st.integers(1, 3))]
    return {"kind": "pixel_unshuffle", "x": x, "args": {"r": r}}


def _parity(cfg, seed, backend_name):
    arrays = make_arrays(cfg, np.random.default_rng(seed))
    compare(run_minicnn(cfg, arrays, backend=backend_name), run_torch(cfg, arrays), cfg.get("dtype", "float32"),
            f"{cfg} on {backend_name}")


@given(cfg=conv_t_cfgs(), seed=seeds)
def test_conv_transpose2d_torch(torch, backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@given(cfg=upsample_cfgs(), seed=seeds)
def test_upsample_torch(torch, backend_name, cfg, seed):
    _parity(cfg, seed, backend_name)


@given(cfg=shuffle_cfgs(), seed=seeds)
def test_pixel_shuffle_torch(torch, cfg, seed):
    _parity(cfg, seed, "numpy")  # no op: the same array methods on every backend


def test_conv_transpose2d_init_is_torchs(torch):
    """Same weight layout, fan-in and bounds: torch's layer draws from the same uniform range."""
    for args in [(4, 6, 3), (6, 4, (2, 5))]:
        for groups in (1, 2):
            ours = nn.ConvTranspose2d(*args, groups=groups)
            theirs = torch.nn.ConvTranspose2d(*args, groups=groups)
            assert ours.weight.shape == tuple(theirs.weight.shape) and ours.bias.shape == tuple(theirs.bias.shape)
            fan_in = theirs.weight.shape[1] * theirs.weight.shape[2] * theirs.weight.shape[3]
            bound = 1 / np.sqrt(fan_in)
            for p in (ours.weight.data, ours.bias.data):
                assert np.abs(p).max() <= bound and np.abs(p).max() > 0.5 * bound
            assert float(theirs.weight.detach().abs().max()) <= bound + 1e-7
    assert list(nn.ConvTranspose2d(2, 3, 3).state_dict()) == list(torch.nn.ConvTranspose2d(2, 3, 3).state_dict())


def test_interpolate_matches_torch(torch):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    for kw in [dict(scale_factor=1.7), dict(size=(4, 9), mode="bilinear"),
               dict(scale_factor=(2.5, 0.6), mode="bilinear", align_corners=True),
               dict(scale_factor=1.3, recompute_scale_factor=True), dict(size=3)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x), **kw).numpy()
        np.testing.assert_allclose(mc.to_numpy(interpolate(x, **kw)), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pixel_shuffle(x[:, :, :4, :4].reshape(2, 12, 2, 2), 2),
                                  torch.nn.functional.pixel_shuffle(
                                      torch.from_numpy(x[:, :, :4, :4].reshape(2, 12, 2, 2)), 2).numpy())


# -- the reference against itself ------------------------------------------------------------------

@st.composite
def _ct_geometry(draw):
    G, Cg, Og = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    R, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dil))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    OH, OW = conv_transpose_output_size(H, W, R, S, stride, pad, dil, op)
    assume(OH >= 1 and OW >= 1)
    return (2, G * Cg, H, W), (G * Cg, Og, R, S), stride, pad, op, dil, G


@given(geom=_ct_geometry(), seed=seeds)
def test_reference_matches_scatter_loops(geom, seed):
    xs, ws, stride, pad, op, dil, G = geom
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1] * G)
    np.testing.assert_allclose(ref_ct.conv_transpose2d_forward(x, w, b, stride, pad, op, dil, G),
                               ref_ct.conv_transpose2d_forward_naive(x, w, b, stride, pad, op, dil, G),
                               rtol=1e-12, atol=1e-12)


@given(geom=_ct_geometry(), seed=seeds)
def test_transposed_conv_is_the_adjoint_of_conv(geom, seed):
    """<conv2d(u, w), x> == <u, conv_transpose2d(x, w)> for u of the transposed conv's output shape
    (output_padding 0 here, where the conv of the output has exactly x's shape)."""
    xs, ws, stride, pad, _, dil, G = geom
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    y = ref_ct.conv_transpose2d_forward(x, w, None, stride, pad, (0, 0), dil, G)
    u = rng.standard_normal(y.shape)
    cu = ref_conv.conv2d_forward(u, w, None, stride, pad, dil, G)
    assert cu.shape == x.shape
    np.testing.assert_allclose(np.sum(cu * x), np.sum(u * y), rtol=1e-10, atol=1e-10)


# -- numerical gradients ----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(in_channels=4, out_channels=2, kernel_size=(2, 3), stride=(1, 2), dilation=2, groups=2),
    dict(in_channels=2, out_channels=2, kernel_size=2, dilation=3, output_padding=2, bias=False),
])
def test_conv_transpose2d_gradcheck(backend_name, args):
    with mc.backend(backend_name):
        layer = nn.ConvTranspose2d(**args)
        x = np.random.default_rng(0).standard_normal((2, args["in_channels"], 3, 4))
        check_layer(layer, x)


@pytest.mark.parametrize("kw", [
    dict(scale_factor=2, mode="nearest"), dict(scale_factor=(1.7, 0.6)), dict(size=(5, 7), mode="bilinear"),
    dict(scale_factor=2.5, mode="bilinear", align_corners=True), dict(size=(2, 3), mode="bilinear"),
])
def test_upsample_gradcheck(backend_name, kw):
    with mc.backend(backend_name):
        check_layer(nn.Upsample(**kw), np.random.default_rng(1).standard_normal((2, 2, 4, 5)))


def test_pixel_shuffle_gradcheck():
    x = np.random.default_rng(2).standard_normal((2, 8, 2, 3))
    check_layer(nn.PixelShuffle(2), x)
    check_layer(nn.PixelUnshuffle(2), x.reshape(2, 2, 4, 6))


# -- layer behaviour ---------------------------------------------------------------------------------

def test_pixel_shuffle_round_trip_and_formula():
    x = np.arange(2 * 18 * 2 * 3, dtype=np.float32).reshape(2, 18, 2, 3)
    y = nn.PixelShuffle(3)(x)
    assert y.shape == (2, 2, 6, 9)
    assert y[1, 1, 1 * 3 + 2, 2 * 3 + 1] == x[1, 1 * 9 + 2 * 3 + 1, 1, 2]
    np.testing.assert_array_equal(nn.PixelUnshuffle(3)(y), x)
    np.testing.assert_array_equal(pixel_unshuffle(pixel_shuffle(x, 3), 3), x)


def test_conv_transpose2d_shared_module_and_backward_params(backend_name):
    """Called twice, backward twice in reverse order: each call gets its own input's gradients;
    backward_params computes the same parameter gradients without dL/dx."""
    with mc.backend(backend_name):
        rng = np.random.default_rng(3)
        layer = nn.ConvTranspose2d(2, 3, 3, stride=2)
        x1, x2 = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 2, 4, 2))
        with forward_pass():  # one pass calling the layer twice (a shared module)
            y1, y2 = layer(x1), layer(x2)
        d1, d2 = rng.standard_normal(y1.shape), rng.standard_normal(y2.shape)
        g2, g1 = mc.to_numpy(layer.backward(d2)), mc.to_numpy(layer.backward(d1))
        assert g1.shape == x1.shape and g2.shape == x2.shape
        both = mc.to_numpy(layer.weight.grad).copy()
        layer.zero_grad()
        layer(x1)
        assert np.allclose(mc.to_numpy(layer.backward(d1)), g1)
        layer.zero_grad()
        layer(x2)
        layer.backward_params(d2)
        layer(x1)
        layer.backward_params(d1)
        np.testing.assert_allclose(mc.to_numpy(layer.weight.grad), both, rtol=1e-5, atol=1e-6)


def test_upsample_no_grad_keeps_nothing():
    layer = nn.Upsample(scale_factor=2)
    with mc.no_grad():
        y = layer(np.ones((1, 1, 2, 2), np.float32))
    assert y.shape == (1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="Upsample"):
        layer.backward(np.ones((1, 1, 4, 4), np.float32))


def test_output_size_picks_output_padding():
    layer = nn.ConvTranspose2d(1, 1, 3, stride=3)
    x = np.ones((1, 1, 2, 2), np.float32)
    for size in [(6, 6), (7, 8), (1, 1, 8, 6)]:
        assert layer(x, output_size=size).shape[2:] == tuple(size[-2:])
    assert layer(x).shape[2:] == (6, 6)


def test_repr():
    assert repr(nn.ConvTranspose2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), output_padding=(1, 0),
                                   bias=False)).startswith(
        "ConvTranspose2d(16, 33, kernel_size=(3, 5), stride=(2, 1), padding=(4, 2), output_padding=(1, 0), bias=False")
    assert "scale_factor=2.0, mode='bilinear'" in repr(nn.Upsample(scale_factor=2, mode="bilinear"))


# -- bad arguments -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: nn.ConvTranspose2d(3, 4, 3, groups=2), r"ConvTranspose2d: in_channels \(3\).*groups \(2\)"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
     r"output_padding \(2, 2\) must be smaller than either stride \(2, 2\) or dilation \(1, 1\)"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, output_padding=(0, 1)), r"output_padding \(0, 1\)"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), r'only "zeros" padding_mode'),
    (lambda: nn.ConvTranspose2d(2, 2, 0), r"kernel_size \(0, 0\)"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, padding=-1), r"padding \(-1, -1\)"),
    (lambda: nn.Upsample(), "either size or scale_factor"),
    (lambda: nn.Upsample(size=3, scale_factor=2), "only one of size or scale_factor"),
    (lambda: nn.Upsample(scale_factor=2, mode="bicubic"), r"mode must be one of \('nearest', 'bilinear'\)"),
    (lambda: nn.Upsample(scale_factor=2, align_corners=True), "align_corners option can only be set"),
    (lambda: nn.Upsample(size=4, recompute_scale_factor=True), "recompute_scale_factor is not meaningful"),
    (lambda: nn.Upsample(size=(1, 2, 3)), "size must be an int or a pair"),
    (lambda: nn.Upsample(scale_factor="2"), "scale_factor must be a number"),
    (lambda: nn.PixelShuffle(0), "PixelShuffle: upscale_factor must be a positive int, got 0"),
    (lambda: nn.PixelUnshuffle(1.5), "PixelUnshuffle: downscale_factor must be a positive int"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("layer, x, match", [
    (nn.ConvTranspose2d(3, 2, 3), np.ones((1, 2, 4, 4)), r"ConvTranspose2d\(3, 2.*\(N, 3, H, W\).*\(1, 2, 4, 4\)"),
    (nn.ConvTranspose2d(3, 2, 3), np.ones((3, 4, 4)), r"expected 4-D input"),
    (nn.ConvTranspose2d(1, 1, 1, padding=2), np.ones((1, 1, 3, 3)), r"output size \(-1, -1\)"),
    (nn.Upsample(scale_factor=0.2), np.ones((1, 1, 3, 3)), r"output \(H: 0, W: 0\)"),
    (nn.Upsample(size=2, mode="bilinear"), np.ones((1, 3, 3)), r"expected 4-D input.*\(1, 3, 3\)"),
    (nn.PixelShuffle(2), np.ones((1, 6, 2, 2)), r"input channels 6 must be divisible by upscale_factor\^2 = 4"),
    (nn.PixelShuffle(2), np.ones((4, 2)), r"at least 3 dimensions"),
    (nn.PixelUnshuffle(2), np.ones((1, 1, 4, 3)), r"height 4 and width 3 must be divisible by downscale_factor 2"),
])
def test_bad_inputs(layer, x, match):
    with pytest.raises(ValueError, match=match) as e:
        layer(x)
    assert "\n" not in str(e.value)


def test_output_size_out_of_range():
    layer = nn.ConvTranspose2d(1, 1, 3, stride=2)
    with pytest.raises(ValueError, match=r"requested an output size of \(9, 5\), but valid sizes range from "
                                         r"\(5, 5\) to \(6, 6\) \(for an input of \(2, 2\)\)"):
        layer(np.ones((1, 1, 2, 2), np.float32), output_size=(9, 5))


def test_ops_refuse_bad_geometry():
    from minicnn.backends.numba import conv_transpose, upsample

    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 3, 3))
    with pytest.raises(ValueError, match="output_padding .* must be smaller than either stride"):
        conv_transpose.conv_transpose2d_forward(x, w, None, 1, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="input shape .* has 2 channels but weight shape .* expects 3"):
        conv_transpose.conv_transpose2d_forward(x, np.ones((3, 1, 3, 3)), None, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="dy shape"):
        conv_transpose.conv_transpose2d_backward(np.ones((1, 1, 4, 4)), x, w, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="sizes must be greater than 0"):
        upsample.upsample_nearest2d_forward(x, (0, 3))
