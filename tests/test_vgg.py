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


# -- embeddings, activations and the compiled forward ---------------------------------------------

def _vgg_with_stats(factory, seed, **kw):
    """A small VGG in eval mode with randomised batchnorm statistics and non-zero biases."""
    mc.manual_seed(seed)
    m = factory(**SMALL, **kw)
    rng = np.random.default_rng(seed)
    for name, buf in m.named_buffers():
        if name.endswith("running_var"):
            buf[...] = rng.uniform(0.5, 1.5, buf.shape)
        elif name.endswith("running_mean"):
            buf[...] = rng.normal(0, 0.1, buf.shape)
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            p.data[...] = rng.normal(0, 0.05, p.data.shape)
    return m.eval()


def test_activations_and_embed_are_the_penultimate_features():
    """``embed`` is what the last Linear reads: relu(W3 relu(W0 flat + b0) + b3) in eval mode,
    recomputed here in numpy from the model's own stage outputs and weights."""
    m = _vgg_with_stats(vgg11_bn, 6, num_classes=5)
    x = np.random.default_rng(7).standard_normal((2, 3, 40, 36)).astype(np.float32)
    acts = m.activations(x)
    assert list(acts) == ["features", "avgpool", "penultimate", "fc"]
    assert acts["features"].shape == (2, 64, 1, 1) and acts["avgpool"].shape == (2, 64 * 49)
    # a 1x1 map pooled to 7x7 repeats each value 49 times, channel by channel
    np.testing.assert_array_equal(acts["avgpool"].reshape(2, 64, 49), np.repeat(acts["features"].reshape(2, 64, 1), 49, 2))
    c = m.classifier
    h = np.maximum(acts["avgpool"].astype(np.float64) @ c[0].weight.data.T + c[0].bias.data, 0)
    h = np.maximum(h @ c[3].weight.data.T + c[3].bias.data, 0)
    assert _rel(acts["penultimate"], h) < 1e-5
    assert _rel(acts["fc"], h @ c[6].weight.data.T + c[6].bias.data) < 1e-5
    with mc.no_grad():
        np.testing.assert_array_equal(mc.to_numpy(m(x)), mc.to_numpy(acts["fc"]))
        np.testing.assert_array_equal(mc.to_numpy(m.embed(x)), mc.to_numpy(acts["penultimate"]))
    assert list(m.activations(x, upto="avgpool")) == ["features", "avgpool"]
    with pytest.raises(ValueError, match="unknown stage 'layer4'; stages are features, avgpool, penultimate, fc"):
        m.activations(x, upto="layer4")
    # a backward may follow activations that reached fc, and equals the one after forward
    g = np.random.default_rng(8).standard_normal((2, 5)).astype(np.float32)
    m(x)
    dx = mc.to_numpy(m.backward(g)).copy()
    m.activations(x)
    np.testing.assert_array_equal(mc.to_numpy(m.backward(g)), dx)
    # embeddings compare with minicnn.embeddings as any (N, D) rows do
    from minicnn.embeddings import cosine_similarity_matrix

    e = np.asarray(mc.to_numpy(m.embed(x)), np.float64)
    want = (e @ e.T) / np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1))
    np.testing.assert_allclose(cosine_similarity_matrix(m.embed(x)), want, rtol=1e-12)


@pytest.mark.parametrize("arch", ["vgg11_bn", "vgg16"])
def test_compiled_vgg_equals_eager(backend_name, arch):
    """compile_inference on a VGG: logits, ``features`` and the penultimate embedding equal the eager
    model's on the same backend and the numpy reference's, for an input that is not a multiple of 32."""
    from minicnn.inference import CompiledVGG, compile_inference

    m = _vgg_with_stats(getattr(mc.models, arch), 9, num_classes=5)
    x = np.random.default_rng(10).standard_normal((3, 3, 72, 40)).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        ref = {k: np.array(mc.to_numpy(v)) for k, v in m.activations(x).items()}
    with mc.backend(backend_name):
        fast = compile_inference(m)
        assert isinstance(fast, CompiledVGG) and len(fast.convs()) == (8 if arch == "vgg11_bn" else 13)
        # every conv followed by a max pool runs fused with it
        assert sum(s[0] == "conv_pool" for s in fast.steps) == 5 and not any(s[0] == "pool" for s in fast.steps)
        with mc.no_grad():
            eager = {k: np.array(mc.to_numpy(v)) for k, v in m.activations(x).items()}
        for _ in range(2):  # the second call reuses the kept buffers
            got = {"fc": fast(x), "penultimate": fast.embed(x), "features": fast.forward_features(x)}
            for k, v in got.items():
                assert _rel(v, eager[k]) < 1e-5, (k, backend_name)
                assert _rel(v, ref[k]) < 1e-5, (k, backend_name)
        assert fast.buffer_bytes() > 0
        # float64 input is converted to the model's dtype, as the model does
        assert mc.to_numpy(fast(x.astype(np.float64))).dtype == np.float32
    assert not any(p.grad is not None for p in m.parameters())  # compiling changed nothing in the model


