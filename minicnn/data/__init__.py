"""Data shipped with minicnn: the handwritten digits (``load_digits``) and sample photos (``images/``).

Everything here is small enough to live in the package, so examples and tests run offline.
Credits for every file: ``minicnn/data/README.md`` and ``minicnn/data/images/ATTRIBUTION.md``.
"""
from .digits import IMAGE_SHAPE, NUM_CLASSES, load_digits, train_test_split

__all__ = ["load_digits", "train_test_split", "NUM_CLASSES", "IMAGE_SHAPE"]
