"""Max, average and adaptive pooling and max unpooling, forward and backward, one parallel task
per (n, c) plane.

One forward kernel (``_pool_fwd``) serves every forward: each pooling window is described per
output row and column by a start and a tap count (regular pooling: p*stride - padding and the
kernel size; adaptive pooling: its bins), so max/avg and regular/adaptive differ only in the
arrays passed in. Regular max pooling has three faster forms beside it (``_max_2x2`` for the
2x2 stride-2 pool, ``_max_table`` for short rows, ``maxpool_values`` without argmax), and the
backwards are ``_max_bwd`` (through argmax) and ``_avg_bwd``.

Every backward is a scatter into the input gradient; because a task owns a whole (n, c) plane of
``dx`` and only reads the outputs of that same plane, the scatter-adds never race and need no
atomics, and the summation order (hence the result) does not depend on the thread count.
Semantics follow the numpy reference: ``argmax`` holds h*W + w of the first maximum in scan order
(-1 for a window of only padding), padding never wins a max, NaN propagates, and the bins of
adaptive pooling are [floor(iL/O), ceil((i+1)L/O)).

``ceil_mode`` only changes the output size (``shapes.conv_output_size``): every kernel already
takes per-window inside-tap ranges, so a last window hanging past the padding needs no other
code, and the floor-mode paths run exactly as before. Average pooling's divisor counts the
window clipped to the padded input (``_avg_windows``), which is the full window without ceil_mode.
Max unpooling (``_unpool_fwd``/``_unpool_bwd``) is a scatter and a gather through the indices.

Forms of regular max pooling (``maxpool2d_forward`` picks; every form gives the same values):

- ``_max_2x2``: the 2x2, stride-2, unpadded pool with every window inside (``TWO_BY_TWO``),
  with or without argmax; four taps read by index and compared in registers.
- ``MAX`` in ``_pool_fwd``: window by window; the first form, kept for adaptive max pooling and
  for shapes whose gather table would be too large.
- ``MAX_ROWS`` in ``_pool_fwd``: a whole output row per tap, a vectorised compare-and-select
  over the row; for rows of at least ``ROWS_MIN_Q`` outputs.
- ``_max_table``: tap by tap over the whole plane through im2col's gather table; for shorter
  rows, where the row views cost more than the row.
- ``maxpool_values``: without argmax (inference), separably, rows then columns; NaNs counted only
  for a plane that has one.

Each compare that keeps or replaces a running maximum is written as a select, not a branch: a
branch goes whichever way the data says, and on fresh activations it is mispredicted half the
time. docs/kernels.md ("The other kernels", Pooling) has each form's timings. Checked by
``python -m pytest -q tests/test_numba_backend.py -k max_pool`` (every form against the
reference) and ``python -m pytest -q tests/test_conformance.py -k "numba and pool"``; timed by
``python -m benchmarks.unfold_sweep --pools`` (window by window against the table) and
``minicnn bench ops`` (ResNet-18's max pool).
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange, uint64

from . import _memory, _threads
from ._util import compute_dtype, conv_output_size, empty_like_ndim, pair, prepare
from .im2col import PLANE_MAX, TABLE_MAX, q_range, tap_table

__all__ = [
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward",
    "maxunpool2d_forward",
    "maxunpool2d_backward",
]


# the forms of ``_pool_fwd``: max window by window (with argmax), average, max row by row
MAX, AVG, MAX_ROWS = 0, 1, 2
# regular max pooling goes row by row (MAX_ROWS) from this many outputs per row; shorter rows go
# tap by tap over the whole plane through im2col's gather table (as the views MAX_ROWS makes per
# row and tap cost more than they save there), or window by window where that table would have
# more than TABLE_MAX entries. The max pool's own threshold, set by timing the pool's forms; the
# unfold's crossover, timed on the unfold's forms, is a different number (im2col.UNFOLD_ROWS_MIN_Q)
ROWS_MIN_Q = 8

# whether the 2x2, stride-2, unpadded max pool takes its own kernel (``_max_2x2``); False sends it
# through the general forms below (the tests do, to check each form on those shapes too)
TWO_BY_TWO = True


@njit(cache=True, nogil=True, parallel=True)
def _pool_fwd(mode, x, y, am, hlo, hcnt, hta, htb, dh, wlo, wcnt, wta, wtb, dw, sw, keep_first_nan,
              include_pad):  # pragma: no cover - jitted
    """Max (mode 0, with argmax) or average (mode 1) over windows given per output row/column.

    Output (p, q) reads rows hlo[p] + r*dh (r < hcnt[p]) and columns wlo[q] + s*dw (s < wcnt[q]);
    of those, taps r in [hta[p], htb[p]) and s in [wta[q], wtb[q]) lie inside the input (the
    wrapper computes these ranges once per row and column). Regular pooling passes
    lo = p*stride - padding and a fixed count, adaptive pooling its bins, so one kernel (one
    compilation) serves all four forwards.
    MAX_ROWS (regular max pooling, windows of one size at stride ``sw``) visits the taps in the
    same order but updates a whole output row per tap, as a 0-based loop over views that LLVM
    vectorises (window by window, the loop over a window's few taps does not vectorise).
    Max takes the window's first real tap (even -inf), then any strictly greater value, so the
    first maximum in scan order wins; padding never wins. A NaN always wins and so propagates: the
    last NaN in regular pooling (as PyTorch), the first in adaptive pooling (keep_first_nan, as
    numpy's argmax in the reference). An output whose window holds no real tap keeps argmax -1.
    Average divides by the full window (include_pad) or by its inside part.
    """
    N, C, H, W = x.shape
    P = y.shape[2]
    Q = y.shape[3]
    neg_inf = y.dtype.type(-np.inf)
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        xp = x[n, c]
        for p in range(P):
            r_lo, r_hi = hta[p], htb[p]
            if mode == MAX_ROWS:
                yrow = y[n, c, p]
                arow = am[n, c, p]
                for q in range(Q):
                    yrow[q] = neg_inf
                    arow[q] = -1
                S = wcnt[0]
                pw = -wlo[0]
                for r in range(r_lo, r_hi):
                    hi = hlo[p] + r * dh
                    xrow = xp[hi]
                    for s in range(S):
                        off = s * dw - pw
                        q_lo, q_hi = q_range(Q, W, sw, off)
                        nq = q_hi - q_lo
                        if nq <= 0:
                            continue
                        xs = xrow[q_lo * sw + off:(q_hi - 1) * sw + off + 1:sw]
                        ys = yrow[q_lo:q_hi]
                        ars = arow[q_lo:q_hi]
                        base = hi * W + off + q_lo * sw
                        for j in range(nq):
                            # first real tap, greater, NaN: a select, not a branch (see _max_table)
                            v = xs[j]
                            u = ys[j]
                            a = ars[j]
                            take = (a < 0) | (v > u) | (v != v)
                            ys[j] = v if take else u
                            ars[j] = base + j * sw if take else a
                continue
            for q in range(Q):
                s_lo, s_hi = wta[q], wtb[q]
                if mode == MAX:
                    best = neg_inf
                    arg = -1
                    for r in range(r_lo, r_hi):
                        hi = hlo[p] + r * dh
                        for s in range(s_lo, s_hi):
                            wi = wlo[q] + s * dw
                            v = xp[hi, wi]
                            # first real tap, greater, or a NaN (unless a NaN is kept already)
                            take = (arg < 0) | (v > best) | ((v != v) & ((not keep_first_nan) | (best == best)))
                            best = v if take else best
                            arg = hi * W + wi if take else arg
                    y[n, c, p, q] = best
                    am[n, c, p, q] = arg
                else:
                    acc = 0.0
                    for r in range(r_lo, r_hi):
                        hi = hlo[p] + r
                        for s in range(s_lo, s_hi):
                            acc += xp[hi, wlo[q] + s]
                    cnt = (r_hi - r_lo) * (s_hi - s_lo)
                    div = hcnt[p] * wcnt[q] if include_pad else cnt
                    y[n, c, p, q] = acc / div if div > 0 else 0.0


@njit(cache=True, nogil=True, parallel=True)
def _max_table(x3, y3, am3, tab):  # pragma: no cover - jitted
    """Regular max pooling with argmax, tap by tap over whole planes: x3 (N*C, H*W), y3 and am3
    (N*C, P*Q), tab (taps, P*Q) im2col's gather table (the input offset each tap of each window
    reads, -1 in the padding), whose rows come in scan order (r, then s).

    Same rule as MAX_ROWS: a window takes its first real tap, then any strictly greater value or
    any NaN (the last NaN wins, as in PyTorch); argmax stays -1 where no tap is real. One loop of
    P*Q values per tap instead of a short loop per window, which pays on small planes (the
    digits convnet's 8x8 and 4x4). The compare is a select, not a branch: on activations it has
    not seen before a branch goes the wrong way half the time.
    """
    RS, PQ = tab.shape
    neg_inf = y3.dtype.type(-np.inf)
    for task in prange(x3.shape[0]):
        xp = x3[task]
        yp = y3[task]
        ap = am3[task]
        for j in range(PQ):
            yp[j] = neg_inf
            ap[j] = -1
        for rs in range(RS):
            t = tab[rs]
            for j in range(PQ):
                k = t[j]
                inside = k >= 0
                v = xp[k if inside else 0]
                u = yp[j]
                a = ap[j]
                take = inside & ((a < 0) | (v > u) | (v != v))
                yp[j] = v if take else u
                ap[j] = k if take else a


@njit(cache=True, nogil=True, parallel=True)
def _max_2x2(x3, y3, am3, W, Q, has_am, parts):  # pragma: no cover - jitted
    """The 2x2, stride-2, unpadded max pool (LeNet's, VGG's, U-Net's): x3 (N*C, H*W), y3 and am3
    (N*C, P*Q) with 2P <= H and 2Q <= W, so every tap lies inside; argmax only when ``has_am``
    (else ``am3`` is a (0, 0) array). The planes are cut into ``parts`` contiguous ranges (one per
    thread), each run by ``_max_2x2_planes``: written inside the ``prange`` body, the same loops
    compiled into much slower code than in a function of their own (docs/kernels.md, Pooling, has
    the timings).
    """
    n = x3.shape[0]
    parts = min(n, parts)
    for part in prange(parts):
        lo = n * part // parts
        hi = n * (part + 1) // parts
        _max_2x2_planes(x3[lo:hi], y3[lo:hi], am3[lo:hi], W, Q, has_am)


@njit(cache=True, nogil=True)
def _max_2x2_planes(x3, y3, am3, W, Q, has_am):  # pragma: no cover - jitted
    """``_max_2x2`` on the planes of x3, one after another on the calling thread.

    First the values: a window's four taps read by arithmetic index and compared in scan order
    by the rule of the other forms (the first tap, then any strictly greater value or any NaN),
    each compare a select, which LLVM vectorises over the row. Then, for training, the row's
    argmax in a second loop over it (its taps still in cache): the first tap equal to the max,
    found by arithmetic on the three "not equal" bits, with no branch and no select; a NaN max (the last
    NaN tap wins, as in the reference) takes a branch that is almost never taken. Carrying the
    index through the first loop's selects instead made LLVM turn them into branches, which
    fresh activations mispredict half the time (docs/kernels.md, Pooling). Inference runs the same
    kernel (``has_am`` False, ``am3`` a (0, 0) array), so evaluating between training epochs
    compiles nothing new.
    """
    P = y3.shape[1] // Q if Q > 0 else 0
    # every index unsigned (no negative-index wraparound test per read, see docs/kernels.md), and
    # each variable one type: numba unifies int64 with uint64 as float64
    w = uint64(W)
    one = uint64(1)
    zero = uint64(0)
    for task in range(x3.shape[0]):
        xp = x3[task]
        yp = y3[task]
        for p in range(uint64(P)):
            r0 = uint64(2) * p * w
            o = p * uint64(Q)
            for q in range(uint64(Q)):
                i = r0 + uint64(2) * q
                a = xp[i]
                b = xp[i + one]
                c = xp[i + w]
                d = xp[i + w + one]
                best = a
                best = b if (b > best) | (b != b) else best
                best = c if (c > best) | (c != c) else best
                best = d if (d > best) | (d != d) else best
                yp[o + q] = best
            if has_am:
                # the row's argmax in a loop of its own, the row's taps still in cache
                ap = am3[task]
                for q in range(uint64(Q)):
                    i = r0 + uint64(2) * q
                    m = yp[o + q]
                    na = uint64(xp[i] != m)
                    nb = uint64(xp[i + one] != m)
                    nc = uint64(xp[i + w] != m)
                    # 0 if a is the max, else 1 if b is, else w if c is, else w + 1
                    t = na * (one + nb * (w - one + nc))
                    if m != m:
                        t = w + one if xp[i + w + one] != xp[i + w + one] else (
                            w if xp[i + w] != xp[i + w] else (one if xp[i + one] != xp[i + one] else zero))
                    ap[o + q] = i + t


@njit(cache=True, nogil=True, inline="always")
def _act(v, bias, has_b, relu, zero):  # pragma: no cover - jitted
    """The stem epilogue applied to a pooled value: v (+ bias) (then ReLU); ``zero`` in v's dtype."""
    if has_b:
        v += bias
    if relu and v < zero:
        v = zero
    return v


@njit(cache=True, nogil=True, inline="always")
def _window_max(t, nans, base, ta, tb, dw, counting, bias, has_b, relu):  # pragma: no cover - jitted
    """act(max of t over one window's inside taps + bias), NaN when ``counting`` finds a NaN tap."""
    best = t.dtype.type(-np.inf)
    zero = t.dtype.type(0)
    cnt = 0
    for s in range(ta, tb):
        i = base + s * dw
        v = t[i]
        best = v if v > best else best
        if counting:
            cnt += nans[i] != zero
    if cnt:
        return t.dtype.type(np.nan)
    return _act(best, bias, has_b, relu, zero)


@njit(cache=True, nogil=True)
def _maxpool_plane(xp, yp, hlo, hta, htb, dh, wlo, wta, wtb, dw, q3a, q3b, i3, st3, bias, has_b, relu,
                   counting, t, nans):  # pragma: no cover - jitted
    """One (H, W) plane of ``maxpool_values``. Returns True when ``counting`` is off and a tap
    was NaN or infinite (the caller then runs the plane again with ``counting``)."""
    H, W = xp.shape
    P, Q = yp.shape
    neg_inf = yp.dtype.type(-np.inf)
    zero = yp.dtype.type(0)
    fa = Q if counting else q3a  # the written-out columns [fa, fb); none while counting NaNs
    fb = Q if counting else q3b
    for w in range(W):
        nans[w] = zero  # without counting: v - v summed per column, 0 unless a NaN or inf went by
    for p in range(P):
        for w in range(W):
            t[w] = neg_inf
        for r in range(hta[p], htb[p]):
            xrow = xp[hlo[p] + r * dh]
            for w in range(W):
                v = xrow[w]
                cur = t[w]
                t[w] = v if v > cur else cur
            if counting:
                for w in range(W):
                    nans[w] += xrow[w] != xrow[w]
            else:
                for w in range(W):
                    nans[w] += xrow[w] - xrow[w]
        yrow = yp[p]
        # three loops rather than one with a range test per column (measured slower)
        for q in range(0, fa):
            yrow[q] = _window_max(t, nans, wlo[q], wta[q], wtb[q], dw, counting, bias, has_b, relu)
        for q3 in range(fa, fb):
            # the windows of three adjacent inside taps (a ResNet stem's whole interior): written
            # out, with an arithmetic index (not wlo[q3], a gather) and no per-window bounds
            i = i3 + (q3 - fa) * st3
            v0 = t[i]
            v1 = t[i + 1]
            v2 = t[i + 2]
            best = v0 if v0 > v1 else v1
            best = best if best > v2 else v2
            yrow[q3] = _act(best, bias, has_b, relu, zero)
        for q in range(fb, Q):
            yrow[q] = _window_max(t, nans, wlo[q], wta[q], wtb[q], dw, counting, bias, has_b, relu)
        if counting:
            for w in range(W):
                nans[w] = zero
    if counting:
        return False
    seen = zero
    for w in range(W):
        seen += nans[w]
    return seen != zero


@njit(cache=True, nogil=True, parallel=True)
def maxpool_values(x, y, hlo, hta, htb, dh, wlo, wta, wtb, dw, b, has_b, relu):  # pragma: no cover - jitted
    """Regular max pooling without argmax (inference), separably: rows first, then columns.

    Per output row, ``t`` = the elementwise max of the window's input rows that lie inside the
    image, then each output is the max of its window's inside columns of ``t``: the same set of
    real taps as ``_pool_fwd``, so the same value — NaN if any tap is NaN, else the largest real
    tap, -inf for a window of only padding. The compare is a plain select (``v > cur``, which
    LLVM vectorises over a contiguous row) that drops NaNs, so a NaN needs a count beside it.
    Counting is only done for a plane that needs it: the first pass sums ``v - v`` per column
    (0 for every finite tap, vectorised like the select), and a plane where that is not 0 (a
    NaN or an infinity went by) is pooled again with per-window NaN counts. (A separate scan of
    each plane for NaNs would cost about as much as the pool: integer counts of ``v != v`` stay
    scalar.)
    ``has_b``/``relu``: y = act(max + b[c]) as it is stored (the stem's epilogue, moved after
    the pool by monotonicity, see conv.conv2d_maxpool_fused).
    """
    N, C, H, W = x.shape
    Q = y.shape[3]
    zero = y.dtype.type(0)
    # [q3a, q3b): the columns whose window is exactly three adjacent taps, all inside
    q3a = Q
    q3b = Q
    if dw == 1:
        for q in range(Q):
            if wta[q] == 0 and wtb[q] == 3:
                if q3a == Q:
                    q3a = q
                q3b = q + 1
            elif q3a < Q:
                break
    i3 = wlo[q3a] if q3a < Q else 0
    st3 = wlo[1] - wlo[0] if Q > 1 else 1  # regular pooling: wlo[q] = q * stride - padding
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        bias = b[c] if has_b else zero
        t = np.empty(W, dtype=y.dtype)
        nans = np.empty(W, dtype=y.dtype)
        if _maxpool_plane(x[n, c], y[n, c], hlo, hta, htb, dh, wlo, wta, wtb, dw, q3a, q3b, i3, st3, bias, has_b,
                          relu, False, t, nans):
            _maxpool_plane(x[n, c], y[n, c], hlo, hta, htb, dh, wlo, wta, wtb, dw, q3a, q3b, i3, st3, bias, has_b,
                           relu, True, t, nans)


@njit(cache=True, nogil=True, parallel=True)
def _max_bwd(dyf, amf, dxf, HW, PQ):  # pragma: no cover - jitted
    """Max pooling's backward on flat arrays: dx plane t = 0, then dx[t*HW + argmax] += dy for
    each output of plane t (an argmax of -1 routes nowhere). Returns how many argmax entries lay
    outside [-1, HW): the caller rejects those (they were skipped here).

    One task per (n, c) plane, reading only that plane's outputs: no races, fixed order. Indexed
    with unsigned integers, so numba drops its wrap-around tests (4-D indexing keeps them).
    """
    zero = dxf.dtype.type(0)
    planes = dxf.size // HW if HW > 0 else 0
    bad = 0
    for task in prange(planes):
        xb = uint64(task * HW)
        ob = uint64(task * PQ)
        for k in range(uint64(HW)):
            dxf[xb + k] = zero
        for j in range(uint64(PQ)):
            idx = amf[ob + j]
            if idx >= 0 and idx < HW:
                dxf[xb + uint64(idx)] += dyf[ob + j]
            elif idx != -1:
                bad += 1
    return bad


@njit(cache=True, nogil=True, parallel=True)
def _avg_bwd(dy, dx, hlo, hcnt, wlo, wcnt, include_pad):  # pragma: no cover - jitted
    """Average pooling's backward: each dy spread evenly over its (stride-1) window.

    One task per (n, c) plane of dx, reading only that plane's outputs: no races, fixed order.
    """
    N, C, H, W = dx.shape
    P = dy.shape[2]
    Q = dy.shape[3]
    zero = dx.dtype.type(0)
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = zero
        for p in range(P):
            for q in range(Q):
                h0 = hlo[p]
                w0 = wlo[q]
                r_lo = max(0, -h0)
                r_hi = min(hcnt[p], H - h0)
                s_lo = max(0, -w0)
                s_hi = min(wcnt[q], W - w0)
                if r_hi <= r_lo or s_hi <= s_lo:
                    continue
                div = hcnt[p] * wcnt[q] if include_pad else (r_hi - r_lo) * (s_hi - s_lo)
                g = dy[n, c, p, q] / div
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        dx[n, c, h0 + r, w0 + s] += g


class Windows(NamedTuple):
    """The pooling windows along one axis, one entry per output row (or column): output i reads
    input positions lo[i] + t*step for taps t < count[i], of which taps in
    [inside_lo[i], inside_hi[i]) lie inside the input. Passed to the kernels field by field."""

    lo: np.ndarray
    count: np.ndarray
    inside_lo: np.ndarray
    inside_hi: np.ndarray


def _inside(lo, cnt, step, L):
    """Per window, the taps t in [a, b) of lo + t*step (t < cnt) that land inside [0, L)."""
    a = np.where(lo >= 0, 0, (-lo + step - 1) // step)
    last = L - 1 - lo
    b = np.where(last < 0, 0, np.minimum(cnt, last // step + 1))
    return a, np.maximum(a, b)


def regular_windows(out, k, stride, pad, dil, L) -> Windows:
    """The windows of regular pooling along one axis: ``out`` outputs, ``k`` taps ``dil`` apart,
    starting at i*stride - pad, over an input of length ``L``."""
    lo = np.arange(out, dtype=np.int64) * stride - pad
    cnt = np.full(out, k, dtype=np.int64)
    return Windows(lo, cnt, *_inside(lo, cnt, dil, L))


def _avg_windows(out, k, stride, pad, L) -> Windows:
    """``regular_windows`` for average pooling, with each tap count clipped to the padded input
    [-pad, L + pad): the divisor PyTorch uses with count_include_pad. Only a ceil_mode window
    hanging past the padding is clipped; every other window keeps its k taps."""
    w = regular_windows(out, k, stride, pad, 1, L)
    return w._replace(count=np.minimum(w.count, L + pad - w.lo))


def _adaptive(L, out) -> Windows:
    """PyTorch's adaptive bins [floor(i*L/O), ceil((i+1)*L/O)) along one axis (all taps inside)."""
    i = np.arange(out, dtype=np.int64)
    lo = (i * L) // out
    cnt = -((-(i + 1) * L) // out) - lo
    return Windows(lo, cnt, np.zeros(out, dtype=np.int64), cnt)


_NO_ARGMAX = np.empty((0, 0, 0, 0), dtype=np.int64)
_NO_ARGMAX_2D = np.empty((0, 0), dtype=np.int64)


def _as4d(x, where):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return prepare(x, compute_dtype(x))


def window_out(shape, kernel_size, stride, padding, dilation, where, ceil_mode=False):
    """((R, S), stride, padding, dilation, P, Q) of pooling an input of ``shape`` (N, C, H, W), checked."""
    R, S = pair(kernel_size, "kernel_size")
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if min(R, S, *stride, *dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{where}: kernel_size, stride, dilation must be >= 1 and padding >= 0")
    P, Q = conv_output_size(shape[2], shape[3], R, S, stride, padding, dilation, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(f"{where}: input shape {tuple(shape)} is smaller than the pooling window {(R, S)}")
    return (R, S), stride, padding, dilation, P, Q


def _check_dy(dy, shape, where):
    dy = np.asarray(dy)
    if dy.ndim != 4 or tuple(dy.shape[:2]) != tuple(shape[:2]):
        raise ValueError(f"{where}: dy shape {tuple(dy.shape)} does not fit input shape {tuple(shape)}")
    return prepare(dy, compute_dtype(dy))


def maxpool2d_forward(x, kernel_size, stride, padding, dilation=(1, 1), need_argmax=True, ceil_mode=False):
    """(y, argmax): max over each window (padding never wins); argmax = h*W + w of the winner, -1 if none.

    ``need_argmax=False`` (inference: no backward will run) returns ``(y, None)`` with the same y,
    and skips computing and writing the int64 argmax, except on the small planes the gather table
    takes (there it goes to a scratch buffer: one kernel for both). ``ceil_mode`` rounds the
    output size up.
    """
    x = _as4d(x, "maxpool2d")
    (R, S), stride, padding, dilation, P, Q = window_out(x.shape, kernel_size, stride, padding, dilation, "maxpool2d",
                                                         ceil_mode)
    N, C = x.shape[:2]
    y = _memory.empty((N, C, P, Q), x.dtype)
    H, W = x.shape[2:]
    if (TWO_BY_TWO and (R, S) == (2, 2) and stride == (2, 2) and padding == (0, 0) and dilation == (1, 1)
            and 2 * P <= H and 2 * Q <= W):
        # the commonest pool of all (LeNet, VGG, U-Net): every tap inside, read by index; with or
        # without argmax one kernel, so inference between training epochs compiles nothing new
        am = _memory.empty((N, C, P, Q), np.int64) if need_argmax else None
        _threads.run(_max_2x2, x.reshape(N * C, H * W), y.reshape(N * C, P * Q),
                     _NO_ARGMAX_2D if am is None else am.reshape(N * C, P * Q), W, Q, am is not None,
                     numba.get_num_threads(), work=y.size * 4)
        return y, am
    if Q < ROWS_MIN_Q and R * S * P * Q <= TABLE_MAX and H * W <= PLANE_MAX:
        # small planes go through the table with or without argmax: inference on them (a
        # network's evaluation between training epochs) then runs the kernel training compiled
        # instead of compiling maxpool_values too (about 5 s on a cold cache, docs/kernels.md
        # "Compile time"); the y is the same, and the argmax of a few small planes costs little
        am = _memory.empty((N, C, P, Q), np.int64) if need_argmax else _threads.workspace("pool.argmax", (N, C, P, Q),
                                                                                          np.int64)
        tab = tap_table(H, W, R, S, stride, padding, dilation, P, Q, tag="pool.table")
        _threads.run(_max_table, x.reshape(N * C, H * W), y.reshape(N * C, P * Q), am.reshape(N * C, P * Q), tab,
                     work=y.size * R * S)
        return y, (am if need_argmax else None)
    rows = regular_windows(P, R, stride[0], padding[0], dilation[0], H)
    cols = regular_windows(Q, S, stride[1], padding[1], dilation[1], W)
    if not need_argmax:
        _threads.run(maxpool_values, x, y, rows.lo, rows.inside_lo, rows.inside_hi, dilation[0],
                     cols.lo, cols.inside_lo, cols.inside_hi, dilation[1], empty_like_ndim(1, x.dtype), False, False)
        return y, None
    am = _memory.empty((N, C, P, Q), np.int64)
    mode = MAX_ROWS if Q >= ROWS_MIN_Q else MAX
    _threads.run(_pool_fwd, mode, x, y, am, *rows, dilation[0], *cols, dilation[1], stride[1], False, True,
                 weight=_threads.HEAVY)
    return y, am


def maxpool2d_backward(dy, argmax, x_shape):
    """Route each gradient to its window's winner (also adaptive max pooling's backward); an argmax
    of -1 (a window of only padding) routes nowhere."""
    x_shape = tuple(int(s) for s in x_shape)
    dy = _check_dy(dy, x_shape, "maxpool2d_backward")
    am = np.asarray(argmax)
    if am.shape != dy.shape:
        raise ValueError(f"maxpool2d_backward: argmax shape {am.shape} differs from dy shape {tuple(dy.shape)}")
    am = prepare(am, np.dtype(np.int64))
    dx = _memory.empty(x_shape, dy.dtype)
    HW = x_shape[2] * x_shape[3]
    # the kernel skips and counts indices outside the plane (checking first cost two passes)
    if dx.size and _threads.run(_max_bwd, dy.reshape(-1), am.reshape(-1), dx.reshape(-1), HW, dy.shape[2] * dy.shape[3],
                                work=dx.size + dy.size):
        raise ValueError(f"maxpool2d_backward: argmax holds indices outside the {x_shape[2]}x{x_shape[3]} input plane")
    return dx


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    """Mean of each window; ``count_include_pad`` divides by the window within the padded input
    (the full window unless ceil_mode lets it hang past the padding), else by its inside part."""
    x = _as4d(x, "avgpool2d")
    (R, S), stride, padding, _, P, Q = window_out(x.shape, kernel_size, stride, padding, 1, "avgpool2d", ceil_mode)
    y = _memory.empty(x.shape[:2] + (P, Q), x.dtype)
    rows = _avg_windows(P, R, stride[0], padding[0], x.shape[2])
    cols = _avg_windows(Q, S, stride[1], padding[1], x.shape[3])
    _threads.run(_pool_fwd, AVG, x, y, _NO_ARGMAX, *rows, 1, *cols, 1, stride[1], False, bool(count_include_pad))
    return y


def avgpool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad=True, ceil_mode=False):
    """Spread each gradient evenly over its window (divided as in the forward)."""
    x_shape = tuple(int(s) for s in x_shape)
    dy = _check_dy(dy, x_shape, "avgpool2d_backward")
    (R, S), stride, padding, _, P, Q = window_out(x_shape, kernel_size, stride, padding, 1, "avgpool2d_backward",
                                                  ceil_mode)
    if dy.shape[2:] != (P, Q):
        raise ValueError(f"avgpool2d_backward: dy shape {tuple(dy.shape)} does not fit input shape {x_shape}")
    rows = _avg_windows(P, R, stride[0], padding[0], x_shape[2])
    cols = _avg_windows(Q, S, stride[1], padding[1], x_shape[3])
    dx = _memory.empty(x_shape, dy.dtype)
    _threads.run(_avg_bwd, dy, dx, rows.lo, rows.count, cols.lo, cols.count, bool(count_include_pad))
    return dx


def _out_size(output_size):
    oh, ow = pair(output_size, "output_size")
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive pooling: output_size must be positive, got {(oh, ow)}")
    return oh, ow


def adaptive_avgpool2d_forward(x, output_size):
    """Average into an OH x OW grid of (possibly overlapping) bins."""
    x = _as4d(x, "adaptive_avgpool2d")
    OH, OW = _out_size(output_size)
    y = _memory.empty(x.shape[:2] + (OH, OW), x.dtype)
    rows, cols = _adaptive(x.shape[2], OH), _adaptive(x.shape[3], OW)
    _threads.run(_pool_fwd, AVG, x, y, _NO_ARGMAX, *rows, 1, *cols, 1, 1, True, True)
    return y


def adaptive_avgpool2d_backward(dy, x_shape):
    """Each bin's gradient divided evenly over the bin's inputs."""
    x_shape = tuple(int(s) for s in x_shape)
    dy = _check_dy(dy, x_shape, "adaptive_avgpool2d_backward")
    rows = _adaptive(x_shape[2], dy.shape[2])
    cols = _adaptive(x_shape[3], dy.shape[3])
    dx = _memory.empty(x_shape, dy.dtype)
    _threads.run(_avg_bwd, dy, dx, rows.lo, rows.count, cols.lo, cols.count, True)
    return dx


def adaptive_maxpool2d_forward(x, output_size):
    """(y, argmax) over adaptive bins; backward is ``maxpool2d_backward``."""
    x = _as4d(x, "adaptive_maxpool2d")
    OH, OW = _out_size(output_size)
    y = _memory.empty(x.shape[:2] + (OH, OW), x.dtype)
    am = _memory.empty(x.shape[:2] + (OH, OW), np.int64)
    rows, cols = _adaptive(x.shape[2], OH), _adaptive(x.shape[3], OW)
    _threads.run(_pool_fwd, MAX, x, y, am, *rows, 1, *cols, 1, 1, True, True, weight=_threads.HEAVY)
    return y, am


@njit(cache=True, nogil=True, parallel=True)
def _unpool_fwd(x2, idx2, y2):  # pragma: no cover - jitted
    """y2 (planes, OH*OW) = 0, then y2[t, idx2[t, j]] = x2[t, j] in order j (the last of a repeated
    index stays, as in the reference and PyTorch). Returns how many indices lay outside the plane
    (those were skipped; the caller raises)."""
    zero = y2.dtype.type(0)
    OHW = y2.shape[1]
    bad = 0
    for t in prange(x2.shape[0]):
        yp = y2[t]
        for k in range(OHW):
            yp[k] = zero
        for j in range(x2.shape[1]):
            i = idx2[t, j]
            if i >= 0 and i < OHW:
                yp[i] = x2[t, j]
            else:
                bad += 1
    return bad


@njit(cache=True, nogil=True, parallel=True)
def _unpool_bwd(dy2, idx2, dx2):  # pragma: no cover - jitted
    """dx2[t, j] = dy2[t, idx2[t, j]] (indices checked by the forward's caller)."""
    for t in prange(dx2.shape[0]):
        for j in range(dx2.shape[1]):
            dx2[t, j] = dy2[t, idx2[t, j]]


def _indices(indices, shape, where):
    am = np.asarray(indices)
    if am.shape != tuple(shape):
        raise ValueError(f"{where}: indices shape {am.shape} differs from input shape {tuple(shape)}")
    return prepare(am, np.dtype(np.int64))


def maxunpool2d_forward(x, indices, output_size):
    """Zeros of (N, C, *output_size) with each x value at its flat index h*W + w in its plane."""
    x = _as4d(x, "maxunpool2d")
    am = _indices(indices, x.shape, "maxunpool2d")
    OH, OW = pair(output_size, "output_size")
    N, C = x.shape[:2]
    y = _memory.empty((N, C, OH, OW), x.dtype)
    if y.size and _threads.run(_unpool_fwd, x.reshape(N * C, -1), am.reshape(N * C, -1), y.reshape(N * C, -1),
                               work=y.size + x.size):
        raise ValueError(f"maxunpool2d: indices hold positions outside the {OH}x{OW} output plane")
    return y


def maxunpool2d_backward(dy, indices):
    """dx[n, c, i, j] = dy[n, c].flat[indices[n, c, i, j]]."""
    dy = _as4d(dy, "maxunpool2d_backward")
    am = np.asarray(indices)
    if am.ndim != 4 or am.shape[:2] != dy.shape[:2]:
        raise ValueError(f"maxunpool2d_backward: indices shape {am.shape} does not fit dy shape {tuple(dy.shape)}")
    am = prepare(am, np.dtype(np.int64))
    N, C = dy.shape[:2]
    OHW = dy.shape[2] * dy.shape[3]
    if am.size and (am.min() < 0 or am.max() >= OHW):
        raise ValueError(f"maxunpool2d_backward: indices hold positions outside the "
                         f"{dy.shape[2]}x{dy.shape[3]} plane of dy")
    dx = _memory.empty(am.shape, dy.dtype)
    _threads.run(_unpool_bwd, dy.reshape(N * C, OHW), am.reshape(N * C, -1), dx.reshape(N * C, -1),
                 work=dx.size * 2)
    return dx
