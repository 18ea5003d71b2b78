"""A plain-PyTorch VGG, written out so the reference needs no torchvision.

The module tree mirrors torchvision.models.vgg (``features`` from ``make_layers``, ``avgpool`` =
AdaptiveAvgPool2d(7x7), ``classifier`` = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear), so
``state_dict()`` keys are torchvision's. ``width`` and ``hidden`` shrink the network for fast tests
(64 and 4096 are torchvision's). Only tests import this file.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg, batch_norm=False, width=64):
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = v * width // 64
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG with its init (Kaiming fan_out convs, N(0, 0.01) Linear weights, zero biases)."""

    def __init__(self, features, num_classes=1000, dropout=0.5, width=64, hidden=4096):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        c = 512 * width // 64
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def build(arch="vgg16", num_classes=1000, width=64, hidden=4096, state_dict=None):
    """The torch model for ``arch`` (``vgg16``, ``vgg16_bn``, ...); ``state_dict`` is loaded strictly."""
    model = VGG(make_layers(CFGS[arch.removesuffix("_bn")], arch.endswith("_bn"), width), num_classes,
                width=width, hidden=hidden)
    if state_dict is not None:
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    return model
