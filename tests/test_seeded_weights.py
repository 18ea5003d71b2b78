"""Seeded (untrained, deterministic) weights for every architecture: ``minicnn.models.seeded_state_dict``
and ``minicnn weights seed`` for ResNet-18..152, VGG-11..19 (+bn) and the U-Net on each encoder."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import minicnn as mc
from minicnn.cli import main
from minicnn.io import safetensors as st
from minicnn.models import SEEDED, seeded_state_dict
from minicnn.models import segmentation, vgg


def _shapes(sd):
    return OrderedDict((k, tuple(np.shape(v))) for k, v in sd.items())


def test_every_family_is_deterministic_and_loads_strictly():
    for arch in ("resnet18", "resnet50"):
        a, b = seeded_state_dict(arch, 3, 7), seeded_state_dict(arch, 3, 7)
        assert list(a) == list(mc.models.get_model(arch, num_classes=7).state_dict())
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert not np.array_equal(a["conv1.weight"], seeded_state_dict(arch, 4, 7)["conv1.weight"])
        mc.models.get_model(arch, weights=a)
    # the ResNets are the ones the shipped references were computed from
    from minicnn.models.resnet import seeded_state_dict as resnet_seeded

    np.testing.assert_array_equal(seeded_state_dict("resnet34", 1)["layer3.0.conv1.weight"],
                                  resnet_seeded("resnet34", 1)["layer3.0.conv1.weight"])
    assert seeded_state_dict("resnet18")["fc.weight"].shape == (1000, 512)
    for arch in ("vgg13", "vgg11_bn"):
        sd = vgg.seeded_state_dict(arch, 2, num_classes=5, width=8, hidden=32)
        model = vgg.VGG(arch.removesuffix("_bn"), batch_norm=arch.endswith("_bn"), num_classes=5, width=8, hidden=32)
        assert _shapes(sd) == _shapes(model.state_dict())
        model.load_state_dict(sd, strict=True)
        again = vgg.seeded_state_dict(arch, 2, num_classes=5, width=8, hidden=32)
        assert all(np.array_equal(sd[k], again[k]) for k in sd)
    for encoder, upsample in (("resnet18", "pixelshuffle"), ("resnet50", "transpose")):
        sd = segmentation.seeded_state_dict(encoder, 1, num_classes=3, upsample=upsample, width=8)
        model = segmentation.unet(encoder, 3, weights=sd, upsample=upsample, width=8)
        assert list(sd) == list(model.state_dict())
    with pytest.raises(ValueError, match="no seeded weights for 'vgg12'; available: resnet18"):
        seeded_state_dict("vgg12")
    # every name the CLI offers is a model family above
    assert all(a.startswith(("resnet", "vgg", "unet-resnet")) for a in SEEDED) and len(SEEDED) == 16


def test_seeded_vgg_and_unet_follow_their_rules():
    """The documented distributions: He-normal convs and hidden Linear layers, the last Linear at
    2 / sqrt(in), small biases, batchnorm ranges; a transposed conv's fan_in is its input channels."""
    sd = vgg.seeded_state_dict("vgg11_bn", 0, num_classes=10, width=32, hidden=256)
    w = sd["features.4.weight"]  # (64, 32, 3, 3)
    assert abs(w.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.03 and abs(w.mean()) < 0.01
    assert abs(sd["classifier.3.weight"].std() / np.sqrt(2 / 256) - 1) < 0.03
    assert abs(sd["classifier.6.weight"].std() / (2 / np.sqrt(256)) - 1) < 0.05
    assert np.abs(sd["features.0.bias"]).max() < 0.05 and sd["features.0.bias"].std() > 0.002
    g, v = sd["features.1.weight"], sd["features.1.running_var"]
    assert 0.5 <= g.min() and g.max() <= 1.5 and 0.5 <= v.min() and v.max() <= 1.5
    assert sd["features.1.num_batches_tracked"].dtype == np.int64 and all(x.dtype == np.float32 for k, x in sd.items()
                                                                         if not k.endswith("num_batches_tracked"))
    u = segmentation.seeded_state_dict("resnet34", 0, num_classes=2)
    up = u["decoder.0.up.weight"]  # ConvTranspose2d(512, 256, 2, stride=2): (in, out, 2, 2)
    assert up.shape == (512, 256, 2, 2) and abs(up.std() / np.sqrt(2 / 512) - 1) < 0.02
    c = u["decoder.0.conv1.weight"]
    assert abs(c.std() / np.sqrt(2 / np.prod(c.shape[1:])) - 1) < 0.02
    last = u["encoder.layer3.1.conv2.weight"]  # a BasicBlock's last conv, damped as ResNet's seeded ones
    assert abs(last.std() / (0.35 * np.sqrt(2 / (256 * 9))) - 1) < 0.02
    assert u["head.weight"].shape == (2, 16, 1, 1)


def _run(capsys, *argv):
    rc = main(["--backend", "numpy", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("arch,loader", [("resnet50", lambda p: mc.models.resnet50(weights=p)),
                                         ("unet-resnet18", lambda p: mc.models.unet("resnet18", 3, weights=p))])
def test_cli_weights_seed_new_archs(capsys, tmp_path, arch, loader):
    out = tmp_path / "w.safetensors"
    rc, stdout, err = _run(capsys, "weights", "seed", arch, out, "--seed", "4", "--num-classes", "3")
    assert rc == 0, err
    assert f"seeded {arch} weights (seed 4" in stdout
    tensors, meta = st.load(out)
    assert meta["architecture"] == arch and meta["seed"] == "4" and meta["num_classes"] == "3" and meta["source"] == "seeded"
    want = OrderedDict((k, v) for k, v in seeded_state_dict(arch, 4, 3).items() if not k.endswith("num_batches_tracked"))
    assert list(tensors) == list(want)
    for k, v in want.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    model = loader(out)
    np.testing.assert_array_equal(mc.to_numpy(model.state_dict()[next(iter(want))]), next(iter(want.values())))


def test_cli_weights_seed_refuses_bad_arguments(capsys, tmp_path):
    rc, _, err = _run(capsys, "weights", "seed", "resnet50", tmp_path / "w.safetensors", "--num-classes", "0")
    assert rc == 1 and "--num-classes must be at least 1, got 0" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "weights", "seed", "vgg11", tmp_path / "w.pth")
    assert rc == 1 and "must be a .safetensors file" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["weights", "seed", "unet", str(tmp_path / "w.safetensors")])
    assert "invalid choice: 'unet'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_weights_seed_full_size_vgg(capsys, tmp_path):
    """A full-size VGG-11 file (515 MB): checked against torchvision's key table and loaded by vgg11()."""
    out = tmp_path / "vgg11.safetensors"
    rc, _, err = _run(capsys, "weights", "seed", "vgg11", out, "--seed", "1", "--num-classes", "10")
    assert rc == 0, err
    model = mc.models.vgg11(weights=out)
    assert model.num_classes == 10
    np.testing.assert_array_equal(mc.to_numpy(model.features[3].weight.data),
                                  vgg.seeded_state_dict("vgg11", 1, 10)["features.3.weight"])
