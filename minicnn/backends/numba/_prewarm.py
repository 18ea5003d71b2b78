"""A second process that compiles a first run's kernels while the command compiles them too.

numba compiles a kernel on the thread that first calls it, holding the GIL, so a cold command
compiles its kernels one after another on one core. A command whose kernels are known in advance
can use a second core: a helper process compiles the same kernels, in the opposite order, into the
same on-disk cache (``cache=True``; ``__pycache__`` or ``NUMBA_CACHE_DIR``). numba's dispatcher
consults that cache each time a call needs a new signature (``Dispatcher.compile`` calls
``_cache.load_overload`` before compiling), so when the command reaches a kernel the helper has
finished, it loads it instead of compiling it. numba writes each cache file to a temporary name and
renames it into place (``os.replace``), so a reader sees a whole file or none.

What each command compiles on a cold run is recorded in ``minicnn/data/first_run_kernels.json``
(per workload: the module, the function's qualified name and its argument types as numba type
expressions, in the order the command compiled them), regenerated with::

    python -m minicnn.backends.numba._prewarm --record            # every workload
    python -m minicnn.backends.numba._prewarm --record classify   # one

The command line starts the helper (see :func:`arm`) at the first cache-missing compilation of one
of this package's kernels, never in a library import; ``MINICNN_COMPILE_HELPER=0`` turns it off, and
a process with one usable CPU starts none. The helper runs in a session of its own (see
:func:`start`).
The command never waits for the helper: whatever it has not finished, the command compiles as before.
The helper ends with the command: the command terminates it at exit, and the helper exits by itself
once its parent is gone. A listed kernel that no longer exists, or no longer compiles for its listed
types (the code changed since the list was recorded), is skipped.

A kernel listed with several signatures is left to the command: numba stores all signatures of a
function in one index file, rewritten on each save, and two processes saving two signatures of one
function at the same moment could each write an index that misses the other's entry.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ENV = "MINICNN_COMPILE_HELPER"
# a file the helper appends one JSON line to per kernel (what it compiled, loaded or skipped); for
# diagnostics and tests
LOG_ENV = "MINICNN_COMPILE_HELPER_LOG"

_HERE = os.path.dirname(os.path.abspath(__file__))
LIST_PATH = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "data", "first_run_kernels.json")
_COFFEE = os.path.join(os.path.dirname(LIST_PATH), "images", "coffee.jpg")

# workload -> (seed weights first?, the command's arguments); "{tmp}" is a scratch folder
WORKLOADS = {
    "classify": (True, ["classify", _COFFEE, "--weights", "{tmp}/seed18.safetensors"]),
    "embed": (True, ["embed", _COFFEE, "--weights", "{tmp}/seed18.safetensors", "--out", "{tmp}/embed.npz"]),
    "train digits": (False, ["train", "digits", "--no-progress", "--out", "{tmp}/digits.safetensors"]),
    # one epoch of 4 full batches and a last one of 96 images, as a full epoch's (60,000 = 468 * 128
    # + 96) ends: the same kernels and signatures as the full run, in seconds
    "train fashion-mnist": (False, ["train", "fashion-mnist", "--no-progress", "--epochs", "1", "--train-size", "608",
                                    "--out", "{tmp}/fashion.safetensors"]),
}

_helper: subprocess.Popen | None = None
started = 0  # helpers this process started
_armed: str | None = None
_lock = threading.Lock()


def enabled() -> bool:
    """False when ``MINICNN_COMPILE_HELPER=0`` (or ``false``/``no``/``off``) or only one CPU is usable."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus >= 2


