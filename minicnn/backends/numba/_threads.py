"""Threads for the numba backend: the threading layer that runs ``prange``, small calls on the
calling thread, GEMMs split over numba's threads, and per-thread scratch buffers.

numba runs every ``parallel=True`` region on one of three threading layers. ``tbb`` and ``omp``
accept parallel regions launched from several Python threads at the same time; ``workqueue``
does not (concurrent launches abort the process). So, unless the user picked a layer through
``NUMBA_THREADING_LAYER``, the backend asks numba for a thread-safe one (``tbb``, else ``omp``)
and only falls back to ``workqueue`` when neither can load. Under ``workqueue`` every parallel
region runs under one process-wide lock: two model threads then take turns inside kernels (each
kernel already uses every core) while the rest of their work (BLAS, Python) still overlaps.

A call whose arrays are small runs the kernel's serial twin on the calling thread (``run``):
waking the workers would cost more than the loop. GEMMs go through ``matmul``: OpenBLAS runs
single-threaded on each of numba's threads (``_gemm.py``), each thread taking a slice of the
product, because OpenBLAS's own workers keep spinning after every GEMM and would take the cores
from the numba kernels that follow.

Scratch buffers (im2col columns, Winograd transforms, packed gradients) are reused between calls
because first-touching tens of megabytes costs as much as a small convolution. They live in a
``threading.local``, so two threads never share one, and nothing the ops return ever aliases them.

What this module changes in the process (docs/kernels.md, "What this backend changes in your
process", has the reasons and the measurements):

- Importing it starts numba's worker threads (``_launch``), on a thread-safe layer when one
  loads; ``numba.config.THREADING_LAYER`` is set for that moment only and then restored.
- While the OpenMP layer starts, ``GOMP_SPINCOUNT`` is set to ``SPIN_COUNT`` so that idle
  workers spin briefly before they sleep, then removed again (unless the user set
  ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, which are left alone). The spin count stays in force
  for numba's workers for the life of the process: OpenMP reads it once.
- While a GEMM runs in ``matmul``, numpy's OpenBLAS is set to one thread, and its count is
  restored afterwards (``minicnn._blas.single_threaded``); OpenBLAS's count is process-wide, so a
  GEMM another thread starts meanwhile runs on one thread too.
- ``map_one_thread`` keeps a pool of worker threads (started at its first use, living as long as
  the process), each of which sets its own numba thread count to 1; numba's count is per thread,
  so no other thread's changes.
- The tuning values below (``SERIAL_MAX_WORK``, ``SPLIT_MIN_MACS``, ``GEMM_THREADS``) are read
  at every call; ``tuning(...)`` changes them for a block and restores them. That too is
  process-wide: it is for tests and measurements, not for a program whose other threads compute.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ... import _blas
from . import _memory, _notice

# A buffer larger than this is allocated per call instead of being kept around.
MAX_CACHED_BYTES = 96 * 1024 * 1024
# Views of the buffers handed out, kept per (tag, shape, dtype) for the next identical request;
# past this many (inputs of ever new sizes) they are dropped and rebuilt on demand.
MAX_CACHED_VIEWS = 256

# How long GNU OpenMP's idle workers spin before they sleep (GOMP_SPINCOUNT; see _launch). A
# fraction of a millisecond: enough to cover the Python between one kernel and the next, short
# enough that an idle worker soon stops taking a core.
SPIN_COUNT = 30000

_region_lock = threading.Lock()
_local = threading.local()


def _pool_started() -> bool:
    """Whether numba's worker threads are running already (then the layer is fixed)."""
    import numba

    try:
        numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized."
        return False
    return True


