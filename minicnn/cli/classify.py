"""``minicnn classify IMG_OR_DIR...``: top-k ImageNet classes of photos with a ResNet-18/34.

    minicnn classify cat.jpg photos/ --topk 3
    minicnn classify photos/ --json --weights resnet18.safetensors --batch-size 16

Images are read with Pillow (any mode; EXIF orientation applied), preprocessed as torchvision's
ImageNet evaluation transform (or ``--preprocess center_crop``), and classified in batches. A file
that cannot be read is reported on stderr by name and skipped; the others are still classified
and the exit status is 1. The architecture (18 or 34) is read from the weights.
"""
from __future__ import annotations

import sys

NO_WEIGHTS = (
    "no weights given (--weights) and none cached in {home}. Get torchvision's ResNet-18 weights with "
    "`minicnn weights fetch resnet18`, or convert a checkpoint obtained elsewhere with "
    "`minicnn convert FILE.pth resnet18.safetensors` and pass --weights resnet18.safetensors"
)


def default_weights():
    """The file ``minicnn weights fetch`` leaves in ``weights_home()``: ``resnet18.safetensors``
    (else ``resnet34.safetensors``), or None when neither is there."""
    from ..io.weights import weights_home

    for arch in ("resnet18", "resnet34"):
        path = weights_home() / f"{arch}.safetensors"
        if path.is_file():
            return path
    return None


def load_model(weights):
    """The ResNet described by ``weights`` (a path, or None for the cached default), in eval mode."""
    from ..errors import MinicnnError
    from ..io.weights import weights_home
    from ..models.resnet import resnet_from_state_dict

    if weights is None:
        weights = default_weights()
        if weights is None:
            raise MinicnnError(NO_WEIGHTS.format(home=weights_home()))
    return resnet_from_state_dict(weights).eval(), str(weights)


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


def _softmax(logits):
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
                    probs = _softmax(to_numpy(model(batch)))
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

    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = find_images(args.inputs)
    model, weights = load_model(args.weights)
    labels = labels_for(model.num_classes, args.labels)
    topk = min(args.topk, model.num_classes)

    def show(res, bar):
        lines = [res["file"]] + [f"  {t['prob']:.4f}  {t['label']}" for t in res["top"]]
        bar.write("\n".join(lines), file=sys.stdout)

    def report(err, bar):
        bar.write(f"minicnn classify: {err['error']}", file=sys.stderr)

    results, errors = classify_files(
        model, paths, labels, topk, args.batch_size, args.preprocess,
        progress=any(Path(p).is_dir() for p in args.inputs),
        on_result=None if args.json else show, on_error=report,
    )
    if args.json:
        doc = {"weights": weights, "arch": model.arch, "preprocess": args.preprocess, "results": results, "errors": errors}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    if errors:
        print(f"minicnn classify: {len(errors)} of {len(paths)} images could not be read", file=sys.stderr)
        return 1
    return 0


def add_model_args(p):
    """The options classify and embed share: weights, batch size, preprocessing."""
    p.add_argument("--weights", metavar="W", help="ResNet-18/34 weights (.safetensors or .pth); default: the cached fetched file")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    p.add_argument("--preprocess", choices=["torchvision", "center_crop"], default="torchvision",
                   help="torchvision: resize shorter side to 256, centre crop 224 (default); "
                   "center_crop: largest centred square resized to 224")


def register(subparsers):
    """Add ``minicnn classify``."""
    p = subparsers.add_parser(
        "classify",
        help="top-k ImageNet classes of images with a ResNet-18/34",
        description="Classify image files (directories are searched recursively) and print the top-k class "
        "names with their probabilities. Unreadable files are reported on stderr; the rest still run.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or directories")
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (UTF-8); default: ImageNet's 1000")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.set_defaults(func=_run)
