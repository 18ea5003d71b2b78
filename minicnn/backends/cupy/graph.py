"""CUDA-graph capture for the cupy backend: record a fixed-shape forward once, replay it in one launch.

A batch-1 ResNet-18 forward is some sixty small kernels. Launched one by one from Python, each
costs microseconds of host time while the GPU waits for the next. :func:`capture_graph` (this
backend's ``capture_graph`` table entry, which ``CompiledModel.capture`` calls) runs the forward
under CUDA stream capture (``cupy.cuda.Stream.begin_capture`` / ``end_capture``) and returns a
:class:`GraphReplay`: each call copies its input into the recording's input buffer, launches the
whole graph at once and copies the result out into a new array.

What makes a recording safe to replay:

- Memory. Everything allocated while warming up and recording comes from a private
  ``cupy.cuda.MemoryPool`` that nothing allocates from afterwards. An intermediate that Python
  frees goes back to that pool and is never handed to another array, so the addresses the graph
  holds stay its own for as long as the :class:`GraphReplay` (which keeps the pool) lives.
- Warm-up. ``fn`` runs ``WARMUP_RUNS`` times on the capture stream first: kernels are compiled
  and loaded, lazy caches filled, and the pool holds every block the recording will ask for.
- GEMMs. CuPy refuses every cuBLAS call while a stream captures (its ``setStream`` raises
  NotImplementedError). While this thread records, :func:`matmul` therefore calls cuBLAS through
  its C API (ctypes) on a handle of this module whose stream and workspace are set before the
  capture begins; at all other times it is ``cupy.matmul``. So every GEMM of the backend must
  reach cuBLAS through :func:`matmul` (``CupyRuntime.matmul`` is where the ops' GEMMs go); one
  that goes through CuPy's own wrappers makes the recording fail with a line saying so.
- Streams. Recording and replay run on a private non-blocking stream. A replay waits for the
  caller's current stream (an event) and makes that stream wait for it, so it is ordered with
  whatever the caller runs; replays are serialised by a lock (there is one input buffer).

The host-side rules are plain functions with CPU tests (tests/test_gpu.py): :func:`gemm_plan`
(a row-major product as a column-major cuBLAS call), :func:`matrix_layout`,
:func:`workspace_bytes` and :func:`check_example`.

Written and checked on the host (the rules above, and the capture plumbing above the table on a
fake recording backend), and on a GPU by ``tests/test_gpu.py`` (capture and replay against eager).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np

__all__ = ["capture_graph", "matmul", "GraphReplay", "gemm_plan", "matrix_layout", "workspace_bytes",
           "check_example", "WARMUP_RUNS"]

# runs of ``fn`` before recording: the first compiles and loads kernels and fills caches, the
# second allocates exactly as the recording will (the blocks the first freed are in the pool)
WARMUP_RUNS = 2

_INT_MAX = 2**31 - 1
_OP_N, _OP_T = 0, 1  # cublasOperation_t


# -- host-side rules (no device) ---------------------------------------------------------------------


def check_example(shape, dtype) -> None:
    """Refuse, in one line, an example input a recording cannot be made for.

    A recording has fixed shapes, so the example fixes them: it must have at least one axis and
    no empty one (a graph of no work), and a floating dtype the kernels take.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("capture_graph: the example input must be an array with at least one axis, got a scalar")
    if any(s == 0 for s in shape):
        raise ValueError(f"capture_graph: the example input has an empty axis (shape {shape}); record a real batch")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"capture_graph: the example input must be float32 or float64, got {np.dtype(dtype)}")


def workspace_bytes(cc_major: int) -> int:
    """Bytes of cuBLAS workspace to give a recording's handle: cuBLAS's guidance is 32 MiB on
    Hopper (compute capability 9.x) and newer, 4 MiB before; a handle given its own workspace
    never allocates inside the capture."""
    return (32 if int(cc_major) >= 9 else 4) * 2**20


def matrix_layout(shape, strides):
    """How cuBLAS (column-major) can read the 2-D view with ``shape`` (rows, cols) and element
    ``strides``: ``("row", ld)`` when rows are contiguous (row-major, leading dimension ``ld``),
    ``("col", ld)`` when columns are, else None (the view needs a contiguous copy first).

    A single row or column has no leading stride to speak of; it is read as row-major.
    """
    r, c = int(shape[0]), int(shape[1])
    s0, s1 = int(strides[0]), int(strides[1])
    if c == 1:
        s1 = 1
    if r == 1:
        s0 = max(c, 1)
    if s1 == 1 and s0 >= max(c, 1):
        return ("row", s0)
    if s0 == 1 and s1 >= max(r, 1):
        return ("col", s1)
    return None


