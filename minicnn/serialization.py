"""``minicnn.save`` and ``minicnn.load``: state dicts to and from safetensors files.

    mc.save(model, "weights/model.safetensors")        # or a dict of arrays
    model.load_state_dict(mc.load("weights/model.safetensors"))

The round trip is exact: the same names in the same order, the same dtypes and the same values.
Files are plain safetensors (readable by the ``safetensors`` package and by PyTorch tools) with
``{"format": "minicnn"}`` in their metadata; a file appears only once completely written.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping

import numpy as np


def _state_of(obj) -> Mapping:
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(f"save() takes a Module or a dict of arrays, got {type(obj).__name__}")


def save(obj, path, metadata: Mapping | None = None) -> None:
    """Write a module's ``state_dict()`` (or a dict name -> array) to the safetensors file ``path``.

    ``metadata`` is an optional dict of str -> str stored in the header; ``format`` defaults to
    ``"minicnn"``. Arrays on any backend are brought to the host first. The parent directory is
    created if needed.
    """
    from . import __version__
    from .io import safetensors

    state = _state_of(obj)
    meta = {"format": "minicnn", "minicnn_version": __version__}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
        meta.update(metadata)
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    safetensors.save_file(state, path, meta)


def load(path) -> "OrderedDict[str, np.ndarray]":
    """Read a state dict: ``{name: numpy array}`` in the order it was saved.

    Reads safetensors files (ours or anyone's; bfloat16 widens to float32) and, for convenience,
    PyTorch ``.pth`` checkpoints (read without torch, names as stored). Use
    ``minicnn.io.weights.read_state_dict`` to also rename Hugging Face keys to torchvision's.
    """
    from .io import pth, safetensors
    from .io.weights import detect_format

    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "safetensors":
        return safetensors.load_file(path)
    return pth.load_pth(path)


def load_metadata(path) -> dict:
    """The metadata (str -> str) stored in a safetensors file written by :func:`save`."""
    from .io import safetensors

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return safetensors.read_metadata(path)
