"""``minicnn embed IMG_OR_DIR... --layer avgpool --out emb.npz``: ResNet embeddings of images.

The output ``.npz`` holds ``embeddings`` (float32: (N, 512) for ``avgpool``, (N, 512, 7, 7) for
``layer4``, (N, classes) logits for ``fc``), ``files`` (the N image paths, in row order), and
``layer``, ``arch``, ``weights``, ``preprocess``. Compare rows with
``minicnn.embeddings.correlation_matrix`` or ``cosine_similarity_matrix``. Unreadable files are
reported on stderr and left out; the exit status is then 1.
"""
from __future__ import annotations

import sys

LAYERS = ("layer4", "avgpool", "fc")


def _run(args) -> int:
    import os
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from .. import no_grad, to_numpy
    from ..errors import MinicnnError
    from ..io.images import find_images
    from .classify import iter_batches, load_model, pixel_limit, seeded_note

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must name a .npz file, got {args.out!r}")
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a directory; name a .npz file")
    paths = find_images(args.inputs)
    if args.model:
        from ._onnx import load_for_images

        model, weights = load_for_images(args.model)
    else:
        model, weights = load_model(args.weights)
    source = seeded_note(weights)
    rows, files, failures = [], [], []
    progress = any(Path(p).is_dir() for p in args.inputs)
    with pixel_limit(getattr(args, "max_pixels", None)), \
            tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
        for ok, batch, failed in iter_batches(paths, args.batch_size, args.preprocess):
            for p, msg in failed:
                failures.append(p)
                bar.write(f"minicnn embed: {msg}", file=sys.stderr)
            if batch is not None:
                with no_grad():
                    acts = model.activations(batch, upto=args.layer)
                rows.append(np.asarray(to_numpy(acts[args.layer]), dtype=np.float32))
                files.extend(str(p) for p in ok)
            bar.update(len(ok) + len(failed))
    if not rows:
        raise MinicnnError(f"none of the {len(paths)} images could be read; nothing written")
    emb = np.concatenate(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed, so a failed or interrupted write leaves no partial .npz
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, embeddings=emb, files=np.array(files), layer=np.array(args.layer),
                 arch=np.array(model.arch), weights=np.array(weights), preprocess=np.array(args.preprocess),
                 weights_source=np.array(source or ""))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out}: {len(files)} embeddings of shape {tuple(emb.shape[1:])} from {args.layer}")
    if failures:
        print(f"minicnn embed: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
        return 1
    return 0


def register(subparsers):
    """Add ``minicnn embed``."""
    from .classify import add_model_args

    p = subparsers.add_parser(
        "embed",
        help="write ResNet embeddings of images to an .npz file",
        description="Run images through a ResNet-18/34 and save one layer's output per image "
        "(layer4 feature maps, the pooled 512-d avgpool vector, or the fc logits) with the file names.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or directories")
    p.add_argument("--layer", choices=LAYERS, default="avgpool", help="which output to save (default avgpool)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the embeddings")
    add_model_args(p)
    p.set_defaults(func=_run)