def _batch_stride(batch_shape, full, strides):
    """One element stride that walks this operand's batches in the order of ``full`` (the
    broadcast batch shape), 0 when it is broadcast over all of them, None when no single stride
    does (broadcast over some axes only, or batches not evenly spaced)."""
    pad = (1,) * (len(full) - len(batch_shape))
    shape = pad + tuple(batch_shape)
    strides = (0,) * len(pad) + tuple(strides)
    live = [d for d in range(len(full)) if full[d] > 1]
    if all(shape[d] == 1 for d in live):
        return 0
    if any(shape[d] != full[d] for d in live):
        return None
    # walking the live axes as one flat index needs stride[d] == stride[d+1] * full[d+1]
    for d, e in zip(live, live[1:]):
        if strides[d] != strides[e] * full[e]:
            return None
    return strides[live[-1]] if strides[live[-1]] > 0 else None  # reversed batches: copied


def gemm_plan(a_shape, a_strides, b_shape, b_strides) -> dict:
    """The cuBLAS call that computes ``a @ b`` (numpy's matmul of two arrays of at least two axes,
    batch axes broadcast) into a new C-contiguous result, from shapes and element strides alone.

    Row-major C = A B is column-major C^T = B^T A^T, so cuBLAS's first operand is ``b`` and its
    second ``a``: a row-major operand is read as it lies (``N``), a column-major one transposed
    (``T``). Returns a dict with ``transa, transb, m, n, k, lda, ldb, ldc, stride_a, stride_b,
    stride_c, batch`` (cuBLAS's names and order: ``stride_a`` belongs to ``b``), ``out_shape``,
    and ``copy``: the operands (``"a"``, ``"b"``) that must first be made contiguous (broadcast
    to the full batch shape), after which the plan is asked again. ValueError for shapes that
    do not multiply or sizes past cuBLAS's 32-bit ints.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError(f"gemm_plan: operands need two axes or more, got shapes {a_shape} and {b_shape}")
    M, K = a_shape[-2:]
    K2, N = b_shape[-2:]
    if K != K2:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} do not multiply ({K} != {K2})")
    try:
        full = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul: batch shapes of {a_shape} and {b_shape} do not broadcast") from None
    batch = int(np.prod(full, dtype=np.int64)) if full else 1
    plan = {"out_shape": full + (M, N), "batch": batch, "m": N, "n": M, "k": K, "ldc": max(N, 1),
            "stride_c": M * N, "copy": ()}
    copy = []
    lb, la = matrix_layout((K, N), b_strides[-2:]), matrix_layout((M, K), a_strides[-2:])
    sb = _batch_stride(b_shape[:-2], full, b_strides[:-2])
    sa = _batch_stride(a_shape[:-2], full, a_strides[:-2])
    if lb is None or sb is None:
        copy.append("b")
    if la is None or sa is None:
        copy.append("a")
    if copy:
        plan["copy"] = tuple(sorted(copy))
        return plan
    # cuBLAS's first operand, op(b^T-as-stored) of shape (N, K)
    plan["transa"], plan["lda"] = (_OP_N, lb[1]) if lb[0] == "row" else (_OP_T, lb[1])
    # cuBLAS's second operand, of shape (K, M)
    plan["transb"], plan["ldb"] = (_OP_N, la[1]) if la[0] == "row" else (_OP_T, la[1])
    plan["stride_a"], plan["stride_b"] = sb, sa
    for name in ("m", "n", "k", "lda", "ldb", "ldc", "batch"):
        if plan[name] > _INT_MAX:
            raise ValueError(f"matmul: {name}={plan[name]} exceeds cuBLAS's 32-bit int for shapes {a_shape} @ {b_shape}")
    return plan


# -- cuBLAS through its C API -------------------------------------------------------------------------


def _loaded_library_paths(fragment: str) -> list:
    """Paths of the shared objects mapped into this process whose file name contains ``fragment``."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if fragment in os.path.basename(p))


