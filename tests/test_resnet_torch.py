"""Live parity with PyTorch: torch writes ResNet checkpoints, ``minicnn convert`` reads them in a
process where torch cannot be imported, and our forward and backward match torch's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minicnn as mc  # noqa: E402
from minicnn.io.images import preprocess  # noqa: E402
from minicnn.models.resnet import resnet18, resnet_from_state_dict  # noqa: E402

import torch_resnet  # noqa: E402
from torch_block import blocked_env, run_minicnn, torch_importable  # noqa: E402

pytestmark = pytest.mark.torch

PHOTO = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images" / "coffee.jpg"


def _rel(ours, ref):
    ours, ref = np.asarray(mc.to_numpy(ours), np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def torch_model():
    """A torch ResNet-18 with torch's own seeded init and randomised batchnorm state."""
    torch.manual_seed(0)
    return torch_resnet.randomize_bn_stats(torch_resnet.build("resnet18"), seed=1).eval()


@pytest.fixture(scope="module")
def converted(torch_model, tmp_path_factory):
    """The model saved by torch as zip and legacy .pth, each converted by ``minicnn convert`` without torch."""
    tmp = tmp_path_factory.mktemp("pth")
    env = blocked_env(tmp)
    assert not torch_importable(env)
    out = {}
    for kind, zip_format in (("zip", True), ("legacy", False)):
        src = tmp / f"resnet18_{kind}.pth"
        torch.save(torch_model.state_dict(), src, _use_new_zipfile_serialization=zip_format)
        dst = tmp / f"resnet18_{kind}.safetensors"
        r = run_minicnn(["convert", src, dst], env=env)
        assert r.returncode == 0, r.stderr
        out[kind] = dst
    return out


@pytest.fixture(scope="module")
def eval_batch():
    photo = preprocess(PHOTO)
    noise = np.random.default_rng(4).standard_normal((3, 224, 224)).astype(np.float32)
    return np.stack([photo, noise])


def test_converted_checkpoint_matches_torch(converted, torch_model, eval_batch):
    model = resnet_from_state_dict(converted["zip"]).eval()
    assert model.arch == "resnet18"
    with torch.no_grad():
        t_in = torch.from_numpy(eval_batch)
        t_feats = torch_model.forward_features(t_in).numpy()
        t_logits = torch_model(t_in).numpy()
    with mc.no_grad():
        feats = model.forward_features(eval_batch)
        logits = model(eval_batch)
    assert _rel(logits, t_logits) < 1e-4
    assert _rel(feats, t_feats) < 1e-4
    ours_top5 = np.argsort(-mc.to_numpy(logits), axis=1)[:, :5]
    np.testing.assert_array_equal(ours_top5, np.argsort(-t_logits, axis=1)[:, :5])


def test_every_route_gives_torchs_exact_arrays(converted, torch_model):
    """Converted zip, converted legacy and the .pth read directly (without torch) hold torch's values bit for bit."""
    routes = {kind: resnet18(weights=path).state_dict() for kind, path in converted.items()}
    routes["direct"] = resnet18(weights=str(converted["zip"]).replace(".safetensors", ".pth")).state_dict()
    for k, v in torch_model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            for kind, sd in routes.items():
                np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=f"{kind}: {k}")


def test_training_forward_backward_matches_torch():
    """One training step in float32: batch-statistics forward, manual backward, running-stat update."""
    dtype, tol = np.float32, 1e-4
    torch.manual_seed(2)
    tm = torch_resnet.randomize_bn_stats(torch_resnet.build("resnet18", num_classes=20), seed=3).train()
    model = resnet18(weights={k: v.numpy() for k, v in tm.state_dict().items()}).train()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 64, 64)).astype(dtype)
    g = rng.standard_normal((2, 20)).astype(dtype)

    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = tm(tx)
    tlogits.backward(torch.from_numpy(g))
    model.zero_grad()
    logits = model(x)
    dx = model.backward(g)
    assert dx.dtype == dtype

    assert _rel(logits, tlogits.detach().numpy()) < tol
    assert _rel(dx, tx.grad.numpy()) < tol
    params = dict(model.named_parameters())
    for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.bias", "layer3.1.bn2.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"):
        t_grad = dict(tm.named_parameters())[key].grad.numpy()
        assert _rel(params[key].grad, t_grad) < tol, key
    # running statistics after one training step (momentum 0.1, unbiased variance)
    tb = dict(tm.named_buffers())
    for key, buf in model.named_buffers():
        if key.endswith("running_var") or key.endswith("running_mean"):
            assert _rel(buf, tb[key].numpy()) < tol / 10, key
        elif key.endswith("num_batches_tracked"):
            assert int(buf) == 1, key  # loading leaves the counter alone (it only matters for momentum=None)


def test_resnet34_eval_matches_torch():
    torch.manual_seed(4)
    tm = torch_resnet.randomize_bn_stats(torch_resnet.build("resnet34"), seed=5).eval()
    model = resnet_from_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}).eval()
    assert model.arch == "resnet34"
    x = np.random.default_rng(8).standard_normal((2, 3, 96, 64)).astype(np.float32)
    with torch.no_grad():
        t_logits = tm(torch.from_numpy(x)).numpy()
    with mc.no_grad():
        logits = model(x)
    assert _rel(logits, t_logits) < 1e-4
    np.testing.assert_array_equal(np.argsort(-logits, axis=1)[:, :5], np.argsort(-t_logits, axis=1)[:, :5])


@pytest.fixture(scope="module")
def ours(converted):
    return resnet18(weights=converted["zip"]).eval()


@pytest.mark.parametrize("hw", [(1, 1), (33, 47), (100, 64)])
def test_odd_input_sizes_match_torch(hw, torch_model, ours):
    model = ours
    x = np.random.default_rng(6).standard_normal((1, 3) + hw).astype(np.float32)
    with torch.no_grad():
        t_feats = torch_model.forward_features(torch.from_numpy(x)).numpy()
        t_logits = torch_model(torch.from_numpy(x)).numpy()
    with mc.no_grad():
        acts = model.activations(x)
    assert acts["layer4"].shape == t_feats.shape
    assert _rel(acts["layer4"], t_feats) < 1e-4
    assert _rel(acts["fc"], t_logits) < 1e-4


def test_torch_init_statistics_match():
    """Our Kaiming fan_out init draws from the same distribution as torchvision's."""
    torch.manual_seed(0)
    t = torch_resnet.build("resnet18")
    mc.manual_seed(0)
    m = resnet18()
    for key in ("conv1.weight", "layer3.0.conv2.weight", "layer4.0.downsample.0.weight"):
        ts = float(t.state_dict()[key].std())
        ms = float(m.state_dict()[key].std())
        assert abs(ms - ts) < 0.05 * ts, key
    bound = 1 / np.sqrt(512)
    assert np.abs(m.fc.weight.data).max() <= bound and np.abs(m.fc.weight.data).max() > 0.99 * bound
