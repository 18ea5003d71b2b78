"""The one-time "compiling kernels, first run only" line: logged when one of this package's numba
kernels misses the cache and compiles, once per process, and shown on stderr by the command line.

The kernels here are small stand-ins compiled without a cache (``cache=False``), so each test
meets a real cache-missing compilation however warm numba's cache is; their ``__module__`` puts
them inside or outside the package, as the listener decides by.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import minicnn.backends.numba  # noqa: E402,F401  (registers the package's listener)
from minicnn import cli  # noqa: E402
from minicnn.backends.numba import _notice  # noqa: E402


def _kernel(module: str):
    """A fresh numba function that looks defined in ``module``; not compiled until called."""
    def add_one(a):
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            out[i] = a[i] + 1.0
        return out

    add_one.__module__ = module
    return numba.njit(cache=False)(add_one)


def test_listener_announces_the_first_package_compile_only(caplog):
    log = logging.getLogger("minicnn.test_notice")
    listener = _notice.CompileNotice(log=log)
    caplog.set_level(logging.INFO, logger=log.name)
    numba.core.event.register("numba:compile", listener)
    try:
        outsider = _kernel("someone_elses_package.kernels")
        np.testing.assert_array_equal(outsider(np.zeros(3)), np.ones(3))
        assert not listener.announced and caplog.records == []  # other code's compiles are not ours
        ours = _kernel("minicnn.backends.numba.stand_in")
        np.testing.assert_array_equal(ours(np.zeros(3)), np.ones(3))
        ours(np.zeros(3, np.float32))  # a second signature compiles again: still one line
        _kernel("minicnn.backends.numba.other")(np.zeros(2))
    finally:
        numba.core.event.unregister("numba:compile", listener)
    assert listener.announced
    assert [r.getMessage() for r in caplog.records] == [_notice.MESSAGE]
    assert "compiling kernels, first run only" in _notice.MESSAGE


def test_cache_hit_is_silent(caplog):
    log = logging.getLogger("minicnn.test_notice_hit")
    listener = _notice.CompileNotice(log=log)
    caplog.set_level(logging.INFO, logger=log.name)
    k = _kernel("minicnn.backends.numba.stand_in")
    k(np.zeros(3))  # compiled before the listener listens
    numba.core.event.register("numba:compile", listener)
    try:
        k(np.zeros(4))  # same types: the compiled code is reused, nothing compiles
    finally:
        numba.core.event.unregister("numba:compile", listener)
    assert not listener.announced and caplog.records == []


def _compile_in_command(monkeypatch, argv):
    """Run ``cli.main(argv)`` with the command replaced by a package kernel's first compilation,
    the package's listener armed as in a fresh process."""
    monkeypatch.setattr(_notice.install(), "announced", False)
    k = _kernel("minicnn.backends.numba.stand_in")
    monkeypatch.setattr(cli, "_run", lambda args: int(k(np.zeros(2))[0]) - 1)
    return cli.main(argv)


def test_command_line_prints_one_line_on_stderr(monkeypatch, capsys):
    log = logging.getLogger("minicnn")
    before = (list(log.handlers), log.level)
    assert _compile_in_command(monkeypatch, ["weights", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"minicnn: {_notice.MESSAGE}"]
    assert (list(log.handlers), log.level) == before  # the command's handler and level are gone again


def test_command_line_respects_a_silenced_logger(monkeypatch, capsys):
    log = logging.getLogger("minicnn")
    monkeypatch.setattr(log, "level", logging.WARNING)
    assert _compile_in_command(monkeypatch, ["weights", "list"]) == 0
    assert capsys.readouterr().err == ""
