"""The networks the explain page knows, their weights, and how an image becomes their input.

``digits``: the digits convnet (``minicnn train digits`` writes its weights to
``weights/digits_convnet.safetensors``), input one 8x8 grey image in [0, 1], ink high.
``fashion``: the Fashion-MNIST 2-conv net, with the weights minicnn ships (trained by minicnn;
``--weights`` takes another ``minicnn train fashion-mnist --arch convnet`` file), input one 28x28
grey image in [0, 1], the garment bright on black as in the data set.
``resnet18``: torchvision's ResNet-18 layout; its weights are a file given with ``--weights`` or
the one ``minicnn weights fetch resnet18`` cached. minicnn ships neither of those two, and an
untrained network would show meaningless predictions, so a missing file is an error that says how
to get one; a file of seeded (untrained) weights is accepted and the page says so at the top.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import MinicnnError

__all__ = ["MODELS", "DIGITS_WEIGHTS", "load_model", "load_input", "digits_input", "fashion_input"]

MODELS = ("digits", "fashion", "resnet18")
DIGITS_WEIGHTS = os.path.join("weights", "digits_convnet.safetensors")  # where `minicnn train digits` writes


def load_model(name: str, weights=None):
    """``(model, weights_path, warning, labels)`` for ``name`` (``digits``, ``fashion`` or ``resnet18``), in eval mode.

    ``warning`` is a line for the page when the weights are seeded (untrained), else None.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    from ..io.checks import weights_source

    if name == "digits":
        from .. import load
        from ..models import digits_convnet

        if weights is None:
            if not os.path.isfile(DIGITS_WEIGHTS):
                raise MinicnnError(
                    f"the digits model needs trained weights: none given (--weights) and no {DIGITS_WEIGHTS}; "
                    "`minicnn train digits` trains and writes them in seconds")
            weights = DIGITS_WEIGHTS
        if not os.path.isfile(weights):
            raise MinicnnError(f"weights file {weights!r} does not exist")
        sd = load(weights)
        if "0.weight" not in sd or np.asarray(sd["0.weight"]).ndim != 4:
            raise MinicnnError(f"{weights}: not digits convnet weights (no 4-D '0.weight'); "
                               "`minicnn train digits` writes them")
        w0 = np.asarray(sd["0.weight"])
        n_out = np.asarray(sd["10.weight"]).shape[0] if "10.weight" in sd else 10
        side = int(round((np.asarray(sd["7.weight"]).shape[1] // 32) ** 0.5)) * 4 if "7.weight" in sd else 8
        model = digits_convnet(num_classes=n_out, in_channels=w0.shape[1], image_size=side)
        try:
            model.load_state_dict(sd)
        except (KeyError, ValueError) as e:
            raise MinicnnError(f"{weights}: not digits convnet weights ({str(e).strip()})") from None
        labels = [str(k) for k in range(n_out)]
        return model.eval(), str(weights), _seeded_warning(weights_source(weights), weights), labels
    if name == "fashion":
        from ..data.mnist import FashionMNIST
        from ..models.fashion import WEIGHTS_DIR, fashion_convnet

        if weights is None:
            weights = os.path.join(WEIGHTS_DIR, "fashion_convnet.safetensors")  # shipped with minicnn
        if not os.path.isfile(weights):
            raise MinicnnError(f"weights file {str(weights)!r} does not exist")
        try:
            model = fashion_convnet(weights=weights)
        except (KeyError, ValueError) as e:
            raise MinicnnError(f"{weights}: not fashion_convnet weights ({str(e).strip()}); "
                               "`minicnn train fashion-mnist --arch convnet` writes them") from None
        return model.eval(), str(weights), _seeded_warning(weights_source(weights), weights), list(FashionMNIST.classes)
    from ..cli.classify import NO_WEIGHTS, default_weights, model_from_weights, trained_labels

    if weights is None:
        weights = default_weights("resnet18")
        if weights is None:
            from ..io.weights import weights_home

            raise MinicnnError("resnet18 needs weights: " + NO_WEIGHTS.format(home=weights_home())
                               + "; `minicnn weights seed resnet18 FILE` writes untrained ones, shown with a warning")
    weights = str(weights)
    if not os.path.isfile(weights):
        raise MinicnnError(f"weights file {weights!r} does not exist")
    model = model_from_weights(weights, "resnet18").eval()
    labels = trained_labels(weights, model.num_classes)
    return model, weights, _seeded_warning(weights_source(weights), weights), labels


def _seeded_warning(source, weights):
    if source == "seeded":
        return (f"{os.path.basename(str(weights))} holds seeded, untrained weights: every number is what this network "
                "computes, but its predictions mean nothing")
    return None


def digits_input(ink, side: int = 8) -> np.ndarray:
    """A grey image (H, W), ink high in [0, 1], as the digits data set made its images:
    the ink's bounding box scaled (aspect kept) into a 32x32 bitmap, thresholded at 0.5, and
    the "on" pixels of each 4x4 block counted (0..16) and divided by 16. Returns float32 (1, side, side).
    """
    from PIL import Image

    a = np.asarray(ink, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"explain: expected a grey image (H, W), got shape {a.shape}")
    big = side * 4
    on = np.argwhere(a > 0.1)
    out = np.zeros((big, big), dtype=np.float64)
    if len(on):
        (r0, c0), (r1, c1) = on.min(axis=0), on.max(axis=0) + 1
        crop = a[r0:r1, c0:c1]
        h, w = crop.shape
        scale = big / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = Image.fromarray(np.clip(crop * 255, 0, 255).astype(np.uint8)).resize((nw, nh), Image.BILINEAR)
        top, left = (big - nh) // 2, (big - nw) // 2
        out[top:top + nh, left:left + nw] = np.asarray(img, dtype=np.float64) / 255
    bitmap = (out >= 0.5).astype(np.float32)
    counts = bitmap.reshape(side, 4, side, 4).sum(axis=(1, 3))
    return (counts / np.float32(16))[None].astype(np.float32)


def fashion_input(grey, side: int = 28) -> np.ndarray:
    """A grey image (H, W) in [0, 1] as Fashion-MNIST made its images from product photos (Xiao et
    al., 2017, without their sharpening step): the edges close to the colour of the corners trimmed,
    the longest side resized to ``side``, the shorter one extended to ``side`` with that colour and
    the picture centred, and the intensities negated when the background is light, so the garment
    is bright on black. An image already ``side`` x ``side`` is only negated (when light): the data
    set's own images pass unchanged. Returns float32 (1, side, side).
    """
    from PIL import Image

    a = np.asarray(grey, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"explain: expected a grey image (H, W), got shape {a.shape}")
    background = float(np.median([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]]))
    if a.shape != (side, side):
        far = np.abs(a - background) > 0.1  # not background
        if far.any():
            rows, cols = np.flatnonzero(far.any(axis=1)), np.flatnonzero(far.any(axis=0))
            a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = a.shape
        scale = side / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = np.asarray(Image.fromarray(a.astype(np.float32)).resize((nw, nh), Image.BILINEAR),
                           dtype=np.float64)
        a = np.full((side, side), background)
        top, left = (side - nh) // 2, (side - nw) // 2
        a[top:top + nh, left:left + nw] = small
    if background > 0.5:
        a = 1.0 - a
    return np.clip(a, 0.0, 1.0).astype(np.float32)[None]


def load_input(name: str, path, model=None):
    """``(x, input_kind, norm)``: image file ``path`` as the network input of model ``name``.

    ``digits``: grey, inverted when the background is light (the data set's ink is high), then
    :func:`digits_input`. ``fashion``: grey, then :func:`fashion_input`. ``resnet18``:
    torchvision's evaluation preprocessing (224x224, ImageNet-normalised); ``norm`` is the
    (mean, std) that undo it for display.
    """
    from ..io.images import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess

    img = load_image(path)
    if name == "digits":
        grey = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        if grey.mean() > 0.5:  # dark ink on light paper
            grey = 1.0 - grey
        side = getattr(model, "image_size", 8)
        return digits_input(grey, side), "gray", None
    if name == "fashion":
        return fashion_input(np.asarray(img.convert("L"), dtype=np.float64) / 255.0), "gray", None
    return preprocess(img), "rgb", [list(IMAGENET_MEAN), list(IMAGENET_STD)]
