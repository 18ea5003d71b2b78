"""A GEMM split over numba's own threads: each thread calls numpy's OpenBLAS (``cblas_sgemm`` or
``cblas_dgemm``, single-threaded) on its slice of the product, from inside a ``prange`` region.

Versions of the split GEMM (``_threads.matmul`` chooses; docs/kernels.md, "GEMMs on our own
threads" and "The slices on numba's threads", has the measurements):

1. ``GEMM_THREADS = "pool"`` (in ``_threads.matmul``): OpenBLAS set to one thread; one slice on the
   calling thread, the others on Python helper threads that block on a queue when idle. Also
   the fallback for what version 2 declines (integer or mixed dtypes, layouts BLAS cannot read
   in place, a forked child).
2. ``GEMM_THREADS = "numba"`` (this file, the default): the slices run on numba's workers, which
   are already awake between kernels (they spin briefly, ``_threads.SPIN_COUNT``), so a split
   GEMM starts as fast as any other kernel; a sleeping Python helper thread can take longer to
   wake than its slice takes to compute.

``gemm`` is the single-thread call itself, for kernels that run their own parallel region and
call BLAS from inside it on data they have just produced (``conv_images``: each thread unfolds
one image and multiplies it while the columns are still in its cache).

Checked by ``python -m pytest -q tests/test_numba_backend.py -k gemm`` (every split axis, both
float dtypes, transposed and broadcast operands against numpy; every declined case);
timed by ``python -m benchmarks.threads_ab --model b1 --gemm numba,pool`` (both versions
alternating in one process).

The OpenBLAS function is looked up in the library numpy loaded, registered with LLVM under a
name of ours, and called as an external function, so the kernel's machine code (which names the
symbol, not an address) can be cached on disk like every other kernel's. The integer arguments
are declared 64-bit: right for ILP64 builds (numpy's own wheels), and for 32-bit-int builds on
the 64-bit Linux ABIs, where an int argument occupies a whole register or 8-byte stack slot and
the callee reads its low half; anywhere else the symbol is not registered and ``split`` declines.
"""
from __future__ import annotations

import ctypes
import platform
import sys
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types

from ... import _blas
from . import _threads

_SYMBOLS = {"s": "minicnn_cblas_sgemm", "d": "minicnn_cblas_dgemm"}
_I = types.int64
_sgemm = types.ExternalFunction(_SYMBOLS["s"], types.void(
    _I, _I, _I, _I, _I, _I, types.float32, types.voidptr, _I, types.voidptr, _I, types.float32, types.voidptr, _I))
_dgemm = types.ExternalFunction(_SYMBOLS["d"], types.void(
    _I, _I, _I, _I, _I, _I, types.float64, types.voidptr, _I, types.voidptr, _I, types.float64, types.voidptr, _I))

# CBLAS's enumerations (cblas.h): row-major storage, an operand as stored or transposed
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# the axis a product is cut along: its batch entries, the rows of C, or the columns of C
SPLIT_BATCH, SPLIT_ROWS, SPLIT_COLUMNS = 0, 1, 2


@njit(cache=True, nogil=True)
def gemm(double, M, N, K, pa, ta, lda, pb, tb, ldb, beta, pc, ldc):  # pragma: no cover - jitted
    """C = A . B + beta * C on the calling thread, for kernels that run BLAS inside their own
    parallel region (row-major; addresses in bytes, leading dimensions in elements). OpenBLAS
    must be single-threaded meanwhile and ``available()`` true."""
    if double:
        _dgemm(ROW_MAJOR, ta, tb, M, N, K, 1.0, pa, lda, pb, ldb, beta, pc, ldc)
    else:
        _sgemm(ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), pa, lda, pb, ldb, np.float32(beta), pc, ldc)


@njit(cache=True, nogil=True)
def _one(double, M, N, K, pa, ta, lda, pb, tb, ldb, pc, ldc):  # pragma: no cover - jitted
    gemm(double, M, N, K, pa, ta, lda, pb, tb, ldb, 0.0, pc, ldc)


@njit(cache=True, nogil=True, parallel=True)
def _slices(double, parts, split, B1, B2, M, N, K, pa, ta, lda, sa1, sa2, pb, tb, ldb, sb1, sb2,
            pc, ldc, sc1, sc2, isz):  # pragma: no cover - jitted
    """Slice ``p`` of ``parts`` of C[i1, i2] = A[i1, i2] . B[i1, i2] (byte addresses and byte
    strides over the two batch axes; lda/ldb/ldc in elements), cut along the batch
    (``SPLIT_BATCH``), the rows of C (``SPLIT_ROWS``) or its columns (``SPLIT_COLUMNS``). The
    arguments are a ``Plan``'s fields."""
    nb = B1 * B2
    for p in prange(parts):
        if split == SPLIT_BATCH:
            lo = nb * p // parts
            hi = nb * (p + 1) // parts
            for idx in range(lo, hi):
                i1 = idx // B2
                i2 = idx - i1 * B2
                _one(double, M, N, K, pa + i1 * sa1 + i2 * sa2, ta, lda, pb + i1 * sb1 + i2 * sb2, tb, ldb,
                     pc + i1 * sc1 + i2 * sc2, ldc)
        else:
            total = M if split == SPLIT_ROWS else N
            lo = total * p // parts
            hi = total * (p + 1) // parts
            if hi > lo:
                for idx in range(nb):
                    i1 = idx // B2
                    i2 = idx - i1 * B2
                    a = pa + i1 * sa1 + i2 * sa2
                    b = pb + i1 * sb1 + i2 * sb2
                    c = pc + i1 * sc1 + i2 * sc2
                    if split == SPLIT_ROWS:  # rows of A: down the rows when stored as is, across when transposed
                        a += lo * (lda if ta == NO_TRANS else 1) * isz
                        _one(double, hi - lo, N, K, a, ta, lda, b, tb, ldb, c + lo * ldc * isz, ldc)
                    else:  # columns of B
                        b += lo * (1 if tb == NO_TRANS else ldb) * isz
                        _one(double, M, hi - lo, K, a, ta, lda, b, tb, ldb, c + lo * isz, ldc)


