"""ResNet-50/101/152 (Bottleneck blocks): keys and shapes against torchvision's tables, parity with a
plain-torch ResNet-50 (checkpoints written by torch as zip and legacy .pth, converted by ``minicnn
convert`` in a process where torch cannot be imported; eval logits; a training-mode backward),
the compiled inference path, and the arch inference of the converter (torchvision/timm and Hugging
Face naming)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import minicnn as mc
from minicnn.errors import WeightFormatError
from minicnn.inference import compile_inference
from minicnn.io import weights as W
from minicnn.models.resnet import (
    ARCHS, Bottleneck, ResNet, infer_arch, resnet50, resnet_from_state_dict, seeded_state_dict, state_dict_shapes,
)

# parameter counts (weights and biases) torchvision reports with 1000 classes
TORCHVISION_PARAMS = {"resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808}


def _rel(ours, ref):
    ours, ref = np.asarray(mc.to_numpy(ours), np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _randomize_bn(sd, seed):
    """Non-trivial batchnorm state, so a swapped mean/var or a missing affine step shows."""
    rng = np.random.default_rng(seed)
    out = OrderedDict()
    for k, v in sd.items():
        v = np.array(v)
        if k.endswith("running_var") or (k.endswith(".weight") and v.ndim == 1):
            v = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
        elif k.endswith("running_mean") or (k.endswith(".bias") and ".bn" in k or "downsample.1.bias" in k):
            v = (rng.standard_normal(v.shape) * 0.1).astype(v.dtype)
        out[k] = v
    return out


@pytest.mark.parametrize("arch", ["resnet50", "resnet101", "resnet152"])
def test_shape_tables(arch):
    shapes = W.expected_resnet_shapes(arch)
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert params == TORCHVISION_PARAMS[arch]
    assert W.infer_arch(shapes) == arch
    assert shapes["fc.weight"] == (1000, 2048)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)


def test_resnet50_model_keys_and_arch():
    mc.manual_seed(0)
    m = resnet50(num_classes=7)
    assert m.arch == "resnet50" and m.num_features == 2048
    sd = m.state_dict()
    assert OrderedDict((k, tuple(v.shape)) for k, v in sd.items()) == state_dict_shapes("resnet50", 7)
    assert m.num_parameters() == TORCHVISION_PARAMS["resnet50"] - 2049 * 1000 + 2049 * 7
    # v1.5: the stride sits on the 3x3 conv, not on the first 1x1
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)
    assert infer_arch(sd) == "resnet50"
    # ResNet-34 has the same blocks per stage; the block kind tells them apart
    with pytest.raises(ValueError, match=r"these weights are resnet50 \(Bottleneck blocks per stage"):
        mc.models.resnet34(weights=sd)
    zero = ResNet((1, 1, 1, 1), width=8, block=Bottleneck, zero_init_residual=True)
    assert not np.any(zero.layer3[0].bn3.weight.data) and np.all(zero.layer3[0].bn2.weight.data == 1)


def test_infer_arch_bottleneck_errors():
    sd = dict(W.expected_resnet_shapes("resnet50"))
    del sd["layer3.5.conv1.weight"], sd["layer3.5.conv2.weight"], sd["layer3.5.conv3.weight"]
    sd = {k: v for k, v in sd.items() if not k.startswith("layer3.5.")}
    with pytest.raises(WeightFormatError, match=r"blocks per stage \(3, 4, 5, 3\) of bottleneck blocks"):
        W.infer_arch(sd)


def test_huggingface_resnet50_names_map_to_torchvision():
    """transformers' ResNet-50 tree: stage 0's first block has a shortcut too (64 -> 256 channels),
    and each bottleneck's three convs are ``layer.0..2``."""
    want = W.expected_resnet_shapes("resnet50")
    hf = OrderedDict()
    for k in want:
        if k == "conv1.weight":
            n = "resnet.embedder.embedder.convolution.weight"
        elif k.startswith("bn1."):
            n = "resnet.embedder.embedder.normalization." + k[4:]
        elif k.startswith("fc."):
            n = "classifier.1." + k[3:]
        else:
            stage, block, rest = k.split(".", 2)
            p = f"resnet.encoder.stages.{int(stage[5:]) - 1}.layers.{block}"
            if rest.startswith("downsample.0."):
                n = f"{p}.shortcut.convolution.weight"
            elif rest.startswith("downsample.1."):
                n = f"{p}.shortcut.normalization.{rest.rsplit('.', 1)[1]}"
            elif rest.startswith("conv"):
                n = f"{p}.layer.{int(rest[4]) - 1}.convolution.weight"
            else:
                n = f"{p}.layer.{int(rest[2]) - 1}.normalization.{rest.rsplit('.', 1)[1]}"
        hf[n] = want[k]
    assert W.is_huggingface_naming(hf)
    renamed = W.huggingface_to_torchvision(hf)
    assert list(renamed) == list(want)
    assert W.infer_arch(renamed) == "resnet50"


