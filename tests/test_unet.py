"""U-Net on a ResNet encoder: the ``cat`` helper, shapes and errors, encoder weights, numerical
gradients, and forward/backward parity with a plain-torch U-Net of the same parameter names (autograd
is the reference for the skip connections' gradient bookkeeping)."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn.models.resnet import resnet18, seeded_state_dict
from minicnn.models.segmentation import UNet, UpBlock, cat, unet


def _rel(ours, ref):
    ours, ref = np.asarray(mc.to_numpy(ours), np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_cat_matches_numpy(backend_name):
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((2, k, 3, 4)).astype(np.float32) for k in (1, 3, 2))
    with mc.backend(backend_name):
        out = cat([a, b, c], axis=1)
        np.testing.assert_array_equal(mc.to_numpy(out), np.concatenate([a, b, c], axis=1))
        np.testing.assert_array_equal(mc.to_numpy(cat([a, a], axis=-1)), np.concatenate([a, a], axis=-1))
        with pytest.raises(ValueError, match=r"cat: shapes \(2, 1, 3, 4\) and \(2, 3, 3, 5\) differ outside axis 1"):
            cat([a, rng.standard_normal((2, 3, 3, 5)).astype(np.float32)])
        with pytest.raises(TypeError, match="dtypes float32 and float64"):
            cat([a, a.astype(np.float64)])


def test_shapes_keys_and_errors():
    mc.manual_seed(0)
    m = unet("resnet18", num_classes=3, width=8)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    with mc.no_grad():
        assert m(x).shape == (2, 3, 64, 96)
    assert m.arch == "unet-resnet18-width8"
    keys = list(m.state_dict())
    assert keys[0] == "encoder.conv1.weight" and "encoder.layer4.1.bn2.running_var" in keys
    assert "decoder.0.up.weight" in keys and "decoder.4.conv2.weight" in keys and keys[-1] == "head.bias"
    assert not any(k.startswith("encoder.fc") for k in keys)
    # the decoder: channels of each tap in, doubled resolution out
    assert [(b.in_channels, b.skip_channels, b.out_channels) for b in m.decoder] == [
        (64, 32, 32), (32, 16, 16), (16, 8, 8), (8, 8, 4), (4, 0, 2)]
    with pytest.raises(ValueError, match=r"unet-resnet18-width8: input of shape \(1, 3, 48, 64\): H and W must be"):
        m(np.zeros((1, 3, 48, 64), np.float32))
    with pytest.raises(ValueError, match="encoder must be one of resnet18, resnet34, resnet50"):
        unet("resnet101")
    with pytest.raises(ValueError, match="upsample must be 'transpose' or 'pixelshuffle'"):
        UpBlock(8, 4, 4, upsample="bilinear")
    with pytest.raises(ValueError, match=r"skip of shape \(1, 3, 8, 8\) does not fit"):
        UpBlock(8, 4, 4)(np.zeros((1, 8, 4, 4), np.float32), np.zeros((1, 3, 8, 8), np.float32))


def test_encoder_weights_from_an_imagenet_resnet(tmp_path):
    sd = seeded_state_dict("resnet18", 0)
    path = tmp_path / "r18.safetensors"
    mc.save(sd, path)
    m = unet("resnet18", num_classes=2, encoder_weights=path)
    for k, v in m.encoder.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(v, sd[k], err_msg=k)
    # the whole U-Net round-trips through its own state dict
    again = unet("resnet18", num_classes=2, weights=m.state_dict())
    np.testing.assert_array_equal(again.state_dict()["decoder.2.conv1.weight"], m.state_dict()["decoder.2.conv1.weight"])
    with pytest.raises(ValueError, match="r18.safetensors"):
        unet("resnet34", encoder_weights=path)
    # and the encoder's taps are the ResNet's own stage outputs
    r = resnet18(weights=sd).eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with mc.no_grad():
        taps = m.eval().encoder(x)
        acts = r.activations(x, upto="layer4")
    for t, name in zip(taps[1:], ("layer1", "layer2", "layer3", "layer4")):
        np.testing.assert_allclose(mc.to_numpy(t), mc.to_numpy(acts[name]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("upsample", ["transpose", "pixelshuffle"])
def test_gradcheck_tiny_unet(upsample):
    """float64, training mode, width 4: numerical gradients of parameters in the decoder, on both sides
    of a skip, in the encoder's first stage (whose tap feeds a skip and layer1), and of a few pixels."""
    from gradcheck import eval_numerical_gradient_array

    mc.manual_seed(5)
    m = UNet("resnet18", num_classes=2, upsample=upsample, width=4).double().train()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32))
    dy = np.random.default_rng(3).standard_normal((2, 2, 32, 32))
    m.zero_grad()
    m(x)
    dx = mc.to_numpy(m.backward(dy))

    def f(_):
        with mc.no_grad():
            return mc.to_numpy(m(x))

    params = dict(m.named_parameters())
    # small tensors only (each element costs two forward passes); bn1 sits before tap t0, which
    # feeds both the last skip and layer1
    names = ["head.weight", "decoder.3.bn1.weight", "encoder.bn1.weight", "encoder.layer1.0.bn2.bias",
             "encoder.layer3.0.downsample.1.weight"]
    names.append("decoder.1.up.bias" if upsample == "transpose" else "decoder.1.up.0.bias")
    for name in names:
        p = params[name]
        assert _rel(p.grad, eval_numerical_gradient_array(f, p.data, dy)) < 1e-5, name
    for idx in [(0, 0, 0, 0), (1, 2, 17, 9)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-5
        xm[idx] -= 1e-5
        with mc.no_grad():
            num = float(np.sum((mc.to_numpy(m(xp)) - mc.to_numpy(m(xm))) * dy) / 2e-5)
        assert abs(dx[idx] - num) <= 1e-5 * max(1.0, abs(num)), idx


# -- parity with PyTorch (skipped without torch) --------------------------------------------------

def _torch_pair(encoder, upsample, width, dtype, mode, seed=0):
    torch = pytest.importorskip("torch")
    import torch_resnet
    import torch_unet

    torch.manual_seed(seed)
    tm = torch_resnet.randomize_bn_stats(torch_unet.build(encoder, 3, upsample, width), seed=seed + 1)
    tm = getattr(tm.to(torch.float64 if dtype == np.float64 else torch.float32), mode)()
    model = unet(encoder, num_classes=3, upsample=upsample, width=width,
                 weights={k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()})
    model = getattr(model.to(dtype), mode)()
    return torch, tm, model


@pytest.mark.torch
@pytest.mark.parametrize("encoder, upsample, width, dtype, mode", [
    ("resnet18", "transpose", 64, np.float32, "eval"),
    ("resnet34", "pixelshuffle", 64, np.float64, "train"),
    ("resnet50", "pixelshuffle", 8, np.float32, "eval"),
    ("resnet50", "transpose", 8, np.float64, "train"),
])
def test_forward_backward_match_autograd(encoder, upsample, width, dtype, mode):
    """Logits, dL/dx and parameter gradients (encoder stem, taps' stages, decoder, head) against
    autograd. Training mode is compared in float64: batchnorm over the few values of the deepest
    stages amplifies float32 rounding on either side."""
    torch, tm, model = _torch_pair(encoder, upsample, width, dtype, mode)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 64, 64)).astype(dtype)
    g = rng.standard_normal((2, 3, 64, 64)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tm(tx)
    ty.backward(torch.from_numpy(g))
    model.zero_grad()
    y = model(x)
    dx = model.backward(g)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    assert _rel(y, ty.detach().numpy()) < tol
    assert _rel(dx, tx.grad.numpy()) < tol
    tp = dict(tm.named_parameters())
    checked = 0
    for key, p in model.named_parameters():
        if key.startswith(("encoder.conv1.", "encoder.bn1.", "encoder.layer1.0.", "encoder.layer3.0.conv1",
                           "encoder.layer4.0.downsample", "decoder.0.", "decoder.3.", "decoder.4.up", "head.")):
            ref = tp[key].grad.numpy()
            assert _rel(p.grad, ref) < tol, key
            checked += 1
    assert checked >= 15
    if mode == "train":
        tb = dict(tm.named_buffers())
        for key, buf in model.named_buffers():
            if key.endswith("running_var"):
                assert _rel(buf, tb[key].numpy()) < tol, key


@pytest.mark.torch
def test_a_segmentation_step_with_cross_entropy_matches_torch():
    """(N, C, H, W) cross-entropy through the U-Net: the loss and a decoder/encoder gradient after one
    backward, float64 training mode, as a segmentation training step computes them."""
    torch, tm, model = _torch_pair("resnet18", "transpose", 64, np.float64, "train", seed=3)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 64, 64))  # layer4 at 2x2: batchnorm over 8 values, well conditioned
    target = rng.integers(0, 3, (2, 64, 64))
    tloss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(target))
    tloss.backward()
    loss_fn = mc.nn.CrossEntropyLoss().double()  # a module: float32 unless told
    model.zero_grad()
    loss = loss_fn(model(x), target)
    model.backward(loss_fn.backward())
    assert abs(float(mc.to_numpy(loss)) - float(tloss.detach())) < 1e-10
    tp = dict(tm.named_parameters())
    for key in ("head.weight", "decoder.2.conv2.weight", "encoder.layer2.0.conv1.weight", "encoder.conv1.weight"):
        assert _rel(dict(model.named_parameters())[key].grad, tp[key].grad.numpy()) < 1e-9, key


def test_summary_cli_knows_the_new_models(capsys):
    from minicnn.cli import main
    from minicnn.cli.summary import default_input_shape

    assert default_input_shape("vgg16") == default_input_shape("resnet50") == default_input_shape("unet") == (3, 224, 224)
    assert main(["summary", "unet", "--input-shape", "3", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "head (Conv2d)" in out and "(None, 1, 64, 64)" in out and "24,349,441" in out


def test_torch_fixture_replays(backend_name):
    """PyTorch's eval-mode answers committed in tests/fixtures/models.npz (tests/make_model_fixtures.py):
    output, dL/dx and parameter gradients, checked without torch on every backend."""
    from make_model_fixtures import replay

    with mc.backend(backend_name):
        replay("unet_r50_w4")
