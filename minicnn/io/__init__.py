"""Reading and writing files: weights and checkpoints.

- ``minicnn.io.safetensors``: our own safetensors reader/writer (``load_file``, ``save_file``)
- ``minicnn.io.pth``: PyTorch ``.pth`` checkpoints (zip and legacy) read without torch
- ``minicnn.io.weights``: format auto-detection, key renaming (Hugging Face -> torchvision),
  the ResNet key/shape table and ``convert``
- ``minicnn.io.fetch``: verified downloads of torchvision's ResNet weights into the cache
- ``minicnn.io.checks``: first-run checks on weight files (missing, another model's, seeded)

Submodules import on first use, so ``import minicnn.io`` costs nothing; the common entry points
are also reachable here (``minicnn.io.read_state_dict``, ``minicnn.io.convert``, ...).
"""
import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "load_file": "safetensors",
    "save_file": "safetensors",
    "read_metadata": "safetensors",
    "read_pth": "pth",
    "load_pth": "pth",
    "read_state_dict": "weights",
    "convert": "weights",
    "detect_format": "weights",
    "expected_resnet_shapes": "weights",
    "expected_shapes": "weights",
    "check_state_dict": "weights",
    "infer_arch": "weights",
    "weights_home": "weights",
    "download": "fetch",
    "fetch_weights": "fetch",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