def test_seeded_resnet50_is_deterministic_and_sane():
    sd = seeded_state_dict("resnet50", seed=0, num_classes=10)
    assert list(sd) == list(state_dict_shapes("resnet50", 10))
    np.testing.assert_array_equal(sd["layer3.2.conv3.weight"], seeded_state_dict("resnet50", 0, 10)["layer3.2.conv3.weight"])
    m = resnet50(weights=sd).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with mc.no_grad():
        f = mc.to_numpy(m.forward_features(x))
    assert f.shape == (1, 2048, 2, 2) and np.all(np.isfinite(f)) and 0.05 < f.std() < 20


def test_compiled_bottleneck_resnet_matches_eval(backend_name):
    """compile_inference on Bottleneck blocks: three fused convs per block, the shortcut and the final
    ReLU in conv3's epilogue; same numbers as the eval-mode model."""
    mc.manual_seed(4)
    m = ResNet((2, 1, 1, 1), num_classes=5, width=8, block=Bottleneck)
    rng = np.random.default_rng(3)
    m.load_state_dict(_randomize_bn(m.state_dict(), 5))
    m.eval()
    x = rng.standard_normal((2, 3, 40, 56)).astype(np.float32)
    with mc.backend(backend_name):
        with mc.no_grad():
            ref = mc.to_numpy(m(x))
            emb = mc.to_numpy(m.embed(x))
        fast = compile_inference(m, autotune=False)
        assert [c.name for c in fast.convs()[:5]] == ["conv1", "layer1.0.conv1", "layer1.0.downsample",
                                                      "layer1.0.conv2", "layer1.0.conv3"]
        assert _rel(fast(x), ref) < 1e-5
        assert _rel(fast.embed(x), emb) < 1e-5


