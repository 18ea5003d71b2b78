"""Winograd convolution for 3x3, stride-1 layers: F(2x2, 3x3) and F(4x4, 3x3).

An m x m block of outputs needs an alpha x alpha input tile (alpha = m + 2). With the transform
matrices B^T (alpha x alpha), G (alpha x 3) and A^T (m x alpha) of Lavin & Gray (2016),

    Y = A^T [ sum_c (G w_kc G^T) * (B^T d_c B) ] A          (* elementwise)

so per tile the 9*m*m multiplies of a direct 3x3 become alpha*alpha: 16 instead of 36 for F(2x2),
36 instead of 144 for F(4x4). Flattening a tile to a vector, each 2-D transform is one matrix,
kron(B^T, B^T), kron(G, G) or kron(A^T, A^T), so every step is a GEMM over all tiles at once:

    U (a2, K*C)  = kron(G, G)     . w as (9, K*C)              filters
    D (a2, C, T) = the tiles, gathered by the im2col kernel     (kernel alpha, stride m)
    V (a2, C*T)  = kron(B^T, B^T) . D                           input transform
    M[xi]        = U[xi] (K x C) . V[xi] (C x T), xi < a2       the elementwise products, summed over c
    Y (m2, K*T)  = kron(A^T, A^T) . M                           output transform
    y            = Y scattered back to NCHW, with bias, residual and ReLU applied as it is written

The dense Kronecker products do more arithmetic than hand-written sparse transforms (1296 vs
~300 multiply-adds per F(4x4) tile and channel), but they run in BLAS at GEMM speed, while the
first version's transform loops ran scalar and cost more than the GEMMs they fed; docs/kernels.md
has the numbers. Only the tile gather and the final scatter are ours.

A constant (read-only) filter's U is computed once and cached by the caller (conv.py, _filters).

Accuracy: the transforms multiply by constants up to 8 (F(4x4)) and divide by up to 24, so float32
rounding grows; docs/kernels.md has the measured errors that set the selection rule in conv.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _threads
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

# the 2-D transforms as matrices on row-major flattened tiles (float64; cast per dtype on use)
KRON_BT = {t: np.kron(BT[t], BT[t]) for t in BT}
KRON_G = {t: np.kron(G[t], G[t]) for t in G}
KRON_AT = {t: np.kron(AT[t], AT[t]) for t in AT}

# bytes of tiles, transformed tiles and products one chunk of images may occupy
CHUNK_BYTES = 48 * 1024 * 1024
# tiles per chunk: about one 56x56 image for F(4x4). Wide enough for the GEMMs, small enough that
# the chunk's D, V and M (C*T values each per tap) stay in L2/L3; 1024 measured 10-30% slower
# on ResNet-18's layers at batch 8 (docs/kernels.md)
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
def _untile(Y, y3, n0, nc, m, TH, TW, Q, b, has_b, res, has_res, relu):  # pragma: no cover - jitted
    """y[n0+i, k, p*Q + q] = act(Y[v*m + w, k, i*TH*TW + th*TW + tw] + b[k] + res[...]) where
    p = th*m + v, q = tw*m + w, clipped to the P x Q output.

    One task per (image, out channel); writes run along output rows (contiguous), reading the m
    transformed rows that interleave into them, and the epilogue is applied in the same store,
    so it costs no extra pass over y. Plain indexing rather than per-row views: each view costs
    an atomic reference-count update, which dominated at these short rows.
    """
    K = Y.shape[1]
    PQ = y3.shape[2]
    P = PQ // Q
    T = TH * TW
    zero = y3.dtype.type(0)
    for task in prange(nc * K):
        i = task // K
        k = task - i * K
        n = n0 + i
        bias = b[k] if has_b else zero
        for p in range(P):
            th = p // m
            v = p - th * m
            src_base = i * T + th * TW
            dst_base = p * Q
            for tw in range(TW):
                for w in range(m):
                    q = tw * m + w
                    if q >= Q:
                        break
                    val = Y[v * m + w, k, src_base + tw] + bias
                    if has_res:
                        val += res[n, k, dst_base + q]
                    if relu and val < 0:
                        val = zero
                    y3[n, k, dst_base + q] = val


@njit(cache=True, parallel=True)
def _gather(x, n0, nc, D, m, alpha, TH, TW, ph, pw):  # pragma: no cover - jitted
    """D[r*alpha + s, c, i*TH*TW + th*TW + tw] = x[n0+i, c, th*m + r - ph, tw*m + s - pw] (0 outside).

    The input tiles in the layout the input transform's GEMM reads. One task per (image,
    channel), which owns its alpha*alpha runs of TH*TW cells (no races). Plain indexing, no
    per-row views: a view costs an atomic reference-count update, and with rows this short
    (TW cells) those updates were the kernel's main cost (1.3x slower than this version).
    """
    C = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    tiles = TH * TW
    zero = D.dtype.type(0)
    for task in prange(nc * C):
        i = task // C
        c = task - i * C
        t0 = i * tiles
        for r in range(alpha):
            for th in range(TH):
                h = th * m + r - ph
                inside = h >= 0 and h < H
                for s in range(alpha):
                    row = r * alpha + s
                    base = t0 + th * TW
                    if not inside:
                        for tw in range(TW):
                            D[row, c, base + tw] = zero
                        continue
                    for tw in range(TW):
                        col = tw * m + s - pw
                        D[row, c, base + tw] = x[n0 + i, c, h, col] if (col >= 0 and col < W) else zero


def transform_filters(w, tile, fresh=False):
    """U (alpha*alpha, K, C) = G w G^T for every (k, c), as one GEMM, in w's dtype.

    The result is the calling thread's workspace unless ``fresh`` (then a new array, for the
    constant-filter cache).
    """
    K, C = w.shape[:2]
    alpha = tile + 2
    shape = (alpha * alpha, K, C)
    U = np.empty(shape, w.dtype) if fresh else _threads.workspace(f"winograd.U{tile}", shape, w.dtype)
    np.matmul(_matrix(KRON_G, tile, w.dtype), w.reshape(K * C, 9).T, out=U.reshape(alpha * alpha, K * C))
    return U


def conv3x3(x, U, b, res3, y, padding, tile, relu):
    """Fill ``y`` (N, K, P, Q) with the 3x3 stride-1 convolution of prepared arrays by F(tile x tile, 3x3).

    ``U`` is the transformed filter from :func:`transform_filters` (or the constant-filter cache),
    ``res3`` the residual as (N, K, P*Q) or None, ``b`` the bias or None. Returns ``y``.
    """
    N, C, H, W = x.shape
    K = U.shape[1]
    P, Q = y.shape[2], y.shape[3]
    m, alpha = tile, tile + 2
    A2 = alpha * alpha
    TH, TW = -(-P // m), -(-Q // m)
    tiles = TH * TW
    dt = x.dtype
    kbt, kat = _matrix(KRON_BT, tile, dt), _matrix(KRON_AT, tile, dt)
    per_image = (2 * A2 * C + A2 * K + m * m * K) * tiles * dt.itemsize
    nc = max(1, min(N, -(-TARGET_TILES // tiles), CHUNK_BYTES // per_image))
    y3 = y.reshape(N, K, P * Q)
    bb = b if b is not None else empty_like_ndim(1, dt)
    rr = res3 if res3 is not None else empty_like_ndim(3, dt)
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        T = mc * tiles
        D = _threads.workspace("winograd.D", (A2, C, T), dt)
        # tile (th, tw) of image i is the window at (th*m - ph, tw*m - pw), written tap-major
        _threads.run(_gather, x, n0, mc, D, m, alpha, TH, TW, padding[0], padding[1])
        V = _threads.workspace("winograd.V", (A2, C, T), dt)
        np.matmul(kbt, D.reshape(A2, C * T), out=V.reshape(A2, C * T))
        Mw = _threads.workspace("winograd.M", (A2, K, T), dt)
        np.matmul(U, V, out=Mw)
        Yw = _threads.workspace("winograd.Y", (m * m, K, T), dt)
        np.matmul(kat, Mw.reshape(A2, K * T), out=Yw.reshape(m * m, K * T))
        _threads.run(_untile, Yw, y3, n0, mc, m, TH, TW, Q, bb, b is not None, rr, res3 is not None, bool(relu))
    return y
