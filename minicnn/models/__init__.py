"""Architectures. ``get_model(name)`` builds any registered one by name (used by the CLI)."""
import importlib

# name -> (module, factory); modules import on first use
_REGISTRY = {
    "digits_convnet": ("convnet", "digits_convnet"),
    "resnet18": ("resnet", "resnet18"),
    "resnet34": ("resnet", "resnet34"),
}


def available():
    """Names accepted by ``get_model``."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs):
    """Build the model called ``name`` (see ``available()``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    mod, fn = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), fn)(**kwargs)


def __getattr__(name):
    for mod, fn in _REGISTRY.values():
        if fn == name:
            return getattr(importlib.import_module(f"{__name__}.{mod}"), fn)
    if name in ("ResNet", "BasicBlock"):
        return getattr(importlib.import_module(f"{__name__}.resnet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