def test_bottleneck_backward_gradcheck():
    """A one-block-per-stage, width-2 Bottleneck ResNet in float64 (training mode) against numerical
    gradients of dL/dx on a few pixels and of two parameters."""
    from gradcheck import eval_numerical_gradient_array

    mc.manual_seed(3)
    m = ResNet((1, 1, 1, 1), num_classes=3, width=2, block=Bottleneck).double().train()
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16))
    dy = np.random.default_rng(2).standard_normal((2, 3))
    m.zero_grad()
    m(x)
    dx = mc.to_numpy(m.backward(dy))

    def loss(_):
        with mc.no_grad():
            return mc.to_numpy(m(x))

    for name in ("layer2.0.conv2.weight", "layer1.0.bn3.weight"):
        p = dict(m.named_parameters())[name]
        num = eval_numerical_gradient_array(loss, p.data, dy)
        assert _rel(p.grad, num) < 1e-5, name
    for idx in [(0, 0, 0, 0), (1, 2, 7, 9), (0, 1, 15, 3)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-5
        xm[idx] -= 1e-5
        with mc.no_grad():
            num = float(np.sum((mc.to_numpy(m(xp)) - mc.to_numpy(m(xm))) * dy) / 2e-5)
        assert abs(dx[idx] - num) <= 1e-5 * max(1.0, abs(num)), idx


# -- parity with PyTorch (skipped without torch) --------------------------------------------------

@pytest.fixture(scope="module")
def torch50():
    torch = pytest.importorskip("torch")
    import torch_bottleneck
    import torch_resnet

    torch.manual_seed(0)
    return torch, torch_resnet.randomize_bn_stats(torch_bottleneck.build("resnet50", num_classes=10), seed=1).eval()


@pytest.fixture(scope="module")
def converted50(torch50, tmp_path_factory):
    """The torch ResNet-50 saved as zip and legacy .pth, each converted by ``minicnn convert`` without torch."""
    from torch_block import blocked_env, run_minicnn, torch_importable

    torch, tm = torch50
    tmp = tmp_path_factory.mktemp("r50")
    env = blocked_env(tmp)
    assert not torch_importable(env)
    out = {}
    for kind, zip_format in (("zip", True), ("legacy", False)):
        src = tmp / f"resnet50_{kind}.pth"
        torch.save(tm.state_dict(), src, _use_new_zipfile_serialization=zip_format)
        dst = tmp / f"resnet50_{kind}.safetensors"
        r = run_minicnn(["convert", src, dst], env=env)
        assert r.returncode == 0, r.stderr
        assert "resnet50 (10 classes)" in r.stdout
        out[kind] = dst
    return out


@pytest.mark.torch
def test_resnet50_converted_eval_matches_torch(torch50, converted50):
    torch, tm = torch50
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        t_feats = tm.forward_features(torch.from_numpy(x)).numpy()
        t_logits = tm(torch.from_numpy(x)).numpy()
    ref = {k: v.numpy() for k, v in tm.state_dict().items()}
    for kind, path in converted50.items():
        model = resnet_from_state_dict(path).eval()
        assert model.arch == "resnet50" and model.num_classes == 10
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(v, ref[k], err_msg=f"{kind}: {k}")
        with mc.no_grad():
            acts = model.activations(x)
        assert _rel(acts["fc"], t_logits) < 1e-4, kind
        assert _rel(acts["layer4"], t_feats) < 1e-4, kind
        with mc.no_grad():
            assert _rel(model.embed(x), t_feats.mean(axis=(2, 3))) < 1e-4
    # the compiled path: folded batchnorm, fused 1x1/3x3/1x1 convs, residual + ReLU on the last
    fast = compile_inference(model, autotune=False)
    assert repr(fast) == "CompiledModel(ResNet, 53 fused convs)"
    assert _rel(fast(x), t_logits) < 1e-4
    assert _rel(fast.forward_features(x), t_feats) < 1e-4


GRAD_KEYS = ("conv1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
             "layer2.0.conv2.weight", "layer2.3.bn3.weight", "layer3.5.conv3.weight", "layer4.0.downsample.1.bias",
             "layer4.2.bn2.weight", "fc.weight", "fc.bias")


def _step(torch, tm, model, x, g):
    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = tm(tx)
    tlogits.backward(torch.from_numpy(g))
    model.zero_grad()
    logits = model(x)
    dx = model.backward(g)
    tparams = dict(tm.named_parameters())
    grads = {k: (p.grad, tparams[k].grad.numpy()) for k, p in model.named_parameters() if k in GRAD_KEYS}
    assert len(grads) == len(GRAD_KEYS)
    return (logits, tlogits.detach().numpy()), (dx, tx.grad.numpy()), grads


@pytest.mark.torch
def test_resnet50_eval_backward_matches_torch(torch50):
    """float32, eval mode (what Grad-CAM and input optimisation use): dL/dx and parameter gradients."""
    torch, _ = torch50
    import torch_bottleneck
    import torch_resnet

    torch.manual_seed(2)
    tm = torch_resnet.randomize_bn_stats(torch_bottleneck.build("resnet50", num_classes=6), seed=3).eval()
    model = resnet50(weights={k: v.numpy() for k, v in tm.state_dict().items()}).eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    g = rng.standard_normal((2, 6)).astype(np.float32)
    logits, dx, grads = _step(torch, tm, model, x, g)
    assert _rel(*logits) < 1e-4
    assert dx[0].dtype == np.float32 and _rel(*dx) < 1e-4
    for key, (ours, ref) in grads.items():
        assert _rel(ours, ref) < 1e-4, key


@pytest.mark.torch
def test_resnet50_training_step_matches_torch_float64(torch50):
    """Training mode (batch statistics), in float64 on both sides: 50 layers of batchnorm over a batch of
    two amplify float32 rounding to ~1e-2 in dL/dx on either implementation, so the exact check is made
    where rounding does not hide a wrong formula. Running statistics are compared too."""
    torch, _ = torch50
    import torch_bottleneck
    import torch_resnet

    torch.manual_seed(2)
    tm = torch_resnet.randomize_bn_stats(torch_bottleneck.build("resnet50", num_classes=6), seed=3).double().train()
    model = resnet50(weights={k: v.numpy() for k, v in tm.state_dict().items()}).double().train()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 64, 64))
    g = rng.standard_normal((2, 6))
    logits, dx, grads = _step(torch, tm, model, x, g)
    assert _rel(*logits) < 1e-9
    assert _rel(*dx) < 1e-9
    for key, (ours, ref) in grads.items():
        assert _rel(ours, ref) < 1e-9, key
    tb = dict(tm.named_buffers())
    for key, buf in model.named_buffers():
        if key.endswith(("running_mean", "running_var")):
            assert _rel(buf, tb[key].numpy()) < 1e-9, key


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet101", "resnet152"])
def test_deeper_resnets_keys_and_a_small_forward(arch):
    torch = pytest.importorskip("torch")
    import torch_bottleneck
    import torch_resnet

    with torch.device("meta"):  # torchvision's full-size tree, without allocating its weights
        full = torch_bottleneck.build(arch)
    got = OrderedDict((k, tuple(v.shape)) for k, v in full.state_dict().items())
    assert got == state_dict_shapes(arch)
    # a width-4 version of the same tree: our forward equals torch's
    torch.manual_seed(6)
    tm = torch_resnet.randomize_bn_stats(torch_bottleneck.build(arch, num_classes=5, width=4), seed=7).eval()
    model = ResNet(ARCHS[arch], num_classes=5, width=4, block=Bottleneck).eval()
    assert model.arch == f"{arch}-width4"
    model.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = np.random.default_rng(8).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        t = tm(torch.from_numpy(x)).numpy()
    with mc.no_grad():
        assert _rel(model(x), t) < 1e-4


