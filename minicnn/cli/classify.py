"""``minicnn classify IMG_OR_DIR...``: top-k ImageNet classes of photos with a ResNet or a VGG.

    minicnn classify cat.jpg photos/ --topk 3
    minicnn classify photos/ --json --weights resnet18.safetensors --batch-size 16

Images are read with Pillow (any mode; EXIF orientation applied), preprocessed as torchvision's
ImageNet evaluation transform (or ``--preprocess center_crop``), and classified in batches. A file
that cannot be read is reported on stderr by name and skipped; the others are still classified
and the exit status is 1. The architecture (ResNet-18/34/50/101/152, VGG-11..19 with or without
batchnorm) is read from the weights; ``--arch`` states it (and picks the cached file of that name).
"""
from __future__ import annotations

import sys

NO_WEIGHTS = (
    "no weights given (--weights) and none cached in {home}. Get torchvision's ResNet-18 weights with "
    "`minicnn weights fetch resnet18`, or convert a checkpoint obtained elsewhere with "
    "`minicnn convert FILE.pth resnet18.safetensors` and pass --weights resnet18.safetensors"
)


def default_weights(arch=None):
    """The file ``minicnn weights fetch`` (or ``convert``) leaves in ``weights_home()``:
    ``<arch>.safetensors`` when ``arch`` is given, else ``resnet18.safetensors`` (else
    ``resnet34.safetensors``); None when there is none."""
    from ..io.weights import weights_home

    for name in ((arch,) if arch else ("resnet18", "resnet34")):
        path = weights_home() / f"{name}.safetensors"
        if path.is_file():
            return path
    return None


def model_from_weights(weights, arch=None, num_classes=None):
    """The model (ResNet or VGG) that ``weights`` (a path or a state dict) describe, with them loaded.

    The architecture is inferred from the keys (``minicnn.io.weights.infer_arch``); ``arch`` states it,
    and weights of another architecture are refused by name.
    """
    from ..io.weights import ARCHS, VGG_ARCHS, infer_arch
    from ..models import get_model
    from ..models.resnet import read_weights

    source, sd = read_weights(weights)
    if source != "state dict":
        from ..errors import WeightFormatError
        from ..io.checks import foreign_weights

        why = foreign_weights(source, sd, archs=tuple(ARCHS) + VGG_ARCHS)
        if why:
            raise WeightFormatError(why)
    if arch is None:
        arch = infer_arch(sd)
    elif arch not in ARCHS and arch not in VGG_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(tuple(ARCHS) + VGG_ARCHS)}")
    if source != "state dict" and num_classes is None:
        from ..io.weights import check_state_dict, infer_arch as _found

        try:
            same = _found(sd) == arch
        except ValueError:
            same = True
        if same:  # another architecture gets get_model's own message
            check_state_dict(sd, arch, where=source)  # one line naming a few keys, not every missing one
    try:
        return get_model(arch, num_classes=num_classes, weights=sd)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg.replace("state dict: ", f"{source}: ", 1) if source != "state dict" else msg) from None


def load_model(weights, arch=None):
    """The model described by ``weights`` (a path, or None for the cached default), in eval mode, and
    the weights' name. ``arch`` states the architecture (see :func:`model_from_weights`)."""
    from ..errors import MinicnnError
    from ..io.weights import weights_home

    if weights is None:
        weights = default_weights(arch)
        if weights is None:
            hint = NO_WEIGHTS if arch in (None, "resnet18", "resnet34") else (
                "no weights given (--weights) and no {arch}.safetensors cached in {home}; convert a checkpoint with "
                "`minicnn convert FILE.pth {arch}.safetensors` and pass --weights {arch}.safetensors")
            raise MinicnnError(hint.format(home=weights_home(), arch=arch))
    return model_from_weights(weights, arch).eval(), str(weights)


