"""Class names: the ImageNet-1k list that ships with the package, and custom label files.

``imagenet_classes()`` returns the 1000 names in index order (the first synonym of each WordNet
synset, as torchvision and most model zoos print them: 281 ``tabby``, 504 ``coffee mug``). Two
names repeat because two synsets share them: ``crane`` (134 the bird, 517 the machine) and
``maillot`` (638, 639). ``load_labels(path)`` reads any UTF-8 file with one name per line.
"""
from __future__ import annotations

import functools
import os
from importlib import resources

__all__ = ["imagenet_classes", "load_labels", "labels_for"]

NUM_IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _imagenet():
    text = resources.files("minicnn").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(text.splitlines())
    if len(names) != NUM_IMAGENET_CLASSES or not all(n.strip() for n in names):
        raise RuntimeError(f"the packaged imagenet_classes.txt is damaged: {len(names)} lines, expected 1000 names")
    return names


def imagenet_classes():
    """The 1000 ImageNet-1k class names, index i naming logit i of an ImageNet classifier."""
    return list(_imagenet())


def load_labels(path):
    """Class names from a text file: UTF-8 (a BOM is allowed), one name per line, in index order.

    Names may hold spaces and any script; surrounding whitespace is trimmed. A blank line anywhere
    (except the final newline) raises ValueError naming its line number, because it would shift
    every following index by one.
    """
    name = os.fspath(path)
    try:
        raw = open(name, "rb").read()
    except OSError as e:
        raise ValueError(f"cannot read labels file {name!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"labels file {name!r} is not UTF-8 text (bad byte at offset {e.start})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"labels file {name!r} is empty; it needs one class name per line")
    labels = []
    for i, line in enumerate(lines, start=1):
        label = line.strip()
        if not label:
            raise ValueError(
                f"labels file {name!r}: line {i} is blank; write one class name per line with no blank lines"
            )
        labels.append(label)
    return labels


def labels_for(num_classes, path=None):
    """The names for a classifier with ``num_classes`` outputs.

    ``path`` given: that file's labels, which must number ``num_classes``. Otherwise the ImageNet
    names when ``num_classes`` is 1000, else ``class 0``, ``class 1``, ...
    """
    if path is not None:
        labels = load_labels(path)
        if len(labels) != num_classes:
            raise ValueError(
                f"labels file {os.fspath(path)!r} has {len(labels)} names but the model has {num_classes} classes"
            )
        return labels
    if num_classes == NUM_IMAGENET_CLASSES:
        return imagenet_classes()
    return [f"class {i}" for i in range(num_classes)]
