"""``minicnn weights fetch|list|seed``: pretrained weights in the cache, and seeded test weights."""
from __future__ import annotations

import os


def register(subparsers) -> None:
    """Add the ``weights`` subcommand and its actions."""
    p = subparsers.add_parser("weights", help="fetch, list or generate weight files",
                              description="Manage ResNet weight files in the cache ($MINICNN_HOME, else "
                                          "~/.cache/minicnn).")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    f = sub.add_parser("fetch", help="download torchvision's ImageNet weights and convert them",
                       description="Download torchvision's official checkpoint (hash-checked), convert it, "
                                   "and print the converted file's path. Reuses the cache.")
    f.add_argument("arch", choices=["resnet18", "resnet34"])
    f.add_argument("--dest", help="directory to store the files in (default: the cache)")
    f.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    f.add_argument("--url", help="download from this address instead (a mirror of torchvision's file; the hash "
                                 "prefix in its file name is still checked)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_fetch)

    ls = sub.add_parser("list", help="list the weight files in the cache")
    ls.add_argument("--dest", help="directory to list (default: the cache)")
    ls.set_defaults(func=_list)

    from ..models import SEEDED

    s = sub.add_parser("seed", help="write deterministic seeded (untrained) weights for an architecture",
                       description="Write the seeded weights of minicnn.models.seeded_state_dict(ARCH, SEED): "
                                   "untrained, but identical on every machine; useful for tests and demos. "
                                   "A U-Net is named by its encoder (unet-resnet34); full-size VGGs are "
                                   "over 500 MB.")
    s.add_argument("arch", choices=SEEDED)
    s.add_argument("out", help="output .safetensors file")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s.add_argument("--num-classes", type=int, default=None,
                   help="outputs of the classifier (default 1000) or classes of a U-Net (default 1)")
    s.set_defaults(func=_seed)


def _fetch(args) -> int:
    from ..io.fetch import fetch_weights

    path = fetch_weights(args.arch, dest=args.dest, progress=not args.quiet, timeout=args.timeout, url=args.url)
    print(path)
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _list(args) -> int:
    from ..errors import WeightFormatError
    from ..io.safetensors import read_metadata
    from ..io.weights import weights_home

    home = os.path.expanduser(args.dest) if args.dest else str(weights_home())
    if not os.path.isdir(home):
        print(f"{home}: no weights yet (the directory does not exist)")
        return 0
    names = sorted(n for n in os.listdir(home) if n.endswith((".safetensors", ".pth", ".pt", ".part")))
    if not names:
        print(f"{home}: no weights yet")
        return 0
    print(home)
    for n in names:
        path = os.path.join(home, n)
        note = ""
        if n.endswith(".safetensors"):
            try:
                meta = read_metadata(path)
                note = ", ".join(f"{k}={meta[k]}" for k in ("architecture", "source") if k in meta)
            except WeightFormatError as e:
                note = f"unreadable: {e}"
        elif n.endswith(".part"):
            note = "incomplete download"
        print(f"  {n:<32} {_human(os.path.getsize(path)):>10}  {note}".rstrip())
    return 0


def _seed(args) -> int:
    from collections import OrderedDict

    import numpy as np

    from ..io.safetensors import save_file
    from ..io.weights import check_state_dict
    from ..models import seeded_state_dict

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"{args.out}: the output must be a .safetensors file")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    sd = seeded_state_dict(args.arch, args.seed, args.num_classes)
    sd = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in sd.items()
                     if not k.endswith("num_batches_tracked"))
    unet = args.arch.startswith("unet-")
    if not unet:  # a U-Net's keys come from the model itself; the classifiers' are checked against torchvision's
        check_state_dict(sd, args.arch, where=f"seeded_state_dict({args.arch!r}, {args.seed})")
    num_classes = sd["head.weight" if unet else "classifier.6.weight" if args.arch.startswith("vgg") else "fc.weight"].shape[0]
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    save_file(sd, args.out, {"format": "minicnn", "architecture": args.arch, "source": "seeded",
                             "seed": str(args.seed), "num_classes": str(num_classes)})
    print(f"wrote {args.out}: seeded {args.arch} weights (seed {args.seed}, {len(sd)} tensors)")
    return 0
