"""minicnn.onnx.export: ONNX Runtime runs the written file with minicnn's outputs, and the file
imports back to the same outputs and state_dict keys."""
from __future__ import annotations

import io

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn

onnx = pytest.importorskip("onnx")

from onnx_check import ort_run, rel  # noqa: E402


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = (rng.random(c) + 0.5).astype(np.float32)
            m.bias.data = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m._set_buffer("running_mean", (rng.standard_normal(c) * 0.1).astype(np.float32))
            m._set_buffer("running_var", (rng.random(c) + 0.5).astype(np.float32))
    return model.eval()


def _digits():
    from minicnn.models import digits_convnet

    mc.manual_seed(0)
    return digits_convnet().eval(), (1, 8, 8)


def _resnet():
    from minicnn.models.resnet import ResNet

    mc.manual_seed(0)
    return _randomize_bn(ResNet(width=8, num_classes=10)), (3, 32, 32)


def _stack():
    mc.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.ReflectionPad2d(1),
        nn.Conv2d(4, 6, 3, stride=2, padding_mode="replicate", padding=1), nn.ELU(), nn.SELU(),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1,
                                                                         output_padding=1),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.PReLU(4),
        nn.Hardswish(), nn.ZeroPad2d((1, 0, 2, 1)), nn.Upsample(scale_factor=2), nn.Hardsigmoid(), nn.Tanh(),
        nn.Softplus(), nn.Sigmoid(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
        nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3), nn.LogSoftmax(dim=1),
    )
    return _randomize_bn(model), (3, 12, 12)


def _vgg():
    from minicnn.models.vgg import VGG

    mc.manual_seed(0)
    # 224 x 224 makes features 7 x 7, so the 7 x 7 adaptive pool exports as a 1 x 1 AveragePool
    return _randomize_bn(VGG("vgg11", batch_norm=True, width=4, hidden=16, num_classes=5)), (3, 224, 224)


def _unet(upsample):
    def make():
        from minicnn.models import unet

        mc.manual_seed(0)
        return _randomize_bn(unet("resnet18", num_classes=3, upsample=upsample, width=4)), (3, 64, 32)

    return make


MODELS = {"digits": _digits, "resnet": _resnet, "stack": _stack, "vgg": _vgg, "unet": _unet("transpose"),
          "unet_shuffle": _unet("pixelshuffle")}


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_minicnn(name, opset, tmp_path):
    model, shape = MODELS[name]()
    if name == "stack" and opset < 14:
        model = nn.Sequential(*[m for m in model if not isinstance(m, nn.Hardswish)]).eval()
    rng = np.random.default_rng(1)
    path = tmp_path / f"{name}.onnx"
    mc.onnx.export(model, path, rng.standard_normal((2, *shape)).astype(np.float32), opset=opset)
    x = rng.standard_normal((3, *shape)).astype(np.float32)  # another batch size: the batch axis is dynamic
    assert rel(ort_run(path, x)[0], model(x)) < 1e-4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_same_outputs_and_keys(name, tmp_path, backend_name):
    model, shape = MODELS[name]()
    x = np.random.default_rng(2).standard_normal((2, *shape)).astype(np.float32)
    path = tmp_path / "m.onnx"
    mc.onnx.export(model, path, x)
    with mc.backend(backend_name):
        back = mc.onnx.load(path)
        assert rel(back(x), model(x)) < 1e-5
    want = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = back.state_dict()
    assert list(got) == list(want)
    for k in want:  # in the file's shape: a per-channel PReLU slope is (C, 1, 1) in ONNX
        np.testing.assert_array_equal(got[k].reshape(want[k].shape), want[k])
    folded = mc.inference.fold_batchnorm(back)
    assert rel(folded(x), model(x)) < 1e-4


def test_fixed_batch_and_file_object():
    model, shape = _digits()
    buf = io.BytesIO()
    x = np.zeros((4, *shape), np.float32)
    proto = mc.onnx.export(model, buf, x, dynamic_batch=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, 8, 8]
    back = mc.onnx.load(buf.getvalue())
    assert back.input_shapes == [(4, 1, 8, 8)]
    proto = mc.onnx.export(model, io.BytesIO(), x)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_backward_through_exported_then_imported_resnet_matches_original(tmp_path):
    model, shape = _resnet()
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32)
    mc.onnx.export(model, tmp_path / "r.onnx", x)
    back = mc.onnx.load(tmp_path / "r.onnx")
    dy = np.random.default_rng(4).standard_normal((2, 10)).astype(np.float32)
    model.zero_grad()
    model(x)
    want = model.backward(dy)
    back(x)
    got = back.backward(dy)
    assert rel(got, want) < 1e-4
    inner = dict(back.named_parameters())
    for k, p in model.named_parameters():
        assert rel(inner[back._keys[k][0]].grad, p.grad) < 1e-4, k


def test_adaptive_pool_with_even_bins_exports_as_a_plain_pool(tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 6)).astype(np.float32)
    for m in (nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveMaxPool2d((4, 2))):
        path = tmp_path / "p.onnx"
        mc.onnx.export(nn.Sequential(m), path, x)
        assert rel(ort_run(path, x)[0], m(x)) < 1e-6