# -- the command line ----------------------------------------------------------------------------

def test_cli_classify_convert_summary_learn_resnet50(tmp_path, capsys):
    import json
    from pathlib import Path

    from minicnn.cli import main

    photo = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images" / "coffee.jpg"
    sd = seeded_state_dict("resnet50", 0, num_classes=5)
    src = tmp_path / "r50.safetensors"
    mc.save(sd, src)
    # convert infers resnet50 from the conv3 keys; --arch states it; a wrong --arch is refused
    assert main(["convert", str(src), str(tmp_path / "c.safetensors")]) == 0
    assert "resnet50 (5 classes)" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "d.safetensors"), "--arch", "resnet50"]) == 0
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "e.safetensors"), "--arch", "resnet34"]) == 1
    assert "keys do not match resnet34" in capsys.readouterr().err and not (tmp_path / "e.safetensors").exists()
    # classify with --arch; the probabilities are the model's own
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    rc = main(["classify", str(photo), "--weights", str(tmp_path / "c.safetensors"), "--arch", "resnet50",
               "--labels", str(labels), "--json", "--topk", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["arch"] == "resnet50"
    from minicnn.io.images import preprocess

    with mc.no_grad():
        logits = mc.to_numpy(resnet50(weights=sd).eval()(preprocess(photo)[None]))[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = doc["results"][0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-p)[:2])
    assert abs(top[0]["prob"] - p.max()) < 1e-5
    assert main(["classify", str(photo), "--weights", str(src), "--arch", "resnet34"]) == 1
    assert "these weights are resnet50" in capsys.readouterr().err
    # summary knows the new names and their default input size
    assert main(["summary", "resnet50", "--input-shape", "3", "32", "32"]) == 0
    assert "25,557,032" in capsys.readouterr().out.replace("_", ",")


@pytest.mark.torch
def test_cli_verify_resnet50_against_a_torch_reference(torch50, converted50, tmp_path, capsys):
    """``minicnn verify --arch resnet50`` with a reference computed by torch from the same weights."""
    from minicnn.cli import main
    from minicnn.cli.verify import state_dict_digest

    torch, tm = torch50
    x = np.random.default_rng(9).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        logits = tm(torch.from_numpy(x)).numpy()
        feats = tm.forward_features(torch.from_numpy(x)).numpy()
    ref = tmp_path / "resnet50_ref.npz"
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    np.savez(ref, inputs=x, logits=logits, features=feats, top5=np.argsort(-logits, axis=1)[:, :5],
             arch=np.array("resnet50"), num_classes=np.array(10), weights_digest=np.array(state_dict_digest(sd)))
    rc = main(["verify", str(converted50["legacy"]), "--reference", str(ref), "--arch", "resnet50"])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip().endswith("PASS") and "digest matches" in out, out
    rc = main(["verify", str(converted50["legacy"]), "--reference", str(ref), "--arch", "resnet101"])
    assert rc == 1 and "is for resnet50" in capsys.readouterr().err


def test_torch_fixture_replays(backend_name):
    """PyTorch's eval-mode answers committed in tests/fixtures/models.npz (tests/make_model_fixtures.py):
    output, dL/dx and parameter gradients, checked without torch on every backend."""
    from make_model_fixtures import replay

    with mc.backend(backend_name):
        replay("resnet50_w4")
