"""``minicnn similar QUERY_IMAGE --index DIR --k 10``: the images of an index most like a query.

    minicnn embed photos/ --out emb/
    minicnn similar cat.jpg --index emb/ --k 5

The query is embedded with the model, stage and preprocessing that wrote the index (read from its
manifest; ``--weights``/``--model`` point at the file when it has moved), then compared with every
row by cosine similarity, shard by shard, so the index is never in memory whole. Prints one line per
neighbour, ``similarity  path``, best first (``--json``: one document).
"""
from __future__ import annotations

import sys


def _run(args) -> int:
    import json
    import os

    import numpy as np

    from ..errors import MinicnnError
    from ..io.images import load_image, preprocess
    from ..shards import open as open_index
    from ._stream import runner_for
    from .classify import pixel_limit

    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    index = open_index(args.index)
    job = dict(index.job)
    if job["task"] != "embed":
        raise MinicnnError(f"{args.index!r} holds classify results; `minicnn similar` needs an index written by "
                           "`minicnn embed --out DIR/`")
    if args.weights or args.model:
        job["weights"] = os.path.abspath(args.weights) if args.weights and not args.model else None
        job["model"] = os.path.abspath(args.model) if args.model else None
    for key in ("weights", "model"):
        if job.get(key) and not os.path.exists(job[key]):
            raise MinicnnError(f"the index was made with {key} {job[key]!r}, which is not here; "
                               f"pass --{key} with where it is now")
    from .. import get_backend

    job["backend"] = get_backend()  # the backend chosen for this command
    runner = runner_for(job)
    with pixel_limit(args.max_pixels):
        x = preprocess(load_image(args.query, max_pixels=args.max_pixels), mode=job["preprocess"])[None]
    from .. import backend

    with backend(job["backend"]):
        query = runner.columns(np.ascontiguousarray(x))["embedding"][0]
    if index.row_shape and tuple(query.shape) != tuple(index.row_shape):
        raise MinicnnError(f"the query's embedding has shape {tuple(query.shape)} but the index rows "
                           f"{tuple(index.row_shape)}: a different model or stage")
    hits = index.nearest(query, k=args.k)
    if args.json:
        print(json.dumps({"query": args.query, "index": args.index, "neighbours":
                          [{"path": p, "similarity": s} for s, p in hits]}, ensure_ascii=False, indent=2))
    else:
        for s, p in hits:
            print(f"{s:.4f}  {p}")
    if not index.complete:
        print(f"minicnn similar: note: {args.index!r} is an unfinished run ({index.rows} rows so far); "
              "finish it with --resume", file=sys.stderr)
    return 0


def register(subparsers):
    """Add ``minicnn similar``."""
    p = subparsers.add_parser(
        "similar",
        help="nearest neighbours of an image in an index written by `minicnn embed --out DIR/`",
        description="Embed QUERY_IMAGE with the index's own model and stage and print the K most similar "
                    "images of the index by cosine similarity, computed shard by shard.",
    )
    p.add_argument("query", metavar="QUERY_IMAGE", help="the image to find neighbours of")
    p.add_argument("--index", required=True, metavar="DIR", help="a results directory of `minicnn embed --out DIR/`")
    p.add_argument("--k", type=int, default=10, help="how many neighbours (default 10)")
    p.add_argument("--weights", metavar="W", help="the index's weights file, when it is no longer where the index says")
    p.add_argument("--model", metavar="FILE.onnx",
                   help="the index's ONNX model, when it is no longer where the index says")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N", help="refuse a query of more than N pixels")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_run)
