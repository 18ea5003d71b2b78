"""First-run checks on weight files: one clear line for each way a first attempt goes wrong.

* a path that does not exist (:func:`require_weights_file`),
* a file of another model, e.g. ``digits_convnet.safetensors`` given to ``classify``
  (:func:`foreign_weights`: read from the metadata ``minicnn.save`` writes, else from the keys),
* ``weights="DEFAULT"`` / ``pretrained=True`` when no pretrained file is installed
  (:func:`named_weights`),
* seeded (untrained) weights, whose predictions mean nothing (:func:`weights_source`).

Long key lists are cut to a few names (:func:`summarize`), so a message stays one readable line.
"""
from __future__ import annotations

import os
import re

from ..errors import MinicnnError, WeightFormatError

__all__ = ["FETCH_HINT", "summarize", "require_weights_file", "file_metadata", "weights_source",
           "foreign_weights", "named_weights", "PRETRAINED_NAMES"]

FETCH_HINT = ("fetch torchvision's ImageNet weights with `minicnn weights fetch resnet18`, or convert a .pth you "
              "have with `minicnn convert FILE.pth resnet18.safetensors`")

# what torchvision accepts for weights= besides an enum member
PRETRAINED_NAMES = ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")


def summarize(items, n: int = 6, sep: str = ", ") -> str:
    """``a, b, c, ... (+97 more)``: the first ``n`` items and how many were left out."""
    items = [str(i) for i in items]
    if len(items) <= n:
        return sep.join(items)
    return sep.join(items[:n]) + f"{sep}... (+{len(items) - n} more)"


def require_weights_file(path) -> str:
    """``path`` as a str; FileNotFoundError / IsADirectoryError with the fix when it is not a file."""
    where = os.fspath(path)
    if not os.path.exists(where):
        raise FileNotFoundError(f"weights file {where!r} not found; give the path of a .safetensors or .pth file, "
                                f"or {FETCH_HINT}")
    if os.path.isdir(where):
        raise IsADirectoryError(f"weights path {where!r} is a directory; give a .safetensors or .pth file")
    return where


def file_metadata(path) -> dict:
    """The safetensors metadata of ``path`` ({} for other formats or unreadable headers)."""
    from .safetensors import read_metadata

    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return {}
        return dict(read_metadata(path))
    except (OSError, WeightFormatError, ValueError):
        return {}


def weights_source(path) -> str | None:
    """``"seeded"`` (untrained weights from ``minicnn weights seed``), ``"trained"``, ... or None,
    from the file's ``source`` metadata."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        return None
    return file_metadata(path).get("source")


def _looks_like(keys) -> str | None:
    """The family the keys of a state dict belong to, as far as classify cares."""
    keys = list(keys)
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return "vgg"
    if "conv1.weight" in keys or any(re.match(r"layer\d\.", k) for k in keys):
        return "resnet"
    return None


def foreign_weights(path, state_dict=None, archs=None, wanted: str = "ResNet or VGG ImageNet weights") -> str | None:
    """A one-line explanation when the file at ``path`` holds another model's weights, else None.

    The metadata decides first (``model`` / ``architecture`` written by ``minicnn.save`` and
    ``minicnn train``: ``"digits_convnet"``); without it, keys that look like neither a ResNet nor
    a VGG (``0.weight``, ``3.bias``, ...) do.
    """
    where = os.fspath(path)
    meta = file_metadata(where)
    model = meta.get("model") or meta.get("architecture") or meta.get("arch")
    if model and archs is not None and model not in archs:
        how = " (written by `minicnn train`)" if meta.get("dataset") else ""
        return (f"{where} is a {model} weights file{how}, not {wanted}; use it with the model it was trained for, "
                f"or {FETCH_HINT}")
    if state_dict is not None and _looks_like(state_dict) is None:
        keys = [k for k in state_dict if not k.endswith("num_batches_tracked")]
        return (f"{where} holds {len(keys)} tensors named like {summarize(keys, 3)}: not {wanted} "
                f"(another model's file?); {FETCH_HINT}")
    return None


def named_weights(arch: str, name, pretrained=None):
    """The path torchvision-style ``weights="DEFAULT"`` / ``pretrained=True`` mean here: the converted
    ImageNet file ``minicnn weights fetch`` leaves in the cache. Raises MinicnnError explaining how
    to get it when it is not there (minicnn ships no pretrained weights)."""
    from .weights import weights_home

    path = weights_home() / f"{arch}.safetensors"
    if path.is_file():
        return path
    asked = f"pretrained={pretrained!r}" if pretrained is not None else f"weights={name!r}"
    raise MinicnnError(
        f"{arch}({asked}): minicnn ships no pretrained weights and none are cached in {weights_home()}; "
        f"run `minicnn weights fetch {arch}` (downloads torchvision's ImageNet file and converts it) and call "
        f"{arch}(weights='DEFAULT') again, or pass weights='path/to/{arch}.safetensors'"
    )
