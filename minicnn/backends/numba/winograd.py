"""Winograd convolution for 3x3, stride-1 layers: F(2x2, 3x3) and F(4x4, 3x3).

An m x m block of outputs needs an alpha x alpha input tile (alpha = m + 2). With the transform
matrices B^T (alpha x alpha), G (alpha x 3) and A^T (m x alpha) of Lavin & Gray (2016),

    Y = A^T [ sum_c (G w_kc G^T) * (B^T d_c B) ] A          (* elementwise)

so per tile the 9*m*m multiplies of a direct 3x3 become alpha*alpha: 16 instead of 36 for F(2x2),
36 instead of 144 for F(4x4). Per chunk of images (T tiles):

    U (a2, K, C) = G w G^T for every (k, c)     one GEMM with kron(G, G); cached for constant filters
    V (a2, C, T) = B^T d B for every tile       ``_input_transform`` (ours)
    M[xi]        = U[xi] (K x C) . V[xi] (C x T), xi < a2      a2 BLAS GEMMs: the sum over c
    y            = A^T M A, + bias (+ residual), ReLU          ``_output_transform`` (ours)

The two data transforms are written out separably with their nonzero coefficients (about 100
additions per F(4x4) tile and channel instead of the 1296 multiply-adds of a dense kron(B^T, B^T)),
and each fuses a step that would otherwise be a pass of its own: the input transform reads the
image directly (no gathered tile array), the output transform applies the epilogue as it stores y.

Versions of the forward (docs/kernels.md, "Convolution variants", has each one's timings):

1. Hand-written transform loops per (image, channel); scalar, slower than the GEMMs they fed.
2. Every 2-D transform as one Kronecker matrix, so all three are BLAS GEMMs over every tile; the
   tiles gathered by the im2col kernel, one scatter kernel with the epilogue.
3. A dedicated gather and a row-contiguous scatter (no per-row views), and chunks of
   ``TARGET_TILES`` tiles that stay in cache.
4. (this file) Separable written-out transforms that read the image and write y directly: the
   data passes memory twice per chunk (V, M) instead of four times (tiles, V, M, Y).

Beside the forward: dW by Winograd's transposed form (``conv3x3_dw``, below), and dX as a
Winograd forward convolution of dY (conv.py, ``_dx_by_winograd``).

A constant (read-only) filter's U is computed once and cached by the caller (conv.py, _filters).

Accuracy: the transforms multiply by constants up to 8 (F(4x4)) and divide by up to 24, so float32
rounding grows; docs/kernels.md ("Winograd accuracy, measured") has the measured errors that set
the selection rule in conv.py.

Checked by ``python -m pytest -q tests/test_numba_backend.py -k "winograd or transform or f4_error"``
(both tile sizes against the numpy reference, the written-out transforms against the matrices,
the float32 error bound); timed by ``python -m benchmarks.variant_sweep`` (forward, dX and dW
against im2col on ResNet-18's layers) and ``python -m benchmarks.train_ab --off dw`` (a training
step with and without the Winograd dW).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import empty_like_ndim

# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), with interpolation
# points 0, 1, -1 (F(2x2)) and 0, 1, -1, 2, -2 (F(4x4)), plus the point at infinity.
BT = {
    2: np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], dtype=np.float64),
    4: np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64),
}
G = {
    2: np.array([[1, 0, 0],
                 [0.5, 0.5, 0.5],
                 [0.5, -0.5, 0.5],
                 [0, 0, 1]], dtype=np.float64),
    4: np.array([[1 / 4, 0, 0],
                 [-1 / 6, -1 / 6, -1 / 6],
                 [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6],
                 [1 / 24, -1 / 12, 1 / 6],
                 [0, 0, 1]], dtype=np.float64),
}
AT = {
    2: np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], dtype=np.float64),
    4: np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64),
}

# the 2-D filter transform as a matrix on row-major flattened 3x3 filters (float64; cast per dtype on use)
KRON_G = {t: np.kron(G[t], G[t]) for t in G}

# bytes of transformed tiles and products one chunk of images may occupy (the im2col variants'
# chunks have their own budget, conv.COLUMNS_CHUNK_BYTES)
TILES_CHUNK_BYTES = 48 * 1024 * 1024
# tiles per chunk: about one 56x56 image for F(4x4). Wide enough for the GEMMs, small enough that
# the chunk's V and M (C*T and K*T values per tap) stay in L2/L3 (docs/kernels.md, version 3)
TARGET_TILES = 196

_cast = {}


def _matrix(table, tile, dtype):
    """A transform matrix in ``dtype`` (cached: the casts are tiny but called per layer)."""
    key = (id(table), tile, np.dtype(dtype))
    mat = _cast.get(key)
    if mat is None:
        mat = _cast[key] = np.ascontiguousarray(table[tile].astype(dtype))
    return mat


@njit(cache=True, parallel=True)
def _input_transform(x, n0, nc, V, m, TH, TW, ph, pw):  # pragma: no cover - jitted
    """V[a*alpha + b, c, i*TH*TW + th*TW + tw] = (B^T d B)[a, b], d the alpha x alpha input tile at
    (th*m - ph, tw*m - pw) of image n0+i, channel c (zero outside the image); m = 2 or 4.

    Separably and with B^T's nonzeros written out: for each band of tiles (th), the band's alpha
    input rows are copied into ``d`` (zero-padded), B^T combines them row against row into ``t``
    (contiguous rows, so that loop vectorises), then B combines each tile's alpha columns of
    every row of ``t`` and the results go straight to their alpha*alpha rows of V. The tiles are
    never stored untransformed. One task per (image, channel), which owns its columns of V.
    """
    N = x.shape[0]
    C = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    alpha = m + 2
    T = V.shape[2]
    tiles = TH * TW
    Wt = TW * m + 2
    Vf = V.reshape(-1)
    zero = V.dtype.type(0)
    for task in prange(nc * C):
      i = task // C
      c = task - i * C
      d = np.zeros((alpha, Wt), dtype=V.dtype)
      t = np.empty((alpha, Wt), dtype=V.dtype)
      j_lo = max(0, pw)
      j_hi = min(Wt, W + pw)
      for th in range(TH):
        for r in range(alpha):
            h = th * m + r - ph
            if h >= 0 and h < H:
                d[r, j_lo:j_hi] = x[n0 + i, c, h, j_lo - pw:j_hi - pw]
            else:
                for j in range(Wt):
                    d[r, j] = zero
        if m == 4:
            for j in range(Wt):
                d0 = d[0, j]; d1 = d[1, j]; d2 = d[2, j]; d3 = d[3, j]; d4 = d[4, j]; d5 = d[5, j]
                t[0, j] = 4 * d0 - 5 * d2 + d4
                t[1, j] = -4 * (d1 + d2) + d3 + d4
                t[2, j] = 4 * (d1 - d2) - d3 + d4
                t[3, j] = 2 * (d3 - d1) + d4 - d2
                t[4, j] = 2 * (d1 - d3) + d4 - d2
                t[5, j] = 4 * d1 - 5 * d3 + d5
        else:
            for j in range(Wt):
                d0 = d[0, j]; d1 = d[1, j]; d2 = d[2, j]; d3 = d[3, j]
                t[0, j] = d0 - d2
                t[1, j] = d1 + d2
                t[2, j] = d2 - d1
                t[3, j] = d1 - d3
        col0 = i * tiles + th * TW
        A2C = C * T
        for a in range(alpha):
            base = (a * alpha * C + c) * T + col0  # row a*alpha + b sits b*C*T further
            if m == 4:
                for tw in range(TW):
                    j = tw * 4
                    d0 = t[a, j]; d1 = t[a, j + 1]; d2 = t[a, j + 2]; d3 = t[a, j + 3]; d4 = t[a, j + 4]; d5 = t[a, j + 5]
                    o = base + tw
                    Vf[o] = 4 * d0 - 5 * d2 + d4
                    Vf[o + A2C] = -4 * (d1 + d2) + d3 + d4
                    Vf[o + 2 * A2C] = 4 * (d1 - d2) - d3 + d4
                    Vf[o + 3 * A2C] = 2 * (d3 - d1) + d4 - d2
                    Vf[o + 4 * A2C] = 2 * (d1 - d3) + d4 - d2
                    Vf[o + 5 * A2C] = 4 * d1 - 5 * d3 + d5
            else:
                for tw in range(TW):
                    j = tw * 2
                    d0 = t[a, j]; d1 = t[a, j + 1]; d2 = t[a, j + 2]; d3 = t[a, j + 3]
                    o = base + tw
                    Vf[o] = d0 - d2
                    Vf[o + A2C] = d1 + d2
                    Vf[o + 2 * A2C] = d2 - d1
                    Vf[o + 3 * A2C] = d1 - d3


@njit(cache=True, parallel=True)
def _output_transform(M, y3, n0, nc, m, TH, TW, Q, b, has_b, res, has_res, relu):  # pragma: no cover
    """y[n0+i, k, p*Q + q] = act((A^T Mt A)[v, w] + b[k] (+ residual)), p = th*m + v, q = tw*m + w,
    Mt the alpha x alpha products of tile (th, tw), clipped to the P x Q output.

    Separably, per band of tiles: A combines each product row's alpha columns into m outputs
    for every tile of the band (``u``: alpha rows across the band's width), then A^T combines
    those rows into the band's m output rows, which take the bias, residual and ReLU as they are
    stored, contiguously. One task per (image, out channel).
    """
    K = M.shape[1]
    T = M.shape[2]
    alpha = m + 2
    PQ = y3.shape[2]
    P = PQ // Q
    tiles = TH * TW
    Wt = TW * m
    zero = y3.dtype.type(0)
    Mf = M.reshape(-1)
    KT = K * T
    for task in prange(nc * K):
      i = task // K
      k = task - i * K
      n = n0 + i
      u = np.empty((alpha, Wt), dtype=y3.dtype)
      out = np.empty((m, Wt), dtype=y3.dtype)
      bias = b[k] if has_b else zero
      for th in range(TH):
        col0 = i * tiles + th * TW
        for a in range(alpha):
            base = (a * alpha * K + k) * T + col0
            if m == 4:
                for tw in range(TW):
                    o = base + tw
                    m0 = Mf[o]; m1 = Mf[o + KT]; m2 = Mf[o + 2 * KT]; m3 = Mf[o + 3 * KT]; m4 = Mf[o + 4 * KT]; m5 = Mf[o + 5 * KT]
                    s12 = m1 + m2; d12 = m1 - m2; s34 = m3 + m4; d34 = m3 - m4
                    j = tw * 4
                    u[a, j] = m0 + s12 + s34
                    u[a, j + 1] = d12 + 2 * d34
                    u[a, j + 2] = s12 + 4 * s34
                    u[a, j + 3] = d12 + 8 * d34 + m5
            else:
                for tw in range(TW):
                    o = base + tw
                    m0 = Mf[o]; m1 = Mf[o + KT]; m2 = Mf[o + 2 * KT]; m3 = Mf[o + 3 * KT]
                    j = tw * 2
                    u[a, j] = m0 + m1 + m2
                    u[a, j + 1] = m1 - m2 - m3
        if m == 4:
            for q in range(Wt):
                m0 = u[0, q]; m1 = u[1, q]; m2 = u[2, q]; m3 = u[3, q]; m4 = u[4, q]; m5 = u[5, q]
                s12 = m1 + m2; d12 = m1 - m2; s34 = m3 + m4; d34 = m3 - m4
                out[0, q] = m0 + s12 + s34 + bias
                out[1, q] = d12 + 2 * d34 + bias
                out[2, q] = s12 + 4 * s34 + bias
                out[3, q] = d12 + 8 * d34 + m5 + bias
        else:
            for q in range(Wt):
                m0 = u[0, q]; m1 = u[1, q]; m2 = u[2, q]; m3 = u[3, q]
                out[0, q] = m0 + m1 + m2 + bias
                out[1, q] = m1 - m2 - m3 + bias
        for v in range(m):
            p = th * m + v
            if p >= P:
                break
            # 0-based loops over row views: no wrap-around checks, so the stores vectorise
            yr = y3[n, k, p * Q:(p + 1) * Q]
            orow = out[v, :Q]
            if has_res:
                rr = res[n, k, p * Q:(p + 1) * Q]
                for q in range(Q):
                    val = orow[q] + rr[q]
                    yr[q] = zero if (relu and val < 0) else val
            else:
                for q in range(Q):
                    val = orow[q]
                    yr[q] = zero if (relu and val < 0) else val


def transform_filters(w, tile, fresh=False):
    """U (alpha*alpha, K, C) = G w G^T for every (k, c), as one GEMM, in w's dtype.

    The result is the calling thread's workspace unless ``fresh`` (then a new array, for the
    constant-filter cache).
    """
    K, C = w.shape[:2]
    alpha = tile + 2
    shape = (alpha * alpha, K, C)
    U = _threads.aligned_empty(shape, w.dtype) if fresh else _threads.workspace(f"winograd.U{tile}", shape, w.dtype)
    _threads.matmul(_matrix(KRON_G, tile, w.dtype), w.reshape(K * C, 9).T, U.reshape(alpha * alpha, K * C))
    return U


class Tiling(NamedTuple):
    """How a P x Q output is cut into m x m tiles, and how many images one chunk takes."""

    m: int        # outputs per tile side (2 or 4)
    A2: int       # alpha^2 = (m + 2)^2 values per transformed tile
    TH: int       # tile rows
    TW: int       # tile columns
    images: int   # images per chunk


def _tiling(N, C, K, P, Q, tile, dtype, target_tiles) -> Tiling:
    """The tiling of a P x Q output in ``tile`` x ``tile`` tiles: about ``target_tiles`` tiles per
    chunk, and the chunk's V and M/Y within ``TILES_CHUNK_BYTES``."""
    m, alpha = tile, tile + 2
    TH, TW = -(-P // m), -(-Q // m)
    tiles = TH * TW
    per_image = alpha * alpha * (C + K) * tiles * np.dtype(dtype).itemsize
    return Tiling(m, alpha * alpha, TH, TW, max(1, min(N, -(-target_tiles // tiles), TILES_CHUNK_BYTES // per_image)))


def _transformed_inputs(x, n0, nc, m, TH, TW, padding):
    """V (alpha^2, C, nc*TH*TW) = B^T d B for every input tile of images n0..n0+nc-1 (a workspace)."""
    alpha = m + 2
    V = _threads.workspace("winograd.V", (alpha * alpha, x.shape[1], nc * TH * TW), x.dtype)
    _threads.run(_input_transform, x, n0, nc, V, m, TH, TW, padding[0], padding[1], weight=_threads.HEAVY)
    return V


def conv3x3(x, U, b, res3, y, padding, tile, relu):
    """Fill ``y`` (N, K, P, Q) with the 3x3 stride-1 convolution of prepared arrays by F(tile x tile, 3x3).

    ``U`` is the transformed filter from :func:`transform_filters` (or the constant-filter cache),
    ``res3`` the residual as (N, K, P*Q) or None, ``b`` the bias or None. Per chunk of images:
    V = input transform (ours), M[xi] = U[xi] . V[xi] (36 or 16 BLAS GEMMs), then the output
    transform with the epilogue (ours). Returns ``y``.
    """
    N, C = x.shape[:2]
    K = U.shape[1]
    P, Q = y.shape[2], y.shape[3]
    m, A2, TH, TW, nc = _tiling(N, C, K, P, Q, tile, x.dtype, TARGET_TILES)
    dt = x.dtype
    y3 = y.reshape(N, K, P * Q)
    bb = b if b is not None else empty_like_ndim(1, dt)
    rr = res3 if res3 is not None else empty_like_ndim(3, dt)
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _transformed_inputs(x, n0, mc, m, TH, TW, padding)
        T = V.shape[2]
        Mw = _threads.workspace("winograd.M", (A2, K, T), dt)
        _threads.matmul(U, V, Mw)
        _threads.run(_output_transform, Mw, y3, n0, mc, m, TH, TW, Q, bb, b is not None, rr, res3 is not None,
                     bool(relu), weight=_threads.HEAVY)
    return y


# --------------------------------------------------------------------------------------------
# dW of a 3x3 stride-1 layer by Winograd
#
# Per output tile, dW[k, c] gains sum_{v,w} dY_t[v, w] d_t[v + r, w + s]: a correlation with 3x3
# outputs and an m x m "filter" (the tile of dY) over the same alpha x alpha input tile d_t the
# forward reads. For fixed d the forward's F(m, 3) is y = A^T diag(B^T d) G g, a matrix T_d applied
# to the filter g; this correlation is its transpose, T_d^T dy = G^T diag(B^T d) A dy. In 2-D and
# summed over the tiles t of the batch:
#
#     dW[k, c] = G^T [ sum_t (A dY_t A^T) * (B^T d_t B) ] G          (* elementwise)
#
# B^T d B is the forward's input transform (V, unchanged); A dY A^T (``_dy_transform``) lifts each
# m x m tile of dY to alpha x alpha; the sum over tiles is alpha^2 GEMMs (K x T) . (T x C); and
# G^T . G maps each (k, c) back to 3x3, one GEMM with kron(G, G)^T. Multiplies per tile and (k, c):
# 36 instead of 144 for F(4x4), 16 instead of 36 for F(2x2), as in the forward.


@njit(cache=True, parallel=True)
def _dy_transform(dy3, n0, nc, Y, m, TH, TW, Q):  # pragma: no cover - jitted
    """Y[a*alpha + b, k, i*TH*TW + th*TW + tw] = (A dY_t A^T)[a, b], dY_t the m x m tile at
    (th*m, tw*m) of image n0+i, channel k of ``dy3`` (N, K, P*Q), zero beyond the P x Q output.

    Separably, per band of tiles: A combines the band's m rows into alpha rows (``t``, contiguous
    rows, so that loop vectorises), then A combines each tile's m columns of every row of ``t``
    into alpha values, stored straight to their alpha*alpha rows of Y. One task per (image, k).
    A's rows for m = 4 are (1 0 0 0), (1 1 1 1), (1 -1 1 -1), (1 2 4 8), (1 -2 4 -8), (0 0 0 1);
    for m = 2: (1 0), (1 1), (1 -1), (0 -1) (A is A^T of the forward's output transform).
    """
    K = dy3.shape[1]
    PQ = dy3.shape[2]
    P = PQ // Q
    alpha = m + 2
    T = Y.shape[2]
    tiles = TH * TW
    Wt = TW * m
    Yf = Y.reshape(-1)
    zero = Y.dtype.type(0)
    KT = K * T
    for task in prange(nc * K):
      i = task // K
      k = task - i * K
      g = np.zeros((m, Wt), dtype=Y.dtype)
      t = np.empty((alpha, Wt), dtype=Y.dtype)
      for th in range(TH):
        for v in range(m):
            p = th * m + v
            if p < P:
                g[v, :Q] = dy3[n0 + i, k, p * Q:(p + 1) * Q]
            else:
                for j in range(Q):
                    g[v, j] = zero
        if m == 4:
            for j in range(Wt):
                y0 = g[0, j]; y1 = g[1, j]; y2 = g[2, j]; y3 = g[3, j]
                s02 = y0 + y2; s13 = y1 + y3; f02 = y0 + 4 * y2; f13 = 2 * y1 + 8 * y3
                t[0, j] = y0
                t[1, j] = s02 + s13
                t[2, j] = s02 - s13
                t[3, j] = f02 + f13
                t[4, j] = f02 - f13
                t[5, j] = y3
        else:
            for j in range(Wt):
                y0 = g[0, j]; y1 = g[1, j]
                t[0, j] = y0
                t[1, j] = y0 + y1
                t[2, j] = y0 - y1
                t[3, j] = -y1
        col0 = i * tiles + th * TW
        for a in range(alpha):
            base = (a * alpha * K + k) * T + col0  # row a*alpha + b sits b*K*T further
            if m == 4:
                for tw in range(TW):
                    j = tw * 4
                    y0 = t[a, j]; y1 = t[a, j + 1]; y2 = t[a, j + 2]; y3 = t[a, j + 3]
                    s02 = y0 + y2; s13 = y1 + y3; f02 = y0 + 4 * y2; f13 = 2 * y1 + 8 * y3
                    o = base + tw
                    Yf[o] = y0
                    Yf[o + KT] = s02 + s13
                    Yf[o + 2 * KT] = s02 - s13
                    Yf[o + 3 * KT] = f02 + f13
                    Yf[o + 4 * KT] = f02 - f13
                    Yf[o + 5 * KT] = y3
            else:
                for tw in range(TW):
                    j = tw * 2
                    y0 = t[a, j]; y1 = t[a, j + 1]
                    o = base + tw
                    Yf[o] = y0
                    Yf[o + KT] = y0 + y1
                    Yf[o + 2 * KT] = y0 - y1
                    Yf[o + 3 * KT] = -y1


# tiles per chunk for dW: wider chunks mean fewer passes adding each chunk's alpha^2*K*C partial
# sums, but past this the chunk's V and Y no longer stay in cache between the transforms and the
# GEMMs (docs/kernels.md, "Training: dW of 3x3 layers by Winograd")
DW_TARGET_TILES = 256


def conv3x3_dw(x, dy, padding, tile):
    """dW (K, C, 3, 3) of the 3x3 stride-1 convolution of prepared ``x`` (N, C, H, W) whose output
    gradient is ``dy`` (N, K, P, Q), by F(tile x tile, 3x3) in the transposed form above.

    Per chunk of images: V = input transform (as the forward), Y = ``_dy_transform``, and
    Mhat[xi] += Y[xi] (K x T) . V[xi]^T (T x C) (alpha^2 BLAS GEMMs); finally
    dW = kron(G, G)^T applied to each (k, c)'s alpha^2 sums.
    """
    N, C = x.shape[:2]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    m, A2, TH, TW, nc = _tiling(N, C, K, P, Q, tile, x.dtype, DW_TARGET_TILES)
    dt = x.dtype
    dy3 = dy.reshape(N, K, P * Q)
    Mhat = _threads.workspace("winograd.dWhat", (A2, K, C), dt)
    part = None
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _transformed_inputs(x, n0, mc, m, TH, TW, padding)
        T = V.shape[2]
        Y = _threads.workspace("winograd.M", (A2, K, T), dt)
        _threads.run(_dy_transform, dy3, n0, mc, Y, m, TH, TW, Q, weight=_threads.HEAVY)
        if n0 == 0:
            _threads.matmul(Y, V.transpose(0, 2, 1), Mhat)
        else:
            if part is None:
                part = _threads.workspace("winograd.dWpart", (A2, K, C), dt)
            Mhat += _threads.matmul(Y, V.transpose(0, 2, 1), part)
    dw = _memory.empty((K, C, 3, 3), dt)
    _threads.matmul(Mhat.reshape(A2, K * C).T, _matrix(KRON_G, tile, dt), dw.reshape(K * C, 9))
    return dw