def _launch() -> str:
    """Start numba's thread pool on a thread-safe layer when one exists; return the layer's name.

    Runs when this module is imported, before any kernel compiles: compiling or calling a
    parallel kernel starts the pool too, and after that neither the layer nor OpenMP's wait
    policy can change. ``numba.get_num_threads()`` is the public call that starts the pool.
    """
    import numba

    # GNU OpenMP's default (300000 spins, milliseconds) let idle workers compete with the
    # threads that went on; sleeping workers (OMP_WAIT_POLICY=PASSIVE) are slow to wake, once per
    # kernel. The GEMM slices run on these same workers (_gemm.py), so nothing else needs the
    # cores while they spin, and SPIN_COUNT spins cover the gap between one kernel and the next.
    # OpenMP reads the count once, when its runtime starts inside numba's launch, so it is set
    # just for that moment (unless the user chose a policy or a count) and removed again: other
    # OpenMP runtimes loaded later (torch bundles its own) keep their default.
    ours = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if ours:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        if not _pool_started() and not os.environ.get("NUMBA_THREADING_LAYER"):
            previous = numba.config.THREADING_LAYER
            numba.config.THREADING_LAYER = "threadsafe"
            try:
                numba.get_num_threads()
            except ValueError:  # neither tbb nor omp can load here: workqueue plus our lock
                numba.config.THREADING_LAYER = previous
                numba.get_num_threads()
            finally:
                numba.config.THREADING_LAYER = previous  # read only at the launch
        else:
            numba.get_num_threads()
    finally:
        if ours:
            os.environ.pop("GOMP_SPINCOUNT", None)
    return numba.threading_layer()


def threading_layer() -> str:
    """Name of numba's threading layer in use (``tbb``, ``omp`` or ``workqueue``)."""
    return _layer


def needs_lock() -> bool:
    """True when parallel regions must be serialised (the layer is not safe for concurrent callers)."""
    return _needs_lock


def launched_here() -> bool:
    """False in a forked child of the process that started numba's threads: GNU OpenMP's
    threads did not come with the fork, so parallel regions must not be entered there."""
    return os.getpid() == _launch_pid


# --------------------------------------------------------------------------------------------
# Tuning: read at every call, never changed by the backend itself; ``tuning`` changes them for a
# block and restores them (docs/kernels.md, "Small calls run serially" and "The slices on numba's
# threads", has the measurements behind each value).

# Work (array elements the call is handed, or what the caller says) below which a kernel runs
# its serial twin on the calling thread: below it, starting a parallel region costs more than
# the loop saves.
SERIAL_MAX_WORK = 1 << 15
# ``weight`` of the kernels that loop over many taps or tiles per value (Winograd transforms,
# window pooling with argmax): they stay parallel at smaller sizes than a plain pass does
HEAVY = 4
# ``weight`` of plain elementwise passes (ReLU and its backward: a compare and a store per
# value, much cheaper per value than the copy-like passes the threshold was set by)
LIGHT = 0.25
# A small call whose serial twin is compiled neither in this process nor in numba's on-disk cache,
# while the parallel form is, runs the parallel form, and only after this many small calls with
# the same argument types is the twin compiled (then cached for later runs): a short run (one
# classify) never pays the twin's compile (0.1-2 s each on a cold cache, two in a ResNet-18
# classify) for the tens of microseconds per call it saves, a long one soon has it; a run that
# never reaches the count loses at most that many times the parallel region's start (about 60 us).
# 0: the twin compiles at the first small call (what ``serial_below`` sets, to test both forms).
TWIN_AFTER_CALLS = 256
# Each slice of a split product has at least this many multiply-adds; a smaller product runs on
# the calling thread alone: handing part of it to another thread costs more than it saves.
SPLIT_MIN_MACS = 2_000_000
# Where the slices of a split GEMM run: "numba" (numba's own threads, each calling OpenBLAS; see
# _gemm.py) or "pool" (the calling thread and Python helper threads). "numba" falls back to
# "pool" for what it cannot take (other dtypes, layouts BLAS cannot read in place).
GEMM_THREADS = "numba"

_TUNABLE = ("SERIAL_MAX_WORK", "SPLIT_MIN_MACS", "GEMM_THREADS", "TWIN_AFTER_CALLS")


