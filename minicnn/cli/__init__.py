"""The ``minicnn`` command. Each subcommand is a module in this package with a
``register(subparsers)`` function; they are found by listing the package, so adding a command
means adding a file. Errors on bad input print one line and exit non-zero, without a traceback."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import pkgutil
import sys

from ..errors import MinicnnError

BACKENDS = ("numpy", "numba", "cupy")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="minicnn",
        description="A CNN engine written from scratch: train small convnets, run ResNet-18, benchmark kernels.",
    )
    parser.add_argument("--version", action="version", version=f"minicnn {__version__}")
    parser.add_argument("--backend", choices=BACKENDS, help="compute backend (default: numba on CPU)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    for command in sub.choices.values():
        # also after the command (`minicnn train digits --backend numpy`), where people type it;
        # SUPPRESS keeps a value given before the command when none is given after it
        command.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS,
                             help="compute backend (default: numba on CPU); also accepted before COMMAND")
    return parser


@contextlib.contextmanager
def _notices_on_stderr():
    """The package's INFO log lines (the one-time "compiling kernels, first run only") on stderr as
    ``minicnn: ...`` while a command runs; left alone when the program configured that logger."""
    log = logging.getLogger("minicnn")
    if log.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("minicnn: %(message)s"))
    level = log.level
    log.addHandler(handler)
    if log.level == logging.NOTSET:  # a level the program set (say WARNING, to silence it) stays
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _notices_on_stderr(), _compile_helper(args):
        return _run(args)


def _listed_workload(args):
    """``"classify"``, ``"train digits"``...: the command, if its first-run kernels are listed
    (read without importing numba: most commands never need it)."""
    name = getattr(args, "command", None)
    if name == "train":
        name = f"train {getattr(args, 'dataset', '')}"
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "first_run_kernels.json")
    try:
        with open(path) as f:
            return name if name in json.load(f) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _compile_helper(args):
    """On the numba backend, a command whose first-run kernels are listed starts a second process
    compiling them too at its first cache-missing compile (``minicnn.backends.numba._prewarm``);
    the helper ends with the command. ``MINICNN_COMPILE_HELPER=0`` turns it off."""
    from .. import backends

    workload = _listed_workload(args)
    prewarm = None
    if workload and (getattr(args, "backend", None) or backends._default_name()) == "numba":
        with contextlib.suppress(ImportError):
            from ..backends.numba import _prewarm as prewarm
    if prewarm is None:
        yield
        return
    prewarm.arm(workload)
    try:
        yield
    finally:
        prewarm.arm(None)
        prewarm.stop()


def _run(args) -> int:
    try:
        if args.backend:
            from .. import set_backend

            set_backend(args.backend)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("minicnn: interrupted", file=sys.stderr)
        return 130
    except (MinicnnError, ValueError, KeyError, OSError, RuntimeError) as e:
        msg = str(e).strip() or type(e).__name__
        if isinstance(e, KeyError) and len(e.args) == 1:
            msg = str(e.args[0])
        print(f"minicnn {args.command}: error: {msg}", file=sys.stderr)
        return 1
