"""Inference convolutions and max pooling on channels-last activations: x (N, H, W, C).

A compiled model (``minicnn.inference``) keeps its activations channels-last between layers when
the backend says so (``channels_last()``), and calls these ops instead of the NCHW ones. The
filters stay in PyTorch's (K, C, R, S) layout at the seam; the forms derived from them here are
cached for constant (read-only) filters like the NCHW variants' (``_filters``).

Why the layout: with C innermost, every step that is not a GEMM runs over long contiguous runs of
channels, the same few operations applied to C values at once, which vectorises. In NCHW the
Winograd transforms combine values 4 or 2 pixels apart within a plane, in short rows of tiles,
and took longer than the GEMMs they fed at batch 1 (docs/kernels.md, "Channels last"). Here:

- Winograd F(4x4, 3x3) and F(2x2, 3x3): V (alpha^2, T, C) = B^T d B for every tile, vectorised
  over C; M[xi] (T, K) = V[xi] (T, C) . U[xi] (C, K), alpha^2 BLAS GEMMs; y = A^T M A with the
  epilogue, vectorised over K, stored straight into y's (N, P, Q, K) rows.
- Any other conv (``cl_gemm``): the unfolded rows (N*P*Q, R*S*C) copy runs of whole pixels (a
  tap row of a stride-1 or stride-2 filter is S*C or more contiguous values), one GEMM per chunk
  of rows with the filter as (R*S*C, K) writes y's (N*P*Q, K) layout itself, and the epilogue
  is one contiguous pass over the chunk while it is in cache. A 1x1 stride-1 unpadded layer
  multiplies x's rows as they are.
- Max pooling: one task per output row, the window's maximum taken over whole pixels (C values
  at a time).

Versions (docs/kernels.md, "Channels last", has the timings):

1. (this file) The transforms, the unfold and the epilogue as separate parallel regions per chunk,
   the products in BLAS between them; ``cl_gemm_t`` forms a chunk's product as filter x columns^T
   and stores it transposed, which BLAS runs faster for few rows and many channels.

Checked by ``python -m pytest -q tests/test_channels_last.py`` (every variant against the numpy
reference on random shapes, strides, paddings, dilations, residuals; the pool's NaN and -inf
rules; compiled ResNets in both layouts); timed by ``python -m benchmarks.layout_ab`` (the
compiled ResNet-18 in both layouts, alternating) and ``python -m benchmarks.layer_gap --layout cl``
(each conv against ONNX Runtime's).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _filters, _threads, _tiles, winograd
from ._util import check_conv, compute_dtype, empty_like_ndim, prepare
from .conv import _check_out
from ...shapes import pair

__all__ = ["conv2d_fused_forward_cl", "maxpool2d_forward_cl", "to_channels_last"]


# --------------------------------------------------------------------------------------------
# Winograd, channels last


@njit(cache=True, nogil=True, parallel=True)
def _input_transform_cl(x, n0, nc, V, m, TH, TW, ph, pw):  # pragma: no cover - jitted
    """V[a*alpha + b, i*TH*TW + th*TW + tw, :] = (B^T d B)[a, b] over the channels, d the
    alpha x alpha input tile at (th*m - ph, tw*m - pw) of image n0+i (zero outside the image).

    One task per (image, band of tiles th): the band's alpha input rows are copied (zero-padded)
    into ``d`` (alpha, Wt, C), B^T combines them row against row into ``t`` over Wt*C contiguous
    values, then B combines each tile's alpha columns of ``t`` (C values each) into its alpha
    rows of V. Formulas as winograd._input_transform's, with C innermost.
    """
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    alpha = m + 2
    tiles = TH * TW
    Wt = TW * m + 2
    L = Wt * C
    j_lo = max(0, pw)
    j_hi = min(Wt, W + pw)
    for task in prange(nc * TH):
        i = task // TH
        th = task - i * TH
        n = n0 + i
        d = np.zeros((alpha, L), dtype=V.dtype)
        t = np.empty((alpha, L), dtype=V.dtype)
        for r in range(alpha):
            h = th * m + r - ph
            if h >= 0 and h < H:
                src = x[n, h].reshape(W * C)
                dr = d[r]
                off = (j_lo - pw) * C
                for j in range((j_hi - j_lo) * C):
                    dr[j_lo * C + j] = src[off + j]
        if m == 4:
            for j in range(L):
                d0 = d[0, j]; d1 = d[1, j]; d2 = d[2, j]; d3 = d[3, j]; d4 = d[4, j]; d5 = d[5, j]
                t[0, j] = 4 * d0 - 5 * d2 + d4
                t[1, j] = -4 * (d1 + d2) + d3 + d4
                t[2, j] = 4 * (d1 - d2) - d3 + d4
                t[3, j] = 2 * (d3 - d1) + d4 - d2
                t[4, j] = 2 * (d1 - d3) + d4 - d2
                t[5, j] = 4 * d1 - 5 * d3 + d5
        else:
            for j in range(L):
                d0 = d[0, j]; d1 = d[1, j]; d2 = d[2, j]; d3 = d[3, j]
                t[0, j] = d0 - d2
                t[1, j] = d1 + d2
                t[2, j] = d2 - d1
                t[3, j] = d1 - d3
        col0 = i * tiles + th * TW
        for a in range(alpha):
            ta = t[a]
            for tw in range(TW):
                col = col0 + tw
                j = tw * m * C
                if m == 4:
                    v0 = V[a * 6, col]; v1 = V[a * 6 + 1, col]; v2 = V[a * 6 + 2, col]
                    v3 = V[a * 6 + 3, col]; v4 = V[a * 6 + 4, col]; v5 = V[a * 6 + 5, col]
                    for c in range(C):
                        d0 = ta[j + c]; d1 = ta[j + C + c]; d2 = ta[j + 2 * C + c]
                        d3 = ta[j + 3 * C + c]; d4 = ta[j + 4 * C + c]; d5 = ta[j + 5 * C + c]
                        v0[c] = 4 * d0 - 5 * d2 + d4
                        v1[c] = -4 * (d1 + d2) + d3 + d4
                        v2[c] = 4 * (d1 - d2) - d3 + d4
                        v3[c] = 2 * (d3 - d1) + d4 - d2
                        v4[c] = 2 * (d1 - d3) + d4 - d2
                        v5[c] = 4 * d1 - 5 * d3 + d5
                else:
                    v0 = V[a * 4, col]; v1 = V[a * 4 + 1, col]; v2 = V[a * 4 + 2, col]; v3 = V[a * 4 + 3, col]
                    for c in range(C):
                        d0 = ta[j + c]; d1 = ta[j + C + c]; d2 = ta[j + 2 * C + c]; d3 = ta[j + 3 * C + c]
                        v0[c] = d0 - d2
                        v1[c] = d1 + d2
                        v2[c] = d2 - d1
                        v3[c] = d1 - d3


@njit(cache=True, nogil=True, parallel=True)
def _output_transform_cl(M, y, n0, nc, m, TH, TW, b, has_b, res, has_res, relu):  # pragma: no cover - jitted
    """y[n0+i, th*m + v, tw*m + w, :] = act((A^T Mt A)[v, w] + b (+ residual)) over the out
    channels, Mt the alpha x alpha products of tile (th, tw), clipped to the P x Q output.

    One task per (image, band of tiles): A combines each product row's alpha values (K each)
    into m columns of ``u`` (alpha, m*TW, K), then A^T combines u's alpha rows into the band's
    m output rows (``o``), which take the bias, residual and ReLU as they are stored.
    """
    P = y.shape[1]
    Q = y.shape[2]
    K = y.shape[3]
    alpha = m + 2
    tiles = TH * TW
    Wt = TW * m
    zero = y.dtype.type(0)
    for task in prange(nc * TH):
        i = task // TH
        th = task - i * TH
        n = n0 + i
        u = np.empty((alpha, Wt, K), dtype=y.dtype)
        o = np.empty((m, Wt, K), dtype=y.dtype)
        col0 = i * tiles + th * TW
        for a in range(alpha):
            for tw in range(TW):
                col = col0 + tw
                q = tw * m
                if m == 4:
                    m0 = M[a * 6, col]; m1 = M[a * 6 + 1, col]; m2 = M[a * 6 + 2, col]
                    m3 = M[a * 6 + 3, col]; m4 = M[a * 6 + 4, col]; m5 = M[a * 6 + 5, col]
                    u0 = u[a, q]; u1 = u[a, q + 1]; u2 = u[a, q + 2]; u3 = u[a, q + 3]
                    for k in range(K):
                        s12 = m1[k] + m2[k]; d12 = m1[k] - m2[k]; s34 = m3[k] + m4[k]; d34 = m3[k] - m4[k]
                        u0[k] = m0[k] + s12 + s34
                        u1[k] = d12 + 2 * d34
                        u2[k] = s12 + 4 * s34
                        u3[k] = d12 + 8 * d34 + m5[k]
                else:
                    m0 = M[a * 4, col]; m1 = M[a * 4 + 1, col]; m2 = M[a * 4 + 2, col]; m3 = M[a * 4 + 3, col]
                    u0 = u[a, q]; u1 = u[a, q + 1]
                    for k in range(K):
                        u0[k] = m0[k] + m1[k] + m2[k]
                        u1[k] = m1[k] - m2[k] - m3[k]
        for q in range(Wt):
            if m == 4:
                a0 = u[0, q]; a1 = u[1, q]; a2 = u[2, q]; a3 = u[3, q]; a4 = u[4, q]; a5 = u[5, q]
                o0 = o[0, q]; o1 = o[1, q]; o2 = o[2, q]; o3 = o[3, q]
                for k in range(K):
                    s12 = a1[k] + a2[k]; d12 = a1[k] - a2[k]; s34 = a3[k] + a4[k]; d34 = a3[k] - a4[k]
                    o0[k] = a0[k] + s12 + s34
                    o1[k] = d12 + 2 * d34
                    o2[k] = s12 + 4 * s34
                    o3[k] = d12 + 8 * d34 + a5[k]
            else:
                a0 = u[0, q]; a1 = u[1, q]; a2 = u[2, q]; a3 = u[3, q]
                o0 = o[0, q]; o1 = o[1, q]
                for k in range(K):
                    o0[k] = a0[k] + a1[k] + a2[k]
                    o1[k] = a1[k] - a2[k] - a3[k]
        for v in range(m):
            p = th * m + v
            if p >= P:
                break
            yr = y[n, p].reshape(Q * K)
            orow = o[v].reshape(Wt * K)
            if has_res:
                rr = res[n, p].reshape(Q * K)
            for q in range(Q):
                base = q * K
                for k in range(K):
                    val = orow[base + k]
                    if has_b:
                        val += b[k]
                    if has_res:
                        val += rr[base + k]
                    yr[base + k] = zero if (relu and val < 0) else val


def _winograd_forward_cl(x, U, b, res, y, padding, tile, relu, tiles=False):
    """Fill y (N, P, Q, K) with the 3x3 stride-1 convolution of x (N, H, W, C) by F(tile x tile, 3x3);
    U is (alpha^2, C, K), or with ``tiles`` its panels (``_tiles.pack(U)``) for ``_tiles.matmul``.
    Chunks of images as the NCHW forward's (``winograd._tiling``)."""
    N, _, _, C = x.shape
    _, P, Q, K = y.shape
    m, A2, TH, TW, nc = winograd._tiling(N, C, K, P, Q, tile, 3, x.dtype, winograd.TARGET_TILES)
    dt = x.dtype
    bb = b if b is not None else empty_like_ndim(1, dt)
    rr = res if res is not None else empty_like_ndim(4, dt)
    for n0 in range(0, N, nc):
        mc = min(nc, N - n0)
        T = mc * TH * TW
        V = _threads.workspace("cl.V", (A2, T, C), dt)
        _threads.run(_input_transform_cl, x, n0, mc, V, m, TH, TW, padding[0], padding[1], weight=_threads.HEAVY)
        Mw = _threads.workspace("cl.M", (A2, T, K), dt)
        if tiles:
            _tiles.matmul(V, U, Mw)
        else:
            _threads.matmul(V, U, Mw)
        _threads.run(_output_transform_cl, Mw, y, n0, mc, m, TH, TW, bb, b is not None, rr, res is not None,
                     bool(relu), weight=_threads.HEAVY)
    return y


