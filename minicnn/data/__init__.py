"""Data shipped with minicnn: the handwritten digits (``load_digits``) and sample photos (``images/``).

Also readers for data installed beside it: ``FashionMNIST`` (Debian's ``dataset-fashion-mnist``)
and ``MNIST`` from their IDX files (``read_idx``), see ``minicnn/data/mnist.py``.

Everything here is small enough to live in the package, so examples and tests run offline.
Credits for every file: ``minicnn/data/README.md`` and ``minicnn/data/images/ATTRIBUTION.md``.
"""
from .digits import IMAGE_SHAPE, NUM_CLASSES, load_digits, train_test_split
from .mnist import MNIST, FashionMNIST, IDXError, read_idx
from .folder import ImageFolder, ImageList, image_transform

__all__ = ["load_digits", "train_test_split", "NUM_CLASSES", "IMAGE_SHAPE",
           "FashionMNIST", "MNIST", "read_idx", "IDXError", "ImageFolder", "ImageList", "image_transform"]