@contextlib.contextmanager
def tuning(**values):
    """``with tuning(SERIAL_MAX_WORK=0, GEMM_THREADS="pool"):`` runs the block with these tuning
    values and restores the previous ones when it exits, also on an error.

    Names: ``SERIAL_MAX_WORK``, ``SPLIT_MIN_MACS``, ``GEMM_THREADS``, ``TWIN_AFTER_CALLS``.
    Process-wide (every thread reads the same values): for tests and measurements.
    """
    unknown = sorted(set(values) - set(_TUNABLE))
    if unknown:
        raise ValueError(f"tuning: unknown setting {', '.join(unknown)}; the settings are {', '.join(_TUNABLE)}")
    if "GEMM_THREADS" in values and values["GEMM_THREADS"] not in ("numba", "pool"):
        raise ValueError(f"tuning: GEMM_THREADS must be 'numba' or 'pool', got {values['GEMM_THREADS']!r}")
    module = globals()
    saved = {name: module[name] for name in values}
    module.update(values)
    try:
        yield
    finally:
        module.update(saved)


def serial_below(n: int):
    """``with serial_below(n):`` calls with less than ``n`` work run serially (0: every call runs
    the parallel kernel; a huge ``n``: none does), the twins compiled at once where missing;
    ``tuning(SERIAL_MAX_WORK=n, TWIN_AFTER_CALLS=0)``."""
    return tuning(SERIAL_MAX_WORK=int(n), TWIN_AFTER_CALLS=0)


_twins: dict = {}
_twins_lock = threading.Lock()


def serial_twin(kernel):
    """``kernel`` (a ``parallel=True`` dispatcher) compiled once more without ``parallel``: the
    same source, with ``prange`` running as ``range`` on the calling thread.

    The twin gets a qualified name of its own so numba's on-disk cache keeps the two apart
    (the cache's index does not key on the ``parallel`` flag).
    """
    twin = _twins.get(kernel)
    if twin is None:
        with _twins_lock:
            twin = _twins.get(kernel)
            if twin is None:
                import types

                import numba

                f = kernel.py_func
                g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                                       f.__closure__)
                g.__qualname__ = f.__qualname__ + "_serial"
                g.__module__ = f.__module__
                g.__doc__ = f.__doc__
                opts = {k: v for k, v in kernel.targetoptions.items() if k not in ("parallel", "nopython")}
                twin = _twins[kernel] = numba.njit(cache=True, **opts)(g)
    return twin


def run_parallel(kernel, *args):
    """Call a parallel numba kernel as it is, under the region lock when the threading layer
    cannot take concurrent callers."""
    if _needs_lock:
        with _region_lock:
            return kernel(*args)
    return kernel(*args)


def run(kernel, *args, work=None, weight=1):
    """Call a parallel numba kernel: its serial twin when the call is small (``work`` below
    ``SERIAL_MAX_WORK``; by default ``weight`` times the total size of the array arguments, a
    weight above 1 marking a kernel that does much more per value than a copy), else the
    parallel version (``run_parallel``). A small call runs the parallel version instead while
    only that one is compiled, for up to ``TWIN_AFTER_CALLS`` calls (see there)."""
    if work is None:
        work = 0
        for a in args:
            if type(a) is np.ndarray:
                work += a.size
        work = work * weight
    if work < SERIAL_MAX_WORK:
        if TWIN_AFTER_CALLS <= 0:
            return serial_twin(kernel)(*args)
        return _small_call(kernel, args)
    return run_parallel(kernel, *args)


# (kernel, argument types) -> True once small calls run the serial twin, else how many small
# calls have run the parallel form (its twin not compiled yet)
_small_calls: dict = {}


def _first_dtype(args):
    """The dtype of the first array among ``args`` (None if there is none)."""
    for a in args:
        if type(a) is np.ndarray:
            return a.dtype
    return None


