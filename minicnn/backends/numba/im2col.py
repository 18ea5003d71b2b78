"""im2col and its adjoint col2im: the unfolding that turns a convolution into a GEMM.

``_im2col`` writes through two strides, so the same kernel also gathers Winograd's input tiles
(an unfold with a tile-sized kernel and stride m) in the layout that transform's GEMM reads.
"""
from __future__ import annotations

from numba import njit, prange

from . import _threads


# runs shorter than this are copied value by value: a slice copy makes two array views, which
# cost more than the copy itself on the digits convnet's 4x4 and 8x8 planes
SHORT_RUN = 16


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
def _im2col(xs, i0, C, H, row_len, Wq, W, nc, cols, stride_c, stride_rs, R, S, sh, sw, ph, pw, dh, dw,
            P, Q):  # pragma: no cover - jitted
    """Unfold nc images into the flat array ``cols``:

        cols[c*stride_c + (r*S + s)*stride_rs + i*P*Q + p*Q + q]
            = x[n0+i, c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the image)

    With stride_c = R*S*nc*P*Q, stride_rs = nc*P*Q this is the GEMM layout (C*R*S, nc*P*Q) of
    im2col; with stride_c = nc*P*Q, stride_rs = C*nc*P*Q it is Winograd's tile layout
    (alpha*alpha, C, tiles) (kernel = tile, stride = m).

    ``xs`` is the input split by column phase: input row (image i0+i, channel c, row h) starts at
    ((i0+i)*C + c)*H + h) * row_len, and its columns w = phase + j*sw sit at phase*Wq + j. For
    stride 1 that is x itself (i0 = n0, row_len = Wq = W); for stride sw > 1 the wrapper builds
    the split (i0 = 0), so that the columns one output row reads for tap s — w = q*sw + off,
    all of one phase — are contiguous and every run is a slice copy (numba lowers those to plain
    copies; a strided element loop over views ran 7x slower than memory and did not scale to two
    threads, since every view is an atomic reference-count update on the shared array).
    When consecutive output rows read consecutive input rows of exactly Q values (stride 1 down
    the rows and a "same" width, as in every 3x3 layer of a ResNet), all valid rows of one tap are
    a single run: one copy, then the few cells that fall in the padding are zeroed. On 7x7 planes
    this halved the unfold (per-row copies of 7 values cost more in overhead than in bytes).
    One task per (image, channel, kernel row): it owns S distinct runs of cells, so no races; the
    7x7 stem of a one-image chunk thus has 21 tasks rather than 3 (image, channel) ones, which
    left one of two threads idle half the time.
    """
    PQ = P * Q
    zero = cols.dtype.type(0)
    for task in prange(nc * C * R):
        ic = task // R
        r = task - ic * R
        i = ic // C
        c = ic - i * C
        xb = ((i0 + i) * C + c) * H
        for s in range(S):
            start = c * stride_c + (r * S + s) * stride_rs + i * PQ
            off_w = s * dw - pw
            phase = off_w % sw
            j0 = (off_w - phase) // sw
            q_lo, q_hi = _q_range(Q, W, sw, off_w)
            if sh == 1 and row_len == Q and q_hi > q_lo:
                # consecutive output rows read consecutive, equally long input rows: the valid
                # rows are one contiguous run (small planes would otherwise pay per-row slice
                # overhead), whose cells left of q_lo / right of q_hi are zeroed afterwards
                p_lo = min(max(0, ph - r * dh), P)
                p_hi = max(min(P, H + ph - r * dh), p_lo)
                for j in range(start, start + p_lo * Q):
                    cols[j] = zero
                for j in range(start + p_hi * Q, start + PQ):
                    cols[j] = zero
                if p_hi > p_lo:
                    sb = (xb + p_lo - ph + r * dh) * row_len + phase * Wq + j0
                    d0 = start + p_lo * Q + q_lo
                    run = (p_hi - 1 - p_lo) * Q + q_hi - q_lo
                    if run < SHORT_RUN:  # two views cost more than copying a few values one by one
                        for j in range(run):
                            cols[d0 + j] = xs[sb + q_lo + j]
                    else:
                        cols[d0:d0 + run] = xs[sb + q_lo:sb + q_lo + run]
                    for p in range(p_lo, p_hi):
                        d = start + p * Q
                        for q in range(q_lo):
                            cols[d + q] = zero
                        for q in range(q_hi, Q):
                            cols[d + q] = zero
                continue
            for p in range(P):
                hi = p * sh - ph + r * dh
                d = start + p * Q
                if hi < 0 or hi >= H:
                    for q in range(Q):
                        cols[d + q] = zero
                    continue
                for q in range(q_lo):
                    cols[d + q] = zero
                sb = (xb + hi) * row_len + phase * Wq + j0
                if q_hi - q_lo < SHORT_RUN:
                    for q in range(q_lo, q_hi):
                        cols[d + q] = xs[sb + q]
                else:
                    cols[d + q_lo:d + q_hi] = xs[sb + q_lo:sb + q_hi]
                for q in range(q_hi, Q):
                    cols[d + q] = zero


def im2col(x, n0, nc, cols, R, S, stride, padding, dilation, P, Q):
    """Fill ``cols`` (C*R*S, nc*P*Q) with the unfolded images n0..n0+nc-1 (see ``_im2col``)."""
    ncols = nc * P * Q
    N, C, H, W = x.shape
    sh, sw = stride
    if sw == 1:
        xs, i0, row_len, Wq = x.reshape(-1), n0, W, W
    else:
        # split the chunk's columns by phase (w mod sw) so that strided reads become slices
        Wq = -(-W // sw)
        split = _threads.workspace("im2col.phases", (nc, C, H, sw, Wq), x.dtype)
        # only the phases some tap reads (a 1x1 stride-2 layer reads every other column: one)
        for phase in sorted({(s * dilation[1] - padding[1]) % sw for s in range(S)}):
            if phase >= W:
                continue
            cnt = -(-(W - phase) // sw)
            split[:, :, :, phase, :cnt] = x[n0:n0 + nc, :, :, phase::sw]
        xs, i0, row_len = split.reshape(-1), 0, sw * Wq
    _threads.run(_im2col, xs, i0, C, H, row_len, Wq, W, nc, cols.reshape(-1), R * S * ncols, ncols, R, S,
                 sh, sw, padding[0], padding[1], dilation[0], dilation[1], P, Q)
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
                ci = (c * R + r) * S + s
                off_w = s * dw - pw
                q_lo, q_hi = _q_range(Q, W, sw, off_w)
                nq = q_hi - q_lo
                if nq <= 0:
                    continue
                row = cols[ci]
                for p in range(P):
                    hi = p * sh - ph + r * dh
                    if hi < 0 or hi >= H:
                        continue
                    base = i * PQ + p * Q
                    if nq < SHORT_RUN:  # short rows: scalar indexing, no views
                        for q in range(q_lo, q_hi):
                            plane[hi, q * sw + off_w] += row[base + q]
                        continue
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
