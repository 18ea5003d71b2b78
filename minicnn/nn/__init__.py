"""Layers and losses with PyTorch's names; each has forward(x) and a hand-written backward(dy)."""
from .activation import (
    ELU, GELU, SELU, Hardsigmoid, Hardswish, Identity, LeakyReLU, LogSoftmax, PReLU, ReLU, Sigmoid, SiLU, Softmax,
    Softmin, Softplus, Softsign, Tanh,
)
from .batchnorm import BatchNorm2d
from .batchnorm1d import BatchNorm1d
from .conv import Conv2d
from .conv_transpose import ConvTranspose2d
from .dropout import Dropout
from .dropout2d import Dropout2d
from .linear import Flatten, Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss, SmoothL1Loss
from . import init
from .module import Module, ModuleDict, ModuleList, Parameter, RemovableHandle, Sequential
from .padding import CircularPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, ZeroPad2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d
from .upsampling import (PixelShuffle, PixelUnshuffle, Upsample, UpsamplingBilinear2d,
                         UpsamplingNearest2d)
from . import functional  # noqa: E402 - the forward forms, built on the layers above

__all__ = [
    "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "RemovableHandle", "init", "functional", "Conv2d", "BatchNorm2d", "ReLU", "Sigmoid", "Tanh", "Identity",
    "LeakyReLU", "ELU", "SELU", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "PReLU", "Softplus", "Softsign",
    "Softmax", "LogSoftmax", "Softmin",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Linear", "Flatten", "Dropout",
    "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss", "NLLLoss", "L1Loss", "SmoothL1Loss", "HuberLoss",
    "BatchNorm1d", "Dropout2d", "MaxUnpool2d", "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d",
    "ReplicationPad2d", "CircularPad2d",
    "ConvTranspose2d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle",
]