# --------------------------------------------------------------------------------------------
# Unfolded rows + GEMM, channels last


@njit(cache=True, nogil=True, parallel=True)
def _unfold_cl(x, r0, cols, R, S, sh, sw, ph, pw, dh, dw, P, Q):  # pragma: no cover - jitted
    """cols[i, (r*S + s)*C + c] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] (zero outside the
    image) for output pixel r0+i = (n*P + p)*Q + q, i < cols.shape[0].

    One task per output image row (n, p) the chunk touches. With dilation 1 along the width, a
    filter row's S taps of a pixel inside the image are one contiguous run of S*C values of x,
    copied by one loop; pixels at the border copy pixel by pixel (zeros outside). Both arrays are
    indexed flat at unsigned offsets, which numba need not check for wraparound: copying the runs
    as slices made the stem's unfold (runs of 21 values) 2.4x slower, and the 3x3 layers' (runs of
    192 and more) no faster (docs/kernels.md, "Channels last").
    """
    N = x.shape[0]
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    SC = S * C
    RSC = cols.shape[1]
    nrows = cols.shape[0]
    xf = x.reshape(N * H * W * C)
    cf = cols.reshape(nrows * RSC)
    zero = cols.dtype.type(0)
    first = r0 // Q
    last = (r0 + nrows - 1) // Q
    for t in prange(last - first + 1):
        img_row = first + t
        n = img_row // P
        p = img_row - n * P
        q_lo = max(0, r0 - img_row * Q)
        q_hi = min(Q, r0 + nrows - img_row * Q)
        for r in range(R):
            h = p * sh - ph + r * dh
            inside = 0 <= h < H
            row = (n * H + h) * W  # x's pixel index of (n, h, 0)
            for q in range(q_lo, q_hi):
                dst = np.uint64((img_row * Q + q - r0) * RSC + r * SC)
                w0 = q * sw - pw
                if not inside:
                    for j in range(SC):
                        cf[dst + np.uint64(j)] = zero
                elif dw == 1 and w0 >= 0 and w0 + S <= W:
                    src = np.uint64((row + w0) * C)
                    for j in range(SC):
                        cf[dst + np.uint64(j)] = xf[src + np.uint64(j)]
                else:
                    for s in range(S):
                        wc = w0 + s * dw
                        d = dst + np.uint64(s * C)
                        if 0 <= wc < W:
                            src = np.uint64((row + wc) * C)
                            for c in range(C):
                                cf[d + np.uint64(c)] = xf[src + np.uint64(c)]
                        else:
                            for c in range(C):
                                cf[d + np.uint64(c)] = zero


