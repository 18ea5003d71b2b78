"""What the streaming tests (test_stream.py, test_dask.py) run on: a folder of small generated
images (a few unreadable) and a tiny ONNX image model, cheap enough that a few hundred images run in
seconds on the numpy backend."""
from __future__ import annotations

import numpy as np

N_IMAGES = 203  # not a multiple of the shard size: the last shard is short
SHARD = 32
BATCH = 8
BAD = ("bad_000.png", "sub_b/bad_001.jpg")  # not images: listed as unreadable, never fatal


def make_images(root, n=N_IMAGES, seed=0):
    """``n`` images of 10..24 pixels a side in three sub-folders, plus the ``BAD`` files; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / ("sub_a", "sub_b", "sub_c")[i % 3]
        sub.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(10, 25, size=2)
        ext = ("png", "jpg", "bmp")[i % 3]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"img_{i:04d}.{ext}")
    for name in BAD:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"this is not an image")
    return root


def make_model(path, classes=4, seed=0):
    """A tiny image classifier as an ONNX file: a 16x16 stride-16 conv, ReLU, global average pool
    (its output is the ``avgpool`` embedding, 6 values) and a Linear to ``classes`` logits."""
    import minicnn as mc
    from minicnn import nn

    mc.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 16, stride=16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, classes)).eval()
    with mc.backend("numpy"):
        mc.onnx.export(model, str(path), np.zeros((1, 3, 224, 224), np.float32))
    return path
