"""Plumbing shared by the lessons: command-line options, the sample photos, the ResNet-18 they
look inside, and saving figures. Each lesson imports this file from its own folder."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
try:
    import minicnn  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import minicnn as mc  # noqa: E402

IMAGES = Path(mc.__file__).resolve().parent / "data" / "images"
SAMPLES = ("chelsea", "coffee", "rocket", "astronaut", "camera")


def parser(description, number, weights=False):
    """The options every lesson takes: ``--out DIR``, ``--quick``, ``--backend``, ``--seed`` (and
    ``--weights PATH`` for the lessons that use ResNet-18)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=f"out/{number}", help="folder for the PNG figures (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small inputs and few steps: seconds instead of minutes")
    p.add_argument("--backend", choices=["numpy", "numba", "cupy"], help="compute backend (default: minicnn's)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and noise")
    if weights:
        p.add_argument("--weights", help="ResNet-18 weights (safetensors or .pth with torchvision's names); "
                                         "without it, seeded random weights stand in for ImageNet ones")
    return p


def setup(args):
    """Create the output folder, pick the backend, seed minicnn; return the folder as a Path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.backend:
        mc.set_backend(args.backend)
    mc.manual_seed(args.seed)
    return out


def photo(name, size=224, grey=False):
    """A sample photo: (3, size, size) ImageNet-normalised float32, or with ``grey=True`` an
    (H, W) float array in [0, 1] at full resolution (longest side 320 px)."""
    from PIL import Image

    from minicnn.io.images import load_image, preprocess

    path = IMAGES / f"{name}.jpg"
    if grey:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return preprocess(load_image(path), mode="center_crop", size=size)


def photos(size=224, names=SAMPLES):
    """All sample photos as one batch (N, 3, size, size)."""
    return np.stack([photo(n, size) for n in names])


def resnet(args):
    """ResNet-18 in eval mode and a phrase for figure titles saying which weights it has."""
    from minicnn.models.resnet import resnet18, seeded_state_dict

    path = getattr(args, "weights", None)
    if path:
        return resnet18(weights=path).eval(), f"weights: {Path(path).name}"
    model = resnet18(weights=seeded_state_dict("resnet18", args.seed)).eval()
    return model, f"seeded random weights, not ImageNet (seed {args.seed})"


def show(x):
    """Undo the ImageNet normalisation of a (3, H, W) input: an (H, W, 3) image in [0, 1]."""
    from minicnn.io.images import IMAGENET_MEAN, IMAGENET_STD

    mean = np.asarray(IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD).reshape(3, 1, 1)
    return np.clip(np.asarray(x) * std + mean, 0.0, 1.0).transpose(1, 2, 0)


def save(fig, out, name):
    """Write ``fig`` as ``out/name`` and say so."""
    from minicnn import viz

    path = Path(out) / name
    viz.save_figure(fig, path)
    print(f"wrote {path}")
    return path


def run(main):
    """Run a lesson's ``main``; bad input (a missing or broken weights file, say) prints one line
    naming the problem and exits with status 1 instead of a traceback."""
    from minicnn.errors import MinicnnError

    try:
        main()
    except (MinicnnError, ValueError, OSError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)


class Timer:
    """``with Timer("forward"):`` prints how long the block took."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        print(f"{self.what}: {time.perf_counter() - self.t0:.2f} s")
        return False


def env_backend_note():
    """One line naming the backend in force (lessons print it first)."""
    return f"minicnn {mc.__version__}, backend {mc.get_backend()}" + (
        f" (MINICNN_BACKEND={os.environ['MINICNN_BACKEND']})" if os.environ.get("MINICNN_BACKEND") else "")
