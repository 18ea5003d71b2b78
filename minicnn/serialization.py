"""``minicnn.save`` and ``minicnn.load``: state dicts and checkpoints to and from safetensors files.

    mc.save(model, "weights/model.safetensors")        # or a dict of arrays
    model.load_state_dict(mc.load("weights/model.safetensors"))

    # a checkpoint, as torch.save is used: a dict of state dicts, arrays and plain values
    mc.save({"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict()}, "ckpt.safetensors")
    ckpt = mc.load("ckpt.safetensors")                 # the same nested dict back

The round trip is exact: the same names in the same order, the same dtypes and the same values.
Files are plain safetensors (readable by the ``safetensors`` package and by PyTorch tools) with
``{"format": "minicnn"}`` in their metadata; a file appears only once completely written.

A flat ``{str: array}`` (a model's state dict) is stored as it is. Anything nested is stored as
its arrays, named by their path (``optimizer/state/0/exp_avg``), plus the structure as tagged JSON
in the metadata entry ``minicnn_tree``: dicts (any str/int/float/bool/None keys), lists, tuples,
``Counter``, str, int (any size), float (NaN and infinities too), bool, None and numpy scalars.
Nothing is pickled, so loading a file never runs code. Other objects raise a TypeError naming
where they sit in the structure.
"""
from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from typing import Mapping

import numpy as np

__all__ = ["save", "load", "load_metadata"]

_TREE_KEY = "minicnn_tree"


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _is_flat(state: Mapping) -> bool:
    return all(isinstance(k, str) for k in state) and all(_is_array(v) for v in state.values())


def _encode(obj, path: str, arrays: dict):
    """``obj`` as JSON-able tagged data; arrays go to ``arrays`` under their path."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if np.isfinite(f) else {"__float__": repr(f)}
    if isinstance(obj, np.bool_):
        return bool(obj)
    if _is_array(obj):
        name, i = path or "tensor", 1
        while name in arrays:  # keys holding "/" could spell an earlier path
            name, i = f"{path or 'tensor'}#{i}", i + 1
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, Mapping):
        tag = "__counter__" if isinstance(obj, Counter) else "__dict__"
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool, np.integer, np.floating))):
                raise TypeError(f"save(): dict key {k!r} at '{path or '/'}' is a {type(k).__name__}; "
                                "keys must be str, int, float, bool or None")
            items.append([_encode(k, path, {}), _encode(v, f"{path}/{k}" if path else str(k), arrays)])
        return {tag: items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
    raise TypeError(
        f"save(): cannot store a {type(obj).__name__} at '{path or '/'}'; a checkpoint holds state dicts, "
        "arrays, and str/int/float/bool/None in dicts, lists and tuples (save obj.state_dict() instead of the object)"
    )


def _decode(obj, arrays: Mapping):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, val), = obj.items()
    if tag == "__array__":
        return arrays[val]
    if tag == "__float__":
        return float(val)
    if tag == "__tuple__":
        return tuple(_decode(v, arrays) for v in val)
    pairs = [(_decode(k, arrays), _decode(v, arrays)) for k, v in val]
    if tag == "__counter__":
        return Counter(dict(pairs))
    return OrderedDict(pairs) if all(isinstance(k, str) for k, _ in pairs) else dict(pairs)


def _state_of(obj):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(
        f"save() takes a Module, an optimizer or scheduler (their state_dict() is saved), or a dict of state dicts, "
        f"arrays and plain values; got {type(obj).__name__}"
    )


def save(obj, path, metadata: Mapping | None = None) -> None:
    """Write ``obj`` to the safetensors file ``path``.

    ``obj`` is a Module, an optimizer or a scheduler (its ``state_dict()`` is written), a dict
    name -> array, or a checkpoint dict nesting state dicts, arrays and plain values (see the module
    docstring). ``metadata`` is an optional dict of str -> str stored in the header; ``format``
    defaults to ``"minicnn"``. Arrays on any backend are brought to the host first. The parent
    directory is created if needed.
    """
    from . import __version__
    from .io import safetensors

    state = _state_of(obj)
    meta = {"format": "minicnn", "minicnn_version": __version__}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
        if _TREE_KEY in metadata:
            raise ValueError(f"save(): metadata key {_TREE_KEY!r} is reserved")
        meta.update(metadata)
    if _is_flat(state):
        tensors = state
    else:
        tensors = {}
        meta[_TREE_KEY] = json.dumps(_encode(state, "", tensors), separators=(",", ":"))
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    safetensors.save_file(tensors, path, meta)


def load(path):
    """Read what :func:`save` wrote: a state dict ``{name: numpy array}`` in the saved order, or
    the saved checkpoint structure (nested dicts, lists, tuples, plain values and arrays).

    Reads safetensors files (ours or anyone's; bfloat16 widens to float32) and, for convenience,
    PyTorch ``.pth`` checkpoints (read without torch, names as stored). Use
    ``minicnn.io.weights.read_state_dict`` to also rename Hugging Face keys to torchvision's.
    """
    from .io import pth, safetensors
    from .io.weights import detect_format

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load(): {path}: no such file")
    kind = detect_format(path)
    if kind == "safetensors":
        tensors, meta = safetensors.load(path)
        if _TREE_KEY in meta:
            return _decode(json.loads(meta[_TREE_KEY]), tensors)
        return tensors
    return pth.load_pth(path)


def load_metadata(path) -> dict:
    """The metadata (str -> str) stored in a safetensors file written by :func:`save`."""
    from .io import safetensors

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    return safetensors.read_metadata(path)
