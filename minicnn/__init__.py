"""minicnn: a convolutional neural network engine written from scratch.

    import minicnn as mc
    from minicnn import nn, optim
    mc.set_backend("numpy")        # or "numba" (default on CPU), "cupy" (GPU)
"""
from . import nn, ops
from .backends import backend, get_backend, set_backend, to_numpy
from .grad_mode import is_grad_enabled, no_grad
from .random import manual_seed

__version__ = "0.1.0"


def __getattr__(name):
    # heavier subpackages load on first use so ``import minicnn`` stays fast
    import importlib

    if name in ("optim", "models", "io", "data", "train", "metrics", "viz", "augment", "transfer", "gradcam",
                "inference", "embeddings", "onnx", "callbacks"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("save", "load"):
        from . import serialization

        return getattr(serialization, name)
    if name == "lr_find":
        from .callbacks import lr_find

        return lr_find
    if name in ("fit", "evaluate", "predict", "DataLoader", "History"):
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")


__all__ = ["nn", "ops", "optim", "models", "backend", "get_backend", "set_backend", "to_numpy", "no_grad",
           "is_grad_enabled", "manual_seed", "save", "load", "fit", "evaluate", "predict", "DataLoader", "History", "lr_find"]