def _small_call(kernel, args):
    """A small call of ``kernel``: the serial twin when it is compiled or cached, else the parallel
    form when that one is (up to ``TWIN_AFTER_CALLS`` times), else the twin, compiled now.

    Which forms are compiled is found by calling them inside ``_notice.compiled_only()`` at the
    first small call of the kernel in a dtype (its first array's: the kernels compute in one
    float dtype, ``_util.prepare``) and remembered for that dtype, the key costing a dict lookup
    per call rather than a look at every argument; a later call whose other arguments need
    another specialisation compiles it then, as any first call does. The two forms run the same
    source, one output per task, so they give the same values: which one ran never changes a
    result.
    """
    key = (kernel, _first_dtype(args))
    state = _small_calls.get(key)
    if state is True:
        return serial_twin(kernel)(*args)
    if state is None:
        twin = serial_twin(kernel)
        try:
            with _notice.compiled_only():
                out = twin(*args)
        except _notice.KernelNotCompiled:
            pass
        else:
            _small_calls[key] = True
            return out
        try:
            with _notice.compiled_only():
                out = run_parallel(kernel, *args)
        except _notice.KernelNotCompiled:  # neither form compiled: the call is small, the twin compiles
            _small_calls[key] = True
            return twin(*args)
        _small_calls[key] = 1
        return out
    if state + 1 >= TWIN_AFTER_CALLS:
        _small_calls[key] = True
        return serial_twin(kernel)(*args)
    _small_calls[key] = state + 1
    return run_parallel(kernel, *args)


ALIGN = 64


def aligned_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an ``align``-byte boundary (a cache line).

    Large numpy arrays come from malloc, whose blocks start 16 bytes into a page, so every
    64-byte AVX-512 load of such an array would straddle two cache lines, and a model's speed
    would depend on where its buffers happened to land.
    """
    dtype = np.dtype(dtype)
    n = math.prod(map(int, shape))
    raw = np.empty(n * dtype.itemsize + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def workspace(tag: str, shape, dtype) -> np.ndarray:
    """A C-contiguous scratch array of ``shape`` owned by the calling thread (contents undefined).

    One growing buffer is kept per ``tag`` and thread; asking again with the same tag hands back
    the same memory, so a caller must not hold two workspaces of one tag at once. The same
    request (tag, shape and dtype) gets the same array object back: callers must not change its
    attributes (shape, flags).
    """
    views = getattr(_local, "views", None)
    if views is not None:
        # the same request as before: the same view (no slicing and reshaping, which cost more
        # than many of the kernels these workspaces serve)
        try:
            return views[(tag, shape, dtype)]
        except (KeyError, TypeError):  # not asked before, or a shape that cannot be a key (a list)
            pass
    key = (tag, shape, dtype)
    dtype = np.dtype(dtype)
    n = math.prod(map(int, shape))
    nbytes = n * dtype.itemsize
    if nbytes > MAX_CACHED_BYTES:
        return _memory.empty(shape, dtype)
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    if views is None or len(views) >= MAX_CACHED_VIEWS:
        views = _local.views = {}
    buf = cache.get(tag)
    if buf is None or buf.nbytes < nbytes:
        # grow geometrically so a slowly growing shape does not reallocate every call
        size = max(nbytes, 0 if buf is None else min(2 * buf.nbytes, MAX_CACHED_BYTES))
        buf = cache[tag] = aligned_empty((size,), np.uint8)
        for k in [k for k in views if k[0] == tag]:  # views of the buffer this one replaces
            del views[k]
    view = buf[:nbytes].view(dtype).reshape(shape)
    if isinstance(shape, tuple):
        views[key] = view
    return view


def clear_workspaces() -> None:
    """Release the calling thread's scratch buffers (they are rebuilt on demand)."""
    _local.buffers = {}
    _local.views = {}


def workspace_bytes() -> int:
    """Bytes of scratch currently held by the calling thread."""
    return sum(b.nbytes for b in getattr(_local, "buffers", {}).values())


# Started at import, before any kernel of this package can compile (see _launch).
_layer: str = _launch()
_launch_pid: int = os.getpid()  # a forked child has another (see launched_here)
_needs_lock: bool = _layer not in ("tbb", "omp")

# name -> (executor, workers, pid): the helper thread pools, each started at its first use
_pools: dict = {}
_pool_lock = threading.Lock()


def _executor(name: str, workers: int, initializer=None) -> ThreadPoolExecutor:
    """The helper threads called ``name``, at least ``workers`` of them, each running
    ``initializer`` once when it starts; a forked child (whose copy of a pool has no threads
    behind it) gets pools of its own."""
    with _pool_lock:
        pool, size, pid = _pools.get(name, (None, 0, 0))
        if pool is None or size < workers or pid != os.getpid():
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"minicnn-{name}",
                                      initializer=initializer)
            _pools[name] = (pool, workers, os.getpid())
        return pool