@njit(cache=True, nogil=True, parallel=True)
def _epilogue_rows(y2, r0, nrows, b, has_b, res2, has_res, relu):  # pragma: no cover - jitted
    """y2[r] = act(y2[r] + b (+ res2[r])) for rows r0 .. r0+nrows-1 of (rows, K) arrays."""
    K = y2.shape[1]
    zero = y2.dtype.type(0)
    for i in prange(nrows):
        yr = y2[r0 + i]
        if has_res:
            rr = res2[r0 + i]
        for k in range(K):
            val = yr[k]
            if has_b:
                val += b[k]
            if has_res:
                val += rr[k]
            yr[k] = zero if (relu and val < 0) else val


@njit(cache=True, nogil=True, parallel=True)
def _epilogue_transposed(src, y2, r0, b, has_b, res2, has_res, relu):  # pragma: no cover - jitted
    """y2[r0 + i, k] = act(src[k, i] + b[k] (+ res2[r0 + i, k])): a (K, rows) product stored as
    y's (rows, K) rows, with the epilogue."""
    K = src.shape[0]
    zero = y2.dtype.type(0)
    for i in prange(src.shape[1]):
        yr = y2[r0 + i]
        for k in range(K):
            val = src[k, i]
            if has_b:
                val += b[k]
            if has_res:
                val += res2[r0 + i, k]
            yr[k] = zero if (relu and val < 0) else val


