"""Architectures. ``get_model(name)`` builds any registered one by name (used by the CLI)."""
import importlib

# name -> (module, factory); modules import on first use
_REGISTRY = {
    "digits_convnet": ("convnet", "digits_convnet"),
    "fashion_convnet": ("fashion", "fashion_convnet"),
    "fashion_convnet_bn": ("fashion", "fashion_convnet_bn"),
    "fashion_resnet": ("fashion", "fashion_resnet"),
    "resnet18": ("resnet", "resnet18"),
    "resnet34": ("resnet", "resnet34"),
    "resnet50": ("resnet", "resnet50"),
    "resnet101": ("resnet", "resnet101"),
    "resnet152": ("resnet", "resnet152"),
    **{a: ("vgg", a) for a in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")},
    # the module is not called unet: importing it would make minicnn.models.unet the module, not the factory
    "unet": ("segmentation", "unet"),
}


def available():
    """Names accepted by ``get_model``."""
    return sorted(_REGISTRY)


# what ``seeded_state_dict`` (and ``minicnn weights seed``) accepts: the classifiers by name, a U-Net by its encoder
SEEDED = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg13", "vgg16", "vgg19",
          "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "unet-resnet18", "unet-resnet34", "unet-resnet50")


def seeded_state_dict(arch: str, seed: int = 0, num_classes: int | None = None):
    """Deterministic (untrained) weights for ``arch`` from numpy alone: the same numbers on every machine.

    ``arch`` is one of ``SEEDED``; ``num_classes`` defaults to 1000 for a classifier, 1 for a U-Net.
    ResNets: ``minicnn.models.resnet.seeded_state_dict``; VGGs: ``minicnn.models.vgg.seeded_state_dict``;
    ``unet-<encoder>``: ``minicnn.models.segmentation.seeded_state_dict`` (transposed-conv upsampling).
    """
    if arch not in SEEDED:
        raise ValueError(f"no seeded weights for {arch!r}; available: {', '.join(SEEDED)}")
    if arch.startswith("unet-"):
        from .segmentation import seeded_state_dict as unet_seeded

        return unet_seeded(arch[len("unet-"):], seed, 1 if num_classes is None else num_classes)
    module = "vgg" if arch.startswith("vgg") else "resnet"
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), "seeded_state_dict")
    return fn(arch, seed, 1000 if num_classes is None else num_classes)


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
    if name in ("ResNet", "BasicBlock", "Bottleneck"):
        return getattr(importlib.import_module(f"{__name__}.resnet"), name)
    if name == "VGG":
        return getattr(importlib.import_module(f"{__name__}.vgg"), name)
    if name == "UNet":
        return getattr(importlib.import_module(f"{__name__}.segmentation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