def _one_thread_worker():
    """A ``map_one_thread`` worker: numba's thread count is per thread, so this one, set once
    when the worker starts, leaves every other thread's count as it was."""
    numba.set_num_threads(1)


def map_one_thread(fn, items) -> list:
    """``[fn(item) for item in items]``, each call on a worker thread of its own whose kernels run
    on that thread alone (numba's count 1 there, so GEMMs are not split either), in parallel.

    For work that splits into independent parts, like the images of a batch: the parts run
    without a barrier between kernels. The kernels release the GIL (``nogil=True``), so the
    workers compute at the same time. Under the ``workqueue`` layer, whose kernel calls take
    turns, or with one item, the calls run one after another on the calling thread.
    """
    items = list(items)
    if len(items) < 2 or _needs_lock:
        return [fn(item) for item in items]
    pool = _executor("one-thread", len(items), _one_thread_worker)
    futures = [pool.submit(fn, item) for item in items]
    return [f.result() for f in futures]


def _split(a, b, out, parts: int):
    """``parts`` (a_i, b_i, out_i) triples whose products fill disjoint slices of ``out``.

    Along the first batch axis of ``out`` when it has at least ``parts`` entries, else along
    the longer of its two matrix axes (rows come from ``a``, columns from ``b``).
    """
    nd = out.ndim
    lead = nd - 2
    if lead and out.shape[0] >= parts:
        axis, size = 0, out.shape[0]
    elif out.shape[-1] >= out.shape[-2]:
        axis, size = nd - 1, out.shape[-1]
    else:
        axis, size = nd - 2, out.shape[-2]
    bounds = [size * i // parts for i in range(parts + 1)]
    triples = []
    for lo, hi in zip(bounds, bounds[1:]):
        if hi <= lo:
            continue
        idx = lambda arr, ax: arr[(slice(None),) * ax + (slice(lo, hi),)]  # noqa: E731
        if axis == nd - 1:
            triples.append((a, idx(b, b.ndim - 1), idx(out, axis)))
        elif axis == nd - 2:
            triples.append((idx(a, a.ndim - 2), b, idx(out, axis)))
        else:  # a batch axis: operands that broadcast along it (size 1 or absent) are shared
            pa = a if a.ndim < nd or a.shape[0] == 1 else idx(a, 0)
            pb = b if b.ndim < nd or b.shape[0] == 1 else idx(b, 0)
            triples.append((pa, pb, idx(out, 0)))
    return triples


def matmul(a, b, out):
    """``np.matmul(a, b, out=out)`` with OpenBLAS on one thread per slice of ``out``, as many slices
    as OpenBLAS was set to use threads (see the module docstring). The slices run on numba's
    threads (``_gemm.split``), or, for what that path declines (integer or mixed dtypes, layouts
    BLAS cannot read in place) and under ``GEMM_THREADS = "pool"``, on the calling thread and
    Python helper threads. Returns ``out``.
    """
    threads = _blas.blas_threads()
    if threads is None:  # not an OpenBLAS we can steer: let the BLAS thread itself
        return np.matmul(a, b, out=out)
    macs = out.size * a.shape[-1]
    # no more slices than this thread's kernels may use (numba's count is per thread: a
    # ``map_one_thread`` worker runs everything on itself); asked only for a product large enough
    # to split, as numba answers under a lock
    parts = min(threads, macs // SPLIT_MIN_MACS)
    if parts > 1:
        parts = min(parts, numba.get_num_threads())
    parts = max(1, parts)
    with _blas.single_threaded():
        if parts == 1:
            return np.matmul(a, b, out=out)
        if GEMM_THREADS == "numba" and _gemm.split(a, b, out, parts):
            return out
        jobs = _split(a, b, out, parts)
        pool = _executor("gemm", len(jobs) - 1)
        futures = [pool.submit(np.matmul, pa, pb, out=po) for pa, pb, po in jobs[1:]]
        pa, pb, po = jobs[0]
        np.matmul(pa, pb, out=po)
        for f in futures:
            f.result()
    return out


# imported last: _gemm reads this module's launch state when it runs (not at import)
from . import _gemm  # noqa: E402
