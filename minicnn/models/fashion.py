"""Two small convnets for Fashion-MNIST (28x28 grey images, 10 classes): ``minicnn train fashion-mnist``.

``fashion_convnet``, the "2 Conv <100K parameters" row of the Fashion-MNIST benchmark table::

    conv 5x5 (1->32, pad 2)  relu  maxpool 2     28x28 -> 14x14
    conv 5x5 (32->64, pad 2) relu  maxpool 2     14x14 -> 7x7
    flatten  dropout  linear 3136->10            64*7*7 = 3136

83,466 parameters. ``fashion_convnet_bn``, the "2 Conv+pooling+BN" row: the same net with a
``BatchNorm2d`` after each convolution (whose bias it makes redundant, so the convolutions have
none), 83,562 parameters.

``weights="DEFAULT"`` loads the weights shipped in ``minicnn/data/weights/``, trained by minicnn
itself with the command recorded in ``docs/results.md`` (which also states their test accuracy).
The dropout layer is always present (an identity at ``dropout=0``) so the ``state_dict`` names do
not depend on the rate.
"""
from __future__ import annotations

import os

import numpy as np

from .. import nn
from ..nn.module import Module

__all__ = ["FashionConvNet", "FashionResNet", "fashion_convnet", "fashion_convnet_bn", "fashion_resnet", "WEIGHTS_DIR"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "weights")


class FashionConvNet(nn.Sequential):
    """Two conv-relu-pool stages (with or without batch norm) and one linear classifier, as a Sequential.

    Args:
        num_classes: outputs of the classifier (10).
        batch_norm: put a ``BatchNorm2d`` after each convolution (and drop the convolutions' bias).
        dropout: dropout rate before the classifier.
        hidden: 0 (the table's net: one linear layer after the convolutions), or the width of a hidden
            layer between them and the classifier: ``linear 3136->hidden, [batchnorm1d,] relu, dropout,
            linear hidden->num_classes`` (the batchnorm when ``batch_norm``).

    Shape:
        input (N, 1, 28, 28), output (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, dropout: float = 0.0, hidden: int = 0):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"FashionConvNet: num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"FashionConvNet: hidden must be an integer >= 0, got {hidden!r}")
        bn = bool(batch_norm)

        def stage(cin, cout):
            conv = nn.Conv2d(cin, cout, 5, padding=2, bias=not bn)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)] if bn else [conv, nn.ReLU(), nn.MaxPool2d(2)]

        if hidden:
            head = [nn.Flatten(), nn.Linear(64 * 7 * 7, hidden, bias=not bn), *([nn.BatchNorm1d(hidden)] if bn else []),
                    nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
        else:
            head = [nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * 7 * 7, num_classes)]
        super().__init__(*stage(1, 32), *stage(32, 64), *head)
        self.num_classes = int(num_classes)
        self.batch_norm = bn
        self.hidden = hidden

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, batch_norm={self.batch_norm}, hidden={self.hidden}"


def _load(model: FashionConvNet, weights, name: str) -> FashionConvNet:
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "DEFAULT":
        weights = os.path.join(WEIGHTS_DIR, f"{name}.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{name}: no shipped weights at {weights} (reinstall minicnn, or train them: "
                                    f"minicnn train fashion-mnist, see docs/results.md)")
    if isinstance(weights, (str, os.PathLike)):
        from ..serialization import load

        source, sd = os.fspath(weights), load(weights)
    elif hasattr(weights, "keys"):
        source, sd = "state dict", weights
    else:
        raise TypeError(f"{name}: weights must be None, 'DEFAULT', a path or a state dict, got {type(weights).__name__}")
    try:
        model.load_state_dict(sd, strict=True)
    except ValueError as e:
        raise ValueError(f"{name}: {source}: {e}") from None
    return model


def fashion_convnet(weights=None, num_classes: int = 10, dropout: float = 0.0, hidden: int = 0) -> FashionConvNet:
    """The 83K-parameter 2-conv net; ``weights``: None (fresh, from minicnn's generator), ``"DEFAULT"``
    (the shipped Fashion-MNIST weights), a safetensors path or a state dict (loaded strictly)."""
    return _load(FashionConvNet(num_classes, batch_norm=False, dropout=dropout, hidden=hidden), weights, "fashion_convnet")


def fashion_convnet_bn(weights=None, num_classes: int = 10, dropout: float = 0.0, hidden: int = 0) -> FashionConvNet:
    """The 2-conv net with batch norm after each convolution; ``weights`` as for :func:`fashion_convnet`."""
    return _load(FashionConvNet(num_classes, batch_norm=True, dropout=dropout, hidden=hidden), weights, "fashion_convnet_bn")


class FashionResNet(Module):
    """A narrow ResNet for 28x28 grey images: the "ResNet with augmentation" row, scaled to a CPU::

        conv 3x3 (1->w, pad 1)  bn  relu                          28x28
        layer1: blocks x BasicBlock(w)          stride 1          28x28
        layer2: blocks x BasicBlock(2w)         first stride 2    14x14
        layer3: blocks x BasicBlock(4w)         first stride 2     7x7
        global average pool  fc 4w->num_classes

    The blocks are :class:`minicnn.models.resnet.BasicBlock` (torchvision's, 1x1 strided conv + BN
    shortcut where the width changes), so the ``state_dict`` names follow torchvision's ResNet with
    three stages instead of four and a 3x3 stem without max-pool (a 7x7/2 stem and a pool would
    shrink 28x28 to 7x7 before the first block). Convolutions start Kaiming-normal (fan_out), as
    torchvision's do.

    Args:
        num_classes: outputs of the classifier (10).
        width: the first stage's channels ``w`` (16 by default; stages use w, 2w, 4w).
        blocks: BasicBlocks per stage (2 by default).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 2):
        super().__init__()
        from .resnet import BasicBlock, _kaiming_normal_fan_out
        from ..random import get_rng

        for name, v in (("num_classes", num_classes), ("width", width), ("blocks", blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FashionResNet: {name} must be a positive integer, got {v!r}")
        self.num_classes, self.width, self.blocks = num_classes, width, blocks
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        inplanes = width
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            planes = width << i
            mods = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or inplanes != planes):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
                mods.append(BasicBlock(inplanes, planes, stride if b == 0 else 1, down))
                inplanes = planes
            stages.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(inplanes, num_classes)
        rng = get_rng()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = _kaiming_normal_fan_out(rng, m.weight.shape)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, width={self.width}, blocks={self.blocks}"

    def _chain(self):
        return (self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3, self.avgpool, self.flatten, self.fc)

    def forward(self, x):
        for m in self._chain():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(self._chain()):
            dy = m.backward(dy)
        return dy


def fashion_resnet(weights=None, num_classes: int = 10, width: int = 16, blocks: int = 2) -> FashionResNet:
    """The narrow ResNet of :class:`FashionResNet`; ``weights`` as for :func:`fashion_convnet`."""
    return _load(FashionResNet(num_classes, width=width, blocks=blocks), weights, "fashion_resnet")
