"""One line when this package's kernels compile: "compiling kernels, first run only".

numba compiles a kernel the first time it is called with new argument types, unless its on-disk
cache (the kernels are ``cache=True``; the cache lives in ``__pycache__`` beside the sources, or
under ``NUMBA_CACHE_DIR``) already holds it. A cold start compiles dozens of kernels, tens of
seconds in all, during which nothing else is printed. numba fires a ``numba:compile`` event for
each compilation that missed the cache (a cache hit fires none), so a listener on that event
knows when compiling really starts.

The listener logs one INFO message on the ``minicnn`` logger, the first time in a process that a
kernel of this package compiles; other numba code in the process is not reported. The command
line shows the ``minicnn`` logger's INFO messages on stderr; a program sees them once it
configures logging (``logging.basicConfig(level=logging.INFO)``) and can silence this one with
``logging.getLogger("minicnn").setLevel(logging.WARNING)``.

The same listener lets a caller use only what is compiled already: inside ``with
compiled_only():`` a kernel of this package that would compile in this thread raises
``KernelNotCompiled`` instead (at the compile's start event, before numba compiles anything),
while one whose machine code is loaded or in numba's cache runs as usual (a cache hit fires no
event). The autotuner in ``minicnn.inference`` times its candidates this way: on a cold cache a
variant it would only try (its kernels alone cost seconds to compile) is left out instead of
being compiled for one timing. Other threads compile as usual meanwhile.

A command of the command line can arm a helper process (``_prewarm``) that compiles the
command's listed kernels into the same cache; the listener starts it at the same first compile
and says "compiling kernels in two processes, first run only" instead.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading

from numba.core import event

logger = logging.getLogger("minicnn")

MESSAGE = "compiling kernels, first run only (numba keeps them in its cache for later runs)"
MESSAGE_TWO = "compiling kernels in two processes, first run only (numba keeps them in its cache for later runs)"

_local = threading.local()


class KernelNotCompiled(RuntimeError):
    """Raised inside ``compiled_only()`` when a kernel of this package would have to compile."""


class CompileNotice(event.Listener):
    """Logs ``MESSAGE`` once, at the first cache-missing compilation of a kernel defined in a
    module under ``package``; refuses such a compilation in a thread inside ``compiled_only()``."""

    def __init__(self, package: str = "minicnn", log: logging.Logger = logger):
        self.package = package
        self.log = log
        self.announced = False
        self._lock = threading.Lock()

    def _ours(self, ev) -> bool:
        data = ev.data if isinstance(ev.data, dict) else {}
        module = getattr(getattr(data.get("dispatcher"), "py_func", None), "__module__", None) or ""
        return module == self.package or module.startswith(self.package + ".")

    def on_start(self, ev):
        if getattr(_local, "refuse", 0) and self._ours(ev):
            # raised before numba compiles: it releases its compiler lock and sends the end event
            # (with this exception), and the kernel is left as it was, compilable later
            py_func = ev.data["dispatcher"].py_func
            raise KernelNotCompiled(f"{py_func.__module__}.{py_func.__qualname__} is not compiled for "
                                    f"({', '.join(map(str, ev.data.get('args', ())))})")
        if self.announced or not self._ours(ev):
            return
        with self._lock:
            if self.announced:
                return
            self.announced = True
            # a command armed the compile helper (``_prewarm.arm``): start it now; library use
            # never imports that module, so nothing is spawned there
            prewarm = sys.modules.get(__package__ + "._prewarm")
            two = prewarm is not None and prewarm.on_first_compile()
        self.log.info(MESSAGE_TWO if two else MESSAGE)

    def on_end(self, ev):
        pass


_listener: CompileNotice | None = None


def install() -> CompileNotice:
    """Register the package's listener with numba (once per process) and return it."""
    global _listener
    if _listener is None:
        _listener = CompileNotice()
        event.register("numba:compile", _listener)
    return _listener


@contextlib.contextmanager
def compiled_only():
    """``with compiled_only():`` in this thread, a call that would compile a kernel of this package
    raises ``KernelNotCompiled`` instead; kernels already compiled in this process or held by
    numba's on-disk cache for the call's argument types run as usual. Blocks nest."""
    install()
    _local.refuse = getattr(_local, "refuse", 0) + 1
    try:
        yield
    finally:
        _local.refuse -= 1


compiled_only.refusal = KernelNotCompiled  # what the autotuner catches (the ``compiled_only`` entry of minicnn.ops)
