"""The Fashion-MNIST nets against the same nets written in plain PyTorch: forward in training and
eval mode, and every parameter's gradient, from the same weights on the same batch."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minicnn as mc  # noqa: E402
from minicnn import nn  # noqa: E402
from minicnn.models.fashion import FashionConvNet, FashionResNet  # noqa: E402

pytestmark = pytest.mark.torch
tnn = torch.nn


class TorchBlock(tnn.Module):
    """torchvision's BasicBlock, with its parameter names."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchFashionResNet(tnn.Module):
    def __init__(self, width=16, blocks=2, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.relu = tnn.ReLU()
        inplanes, stages = width, []
        for i, stride in enumerate((1, 2, 2)):
            planes, mods = width << i, []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or inplanes != planes):
                    down = tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes))
                mods.append(TorchBlock(inplanes, planes, stride if b == 0 else 1, down))
                inplanes = planes
            stages.append(tnn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = tnn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(tnn.functional.adaptive_avg_pool2d(x, 1), 1))


def _torch_convnet_bn_hidden(hidden):
    return tnn.Sequential(
        tnn.Conv2d(1, 32, 5, padding=2, bias=False), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 5, padding=2, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(3136, hidden, bias=False), tnn.BatchNorm1d(hidden), tnn.ReLU(), tnn.Dropout(0.0),
        tnn.Linear(hidden, 10))


def _copy_into_torch(ours, ref):
    sd = {k: torch.from_numpy(np.array(mc.to_numpy(v))) for k, v in ours.state_dict().items()}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    # torch counts batches in num_batches_tracked, which minicnn's state dict may or may not carry
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


def _rel(a, b):
    a, b = np.asarray(mc.to_numpy(a), np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("make_ours, make_ref", [
    (lambda: FashionResNet(width=8, blocks=2), lambda: TorchFashionResNet(width=8, blocks=2)),
    (lambda: FashionResNet(width=4, blocks=1), lambda: TorchFashionResNet(width=4, blocks=1)),
    (lambda: FashionConvNet(batch_norm=True, hidden=24), lambda: _torch_convnet_bn_hidden(24)),
], ids=["resnet-w8-b2", "resnet-w4-b1", "convnet-bn-hidden24"])
def test_forward_backward_match_pytorch(make_ours, make_ref):
    mc.manual_seed(0)
    ours, ref = make_ours().double(), make_ref().double()
    _copy_into_torch(ours, ref)
    rng = np.random.default_rng(1)
    x = rng.random((6, 1, 28, 28))
    y = rng.integers(0, 10, 6)

    ours.train(), ref.train()
    loss_fn = nn.CrossEntropyLoss().double()  # a module computes in its own dtype, float32 unless told
    out = ours(x.astype(np.float64))
    loss = loss_fn(out, y)
    ours.zero_grad()
    ours.backward(loss_fn.backward())
    xt = torch.from_numpy(x)
    ref_out = ref(xt)
    ref_loss = tnn.functional.cross_entropy(ref_out, torch.from_numpy(y))
    ref_loss.backward()
    assert _rel(out, ref_out.detach().numpy()) < 1e-9
    assert float(loss) == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert sorted(names) == sorted(ref_params)
    for name, p in ours.named_parameters():
        assert _rel(p.grad, ref_params[name].grad.numpy()) < 1e-8, name
    # the batch statistics the training step folded into the running ones give the same eval forward
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert _rel(ours(x), ref(xt).numpy()) < 1e-9
