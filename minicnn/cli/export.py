"""``minicnn export ARCH --weights FILE OUT.onnx``: write a model as an ONNX file.

    minicnn export resnet18 --weights resnet18.safetensors resnet18.onnx
    minicnn export digits_convnet --weights digits.safetensors digits.onnx --opset 13 --static-batch

The model is built by name (``minicnn summary``'s list), given the weights (any file
``minicnn.io.weights.read_state_dict`` reads; a ResNet's architecture is read from them), and
written in eval form by ``minicnn.onnx.export``. Needs ``pip install "minicnn[onnx]"``.
"""
from __future__ import annotations

import sys


def _run(args) -> int:
    import numpy as np

    from .. import onnx as mc_onnx
    from ..models import available, get_model
    from .summary import default_input_shape

    if args.arch not in available():
        raise ValueError(f"unknown model {args.arch!r}; available: {', '.join(available())}")
    if not str(args.out).endswith(".onnx"):
        raise ValueError(f"the output must name a .onnx file, got {args.out!r}")
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(args.arch)
    if shape is None:
        raise ValueError(f"model {args.arch!r} has no default input shape; pass --input-shape C H W")
    if min(shape) < 1:
        raise ValueError(f"--input-shape needs positive sizes, got {' '.join(map(str, shape))}")
    if args.weights and args.arch.startswith("resnet"):
        from ..models.resnet import resnet_from_state_dict

        model = resnet_from_state_dict(args.weights)
    else:
        model = get_model(args.arch)
        if args.weights:
            from ..io.weights import read_state_dict

            model.load_state_dict(read_state_dict(args.weights))
        else:
            print(f"minicnn export: no --weights given: writing {args.arch} with freshly initialised weights",
                  file=sys.stderr)
    mc_onnx.export(model.eval(), args.out, np.zeros((1,) + shape, np.float32), opset=args.opset,
                   dynamic_batch=not args.static_batch)
    print(f"wrote {args.out}: {args.arch}, input (N, {', '.join(map(str, shape))}), opset {args.opset}")
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="write a model as an ONNX file",
        description="Build a registered model, load its weights and write it as ONNX (batchnorm in eval "
                    "form, batch dimension symbolic unless --static-batch). Needs the onnx extra: "
                    'pip install "minicnn[onnx]".',
    )
    p.add_argument("arch", metavar="ARCH", help="model name, as `minicnn summary` takes")
    p.add_argument("out", metavar="OUT.onnx", help="where to write the file")
    p.add_argument("--weights", metavar="FILE", help="weights (.safetensors, .pth, .npz); default: fresh init")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset to write (default 17)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="one input sample's shape (default: the model's usual one)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of a symbolic N")
    p.set_defaults(func=_run)
