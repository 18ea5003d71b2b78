"""Plumbing shared by the Fashion-MNIST lessons (15 to 18): the test images, the trained net that
minicnn ships, and the sample images the lessons look at. Each lesson imports this file (after
``_common``) from its own folder."""
from __future__ import annotations

import numpy as np

import _common  # noqa: F401  (imported for its side effect: a source checkout goes on the path)
from minicnn.data import FashionMNIST
from minicnn.models.fashion import fashion_convnet

SHIRT, SNEAKER = 6, 7  # class indices: the hard class and an easy one
WHICH = "fashion_convnet, shipped weights trained by minicnn"


def test_set():
    """The 10,000 Fashion-MNIST test images as float32 (N, 1, 28, 28) in [0, 1], their labels
    (int64) and the class names. Raises FileNotFoundError, saying how to install them, when the
    files are absent."""
    ds = FashionMNIST(train=False)
    X, y = ds.arrays()
    return X, y, list(ds.classes)


def model():
    """The shipped, trained 2-conv net, in eval mode."""
    return fashion_convnet(weights="DEFAULT").eval()


def first_of(y, cls):
    """Index of the first test image of class ``cls``: a fixed, real example, not a chosen one."""
    return int(np.flatnonzero(np.asarray(y) == cls)[0])


def first_of_each(y):
    """The index of the first test image of every class, in class order."""
    return [first_of(y, c) for c in range(10)]
