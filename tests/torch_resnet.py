"""The plain-PyTorch ResNet-18/34 the tests compare with, under the name the tests import.

Defined once, in ``minicnn.bench.torch_reference`` (the PyTorch side of ``minicnn bench`` uses it
too); this module re-exports it so ``import torch_resnet`` keeps working in tests and in
``weights/make_reference.py``. Importing this module imports torch; the library never does.
"""
from __future__ import annotations

import torch  # noqa: F401 - the tests that import this module need torch; fail here if it is missing

from minicnn.bench.torch_reference import LAYERS, BasicBlock, ResNet, build, randomize_bn_stats  # noqa: F401
