"""``minicnn convert SRC DST.safetensors [--arch resnet50]``: any supported weight file to ours."""
from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``convert`` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="convert a PyTorch .pth / safetensors ResNet or VGG checkpoint to a minicnn .safetensors file",
        description="Convert torchvision/timm/Hugging Face ResNet weights or torchvision VGG weights (.pth zip or "
                    "legacy, or .safetensors) into a minicnn safetensors file, checking every key and shape. "
                    "Works without PyTorch.",
    )
    p.add_argument("src", help="input weights (.pth, .pt, .bin or .safetensors)")
    p.add_argument("dst", help="output file, e.g. resnet18.safetensors")
    from ..io.weights import ALL_ARCHS

    p.add_argument("--arch", choices=ALL_ARCHS, help="architecture (default: inferred from the keys)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Convert ``args.src`` to ``args.dst`` and print one line describing the result."""
    from ..io.weights import convert

    if not args.dst.endswith(".safetensors"):
        raise ValueError(f"{args.dst}: the output must be a .safetensors file")
    meta = convert(args.src, args.dst, arch=args.arch)
    print(f"wrote {args.dst}: {meta['architecture']} ({meta['num_classes']} classes) from {meta['source']} "
          f"[{meta['source_format']}, {meta['source_naming']} names], source sha256 {meta['sha256']}")
    return 0
