"""Small plain-PyTorch networks for the ONNX import tests, one per architecture family.

Each is the familiar design at a small width and input (so export, import and the comparisons take
well under a second): ResNet-18 (BasicBlocks), a ResNet-50-like bottleneck net, VGG-11, a
SqueezeNet (Fire modules joined by Concat, ceil-mode pooling), a MobileNetV2 (depthwise convs,
ReLU6, inverted residuals), a U-Net (ConvTranspose and skip Concats, bilinear and nearest
resizes). Batchnorm statistics are randomised so a swapped mean/variance cannot hide. Only the
tests import this file; the library never imports torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize(model, seed=0):
    """Non-trivial batchnorm statistics and affine parameters, and eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model.eval()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (stem 7x7/2, max pool, four stages, global pool, fc) at ``width``."""

    def __init__(self, block=BasicBlock, layers=(2, 2, 2, 2), width=8, num_classes=10):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [block(self.inplanes, planes, 1 if i == 0 else 2)]
            self.inplanes = planes * block.expansion
            blocks += [block(self.inplanes, planes) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_small(width=8, num_classes=10):
    return randomize(ResNet(BasicBlock, (2, 2, 2, 2), width, num_classes))


def resnet50_small(width=4, num_classes=10):
    return randomize(ResNet(Bottleneck, (1, 1, 1, 1), width, num_classes))


class VGG11(nn.Module):
    """VGG-11's conv stack ("A": 1-1-2-2-2 convs) at 1/16 width, with batchnorm, for 32x32 input;
    the classifier reads ``x.view(x.size(0), -1)`` (Shape/Gather/Concat/Reshape in the file)."""

    def __init__(self, num_classes=10):
        super().__init__()
        cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(32, 24), nn.ReLU(True), nn.Dropout(), nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


def vgg11_small(num_classes=10):
    return randomize(VGG11(num_classes))


class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1's layout at 1/8 width: Fire modules, ceil-mode max pools, a conv classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(8, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 6, 12, 12), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(24, 8, 16, 16),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet_small(num_classes=10):
    return randomize(SqueezeNet(num_classes))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, ReLU6, 1x1 project) at small width,
    with a Hardswish before the classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
            InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4),
            InvertedResidual(12, 16, 2, 4), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2_small(num_classes=10):
    return randomize(MobileNetV2(num_classes))


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ELU())


class UNet(nn.Module):
    """A two-level U-Net: max-pool down, ConvTranspose up, skip connections by Concat; a bilinear
    and a nearest resize on a side branch, a PReLU and a channel softmax at the end."""

    def __init__(self, classes=3):
        super().__init__()
        self.inc = _double_conv(3, 8)
        self.down1 = _double_conv(8, 16)
        self.down2 = _double_conv(16, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.conv_up1 = _double_conv(32, 16)
        self.up2 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.conv_up2 = _double_conv(16, 8)
        self.side = nn.Conv2d(32, 8, 1)
        self.act = nn.PReLU(8)
        self.outc = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        y = self.conv_up1(torch.cat([x2, self.up1(x3)], 1))
        y = self.conv_up2(torch.cat([x1, self.up2(y)], 1))
        side = F.interpolate(torch.sigmoid(self.side(x3)), scale_factor=2, mode="bilinear", align_corners=False)
        side = F.interpolate(side, scale_factor=2, mode="nearest")
        return torch.softmax(self.outc(self.act(y * side)), dim=1)


def unet_small(classes=3):
    return randomize(UNet(classes))


NETS = {
    "resnet18": (resnet18_small, (2, 3, 32, 32)),
    "resnet50": (resnet50_small, (2, 3, 32, 32)),
    "vgg11": (vgg11_small, (2, 3, 32, 32)),
    "squeezenet": (squeezenet_small, (2, 3, 40, 40)),
    "mobilenetv2": (mobilenetv2_small, (2, 3, 32, 32)),
    "unet": (unet_small, (2, 3, 16, 16)),
}


def export(model, x, path, opset, dynamic_batch=True):
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``), eval mode."""
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset, dynamo=False)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "N"}, "output": {0: "N"}}
    torch.onnx.export(model, (x,), str(path), **kwargs)
    return path
