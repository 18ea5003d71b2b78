"""A plain-PyTorch ResNet-18/34, written out so the reference needs no torchvision.

The module tree mirrors torchvision.models.resnet (BasicBlock, downsample = Sequential(conv1x1,
bn), stem conv/bn/relu/maxpool, layer1..layer4, avgpool, fc), so ``state_dict()`` keys are
torchvision's and checkpoints move between this model, torchvision and minicnn unchanged.

It is the PyTorch side of ``minicnn bench e2e`` and the reference model of the tests. torch is
never a dependency of minicnn, so importing this module does not import it: ``BasicBlock`` and
``ResNet`` are defined on first use (``torch_reference.ResNet`` or ``build(...)``), and only then
is torch imported.

    >>> from minicnn.bench import torch_reference
    >>> from minicnn.models.resnet import seeded_state_dict
    >>> model = torch_reference.build("resnet18", state_dict=seeded_state_dict("resnet18", seed=0)).eval()
"""
from __future__ import annotations

import numpy as np

LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

_CLASSES: dict = {}


def _define_classes() -> dict:
    """Import torch and define ``BasicBlock`` and ``ResNet`` (once); return them by name."""
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        """torchvision's BasicBlock: conv3x3-bn-relu-conv3x3-bn, plus identity or downsample, then ReLU."""

        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        """torchvision's ResNet for BasicBlocks, with the same init (Kaiming-normal fan_out convs)."""

        def __init__(self, layers=(2, 2, 2, 2), num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1], 2)
            self.layer3 = self._make_layer(256, layers[2], 2)
            self.layer4 = self._make_layer(512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward_features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    for cls in (BasicBlock, ResNet):
        # named as if defined at module level, so pickle and reprs find them here
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _CLASSES[cls.__name__] = cls
    globals().update(_CLASSES)
    return _CLASSES


def __getattr__(name):
    # module-level attribute hook (PEP 562): ``torch_reference.ResNet`` defines the classes on first use
    if name in ("BasicBlock", "ResNet"):
        return _define_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(arch="resnet18", num_classes=1000, state_dict=None):
    """The torch model for ``arch``; ``state_dict`` (numpy arrays or tensors) is loaded strictly."""
    import torch

    model = _define_classes()["ResNet"](LAYERS[arch], num_classes)
    if state_dict is not None:
        sd = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
        model.load_state_dict(sd, strict=True)
    return model


def randomize_bn_stats(model, seed=0):
    """Give every batchnorm non-trivial gamma, beta and running statistics (fresh init has 1, 0, 0, 1,
    which would hide a swapped mean/var or a missing affine step)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model
