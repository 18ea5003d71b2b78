"""``minicnn bench [ops|e2e|fashion|all] [--quick] [--out DIR]``: validate and time the kernels, ResNet-18
and Fashion-MNIST training.

``ops`` validates every kernel variant of every usable backend against the numpy reference on
each distinct ResNet-18 layer shape and times the ones that pass; ``e2e`` runs ResNet-18 inference
and training against PyTorch and ONNX Runtime, plus memory and start-up measurements; ``fashion``
trains the Fashion-MNIST convnet in minicnn and in PyTorch to a test accuracy (0.90) and compares
the seconds each took (``minicnn.bench.fashion``). Each prints
markdown tables and write JSON (and the roofline PNG) to ``--out`` (default ``bench-results`` in the
working directory; a ``--quick`` run never writes over a checkout's committed ``benchmarks/results``),
and remove their temporary files when the run ends. The suite is ``minicnn.bench``, so an
installed minicnn runs it anywhere; the comparisons need torch and onnxruntime, which minicnn
itself never imports (without them those rows are left out).
"""
from __future__ import annotations

import os

SUITES = ("ops", "e2e", "fashion", "all")
# relative to the working directory: a run never lands in the committed benchmarks/results unless named
DEFAULT_OUT = "bench-results"


def register(subparsers) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="validate and time every kernel variant and ResNet-18 end to end (vs PyTorch, ONNX Runtime)",
        description="Validate every kernel variant against the numpy reference, then time it; run ResNet-18 "
                    "end to end against PyTorch and ONNX Runtime. Markdown on stdout, JSON and a roofline PNG in --out.",
    )
    p.add_argument("suite", nargs="?", default="all", choices=SUITES,
                   help="ops: per-kernel on ResNet-18 shapes; e2e: whole-network runs; fashion: Fashion-MNIST "
                        "seconds to a test accuracy, minicnn vs PyTorch; all: the three (default)")
    p.add_argument("--quick", action="store_true", help="batch 1 only and fewer repeats, for iteration (under a few minutes)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"directory for ops.json, e2e.json, the .md tables and roofline.png (default: ./{DEFAULT_OUT}; "
                        "--quick refuses the committed benchmarks/results)")
    p.add_argument("--threads", type=int, default=2, help="threads for every framework (default 2)")
    p.add_argument("--parts", default=None,
                   help="e2e only: comma-separated subset of inference,training,memory,startup")
    p.add_argument("--frameworks", default=None, metavar="LIST",
                   help="e2e inference and memory only: comma-separated subset of the frameworks, e.g. "
                        "'minicnn numba compiled,onnxruntime' (default: every one usable here)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPUs")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="e2e inference and training: each framework's process takes N turns, frameworks "
                        "alternating; the round with the lowest median is reported (default 1)")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="fashion only: the test accuracy to reach (default 0.90; 0.80 with --quick)")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N",
                   help="fashion only: give up after N epochs (default 5; 1 with --quick)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the chosen suite(s)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    if args.parts and args.suite == "ops":
        raise ValueError("--parts selects parts of the e2e suite; it does not apply to 'ops'")
    if args.frameworks and args.suite == "ops":
        raise ValueError("--frameworks selects frameworks of the e2e suite; it does not apply to 'ops'")
    if (args.target is not None or args.max_epochs is not None) and args.suite not in ("fashion", "all"):
        raise ValueError("--target and --max-epochs set the fashion suite's run; they do not apply to "
                         f"'{args.suite}'")
    if args.target is not None and not 0.0 < args.target <= 1.0:
        raise ValueError(f"--target must be a test accuracy in (0, 1], got {args.target}")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise ValueError(f"--max-epochs must be at least 1, got {args.max_epochs}")
    from ..bench import end_to_end, fashion, harness, ops

    parts = end_to_end.check_parts(end_to_end.split_list(args.parts)) if args.parts else list(end_to_end.PARTS)
    out = harness.check_out_dir(args.out, args.quick)
    frameworks = end_to_end.check_frameworks(end_to_end.split_list(args.frameworks)) if args.frameworks else None
    os.makedirs(out, exist_ok=True)
    env = harness.setup(threads=args.threads, quick=args.quick, wait_quiet_s=args.wait_quiet, log=print)
    if args.suite in ("ops", "all"):
        ops.run(quick=args.quick, out_dir=out, threads=args.threads, env=env)
    if args.suite in ("e2e", "all"):
        end_to_end.run(quick=args.quick, out_dir=out, threads=args.threads, parts=parts, env=env, rounds=args.rounds,
                       frameworks=frameworks)
    if args.suite in ("fashion", "all"):
        # --quick: a lower target on the first 12,800 images, a few minutes in all
        target = args.target if args.target is not None else (0.80 if args.quick else 0.90)
        epochs = args.max_epochs if args.max_epochs is not None else (1 if args.quick else 5)
        fashion.run(target=target, max_epochs=epochs, eval_every=25 if args.quick else 117, threads=args.threads,
                    out_dir=out, train_size=12800 if args.quick else None)
    print(f"results written to {out}")
    return 0
