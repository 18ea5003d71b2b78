"""Write ``tests/fixtures/models.npz``: PyTorch's answers for small VGG, Bottleneck ResNet and U-Net models.

    python tests/make_model_fixtures.py     # needs torch; rewrites the fixture file

Each case is a config (model, its size arguments, the input shape). The weights are not stored: both
sides draw them from ``seeded_weights(model, seed)`` (numpy only, over the model's own state dict),
and so are the input ``x`` and the output gradient ``g`` (``inputs(name, cfg)``); the file holds
torch's eval-mode results in float32: ``y``, ``dx`` and ``grad.<name>`` for a few small parameters. ``tests/test_vgg.py``,
``test_resnet50.py`` and ``test_unet.py`` replay them without torch. torch is imported only here.
"""
from __future__ import annotations

import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script from a checkout: import the package beside tests/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIXTURE = Path(__file__).parent / "fixtures" / "models.npz"

CASES = {
    "vgg11_bn": {"model": "vgg11_bn", "args": {"num_classes": 5, "width": 8, "hidden": 32}, "x": [2, 3, 32, 32],
                 "grads": ["features.0.weight", "features.1.bias", "features.26.weight", "classifier.6.weight"]},
    "resnet50_w4": {"model": "resnet50", "args": {"num_classes": 5, "width": 4}, "x": [2, 3, 32, 32],
                    "grads": ["conv1.weight", "layer1.0.conv3.weight", "layer3.2.bn2.weight",
                              "layer4.0.downsample.1.bias", "fc.bias"]},
    "unet_r50_w4": {"model": "unet", "args": {"encoder": "resnet50", "num_classes": 3, "width": 4,
                                              "upsample": "pixelshuffle"}, "x": [1, 3, 64, 64],
                    "grads": ["encoder.conv1.weight", "encoder.layer2.0.conv2.weight", "decoder.0.up.0.bias",
                              "decoder.3.conv1.weight", "head.weight"]},
}


def build_minicnn(cfg):
    """The minicnn model of ``cfg`` (weights still to be loaded)."""
    import minicnn as mc
    from minicnn.io.weights import ARCHS
    from minicnn.models.resnet import Bottleneck, ResNet

    a = dict(cfg["args"])
    if cfg["model"] == "resnet50":
        return ResNet(ARCHS["resnet50"], num_classes=a["num_classes"], width=a["width"], block=Bottleneck)
    return mc.models.get_model(cfg["model"], **a)


def build_torch(cfg):
    import torch_bottleneck
    import torch_unet
    import torch_vgg

    a = dict(cfg["args"])
    if cfg["model"] == "resnet50":
        return torch_bottleneck.build("resnet50", a["num_classes"], a["width"])
    if cfg["model"] == "unet":
        return torch_unet.build(a["encoder"], a["num_classes"], a["upsample"], a["width"])
    return torch_vgg.build(cfg["model"], **a)


def seeded_weights(model, seed):
    """Deterministic float32 weights over ``model.state_dict()``'s keys and shapes, numpy only: conv and
    linear weights N(0, 2 / fan_in) (He), biases N(0, 0.05^2), batchnorm gamma U(0.5, 1.5), beta
    N(0, 0.1^2), running_mean N(0, 0.1^2), running_var U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    out = OrderedDict()
    bn = {k.rsplit(".", 1)[0] for k in model.state_dict() if k.endswith("running_mean")}
    for k, v in model.state_dict().items():
        prefix, name = k.rsplit(".", 1)
        shape = np.shape(v)
        if name == "num_batches_tracked":
            out[k] = np.array(0, np.int64)
        elif prefix in bn:
            if name in ("weight", "running_var"):
                out[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            else:
                out[k] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif name == "weight":
            fan_in = shape[1] * math.prod(shape[2:])
            if len(shape) == 4 and "up" in prefix.split("."):  # ConvTranspose2d: (in, out, kh, kw)
                fan_in = shape[0] * math.prod(shape[2:]) // 4
            out[k] = (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            out[k] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return out


def case_seed(name):
    import zlib

    return zlib.crc32(name.encode())


def inputs(name, cfg, out_shape):
    """The case's input x and output gradient g (float32, numpy only)."""
    rng = np.random.default_rng(case_seed(name) + 1)
    x = rng.standard_normal(cfg["x"]).astype(np.float32)
    return x, rng.standard_normal(out_shape).astype(np.float32)


def main():
    import torch

    torch.set_num_threads(1)
    entries = {}
    for name, cfg in CASES.items():
        ours = build_minicnn(cfg)
        sd = seeded_weights(ours, case_seed(name))
        tm = build_torch(cfg)
        tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
        tm.eval()
        x, _ = inputs(name, cfg, (1,))
        tx = torch.from_numpy(x).requires_grad_(True)
        y = tm(tx)
        _, g = inputs(name, cfg, tuple(y.shape))
        y.backward(torch.from_numpy(g))
        params = dict(tm.named_parameters())
        entries[f"{name}::config"] = np.array(json.dumps(cfg, sort_keys=True))
        entries[f"{name}::y"], entries[f"{name}::dx"] = y.detach().numpy(), tx.grad.numpy()
        for p in cfg["grads"]:
            entries[f"{name}::grad.{p}"] = params[p].grad.numpy()
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **entries)
    print(f"wrote {len(CASES)} cases to {FIXTURE} ({FIXTURE.stat().st_size / 1024:.1f} KiB)")
    return 0


def load_case(name, path=FIXTURE):
    """(config, x, g, expected) for fixture case ``name``; expected holds ``y``, ``dx``, ``grad.<name>``."""
    with np.load(path, allow_pickle=False) as z:
        d = {k.split("::", 1)[1]: z[k] for k in z.files if k.startswith(f"{name}::")}
    cfg = json.loads(str(d.pop("config")))
    x, g = inputs(name, cfg, d["y"].shape)
    return cfg, x, g, d


def replay(name, rtol=1e-4):
    """Run fixture case ``name`` on minicnn (eval mode, backend in force) and compare with torch's answers."""
    import minicnn as mc

    cfg, x, g, want = load_case(name)
    model = build_minicnn(cfg)
    model.load_state_dict(seeded_weights(model, case_seed(name)))
    model.eval()
    model.zero_grad()
    y = model(x)
    dx = model.backward(g)
    got = {"y": y, "dx": dx}
    params = dict(model.named_parameters())
    got.update({f"grad.{p}": params[p].grad for p in cfg["grads"]})
    assert set(got) == set(want)
    for k, ref in want.items():
        ours = np.asarray(mc.to_numpy(got[k]), np.float64)
        assert ours.shape == ref.shape, (name, k)
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        assert err < rtol, f"{name}: {k} differs from torch by {err:.2e} (relative to its largest value)"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
