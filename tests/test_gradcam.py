"""Grad-CAM, input gradients, gradient ascent and DeepDream on the manual backward pass.

Grad-CAM is checked on a toy model whose answer is known by construction, on ResNet-18 against
the closed form it reduces to at layer4 (class activation mapping: avgpool + fc are linear, so
alpha_k = W_fc[c, k] / (h w)), and against PyTorch autograd. Input gradients are checked against
central differences."""
import numpy as np
import pytest

import minicnn as mc
from gradcheck import eval_numerical_gradient_array, rel_error
from minicnn import gradcam, nn


def _halves_model():
    """Channel 0 fires on bright pixels, channel 1 on dark ones; logit c = mean of channel c."""
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(2, 2, bias=False))
    m[0].weight.data[...] = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)
    m[4].weight.data[...] = np.eye(2, dtype=np.float32)
    return m


@pytest.fixture(scope="module")
def resnet():
    from minicnn.models.resnet import resnet18, seeded_state_dict

    return resnet18(weights=seeded_state_dict("resnet18", 0))


# -- Grad-CAM -------------------------------------------------------------------------------------

def test_grad_cam_toy_model_known_answer():
    m = _halves_model()
    x = np.ones((2, 1, 4, 6), np.float32)
    x[:, :, :, 3:] = -1.0  # bright left half, dark right half
    x[1] = -x[1]  # the second image is the mirror
    left = np.zeros((4, 6))
    left[:, :3] = 1.0
    cam0 = gradcam.grad_cam(m, x, class_idx=0, layer=1)
    cam1 = gradcam.grad_cam(m, x, class_idx=1, layer=1)
    np.testing.assert_array_equal(cam0, np.stack([left, 1 - left]))
    np.testing.assert_array_equal(cam1, np.stack([1 - left, left]))
    # per-sample classes, the default layer (the last feature map) and a single CHW image
    np.testing.assert_array_equal(gradcam.grad_cam(m, x, class_idx=[0, 1], layer=None), np.stack([left, left]))
    np.testing.assert_array_equal(gradcam.grad_cam(m, x[0], class_idx=1, layer="1"), 1 - left)


def test_grad_cam_upsamples_to_the_input():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(2, 2, bias=False))
    m[0].weight.data[...] = np.array([1.0, -1.0], np.float32).reshape(2, 1, 1, 1)
    m[5].weight.data[...] = np.eye(2, dtype=np.float32)
    x = -np.ones((1, 1, 8, 8), np.float32)
    x[..., :4, :4] = 1.0  # one bright quadrant
    small = gradcam.grad_cam(m, x, 0, layer=2, upsample=False)
    np.testing.assert_array_equal(small[0], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    big = gradcam.grad_cam(m, x, 0, layer=2)
    assert big.shape == (1, 8, 8) and big.max() == 1.0
    assert big[0, :3, :3].min() == 1.0 and big[0, 5:, 5:].max() == 0.0


def test_grad_cam_resnet_equals_class_activation_mapping(resnet):
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    classes = [3, 7]
    cam, logits = gradcam.grad_cam(resnet, x, class_idx=classes, upsample=False, return_logits=True)
    resnet.eval()
    acts = resnet.activations(x)
    np.testing.assert_allclose(logits, acts["fc"], rtol=1e-5, atol=1e-5)
    a = acts["layer4"].astype(np.float64)
    w = resnet.fc.weight.data.astype(np.float64)[classes]
    ref = np.maximum(np.einsum("nkhw,nk->nhw", a, w), 0.0)
    ref /= ref.reshape(2, -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(cam, ref, atol=1e-6)


def test_grad_cam_restores_mode_and_trainability(resnet):
    resnet.train()
    resnet.bn1.eval()  # a mixed state, as when fine-tuning with frozen batch norms
    resnet.fc.weight.requires_grad = False
    gradcam.grad_cam(resnet, np.zeros((2, 3, 64, 64), np.float32), 1)
    assert resnet.training and resnet.layer1.training and not resnet.bn1.training
    assert resnet.fc.weight.requires_grad is False and resnet.conv1.weight.requires_grad
    assert all(p.grad is None for p in resnet.parameters())
    resnet.fc.weight.requires_grad = True
    resnet.eval()


def test_bad_layers_are_named(resnet):
    m = _halves_model()
    with pytest.raises(ValueError, match="no layer 'conv'; layers are 0, 1, 2, 3, 4"):
        gradcam.grad_cam(m, np.zeros((1, 1, 4, 4)), 0, layer="conv")
    with pytest.raises(ValueError, match="outputs shape"):
        gradcam.grad_cam(m, np.zeros((1, 1, 4, 4)), 0, layer=3)
    with pytest.raises(ValueError, match="stages are"):
        gradcam.grad_cam(resnet, np.zeros((1, 3, 32, 32)), 0, layer="layer9")
    with pytest.raises(TypeError, match="ResNet .* or an nn.Sequential"):
        gradcam.layer_activation(nn.Module(), np.zeros((1, 1, 4, 4)), 0)


@pytest.mark.torch
def test_grad_cam_resnet_matches_torch(resnet):
    torch = pytest.importorskip("torch")
    import torch_resnet
    from minicnn.models.resnet import seeded_state_dict

    tm = torch_resnet.build("resnet18", state_dict=seeded_state_dict("resnet18", 0)).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 80, 112)).astype(np.float32)
    classes = [5, 900]
    for layer, module in (("layer4", tm.layer4), ("layer3", tm.layer3)):
        store = {}

        def keep(mod, inp, out, store=store):
            out.retain_grad()
            store["a"] = out  # returning None leaves the output as it is

        h = module.register_forward_hook(keep)
        logits = tm(torch.from_numpy(x))
        logits[torch.arange(2), torch.tensor(classes)].sum().backward()
        h.remove()
        a, g = store["a"].detach().double(), store["a"].grad.double()
        ref = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
        up = torch.nn.functional.interpolate(ref[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        ref = ref / ref.flatten(1).max(1).values[:, None, None]
        up = up.clamp(min=0) / up.flatten(1).max(1).values[:, None, None]
        np.testing.assert_allclose(gradcam.grad_cam(resnet, x, classes, layer=layer, upsample=False), ref.numpy(),
                                   atol=2e-4)
        np.testing.assert_allclose(gradcam.grad_cam(resnet, x, classes, layer=layer), up.numpy(), atol=2e-4)


# -- input gradients -----------------------------------------------------------------------------

def test_input_gradient_matches_central_differences():
    rng = np.random.default_rng(2)
    mc.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(3 * 2 * 2, 4)).to(np.float64)
    m[1]._set_buffer("running_mean", rng.standard_normal(3))
    m[1]._set_buffer("running_var", rng.uniform(0.5, 2.0, 3))
    m.train()  # input_gradient must switch to eval mode itself
    x = rng.standard_normal((2, 2, 4, 4))
    g = gradcam.input_gradient(m, x, 2)
    assert m.training
    m.eval()
    onehot = np.zeros((2, 4))
    onehot[:, 2] = 1.0
    num = eval_numerical_gradient_array(lambda v: m(v), x.copy(), onehot)
    assert rel_error(g, num) < 1e-7
    # a custom target: d/dx of the sum of squared logits
    g2 = gradcam.input_gradient(m, x, lambda out: (float((out ** 2).sum()), 2 * out))
    num2 = eval_numerical_gradient_array(lambda v: (m(v) ** 2).sum(), x.copy(), 1.0)
    assert rel_error(g2, num2) < 1e-7
    assert all(p.grad is None for p in m.parameters())


def test_input_gradient_default_is_the_top_class():
    m = _halves_model()
    x = np.ones((1, 1, 2, 2), np.float32)  # all bright: class 0 wins
    np.testing.assert_allclose(gradcam.input_gradient(m, x), np.full((1, 1, 2, 2), 0.25))
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\) for output of shape \(1, 2\)"):
        gradcam.input_gradient(m, x, lambda out: (0.0, np.zeros(3)))


