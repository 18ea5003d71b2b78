"""VGG-11/13/16/19 (with and without batchnorm): torchvision's key/shape tables, init, ``features`` used
alone and a replaced classifier, weights loading and arch inference, batchnorm folding, and parity
with a plain-torch VGG (checkpoints written by torch as zip and legacy .pth, read without torch; eval
logits; dL/dx and parameter gradients against autograd)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn
from minicnn.errors import WeightFormatError
from minicnn.inference import fold_batchnorm
from minicnn.io import weights as W
from minicnn.models.vgg import VGG, vgg11, vgg11_bn, vgg16, vgg_from_state_dict

ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
# parameter counts (weights and biases) torchvision reports with 1000 classes
TORCHVISION_PARAMS = {"vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
                      "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
                      "vgg19_bn": 143_678_248}
SMALL = {"width": 8, "hidden": 64}  # 1/8 of the channels, 64-unit hidden layers: fast tests


def _rel(ours, ref):
    ours, ref = np.asarray(mc.to_numpy(ours), np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_shape_tables(arch):
    shapes = W.expected_shapes(arch)
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert params == TORCHVISION_PARAMS[arch]
    assert W.infer_arch(shapes) == arch
    assert shapes["classifier.0.weight"] == (4096, 512 * 7 * 7)
    assert shapes["classifier.6.weight"] == (1000, 4096)
    assert W.expected_shapes(arch, 10)["classifier.6.bias"] == (10,)


def test_small_model_keys_and_arch():
    mc.manual_seed(0)
    m = vgg16(num_classes=5, **SMALL)
    assert m.arch == "vgg16-width8-hidden64"
    got = OrderedDict((k, tuple(v.shape)) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert got == W.expected_vgg_shapes("vgg16", 5, **SMALL)
    assert W.infer_arch(m.state_dict()) == "vgg16"
    bn = vgg11_bn(**SMALL)
    assert W.infer_arch(bn.state_dict()) == "vgg11_bn"
    assert isinstance(bn.features[1], nn.BatchNorm2d) and isinstance(bn.features[3], nn.MaxPool2d)
    assert VGG("vgg19", batch_norm=True, width=8, hidden=8).arch == "vgg19_bn-width8-hidden8"


def test_init_is_torchvisions():
    mc.manual_seed(1)
    m = vgg11(**SMALL)
    for conv in (m.features[0], m.features[8]):
        w = conv.weight.data
        fan_out = w.shape[0] * 9
        assert abs(w.std() / np.sqrt(2 / fan_out) - 1) < 0.15
        assert not np.any(conv.bias.data)
    for lin in (m.classifier[0], m.classifier[6]):
        assert abs(lin.weight.data.std() / 0.01 - 1) < 0.1 and not np.any(lin.bias.data)
    assert m.classifier[2].p == 0.5 and vgg11(dropout=0.2, **SMALL).classifier[5].p == 0.2


def test_features_alone_and_a_new_head():
    """``features`` is a Sequential usable on its own (Keras's include_top=False) and the classifier is
    replaceable; both backward passes run."""
    mc.manual_seed(2)
    m = vgg11_bn(**SMALL).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)
    fmap = m.features(x)
    assert fmap.shape == (2, 64, 2, 1)
    np.testing.assert_array_equal(mc.to_numpy(m.forward_features(x)), mc.to_numpy(fmap))
    dx = m.features.backward(np.ones(fmap.shape, np.float32))
    assert dx.shape == x.shape and np.any(dx != 0)
    # (nn.Sequential has no item assignment yet: rebuild the classifier around a new last layer)
    m.classifier = nn.Sequential(*list(m.classifier)[:6], nn.Linear(64, 3))
    y = m(x)
    assert y.shape == (2, 3)
    m.zero_grad()
    assert m.backward(np.ones((2, 3), np.float32)).shape == x.shape
    assert m.classifier[6].weight.grad.shape == (3, 64) and m.features[0].weight.grad is not None
    # a frozen backbone: backward_params fills the head's gradients only
    m.zero_grad()
    m.features.freeze()
    m(x)
    m.backward_params(np.ones((2, 3), np.float32))
    assert m.features[0].weight.grad is None and m.classifier[0].weight.grad is not None


def test_errors():
    m = vgg11(**SMALL)
    with pytest.raises(ValueError, match=r"vgg11-width8-hidden64: input of shape \(1, 3, 31, 64\) is too small"):
        m(np.zeros((1, 3, 31, 64), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="unknown configuration 'vgg12'"):
        VGG("vgg12")
    with pytest.raises(ValueError, match="these weights are vgg11_bn, not vgg11"):
        vgg11(weights=vgg11_bn(**SMALL).state_dict(), **SMALL)
    with pytest.raises(ValueError, match=r"features\.0\.weight"):
        vgg11(weights=vgg11(width=16, hidden=64).state_dict(), **SMALL)
    with pytest.raises(ValueError, match="not a VGG"):
        vgg_from_state_dict(mc.models.resnet18(num_classes=2).state_dict())
    sd = dict(W.expected_shapes("vgg11"))
    del sd["features.0.weight"]
    with pytest.raises(WeightFormatError, match="7 convolutions under features"):
        W.infer_arch(sd)


def test_fold_batchnorm_on_vgg_bn():
    mc.manual_seed(3)
    m = vgg11_bn(num_classes=4, **SMALL)
    rng = np.random.default_rng(1)
    for name, buf in m.named_buffers():
        if name.endswith("running_var"):
            buf[...] = rng.uniform(0.5, 1.5, buf.shape)
        elif name.endswith("running_mean"):
            buf[...] = rng.normal(0, 0.1, buf.shape)
    m.eval()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    folded = fold_batchnorm(m)
    assert not any(isinstance(c, nn.BatchNorm2d) for c in folded.features)
    with mc.no_grad():
        assert _rel(folded(x), m(x)) < 1e-5


def test_gradcheck_small_vgg():
    """A width-2 VGG-11 with batchnorm in float64, training mode without dropout: numerical gradients."""
    from gradcheck import eval_numerical_gradient_array

    mc.manual_seed(4)
    m = vgg11_bn(num_classes=3, width=2, hidden=4, dropout=0.0).double().train()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32))
    dy = np.random.default_rng(3).standard_normal((2, 3))
    m.zero_grad()
    m(x)
    m.backward(dy)

    def f(_):
        with mc.no_grad():
            return mc.to_numpy(m(x))

    for name in ("features.4.weight", "features.26.bias", "classifier.3.weight"):
        p = dict(m.named_parameters())[name]
        assert _rel(p.grad, eval_numerical_gradient_array(f, p.data, dy)) < 1e-5, name


# -- parity with PyTorch (skipped without torch) --------------------------------------------------

@pytest.fixture(scope="module", params=["vgg11_bn", "vgg16"])
def torch_vgg(request, tmp_path_factory):
    """A small torch VGG with randomised batchnorm statistics, saved as zip and legacy .pth."""
    torch = pytest.importorskip("torch")
    import torch_resnet
    import torch_vgg as tv

    torch.manual_seed(0)
    tm = torch_resnet.randomize_bn_stats(tv.build(request.param, num_classes=10, **SMALL), seed=1).eval()
    with torch.no_grad():  # biases are zero at init; give them values so a dropped bias shows
        for m in tm.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.normal_(0, 0.05)
    tmp = tmp_path_factory.mktemp(request.param)
    paths = {}
    for kind, zip_format in (("zip", True), ("legacy", False)):
        paths[kind] = tmp / f"{request.param}_{kind}.pth"
        torch.save(tm.state_dict(), paths[kind], _use_new_zipfile_serialization=zip_format)
    return torch, request.param, tm, paths


@pytest.mark.torch
def test_checkpoints_read_without_torch_match(torch_vgg):
    torch, arch, tm, paths = torch_vgg
    ref = {k: v.numpy() for k, v in tm.state_dict().items()}
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 40)).astype(np.float32)
    with torch.no_grad():
        t_logits = tm(torch.from_numpy(x)).numpy()
        t_feats = tm.features(torch.from_numpy(x)).numpy()
    for kind, path in paths.items():
        assert W.detect_format(path) == ("pth-zip" if kind == "zip" else "pth-legacy")
        model = mc.models.get_model(arch, weights=path, **SMALL).eval()
        assert model.num_classes == 10
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):  # loading leaves the counter alone, as for ResNets
                np.testing.assert_array_equal(v, ref[k], err_msg=f"{kind}: {k}")
        with mc.no_grad():
            assert _rel(model(x), t_logits) < 1e-4, kind
            assert _rel(model.features(x), t_feats) < 1e-4, kind
    # the converter infers the arch from the keys even at this width, and refuses the shapes
    with pytest.raises(WeightFormatError, match=f"keys do not match {arch}: .*mis-shaped"):
        W.convert(paths["zip"], paths["zip"].with_suffix(".safetensors"))
    assert not paths["zip"].with_suffix(".safetensors").exists()


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_backward_matches_autograd(torch_vgg, mode):
    """dL/dx and a sample of parameter gradients; training mode runs without dropout (the masks
    cannot match torch's RNG) and in float64 (batchnorm over few values amplifies float32 rounding)."""
    torch, arch, tm0, paths = torch_vgg
    import torch_vgg as tv

    dtype = np.float32 if mode == "eval" else np.float64
    tm = tv.build(arch, num_classes=10, **SMALL)
    tm.load_state_dict(tm0.state_dict())
    for m in tm.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tm = getattr(tm.to(torch.float64 if dtype == np.float64 else torch.float32), mode)()
    model = mc.models.get_model(arch, weights=paths["legacy"], dropout=0.0, **SMALL).to(dtype)
    getattr(model, mode)()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 32, 32)).astype(dtype)
    g = rng.standard_normal((2, 10)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    tl = tm(tx)
    tl.backward(torch.from_numpy(g))
    model.zero_grad()
    y = model(x)
    dx = model.backward(g)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    assert _rel(y, tl.detach().numpy()) < tol
    assert _rel(dx, tx.grad.numpy()) < tol
    tp = dict(tm.named_parameters())
    for key, p in model.named_parameters():
        if key.startswith(("features.0.", "features.3.", "classifier.0.", "classifier.6.")) or key.endswith("1.bias"):
            ref = tp[key].grad.numpy()
            if np.abs(ref).max() < 1e-12:
                # a conv bias right before a training-mode batchnorm: the mean subtraction cancels it,
                # its gradient is zero up to rounding on both sides
                assert np.abs(mc.to_numpy(p.grad)).max() < 1e-10, key
            else:
                assert _rel(p.grad, ref) < tol, key


@pytest.mark.torch
def test_full_size_keys_match_torch():
    torch = pytest.importorskip("torch")
    import torch_vgg as tv

    for arch in ("vgg16", "vgg19_bn"):
        with torch.device("meta"):  # torchvision's full-size tree without allocating 550 MB
            tm = tv.build(arch)
        got = OrderedDict((k, tuple(v.shape)) for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked"))
        assert got == W.expected_shapes(arch)


def test_torch_fixture_replays(backend_name):
    """PyTorch's eval-mode answers committed in tests/fixtures/models.npz (tests/make_model_fixtures.py):
    output, dL/dx and parameter gradients, checked without torch on every backend."""
    from make_model_fixtures import replay

    with mc.backend(backend_name):
        replay("vgg11_bn")
