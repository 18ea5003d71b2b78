"""Datasets of your own image files: ``ImageFolder`` (one subfolder per class) and ``ImageList``.

    ds = ImageFolder("photos/", transform=image_transform(size=224))
    ds.classes            # ['cat', 'dog'], sorted, as torchvision's
    x, y = ds[0]          # float32 (3, 224, 224) and the class index
    loader = DataLoader(ds, batch_size=32, shuffle=True, seed=0, num_workers=4)

Both are map-style datasets (``len(ds)``, ``ds[i] -> (x, y)``), the protocol
``minicnn.train.DataLoader`` batches. Images are decoded lazily with Pillow when an item is read
(``minicnn.io.images.load_image``: EXIF orientation applied, every mode turned into RGB), so a
folder of any size costs only its list of paths; an unreadable file raises an ``ImageReadError``
naming its path. Without a ``transform`` an item is the image as float32 (3, H, W) in [0, 1], which
batches only when every image has the same size; :func:`image_transform` resizes and normalises.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess, to_array

__all__ = ["ImageFolder", "ImageList", "Subset", "image_transform", "find_classes", "split_indices"]


def image_transform(size=224, mode="center_crop", resize_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    grayscale=False):
    """A transform PIL image -> float32 (C, size, size) network input.

    ``mode="center_crop"``: the largest centred square resized to ``size`` (keeps most of the
    picture); ``"torchvision"``: shorter side to ``resize_size`` (default ``size * 8 // 7``), then a
    centred ``size`` crop. ``mean=None`` leaves pixels in [0, 1]. ``grayscale=True`` returns one
    channel (the mean of R, G and B), for models of one input channel.
    """
    resize_size = resize_size if resize_size is not None else max(size, size * 8 // 7)

    def transform(img):
        if mean is None:
            x = preprocess(img, mode=mode, size=size, resize_size=resize_size, mean=None)
        else:
            x = preprocess(img, mode=mode, size=size, resize_size=resize_size, mean=mean, std=std)
        return x.mean(axis=0, keepdims=True) if grayscale else x

    return transform


def _default_transform(img):
    return to_array(img, mean=None)


def find_classes(root):
    """``(classes, class_to_idx)``: the subfolder names of ``root``, sorted, numbered from 0."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageFolder: {root!r} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"ImageFolder: no class folders in {root!r} (expected root/<class>/<image> files)")
    return classes, {c: i for i, c in enumerate(classes)}


class ImageFolder:
    """Images in ``root/<class>/...``, torchvision's layout: the label is the subfolder's index.

    Args:
        root: the folder holding one subfolder per class (nested folders inside a class count).
        transform: ``f(PIL image) -> array`` applied when an item is read (default: float32
            (3, H, W) in [0, 1]); see :func:`image_transform`.
        target_transform: ``f(int) -> target`` applied to the label.
        extensions: file suffixes that count as images (default: ``minicnn.io.images.IMAGE_EXTENSIONS``).

    Attributes: ``classes`` (sorted subfolder names), ``class_to_idx``, ``samples`` (list of
    ``(path, class_index)`` sorted by class, then path), ``targets``. Raises FileNotFoundError for
    a missing root, a root without class folders, or a class folder without images.
    """

    def __init__(self, root, transform=None, target_transform=None, extensions=None):
        self.root = os.fspath(root)
        self.transform = transform
        self.target_transform = target_transform
        exts = {e.lower() for e in (extensions or IMAGE_EXTENSIONS)}
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples = []
        for c in self.classes:
            files = sorted(os.fspath(p) for p in Path(self.root, c).rglob("*") if p.is_file() and p.suffix.lower() in exts)
            if not files:
                raise FileNotFoundError(f"ImageFolder: class folder {os.path.join(self.root, c)!r} holds no images "
                                        f"(looked for {', '.join(sorted(exts))})")
            self.samples.extend((f, self.class_to_idx[c]) for f in files)
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        img = load_image(path)  # ImageReadError names the path
        x = (self.transform or _default_transform)(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return x, np.int64(target)

    def __repr__(self) -> str:
        return f"ImageFolder(root={self.root!r}, samples={len(self)}, classes={len(self.classes)})"


class ImageList:
    """Images listed with their targets: single-label, multi-label or regression.

    ``ImageList(paths, labels)`` or ``ImageList([(path, label), ...])``. ``kind`` says what a
    label is (``"auto"`` decides from the labels):

    * ``"single"``: one class per image, an int (or a class name, numbered in sorted order);
      the target is an int64 index, for ``CrossEntropyLoss``.
    * ``"multi"``: a list of classes per image (ints or names); the target is a float32 multi-hot
      vector of length ``num_classes``, for ``BCEWithLogitsLoss``.
    * ``"regression"``: a float or a list of floats per image; the target is float32, for ``MSELoss``.

    ``classes`` lists the class names (or ``0..num_classes-1``) for the classification kinds.
    Images are read lazily, as in :class:`ImageFolder`; ``root`` prefixes relative paths.
    """

    def __init__(self, items, labels=None, transform=None, kind="auto", num_classes=None, root=None):
        items = list(items)
        if labels is None:
            if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
                raise ValueError("ImageList: give paths and labels, or a list of (path, label) pairs")
            paths, labels = [it[0] for it in items], [it[1] for it in items]
        else:
            paths, labels = items, list(labels)
        if len(paths) != len(labels):
            raise ValueError(f"ImageList: {len(paths)} paths but {len(labels)} labels")
        if not paths:
            raise ValueError("ImageList: no images given")
        if kind not in ("auto", "single", "multi", "regression"):
            raise ValueError(f"ImageList: kind must be 'auto', 'single', 'multi' or 'regression', got {kind!r}")
        self.paths = [os.path.join(os.fspath(root), os.fspath(p)) if root is not None else os.fspath(p) for p in paths]
        self.transform = transform
        if kind == "auto":
            first = labels[0]
            if isinstance(first, (list, tuple, set, frozenset)):
                kind = "multi" if all(isinstance(v, (str, int, np.integer)) for lab in labels for v in lab) else "regression"
                if kind == "regression" and not all(isinstance(v, (float, int, np.number)) for lab in labels for v in lab):
                    raise ValueError("ImageList: cannot tell the kind of these labels; pass kind=")
            elif isinstance(first, (float, np.floating)) or hasattr(first, "shape"):
                kind = "regression"
            else:
                kind = "single"
        self.kind = kind
        if kind == "regression":
            self.targets = [np.asarray(lab, dtype=np.float32) for lab in labels]
            self.classes = None
            return
        flat = [v for lab in labels for v in (lab if kind == "multi" else [lab])]
        if all(isinstance(v, str) for v in flat):
            self.classes = sorted(set(flat))
            index = {c: i for i, c in enumerate(self.classes)}
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
            n = int(num_classes) if num_classes is not None else (max(flat) + 1 if flat else 0)
            if flat and (min(flat) < 0 or max(flat) >= n):
                raise ValueError(f"ImageList: labels must lie in [0, {n}), got {min(flat)}..{max(flat)}")
            self.classes = list(range(n))
            index = {i: i for i in range(n)}
        else:
            raise ValueError("ImageList: class labels must be all ints or all strings")
        if num_classes is not None and int(num_classes) != len(self.classes):
            raise ValueError(f"ImageList: num_classes={num_classes} but the labels name {len(self.classes)} classes")
        if kind == "single":
            self.targets = [np.int64(index[lab]) for lab in labels]
        else:
            self.targets = []
            for lab in labels:
                t = np.zeros(len(self.classes), dtype=np.float32)
                t[[index[v] for v in lab]] = 1.0
                self.targets.append(t)

    @property
    def class_to_idx(self) -> dict:
        return {c: i for i, c in enumerate(self.classes or [])}

    @property
    def samples(self) -> list:
        return list(zip(self.paths, self.targets))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        img = load_image(self.paths[index])
        return (self.transform or _default_transform)(img), self.targets[index]

    def __repr__(self) -> str:
        return f"ImageList(samples={len(self)}, kind={self.kind!r})"


class Subset:
    """The items ``indices`` of ``dataset`` (a validation split, say), in that order."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, samples={len(self)})"


def split_indices(targets, val_size=0.2, seed=0):
    """``(train_idx, val_idx)``: a stratified random split, ``val_size`` of each class held out
    (at least one image of every class with two or more), drawn from ``default_rng(seed)``."""
    if not 0.0 <= val_size < 1.0:
        raise ValueError(f"split_indices: val_size must lie in [0, 1), got {val_size}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(val_size * len(idx)))
        if val_size > 0 and k == 0 and len(idx) > 1:
            k = 1
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return sorted(train), sorted(val)
