"""im2col and its adjoint col2im: the unfolding that turns a convolution into a GEMM.

Two forms of each, chosen per shape by :func:`unfold_mode` (the choice never changes a value;
both forms of the fold also sum each cell's taps in the same order):

- ``TABLE`` (``_im2col_table``, ``_col2im_table``) gathers through a table of source offsets,
  one int32 per (tap, output cell) and -1 where the tap falls in the padding, shared by every
  image and channel. One task per row of the column matrix (channel, tap) then writes that row
  from start to end as one stream, each value ``plane[tab[j]]`` or 0. Used where the table is
  small and the rows are short or strided (the digits convnet's 4x4 and 8x8 planes, ResNet's
  7x7 planes, strided layers): per-row loops there cost more in bookkeeping than in bytes. The
  fold uses it wherever the table is small.
- ``ROWS`` (``_im2col_rows``, ``_col2im_rows``) copies runs of contiguous input cells:
  stride-1 rows directly, strided rows from a copy of the input split by column phase
  (``w mod stride``), where the columns one tap reads are contiguous. For long rows (14x14 and
  larger unstrided planes, the 7x7 stem's 112-wide output).

The row form came first, with slice assignments; it now copies with 0-based loops over views,
and the table form was added beside it (docs/kernels.md, "im2col: a gather table for short rows,
row runs for long ones", has both versions' timings). Checked by
``python -m pytest -q tests/test_numba_backend.py -k "im2col or unfold"`` (both forms of both
kernels against the numpy reference's unfold); timed by ``python -m benchmarks.unfold_sweep``
(both forms side by side, with the rule's pick).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _threads

# the two forms of the unfold and the fold (see the module docstring)
TABLE, ROWS = 0, 1
# the gather table is used up to this many entries (R*S*P*Q; 128 KiB of int32) ...
TABLE_MAX = 1 << 15
# ... by im2col unless the rows are unstrided and at least this long: contiguous copies then
# win. The unfold's own threshold, measured on the unfold (the max pool has its own,
# pool.ROWS_MIN_Q, for its own two forms)
UNFOLD_ROWS_MIN_Q = 12
# the table holds int32 offsets into one (H, W) plane: larger planes always copy row runs
PLANE_MAX = 2**31 - 1


class Geometry(NamedTuple):
    """A convolution's window: kernel R x S, stride, padding, dilation (per axis) and the P x Q
    output. The kernels take it as one argument (numba passes a NamedTuple of ints by value)."""

    R: int
    S: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    P: int
    Q: int


def geometry(R, S, stride, padding, dilation, P, Q) -> Geometry:
    """The ``Geometry`` of an R x S window with (height, width) pairs ``stride``, ``padding``, ``dilation``."""
    return Geometry(int(R), int(S), int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
                    int(dilation[0]), int(dilation[1]), int(P), int(Q))


@njit(cache=True, nogil=True)
def q_range(Q, W, sw, off_w):  # pragma: no cover - jitted
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


@njit(cache=True, nogil=True)
def _tap_table(tab, H, W, g):  # pragma: no cover - jitted
    """tab[r*S + s, p*Q + q] = h*W + w of the input cell tap (r, s) of output (p, q) reads, -1 in
    the padding (``g`` a ``Geometry``)."""
    Q = g.Q
    for r in range(g.R):
        for s in range(g.S):
            t = tab[r * g.S + s]
            for p in range(g.P):
                h = p * g.sh - g.ph + r * g.dh
                for q in range(Q):
                    w = q * g.sw - g.pw + s * g.dw
                    t[p * Q + q] = h * W + w if 0 <= h < H and 0 <= w < W else -1


@njit(cache=True, nogil=True, parallel=True)
def _im2col_table(xf, n0, nc, C, HW, cols, tab):  # pragma: no cover - jitted
    """cols[c*RS + rs, i*PQ + j] = plane (n0+i, c) of the flat input at tab[rs, j] (0 where -1).

    One task per row of ``cols``: it writes the row start to end, reading each image's plane
    through the same table row (which stays in cache across the images).
    """
    RS, PQ = tab.shape
    zero = cols.dtype.type(0)
    for task in prange(C * RS):
        c = task // RS
        rs = task - c * RS
        t = tab[rs]
        row = cols[task]
        for i in range(nc):
            base = ((n0 + i) * C + c) * HW
            src = xf[base:base + HW]
            d = row[i * PQ:(i + 1) * PQ]
            for j in range(PQ):
                k = t[j]
                d[j] = src[k] if k >= 0 else zero


@njit(cache=True, nogil=True, parallel=True)
def _im2col_rows(xs, i0, C, H, row_len, Wq, W, nc, cols, g):  # pragma: no cover - jitted
    """Unfold nc images into ``cols`` (C*R*S, nc*P*Q), run by run (``g`` a ``Geometry``):

        cols[(c*R + r)*S + s, i*P*Q + p*Q + q] = x[n0+i, c, p*sh - ph + r*dh, q*sw - pw + s*dw]

    (0 outside the image). ``xs`` is the input split by column phase: input row (image i0+i,
    channel c, row h) starts at (((i0+i)*C + c)*H + h) * row_len, and its columns
    w = phase + j*sw sit at phase*Wq + j. For stride 1 that is x itself (i0 = n0, row_len = Wq
    = W); for stride sw > 1 the wrapper builds the split (i0 = 0), so that the columns one output
    row reads for tap s (w = q*sw + off, all of one phase) are contiguous.
    When consecutive output rows read consecutive input rows of exactly Q values (stride 1 down
    the rows and a "same" width), all valid rows of one tap are a single run: one copy, then the
    cells that fall in the padding are zeroed.
    Copies are 0-based loops over views (numba then drops its negative-index checks and LLVM
    vectorises them); numba lowers a slice assignment through a slower generic path.
    One task per (image, channel, kernel row): it owns S distinct rows of cells, so no races;
    the 7x7 stem of a one-image chunk thus has 21 tasks rather than 3.
    """
    R, S, sh, sw, ph, pw, dh, dw, P, Q = g
    PQ = P * Q
    zero = cols.dtype.type(0)
    for task in prange(nc * C * R):
        ic = task // R
        r = task - ic * R
        i = ic // C
        c = ic - i * C
        xb = ((i0 + i) * C + c) * H
        for s in range(S):
            dt = cols[(c * R + r) * S + s, i * PQ:(i + 1) * PQ]
            off_w = s * dw - pw
            phase = off_w % sw
            j0 = (off_w - phase) // sw
            q_lo, q_hi = q_range(Q, W, sw, off_w)
            nq = q_hi - q_lo
            if sh == 1 and row_len == Q and nq > 0:
                p_lo = min(max(0, ph - r * dh), P)
                p_hi = max(min(P, H + ph - r * dh), p_lo)
                for j in range(p_lo * Q):
                    dt[j] = zero
                for j in range(p_hi * Q, PQ):
                    dt[j] = zero
                if p_hi > p_lo:
                    sb = (xb + p_lo - ph + r * dh) * row_len + phase * Wq + j0 + q_lo
                    run = (p_hi - 1 - p_lo) * Q + nq
                    src = xs[sb:sb + run]
                    d = dt[p_lo * Q + q_lo:p_lo * Q + q_lo + run]
                    for j in range(run):
                        d[j] = src[j]
                    # the run also copied the neighbouring rows' cells left of q_lo / right of q_hi
                    for p in range(p_lo, p_hi):
                        for q in range(q_lo):
                            dt[p * Q + q] = zero
                        for q in range(q_hi, Q):
                            dt[p * Q + q] = zero
                continue
            for p in range(P):
                hi = p * sh - ph + r * dh
                d = dt[p * Q:(p + 1) * Q]
                if hi < 0 or hi >= H or nq <= 0:
                    for q in range(Q):
                        d[q] = zero
                    continue
                sb = (xb + hi) * row_len + phase * Wq + j0 + q_lo
                src = xs[sb:sb + nq]
                dd = d[q_lo:q_hi]
                for q in range(q_lo):
                    d[q] = zero
                for j in range(nq):
                    dd[j] = src[j]
                for q in range(q_hi, Q):
                    d[q] = zero


def unfold_mode(R, S, stride, P, Q, adjoint=False) -> int:
    """TABLE or ROWS for this layer shape, for im2col or (``adjoint``) col2im; both modes give
    the same values. The fold gathers through the table wherever it is small (a scatter-add
    per cell beat the strided row views at every size measured); the unfold only where the rows
    are strided or shorter than UNFOLD_ROWS_MIN_Q (from 14x14 planes up, contiguous row copies
    are faster)."""
    if R * S * P * Q > TABLE_MAX:
        return ROWS
    if adjoint or stride[1] > 1 or Q < UNFOLD_ROWS_MIN_Q:
        return TABLE
    return ROWS


def tap_table(H, W, R, S, stride, padding, dilation, P, Q, tag="im2col.table"):
    """The gather table of this window geometry (see ``_tap_table``) in the calling thread's
    workspace ``tag`` (the max pool keeps its own, so one never overwrites the other's)."""
    return _table(H, W, geometry(R, S, stride, padding, dilation, P, Q), tag)


def _table(H, W, g: Geometry, tag="im2col.table"):
    """``tap_table`` for a ``Geometry``."""
    tab = _threads.workspace(tag, (g.R * g.S, g.P * g.Q), np.int32)
    _tap_table(tab, H, W, g)
    return tab


def _mode(g: Geometry, mode, H, W, adjoint):
    """The form to run: ``mode``, else ``unfold_mode``'s choice; always ROWS for planes the table cannot index."""
    if mode is None:
        mode = unfold_mode(g.R, g.S, (g.sh, g.sw), g.P, g.Q, adjoint)
    return ROWS if H * W > PLANE_MAX else mode


def im2col(x, n0, nc, cols, g: Geometry, mode=None):
    """Fill ``cols`` (C*R*S, nc*P*Q) with the unfolded images n0..n0+nc-1 of the C-contiguous ``x``
    for the window ``g`` (a ``Geometry``).

    ``mode`` (TABLE or ROWS) defaults to :func:`unfold_mode`'s choice.
    """
    N, C, H, W = x.shape
    sw = g.sw
    mode = _mode(g, mode, H, W, adjoint=False)
    if mode == TABLE:
        tab = _table(H, W, g)
        _threads.run(_im2col_table, x.reshape(-1), n0, nc, C, H * W, cols, tab, work=cols.size)
        return cols
    if sw == 1:
        xs, i0, row_len, Wq = x.reshape(-1), n0, W, W
    else:
        # split the chunk's columns by phase (w mod sw) so that strided reads become slices
        Wq = -(-W // sw)
        split = _threads.workspace("im2col.phases", (nc, C, H, sw, Wq), x.dtype)
        # only the phases some tap reads (a 1x1 stride-2 layer reads every other column: one)
        for phase in sorted({(s * g.dw - g.pw) % sw for s in range(g.S)}):
            if phase >= W:
                continue
            cnt = -(-(W - phase) // sw)
            split[:, :, :, phase, :cnt] = x[n0:n0 + nc, :, :, phase::sw]
        xs, i0, row_len = split.reshape(-1), 0, sw * Wq
    _threads.run(_im2col_rows, xs, i0, C, H, row_len, Wq, W, nc, cols, g, work=cols.size)
    return cols


@njit(cache=True, nogil=True, parallel=True)
def _col2im_table(cols, dxf, n0, nc, C, HW, tab):  # pragma: no cover - jitted
    """The adjoint of _im2col_table: plane (n0+i, c) of the flat dx = sum over taps rs of
    cols[c*RS + rs, i*PQ + j] added at tab[rs, j] (nothing where -1).

    One task per (image, channel) plane, which receives contributions only from its own rows of
    ``cols``: the scatter-add needs no atomics, and each cell sums its taps in (r, s) order.
    """
    RS, PQ = tab.shape
    zero = dxf.dtype.type(0)
    for task in prange(nc * C):
        i = task // C
        c = task - i * C
        base = ((n0 + i) * C + c) * HW
        plane = dxf[base:base + HW]
        for k in range(HW):
            plane[k] = zero
        for rs in range(RS):
            t = tab[rs]
            src = cols[c * RS + rs, i * PQ:(i + 1) * PQ]
            for j in range(PQ):
                k = t[j]
                if k >= 0:
                    plane[k] += src[j]


@njit(cache=True, nogil=True, parallel=True)
def _col2im_rows(cols, dx, n0, nc, g):  # pragma: no cover - jitted
    """The adjoint of _im2col_rows: dx[n0+i, c] = sum of every column cell that came from each pixel.

    One task per (image, channel) plane, which receives contributions only from its own rows of
    ``cols``: the scatter-add needs no atomics and each cell sums its taps in (r, s) order.
    """
    R, S, sh, sw, ph, pw, dh, dw, P, Q = g
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
                off_w = s * dw - pw
                q_lo, q_hi = q_range(Q, W, sw, off_w)
                nq = q_hi - q_lo
                if nq <= 0:
                    continue
                row = cols[(c * R + r) * S + s]
                for p in range(P):
                    hi = p * sh - ph + r * dh
                    if hi < 0 or hi >= H:
                        continue
                    # 0-based loops over views: no wrap-around checks, so LLVM vectorises
                    dst = plane[hi, q_lo * sw + off_w:(q_hi - 1) * sw + off_w + 1:sw]
                    base = i * PQ + p * Q
                    src = row[base + q_lo:base + q_hi]
                    for j in range(nq):
                        dst[j] += src[j]


def col2im(cols, dx, n0, nc, g: Geometry, mode=None):
    """Overwrite images n0..n0+nc-1 of the C-contiguous ``dx`` with the fold of ``cols`` (C*R*S, nc*P*Q)
    for the window ``g`` (a ``Geometry``).

    ``mode`` (TABLE or ROWS) defaults to :func:`unfold_mode`'s choice; both sum in the same order.
    """
    N, C, H, W = dx.shape
    mode = _mode(g, mode, H, W, adjoint=True)
    if mode == TABLE:
        tab = _table(H, W, g)
        _threads.run(_col2im_table, cols, dx.reshape(-1), n0, nc, C, H * W, tab, work=cols.size)
        return dx
    _threads.run(_col2im_rows, cols, dx, n0, nc, g, work=cols.size)
    return dx