def load_list(path: str = LIST_PATH) -> dict:
    """The shipped lists: ``{workload: [[module, qualname, [type expressions]], ...]}``."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# -- types <-> text --------------------------------------------------------------------------------

def type_expr(t) -> str:
    """A numba type as an expression :func:`parse_types` reads back to ``t``: numba's own type
    names and constructors (as numba's signature strings use them), plus ``pyclass("module:name")``
    for the class of a named tuple."""
    from numba.core import types

    if isinstance(t, types.Literal):
        text = f"literal({t.literal_value!r})"
    elif isinstance(t, types.Omitted):
        text = f"Omitted({t.value!r})"
    elif isinstance(t, types.Array):
        text = (f"Array({type_expr(t.dtype)}, {t.ndim}, {t.layout!r}, readonly={not t.mutable}, "
                f"aligned={t.aligned})")
    elif isinstance(t, (types.NamedUniTuple, types.NamedTuple)):
        cls = f"pyclass({t.instance_class.__module__ + ':' + t.instance_class.__qualname__!r})"
        if isinstance(t, types.NamedUniTuple):
            text = f"NamedUniTuple({type_expr(t.dtype)}, {t.count}, {cls})"
        else:
            text = f"NamedTuple(({''.join(type_expr(e) + ', ' for e in t.types)}), {cls})"
    elif isinstance(t, types.UniTuple):
        text = f"UniTuple({type_expr(t.dtype)}, {t.count})"
    elif isinstance(t, types.Tuple):
        text = f"Tuple(({''.join(type_expr(e) + ', ' for e in t.types)}))"
    else:
        text = repr(t)
    if parse_types([text]) != (t,):
        raise ValueError(f"numba type {t!r} has no expression that reads back to it")
    return text


def _pyclass(spec: str):
    module, _, qualname = spec.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def parse_types(exprs) -> tuple:
    """The argument types that ``exprs`` (from :func:`type_expr`) describe, read the way numba reads
    a signature string (``numba.core.sigutils``: an expression over ``numba.core.types``)."""
    from numba.core import types

    names = dict(vars(types), pyclass=_pyclass)
    return tuple(eval("(" + "".join(e + ", " for e in exprs) + ")", {"__builtins__": {}}, names))


# modules whose kernels link against symbols registered at run time: the function that registers
# them, called before such a kernel compiles (as the backend does before its first call)
_SETUP = {"minicnn.backends.numba._gemm": "available"}


def _dispatcher(module: str, qualname: str):
    obj = importlib.import_module(module)
    if module in _SETUP:
        getattr(obj, _SETUP[module])()
    twin = qualname.endswith("_serial") and not hasattr(obj, qualname.split(".")[0])
    if twin:  # a serial twin (``_threads.serial_twin``) exists only as its parallel kernel's twin
        qualname = qualname[:-len("_serial")]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (hasattr(obj, "compile") and hasattr(obj, "py_func")):
        return None
    if twin:
        from . import _threads

        obj = _threads.serial_twin(obj)
    return obj


# -- the helper process ----------------------------------------------------------------------------

def compile_list(entries, log=None) -> list:
    """Compile ``entries`` (``[module, qualname, types]``), last first; return what happened to each.

    Each kernel goes through ``dispatcher.compile``, which loads it from numba's cache when it is
    there. A kernel listed with several signatures, or one that no longer resolves or compiles, is
    skipped."""
    from numba.core import event

    counts = {}
    for module, qualname, _ in entries:
        counts[(module, qualname)] = counts.get((module, qualname), 0) + 1
    compiled = []

    class Seen(event.Listener):  # a compile event fires only when the cache missed
        def on_start(self, ev):
            pass

        def on_end(self, ev):
            compiled.append(ev.data["dispatcher"])

    done = []
    with event.install_listener("numba:compile", Seen()):
        for module, qualname, exprs in reversed(entries):
            why = None
            if counts[(module, qualname)] > 1:
                status, why = "skipped", "listed with several signatures"
            else:
                del compiled[:]
                try:
                    disp = _dispatcher(module, qualname)
                    if disp is None:
                        raise LookupError(qualname)
                    disp.compile(parse_types(exprs))
                    status = "compiled" if compiled else "ready"  # compiled already, here or in the cache
                except Exception as e:  # the code changed since the list was recorded: leave it to the command
                    status, why = "skipped", f"{type(e).__name__}: {e}"[:500]
            row = {"module": module, "qualname": qualname, "types": exprs, "status": status}
            if why:
                row["why"] = why
            done.append(row)
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
    return done


def _watch_parent(parent: int) -> None:
    """Exit this process (without cleanup: nothing of ours is half-written, cache writes are atomic)
    once the process that started it is gone."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _helper_main(workload: str, parent: int | None) -> int:
    if parent is not None:
        _watch_parent(parent)
    entries = load_list().get(workload, [])
    path = os.environ.get(LOG_ENV)
    with (open(path, "a") if path else contextlib.nullcontext()) as log:
        if log is not None:
            log.write(json.dumps({"pid": os.getpid(), "workload": workload}) + "\n")
            log.flush()
        compile_list(entries, log)
    return 0


# -- the command's side ----------------------------------------------------------------------------

def start(workload: str) -> subprocess.Popen | None:
    """Start the helper for ``workload`` (a key of ``minicnn/data/first_run_kernels.json``) now,
    unless it runs already, ``MINICNN_COMPILE_HELPER=0`` or one CPU. It is terminated when this
    process exits. Returns the helper's ``Popen`` or None. Library code never calls this: a program
    that wants the helper calls it (the command line arms it with :func:`arm`)."""
    global _helper, started
    with _lock:
        if _helper is not None or not enabled() or workload not in load_list():
            return _helper
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # a session of its own: with autogroup scheduling (CPU shared between sessions first) a
        # helper in the command's session would take its time from the command; and a Ctrl-C goes
        # to the command alone, which stops it
        try:
            _helper = subprocess.Popen(
                [sys.executable, "-m", "minicnn.backends.numba._prewarm", "--helper", workload,
                 "--parent", str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True)
        except OSError:
            return None  # no helper: the command compiles everything itself, as without one
        started += 1
        atexit.unregister(stop)  # registered once however often a helper starts
        atexit.register(stop)
        return _helper


def stop() -> None:
    """Terminate the helper, if it runs (what it finished stays in numba's cache)."""
    global _helper
    with _lock:
        proc, _helper = _helper, None
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def arm(workload: str | None) -> None:
    """Start the helper for ``workload`` at this process's first cache-missing compilation of one
    of the package's kernels (a warm run starts nothing). None disarms."""
    global _armed
    _armed = workload if workload and enabled() else None


def on_first_compile() -> bool:
    """Called by the compile listener at the first cache-missing compilation; True if a helper runs."""
    return _armed is not None and start(_armed) is not None


# -- recording the lists -----------------------------------------------------------------------------

_RECORD_CHILD = r'''
import json, sys
from numba.core import event

seen = []

class Record(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        disp = ev.data["dispatcher"]
        f = disp.py_func
        args = tuple(ev.data["args"])
        if (f.__module__ == "minicnn" or f.__module__.startswith("minicnn.")) and args in disp.overloads:
            seen.append((f.__module__, f.__qualname__, args))

event.register("numba:compile", Record())
from minicnn import cli
from minicnn.backends.numba import _prewarm
rc = cli.main(json.loads(sys.argv[1]))
rows = [[m, q, [_prewarm.type_expr(t) for t in args]] for m, q, args in seen]
with open(sys.argv[2], "w") as f:
    json.dump({"rc": rc, "kernels": rows, "helper": _prewarm.started > 0}, f)
'''


def run_cold(workload: str, tmp: str, cache: str, helper: bool = False, extra_env=None) -> dict:
    """Run ``workload``'s command in a child process on the numba cache ``cache`` (an empty folder
    for a cold run); return ``{"rc", "kernels", "helper", "stdout", "stderr"}``: the kernels of this
    package the command compiled, in order, and whether it started a helper."""
    seed, argv = WORKLOADS[workload]
    argv = [a.format(tmp=tmp) for a in argv]
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, **{ENV: "1" if helper else "0"}, **(extra_env or {}))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MINICNN_BACKEND", None)
    if seed and not os.path.exists(os.path.join(tmp, "seed18.safetensors")):
        # seeding writes numpy arrays (no kernel runs); on the machine's own cache all the same
        subprocess.run([sys.executable, "-m", "minicnn", "weights", "seed", "resnet18",
                        os.path.join(tmp, "seed18.safetensors")], env=dict(env, NUMBA_CACHE_DIR=tempfile.mkdtemp(dir=tmp)),
                       check=True, capture_output=True)
    out = os.path.join(tmp, "record.json")
    run = subprocess.run([sys.executable, "-c", _RECORD_CHILD, json.dumps(argv), out], env=env, cwd=tmp,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{workload}: {run.stderr[-2000:]}")
    with open(out) as f:
        result = json.load(f)
    result.update(stdout=run.stdout, stderr=run.stderr)
    return result


def record(workloads, path: str = LIST_PATH) -> dict:
    """Record ``workloads`` (cold runs, helper off) and write them into the list at ``path``."""
    lists = load_list(path)
    for name in workloads:
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            os.mkdir(cache)
            lists[name] = run_cold(name, tmp, cache)["kernels"]
        print(f"{name}: {len(lists[name])} kernels", file=sys.stderr)
    with open(path, "w") as f:
        json.dump(lists, f, indent=1, sort_keys=True)
        f.write("\n")
    return lists


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minicnn.backends.numba._prewarm")
    p.add_argument("--record", nargs="*", metavar="WORKLOAD", choices=sorted(WORKLOADS),
                   help="record what cold runs compile into the shipped list (default: every workload)")
    p.add_argument("--helper", metavar="WORKLOAD", help="compile WORKLOAD's listed kernels, last first")
    p.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = p.parse_args(argv)
    if args.record is not None:
        record(args.record or sorted(WORKLOADS))
        return 0
    if args.helper:
        return _helper_main(args.helper, args.parent)
    p.error("give --record or --helper")


if __name__ == "__main__":
    sys.exit(_main())
