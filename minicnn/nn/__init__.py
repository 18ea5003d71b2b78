"""Layers and losses with PyTorch's names; each has forward(x) and a hand-written backward(dy)."""
from .activation import Identity, ReLU, Sigmoid, Tanh
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .dropout import Dropout
from .linear import Flatten, Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .module import Module, Parameter, Sequential
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "Module", "Parameter", "Sequential", "Conv2d", "BatchNorm2d", "ReLU", "Sigmoid", "Tanh", "Identity",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Linear", "Flatten", "Dropout",
    "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss",
]