def compiled(model):
    """``compile_inference(model)`` when ``model`` is one it compiles (a ResNet, a VGG, a model imported
    from ONNX), else ``model``.

    The compiled model computes the eval model's outputs (to float32 rounding) with BatchNorm
    folded and fused convs. Without autotuning: a command runs few batches, and timing every conv
    variant on the first batch of each shape would cost more than it saves.
    """
    from ..inference import compile_inference

    try:
        return compile_inference(model, autotune=False)
    except ValueError:  # not an architecture compile_inference takes: the model runs as it is
        return model


def iter_batches(paths, batch_size, mode):
    """Yield ``(loaded_paths, batch, failures)`` per chunk of ``batch_size`` paths.

    ``batch`` is float32 (n, 3, 224, 224) or None when no file of the chunk could be read;
    ``failures`` lists ``(path, message)`` for the files that could not.
    """
    import numpy as np

    from ..io.images import ImageReadError, load_image, preprocess

    for i in range(0, len(paths), batch_size):
        ok, arrays, failed = [], [], []
        for p in paths[i:i + batch_size]:
            try:
                arrays.append(preprocess(load_image(p), mode=mode))
                ok.append(p)
            except ImageReadError as e:
                failed.append((p, str(e)))
        yield ok, (np.stack(arrays) if arrays else None), failed


def softmax_probabilities(logits):
    """The softmax of each row of ``logits`` (N, classes), in float64: the class probabilities
    that ``classify`` and the streamed classify jobs report."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, file=sys.stderr, leave=False)


def classify_files(model, paths, labels, topk=5, batch_size=8, mode="torchvision", progress=False, on_result=None, on_error=None):
    """Classify image files; returns ``(results, errors)``.

    ``results``: one dict per readable image, ``{"file", "top": [{"index", "label", "prob"}, ...]}``
    with probabilities from the softmax of the logits, highest first. ``errors``: ``{"file",
    "error"}`` per unreadable file. ``on_result`` / ``on_error`` are called as each is known.
    """
    import numpy as np

    from .. import no_grad, to_numpy

    results, errors = [], []
    with _progress(len(paths), progress) as bar:
        for ok, batch, failed in iter_batches(paths, batch_size, mode):
            for p, msg in failed:
                errors.append({"file": str(p), "error": msg})
                if on_error:
                    on_error(errors[-1], bar)
            if batch is not None:
                with no_grad():
                    probs = softmax_probabilities(to_numpy(model(batch)))
                order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
                for p, row, idx in zip(ok, probs, order):
                    top = [{"index": int(j), "label": labels[j], "prob": float(row[j])} for j in idx]
                    results.append({"file": str(p), "top": top})
                    if on_result:
                        on_result(results[-1], bar)
            bar.update(len(ok) + len(failed))
    return results, errors


def _run(args) -> int:
    import json
    from pathlib import Path

    from ..io.images import find_images
    from ..io.labels import labels_for

    if args.topk is not None and args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    from ._stream import is_directory_out, run_stream, stream_only_options

    if args.out is not None:
        if not is_directory_out(args.out) or args.json:
            raise ValueError(f"--out names a results directory (DIR/, Parquet shards); got {args.out!r}"
                             + (" with --json, which prints to stdout instead" if args.json else ""))
        return run_stream(args, "classify")
    stream_only_options(args)
    paths = find_images(args.inputs)
    if args.model:
        from ._onnx import load_for_images

        model, weights = load_for_images(args.model)
    else:
        model, weights = load_model(args.weights, args.arch)
    labels = labels_for(model.num_classes, args.labels) if args.labels else trained_labels(weights, model.num_classes)
    if args.topk is not None and args.topk > model.num_classes:
        raise ValueError(f"--topk {args.topk} is more than the {model.num_classes} classes of {weights}; "
                         f"use --topk {model.num_classes} or less")
    topk = min(5, model.num_classes) if args.topk is None else args.topk
    source = seeded_note(weights)

    def show(res, bar):
        lines = [res["file"]] + [f"  {t['prob']:.4f}  {t['label']}" for t in res["top"]]
        bar.write("\n".join(lines), file=sys.stdout)

    def report(err, bar):
        bar.write(f"minicnn classify: {err['error']}", file=sys.stderr)

    with pixel_limit(getattr(args, "max_pixels", None)):
        results, errors = classify_files(
            compiled(model), paths, labels, topk, args.batch_size, args.preprocess,
            progress=any(Path(p).is_dir() for p in args.inputs),
            on_result=None if args.json else show, on_error=report,
        )
    if args.json:
        doc = {"weights": weights, "arch": model.arch, "preprocess": args.preprocess, "results": results, "errors": errors}
        if source:
            doc["weights_source"] = source
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    if errors:
        print(f"minicnn classify: {len(errors)} of {len(paths)} images could not be read", file=sys.stderr)
        return 1
    return 0


def trained_labels(weights, num_classes):
    """The class names ``minicnn train DIR`` stored in the weights' metadata, else :func:`labels_for`'s."""
    import json

    from ..io.checks import file_metadata
    from ..io.labels import labels_for

    if isinstance(weights, str):
        try:
            names = json.loads(file_metadata(weights).get("classes", "null"))
        except ValueError:
            names = None
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    return labels_for(num_classes)


def seeded_note(weights):
    """The weights' ``source`` metadata (``"seeded"`` for ``minicnn weights seed`` files), and for
    seeded weights a note on stderr that the outputs are those of an untrained network."""
    from ..io.checks import weights_source

    source = weights_source(weights) if isinstance(weights, str) else None
    if source == "seeded":
        print(f"minicnn: note: {weights} holds seeded (untrained) weights (source=seeded): the outputs are not "
              "meaningful predictions; `minicnn weights fetch resnet18` gets ImageNet-trained ones", file=sys.stderr)
    return source


class pixel_limit:
    """``--max-pixels``: within the block, Pillow's decompression-bomb limit is ``max_pixels`` (None:
    Pillow's default) and an image above it is an error naming the file (``load_image``), not a warning."""

    def __init__(self, max_pixels):
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
        self.max_pixels = max_pixels

    def __enter__(self):
        import warnings

        from PIL import Image

        self._saved = Image.MAX_IMAGE_PIXELS
        if self.max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = int(self.max_pixels)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # load_image raises instead
        return self

    def __exit__(self, *exc):
        from PIL import Image

        self._warn.__exit__(*exc)
        Image.MAX_IMAGE_PIXELS = self._saved
        return False


