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

from .. import nn

__all__ = ["FashionConvNet", "fashion_convnet", "fashion_convnet_bn", "WEIGHTS_DIR"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "weights")


class FashionConvNet(nn.Sequential):
    """Two conv-relu-pool stages (with or without batch norm) and one linear classifier, as a Sequential.

    Args:
        num_classes: outputs of the classifier (10).
        batch_norm: put a ``BatchNorm2d`` after each convolution (and drop the convolutions' bias).
        dropout: dropout rate before the classifier.

    Shape:
        input (N, 1, 28, 28), output (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, dropout: float = 0.0):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"FashionConvNet: num_classes must be a positive integer, got {num_classes!r}")
        bn = bool(batch_norm)

        def stage(cin, cout):
            conv = nn.Conv2d(cin, cout, 5, padding=2, bias=not bn)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)] if bn else [conv, nn.ReLU(), nn.MaxPool2d(2)]

        super().__init__(*stage(1, 32), *stage(32, 64), nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * 7 * 7, num_classes))
        self.num_classes = int(num_classes)
        self.batch_norm = bn

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, batch_norm={self.batch_norm}"


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


def fashion_convnet(weights=None, num_classes: int = 10, dropout: float = 0.0) -> FashionConvNet:
    """The 83K-parameter 2-conv net; ``weights``: None (fresh, from minicnn's generator), ``"DEFAULT"``
    (the shipped Fashion-MNIST weights), a safetensors path or a state dict (loaded strictly)."""
    return _load(FashionConvNet(num_classes, batch_norm=False, dropout=dropout), weights, "fashion_convnet")


def fashion_convnet_bn(weights=None, num_classes: int = 10, dropout: float = 0.0) -> FashionConvNet:
    """The 2-conv net with batch norm after each convolution; ``weights`` as for :func:`fashion_convnet`."""
    return _load(FashionConvNet(num_classes, batch_norm=True, dropout=dropout), weights, "fashion_convnet_bn")
