"""``minicnn bench [ops|e2e|all] [--quick] [--out DIR]``: the benchmark suite of the source checkout.

``ops`` validates every kernel variant of every usable backend against the numpy reference on
each distinct ResNet-18 layer shape and times the ones that pass; ``e2e`` runs ResNet-18 inference
and training against PyTorch and ONNX Runtime, plus memory and start-up measurements. Both print
markdown tables and write JSON (and the roofline PNG) to ``--out``. The suite lives in the
repository's ``benchmarks/`` folder (it compares against frameworks the library never imports),
so this command needs a source checkout.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import MinicnnError

SUITES = ("ops", "e2e", "all")


def register(subparsers) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="validate and time every kernel variant and ResNet-18 end to end (vs PyTorch, ONNX Runtime)",
        description="Validate every kernel variant against the numpy reference, then time it; run ResNet-18 "
                    "end to end against PyTorch and ONNX Runtime. Markdown on stdout, JSON and a roofline PNG in --out.",
    )
    p.add_argument("suite", nargs="?", default="all", choices=SUITES,
                   help="ops: per-kernel on ResNet-18 shapes; e2e: whole-network runs; all: both (default)")
    p.add_argument("--quick", action="store_true", help="batch 1 only and fewer repeats, for iteration (under a few minutes)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="directory for ops.json, e2e.json, the .md tables and roofline.png (default: benchmarks/results)")
    p.add_argument("--threads", type=int, default=2, help="threads for every framework (default 2)")
    p.add_argument("--parts", default=None,
                   help="e2e only: comma-separated subset of inference,training,memory,startup")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPUs")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="e2e inference: each framework's process takes N turns, frameworks alternating; "
                        "the round with the lowest median is reported (default 1)")
    p.set_defaults(func=run)


def benchmarks_root() -> Path:
    """The source checkout holding ``benchmarks/`` (next to the package, or the working directory)."""
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        if (root / "benchmarks" / "harness.py").is_file():
            return root
    raise MinicnnError(
        "minicnn bench runs the suite in a source checkout's benchmarks/ folder, which this installation "
        "does not have; run it from a clone of the repository"
    )


def run(args) -> int:
    """Run the chosen suite(s)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    if args.parts and args.suite == "ops":
        raise ValueError("--parts selects parts of the e2e suite; it does not apply to 'ops'")
    root = benchmarks_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import end_to_end, harness, ops

    parts = end_to_end.check_parts(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts \
        else list(end_to_end.PARTS)
    out = args.out or str(root / "benchmarks" / "results")
    os.makedirs(out, exist_ok=True)
    env = harness.setup(threads=args.threads, quick=args.quick, wait_quiet_s=args.wait_quiet, log=print)
    if args.suite in ("ops", "all"):
        ops.run(quick=args.quick, out_dir=out, threads=args.threads, env=env)
    if args.suite in ("e2e", "all"):
        end_to_end.run(quick=args.quick, out_dir=out, threads=args.threads, parts=parts, env=env, rounds=args.rounds)
    print(f"results written to {out}")
    return 0