def _load_cublas():
    """The cuBLAS library CuPy itself uses (the one already mapped into the process), else the
    first one found by name or in the nvidia wheels' folders."""
    try:
        import cupy  # noqa: F401 - sets up where CuPy finds the CUDA libraries (the wheels' folders)
        import cupy_backends.cuda.libs.cublas  # noqa: F401 - maps CuPy's libcublas into the process
    except ImportError:
        pass  # then by name or in the wheels' folders, below
    cands = [p for p in _loaded_library_paths("libcublas.so") if "libcublasLt" not in p]
    cands += ["libcublas.so.13", "libcublas.so.12", ctypes.util.find_library("cublas")]
    try:
        import nvidia

        for root in nvidia.__path__:
            for dirpath, _, files in os.walk(root):
                cands += [os.path.join(dirpath, f) for f in sorted(files) if f.startswith("libcublas.so")]
    except ImportError:
        pass
    errors = []
    for c in cands:
        if not c:
            continue
        try:
            return ctypes.CDLL(c)
        except OSError as e:
            errors.append(str(e))
    raise RuntimeError("graph capture: cannot load the cuBLAS library (libcublas.so) that CuPy uses: "
                       + ("; ".join(errors[-2:]) or "none found"))


class _Cublas:
    """The few cuBLAS entry points a recording needs, called through ctypes (not CuPy's wrappers,
    which refuse to run while a stream captures)."""

    def __init__(self):
        lib = _load_cublas()
        vp, i, ll, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_size_t
        sig = {
            "cublasCreate_v2": (ctypes.POINTER(vp),),
            "cublasDestroy_v2": (vp,),
            "cublasSetStream_v2": (vp, vp),
            "cublasSetWorkspace_v2": (vp, vp, sz),
            "cublasSetMathMode": (vp, i),
        }
        for prefix in ("S", "D"):
            sig[f"cublas{prefix}gemm_v2"] = (vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i)
            sig[f"cublas{prefix}gemmStridedBatched"] = (vp, i, i, i, i, i, vp, vp, i, ll, vp, i, ll, vp, vp, i, ll, i)
        self.fn = {}
        for name, argtypes in sig.items():
            try:
                f = getattr(lib, name)
            except AttributeError:
                if name in self.OPTIONAL:
                    continue
                raise RuntimeError(f"graph capture: the cuBLAS library has no {name}") from None
            f.argtypes, f.restype = list(argtypes), ctypes.c_int
            self.fn[name] = f

    # without it a recording's GEMMs use cuBLAS's own workspace, which relaxed capture allows
    OPTIONAL = ("cublasSetWorkspace_v2",)

    def call(self, name, *args):
        if name not in self.fn and name in self.OPTIONAL:
            return
        status = self.fn[name](*args)
        if status != 0:
            raise RuntimeError(f"graph capture: {name} failed with cuBLAS status {status}")


_cublas_lib = None
_handles: dict = {}  # device id -> cuBLAS handle of this module (lives as long as the process)
_lib_lock = threading.Lock()
_local = threading.local()  # .recording: the _Recording this thread is inside, if any


def _cublas():
    global _cublas_lib
    with _lib_lock:
        if _cublas_lib is None:
            _cublas_lib = _Cublas()
        return _cublas_lib


def _handle(device_id: int):
    lib = _cublas()
    with _lib_lock:
        h = _handles.get(device_id)
        if h is None:
            h = ctypes.c_void_p()
            lib.call("cublasCreate_v2", ctypes.byref(h))
            _handles[device_id] = h
        return h


def _gemm(rec, a, b, out):
    """``out[...] = a @ b`` by one cuBLAS call on the recording's handle (stream set already)."""
    import cupy

    plan = gemm_plan(a.shape, _elem_strides(a), b.shape, _elem_strides(b))
    if plan["copy"]:
        full = plan["out_shape"][:-2]
        if "a" in plan["copy"]:
            a = cupy.ascontiguousarray(cupy.broadcast_to(a, full + a.shape[-2:]))
        if "b" in plan["copy"]:
            b = cupy.ascontiguousarray(cupy.broadcast_to(b, full + b.shape[-2:]))
        plan = gemm_plan(a.shape, _elem_strides(a), b.shape, _elem_strides(b))
    if out.size == 0:
        return out
    if plan["k"] == 0:
        out.fill(0)
        return out
    scalar = ctypes.c_float if a.dtype == np.float32 else ctypes.c_double
    alpha, beta = scalar(1.0), scalar(0.0)
    p = "S" if a.dtype == np.float32 else "D"
    lib, h = rec.lib, rec.handle
    ptr = lambda arr: ctypes.c_void_p(arr.data.ptr)  # noqa: E731
    if plan["batch"] == 1:
        lib.call(f"cublas{p}gemm_v2", h, plan["transa"], plan["transb"], plan["m"], plan["n"], plan["k"],
                 ctypes.byref(alpha), ptr(b), plan["lda"], ptr(a), plan["ldb"], ctypes.byref(beta), ptr(out),
                 plan["ldc"])
    else:
        lib.call(f"cublas{p}gemmStridedBatched", h, plan["transa"], plan["transb"], plan["m"], plan["n"],
                 plan["k"], ctypes.byref(alpha), ptr(b), plan["lda"], plan["stride_a"], ptr(a), plan["ldb"],
                 plan["stride_b"], ctypes.byref(beta), ptr(out), plan["ldc"], plan["stride_c"], plan["batch"])
    return out