class Plan(NamedTuple):
    """The arguments of ``_slices``, in its order: one split product in byte addresses.

    C[i1, i2] = A[i1, i2] . B[i1, i2] over two batch axes (B1, B2; absent axes have size 1 and
    stride 0), each matrix given by its address, CBLAS transpose flag, leading dimension (in
    elements) and byte strides over the batch axes; ``isz`` is the item size in bytes.
    """

    double: bool     # float64 (dgemm) rather than float32 (sgemm)
    parts: int       # slices, one per task
    split: int       # SPLIT_BATCH, SPLIT_ROWS or SPLIT_COLUMNS
    B1: int
    B2: int
    M: int
    N: int
    K: int
    pa: int
    ta: int
    lda: int
    sa1: int
    sa2: int
    pb: int
    tb: int
    ldb: int
    sb1: int
    sb2: int
    pc: int
    ldc: int
    sc1: int
    sc2: int
    isz: int


def _register() -> bool:
    """Point our symbols at numpy's OpenBLAS cblas_?gemm; False where that is not possible."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return False
    import llvmlite.binding as ll

    found = {}
    for kind in ("s", "d"):
        fn = _blas.cblas_function(f"{kind}gemm")
        if fn is None:
            return False
        found[kind] = ctypes.cast(fn, ctypes.c_void_p).value
    for kind, addr in found.items():
        ll.add_symbol(_SYMBOLS[kind], addr)
    return True


_available = None


def available() -> bool:
    """Whether ``split`` can run here: an OpenBLAS with cblas symbols, a known ABI, and not a
    forked child of the process that started numba's threads (GNU OpenMP does not survive a
    fork; the pool path still works there)."""
    global _available
    if _available is None:
        _available = _register()
    return _available and _threads.launched_here()


def _matrix(arr, rows, cols, isz):
    """(transpose flag, leading dimension) of a matrix view with the given trailing shape, or None
    when BLAS cannot read it in place (no unit stride, or a leading dimension it rejects)."""
    s_r, s_c = arr.strides[-2], arr.strides[-1]
    if s_c == isz and s_r % isz == 0 and s_r // isz >= max(1, cols):
        return NO_TRANS, s_r // isz
    if s_r == isz and s_c % isz == 0 and s_c // isz >= max(1, rows):
        return TRANS, s_c // isz
    return None


def _batch_strides(arr, lead):
    """Byte strides of ``arr`` over ``out``'s leading axes ``lead`` (broadcast axes stride 0), or None."""
    own = arr.shape[:-2]
    if len(own) > len(lead):
        return None
    pad = len(lead) - len(own)
    strides = []
    for i, size in enumerate(lead):
        j = i - pad
        if j < 0 or own[j] == 1:
            strides.append(0)
        elif own[j] == size:
            strides.append(arr.strides[j])
        else:
            return None
    return strides


def split(a, b, out, parts: int) -> bool:
    """Compute ``np.matmul(a, b, out=out)`` in ``parts`` slices on numba's threads and return True,
    or return False (having written nothing) when this path does not apply: another dtype, a layout
    BLAS cannot read in place, more than two batch axes, overlapping operands, an empty product,
    no usable OpenBLAS. OpenBLAS must be single-threaded meanwhile (``_blas.single_threaded``)."""
    if not (type(a) is np.ndarray and type(b) is np.ndarray and type(out) is np.ndarray):
        return False
    dt = out.dtype
    if dt not in (np.float32, np.float64) or a.dtype != dt or b.dtype != dt:
        return False
    if a.ndim < 2 or b.ndim < 2 or out.ndim < 2 or out.ndim > 4 or not out.flags.writeable:
        return False
    M, K = a.shape[-2:]
    N = b.shape[-1]
    if b.shape[-2] != K or out.shape[-2:] != (M, N) or M * N * K == 0:
        return False
    isz = dt.itemsize
    lead = out.shape[:-2]
    fa, fb = _matrix(a, M, K, isz), _matrix(b, K, N, isz)
    fc = _matrix(out, M, N, isz)
    sa, sb = _batch_strides(a, lead), _batch_strides(b, lead)
    if fa is None or fb is None or fc is None or fc[0] != NO_TRANS or sa is None or sb is None:
        return False
    sc = list(out.strides[:-2])
    if any(s <= 0 for s in sc) or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return False
    if not available():
        return False
    pad = 2 - len(lead)
    B1, B2 = ((1,) * pad + tuple(lead))
    sa, sb, sc = ([0] * pad + sa), ([0] * pad + sb), ([0] * pad + sc)
    if B1 * B2 >= parts:
        how = SPLIT_BATCH
    else:
        how = SPLIT_COLUMNS if N >= M else SPLIT_ROWS
    plan = Plan(double=dt == np.float64, parts=parts, split=how, B1=B1, B2=B2, M=M, N=N, K=K,
                pa=a.ctypes.data, ta=fa[0], lda=fa[1], sa1=sa[0], sa2=sa[1],
                pb=b.ctypes.data, tb=fb[0], ldb=fb[1], sb1=sb[0], sb2=sb[1],
                pc=out.ctypes.data, ldc=fc[1], sc1=sc[0], sc2=sc[1], isz=isz)
    # always the parallel kernel (no serial twin): the caller split the product because it is large
    _threads.run_parallel(_slices, *plan)
    return True
