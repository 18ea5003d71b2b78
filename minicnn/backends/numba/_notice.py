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
"""
from __future__ import annotations

import logging
import threading

from numba.core import event

logger = logging.getLogger("minicnn")

MESSAGE = "compiling kernels, first run only (numba keeps them in its cache for later runs)"


class CompileNotice(event.Listener):
    """Logs ``MESSAGE`` once, at the first cache-missing compilation of a kernel defined in a
    module under ``package``."""

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
        if self.announced or not self._ours(ev):
            return
        with self._lock:
            if self.announced:
                return
            self.announced = True
        self.log.info(MESSAGE)

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
