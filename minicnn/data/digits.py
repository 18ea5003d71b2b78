"""The embedded handwritten digits: 1797 images of 8x8 pixels, ten classes.

The file ``digits.csv.gz`` beside this module is the test set of the UCI "Optical Recognition of
Handwritten Digits" data (Alpaydin & Kaynak, 1998), the same file scikit-learn ships for
``sklearn.datasets.load_digits``. Each row holds 64 pixel counts in 0..16 (row-major) and the label.
It is small enough to train a convnet on in seconds, which is why the engine's own "does it learn"
test and ``minicnn train digits`` use it. Credit and licence: ``minicnn/data/README.md``.
"""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from ..errors import MinicnnError

__all__ = ["load_digits", "train_test_split", "DIGITS_PATH", "NUM_CLASSES", "IMAGE_SHAPE"]

DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.csv.gz")
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
_NUM_SAMPLES = 1797
_MAX_LEVEL = 16  # pixels are counts of "on" bits in a 4x4 block: 0..16, i.e. 17 levels


@functools.lru_cache(maxsize=1)
def _read_raw(path: str = DIGITS_PATH):
    """Parse the gzip CSV once per process; returns (pixels uint8 (N, 64), labels int64 (N,))."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise MinicnnError(f"digits data file is missing: {path} (reinstall minicnn)") from None
    except (OSError, ValueError, EOFError) as e:
        raise MinicnnError(f"digits data file {path} is unreadable: {e}") from None
    if raw.shape != (_NUM_SAMPLES, 65):
        raise MinicnnError(f"digits data file {path}: expected {_NUM_SAMPLES} rows of 65 values, got shape {raw.shape}")
    pixels, labels = raw[:, :64], raw[:, 64]
    if pixels.min() < 0 or pixels.max() > _MAX_LEVEL or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise MinicnnError(f"digits data file {path}: pixel or label values out of range")
    # read-only so the cached arrays can never be modified through a returned view
    pixels = pixels.astype(np.uint8)
    labels = labels.astype(np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def train_test_split(X, y, test_size=0.2, seed=0, stratify=True):
    """Split ``(X, y)`` into ``(X_train, y_train, X_test, y_test)``, deterministically.

    With ``stratify=True`` every class is split on its own, so each class keeps the same share
    of the test set (``round(count * test_size)`` of its samples, at least one when the class has
    two or more). ``test_size`` is a fraction in (0, 1) or a number of samples. The same ``seed``
    gives the same split on every machine (numpy's PCG64 generator); both halves keep the
    original order of the samples, so the split alone never shuffles the data.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    n = len(X)
    if len(y) != n:
        raise ValueError(f"train_test_split: X has {n} samples (shape {X.shape}) but y has {len(y)} (shape {y.shape})")
    if n < 2:
        raise ValueError(f"train_test_split: need at least 2 samples, got {n}")
    if isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
        if not 0 < test_size < n:
            raise ValueError(f"train_test_split: test_size as a count must lie in [1, {n - 1}], got {test_size}")
        frac = test_size / n
    else:
        frac = float(test_size)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"train_test_split: test_size as a fraction must lie in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(n, dtype=bool)
    if stratify:
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            k = int(round(len(idx) * frac))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)  # every class on both sides
            test_mask[rng.permutation(idx)[:k]] = True
    else:
        k = min(max(int(round(n * frac)), 1), n - 1)
        test_mask[rng.permutation(n)[:k]] = True
    return X[~test_mask], y[~test_mask], X[test_mask], y[test_mask]


def load_digits(split=None, test_size=0.2, seed=0):
    """The digits as ``(images, labels)``: images float32 (N, 1, 8, 8) in [0, 1], labels int64 (N,).

    ``split=None`` (or ``"all"``) returns all 1797 samples in file order. ``"train"`` and ``"test"``
    return one side of the stratified split made by ``train_test_split(test_size, seed)``; with
    the defaults that is 1438 training and 359 test images (35 to 37 of each digit in the test set).
    ``split="both"`` returns ``(X_train, y_train, X_test, y_test)`` from one call.
    Pixel values are the stored counts divided by 16, so 0 is background and 1 is full ink.
    """
    pixels, labels = _read_raw()
    X = (pixels.astype(np.float32) / np.float32(_MAX_LEVEL)).reshape(-1, *IMAGE_SHAPE)
    y = labels.copy()
    if split is None or split == "all":
        return X, y
    if split not in ("train", "test", "both"):
        raise ValueError(f"load_digits: split must be None, 'all', 'train', 'test' or 'both', got {split!r}")
    X_tr, y_tr, X_te, y_te = train_test_split(X, y, test_size=test_size, seed=seed, stratify=True)
    if split == "train":
        return X_tr, y_tr
    if split == "test":
        return X_te, y_te
    return X_tr, y_tr, X_te, y_te
