"""Helpers shared by the numba kernels: dtype and layout normalisation, argument checks, and the
two small kernels several ops reuse (the conv/linear epilogue and the per-channel sums).

Every kernel is compiled for C-contiguous, writeable float32 or float64 arrays and plain ints, so
each has at most two specialisations (one per dtype). ``prepare`` is what keeps it that way.

The shared kernels, checked on every flag and layout by
``python -m pytest -q tests/test_numba_backend.py -k epilogue`` and through the ops that use
them (``python -m pytest -q tests/test_conformance.py -k "numba and (batchnorm or linear or conv)"``),
timed inside those ops (``python -m benchmarks.profile --mode train --batch 16``, per op):

- ``epilogue``: dst = act(src * scale + bias + residual) over strided (image, channel, value)
  rows; the im2col write-back, batchnorm's affine pass, packing dY for the backward GEMMs.
- ``channel_sums``: per-channel float64 sums in one pass, in one of three forms
  (``CENTERED_MOMENTS``, ``GRAD_MOMENTS``, ``SUM_ONLY``), one task per channel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange, uint64

from . import _threads

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(*arrays) -> np.dtype:
    """The dtype an op computes in: numpy's promotion of the inputs, held to float32 or float64."""
    first = arrays[0].dtype
    if first in FLOATS and all(a is None or a.dtype == first for a in arrays):
        return first  # the common case, one float dtype throughout, without numpy's promotion
    dt = np.result_type(*[a.dtype for a in arrays if a is not None])
    if dt in FLOATS:
        return dt
    # float16, integers and bool compute in float32 (the kernels exist for float32/float64 only)
    return np.dtype(np.float64) if dt.kind == "f" and dt.itemsize > 8 else np.dtype(np.float32)


def prepare(a, dtype):
    """``a`` as a C-contiguous, writeable array of ``dtype`` (copying only when it must)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != dtype or not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, dtype=dtype, order="C", copy=True)
    return a


_EMPTY = {}


def empty_like_ndim(ndim: int, dtype) -> np.ndarray:
    """A zero-size stand-in for an absent optional array, so kernels see one type either way."""
    key = (ndim, np.dtype(dtype))
    arr = _EMPTY.get(key)
    if arr is None:
        arr = _EMPTY[key] = np.empty((0,) * ndim, dtype=dtype)
    return arr


from ...shapes import conv_output_size, pair  # noqa: E402,F401 - one definition for every backend


def check_conv(x, w, b, stride, padding, dilation, groups, where="conv2d"):
    """Validate a convolution's arguments; return (stride, padding, dilation, groups, P, Q)."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    groups = int(groups)
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"{where}: weight must be 4-D (K, C/groups, R, S), got shape {tuple(w.shape)}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(
            f"{where}: out channels {w.shape[0]} of weight {tuple(w.shape)} not divisible by groups={groups}"
        )
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(
            f"{where}: input shape {tuple(x.shape)} has {x.shape[1]} channels but weight shape "
            f"{tuple(w.shape)} with groups={groups} expects {w.shape[1] * groups}"
        )
    if min(stride + dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{where}: stride {stride} and dilation {dilation} must be >= 1, padding {padding} >= 0")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"{where}: bias shape {tuple(b.shape)} does not match weight shape {tuple(w.shape)}")
    P, Q = conv_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding, dilation)
    if P < 1 or Q < 1:
        raise ValueError(
            f"{where}: input shape {tuple(x.shape)} is smaller than the dilated kernel of weight "
            f"{tuple(w.shape)} (padding {padding}, dilation {dilation})"
        )
    return stride, padding, dilation, groups, P, Q


# --------------------------------------------------------------------------------------------
# Shared kernels (shared so that each costs one compilation per dtype, not one per op)


@njit(cache=True, nogil=True, parallel=True)
def epilogue(src, s_off, s_n, s_k, dst, d_off, d_n, d_k, nc, K, L,
             scale, has_scale, b, has_b, res, has_res, relu):  # pragma: no cover - jitted
    """dst[d(i, k, j)] = act(src[s(i, k, j)] * scale[k] + b[k] + res[d(i, k, j)]) for i < nc, k < K, j < L.

    s(i, k, j) = s_off + i*s_n + k*s_k + j and likewise d(...): the strides let one kernel read a
    GEMM result laid out (K, nc*L) and write y's (N, K, L) layout (the im2col write-back, which
    then carries bias/residual/ReLU at no extra pass), work in place on y, pack (N, K, L) into
    (K, N*L) for the backward GEMMs, or apply batchnorm's per-channel affine map. The residual is
    indexed like dst. One task per (i, k) row, or per i when rows are single values (L == 1).

    The flat arrays are indexed with unsigned integers: numba then knows no index is negative,
    drops its wrap-around test and LLVM vectorises the row loops. (Row views would do the same
    but cost an atomic reference count each, which dominates short rows; docs/kernels.md,
    "Lesson: 0-based loops over views".)
    """
    zero = dst.dtype.type(0)
    one = dst.dtype.type(1)
    # rows of one value (a linear layer's bias, L == 1) go one task per i, k innermost: a task
    # per single value costs more in index arithmetic than the value itself
    tasks = nc if L == 1 else nc * K
    for task in prange(tasks):
        if L == 1:
            sb = s_off + task * s_n
            db = d_off + task * d_n
            for k in range(K):
                si = uint64(sb + k * s_k)
                di = uint64(db + k * d_k)
                v = src[si] * (scale[k] if has_scale else one) + (b[k] if has_b else zero)
                if has_res:
                    v += res[di]
                if relu and v < 0:  # not max(v, 0): a NaN must stay NaN, as in the reference
                    v = zero
                dst[di] = v
            continue
        i = task // K
        k = task - i * K
        sb = uint64(s_off + i * s_n + k * s_k)
        db = uint64(d_off + i * d_n + k * d_k)
        # an absent scale is x*1 and an absent bias x+0 (exact), so three plain loops cover every
        # case: one test per row instead of four per element
        a = scale[k] if has_scale else one
        bias = b[k] if has_b else zero
        if has_res:
            for j in range(uint64(L)):
                v = src[sb + j] * a + bias + res[db + j]
                if relu and v < 0:
                    v = zero
                dst[db + j] = v
        elif relu:
            for j in range(uint64(L)):
                v = src[sb + j] * a + bias
                dst[db + j] = zero if v < 0 else v
        else:
            for j in range(uint64(L)):
                dst[db + j] = src[sb + j] * a + bias