def _epilogue_operands(b, res, rows, K, dt):
    """The bias and residual arguments of ``_epilogue_rows`` and ``_epilogue_transposed`` for y's
    (rows, K) rows: (b, has_b, res2, has_res), an empty placeholder for what is absent."""
    return (b if b is not None else empty_like_ndim(1, dt), b is not None,
            res.reshape(rows, K) if res is not None else empty_like_ndim(2, dt), res is not None)


# Where the register-block product (``_tiles``) is faster than OpenBLAS (AVX-512; ``python -m
# benchmarks.tiles_ab``), the Winograd variants multiply with it and ``choose_variant_cl`` names
# ``cl_tiles`` for the other layers. A name of this module's own so tests can patch it either way.
PRODUCTS_BY_TILES = _tiles.FASTER_THAN_BLAS

# rows of unfolded input per GEMM: the chunk's columns within this many bytes (about an L2)
COLS_CHUNK_BYTES = 2 * 1024 * 1024
# at least this many rows per chunk (narrow GEMMs waste what the chunk saves)
MIN_CHUNK_ROWS = 256


def _gemm_forward_cl(x, wmat, b, res, y, stride, padding, dilation, R, S, relu, transposed=False, tiles=False):
    """y (N, P, Q, K) = unfold(x) . wmat (R*S*C, K), + bias (+ residual), ReLU; chunks of rows.

    ``transposed``: wmat is (K, R*S*C) (the filter as stored) and each chunk's product is formed
    as wmat . cols^T, (K, rows), then stored transposed with the epilogue: for few rows and many
    channels (layer4 of a ResNet at batch 1) BLAS runs that orientation faster.
    ``tiles``: wmat is packed (``_tiles.pack``) and each chunk's product is formed by
    ``_tiles.matmul`` (accumulators in registers) instead of OpenBLAS (``cl_tiles``)."""
    N, H, W, C = x.shape
    _, P, Q, K = y.shape
    rows = N * P * Q
    RSC = R * S * C
    dt = x.dtype
    y2 = y.reshape(rows, K)
    direct = R == 1 and S == 1 and stride == (1, 1) and padding == (0, 0)
    epilogue = _epilogue_operands(b, res, rows, K, dt)
    needs_epilogue = b is not None or res is not None or relu
    chunk = rows if direct else max(MIN_CHUNK_ROWS, COLS_CHUNK_BYTES // (RSC * dt.itemsize))
    for r0 in range(0, rows, chunk):
        nr = min(chunk, rows - r0)
        if direct:
            cols = x.reshape(rows, C)[r0:r0 + nr]
        else:
            cols = _threads.workspace("cl.cols", (nr, RSC), dt)
            _threads.run(_unfold_cl, x, r0, cols, R, S, stride[0], stride[1], padding[0], padding[1],
                         dilation[0], dilation[1], P, Q, work=nr * RSC)
        if transposed:
            prod = _threads.workspace("cl.prod", (wmat.shape[0], nr), dt)
            _threads.matmul(wmat, cols.T, prod)
            _threads.run(_epilogue_transposed, prod, y2, r0, *epilogue, bool(relu), work=nr * K)
            continue
        if tiles:
            _tiles.matmul(cols, wmat, y2[r0:r0 + nr])
        else:
            _threads.matmul(cols, wmat, y2[r0:r0 + nr])
        if needs_epilogue:
            _threads.run(_epilogue_rows, y2, r0, nr, *epilogue, bool(relu), work=nr * K)
    return y


# --------------------------------------------------------------------------------------------
# Direct: the register blocks read the image itself


@njit(cache=True, nogil=True)
def _tile_unfolded(xf, H, W, C, n, h0, q_lo, q_hi, R, S, sw, pw, buf, wf, b_off, nr, yf, y_off, K):  # pragma: no cover
    """Output pixels q_lo .. q_hi-1 of one output row (window rows from image row h0, zeros outside
    the image), at most MR of them: unfolded into buf, then one register block of the product."""
    RSC = R * S * C
    zero = buf.dtype.type(0)
    for i in range(q_hi - q_lo):
        w0 = (q_lo + i) * sw - pw
        for r in range(R):
            h = h0 + r
            for s_ in range(S):
                w = w0 + s_
                d = i * RSC + (r * S + s_) * C
                if 0 <= h < H and 0 <= w < W:
                    src = ((n * H + h) * W + w) * C
                    for c in range(C):
                        buf[d + c] = xf[src + c]
                else:
                    for c in range(C):
                        buf[d + c] = zero
    _tiles.tile(buf, 0, RSC, q_hi - q_lo, wf, b_off, nr, yf, y_off, K, RSC, 1, 0, False)


@njit(cache=True, nogil=True, parallel=True)
def _direct_tiles_cl(x, wp, y, R, S, sh, sw, ph, pw, nr):  # pragma: no cover - jitted
    """y (N, P, Q, K) = the convolution of x (N, H, W, C) with wp, the (R*S*C, K) filter matrix
    packed by ``_tiles.pack``; dilation 1, K a multiple of nr (``_tiles.tile_cols``), no epilogue.

    One task per (output row, panel of nr channels). A window inside the image horizontally is
    read where it lies: its filter rows inside the image are runs of S*C values of x, W*C apart,
    and the runs of consecutive output pixels start sw*C apart, so ``_tiles.tile`` takes MR such
    pixels as its rows (row stride sw*C) and the filter rows as its segments (stride W*C), with
    the filter rows outside the image (top and bottom padding) left out of the sum. Pixels whose
    window crosses the left or right edge are unfolded into a buffer of the task's first, zeros
    outside, as ``_unfold_cl`` does."""
    N, H, W, C = x.shape
    _, P, Q, K = y.shape
    SC = S * C
    RSC = R * SC
    xf = x.reshape(x.size)
    wf = wp.reshape(wp.size)
    yf = y.reshape(y.size)
    panels = K // nr
    # the output columns whose window lies inside the image horizontally (q*sw - pw >= 0 and
    # q*sw - pw + S <= W): q_in_lo .. q_in_hi-1
    q_in_lo = min(Q, (pw + sw - 1) // sw)
    q_in_hi = max(q_in_lo, min(Q, (W - S + pw) // sw + 1))
    for t in prange(N * P * panels):
        img_row = t // panels
        jb = t - img_row * panels
        n = img_row // P
        h0 = (img_row - n * P) * sh - ph
        r_lo = max(0, -h0)
        nseg = max(0, min(R, H - h0) - r_lo)
        y_row = img_row * Q * K + jb * nr
        b_off = jb * RSC * nr
        for q0 in range(q_in_lo, q_in_hi, _tiles.MR):
            m = min(_tiles.MR, q_in_hi - q0)
            a_off = ((n * H + h0 + r_lo) * W + q0 * sw - pw) * C
            _tiles.tile(xf, a_off, sw * C, m, wf, b_off + r_lo * SC * nr, nr, yf, y_row + q0 * K, K, SC, nseg,
                        W * C, False)
        if q_in_lo > 0 or q_in_hi < Q:
            buf = np.empty(_tiles.MR * RSC, x.dtype)
            for q0 in range(0, q_in_lo, _tiles.MR):
                _tile_unfolded(xf, H, W, C, n, h0, q0, min(q_in_lo, q0 + _tiles.MR), R, S, sw, pw, buf, wf, b_off,
                               nr, yf, y_row + q0 * K, K)
            for q0 in range(q_in_hi, Q, _tiles.MR):
                _tile_unfolded(xf, H, W, C, n, h0, q0, min(Q, q0 + _tiles.MR), R, S, sw, pw, buf, wf, b_off,
                               nr, yf, y_row + q0 * K, K)


# Output rows at least this wide run ``cl_tiles``' direct form (``_direct_tiles_cl``): a register
# block takes pixels of one output row only, so on narrow rows its last block is mostly empty
# (a row of 7: blocks of 6 and 1), and there the unfolded rows, blocked across output rows, win.
DIRECT_MIN_WIDTH = 56


# --------------------------------------------------------------------------------------------
# The op and its variants


def _prepare_cl(x, w, b, stride, padding, dilation, groups, residual, where, out):
    """Checked, C-ordered arrays of one float dtype, and the output (N, P, Q, K): (x, w, b, res, y,
    stride, padding, dilation, groups). x is channels-last; the checks are the NCHW op's, on x's
    NCHW view; ``out`` is checked by the NCHW variants' ``_check_out``."""
    x, w = np.asarray(x), np.asarray(w)
    b = None if b is None else np.asarray(b)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected channels-last input (N, H, W, C), got shape {tuple(x.shape)}")
    stride, padding, dilation, groups, P, Q = check_conv(x.transpose(0, 3, 1, 2), w, b, stride, padding,
                                                         dilation, groups, where)
    dt = compute_dtype(x, w, b)
    x, b = prepare(x, dt), prepare(b, dt)
    N, K = x.shape[0], w.shape[0]
    shape = (N, P, Q, K)
    res = None
    if residual is not None:
        residual = np.asarray(residual)
        if tuple(residual.shape) != shape:
            raise ValueError(f"{where}: residual shape {tuple(residual.shape)} does not match the output shape {shape}")
        res = prepare(residual, dt)
    y = np.empty(shape, dt) if out is None else _check_out(out, shape, dt, x, res, where)
    return x, w, b, res, y, stride, padding, dilation, groups


def _prepare_ungrouped(x, w, b, stride, padding, dilation, groups, residual, where, out):
    """``_prepare_cl`` for the GEMM variants, which take groups 1 only: (x, w, b, res, y, stride,
    padding, dilation)."""
    x, w, b, res, y, stride, padding, dilation, groups = _prepare_cl(
        x, w, b, stride, padding, dilation, groups, residual, where, out)
    if groups != 1:
        raise ValueError(f"{where}: needs groups 1, got {groups}")
    return x, w, b, res, y, stride, padding, dilation


# The filter forms below are cached per constant filter (``_filters.derived``). Each is a new array,
# never a view of w: a cached view would keep its filter alive through the cache.


def _gemm_matrix(w, dt):
    """(R*S*C, K): row (r*S + s)*C + c holds w[:, c, r, s]."""
    K, C, R, S = w.shape
    return np.array(np.asarray(w, dtype=dt).transpose(2, 3, 1, 0).reshape(R * S * C, K), order="C", copy=True)


def _winograd_matrix(w, tile, dt):
    """U (alpha^2, C, K) of the 3x3 filter w for F(tile x tile, 3x3)."""
    U = winograd.transform_filters(np.ascontiguousarray(w, dtype=dt), tile, fresh=True)
    return np.ascontiguousarray(U.transpose(0, 2, 1))


def cl_gemm(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """Channels-last convolution as unfolded rows times the filter matrix; any stride, padding and
    dilation; groups 1 (``conv2d_fused_forward_cl`` routes grouped layers through the NCHW op)."""
    where = "conv2d_cl[cl_gemm]"
    x, w, b, res, y, stride, padding, dilation = _prepare_ungrouped(x, w, b, stride, padding, dilation, groups,
                                                                    residual, where, out)
    dt = x.dtype
    wmat = _filters.derived(w, ("cl_gemm", dt.str), lambda: _gemm_matrix(w, dt))
    return _gemm_forward_cl(x, wmat, b, res, y, stride, padding, dilation, w.shape[2], w.shape[3], relu)


def cl_tiles(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``cl_gemm`` with each product by ``_tiles.matmul`` (its accumulators in vector registers)
    instead of OpenBLAS; groups 1. Output rows of at least ``DIRECT_MIN_WIDTH`` pixels (dilation 1,
    output channels a multiple of the tile width) are computed from x itself, unfolding only the
    pixels at the left and right edges (``_direct_tiles_cl``)."""
    where = "conv2d_cl[cl_tiles]"
    x, w, b, res, y, stride, padding, dilation = _prepare_ungrouped(x, w, b, stride, padding, dilation, groups,
                                                                    residual, where, out)
    dt = x.dtype
    K, _, R, S = w.shape
    wmat = _filters.derived(w, ("cl_tiles", dt.str), lambda: _tiles.pack(_gemm_matrix(w, dt)))
    nr = _tiles.tile_cols(dt)
    if dilation == (1, 1) and y.shape[2] >= DIRECT_MIN_WIDTH and K % nr == 0:
        _threads.run(_direct_tiles_cl, x, wmat, y, R, S, stride[0], stride[1], padding[0], padding[1], nr,
                     work=y.size * R * S * w.shape[1] // 64)
        if b is not None or res is not None or relu:
            rows = y.shape[0] * y.shape[1] * y.shape[2]
            _threads.run(_epilogue_rows, y.reshape(rows, K), 0, rows, *_epilogue_operands(b, res, rows, K, dt),
                         bool(relu), work=rows * K)
        return y
    return _gemm_forward_cl(x, wmat, b, res, y, stride, padding, dilation, R, S, relu, tiles=True)


def _cl_winograd(tile):
    name = f"cl_winograd_f{tile}x{tile}_3x3"

    def variant(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
        where = f"conv2d_cl[{name}]"
        x, w, b, res, y, stride, padding, dilation, groups = _prepare_cl(
            x, w, b, stride, padding, dilation, groups, residual, where, out)
        if w.shape[2:] != (3, 3) or stride != (1, 1) or dilation != (1, 1) or groups != 1:
            raise ValueError(f"{where}: needs a 3x3 kernel, stride 1, dilation 1, groups 1; got weight "
                             f"{tuple(w.shape)}, stride {stride}, dilation {dilation}, groups {groups}")
        dt = x.dtype
        if PRODUCTS_BY_TILES:
            U = _filters.derived(w, ("cl_winograd_tiles", tile, dt.str),
                                 lambda: _tiles.pack(_winograd_matrix(w, tile, dt)))
        else:
            U = _filters.derived(w, ("cl_winograd", tile, dt.str), lambda: _winograd_matrix(w, tile, dt))
        return _winograd_forward_cl(x, U, b, res, y, padding, tile, relu, tiles=PRODUCTS_BY_TILES)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = f"Channels-last Winograd F({tile}x{tile}, 3x3): 3x3, stride 1, dilation 1, groups 1 only."
    return variant


def cl_gemm_t(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``cl_gemm`` with each product formed as filter . columns^T and stored transposed (see
    ``_gemm_forward_cl``); groups 1."""
    where = "conv2d_cl[cl_gemm_t]"
    x, w, b, res, y, stride, padding, dilation = _prepare_ungrouped(x, w, b, stride, padding, dilation, groups,
                                                                    residual, where, out)
    dt = x.dtype
    K, C, R, S = w.shape
    wmat = _filters.derived(w, ("cl_gemm_t", dt.str),
                            lambda: np.array(np.asarray(w, dtype=dt).transpose(0, 2, 3, 1).reshape(K, R * S * C),
                                             order="C", copy=True))
    return _gemm_forward_cl(x, wmat, b, res, y, stride, padding, dilation, R, S, relu, transposed=True)


cl_winograd_f2x2_3x3 = _cl_winograd(2)
cl_winograd_f4x4_3x3 = _cl_winograd(4)

VARIANTS = {"cl_gemm": cl_gemm, "cl_gemm_t": cl_gemm_t, "cl_tiles": cl_tiles, "cl_winograd_f2x2_3x3": cl_winograd_f2x2_3x3,
            "cl_winograd_f4x4_3x3": cl_winograd_f4x4_3x3}


def _winograd_ok(x_shape, w_shape, stride, dilation, groups):
    return (tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1)


def conv_variants_cl(x_shape, w_shape, stride, padding, dilation, groups) -> dict:
    """The channels-last variants that can compute this shape (x_shape is (N, H, W, C))."""
    if groups != 1:
        return {}
    out = {"cl_gemm": cl_gemm, "cl_gemm_t": cl_gemm_t, "cl_tiles": cl_tiles}
    if _winograd_ok(x_shape, w_shape, pair(stride, "stride"), pair(dilation, "dilation"), groups):
        out["cl_winograd_f2x2_3x3"] = cl_winograd_f2x2_3x3
        if x_shape[3] <= WINOGRAD_F4_MAX_CHANNELS:
            out["cl_winograd_f4x4_3x3"] = cl_winograd_f4x4_3x3
    return out


# as the NCHW rule (conv.py): F(4x4)'s float32 error is held to layers of at most 512 channels
WINOGRAD_F4_MAX_CHANNELS = 512
# the variant without autotuning: F(4x4) for 3x3 stride-1 layers of at least this many channels
# whose output divides into 4x4 tiles, F(2x2) for other 3x3 stride-1 ones, else cl_gemm
WINOGRAD_MIN_CHANNELS = 32


# ... and only with at least this many 2x2 output tiles: with fewer (ResNet-18's layer4 at batch 1,
# 16 tiles) the transformed filter (16 or 36 values per (k, c) instead of 9) is read for too few
# tiles, and cl_gemm_t wins
WINOGRAD_MIN_TILES2 = 32
# cl_gemm_t instead of cl_gemm below this many output pixels (layer4 of ResNet-18 at batch 1: 49)
GEMM_T_MAX_ROWS = 128


def choose_variant_cl(x_shape, w_shape, stride, padding, dilation, groups) -> str:
    """The variant ``conv2d_fused_forward_cl`` runs without autotuning (the picks the autotuner made
    on ResNet-18 at batch 1 and 8; docs/kernels.md, "Channels last" and "A product with its tile in
    registers")."""
    N, H, W, C = x_shape
    K, _, R, S = w_shape
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    P = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    if (groups == 1 and C >= WINOGRAD_MIN_CHANNELS and _winograd_ok(x_shape, w_shape, stride, dilation, groups)
            and N * -(-P // 2) * -(-Q // 2) >= WINOGRAD_MIN_TILES2):
        if P % 4 == 0 and Q % 4 == 0 and C <= WINOGRAD_F4_MAX_CHANNELS:
            return "cl_winograd_f4x4_3x3"
        return "cl_winograd_f2x2_3x3"
    if PRODUCTS_BY_TILES:
        return "cl_tiles"
    return "cl_gemm_t" if N * P * Q < GEMM_T_MAX_ROWS else "cl_gemm"


def conv2d_fused_forward_cl(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``conv2d_fused_forward`` on channels-last arrays: x (N, H, W, C), residual and y (N, P, Q, K),
    w (K, C/groups, R, S). Grouped layers are computed by the NCHW op (transposed in and out)."""
    if np.ndim(x) != 4:
        raise ValueError(f"conv2d_cl: expected channels-last input (N, H, W, C), got shape {tuple(np.shape(x))}")
    if int(groups) != 1:  # checked like the ungrouped layers (out= included), computed by the NCHW op
        from . import conv

        x, w, b, res, y, stride, padding, dilation, groups = _prepare_cl(
            x, w, b, stride, padding, dilation, groups, residual, "conv2d_cl", out)
        y[...] = conv.conv2d_fused_forward(x.transpose(0, 3, 1, 2), w, b, stride, padding, dilation, groups,
                                           residual=None if res is None else res.transpose(0, 3, 1, 2),
                                           relu=relu).transpose(0, 2, 3, 1)
        return y
    name = choose_variant_cl(np.shape(x), np.shape(w), stride, padding, dilation, int(groups))
    return VARIANTS[name](x, w, b, stride, padding, dilation, groups, residual=residual, relu=relu, out=out)


# --------------------------------------------------------------------------------------------
# Max pooling, channels last


@njit(cache=True, nogil=True, parallel=True)
def _maxpool_cl(x, y, kh, kw, sh, sw, ph, pw, dh, dw, b, has_b, relu):  # pragma: no cover - jitted
    """y[n, p, q, c] = max over the window's pixels inside the image of x[n, h, w, c]; a NaN wins
    (and stays), the first real input counts even if it is -inf; -inf for a window of padding only.
    Then + b[c] when ``has_b``, and ReLU when ``relu`` (a NaN stays NaN)."""
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    P = y.shape[1]
    Q = y.shape[2]
    ninf = -np.inf
    zero = y.dtype.type(0)
    for task in prange(y.shape[0] * P):
        n = task // P
        p = task - n * P
        for q in range(Q):
            yr = y[n, p, q]
            for c in range(C):
                yr[c] = ninf
            for r in range(kh):
                h = p * sh - ph + r * dh
                if h < 0 or h >= H:
                    continue
                for s in range(kw):
                    wc = q * sw - pw + s * dw
                    if wc < 0 or wc >= W:
                        continue
                    xr = x[n, h, wc]
                    for c in range(C):
                        v = xr[c]
                        cur = yr[c]
                        # cur != cur: a NaN already won; v != v: a NaN wins
                        if cur == cur and (v > cur or v != v):
                            yr[c] = v
            if has_b or relu:
                for c in range(C):
                    v = yr[c] + b[c] if has_b else yr[c]
                    yr[c] = zero if (relu and v < 0) else v


def maxpool2d_forward_cl(x, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False, out=None,
                         bias=None, relu=False):
    """Max pooling of channels-last x (N, H, W, C) -> (N, P, Q, C), values only (inference), with
    the window rules of ``maxpool2d_forward``. ``out``: an optional C-contiguous array to write to.

    ``bias`` (C,) and ``relu``: the pooled values plus ``bias``, then ReLU. A ResNet stem's
    maxpool(relu(conv + b)) computed as relu(maxpool(conv) + b) is the same number for every window
    holding an image pixel (rounding is monotone, so the max commutes with adding a constant, and
    ReLU is monotone), and the epilogue touches a quarter of the values."""
    where = "maxpool2d_cl"
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected channels-last input (N, H, W, C), got shape {tuple(x.shape)}")
    from . import pool

    N, H, W, C = x.shape
    k, s, p, d, P, Q = pool.window_out((N, C, H, W), kernel_size, kernel_size if stride is None else stride,
                                       padding, dilation, where, ceil_mode)
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    x = prepare(x, dt)
    if out is None:
        y = np.empty((N, P, Q, C), dt)
    else:
        if not (isinstance(out, np.ndarray) and out.shape == (N, P, Q, C) and out.dtype == dt
                and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"{where}: out must be a C-contiguous writeable {dt} array of shape {(N, P, Q, C)}")
        if np.may_share_memory(out, x):
            raise ValueError(f"{where}: out must not overlap the input")
        y = out
    if bias is None:
        bb = empty_like_ndim(1, dt)
    else:
        bb = np.asarray(bias)
        if bb.shape != (C,):
            raise ValueError(f"{where}: bias must have shape ({C},), got {tuple(bb.shape)}")
        bb = prepare(bb, dt)
    _threads.run(_maxpool_cl, x, y, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], bb, bias is not None,
                 bool(relu), work=y.size * k[0] * k[1])
    return y


# --------------------------------------------------------------------------------------------
# The layout change at a compiled model's input


@njit(cache=True, nogil=True, parallel=True)
def _to_channels_last(x, y):  # pragma: no cover - jitted
    """y[n, h, w, c] = x[n, c, h, w]: one task per output image row, each input channel's row read
    along its contiguous axis (numpy's transposing copy walks the output and strides through x,
    three to six times slower here for a 3-channel image)."""
    N = x.shape[0]
    C = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    for t in prange(N * H):
        n = t // H
        h = t - n * H
        yr = y[n, h]
        for c in range(C):
            xr = x[n, c, h]
            for w in range(W):
                yr[w, c] = xr[w]


def to_channels_last(x, out=None):
    """x (N, C, H, W) copied to channels-last (N, H, W, C), into ``out`` when given (a C-contiguous
    writeable array of that shape and x's dtype, not overlapping x)."""
    where = "to_channels_last"
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected input of shape (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    shape = (N, H, W, C)
    if out is None:
        y = np.empty(shape, x.dtype)
    else:
        if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == x.dtype
                and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"{where}: out must be a C-contiguous writeable {x.dtype} array of shape {shape}")
        if np.may_share_memory(out, x):
            raise ValueError(f"{where}: out must not overlap the input")
        y = out
    if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        # the jitted copy is compiled for C-ordered arrays of the model dtypes only
        y[...] = x.transpose(0, 2, 3, 1)
        return y
    _threads.run(_to_channels_last, x, y, work=y.size)
    return y
