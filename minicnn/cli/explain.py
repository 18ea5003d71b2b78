"""``minicnn explain IMAGE --model digits|fashion|resnet18``: a page that shows the network compute on IMAGE.

    minicnn explain seven.png --model digits --out seven.html
    minicnn explain shirt.png --model fashion --out shirt.html        # the shipped Fashion-MNIST net
    minicnn explain cat.jpg --model resnet18 --weights resnet18.safetensors --out cat.html
    minicnn explain seven.png --model digits --serve --port 8000     # draw digits, live

The page is one self-contained HTML file (no network): a column per layer with its feature maps,
shapes and parameter counts; a click on a map pixel shows the arithmetic that made it; the top-k
prediction, Grad-CAM and the first layer's filters. ``--serve`` serves it on 127.0.0.1, where the
page asks minicnn for channels not in the file and, for the digits model, reruns the forward pass
on a digit drawn on a canvas.
"""
from __future__ import annotations

import sys


def _run(args) -> int:
    from ..explain import load_input, load_model, page_data, write_page

    if args.channels is not None and args.channels != "all":
        try:
            n = int(args.channels)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--channels must be a positive number or 'all', got {args.channels!r}")
        args.channels = n
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if not args.serve and not args.out:
        raise ValueError("give --out FILE.html to write the page, or --serve to serve it")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    model, weights, warning, labels = load_model(args.model, args.weights)
    if args.topk > len(labels):
        raise ValueError(f"--topk {args.topk} is more than the {len(labels)} classes")
    x, kind, norm = load_input(args.model, args.image, model)
    if warning:
        print(f"minicnn explain: warning: {warning}", file=sys.stderr)
    common = dict(model_name=args.model, labels=labels, weights=weights, warning=warning, channels=args.channels,
                  input_kind=kind, input_norm=norm)
    if args.out:
        _, data = page_data(model, x, topk=args.topk, **common)
        size = write_page(args.out, data)
        top = data["topk"][0]
        print(f"wrote {args.out} ({size / 1e6:.1f} MB): {len(data['layers'])} layers; "
              f"prediction {top['label']} ({100 * top['prob']:.1f}%)")
    if args.serve:
        from ..explain import ExplainServer, make_server

        state = ExplainServer(model, x, **common)
        try:
            server = make_server(state, 8000 if args.port is None else args.port)
        except OSError as e:
            raise OSError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None
        host, port = server.server_address[:2]
        print(f"serving the explain page on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return 0


def register(subparsers):
    """Add ``minicnn explain``."""
    p = subparsers.add_parser(
        "explain",
        help="a self-contained HTML page that shows the network compute on an image, layer by layer",
        description="Write (or serve) a page that shows every layer's feature maps for IMAGE and, on a click, "
        "the arithmetic behind any number: patch x kernel products and their sum, batchnorm, pooling, dense and "
        "softmax, all minicnn's own float32 values. Also the top-k prediction, Grad-CAM and the first layer's filters.",
    )
    p.add_argument("image", metavar="IMAGE", help="the input image (any format Pillow reads)")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="digits (the 8x8 digits convnet; weights from `minicnn train digits`), fashion (the "
                   "28x28 Fashion-MNIST net, trained weights shipped) or resnet18")
    p.add_argument("--weights", metavar="FILE", help="the model's weights (default: weights/digits_convnet.safetensors "
                   "for digits, the shipped weights for fashion, the cached fetched file for resnet18)")
    p.add_argument("--out", metavar="FILE.html", help="write the self-contained page here")
    p.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 with live recomputation")
    p.add_argument("--port", type=int, default=None, metavar="N", help="port for --serve (default 8000; 0: any free port)")
    p.add_argument("--channels", default=None, metavar="N|all",
                   help="channels of each wide layer to put in the file (default 8; the layers a click needs whole "
                   "are always whole); 'all' puts every channel in (a large file for resnet18)")
    p.add_argument("--topk", type=int, default=5, help="classes in the prediction list (default 5)")
    p.set_defaults(func=_run)