def test_compiled_vgg_head_and_errors():
    from minicnn.inference import compile_inference

    m = _vgg_with_stats(vgg11, 11, num_classes=4)
    # a shorter replaced head: embed stops before its last layer, as the model's does
    m.classifier = nn.Sequential(nn.Linear(64 * 49, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    m.eval()
    x = np.random.default_rng(12).standard_normal((2, 3, 32, 32)).astype(np.float32)
    fast = compile_inference(m)
    with mc.no_grad():
        assert _rel(fast(x), m(x)) < 1e-5 and _rel(fast.embed(x), m.embed(x)) < 1e-5
    assert fast.embed(x).shape == (2, 16)
    with pytest.raises(ValueError, match=r"compiled vgg11-width8-hidden64: input of shape \(1, 3, 31, 64\) is too small"):
        fast(np.zeros((1, 3, 31, 64), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        fast(np.zeros((1, 1, 32, 32), np.float32))
    m.classifier = nn.Sequential(nn.Linear(64 * 49, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="not a ResNet nor a VGG|not a BasicBlock ResNet"):
        compile_inference(m)


def test_embed_cli_on_a_vgg(monkeypatch, tmp_path, capsys):
    """``minicnn embed`` with a VGG writes the penultimate features by default and any VGG stage on
    request; a ResNet stage name gets the model's one-line error. (A full-size VGG file is 500 MB,
    so the loader is handed a small VGG instead.)"""
    from PIL import Image

    import minicnn.cli.classify as classify
    from minicnn.cli import main
    from minicnn.io.images import load_image, preprocess

    m = _vgg_with_stats(vgg11_bn, 13, num_classes=6)
    monkeypatch.setattr(classify, "load_model", lambda weights, arch=None: (m, "small-vgg11_bn"))
    rng = np.random.default_rng(14)
    files = []
    for i in range(2):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(files[-1])
    x = np.stack([preprocess(load_image(f)) for f in files])
    with mc.backend("numpy"), mc.no_grad():
        want = {k: np.array(mc.to_numpy(v)) for k, v in m.activations(x).items()}
    out = tmp_path / "emb.npz"
    for layer in (None, "features", "fc"):
        rc = main(["--backend", "numpy", "embed", *map(str, files), "--out", str(out)] + (["--layer", layer] if layer else []))
        assert rc == 0, capsys.readouterr().err
        with np.load(out) as z:
            key = layer or "penultimate"
            assert str(z["layer"]) == key and str(z["arch"]) == m.arch
            # (the CLI may run the compiled model, batchnorm folded: equal to float32 rounding)
            assert _rel(z["embeddings"], want[key]) < 1e-5, key
    capsys.readouterr()
    rc = main(["--backend", "numpy", "embed", *map(str, files), "--out", str(out), "--layer", "layer4"])
    err = capsys.readouterr().err
    assert rc != 0 and "unknown stage 'layer4'" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.torch
def test_embed_matches_torch(torch_vgg):
    torch, arch, tm, paths = torch_vgg
    x = np.random.default_rng(15).standard_normal((2, 3, 32, 40)).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        t_emb = tm.classifier[:-1](torch.flatten(tm.avgpool(tm.features(t)), 1)).numpy()
    model = mc.models.get_model(arch, weights=paths["zip"], **SMALL).eval()
    with mc.no_grad():
        assert _rel(model.embed(x), t_emb) < 1e-4
    from minicnn.inference import compile_inference

    assert _rel(compile_inference(model).embed(x), t_emb) < 1e-4


def test_deep_dream_through_vgg19_features_raises_its_objective():
    """Lesson 14's VGG19 path on a small input: DeepDream on ``features`` (a Sequential, layers by index)
    raises 0.5 * mean(A**2) of the chosen layer, and one ascent step follows the manual backward's
    gradient: a small step along it raises the objective by about lr * |g|^2 (first order)."""
    from minicnn import gradcam

    mc.manual_seed(16)
    feats = VGG("vgg19", width=8, hidden=8).eval().features
    x = np.random.default_rng(17).standard_normal((3, 32, 32)).astype(np.float32) * 0.5
    layer = 17  # the ReLU after conv3_4

    def objective(img):
        a = np.asarray(gradcam.layer_activation(feats, img, layer), np.float64)
        return 0.5 * float((a ** 2).mean())

    dream = gradcam.deep_dream(feats, x, layer=layer, octaves=2, octave_scale=1.4, jitter=0, steps=3, lr=0.05, rng=0)
    assert dream.shape == x.shape and objective(dream) > 1.2 * objective(x)
    # the gradient deep_dream ascends, d objective / dx from the manual backward through features[:18]
    # (float64), against a central difference along it
    sub = feats.double()[:layer + 1]
    xd = x.astype(np.float64)[None]
    a = sub(xd)
    g = np.asarray(mc.to_numpy(sub.backward(a / a[0].size)))
    eps = 1e-4 / np.linalg.norm(g)
    slope = (objective((xd + eps * g)[0]) - objective((xd - eps * g)[0])) / (2 * eps)
    assert slope == pytest.approx(float((g ** 2).sum()), rel=1e-6)