def _elem_strides(a):
    item = a.dtype.itemsize
    if any(s % item for s in a.strides):
        return tuple(-1 for _ in a.strides)  # misaligned view: never matches a layout, so it is copied
    return tuple(s // item for s in a.strides)


def matmul(a, b, out=None):
    """``a @ b`` as ``cupy.matmul``; while this thread records a graph, by a direct cuBLAS call.

    CuPy refuses cuBLAS during stream capture, so the backend's GEMMs come here: outside a
    recording this is ``cupy.matmul(a, b, out=out)`` exactly; inside one, float32 or float64
    operands of two or more axes (batch axes broadcast as numpy's) go to cuBLAS's gemm on the
    recording's handle, into ``out`` when it is a C-contiguous array of the result's shape and
    dtype, else into a new array copied to ``out``.
    """
    import cupy

    rec = getattr(_local, "recording", None)
    if rec is None:
        return cupy.matmul(a, b, out=out)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul while recording a graph: operands need two axes or more, got {a.shape} @ {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"matmul while recording a graph: float32 or float64 operands of one dtype, got "
                        f"{a.dtype} @ {b.dtype}")
    full = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])) + (a.shape[-2], b.shape[-1])
    if (out is not None and out.dtype == a.dtype and tuple(out.shape) == full
            and out.flags.c_contiguous):
        return _gemm(rec, a, b, out)
    y = _gemm(rec, a, b, cupy.empty(full, a.dtype))
    if out is None:
        return y
    out[...] = y
    return out


# -- recording and replay -----------------------------------------------------------------------------

_capture_lock = threading.Lock()  # one recording at a time: they share the module's cuBLAS handle


class _Recording:
    """What one recording owns: its memory pool, stream, input buffer and cuBLAS workspace."""

    def __init__(self, example):
        import cupy

        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        dev = cupy.cuda.Device()
        self.device = dev.id
        cc_major = int(dev.compute_capability) // 10
        self.lib = _cublas()
        self.handle = _handle(self.device)
        caller = cupy.cuda.get_current_stream()
        ready = cupy.cuda.Event(disable_timing=True)
        ready.record(caller)
        self.stream.wait_event(ready)  # the example may still be being written on the caller's stream
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.static_in = cupy.empty(example.shape, example.dtype)
            self.static_in[...] = example
            self.ws_bytes = workspace_bytes(cc_major)
            self.workspace = self.pool.malloc(self.ws_bytes)
        self.graph = None
        self.static_out = None

    def record(self, fn):
        import cupy

        # the handle's stream and workspace are set now: cuBLAS calls that set them during the
        # capture are what CuPy refuses
        self.lib.call("cublasSetStream_v2", self.handle, ctypes.c_void_p(self.stream.ptr))
        self.lib.call("cublasSetWorkspace_v2", self.handle, ctypes.c_void_p(self.workspace.ptr),
                      ctypes.c_size_t(self.ws_bytes))
        self.lib.call("cublasSetMathMode", self.handle, 0)  # CUBLAS_DEFAULT_MATH: fp32 as cupy.matmul
        _local.recording = self
        try:
            with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
                for _ in range(WARMUP_RUNS):
                    y = fn(self.static_in)
                    del y
                self.stream.synchronize()  # surface a failing kernel here, before recording
                self.stream.begin_capture()
                try:
                    out = fn(self.static_in)
                except BaseException as e:
                    _end_quietly(self.stream)
                    if not isinstance(e, Exception):  # KeyboardInterrupt and the like stay what they are
                        raise
                    raise RuntimeError(_capture_failure(e)) from e
                try:
                    graph = self.stream.end_capture()
                except Exception as e:  # noqa: BLE001 - CUDARuntimeError: the capture was invalidated
                    raise RuntimeError(_capture_failure(e)) from e
        finally:
            _local.recording = None
            # back to the null stream, which also gives the handle cuBLAS's own workspace again:
            # this recording's workspace belongs to its pool, which goes when the recording goes
            self.lib.call("cublasSetStream_v2", self.handle, ctypes.c_void_p(0))
        if not isinstance(out, cupy.ndarray):
            raise TypeError(f"capture_graph: the recorded function must return one array, got {type(out).__name__}")
        self.graph, self.static_out = graph, out
        # the first replay runs now, so an error in the graph shows at capture time
        self.graph.launch(self.stream)
        self.stream.synchronize()
        return GraphReplay(self)


