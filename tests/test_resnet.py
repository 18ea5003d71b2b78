"""ResNet-18/34 without torch: torchvision's key names, the shipped PyTorch reference on every
backend, the manual backward against finite differences, stage outputs, and loading errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn
from minicnn.cli.verify import default_reference, load_reference, state_dict_digest, verify
from minicnn.models.resnet import (
    STAGES, BasicBlock, ResNet, infer_arch, resnet18, resnet34, resnet_from_state_dict, seeded_state_dict,
    state_dict_shapes,
)

from conftest import backend_params
from gradcheck import rel_error

REFERENCE = Path(__file__).resolve().parent.parent / "weights" / "reference" / "resnet18_seed0.npz"


def narrow_resnet(seed=0, width=8, num_classes=5, layers=(2, 2, 2, 2)):
    """A ResNet with the full structure but few channels (fast), with non-trivial batchnorm state."""
    mc.manual_seed(seed)
    model = ResNet(layers, num_classes=num_classes, width=width)
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.bias.data = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m._set_buffer("running_mean", (rng.standard_normal(c) * 0.1).astype(np.float32))
            m._set_buffer("running_var", rng.uniform(0.5, 1.5, c).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def model18(sd18):
    """The seeded ResNet-18 in eval mode; tests must not modify it."""
    return resnet18(weights=sd18).eval()


@pytest.fixture(scope="module")
def sd18():
    return seeded_state_dict("resnet18", 0)


@pytest.fixture(scope="module")
def reference():
    return load_reference(REFERENCE)


def _expected_resnet18_keys():
    """torchvision's resnet18().state_dict() layout, spelled out independently of the model code."""
    shapes = [("conv1.weight", (64, 3, 7, 7))]

    def bn(p, c):
        return [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)),
                (f"{p}.running_var", (c,)), (f"{p}.num_batches_tracked", ())]

    shapes += bn("bn1", 64)
    cin = 64
    for stage, c in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for b in (0, 1):
            p = f"layer{stage}.{b}"
            shapes += [(f"{p}.conv1.weight", (c, cin if b == 0 else c, 3, 3))] + bn(f"{p}.bn1", c)
            shapes += [(f"{p}.conv2.weight", (c, c, 3, 3))] + bn(f"{p}.bn2", c)
            if b == 0 and stage > 1:
                shapes += [(f"{p}.downsample.0.weight", (c, cin, 1, 1))] + bn(f"{p}.downsample.1", c)
        cin = c
    shapes += [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    return shapes


# -- architecture and keys -------------------------------------------------------------------------
def test_state_dict_keys_and_shapes_are_torchvisions(reference):
    sd = resnet18().state_dict()
    expected = _expected_resnet18_keys()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert len(sd) == 122 and sd["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    # the reference file records torch's own state_dict keys and shapes
    torch_keys = [str(k) for k in reference["keys"]]
    torch_shapes = [tuple(int(d) for d in s.split(",") if d) for s in reference["key_shapes"]]
    assert list(zip(torch_keys, torch_shapes)) == expected
    assert list(state_dict_shapes("resnet18").items()) == expected
    assert resnet18().num_parameters() == 11_689_512  # torchvision's count


def test_resnet34_layout():
    m = resnet34()
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert m.num_parameters() == 21_797_672  # torchvision's count
    assert list(m.state_dict()) == list(state_dict_shapes("resnet34"))
    assert infer_arch(m.state_dict()) == "resnet34"
    assert infer_arch(resnet18().state_dict()) == "resnet18"
    assert isinstance(m.layer2[0], BasicBlock) and m.layer2[0].downsample is not None and m.layer2[1].downsample is None


def test_init_is_kaiming_fan_out_and_seeded():
    mc.manual_seed(3)
    a = resnet18()
    mc.manual_seed(3)
    b = resnet18()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    w = a.layer4[1].conv2.weight.data
    assert abs(w.std() - np.sqrt(2.0 / (512 * 9))) < 0.02 * np.sqrt(2.0 / (512 * 9))
    assert abs(w.mean()) < 1e-3
    np.testing.assert_array_equal(a.bn1.weight.data, 1)
    np.testing.assert_array_equal(a.layer3[0].downsample[1].bias.data, 0)
    z = ResNet((2, 2, 2, 2), zero_init_residual=True)
    np.testing.assert_array_equal(z.layer1[0].bn2.weight.data, 0)


def test_seeded_state_dict_is_deterministic_with_nontrivial_bn(sd18):
    again = seeded_state_dict("resnet18", 0)
    other = seeded_state_dict("resnet18", 1)
    assert list(sd18) == list(state_dict_shapes("resnet18"))
    assert state_dict_digest(sd18) == state_dict_digest(again) != state_dict_digest(other)
    rv = np.concatenate([v for k, v in sd18.items() if k.endswith("running_var")])
    rm = np.concatenate([v for k, v in sd18.items() if k.endswith("running_mean")])
    gamma = np.concatenate([v for k, v in sd18.items() if k.endswith("bn1.weight") or k.endswith("bn2.weight")])
    assert rv.min() >= 0.5 and rv.max() <= 1.5 and rv.std() > 0.2
    assert abs(rm.std() - 0.1) < 0.01 and gamma.min() >= 0.5 and gamma.max() <= 1.5
    assert all(v.dtype == np.float32 for k, v in sd18.items() if not k.endswith("num_batches_tracked"))
    small = seeded_state_dict("resnet18", 0, num_classes=7)
    assert small["fc.weight"].shape == (7, 512)


def test_seeded_activations_stay_order_one(model18, reference):
    with mc.backend("numpy"), mc.no_grad():
        acts = model18.activations(reference["inputs"][:1].astype(np.float32))
    for name, a in acts.items():
        assert 0.3 < float(np.std(a)) < 5.0, (name, float(np.std(a)))
    # informative logits: not flat, and a clear winner
    logits = acts["fc"][0]
    assert logits.std() > 1.0 and np.sort(logits)[-1] - np.sort(logits)[-2] > 0.01


# -- the shipped reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", backend_params())
def test_shipped_reference_passes(name, sd18, reference):
    with mc.backend(name):
        report = verify(sd18, reference, tol=1e-4)
    assert report.passed, "\n".join(report.lines())
    assert report.weights_match is True
    names = {c.name for c in report.checks}
    assert {"logits", "features", "top-5", "train logits", "train dL/dx", "train grad conv1.weight"} <= names


def test_reference_catches_a_small_weight_change(sd18, reference):
    bad = dict(sd18)
    bad["layer3.0.bn1.running_var"] = sd18["layer3.0.bn1.running_var"] * np.float32(1.02)
    with mc.backend("numpy"):
        report = verify(bad, reference, tol=1e-4, train=False)
    assert not report.passed and report.weights_match is False
    assert "not the ones the reference was made from" in "\n".join(report.lines())


def test_default_reference_is_shipped():
    assert default_reference() == REFERENCE and REFERENCE.exists()
    assert REFERENCE.stat().st_size < 2_000_000


# -- stages, features, embeddings ----------------------------------------------------------------------
def test_stage_outputs_shapes_and_consistency(sd18, model18):
    model = model18
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        acts = model.activations(x)
        feats = model.forward_features(x)
        emb = model.embed(x)
        logits = model(x)
    assert list(acts) == list(STAGES)
    shapes = {k: v.shape for k, v in acts.items()}
    assert shapes == {"stem": (2, 64, 16, 16), "layer1": (2, 64, 16, 16), "layer2": (2, 128, 8, 8),
                      "layer3": (2, 256, 4, 4), "layer4": (2, 512, 2, 2), "avgpool": (2, 512), "fc": (2, 1000)}
    np.testing.assert_array_equal(feats, acts["layer4"])
    np.testing.assert_array_equal(emb, acts["avgpool"])
    np.testing.assert_allclose(emb, feats.mean(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(logits, acts["fc"])
    np.testing.assert_allclose(logits, emb @ sd18["fc.weight"].T + sd18["fc.bias"], rtol=1e-5, atol=1e-5)
    partial = model.activations(x, upto="layer2")
    assert list(partial) == ["stem", "layer1", "layer2"]
    with pytest.raises(ValueError, match="unknown stage 'layer5'"):
        model.activations(x, upto="layer5")


@pytest.mark.parametrize("hw,expect", [((1, 1), (1, 1)), ((33, 50), (2, 2)), ((224, 160), (7, 5)), ((65, 64), (3, 2))])
def test_any_input_size_torchvision_accepts(hw, expect, model18):
    x = np.random.default_rng(0).standard_normal((1, 3) + hw).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        acts = model18.activations(x)
    assert acts["layer4"].shape == (1, 512) + expect and acts["fc"].shape == (1, 1000)
    assert np.all(np.isfinite(acts["fc"]))


def test_bad_inputs_raise_clear_errors():
    model = narrow_resnet()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*got shape \(2, 1, 64, 64\)"):
        model(np.zeros((2, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"expected 4-D input.*\(3, 64, 64\)"):
        model(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"training mode.*\(1, 3, 32, 32\).*\(1, 64, 1, 1\)"):
        model.train()(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="empty"):
        model.eval()(np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="complex"):
        model(np.zeros((1, 3, 32, 32), np.complex64))


# -- backward -----------------------------------------------------------------------------------------
def _loss_fn(model, x, g):
    with mc.backend("numpy"):
        return float(np.sum(model(x) * g))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_matches_finite_differences(mode):
    """Whole-network dL/dx and parameter grads at random coordinates, float64, on a narrow ResNet-18
    (every layer type and both shortcut kinds; the full-width backward is checked against PyTorch
    by the shipped reference)."""
    rng = np.random.default_rng(7)
    model = narrow_resnet(seed=3, width=4).to(np.float64)
    model.train(mode == "train")
    x = rng.standard_normal((2, 3, 40, 40))
    g = rng.standard_normal((2, 5))
    with mc.backend("numpy"):
        model.zero_grad()
        model(x)
        dx = model.backward(g)
    assert dx.shape == x.shape and dx.dtype == np.float64
    h = 1e-5
    coords = [tuple(rng.integers(0, s) for s in x.shape) for _ in range(8)]
    num, ana = [], []
    for c in coords:
        xp, xm = x.copy(), x.copy()
        xp[c] += h
        xm[c] -= h
        num.append((_loss_fn(model, xp, g) - _loss_fn(model, xm, g)) / (2 * h))
        ana.append(dx[c])
    assert rel_error(np.array(ana), np.array(num)) < 1e-6, (ana, num)

    params = dict(model.named_parameters())
    grads = {k: np.array(p.grad, copy=True) for k, p in params.items()}
    for key in ("conv1.weight", "bn1.bias", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.weight", "layer3.1.bn1.weight", "layer4.0.bn2.bias", "layer4.1.conv1.weight",
                "fc.weight", "fc.bias"):
        p = params[key]
        num, ana = [], []
        for _ in range(3):
            c = tuple(rng.integers(0, s) for s in p.data.shape)
            old = p.data[c]
            p.data[c] = old + h
            fp = _loss_fn(model, x, g)
            p.data[c] = old - h
            fm = _loss_fn(model, x, g)
            p.data[c] = old
            num.append((fp - fm) / (2 * h))
            ana.append(grads[key][c])
        assert rel_error(np.array(ana), np.array(num)) < 1e-6, (key, ana, num)


def test_backward_from_any_stage_and_gradcam_gradient():
    model = narrow_resnet(seed=1, width=8, num_classes=6).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    with mc.backend("numpy"):
        acts = model.activations(x)
        d4 = model.backward_from("fc", g, to="layer4")
        # logits = fc(mean over the 2x2 map of layer4): dlogits/dlayer4 is W^T g spread over the map
        expect = np.broadcast_to((g @ model.fc.weight.data)[:, :, None, None] / 4.0, acts["layer4"].shape)
        np.testing.assert_allclose(d4, expect, rtol=1e-5, atol=1e-7)
        # each backward pops what its forward pass kept: run the forward again before the next one
        model.activations(x)
        d_avg = model.backward_from("fc", g, to="avgpool")
        np.testing.assert_allclose(d_avg, g @ model.fc.weight.data, rtol=1e-5, atol=1e-7)
        model.activations(x)
        dx_direct = model.backward_from("layer4", d4)
        model.zero_grad()
        model.activations(x)
        dx_full = model.backward(g)
        np.testing.assert_allclose(dx_direct, dx_full, rtol=1e-5, atol=1e-8)
        # a stage in the middle: backward from layer2 equals the full backward's gradient there
        model.activations(x)
        d2 = model.backward_from("fc", g, to="layer2")
        model.activations(x)
        np.testing.assert_allclose(model.backward_from("layer2", d2), dx_full, rtol=1e-5, atol=1e-8)
        # a forward that stopped early cannot be backpropagated from a later stage
        model.forward_features(x)
        with pytest.raises(RuntimeError, match="stopped at 'layer4'"):
            model.backward_from("fc", g)
        with pytest.raises(ValueError, match="comes after"):
            model.backward_from("layer2", np.zeros_like(acts["layer2"]), to="layer3")
        with mc.no_grad():
            model(x)
        with pytest.raises(RuntimeError, match="before a forward pass with gradients"):
            model.backward(g)


def test_training_steps_reduce_the_loss():
    model = narrow_resnet(seed=0, width=8, num_classes=4).train()
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    losses = []
    with mc.backend("numpy"):
        for _ in range(5):
            model.zero_grad()
            losses.append(float(loss_fn(model(x), y)))
            model.backward(loss_fn.backward())
            for p in model.parameters():
                p.data -= 0.05 * p.grad
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(model.bn1.num_batches_tracked) == 5


def test_gradient_ascent_on_the_input_in_eval_mode(model18):
    target = 9
    onehot = np.zeros((1, 1000), np.float32)
    onehot[0, target] = 1
    x = np.zeros((1, 3, 64, 64), np.float32)
    model18.freeze()
    try:
        with mc.backend("numpy"):
            start = float(model18(x)[0, target])
            for _ in range(3):
                model18(x)
                dx = model18.backward(onehot)
                x = x + 0.5 * dx / (np.abs(dx).max() + 1e-12)
            end = float(model18(x)[0, target])
        assert all(p.grad is None for p in model18.parameters())  # frozen: only dx flows
    finally:
        model18.unfreeze()
    assert end > start + 1.0


def test_replaced_head_and_float64():
    model = narrow_resnet(seed=2).eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with mc.backend("numpy"):
        emb = model.embed(x)
        assert emb.shape == (2, 64)
        model.fc = nn.Identity()
        np.testing.assert_allclose(model(x), emb, rtol=1e-6)
        model.fc = nn.Linear(64, 10)
        model.train()
        out = model(x)
        dx = model.backward(np.ones_like(out))
        assert out.shape == (2, 10) and dx.shape == x.shape and model.fc.weight.grad.shape == (10, 64)
        m32 = narrow_resnet(seed=4).eval()
        m64 = narrow_resnet(seed=4).eval().to(np.float64)
        with mc.no_grad():
            y64 = m64(x)
            np.testing.assert_allclose(y64, m32(x), rtol=1e-4, atol=1e-4)
        assert y64.dtype == np.float64


# -- loading ------------------------------------------------------------------------------------------
def test_load_errors_name_keys_and_shapes(sd18):
    missing = {k: v for k, v in sd18.items() if k != "layer2.1.bn1.running_var"}
    with pytest.raises(ValueError, match=r"missing keys: layer2\.1\.bn1\.running_var"):
        resnet18(weights=missing)
    shaped = dict(sd18)
    shaped["layer1.0.conv2.weight"] = np.zeros((64, 64, 3, 1), np.float32)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight: checkpoint has shape \(64, 64, 3, 1\), "
                                         r"model expects \(64, 64, 3, 3\)"):
        resnet18(weights=shaped)
    extra = dict(sd18, **{"head.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys: head\.weight"):
        resnet18(weights=extra)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint has shape \(1000, 512\), model expects \(10, 512\)"):
        resnet18(num_classes=10, weights=sd18)
    with pytest.raises(ValueError, match=r"these weights are resnet18 \(blocks per stage \(2, 2, 2, 2\)\), not resnet34"):
        resnet34(weights=sd18)
    with pytest.raises(TypeError, match="path or a state dict"):
        resnet18(weights=42)
    bottleneck = dict(sd18, **{"layer1.0.conv3.weight": np.zeros((256, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="(?i)bottleneck"):
        infer_arch(bottleneck)
    # num_classes comes from the weights when not given
    assert resnet18(weights=seeded_state_dict("resnet18", 0, num_classes=3)).fc.out_features == 3


def test_load_from_a_file(tmp_path, sd18):
    path = tmp_path / "seeded.safetensors"
    mc.save(sd18, path)
    for model in (resnet18(weights=path), resnet18(weights=str(path)), resnet_from_state_dict(path)):
        assert model.arch == "resnet18"
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(v, sd18[k], err_msg=k)
    with pytest.raises(Exception, match="nothing.safetensors"):
        resnet18(weights=tmp_path / "nothing.safetensors")


def _grads(model):
    return {k: (None if p.grad is None else np.array(mc.to_numpy(p.grad))) for k, p in model.named_parameters()}


@pytest.mark.parametrize("backend_name", backend_params())
def test_backward_params_fills_the_same_grads_without_input_grad(backend_name, monkeypatch):
    """backward_params gives exactly backward's parameter gradients; the stem conv is asked for no
    dL/dx, and a frozen backbone under a trainable head is not visited at all."""
    from minicnn import ops
    model = narrow_resnet(seed=1, width=8, num_classes=4).train()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    g = rng.standard_normal((2, 4)).astype(np.float32)
    calls = []
    real = ops.conv2d_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("need_dx", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "conv2d_backward", spy)
    with mc.backend(backend_name):
        model.zero_grad()
        model(x)
        assert model.backward(g) is not None
        want = _grads(model)
        n_convs = len(calls)
        model.zero_grad()
        calls.clear()
        model(x)
        assert model.backward_params(g) is None
        got = _grads(model)
        assert len(calls) == n_convs and calls.count(False) == 1  # the stem conv alone skips dL/dx
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)

        # a frozen backbone: only the head's backward runs
        model.freeze()
        model.fc.unfreeze()
        model.zero_grad()
        calls.clear()
        model(x)
        model.backward_params(g)
        assert calls == []
        got = _grads(model)
        np.testing.assert_allclose(got["fc.weight"], want["fc.weight"], rtol=1e-5, atol=1e-6)
        assert all(v is None for k, v in got.items() if not k.startswith("fc."))

        # nothing trainable: nothing runs, nothing is filled
        model.fc.freeze()
        model.zero_grad()
        model(x)
        assert model.backward_params(g) is None
        assert all(v is None for v in _grads(model).values())
        with mc.no_grad():
            model(x)
        with pytest.raises(RuntimeError, match="before a forward pass with gradients"):
            model.backward_params(g)
