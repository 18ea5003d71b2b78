"""im2col and its adjoint col2im: the unfolding that turns a convolution into a GEMM.

``_im2col`` writes through two strides, so the same kernel also gathers Winograd's input tiles
(an unfold with a tile-sized kernel and stride m) in the layout that transform's GEMM reads.
"""
from __future__ import annotations

from numba import njit, prange

from . import _threads


@njit(cache=True)
def _q_range(Q, W, sw, off_w):  # pragma: no cover - jitted
    """Output columns q whose input column q*sw + off_w lies inside [0, W)."""
    q_lo = 0 if off_w >= 0 else (-off_w + sw - 1) // sw
    last = W - 1 - off_w
    q_hi = 0 if last < 0 else last // sw + 1
    if q_hi > Q:
        q_hi = Q
    if q_hi < q_lo:
        q_hi = q_lo
    if q_lo > Q:
        q_lo = Q
        q_hi = Q
    return q_lo, q_hi


@njit(cache=True, parallel=True)
def _im2col(x, n0, nc, cols, stride_c, stride_rs, R, S, sh, sw, ph, pw, dh, dw, P, Q):  # pragma: no cover
    """Unfold images n0..n0+nc-1 into the flat array ``cols``:

        cols[c*stride_c + (r*S + s)*stride_rs + i*P*Q + p*Q + q]
            = x[n0+i, c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)

    With stride_c = R*S*nc*P*Q, stride_rs = nc*P*Q this is the GEMM layout (C*R*S, nc*P*Q) of
    im2col; with stride_c = nc*P*Q, stride_rs = C*nc*P*Q it is Winograd's tile layout
    (alpha*alpha, C, tiles) (kernel = tile, stride = m). One task per (image, channel): it owns
    R*S distinct runs of cells, so no races. Stride-1 runs are copied as slices (numba lowers them
    to plain copies, ~3x faster than an element loop it cannot prove alias-free); indexing is on
    flat arrays because creating a view per short row cost as much as copying it.
    """
    C = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    PQ = P * Q
    zero = cols.dtype.type(0)
    xf = x.reshape(-1)
    for task in prange(nc * C):
        i = task // C
        c = task - i * C
        xb = ((n0 + i) * C + c) * H * W
        for r in range(R):
            for s in range(S):
                start = c * stride_c + (r * S + s) * stride_rs + i * PQ
                off_w = s * dw - pw
                q_lo, q_hi = _q_range(Q, W, sw, off_w)
                for p in range(P):
                    hi = p * sh - ph + r * dh
                    d = start + p * Q
                    if hi < 0 or hi >= H:
                        for q in range(Q):
                            cols[d + q] = zero
                        continue
                    for q in range(q_lo):
                        cols[d + q] = zero
                    sb = xb + hi * W + off_w
                    if sw == 1:
                        cols[d + q_lo:d + q_hi] = xf[sb + q_lo:sb + q_hi]
                    elif q_hi > q_lo:
                        # a 0-based loop over views: no wrap-around checks in the loop
                        dst = cols[d + q_lo:d + q_hi]
                        src = xf[sb + q_lo * sw:sb + (q_hi - 1) * sw + 1:sw]
                        for j in range(q_hi - q_lo):
                            dst[j] = src[j]
                    for q in range(q_hi, Q):
                        cols[d + q] = zero


def im2col(x, n0, nc, cols, R, S, stride, padding, dilation, P, Q):
    """Fill ``cols`` (C*R*S, nc*P*Q) with the unfolded images n0..n0+nc-1 (see ``_im2col``)."""
    ncols = nc * P * Q
    _threads.run(_im2col, x, n0, nc, cols.reshape(-1), R * S * ncols, ncols, R, S, stride[0], stride[1],
                 padding[0], padding[1], dilation[0], dilation[1], P, Q)
    return cols


@njit(cache=True, parallel=True)
def _col2im(cols, dx, n0, nc, R, S, sh, sw, ph, pw, dh, dw, P, Q):  # pragma: no cover - jitted
    """The adjoint of _im2col: dx[n0+i, c] = sum of every column cell that came from each pixel.

    One task per (image, channel) plane, which receives contributions only from its own rows of
    ``cols``: the scatter-add needs no atomics and the summation order is fixed.
    """
    C = dx.shape[1]
    H = dx.shape[2]
    W = dx.shape[3]
    PQ = P * Q
    zero = dx.dtype.type(0)
    for task in prange(nc * C):
        i = task // C
        c = task - i * C
        plane = dx[n0 + i, c]
        plane[:, :] = zero
        for r in range(R):
            for s in range(S):
                row = cols[(c * R + r) * S + s]
                off_w = s * dw - pw
                q_lo, q_hi = _q_range(Q, W, sw, off_w)
                nq = q_hi - q_lo
                if nq <= 0:
                    continue
                for p in range(P):
                    hi = p * sh - ph + r * dh
                    if hi < 0 or hi >= H:
                        continue
                    base = i * PQ + p * Q
                    # 0-based loops over views: no wrap-around checks, so LLVM vectorises
                    dst = plane[hi, q_lo * sw + off_w:(q_hi - 1) * sw + off_w + 1:sw]
                    src = row[base + q_lo:base + q_hi]
                    for j in range(nq):
                        dst[j] += src[j]


def col2im(cols, dx, n0, nc, R, S, stride, padding, dilation, P, Q):
    """Overwrite images n0..n0+nc-1 of ``dx`` with the fold of ``cols`` (C*R*S, nc*P*Q)."""
    _threads.run(_col2im, cols, dx, n0, nc, R, S, stride[0], stride[1], padding[0], padding[1],
                 dilation[0], dilation[1], P, Q)
    return dx
