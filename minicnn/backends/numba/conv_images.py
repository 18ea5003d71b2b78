"""Convolution by im2col + GEMM, one image at a time per thread, the columns never leaving cache.

The chunked im2col path (``conv.im2col_gemm``) unfolds several images into one wide column
matrix, then multiplies it with BLAS split over the threads: the matrix is written to memory
by the unfold and read back by the GEMM, and both threads wait for each other twice per chunk.
Here each thread owns a contiguous range of the batch and, image by image, unfolds the image
into its own (C*R*S, P*Q) workspace and calls single-threaded BLAS on it at once, while the
columns are still in its cache. One parallel region per call, no write-back pass (a single
image's (K, P*Q) product already is y's layout), and the backward reuses each image's columns
for both gradients:

- forward: y[n] = W . cols(x[n]), then bias and ReLU on y[n] while it is in cache;
- backward: dW_t^T += cols(x[n]) . dY[n]^T into the thread's own dW, kept transposed (that
  GEMM shape runs nearer BLAS's peak; the threads' partial sums are added at the end);
  dcols = W^T . dY[n] folded back into dx[n] (each cell summing its taps in (r, s) order, as
  ``im2col.col2im`` does); db's channel sums of dY[n] (float64) while dY[n] is in cache.

Versions (docs/kernels.md, "Per-image im2col on each thread: 5x5 layers at batch 128", has the
measurements):

1. ``forward_images``, ``backward_images`` (this file): ungrouped convolutions with at least
   ``MIN_OUTPUT_CELLS`` output cells per image whose per-image columns fit ``COLUMNS_MAX_BYTES``,
   at least ``MIN_IMAGES_PER_THREAD`` images per thread. Taps whose valid cells form one
   contiguous run (stride 1, "same" width) are unfolded and folded as one copy each.

Checked by ``python -m pytest -q tests/test_conv_images.py`` (forward and every gradient against
the numpy reference over strides, paddings, dilations and both float dtypes; the ops' use of
this path for the Fashion-MNIST convnet's layers);
timed by ``python -m benchmarks.fashion_step`` (the Fashion-MNIST step, against PyTorch).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import _blas
from . import _gemm, _memory, _threads
from .im2col import geometry, q_range

__all__ = ["applies", "forward_images", "backward_images"]

# one image's columns at most this big: a thread's workspace, the image's output and the filter
# then stay within a core's L2 (1 MiB on the development machine) or close to it
COLUMNS_MAX_BYTES = 1024 * 1024
# at least this many output cells per image: a narrower per-image GEMM (ResNet-18's 7x7 layers)
# runs below the chunked path's wide one, and A/B on a ResNet-18 training step showed no gain.
# The digits convnet's 8x8 layers (64 cells) stay on the chunked path too: their step gained about
# a tenth here, but a first `minicnn train digits` paid seconds more compiling this path's kernels
# (cold starts in docs/training.md)
MIN_OUTPUT_CELLS = 100
# each thread gets at least this many images, so the per-thread partial dW and the extra
# region pay for themselves; smaller batches use the chunked path
MIN_IMAGES_PER_THREAD = 2


# --------------------------------------------------------------------------------------------
# Unfold and fold of one image (serial: each runs inside a thread's task)


@njit(cache=True, nogil=True)
def _one_run(g, H, W, r, s):  # pragma: no cover - jitted
    """(p_lo, p_hi, q_lo, q_hi) of tap (r, s) when its valid cells in one (H, W) plane are a
    single contiguous run (stride 1, output as wide as the input), else p_lo = -1.

    Output (p, q) reads input (p - ph + r*dh, q - pw + s*dw): with Q == W, cell (p, q) and its
    source sit a constant distance apart in flat order, so rows p_lo..p_hi-1 read one run that
    also covers the cells left of q_lo and right of q_hi, which come from the rows next to them.
    """
    off_w = s * g.dw - g.pw
    q_lo, q_hi = q_range(g.Q, W, g.sw, off_w)
    if g.sh != 1 or g.sw != 1 or g.Q != W or q_hi <= q_lo:
        return -1, 0, q_lo, q_hi
    p_lo = min(max(0, g.ph - r * g.dh), g.P)
    p_hi = max(min(g.P, H + g.ph - r * g.dh), p_lo)
    return p_lo, p_hi, q_lo, q_hi


@njit(cache=True, nogil=True)
def _unfold_image(xf, base, C, H, W, colsf, g):  # pragma: no cover - jitted
    """colsf[(c*R + r)*S + s, p*Q + q] = image at xf[base:] (C, H, W) at (p*sh - ph + r*dh,
    q*sw - pw + s*dw), 0 outside.

    A tap whose valid cells are one run (``_one_run``) is one vectorised copy over views plus
    zeroing the cells the run should not have covered; other taps go row by row with flat
    indices (a view per row would cost a reference count each).
    """
    R, S, P, Q = g.R, g.S, g.P, g.Q
    zero = colsf.dtype.type(0)
    PQ = P * Q
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = ((c * R + r) * S + s) * PQ
                off_w = s * g.dw - g.pw
                p_lo, p_hi, q_lo, q_hi = _one_run(g, H, W, r, s)
                if p_lo >= 0:
                    for j in range(row, row + p_lo * Q):
                        colsf[j] = zero
                    for j in range(row + p_hi * Q, row + PQ):
                        colsf[j] = zero
                    if p_hi > p_lo:
                        run = (p_hi - 1 - p_lo) * Q + q_hi - q_lo
                        sb = base + (c * H + p_lo - g.ph + r * g.dh) * W + q_lo + off_w
                        db = row + p_lo * Q + q_lo
                        d = colsf[db:db + run]
                        src = xf[sb:sb + run]
                        for j in range(run):
                            d[j] = src[j]
                        for p in range(p_lo, p_hi):
                            for q in range(q_lo):
                                colsf[row + p * Q + q] = zero
                            for q in range(q_hi, Q):
                                colsf[row + p * Q + q] = zero
                    continue
                for p in range(P):
                    d = row + p * Q
                    hi = p * g.sh - g.ph + r * g.dh
                    if hi < 0 or hi >= H or q_hi <= q_lo:
                        for q in range(Q):
                            colsf[d + q] = zero
                        continue
                    src = base + (c * H + hi) * W + off_w
                    for q in range(q_lo):
                        colsf[d + q] = zero
                    for q in range(q_lo, q_hi):
                        colsf[d + q] = xf[src + q * g.sw]
                    for q in range(q_hi, Q):
                        colsf[d + q] = zero


@njit(cache=True, nogil=True)
def _fold_image(colsf, dxf, base, C, H, W, g):  # pragma: no cover - jitted
    """The adjoint of ``_unfold_image``: the image at dxf[base:] = sum of the column cells that
    came from each pixel, taps summed in (r, s) order.

    A one-run tap (``_one_run``) first zeroes its column cells that fall in the padding (the
    columns are a workspace the caller no longer reads), then adds the whole run at once.
    """
    R, S, P, Q = g.R, g.S, g.P, g.Q
    zero = dxf.dtype.type(0)
    PQ = P * Q
    for k in range(base, base + C * H * W):
        dxf[k] = zero
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = ((c * R + r) * S + s) * PQ
                off_w = s * g.dw - g.pw
                p_lo, p_hi, q_lo, q_hi = _one_run(g, H, W, r, s)
                if p_lo >= 0:
                    if p_hi > p_lo:
                        for p in range(p_lo, p_hi):
                            for q in range(q_lo):
                                colsf[row + p * Q + q] = zero
                            for q in range(q_hi, Q):
                                colsf[row + p * Q + q] = zero
                        run = (p_hi - 1 - p_lo) * Q + q_hi - q_lo
                        db = base + (c * H + p_lo - g.ph + r * g.dh) * W + q_lo + off_w
                        sb = row + p_lo * Q + q_lo
                        d = dxf[db:db + run]
                        src = colsf[sb:sb + run]
                        for j in range(run):
                            d[j] += src[j]
                    continue
                if q_hi <= q_lo:
                    continue
                for p in range(P):
                    hi = p * g.sh - g.ph + r * g.dh
                    if hi < 0 or hi >= H:
                        continue
                    d = base + (c * H + hi) * W + off_w
                    src = row + p * Q
                    for q in range(q_lo, q_hi):
                        dxf[d + q * g.sw] += colsf[src + q]


# --------------------------------------------------------------------------------------------
# Kernels


@njit(cache=True, nogil=True, parallel=True)
def _forward(double, parts, xf, C, H, W, K, pw_, cols, pcols, yf, py, b, has_b, relu, g):  # pragma: no cover
    """y[n] = W . cols(x[n]) (+ b) (ReLU), thread ``part`` taking images [N*part/parts, N*(part+1)/parts).

    ``pw_``, ``pcols``, ``py``: byte addresses of the filter (K, C*R*S), the workspace
    (parts, C*R*S, P*Q) and y (N, K, P*Q); ``cols`` and ``yf`` are the same memory as arrays.
    """
    N = xf.size // (C * H * W)
    PQ = g.P * g.Q
    CRS = cols.shape[1] // PQ
    isz = yf.itemsize
    zero = yf.dtype.type(0)
    for part in prange(parts):
        colsf = cols[part]
        pc = pcols + part * CRS * PQ * isz
        for n in range(N * part // parts, N * (part + 1) // parts):
            _unfold_image(xf, n * C * H * W, C, H, W, colsf, g)
            _gemm.gemm(double, K, PQ, CRS, pw_, _gemm.NO_TRANS, CRS, pc, _gemm.NO_TRANS, PQ,
                       0.0, py + n * K * PQ * isz, PQ)
            if has_b or relu:
                for k in range(K):
                    o = (n * K + k) * PQ
                    bk = b[k] if has_b else zero
                    for j in range(PQ):
                        v = yf[o + j] + bk
                        if relu and v < zero:
                            v = zero
                        yf[o + j] = v


@njit(cache=True, nogil=True, parallel=True)
def _backward(double, parts, xf, C, H, W, K, pw_, dyf, pdy, cols, pcols, dxf, need_dx, pdw, need_dw,
              db_parts, need_db, g):  # pragma: no cover - jitted
    """Per thread ``part`` and image n of its range: dW_part^T (+)= cols(x[n]) . dY[n]^T,
    dx[n] = fold(W^T . dY[n]) and db_part[k] += sum of dY[n, k] (float64), while dY[n] is in cache.

    Byte addresses: ``pw_`` the filter (K, C*R*S), ``pdy`` dY (N, K, P*Q), ``pcols`` the
    workspace (parts, C*R*S, P*Q) (``cols`` as an array), ``pdw`` the partial dWs, transposed
    (parts, C*R*S, K); ``dyf`` is dY as a flat array, ``db_parts`` (parts, K) float64.
    """
    N = xf.size // (C * H * W)
    PQ = g.P * g.Q
    CRS = cols.shape[1] // PQ
    isz = cols.itemsize
    NT, TR = _gemm.NO_TRANS, _gemm.TRANS
    for part in prange(parts):
        colsf = cols[part]
        pc = pcols + part * CRS * PQ * isz
        lo = N * part // parts
        if need_db:
            for k in range(K):
                db_parts[part, k] = 0.0
        for n in range(lo, N * (part + 1) // parts):
            pdyn = pdy + n * K * PQ * isz
            if need_db:
                for k in range(K):
                    o = (n * K + k) * PQ
                    acc = 0.0
                    for j in range(PQ):
                        acc += dyf[o + j]
                    db_parts[part, k] += acc
            if need_dw:
                _unfold_image(xf, n * C * H * W, C, H, W, colsf, g)
                # dW^T = cols . dY^T: the (C*R*S, K) form runs nearer BLAS's peak than (K, C*R*S)
                _gemm.gemm(double, CRS, K, PQ, pc, NT, PQ, pdyn, TR, PQ, 0.0 if n == lo else 1.0,
                           pdw + part * CRS * K * isz, K)
            if need_dx:
                # the columns are consumed: the workspace now takes their gradient
                _gemm.gemm(double, CRS, PQ, K, pw_, TR, CRS, pdyn, NT, PQ, 0.0, pc, PQ)
                _fold_image(colsf, dxf, n * C * H * W, C, H, W, g)


# --------------------------------------------------------------------------------------------
# Entry points


def _parts(N):
    return max(1, min(numba.get_num_threads(), N // MIN_IMAGES_PER_THREAD))


def applies(x_shape, w_shape, groups, P, Q, dtype) -> bool:
    """Whether this path takes the convolution: ungrouped, float32 or float64, the BLAS callable
    from numba's threads, at least ``MIN_OUTPUT_CELLS`` output cells per image and one image's
    columns within ``COLUMNS_MAX_BYTES``, and at least ``MIN_IMAGES_PER_THREAD`` images for each
    of two or more threads."""
    N, C = x_shape[0], x_shape[1]
    K, Cg, R, S = w_shape
    if groups != 1 or np.dtype(dtype) not in (np.float32, np.float64):
        return False
    if P * Q < MIN_OUTPUT_CELLS or C * R * S * P * Q * np.dtype(dtype).itemsize > COLUMNS_MAX_BYTES:
        return False
    if _parts(N) < 2 or _blas.blas_threads() is None:
        return False
    return _gemm.available()


def _require_blas(where):
    # also what registers the BLAS symbols the kernels call: without it they would call nothing
    if not _gemm.available():
        raise RuntimeError(f"{where}: needs an OpenBLAS callable from numba's threads (see conv_images.applies)")


def forward_images(x, w, b, y, stride, padding, dilation, relu):
    """Fill ``y`` (N, K, P, Q) with conv(x, w) (+ b) (then ReLU); all arrays C-contiguous, one
    float dtype, ``applies`` true. Returns y."""
    _require_blas("conv_images.forward_images")
    N, C, H, W = x.shape
    K, P, Q = w.shape[0], y.shape[2], y.shape[3]
    g = geometry(w.shape[2], w.shape[3], stride, padding, dilation, P, Q)
    parts = _parts(N)
    dt = x.dtype
    cols = _threads.workspace("conv_images.cols", (parts, w[0].size * P * Q), dt)
    bias = b if b is not None else np.empty(1, dt)
    with _blas.single_threaded():
        _threads.run_parallel(_forward, dt == np.float64, parts, x.reshape(-1), C, H, W, K, w.ctypes.data,
                              cols, cols.ctypes.data, y.reshape(-1), y.ctypes.data, bias, b is not None,
                              bool(relu), g)
    return y


def backward_images(dy, x, w, stride, padding, dilation, need_dx, need_dw, need_db=False):
    """(dx, dw, db) of a convolution (None where not needed); all arrays C-contiguous, one float
    dtype, ``applies`` true. db is summed in float64 and returned in the arrays' dtype."""
    _require_blas("conv_images.backward_images")
    N, C, H, W = x.shape
    K, P, Q = w.shape[0], dy.shape[2], dy.shape[3]
    g = geometry(w.shape[2], w.shape[3], stride, padding, dilation, P, Q)
    parts = _parts(N)
    dt = x.dtype
    CRS = w[0].size
    cols = _threads.workspace("conv_images.cols", (parts, CRS * P * Q), dt)
    dx = _memory.empty(x.shape, dt) if need_dx else np.empty(1, dt)
    dw_parts = _threads.workspace("conv_images.dw", (parts, CRS, K), dt) if need_dw else np.empty((1, 1, 1), dt)
    db_parts = np.empty((parts, K) if need_db else (1, 1), np.float64)
    with _blas.single_threaded():
        _threads.run_parallel(_backward, dt == np.float64, parts, x.reshape(-1), C, H, W, K, w.ctypes.data,
                              dy.reshape(-1), dy.ctypes.data, cols, cols.ctypes.data, dx.reshape(-1), bool(need_dx),
                              dw_parts.ctypes.data, bool(need_dw), db_parts, bool(need_db), g)
    dw = None
    if need_dw:
        dwt = dw_parts[0].copy()
        for p in range(1, parts):
            dwt += dw_parts[p]
        dw = np.ascontiguousarray(dwt.T).reshape(w.shape)
    db = db_parts.sum(axis=0).astype(dt) if need_db else None
    return (dx if need_dx else None), dw, db
