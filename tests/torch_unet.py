"""A plain-PyTorch U-Net on a ResNet encoder, with minicnn's module names (``encoder.*`` as torchvision's
ResNet less ``avgpool``/``fc``, ``decoder.<i>.{up, conv1, bn1, conv2, bn2}``, ``head``), so one
state dict loads into both. Only tests import this file; autograd is the reference for our backward.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import torch_bottleneck
import torch_resnet

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class Encoder(nn.Module):
    def __init__(self, arch="resnet34", width=64):
        super().__init__()
        if arch == "resnet50":
            net, e = torch_bottleneck.ResNet(torch_bottleneck.LAYERS[arch], width=width), 4
        else:
            assert width == 64, "torch_resnet builds full-width BasicBlock ResNets only"
            net, e = torch_resnet.ResNet(torch_resnet.LAYERS[arch]), 1
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.channels = (width, width * e, 2 * width * e, 4 * width * e, 8 * width * e)

    def forward(self, x):
        t0 = self.relu(self.bn1(self.conv1(x)))
        t1 = self.layer1(self.maxpool(t0))
        t2 = self.layer2(t1)
        t3 = self.layer3(t2)
        return [t0, t1, t2, t3, self.layer4(t3)]


class UpBlock(nn.Module):
    def __init__(self, cin, skip, cout, upsample="transpose"):
        super().__init__()
        half = cin // 2
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(cin, half, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Conv2d(cin, 4 * half, 1), nn.PixelShuffle(2))
        self.conv1 = nn.Conv2d(half + skip, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, skip=None):
        u = self.up(x)
        if skip is not None:
            u = torch.cat([u, skip], dim=1)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(u))))))


class UNet(nn.Module):
    def __init__(self, encoder="resnet34", num_classes=1, upsample="transpose", width=64):
        super().__init__()
        self.encoder = Encoder(encoder, width)
        ch = self.encoder.channels
        dec = tuple(c * width // 64 for c in DECODER_CHANNELS)
        blocks, cin = [], ch[4]
        for skip, cout in zip((ch[3], ch[2], ch[1], ch[0], 0), dec):
            blocks.append(UpBlock(cin, skip, cout, upsample))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        t = self.encoder(x)
        d = t[4]
        for block, skip in zip(self.decoder, (t[3], t[2], t[1], t[0], None)):
            d = block(d, skip)
        return self.head(d)


def build(encoder="resnet34", num_classes=1, upsample="transpose", width=64, state_dict=None):
    model = UNet(encoder, num_classes, upsample, width)
    if state_dict is not None:
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    return model