# the forms of ``channel_sums``: batchnorm's statistics, batchnorm's backward, a bias gradient
CENTERED_MOMENTS, GRAD_MOMENTS, SUM_ONLY = 0, 1, 2


@njit(cache=True, nogil=True, parallel=True)
def channel_sums(mode, a3, b3, center):  # pragma: no cover - jitted
    """Per k of (N, K, L) arrays, two float64 sums over n and l, one task per k (fixed order):

    CENTERED_MOMENTS: s1 = sum(a - center[k]), s2 = sum((a - center[k])^2)   (b3 unused)
    GRAD_MOMENTS:     s1 = sum(b),             s2 = sum(b * (a - center[k]))
    SUM_ONLY:         s1 = sum(a),             s2 = 0                 (b3 and center unused;
                      each row of L values summed in four interleaved partial sums)
    """
    N, K, L = a3.shape
    s1 = np.empty(K, dtype=np.float64)
    s2 = np.empty(K, dtype=np.float64)
    for k in prange(K):
        m = center[k] if mode != SUM_ONLY else 0.0
        acc1 = 0.0
        acc2 = 0.0
        for n in range(N):
            if mode == CENTERED_MOMENTS:
                for j in range(L):
                    d = np.float64(a3[n, k, j]) - m
                    acc1 += d
                    acc2 += d * d
            elif mode == SUM_ONLY:
                # four running sums, not one: each add waits only for the one four values back
                # (a single chain of float64 adds runs at the adder's latency, not its rate)
                p0 = p1 = p2 = p3 = 0.0
                j4 = L - L % 4
                for j in range(0, j4, 4):
                    p0 += np.float64(a3[n, k, j])
                    p1 += np.float64(a3[n, k, j + 1])
                    p2 += np.float64(a3[n, k, j + 2])
                    p3 += np.float64(a3[n, k, j + 3])
                for j in range(j4, L):
                    p0 += np.float64(a3[n, k, j])
                acc1 += (p0 + p1) + (p2 + p3)
            else:
                for j in range(L):
                    g = np.float64(b3[n, k, j])
                    acc1 += g
                    acc2 += g * (np.float64(a3[n, k, j]) - m)
        s1[k] = acc1
        s2[k] = acc2
    return s1, s2


class Rows(NamedTuple):
    """(image, channel) rows of a flat array, as the epilogue reads or writes them: row (i, k)
    starts at ``a[off + i*n + k*k_stride]`` and its values are contiguous."""

    a: np.ndarray   # the flat array
    off: int        # where row (0, 0) starts
    n: int          # elements from image i to image i + 1
    k: int          # elements from channel k to channel k + 1


def nkl(a, n0=0) -> Rows:
    """Rows of an (N, K, L) array (any shape that flattens to it), starting at image ``n0``."""
    N, K = a.shape[0], a.shape[1]
    L = a.size // (N * K)
    return Rows(a.reshape(-1), n0 * K * L, K * L, L)


def run_epilogue(src: Rows, dst: Rows, nc, K, L, *, scale=None, b=None, res=None, relu=False):
    """dst row (i, k) = act(src row (i, k) * scale[k] + b[k] + res row (i, k)) for i < nc, k < K,
    L values per row (see :func:`epilogue`); absent scale, bias or residual get stand-ins. The
    residual is a flat array indexed like ``dst``."""
    dt = dst.a.dtype
    one_d = empty_like_ndim(1, dt)
    _threads.run(
        epilogue, src.a, int(src.off), int(src.n), int(src.k), dst.a, int(dst.off), int(dst.n), int(dst.k),
        int(nc), int(K), int(L),
        one_d if scale is None else scale, scale is not None,
        one_d if b is None else b, b is not None,
        one_d if res is None else res, res is not None, bool(relu),
    )


_NO_CENTER = np.zeros(1)


def sum_over_n_l(a3) -> np.ndarray:
    """Float64 per-k sum of an (N, K, L) array over n and l."""
    s1, _ = _threads.run(channel_sums, SUM_ONLY, a3, a3, _NO_CENTER)
    return s1