def _end_quietly(stream):
    """Leave capture mode after a failure (ending an invalidated capture raises; it still ends)."""
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001
        pass


def _capture_failure(e) -> str:
    text = f"{type(e).__name__}: {e}"
    hint = ""
    if "cuBLAS" in text or "cuSOLVER" in text or "cuRAND" in text:
        hint = ("; a library call went through CuPy's wrapper, which CuPy refuses while a stream captures: "
                "GEMMs must go through minicnn.backends.cupy.graph.matmul")
    elif "capturing" in text or "StreamCapture" in text:
        hint = "; something waited for the device (a copy to the host, a synchronize) while recording"
    return f"graph capture failed while recording: {text}{hint}"


class GraphReplay:
    """A recorded graph, called as ``replay(x) -> y``: ``x`` (a CuPy array of the recorded shape;
    another float dtype is cast) is copied into the recording's input buffer, the graph is
    launched, and its output is copied into a new array, ordered with the caller's current
    stream. Calls from several threads take turns. ``nbytes`` is the device memory the recording
    keeps (its pool: activations, workspace, input and output buffers)."""

    def __init__(self, rec: _Recording):
        import cupy

        self._rec = rec
        self._lock = threading.Lock()
        self._ready = cupy.cuda.Event(disable_timing=True)
        self._done = cupy.cuda.Event(disable_timing=True)
        self.shape = tuple(rec.static_in.shape)
        self.dtype = rec.static_in.dtype
        self.out_shape = tuple(rec.static_out.shape)

    @property
    def nbytes(self) -> int:
        return int(self._rec.pool.total_bytes())

    def __call__(self, x):
        import cupy

        if not isinstance(x, cupy.ndarray):
            raise TypeError(f"graph replay: expected a CuPy array, got {type(x).__name__}")
        if tuple(x.shape) != self.shape:
            raise ValueError(f"graph replay: the graph was recorded for input shape {self.shape}, got {tuple(x.shape)}")
        rec = self._rec
        with self._lock:
            caller = cupy.cuda.get_current_stream()
            y = cupy.empty(rec.static_out.shape, rec.static_out.dtype)  # the caller's memory and stream
            self._ready.record(caller)
            rec.stream.wait_event(self._ready)
            with rec.stream:
                if x is not rec.static_in:
                    rec.static_in[...] = x
                rec.graph.launch(rec.stream)
                y[...] = rec.static_out
            self._done.record(rec.stream)
            caller.wait_event(self._done)
        return y

    def __repr__(self):
        return f"GraphReplay(input {self.shape} {self.dtype} -> {self.out_shape})"


def capture_graph(fn, example):
    """Record ``fn(x)`` for inputs shaped like ``example`` (a CuPy array) as one CUDA graph.

    ``fn`` runs ``WARMUP_RUNS`` times, then once under stream capture, all on a private stream
    with a private memory pool (see the module docstring). It must not wait for the device (no
    ``cupy.asnumpy``, ``.item()``, ``synchronize``) and must allocate alike on every call.
    Returns a :class:`GraphReplay`. Errors while recording raise RuntimeError naming the cause;
    the stream is left out of capture mode.
    """
    import cupy

    if not isinstance(example, cupy.ndarray):
        raise TypeError(f"capture_graph: the example input must be a CuPy array, got {type(example).__name__}")
    check_example(example.shape, example.dtype)
    with _capture_lock:
        return _Recording(example).record(fn)