# -- gradient ascent and DeepDream --------------------------------------------------------------------

def test_gradient_ascent_step_is_the_normalised_gradient():
    rng = np.random.default_rng(4)
    mc.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 1)).to(np.float64)
    x = rng.standard_normal((1, 1, 6, 6))
    out = gradcam.gradient_ascent(m, x, layer=2, channel=1, steps=1, lr=0.1)
    dmean = np.zeros((1, 2, 4, 4))
    dmean[:, 1] = 1.0 / 16
    g = eval_numerical_gradient_array(lambda v: m(v), x.copy(), dmean)
    np.testing.assert_allclose(out, x + 0.1 * g / (np.abs(g).mean() + 1e-8), rtol=1e-7, atol=1e-9)


def test_gradient_ascent_excites_a_resnet_filter(resnet):
    x0 = np.random.default_rng(6).normal(0, 0.5, (3, 48, 48)).astype(np.float32)
    a0 = gradcam.layer_activation(resnet, x0, "layer2")
    ch = int(np.argsort(-(a0 > 0).mean(axis=(1, 2)))[10])  # a filter that is alive somewhere, not the top one
    x = gradcam.gradient_ascent(resnet, x0, "layer2", channel=ch, steps=6, lr=0.1, jitter=2, rng=0)
    after = gradcam.layer_activation(resnet, x, "layer2")
    assert x.shape == x0.shape
    assert after[ch].mean() > 1.5 * a0[ch].mean()
    # the chosen filter grew more than the layer as a whole
    assert after[ch].mean() / a0[ch].mean() > after.mean() / a0.mean()


def test_deep_dream_amplifies_the_layer(resnet):
    img = np.random.default_rng(7).normal(0, 0.5, (3, 64, 64)).astype(np.float32)
    out = gradcam.deep_dream(resnet, img, layer="layer3", octaves=2, octave_scale=1.5, steps=3, lr=0.05, jitter=4,
                             rng=0)
    assert out.shape == img.shape and np.isfinite(out).all()

    def energy(v):
        return float((gradcam.layer_activation(resnet, v, "layer3").astype(np.float64) ** 2).mean())

    assert energy(out) > 1.2 * energy(img)
    with pytest.raises(ValueError, match="octave_scale > 1"):
        gradcam.deep_dream(resnet, img, octave_scale=1.0)
