"""Winograd convolution for 3x3 and 5x5 stride-1 layers: F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5).

An m x m block of outputs of an r x r filter needs an alpha x alpha input tile (alpha = m + r - 1).
With the transform matrices B^T (alpha x alpha), G (alpha x r) and A^T (m x alpha) of Lavin &
Gray (2016),

    Y = A^T [ sum_c (G w_kc G^T) * (B^T d_c B) ] A          (* elementwise)

so per tile the r*r*m*m multiplies of a direct convolution become alpha*alpha: 16 instead of 36
for F(2x2, 3x3), 36 instead of 144 for F(4x4, 3x3), 36 instead of 100 for F(2x2, 5x5) (the 5x5
layers of the Fashion-MNIST nets). Per chunk of images (T tiles):

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

Beside the forward: dW by Winograd's transposed form (``backward_dw``, below), and dX as a
Winograd forward convolution of dY (conv.py, ``_dx_by_winograd``).

A constant (read-only) filter's U is computed once and cached by the caller (conv.py, _filters).

F(2x2, 5x5) has its own channels-last transforms (the last section of this file): with 2x2
outputs per 6x6 tile its transformed data are 9 times the image, so they had to vectorise.

Accuracy: the transforms multiply by constants up to 8 (F(4x4)) and divide by up to 24, so float32
rounding grows; docs/kernels.md ("Winograd accuracy, measured") has the measured errors that set
the selection rule in conv.py.

Checked by ``python -m pytest -q tests/test_numba_backend.py -k "winograd or transform or f4_error"``
(every tile and kernel size against the numpy reference, the written-out transforms against the
matrices, the float32 error bound); timed by ``python -m benchmarks.variant_sweep`` (forward, dX
and dW against im2col on ResNet-18's layers; ``--kernel 5`` on the Fashion-MNIST 5x5 layer) and ``python -m benchmarks.train_ab --off dw`` (a training
step with and without the Winograd dW).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _memory, _threads
from ._util import empty_like_ndim

# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), with interpolation
# points 0, 1, -1 (alpha = 4) and 0, 1, -1, 2, -2 (alpha = 6), plus the point at infinity. Keyed by
# (m, r): m x m outputs per tile of an r x r filter, alpha = m + r - 1. B^T depends only on the
# points, so F(4x4, 3x3) and F(2x2, 5x5) share theirs and the same input transform; G's rows are
# the points' powers 0..r-1 and A^T's rows their powers 0..m-1, with the scales that make
# A^T[(G g) * (B^T d)] the correlation of d with g.
_BT6 = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64)
BT = {
    (2, 3): np.array([[1, 0, -1, 0],
                      [0, 1, 1, 0],
                      [0, -1, 1, 0],
                      [0, 1, 0, -1]], dtype=np.float64),
    (4, 3): _BT6,
    (2, 5): _BT6,
}
G = {
    (2, 3): np.array([[1, 0, 0],
                      [0.5, 0.5, 0.5],
                      [0.5, -0.5, 0.5],
                      [0, 0, 1]], dtype=np.float64),
    (4, 3): np.array([[1 / 4, 0, 0],
                      [-1 / 6, -1 / 6, -1 / 6],
                      [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6],
                      [1 / 24, -1 / 12, 1 / 6],
                      [0, 0, 1]], dtype=np.float64),
    (2, 5): np.array([[1 / 4, 0, 0, 0, 0],
                      [-1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6],
                      [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3],
                      [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3],
                      [0, 0, 0, 0, 1]], dtype=np.float64),
}
AT = {
    (2, 3): np.array([[1, 1, 1, 0],
                      [0, 1, -1, -1]], dtype=np.float64),
    (4, 3): np.array([[1, 1, 1, 1, 1, 0],
                      [0, 1, -1, 2, -2, 0],
                      [0, 1, 1, 4, 4, 0],
                      [0, 1, -1, 8, -8, 1]], dtype=np.float64),
    (2, 5): np.array([[1, 1, 1, 1, 1, 0],
                      [0, 1, -1, 2, -2, 1]], dtype=np.float64),
}

# the 2-D filter transform as a matrix on row-major flattened r x r filters (float64; cast per dtype on use)
KRON_G = {key: np.kron(G[key], G[key]) for key in G}

# bytes of transformed tiles and products one chunk of images may occupy (the im2col variants'
# chunks have their own budget, conv.COLUMNS_CHUNK_BYTES)
TILES_CHUNK_BYTES = 48 * 1024 * 1024
# tiles per chunk: about one 56x56 image for F(4x4). Wide enough for the GEMMs, small enough that
# the chunk's V and M (C*T and K*T values per tap) stay in L2/L3 (docs/kernels.md, version 3)
TARGET_TILES = 196

_cast = {}


def _matrix(table, mr, dtype):
    """A transform matrix (``table[(m, r)]``) in ``dtype`` (cached: the casts are tiny but called per layer)."""
    key = (id(table), mr, np.dtype(dtype))
    mat = _cast.get(key)
    if mat is None:
        mat = _cast[key] = np.ascontiguousarray(table[mr].astype(dtype))
    return mat


@njit(cache=True, nogil=True, parallel=True)
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


@njit(cache=True, nogil=True, parallel=True)
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
    """U (alpha*alpha, K, C) = G w G^T for every (k, c) of the r x r filter ``w`` (r = 3 or 5, read
    from w), for ``tile`` x ``tile`` outputs per tile, as one GEMM, in w's dtype.

    The result is the calling thread's workspace unless ``fresh`` (then a new array, for the
    constant-filter cache).
    """
    K, C, r = w.shape[:3]
    alpha = tile + r - 1
    shape = (alpha * alpha, K, C)
    U = (_threads.aligned_empty(shape, w.dtype) if fresh
         else _threads.workspace(f"winograd.U{tile}_{r}", shape, w.dtype))
    _threads.matmul(_matrix(KRON_G, (tile, r), w.dtype), w.reshape(K * C, r * r).T, U.reshape(alpha * alpha, K * C))
    return U


class Tiling(NamedTuple):
    """How a P x Q output is cut into m x m tiles, and how many images one chunk takes."""

    m: int        # outputs per tile side (2 or 4)
    A2: int       # alpha^2 = (m + r - 1)^2 values per transformed tile
    TH: int       # tile rows
    TW: int       # tile columns
    images: int   # images per chunk


def _tiling(N, C, K, P, Q, tile, r, dtype, target_tiles) -> Tiling:
    """The tiling of a P x Q output in ``tile`` x ``tile`` tiles of an r x r filter: about
    ``target_tiles`` tiles per chunk, and the chunk's V and M/Y within ``TILES_CHUNK_BYTES``."""
    m, alpha = tile, tile + r - 1
    TH, TW = -(-P // m), -(-Q // m)
    tiles = TH * TW
    per_image = alpha * alpha * (C + K) * tiles * np.dtype(dtype).itemsize
    return Tiling(m, alpha * alpha, TH, TW, max(1, min(N, -(-target_tiles // tiles), TILES_CHUNK_BYTES // per_image)))


def _transformed_inputs(x, n0, nc, m, A2, TH, TW, padding):
    """V (alpha^2, C, nc*TH*TW) = B^T d B for every input tile of images n0..n0+nc-1 (a workspace)."""
    V = _threads.workspace("winograd.V", (A2, x.shape[1], nc * TH * TW), x.dtype)
    _threads.run(_input_transform, x, n0, nc, V, m, TH, TW, padding[0], padding[1], weight=_threads.HEAVY)
    return V


def forward(x, U, b, res3, y, padding, tile, r, relu):
    """Fill ``y`` (N, K, P, Q) with the r x r stride-1 convolution of prepared arrays by
    F(tile x tile, r x r).

    ``U`` is the transformed filter from :func:`transform_filters` (or the constant-filter cache),
    ``res3`` the residual as (N, K, P*Q) or None, ``b`` the bias or None. Per chunk of images:
    V = input transform (ours), M[xi] = U[xi] . V[xi] (alpha^2 = 16 or 36 BLAS GEMMs), then the
    output transform with the epilogue (ours). Returns ``y``.
    """
    if (tile, r) == (2, 5):
        return _forward_f2_5x5(x, U, b, res3, y, padding, relu)
    N, C = x.shape[:2]
    K = U.shape[1]
    P, Q = y.shape[2], y.shape[3]
    m, A2, TH, TW, nc = _tiling(N, C, K, P, Q, tile, r, x.dtype, TARGET_TILES)
    dt = x.dtype
    y3 = y.reshape(N, K, P * Q)
    bb = b if b is not None else empty_like_ndim(1, dt)
    rr = res3 if res3 is not None else empty_like_ndim(3, dt)
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _transformed_inputs(x, n0, mc, m, A2, TH, TW, padding)
        T = V.shape[2]
        Mw = _threads.workspace("winograd.M", (A2, K, T), dt)
        _threads.matmul(U, V, Mw)
        _threads.run(_output_transform, Mw, y3, n0, mc, m, TH, TW, Q, bb, b is not None, rr, res3 is not None,
                     bool(relu), weight=_threads.HEAVY)
    return y


# --------------------------------------------------------------------------------------------
# dW of an r x r stride-1 layer by Winograd
#
# Per output tile, dW[k, c] gains sum_{v,w} dY_t[v, w] d_t[v + i, w + j]: a correlation with r x r
# outputs and an m x m "filter" (the tile of dY) over the same alpha x alpha input tile d_t the
# forward reads. For fixed d the forward's F(m, r) is y = A^T diag(B^T d) G g, a matrix T_d applied
# to the filter g; this correlation is its transpose, T_d^T dy = G^T diag(B^T d) A dy. In 2-D and
# summed over the tiles t of the batch:
#
#     dW[k, c] = G^T [ sum_t (A dY_t A^T) * (B^T d_t B) ] G          (* elementwise)
#
# B^T d B is the forward's input transform (V, unchanged); A dY A^T (``_dy_transform``) lifts each
# m x m tile of dY to alpha x alpha; the sum over tiles is alpha^2 GEMMs (K x T) . (T x C); and
# G^T . G maps each (k, c) back to r x r, one GEMM with kron(G, G)^T. Multiplies per tile and (k, c):
# 36 instead of 144 for F(4x4, 3x3), 16 instead of 36 for F(2x2, 3x3), 36 instead of 100 for
# F(2x2, 5x5), as in the forward.


@njit(cache=True, nogil=True, parallel=True)
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


def backward_dw(x, dy, padding, tile, r):
    """dW (K, C, r, r) of the r x r stride-1 convolution of prepared ``x`` (N, C, H, W) whose output
    gradient is ``dy`` (N, K, P, Q), by F(tile x tile, r x r) in the transposed form above.

    Per chunk of images: V = input transform (as the forward), Y = ``_dy_transform``, and
    Mhat[xi] += Y[xi] (K x T) . V[xi]^T (T x C) (alpha^2 BLAS GEMMs); finally
    dW = kron(G, G)^T applied to each (k, c)'s alpha^2 sums.
    """
    if (tile, r) == (2, 5):
        return _backward_dw_f2_5x5(x, dy, padding)
    N, C = x.shape[:2]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    m, A2, TH, TW, nc = _tiling(N, C, K, P, Q, tile, r, x.dtype, DW_TARGET_TILES)
    dt = x.dtype
    dy3 = dy.reshape(N, K, P * Q)
    Mhat = _threads.workspace("winograd.dWhat", (A2, K, C), dt)
    part = None
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _transformed_inputs(x, n0, mc, m, A2, TH, TW, padding)
        T = V.shape[2]
        Y = _threads.workspace("winograd.M", (A2, K, T), dt)
        _threads.run(_dy_transform, dy3, n0, mc, Y, m, TH, TW, Q, weight=_threads.HEAVY)
        if n0 == 0:
            _threads.matmul(Y, V.transpose(0, 2, 1), Mhat)
        else:
            if part is None:
                part = _threads.workspace("winograd.dWpart", (A2, K, C), dt)
            Mhat += _threads.matmul(Y, V.transpose(0, 2, 1), part)
    dw = _memory.empty((K, C, r, r), dt)
    _threads.matmul(Mhat.reshape(A2, K * C).T, _matrix(KRON_G, (tile, r), dt), dw.reshape(K * C, r * r))
    return dw


# --------------------------------------------------------------------------------------------
# F(2x2, 5x5): channels-last transforms
#
# With 2x2 outputs per 6x6 tile, the transformed tiles are 9 times the image (36 values per 4
# outputs; F(4x4, 3x3) has 2.25), so the data transforms, not the GEMMs, decide the speed. The
# per-(image, channel) kernels above run their tile loops on 2 outputs at a time, scalar. Here the
# channel is the innermost axis instead, so every transform is a loop over channels that
# vectorises:
#
#     xp (n, Hp, Wp, C)     the chunk padded and made channels-last (``_pad_channels_last``)
#     V  (36, T, C)         B^T d B per tile, channel vectors (``_input_transform_cl``)
#     M  (36, T, K)         M[xi] = V[xi] (T x C) . U[xi]^T (C x K), 36 BLAS GEMMs (both operands
#                           row-major: the orientation OpenBLAS runs fastest at these shapes)
#     Z  (4, T, K)          A^T M A per tile, vectorised along T*K (``_output_transform_rows``)
#     y                     Z scattered to its 2x2 blocks with the epilogue (``_scatter_tiles``)
#
# and for dW the transposed form (as ``backward_dw`` above):
#
#     D  (4, K, T)          the 2x2 tiles of dY (``_gather_tiles``)
#     Y  (36, K, T)         A dY A^T per tile, vectorised along K*T (``_dy_transform_rows``)
#     Mhat[xi] += Y[xi] (K x T) . V[xi] (T x C), then kron(G, G)^T maps each (k, c) to 5x5.
#
# The two small transforms run along whole rows of K*T values: BLAS is slow at GEMMs with a
# 4 x 36 or 36 x 4 matrix (docs/kernels.md, "Winograd F(2x2, 5x5)", has the timings).

# A^T of F(2x2, 5x5), row by row, for the written-out loops
_AT0 = (1.0, 1.0, 1.0, 1.0, 1.0, 0.0)
_AT1 = (0.0, 1.0, -1.0, 2.0, -2.0, 1.0)
# values per block of the row-wise transforms: their 12 intermediate rows stay in L1
_ROW_BLOCK = 512


@njit(cache=True, nogil=True, parallel=True)
def _output_transform_rows(M, Z):  # pragma: no cover - jitted
    """Z[2v + w, l] = (A^T M_l A)[v, w] for every column l of M (36, L), M_l its 6x6 tile.

    Per block of columns: s[6v + b] = sum_a A^T[v, a] M[6a + b] (rows a of the tile combined),
    then Z[2v + w] = sum_b A^T[w, b] s[6v + b]; every loop runs along the block, contiguously."""
    L = M.shape[1]
    nb = (L + _ROW_BLOCK - 1) // _ROW_BLOCK
    for blk in prange(nb):
        lo = blk * _ROW_BLOCK
        hi = min(L, lo + _ROW_BLOCK)
        n = hi - lo
        s = np.empty((12, _ROW_BLOCK), dtype=M.dtype)
        for b in range(6):
            m0 = M[b, lo:hi]; m1 = M[6 + b, lo:hi]; m2 = M[12 + b, lo:hi]
            m3 = M[18 + b, lo:hi]; m4 = M[24 + b, lo:hi]; m5 = M[30 + b, lo:hi]
            s0 = s[b]
            s1 = s[6 + b]
            for j in range(n):
                s0[j] = m0[j] + m1[j] + m2[j] + m3[j] + m4[j]
                s1[j] = m1[j] - m2[j] + 2 * (m3[j] - m4[j]) + m5[j]
        for v in range(2):
            a0 = s[6 * v]; a1 = s[6 * v + 1]; a2 = s[6 * v + 2]
            a3 = s[6 * v + 3]; a4 = s[6 * v + 4]; a5 = s[6 * v + 5]
            z0 = Z[2 * v, lo:hi]
            z1 = Z[2 * v + 1, lo:hi]
            for j in range(n):
                z0[j] = a0[j] + a1[j] + a2[j] + a3[j] + a4[j]
                z1[j] = a1[j] - a2[j] + 2 * (a3[j] - a4[j]) + a5[j]


@njit(cache=True, nogil=True, parallel=True)
def _dy_transform_rows(D, Y):  # pragma: no cover - jitted
    """Y[6a + b, l] = (A D_l A^T)[a, b] for every column l of D (4, L), D_l its 2x2 tile; A = (A^T)^T
    has rows (1 0), (1 1), (1 -1), (1 2), (1 -2), (0 1).

    Per block of columns: e[6v + b] = sum_w A[b, w] D[2v + w], then Y[6a + b] = sum_v A[a, v] e[6v + b]."""
    L = D.shape[1]
    nb = (L + _ROW_BLOCK - 1) // _ROW_BLOCK
    for blk in prange(nb):
        lo = blk * _ROW_BLOCK
        hi = min(L, lo + _ROW_BLOCK)
        n = hi - lo
        e = np.empty((12, _ROW_BLOCK), dtype=D.dtype)
        for v in range(2):
            d0 = D[2 * v, lo:hi]
            d1 = D[2 * v + 1, lo:hi]
            for b in range(6):
                c0 = _AT0[b]
                c1 = _AT1[b]
                eb = e[6 * v + b]
                for j in range(n):
                    eb[j] = c0 * d0[j] + c1 * d1[j]
        for a in range(6):
            c0 = _AT0[a]
            c1 = _AT1[a]
            for b in range(6):
                e0 = e[b]
                e1 = e[6 + b]
                y = Y[6 * a + b, lo:hi]
                for j in range(n):
                    y[j] = c0 * e0[j] + c1 * e1[j]


@njit(cache=True, nogil=True, parallel=True)
def _pad_channels_last(x, n0, xp, ph, pw):  # pragma: no cover - jitted
    """xp[i, h + ph, w + pw, c] = x[n0 + i, c, h, w], zero elsewhere. One task per (image, row of xp)."""
    nc, Hp, Wp, C = xp.shape
    H = x.shape[2]
    W = x.shape[3]
    zero = xp.dtype.type(0)
    for task in prange(nc * Hp):
        i = task // Hp
        hp = task - i * Hp
        h = hp - ph
        row = xp[i, hp]
        for j in range(Wp):
            for c in range(C):
                row[j, c] = zero
        if h >= 0 and h < H:
            for c in range(C):
                src = x[n0 + i, c, h]
                for w in range(W):
                    row[w + pw, c] = src[w]


@njit(cache=True, nogil=True, parallel=True)
def _input_transform_cl(xp, V, TH, TW):  # pragma: no cover - jitted
    """V[a*6 + b, (i*TH + th)*TW + tw, :] = (B^T d B)[a, b], d the 6x6 tile of xp[i] at (2 th, 2 tw),
    each value a vector over the channels. B^T is the alpha = 6 matrix (``BT[(2, 5)]``), written out:
    the rows of d combine into ``t`` (t[a, j] = sum_r B^T[a, r] d[r, j]), then the columns of each
    row of t into V. One task per (image, tile row)."""
    nc = xp.shape[0]
    C = xp.shape[3]
    for task in prange(nc * TH):
        i = task // TH
        th = task - i * TH
        t = np.empty((6, 6, C), dtype=V.dtype)
        h0 = 2 * th
        for tw in range(TW):
            w0 = 2 * tw
            col = (i * TH + th) * TW + tw
            for j in range(6):
                for c in range(C):
                    d0 = xp[i, h0, w0 + j, c]; d1 = xp[i, h0 + 1, w0 + j, c]; d2 = xp[i, h0 + 2, w0 + j, c]
                    d3 = xp[i, h0 + 3, w0 + j, c]; d4 = xp[i, h0 + 4, w0 + j, c]; d5 = xp[i, h0 + 5, w0 + j, c]
                    t[0, j, c] = 4 * d0 - 5 * d2 + d4
                    t[1, j, c] = -4 * (d1 + d2) + d3 + d4
                    t[2, j, c] = 4 * (d1 - d2) - d3 + d4
                    t[3, j, c] = 2 * (d3 - d1) + d4 - d2
                    t[4, j, c] = 2 * (d1 - d3) + d4 - d2
                    t[5, j, c] = 4 * d1 - 5 * d3 + d5
            for a in range(6):
                r = a * 6
                for c in range(C):
                    d0 = t[a, 0, c]; d1 = t[a, 1, c]; d2 = t[a, 2, c]; d3 = t[a, 3, c]; d4 = t[a, 4, c]; d5 = t[a, 5, c]
                    V[r, col, c] = 4 * d0 - 5 * d2 + d4
                    V[r + 1, col, c] = -4 * (d1 + d2) + d3 + d4
                    V[r + 2, col, c] = 4 * (d1 - d2) - d3 + d4
                    V[r + 3, col, c] = 2 * (d3 - d1) + d4 - d2
                    V[r + 4, col, c] = 2 * (d1 - d3) + d4 - d2
                    V[r + 5, col, c] = 4 * d1 - 5 * d3 + d5


@njit(cache=True, nogil=True, parallel=True)
def _scatter_tiles(Z, y3, n0, nc, TH, TW, Q, b, has_b, res, has_res, relu):  # pragma: no cover - jitted
    """y[n0+i, k, 2 th + v, 2 tw + w] = act(Z[2v + w, (i*TH + th)*TW + tw, k] + b[k] (+ residual)),
    clipped to the P x Q output. One task per (image, out channel)."""
    K = Z.shape[2]
    P = y3.shape[2] // Q
    zero = y3.dtype.type(0)
    for task in prange(nc * K):
        i = task // K
        k = task - i * K
        n = n0 + i
        bias = b[k] if has_b else zero
        for th in range(TH):
            col0 = (i * TH + th) * TW
            for v in range(2):
                p = 2 * th + v
                if p >= P:
                    break
                yr = y3[n, k, p * Q:(p + 1) * Q]
                for q in range(Q):
                    val = Z[2 * v + (q & 1), col0 + (q >> 1), k] + bias
                    if has_res:
                        val += res[n, k, p * Q + q]
                    yr[q] = zero if (relu and val < 0) else val


@njit(cache=True, nogil=True, parallel=True)
def _gather_tiles(dy3, n0, nc, D, TH, TW, Q):  # pragma: no cover - jitted
    """D[2v + w, k, (i*TH + th)*TW + tw] = dY[n0+i, k, 2 th + v, 2 tw + w], zero beyond the P x Q
    output (``dy3`` is (N, K, P*Q)). One task per (image, channel)."""
    K = dy3.shape[1]
    P = dy3.shape[2] // Q
    zero = D.dtype.type(0)
    for task in prange(nc * K):
        i = task // K
        k = task - i * K
        for th in range(TH):
            col0 = (i * TH + th) * TW
            for v in range(2):
                p = 2 * th + v
                d0 = D[2 * v, k, col0:col0 + TW]
                d1 = D[2 * v + 1, k, col0:col0 + TW]
                if p >= P:
                    for tw in range(TW):
                        d0[tw] = zero
                        d1[tw] = zero
                    continue
                src = dy3[n0 + i, k, p * Q:(p + 1) * Q]
                for tw in range(TW):
                    q = 2 * tw
                    d0[tw] = src[q]
                    d1[tw] = src[q + 1] if q + 1 < Q else zero


def _channels_last_inputs(x, n0, nc, TH, TW, padding):
    """V (36, nc*TH*TW, C): the transformed 6x6 tiles of images n0..n0+nc-1, channels innermost."""
    C = x.shape[1]
    xp = _threads.workspace("winograd.xp", (nc, 2 * TH + 4, 2 * TW + 4, C), x.dtype)
    _threads.run(_pad_channels_last, x, n0, xp, padding[0], padding[1], weight=_threads.HEAVY)
    V = _threads.workspace("winograd.Vcl", (36, nc * TH * TW, C), x.dtype)
    _threads.run(_input_transform_cl, xp, V, TH, TW, weight=_threads.HEAVY)
    return V


# tiles per chunk of the F(2x2, 5x5) forward and dW: V, M and Z of a chunk stay in L2/L3
F2_5X5_TARGET_TILES = 392


def _forward_f2_5x5(x, U, b, res3, y, padding, relu):
    """``forward`` for F(2x2, 5x5), by the channels-last steps above."""
    N, C = x.shape[:2]
    K = U.shape[1]
    P, Q = y.shape[2], y.shape[3]
    _, _, TH, TW, nc = _tiling(N, C, K, P, Q, 2, 5, x.dtype, F2_5X5_TARGET_TILES)
    dt = x.dtype
    y3 = y.reshape(N, K, P * Q)
    bb = b if b is not None else empty_like_ndim(1, dt)
    rr = res3 if res3 is not None else empty_like_ndim(3, dt)
    Ut = _threads.workspace("winograd.Ut", (36, C, K), dt)
    Ut[...] = U.transpose(0, 2, 1)
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _channels_last_inputs(x, n0, mc, TH, TW, padding)
        T = V.shape[1]
        Mw = _threads.workspace("winograd.M", (36, T, K), dt)
        _threads.matmul(V, Ut, Mw)
        Z = _threads.workspace("winograd.Z", (4, T, K), dt)
        _threads.run(_output_transform_rows, Mw.reshape(36, T * K), Z.reshape(4, T * K), weight=_threads.HEAVY)
        _threads.run(_scatter_tiles, Z, y3, n0, mc, TH, TW, Q, bb, b is not None, rr, res3 is not None, bool(relu),
                     weight=_threads.HEAVY)
    return y


def _backward_dw_f2_5x5(x, dy, padding):
    """``backward_dw`` for F(2x2, 5x5), by the channels-last steps above."""
    N, C = x.shape[:2]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    _, _, TH, TW, nc = _tiling(N, C, K, P, Q, 2, 5, x.dtype, F2_5X5_TARGET_TILES)
    dt = x.dtype
    dy3 = dy.reshape(N, K, P * Q)
    Mhat = _threads.workspace("winograd.dWhat", (36, K, C), dt)
    part = None
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        V = _channels_last_inputs(x, n0, mc, TH, TW, padding)
        T = V.shape[1]
        D = _threads.workspace("winograd.Z", (4, K, T), dt)
        _threads.run(_gather_tiles, dy3, n0, mc, D, TH, TW, Q, weight=_threads.HEAVY)
        Y = _threads.workspace("winograd.M", (36, K, T), dt)
        _threads.run(_dy_transform_rows, D.reshape(4, K * T), Y.reshape(36, K * T), weight=_threads.HEAVY)
        if n0 == 0:
            _threads.matmul(Y, V, Mhat)
        else:
            if part is None:
                part = _threads.workspace("winograd.dWpart", (36, K, C), dt)
            Mhat += _threads.matmul(Y, V, part)
    dw = _memory.empty((K, C, 5, 5), dt)
    _threads.matmul(Mhat.reshape(36, K * C).T, _matrix(KRON_G, (2, 5), dt), dw.reshape(K * C, 25))
    return dw
