"""ONNX files in the CLI: ``classify``/``embed --model FILE.onnx`` and ``summary FILE.onnx``."""
from __future__ import annotations

from pathlib import Path

IMAGE_SHAPE = (3, 224, 224)


def load_for_images(path):
    """An ONNX image classifier for ``classify``/``embed``: (model in eval mode, its path). The model
    gets ``arch`` (the file name) and ``num_classes`` (read from one forward pass on a zero image).
    Its declared input must accept (N, 3, 224, 224), the preprocessed images."""
    import numpy as np

    from .. import no_grad
    from .. import onnx as mc_onnx

    net = mc_onnx.load(path)
    if len(net.input_names) != 1:
        raise ValueError(f"{path}: the ONNX model takes {len(net.input_names)} inputs; an image model takes one")
    declared = net.input_shapes[0]
    if declared is not None and (len(declared) != 4 or any(
            d is not None and d != want for d, want in zip(declared[1:], IMAGE_SHAPE))):
        raise ValueError(f"{path}: the ONNX model's input is declared {declared}; images come as (N, 3, 224, 224)")
    with no_grad():
        out = net(np.zeros((1,) + IMAGE_SHAPE, np.float32))
    if isinstance(out, tuple) or out.ndim != 2:
        raise ValueError(f"{path}: the ONNX model's output is not (N, classes) logits")
    net.arch = Path(path).name
    net.num_classes = int(out.shape[1])
    return net, str(path)


def summary(path, input_shape=None) -> int:
    """Print the layer table of an ONNX file (``input_shape``: one sample's (C, H, W), needed when
    the file does not declare it)."""
    from .. import onnx as mc_onnx

    net = mc_onnx.load(path)
    if input_shape is not None:
        if min(input_shape) < 1:
            raise ValueError(f"--input-shape needs positive sizes, got {' '.join(map(str, input_shape))}")
        net.summary(tuple(input_shape))
    else:
        net.summary()
    return 0
