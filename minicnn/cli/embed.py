"""``minicnn embed IMG_OR_DIR... --layer avgpool --out emb.npz``: ResNet or VGG embeddings of images.

The output ``.npz`` holds ``embeddings`` (float32; a ResNet-18/34 gives (N, 512) for ``avgpool``,
(N, 512, 7, 7) for ``layer4``, (N, classes) logits for ``fc``; a VGG gives (N, 4096) for
``penultimate``, (N, 512, 7, 7) for ``features``, (N, 25088) for ``avgpool``, logits for ``fc``),
``files`` (the N image paths, in row order), and ``layer``, ``arch``, ``weights``, ``preprocess``.
Without ``--layer`` the model's embedding is written: ``avgpool`` for a ResNet, ``penultimate``
for a VGG (what the last Linear layer reads in both). Compare rows with
``minicnn.embeddings.correlation_matrix`` or ``cosine_similarity_matrix``. Unreadable files are
reported on stderr and left out; the exit status is then 1.

``--out DIR/`` streams instead: Parquet shards and a manifest, resumable, optionally on a Dask
cluster (``minicnn.cli._stream``; docs/scale.md).
"""
from __future__ import annotations

import sys

LAYERS = ("layer4", "avgpool", "fc", "features", "penultimate")  # ResNet stages, then VGG's own


def _run(args) -> int:
    import os
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from .. import no_grad, to_numpy
    from ..errors import MinicnnError
    from ..io.images import find_images
    from .classify import compiled, iter_batches, load_model, pixel_limit, seeded_note

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    from ._stream import is_directory_out, run_stream, stream_only_options

    if out.suffix != ".npz" and is_directory_out(args.out):
        return run_stream(args, "embed")  # Parquet shards and a manifest in a results directory
    stream_only_options(args)
    if out.suffix != ".npz":
        raise ValueError(f"--out must name a .npz file or a results directory DIR/, got {args.out!r}")
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a directory; name a .npz file")
    paths = find_images(args.inputs)
    if args.model:
        from ._onnx import load_for_images

        model, weights = load_for_images(args.model)
    else:
        model, weights = load_model(args.weights)
    source = seeded_note(weights)
    layer = args.layer or getattr(model, "embedding_stage", "avgpool")
    stage = compiled_stage(compiled(model), layer)
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
                    if stage is not None:
                        acts = {layer: stage(batch)}
                    else:
                        acts = model.activations(batch, upto=layer)  # an unknown stage: the model's one-line error
                rows.append(np.asarray(to_numpy(acts[layer]), dtype=np.float32))
                files.extend(str(p) for p in ok)
            bar.update(len(ok) + len(failed))
    if not rows:
        raise MinicnnError(f"none of the {len(paths)} images could be read; nothing written")
    emb = np.concatenate(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed, so a failed or interrupted write leaves no partial .npz
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, embeddings=emb, files=np.array(files), layer=np.array(layer),
                 arch=np.array(model.arch), weights=np.array(weights), preprocess=np.array(args.preprocess),
                 weights_source=np.array(source or ""))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out}: {len(files)} embeddings of shape {tuple(emb.shape[1:])} from {layer}")
    if failures:
        print(f"minicnn embed: {len(failures)} of {len(paths)} images could not be read", file=sys.stderr)
        return 1
    return 0


def compiled_stage(fast, layer):
    """The compiled model's method that computes stage ``layer``, or None when it computes no such
    stage (a VGG's flattened avgpool) or the model was not compiled (``fast`` is the model). A
    compiled ONNX model is a ``CompiledModel`` with the imported graph's stages: ``layer4`` and
    ``avgpool`` around its last GlobalAveragePool, ``fc`` its output."""
    from ..inference import CompiledModel, CompiledVGG

    if isinstance(fast, CompiledVGG):
        stages = {"features": fast.forward_features, "penultimate": fast.embed, "fc": fast.forward}
    elif isinstance(fast, CompiledModel):
        stages = {"layer4": fast.forward_features, "avgpool": fast.embed, "fc": fast.forward}
    else:
        stages = {}
    return stages.get(layer)


def register(subparsers):
    """Add ``minicnn embed``."""
    from .classify import add_model_args

    p = subparsers.add_parser(
        "embed",
        help="write ResNet or VGG embeddings of images to an .npz file",
        description="Run images through a ResNet or a VGG and save one stage's output per image with the file "
        "names: a ResNet's layer4 feature maps, pooled avgpool vector or fc logits; a VGG's features maps, "
        "flattened avgpool, penultimate (4096-d) vector or fc logits.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or directories")
    p.add_argument("--layer", choices=LAYERS, default=None,
                   help="which output to save (default: the embedding, avgpool for a ResNet, penultimate for a VGG)")
    p.add_argument("--out", required=True, metavar="FILE.npz|DIR/",
                   help="where to write the embeddings: one .npz file, or a directory of Parquet shards (streamed)")
    add_model_args(p)
    from ._stream import add_stream_args

    add_stream_args(p)
    p.set_defaults(func=_run)
