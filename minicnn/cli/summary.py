"""``minicnn summary MODEL``: the layer table (output shapes, parameter counts) of a registered model."""
from __future__ import annotations

# one sample's (C, H, W) per model family; other models need --input-shape
DEFAULT_INPUT_SHAPES = {"digits_convnet": (1, 8, 8)}
RESNET_INPUT_SHAPE = (3, 224, 224)


def default_input_shape(name: str):
    """The input shape ``summary`` uses for ``name`` when none is given, or None."""
    if name in DEFAULT_INPUT_SHAPES:
        return DEFAULT_INPUT_SHAPES[name]
    if name.startswith(("resnet", "vgg", "unet")):
        return RESNET_INPUT_SHAPE
    return None


def register(subparsers) -> None:
    """Add the ``summary`` subcommand."""
    from ..models import available

    p = subparsers.add_parser(
        "summary",
        help="print a model's layers, output shapes and parameter counts",
        description="Print a Keras-style table of a registered model: every layer's output shape and "
                    "parameter count, and the totals.",
    )
    p.add_argument("model", metavar="MODEL", help=f"model name: {', '.join(available())}; or an ONNX file (.onnx)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="one input sample's shape (default: 1 8 8 for digits_convnet, 3 224 224 for resnets, vggs and unet)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Build the model and print its summary."""
    from ..models import available, get_model

    if args.model.endswith(".onnx"):
        from ._onnx import summary

        return summary(args.model, args.input_shape)
    if args.model not in available():
        raise ValueError(f"unknown model {args.model!r}; available: {', '.join(available())}")
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(args.model)
    if shape is None:
        raise ValueError(f"model {args.model!r} has no default input shape; pass --input-shape C H W")
    if min(shape) < 1:
        raise ValueError(f"--input-shape needs positive sizes, got {' '.join(map(str, shape))}")
    model = get_model(args.model)
    model.summary(shape)
    return 0