def add_model_args(p):
    """The options classify and embed share: weights, batch size, preprocessing."""
    p.add_argument("--weights", metavar="W", help="ResNet-18/34 weights (.safetensors or .pth); default: the cached fetched file "
                   "(classify also takes ResNet-50/101/152 and VGG weights)")
    p.add_argument("--model", metavar="FILE.onnx", help="an ONNX image classifier to run instead (input (N, 3, 224, 224))")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images of more than N pixels (default: Pillow's limit, about 89 million, which guards "
                        "against decompression bombs); raise it for a large image you trust")
    p.add_argument("--preprocess", choices=["torchvision", "center_crop"], default="torchvision",
                   help="torchvision: resize shorter side to 256, centre crop 224 (default); "
                   "center_crop: largest centred square resized to 224")


def register(subparsers):
    """Add ``minicnn classify``."""
    from ..io.weights import ALL_ARCHS

    p = subparsers.add_parser(
        "classify",
        help="top-k ImageNet classes of images with a ResNet or a VGG",
        description="Classify image files (directories are searched recursively) and print the top-k class "
        "names with their probabilities. Unreadable files are reported on stderr; the rest still run.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or directories")
    add_model_args(p)
    p.add_argument("--topk", type=int, default=None,
                   help="how many classes to show per image (default 5, or every class when there are fewer)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (UTF-8); default: ImageNet's 1000")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--out", default=None, metavar="DIR/",
                   help="stream the results into a directory of Parquet shards (path, label, score, topk) "
                        "instead of printing them")
    p.add_argument("--arch", choices=ALL_ARCHS, help="architecture (default: inferred from the weights); without "
                   "--weights, the cached <arch>.safetensors is used")
    from ._stream import add_stream_args

    add_stream_args(p)
    p.set_defaults(func=_run)