def test_unsupported_layers_are_refused():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(mc.onnx.OnnxExportError, match=r"cannot export 0 \(GELU"):
        mc.onnx.export(nn.Sequential(nn.GELU()), io.BytesIO(), x)
    with pytest.raises(mc.onnx.OnnxExportError, match="HardSwish needs opset 14"):
        mc.onnx.export(nn.Sequential(nn.Hardswish()), io.BytesIO(), x, opset=13)
    with pytest.raises(mc.onnx.OnnxExportError, match="opset 9 is not supported for export"):
        mc.onnx.export(nn.Sequential(nn.ReLU()), io.BytesIO(), x, opset=9)
    with pytest.raises(mc.onnx.OnnxExportError, match=r"output \(3, 3\) does not divide the input \(4, 4\)"):
        mc.onnx.export(nn.Sequential(nn.AdaptiveAvgPool2d(3)), io.BytesIO(), x)
    with pytest.raises(TypeError, match="takes a minicnn Module"):
        mc.onnx.export("model", io.BytesIO(), x)


# -- the CLI ---------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from minicnn.cli import main

    rc = main(["--backend", "numpy", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_export_and_summary(tmp_path, capsys):
    model, shape = _digits()
    mc.save(model.state_dict(), tmp_path / "digits.safetensors")
    out = tmp_path / "digits.onnx"
    rc, text, err = _cli(capsys, "export", "digits_convnet", out, "--weights", tmp_path / "digits.safetensors",
                         "--opset", "13")
    assert rc == 0, err
    x = np.random.default_rng(5).standard_normal((2, *shape)).astype(np.float32)
    assert rel(mc.onnx.load(out)(x), model(x)) < 1e-5
    rc, text, err = _cli(capsys, "summary", out)
    assert rc == 0 and "Total params: 13,706" in text and "conv0 (Conv2d)" in text
    rc, _, err = _cli(capsys, "export", "digits_convnet", tmp_path / "d.txt")
    assert rc == 1 and ".onnx" in err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx at all")
    rc, _, err = _cli(capsys, "summary", tmp_path / "bad.onnx")
    assert rc == 1 and "not an ONNX model" in err and "Traceback" not in err


def test_cli_classify_and_embed_with_onnx_model(tmp_path, capsys):
    import json
    from pathlib import Path

    from minicnn.io.images import load_image, preprocess
    from minicnn.models.resnet import ResNet

    mc.manual_seed(0)
    model = _randomize_bn(ResNet(width=8, num_classes=4))
    path = tmp_path / "tiny.onnx"
    mc.onnx.export(model, path, np.zeros((1, 3, 224, 224), np.float32))
    images = Path(mc.__file__).parent / "data" / "images"
    photo = sorted(p for p in images.iterdir() if p.suffix == ".jpg")[0]
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    rc, out, err = _cli(capsys, "classify", photo, "--model", path, "--labels", labels, "--json", "--topk", "2")
    assert rc == 0, err
    doc = json.loads(out)
    with mc.backend("numpy"), mc.no_grad():
        logits = mc.to_numpy(model(preprocess(load_image(photo))[None]))[0]
    z = np.exp(logits - logits.max())
    probs = z / z.sum()
    top = doc["results"][0]["top"]
    assert top[0]["index"] == int(np.argmax(probs)) and doc["arch"] == "tiny.onnx"
    np.testing.assert_allclose(top[0]["prob"], probs.max(), rtol=1e-4)
    emb = tmp_path / "emb.npz"
    rc, out, err = _cli(capsys, "embed", photo, "--model", path, "--out", emb)
    assert rc == 0, err
    with np.load(emb) as f, mc.backend("numpy"), mc.no_grad():
        np.testing.assert_allclose(f["embeddings"], mc.to_numpy(model.embed(preprocess(load_image(photo))[None])),
                                   rtol=1e-4, atol=1e-6)


def test_cli_without_onnx_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    rc, _, err = _cli(capsys, "summary", tmp_path / "m.onnx")
    assert rc == 1 and 'pip install "minicnn[onnx]"' in err and "Traceback" not in err


def test_grad_cam_on_imported_resnet_matches_original(tmp_path):
    from minicnn import gradcam

    model, shape = _resnet()
    x = np.random.default_rng(6).standard_normal((2, *shape)).astype(np.float32)
    mc.onnx.export(model, tmp_path / "r.onnx", x)
    back = mc.onnx.load(tmp_path / "r.onnx")
    want = gradcam.grad_cam(model, x, layer="layer4", upsample=False)
    got = gradcam.grad_cam(back, x, layer="layer4", upsample=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # any tensor of the graph names a layer: the input of the last block's final ReLU's Add
    add = [s for s in back.steps if s.op == "Add"][-1]
    cam = gradcam.grad_cam(back, x, layer=add.outputs[0], upsample=False)
    assert cam.shape == want.shape and np.isfinite(cam).all()
    np.testing.assert_allclose(gradcam.input_gradient(back, x, 3), gradcam.input_gradient(model, x, 3),
                               rtol=1e-4, atol=1e-6)
