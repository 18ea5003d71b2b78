"""2-D convolution on the CPU: named forward variants, a selection rule, and the backward pass.

Every variant has the ``conv2d_forward`` signature plus the fused epilogue's ``residual`` and
``relu`` keywords and ``out`` (an array to write y into), so the benchmark harness can time each
one on the same input::

    from minicnn.backends.numba.conv import VARIANTS
    y = VARIANTS["winograd_f2x2_3x3"](x, w, b, (1, 1), (1, 1), (1, 1), 1)

``im2col_gemm``        unfold a chunk of images into columns (C*R*S, n*P*Q), one GEMM per group
                       (OpenBLAS, or the register blocks of ``_tiles`` reading the columns in
                       place where ``by_tiles`` takes the shape), then one pass that writes y
                       with bias/residual/ReLU applied; or,
                       where ``conv_images.applies`` (ungrouped, small per-image columns, a
                       batch for every thread, no residual), each thread unfolds and multiplies
                       its own images one at a time in cache (``conv_images``).
``pointwise_gemm``     1x1, no padding: the input already *is* the column matrix, so stride-1
                       layers skip the unfold and the GEMM writes straight into y.
``direct``             the seven loops, parallel over (image, out channel), epilogue fused; the
                       plain baseline (never picked by the rule: im2col + GEMM measured faster
                       even for depthwise layers, where each GEMM is a single row).
``winograd_f2x2_3x3``  3x3 stride 1: 2x2 outputs per 4x4 tile with 16 instead of 36 multiplies.
``winograd_f4x4_3x3``  3x3 stride 1: 4x4 outputs per 6x6 tile with 36 instead of 144 multiplies.
``winograd_f2x2_5x5``  5x5 stride 1: 2x2 outputs per 6x6 tile with 36 instead of 100 multiplies
                       (the Fashion-MNIST nets' 32->64 layer), its transforms channels-last.

``choose_variant`` holds the rule ``conv2d_forward`` follows; docs/kernels.md ("Selection rule")
gives the why and the measurements behind it. ``conv2d_maxpool_fused`` is the im2col variant with
a max pool read from its cached output (a ResNet stem).

Backward, two forms of each gradient: by im2col, dW = dY . cols^T summed over the batch (one GEMM
per chunk, or its transpose cols . dY^T where that is the faster shape for OpenBLAS; or per image
on each thread where ``conv_images.applies``, both gradients from one unfold) and
dX = col2im(W^T . dY) (that product, like the forward's, by the register blocks where
``by_tiles`` takes it); or, for the 3x3 and 5x5 stride-1 layers the rule sends to
Winograd, dX as a Winograd forward convolution of dY and dW by Winograd's transposed form
(``winograd.backward_dw``). db is a per-channel reduction.

Checked by ``python -m pytest -q tests/test_numba_backend.py -k "conv or winograd or selection"``
(every variant and both backward forms against the numpy reference),
``python -m pytest -q tests/test_conv_images.py`` (the per-image path) and
``python -m pytest -q tests/test_conformance.py -k "numba and conv"``; timed by
``python -m benchmarks.variant_sweep`` (every 3x3 variant forced on ResNet-18's layers, forward,
dX and dW, with the rule's pick; ``--kernel 5`` for the 5x5 one), ``minicnn bench ops`` (every variant on every ResNet-18 conv)
and ``python -m benchmarks.tiles_ab --nchw`` (the im2col products, register blocks against OpenBLAS).
"""
from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _filters, _memory, _threads, _tiles, conv_images, winograd
from .im2col import col2im, geometry, im2col, q_range
from ._util import (Rows, check_conv, compute_dtype, empty_like_ndim, nkl, pair, prepare, run_epilogue,
                    sum_over_n_l)

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_fused_forward"]

# Column budget per chunk: enough columns that BLAS runs near peak, few enough bytes that the
# unfolded chunk stays a bounded, reusable workspace (Winograd's chunks have their own budget,
# winograd.TILES_CHUNK_BYTES).
TARGET_COLUMNS = 2048
COLUMNS_CHUNK_BYTES = 32 * 1024 * 1024
# ... and at least as many images as fit this many bytes of columns: a layer with few values per
# column (the digits convnet's first, 9) then unfolds its whole batch for one product instead of
# making several calls whose fixed costs outweigh their work
SMALL_CHUNK_BYTES = 256 * 1024


# --------------------------------------------------------------------------------------------
# Kernels


@njit(cache=True, nogil=True, parallel=True)
def _direct(x, w, y3, b, has_b, res, has_res, relu, sh, sw, ph, pw, dh, dw, G, P, Q):  # pragma: no cover
    """y[n, k] = b[k] + sum_{c,r,s} w[k,c,r,s] * shifted input plane, one task per (n, k).

    The inner loop runs along an output row with a fixed weight (vectorised) while the whole
    output plane stays in cache for all C/groups*R*S taps, and the epilogue runs on the plane
    before the task ends (no second pass over y).
    """
    N = x.shape[0]
    H = x.shape[2]
    W = x.shape[3]
    K = w.shape[0]
    Cg = w.shape[1]
    R = w.shape[2]
    S = w.shape[3]
    Kg = K // G
    zero = y3.dtype.type(0)
    for task in prange(N * K):
        n = task // K
        k = task - n * K
        g = k // Kg
        yk = y3[n, k]
        init = b[k] if has_b else zero
        for j in range(P * Q):
            yk[j] = init
        for c in range(Cg):
            xc = x[n, g * Cg + c]
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    off_w = s * dw - pw
                    q_lo, q_hi = q_range(Q, W, sw, off_w)
                    nq = q_hi - q_lo
                    if nq <= 0:
                        continue
                    for p in range(P):
                        hi = p * sh - ph + r * dh
                        if hi < 0 or hi >= H:
                            continue
                        # 0-based loops over views: no wrap-around checks, so LLVM vectorises
                        yr = yk[p * Q + q_lo:p * Q + q_hi]
                        xr = xc[hi, q_lo * sw + off_w:(q_hi - 1) * sw + off_w + 1:sw]
                        for j in range(nq):
                            yr[j] += wv * xr[j]
        if has_res or relu:
            rk = res[n, k] if has_res else yk
            for j in range(P * Q):
                v = yk[j]
                if has_res:
                    v += rk[j]
                if relu and v < 0:
                    v = zero
                yk[j] = v


# --------------------------------------------------------------------------------------------
# Forward variants


class PreparedConv(NamedTuple):
    """A forward convolution's arguments, checked and brought to one float dtype and C order."""

    x: np.ndarray                # (N, C, H, W)
    w: np.ndarray                # (K, C/groups, R, S)
    b: np.ndarray | None         # (K,) or None
    res3: np.ndarray | None      # the residual as (N, K, P*Q), or None
    y: np.ndarray | None         # the output (N, K, P, Q) to fill, or None (with_output=False)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    P: int                       # output height
    Q: int                       # output width
    wkey: np.ndarray | None      # the caller's filter when it is constant (the key for cached transforms)


def _prepare_forward(x, w, b, stride, padding, dilation, groups, residual, where, out=None,
                     with_output=True) -> PreparedConv:
    """Check arguments, bring arrays to one float dtype and C order, and provide the output.

    A constant filter (see ``_filters``) is not copied per call: it is used as it is when its
    dtype and layout already fit, else its converted copy is cached. ``out``, when given, must be
    a C-contiguous writeable array of the output's shape and dtype that overlaps neither x nor
    the residual; ``with_output=False`` provides none (y is None: the caller stores no whole
    output).
    """
    x, w = np.asarray(x), np.asarray(w)
    b = None if b is None else np.asarray(b)
    stride, padding, dilation, groups, P, Q = check_conv(x, w, b, stride, padding, dilation, groups, where)
    dt = compute_dtype(x, w, b)
    wkey = w if _filters.is_constant(w) else None
    if wkey is None:
        w = prepare(w, dt)
    elif w.dtype != dt or not w.flags.c_contiguous:
        w = _filters.derived(wkey, ("prepared", dt.str), lambda: np.ascontiguousarray(wkey, dtype=dt))
    x, b = prepare(x, dt), prepare(b, dt)
    N, K = x.shape[0], w.shape[0]
    res3 = None
    if residual is not None:
        residual = np.asarray(residual)
        if tuple(residual.shape) != (N, K, P, Q):
            raise ValueError(
                f"{where}: residual shape {tuple(residual.shape)} does not match the output shape {(N, K, P, Q)}"
            )
        res3 = prepare(residual, dt).reshape(N, K, P * Q)
    if not with_output:
        y = None
    elif out is None:
        y = _memory.empty((N, K, P, Q), dt)
    else:
        y = _check_out(out, (N, K, P, Q), dt, x, res3, where)
    return PreparedConv(x, w, b, res3, y, stride, padding, dilation, groups, P, Q, wkey)


def _check_out(out, shape, dt, x, res3, where):
    """``out`` if it can receive the result, else a ValueError that says why."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{where}: out must be a numpy array, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dt:
        raise ValueError(f"{where}: out has shape {tuple(out.shape)} and dtype {out.dtype}, "
                         f"the result has shape {shape} and dtype {dt}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{where}: out must be C-contiguous and writeable")
    # the variants read x (and the residual) after writing parts of y: an overlap would corrupt them
    if np.may_share_memory(out, x) or (res3 is not None and np.may_share_memory(out, res3)):
        raise ValueError(f"{where}: out must not overlap the input or the residual")
    return out


def chunk_images(N, per_image_bytes, columns_per_image):
    """How many images one GEMM covers: enough for TARGET_COLUMNS columns (or SMALL_CHUNK_BYTES),
    within COLUMNS_CHUNK_BYTES."""
    want = max(-(-TARGET_COLUMNS // max(columns_per_image, 1)), SMALL_CHUNK_BYTES // max(per_image_bytes, 1))
    fit = COLUMNS_CHUNK_BYTES // max(per_image_bytes, 1)
    return max(1, min(N, want, fit))


# The register-block product (``_tiles``) reads a conv's unfolded columns (or packed dY) in place,
# one row of B per step of the inner dimension. Against OpenBLAS it wins where that dimension is
# short and the columns fill several of its panels (the digits convnet's second layer, ResNet's
# stem, 1x1 layers and dX of its stride-2 layers), and loses where the inner dimension is long
# (B's rows far apart), only a few values (the accumulators are set up and stored for little
# work) or the columns fill only a panel or two (docs/kernels.md, "NCHW convs' products in
# registers", has the table).
TILES_MIN_INNER = 16
TILES_MAX_INNER = 256
TILES_MIN_PANELS = 4


def by_tiles(inner, columns, dtype) -> bool:
    """Whether ``_product`` gives a one-group product with this inner dimension and this many
    columns to the register blocks."""
    return (_tiles.FASTER_THAN_BLAS and TILES_MIN_INNER <= inner <= TILES_MAX_INNER
            and columns >= TILES_MIN_PANELS * _tiles.tile_cols(dtype))


def _product(a, b, out):
    """out = a . b for the (G, rows, inner) stacks of a conv's products whose ``b`` is made for this
    one product (unfolded columns, packed dY): by ``_tiles`` where there is one group and
    ``by_tiles`` takes the shape, else by OpenBLAS (``_threads.matmul``). ``a`` may be a
    transposed view (the filter in the backward): the register blocks then read a C-contiguous
    copy of it in a workspace."""
    G, inner, N = b.shape
    if G == 1 and by_tiles(inner, N, b.dtype) and b.flags.c_contiguous and out.flags.c_contiguous:
        a2 = a[0]
        if not a2.flags.c_contiguous:
            a2 = _threads.workspace("conv.a", a2.shape, a2.dtype)
            a2[...] = a[0]
        return _tiles.matmul(a2, b[0], out[0])
    return _threads.matmul(a, b, out)


def _gemm_forward(p: PreparedConv, relu):
    """The im2col + GEMM forward on prepared arrays (shared by im2col_gemm and pointwise_gemm)."""
    x, w, b, res3, y = p.x, p.w, p.b, p.res3, p.y
    stride, padding, dilation, groups, P, Q = p.stride, p.padding, p.dilation, p.groups, p.P, p.Q
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    G, Kg, CRSg, PQ = groups, K // groups, Cg * R * S, P * Q
    dt = x.dtype
    y3 = y.reshape(N, K, PQ)
    res = None if res3 is None else res3.reshape(-1)
    wg = w.reshape(G, Kg, CRSg)
    g = geometry(R, S, stride, padding, dilation, P, Q)
    direct_cols = R == 1 and S == 1 and stride == (1, 1) and padding == (0, 0)
    if res3 is None and not direct_cols and conv_images.applies(x.shape, w.shape, G, P, Q, dt):
        # small per-image columns and a batch to share: each thread unfolds and multiplies its own images
        return conv_images.forward_images(x, w, b, y, stride, padding, dilation, relu)
    nc = chunk_images(N, C * R * S * PQ * dt.itemsize, PQ)
    needs_epilogue = b is not None or res3 is not None or relu
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        if m == 1 and direct_cols:
            cols = x[n0].reshape(C, PQ)  # a 1x1 stride-1 layer reads its input as the column matrix
        else:
            cols = _threads.workspace("conv.cols", (C * R * S, m * PQ), dt)
            im2col(x, n0, m, cols, g)
        if m == 1:
            # a single image's (K, P*Q) result is already y's layout: GEMM straight into it
            _product(wg, cols.reshape(G, CRSg, PQ), y3[n0].reshape(G, Kg, PQ))
            if needs_epilogue:
                rows = nkl(y3, n0)
                run_epilogue(rows, rows, 1, K, PQ, b=b, res=res, relu=relu)
        else:
            out = _threads.workspace("conv.gemm", (K, m * PQ), dt)
            _product(wg, cols.reshape(G, CRSg, m * PQ), out.reshape(G, Kg, m * PQ))
            # the write-back from (K, m*P*Q) to y's (m, K, P*Q) carries the epilogue for free
            run_epilogue(Rows(out.reshape(-1), 0, PQ, m * PQ), nkl(y3, n0), m, K, PQ, b=b, res=res, relu=relu)
    return y


def im2col_gemm(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """Convolution as GEMM over unfolded columns; any stride, padding, dilation and groups."""
    p = _prepare_forward(x, w, b, stride, padding, dilation, groups, residual, "conv2d[im2col_gemm]", out)
    return _gemm_forward(p, relu)


def pointwise_gemm(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """1x1 convolution without padding: y[n] = W . x[n] (strided layers read every s-th pixel)."""
    p = _prepare_forward(x, w, b, stride, padding, dilation, groups, residual, "conv2d[pointwise_gemm]", out)
    x, w, b, res3, y, stride, padding = p.x, p.w, p.b, p.res3, p.y, p.stride, p.padding
    if w.shape[2:] != (1, 1) or padding != (0, 0):
        raise ValueError(
            f"conv2d[pointwise_gemm]: needs a 1x1 kernel without padding, got weight {tuple(w.shape)} padding {padding}"
        )
    N, C, H, W = x.shape
    K, G = w.shape[0], p.groups
    if stride == (1, 1) and H * W >= TARGET_COLUMNS // 4:
        # big planes: one batched GEMM for the whole batch, written straight into y
        HW = H * W
        _threads.matmul(w.reshape(G, K // G, C // G), x.reshape(N, G, C // G, HW), y.reshape(N, G, K // G, HW))
        if b is not None or res3 is not None or relu:
            rows = nkl(y)
            run_epilogue(rows, rows, N, K, HW, b=b, res=None if res3 is None else res3.reshape(-1), relu=relu)
        return y
    # small planes or a stride: gather a chunk of images into one wide GEMM instead
    return _gemm_forward(p, relu)


def direct(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """Direct convolution, one parallel task per (image, out channel); any shape."""
    p = _prepare_forward(x, w, b, stride, padding, dilation, groups, residual, "conv2d[direct]", out)
    x, b, res3, y = p.x, p.b, p.res3, p.y
    # the kernel is compiled for writeable arrays only (one specialisation per dtype); the
    # baseline variant copies a read-only filter rather than compiling a second one
    w = prepare(p.w, p.w.dtype)
    N, K = y.shape[:2]
    dt = x.dtype
    _threads.run(
        _direct, x, w, y.reshape(N, K, p.P * p.Q),
        b if b is not None else empty_like_ndim(1, dt), b is not None,
        res3 if res3 is not None else empty_like_ndim(3, dt), res3 is not None, bool(relu),
        p.stride[0], p.stride[1], p.padding[0], p.padding[1], p.dilation[0], p.dilation[1], p.groups, p.P, p.Q,
    )
    return y


def _winograd(tile, r):
    name = f"winograd_f{tile}x{tile}_{r}x{r}"

    def variant(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
        where = f"conv2d[{name}]"
        p = _prepare_forward(x, w, b, stride, padding, dilation, groups, residual, where, out)
        w = p.w
        if w.shape[2:] != (r, r) or p.stride != (1, 1) or p.dilation != (1, 1) or p.groups != 1:
            raise ValueError(
                f"{where}: needs a {r}x{r} kernel, stride 1, dilation 1, groups 1; got weight {tuple(w.shape)}, "
                f"stride {p.stride}, dilation {p.dilation}, groups {p.groups}"
            )
        if p.wkey is None:
            U = winograd.transform_filters(w, tile)
        else:  # a constant filter: its transform is computed once and kept while it lives
            U = _filters.derived(p.wkey, ("winograd", tile, w.dtype.str),
                                 lambda: winograd.transform_filters(w, tile, fresh=True))
        return winograd.forward(p.x, U, p.b, p.res3, p.y, p.padding, tile, r, relu)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = (
        f"Winograd F({tile}x{tile}, {r}x{r}): {r}x{r}, stride 1, dilation 1, groups 1 only (any padding). "
        "See minicnn.backends.numba.winograd."
    )
    return variant


winograd_f2x2_3x3 = _winograd(2, 3)
winograd_f4x4_3x3 = _winograd(4, 3)
winograd_f2x2_5x5 = _winograd(2, 5)

VARIANTS = {
    "im2col_gemm": im2col_gemm,
    "pointwise_gemm": pointwise_gemm,
    "direct": direct,
    "winograd_f2x2_3x3": winograd_f2x2_3x3,
    "winograd_f4x4_3x3": winograd_f4x4_3x3,
    "winograd_f2x2_5x5": winograd_f2x2_5x5,
}
# (tile, kernel size) of each Winograd variant
WINOGRAD_SHAPES = {"winograd_f2x2_3x3": (2, 3), "winograd_f4x4_3x3": (4, 3), "winograd_f2x2_5x5": (2, 5)}


# --------------------------------------------------------------------------------------------
# Selection

# Winograd pays once the batch has enough output tiles to amortise transforming the filter (9
# values per (k, c) pair grow to 16 or 36, rebuilt every call unless the filter is constant) and to
# keep its 16 or 36 GEMMs wide, and when the layer has enough input channels for those GEMMs to
# dominate the data transforms. A tile count that does not divide the output ("ragged") computes
# outputs that are thrown away: 14x14 in 4x4 tiles is 16x16, 23% waste, so F(4x4) needs more
# tiles there. The floors below are where each variant overtook the others on ResNet-18's layers
# at batch 1, 8 and 16 and on the digits convnet, every variant timed side by side
# (``python -m benchmarks.variant_sweep``; docs/kernels.md, "Selection rule", has the tables).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_F4_MIN_TILES = 160           # writeable filter, tiles divide the output
WINOGRAD_F4_MIN_TILES_RAGGED = 1024   # writeable filter, ragged tiles
WINOGRAD_F2_MIN_TILES = 320           # writeable filter
WINOGRAD_F4_MIN_TILES_CONSTANT = 16   # constant filter, tiles divide the output (else F(2x2))
WINOGRAD_F2_MIN_TILES_CONSTANT = 32   # constant filter
# F(4x4) only up to this many input channels: its float32 error is 10-40x GEMM's and could grow
# with the reduction over C; up to C=512 it stays within the 1.5e-5 per-layer bound that
# docs/kernels.md ("Winograd accuracy, measured") sets and measures.
WINOGRAD_F4_MAX_CHANNELS = 512
# F(2x2, 5x5) (the Fashion-MNIST nets' 32->64 layer): 36 instead of 100 multiplies per 2x2 outputs
WINOGRAD_5X5_MIN_TILES = 320
WINOGRAD_5X5_MIN_TILES_CONSTANT = 64

_override = threading.local()

# dX by Winograd (``_dx_by_winograd``) needs this many 4x4 tiles of dX in the batch: with fewer,
# its 36 GEMMs are too narrow to pay for transforming the filter on every call (docs/kernels.md,
# "Training: dX of 3x3 layers by Winograd", has the timings per layer)
DX_WINOGRAD_MIN_TILES = 128


def supports(name, x_shape, w_shape, stride, padding, dilation, groups) -> bool:
    """Whether variant ``name`` can compute this convolution at all."""
    R, S = w_shape[2], w_shape[3]
    if name in ("im2col_gemm", "direct"):
        return True
    if name == "pointwise_gemm":
        return (R, S) == (1, 1) and tuple(padding) == (0, 0)
    if name in WINOGRAD_SHAPES:
        r = WINOGRAD_SHAPES[name][1]
        return (R, S) == (r, r) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
    raise ValueError(f"unknown conv2d variant {name!r}; choose one of {', '.join(VARIANTS)}")


def choose_variant(x_shape, w_shape, stride, padding, dilation, groups, constant=False) -> str:
    """The variant ``conv2d_forward`` uses for this shape (see docs/kernels.md for the reasons).

    1x1 unpadded layers go to ``pointwise_gemm``. 3x3 stride-1 ungrouped layers with at least
    ``WINOGRAD_MIN_CHANNELS`` input channels go to Winograd F(4x4) when the batch has enough
    4x4 output tiles (``WINOGRAD_F4_MIN_TILES``, or ``..._RAGGED`` when the tiles overhang the
    output; at most ``WINOGRAD_F4_MAX_CHANNELS`` input channels), else to F(2x2) when it has
    ``WINOGRAD_F2_MIN_TILES`` 2x2 tiles. A ``constant`` filter (read-only: its transform is
    cached, not rebuilt per call) lowers the floors: F(4x4) from
    ``WINOGRAD_F4_MIN_TILES_CONSTANT`` tiles that divide the output, F(2x2) from
    ``WINOGRAD_F2_MIN_TILES_CONSTANT``. 5x5 stride-1 ungrouped layers with at least
    ``WINOGRAD_MIN_CHANNELS`` input channels go to F(2x2, 5x5) from ``WINOGRAD_5X5_MIN_TILES``
    2x2 output tiles (``..._CONSTANT`` for a constant filter). Everything else, grouped and
    depthwise layers included, goes to ``im2col_gemm`` (``direct`` measured slower even for
    depthwise layers).
    ``prefer_variant`` overrides the rule where the shape allows.
    """
    forced = getattr(_override, "name", None)
    if forced is not None and supports(forced, x_shape, w_shape, stride, padding, dilation, groups):
        return forced
    N, C, H, W = x_shape
    R, S = w_shape[2], w_shape[3]
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if (R, S) == (1, 1) and padding == (0, 0):
        return "pointwise_gemm"
    if ((R, S) == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1
            and C >= WINOGRAD_MIN_CHANNELS):
        P, Q = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
        tiles4, tiles2 = N * -(-P // 4) * -(-Q // 4), N * -(-P // 2) * -(-Q // 2)
        ragged = P % 4 != 0 or Q % 4 != 0
        if constant:
            f4 = not ragged and tiles4 >= WINOGRAD_F4_MIN_TILES_CONSTANT
            f2 = tiles2 >= WINOGRAD_F2_MIN_TILES_CONSTANT
        else:
            f4 = tiles4 >= (WINOGRAD_F4_MIN_TILES_RAGGED if ragged else WINOGRAD_F4_MIN_TILES)
            f2 = tiles2 >= WINOGRAD_F2_MIN_TILES
        if f4 and C <= WINOGRAD_F4_MAX_CHANNELS:
            return "winograd_f4x4_3x3"
        if f2:
            return "winograd_f2x2_3x3"
    if ((R, S) == (5, 5) and stride == (1, 1) and dilation == (1, 1) and groups == 1
            and C >= WINOGRAD_MIN_CHANNELS):
        P, Q = H + 2 * padding[0] - 4, W + 2 * padding[1] - 4
        tiles2 = N * -(-P // 2) * -(-Q // 2)
        if tiles2 >= (WINOGRAD_5X5_MIN_TILES_CONSTANT if constant else WINOGRAD_5X5_MIN_TILES):
            return "winograd_f2x2_5x5"
    return "im2col_gemm"


@contextlib.contextmanager
def prefer_variant(name):
    """``with prefer_variant("direct"):`` makes this thread's convolutions use ``name`` wherever
    it supports the shape (others keep the rule). For benchmarks and tests."""
    if name is not None and name not in VARIANTS:
        raise ValueError(f"unknown conv2d variant {name!r}; choose one of {', '.join(VARIANTS)}")
    prev = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = prev


# --------------------------------------------------------------------------------------------
# Ops


def _pick(x, w, stride, padding, dilation, groups):
    return VARIANTS[choose_variant(np.shape(x), np.shape(w), pair(stride, "stride"), pair(padding, "padding"),
                                   pair(dilation, "dilation"), int(groups), constant=_filters.is_constant(w))]


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """y = conv(x, w) + b with the variant ``choose_variant`` picks. Shapes: see minicnn.ops.

    Constant filters: a ``w`` that is a read-only numpy array (and whose ``.base`` chain is
    read-only too) is treated as constant. Its Winograd transform (and its converted copy, when
    its dtype or layout must change) is computed on the first call and cached, keyed weakly on
    the array object: the entry goes when the array is freed, so a later array that reuses the
    id never sees it. Writeable filters (training weights) are transformed on every call and so
    are never stale, however they are modified in place.
    """
    return _pick(x, w, stride, padding, dilation, groups)(x, w, b, stride, padding, dilation, groups)


def conv2d_fused_forward(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """y = conv(x, w) + b (+ residual) (then ReLU), the additions and ReLU applied in the variant's
    write-back of y rather than as extra passes.

    ``out``: an optional C-contiguous array of the output's shape and dtype to write y into (it
    must not overlap x or the residual); it is returned. Read-only filters are constant and
    their transforms cached, as in :func:`conv2d_forward`.
    """
    return _pick(x, w, stride, padding, dilation, groups)(
        x, w, b, stride, padding, dilation, groups, residual=residual, relu=relu, out=out)


def conv2d_maxpool_fused(x, w, b, stride, padding, dilation, groups, relu, pool_kernel, pool_stride, pool_padding,
                         pool_dilation=(1, 1), out=None):
    """maxpool(act(conv(x) + b)) without ever storing the convolution's full output (a ResNet stem).

    Per image the im2col GEMM writes conv(x) into a workspace that stays in cache, the max pool
    reads it from there, and bias and ReLU are applied to the pooled result (a quarter the size) as
    the pool stores it.
    That order gives the same numbers: adding a constant and ReLU are monotone and float
    rounding is monotone, so max_i act(z_i + b) == act(max_i z_i + b) exactly (NaN propagates
    either way). Pooling semantics are ``maxpool2d_forward``'s (padding never wins).
    ``out``: an optional C-contiguous array of the pooled shape and dtype to write into.
    """
    from . import pool

    where = "conv2d_maxpool_fused"
    # no output array for the convolution: it is never stored whole
    p = _prepare_forward(x, w, b, stride, padding, dilation, groups, None, where, with_output=False)
    x, w, b, P, Q = p.x, p.w, p.b, p.P, p.Q
    stride, padding, dilation, groups = p.stride, p.padding, p.dilation, p.groups
    N, C = x.shape[:2]
    K, Cg, R, S = w.shape
    (PR, PS), pstride, ppad, pdil, PP, PQo = pool.window_out((N, K, P, Q), pool_kernel, pool_stride, pool_padding,
                                                             pool_dilation, where)
    G, Kg, CRSg, PQ = groups, K // groups, Cg * R * S, P * Q
    dt = x.dtype
    if out is None:
        y = _memory.empty((N, K, PP, PQo), dt)
    else:
        y = _check_out(out, (N, K, PP, PQo), dt, x, None, where)
    rows = pool.regular_windows(PP, PR, pstride[0], ppad[0], pdil[0], P)
    cols_w = pool.regular_windows(PQo, PS, pstride[1], ppad[1], pdil[1], Q)
    direct_cols = R == 1 and S == 1 and stride == (1, 1) and padding == (0, 0)
    wg = w.reshape(G, Kg, CRSg)
    bias = b if b is not None else empty_like_ndim(1, dt)
    g = geometry(R, S, stride, padding, dilation, P, Q)
    for n in range(N):
        if direct_cols:
            cols = x[n].reshape(C, PQ)
        else:
            cols = _threads.workspace("conv.cols", (C * R * S, PQ), dt)
            im2col(x, n, 1, cols, g)
        z = _threads.workspace("conv.pool_z", (1, K, P, Q), dt)
        _threads.matmul(wg, cols.reshape(G, CRSg, PQ), z.reshape(G, Kg, PQ))
        _threads.run(pool.maxpool_values, z, y[n:n + 1], rows.lo, rows.inside_lo, rows.inside_hi, pdil[0],
                     cols_w.lo, cols_w.inside_lo, cols_w.inside_hi, pdil[1], bias, b is not None, bool(relu))
    return y


def _dx_by_winograd(dy, w, stride, padding, dilation, groups, x_shape):
    """dX of a 3x3 or 5x5, stride-1, undilated, ungrouped convolution as a forward convolution, or None.

    Such a layer's dX is the convolution of dY with the filter's in and out channels swapped and
    its taps rotated by 180 degrees, padded by R - 1 - p: dX[c, h, w] = sum_k,r,s dY[k, h+p-r, w+p-s]
    w[k, c, r, s]. That is an R x R stride-1 forward convolution, so the Winograd variants apply
    (4x fewer multiplies than the GEMM before col2im for F(4x4, 3x3), 2.8x for F(2x2, 5x5)).
    Returns None where the shape does not qualify, the selection rule would not pick Winograd for
    it, or dX has fewer than ``DX_WINOGRAD_MIN_TILES`` 4x4 tiles (unless ``prefer_variant`` forces
    Winograd); then the GEMM + col2im path does the work.
    """
    K, C, R, S = w.shape
    if (R != S or R not in (3, 5) or stride != (1, 1) or dilation != (1, 1) or groups != 1
            or max(padding) > R - 1):
        return None
    pad_t = (R - 1 - padding[0], R - 1 - padding[1])
    name = choose_variant(dy.shape, (C, K, R, R), (1, 1), pad_t, (1, 1), 1)
    forced = getattr(_override, "name", None) == name
    N, _, H, W = x_shape
    if not name.startswith("winograd") or (not forced and N * -(-H // 4) * -(-W // 4) < DX_WINOGRAD_MIN_TILES):
        return None
    wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    return VARIANTS[name](dy, wt, None, (1, 1), pad_t, (1, 1), 1)  # (N, C, H, W): P + 2(R-1-p) - (R-1) = H


def _dw_by_winograd(dy, x, w, stride, padding, dilation, groups):
    """dW of a 3x3 or 5x5, stride-1, undilated, ungrouped convolution by Winograd, or None.

    Used where the selection rule picks Winograd for the layer's forward with a writeable filter
    (``prefer_variant`` can force it): dW = G^T [sum over tiles of (A dY A^T) * (B^T d B)] G, the
    transposed form of the forward (``winograd.backward_dw``), 4x fewer multiplies than the
    im2col GEMM for F(4x4, 3x3), 2.8x for F(2x2, 5x5). Returns None where the shape does not qualify.
    """
    K, C, R, S = w.shape
    if R != S or R not in (3, 5) or stride != (1, 1) or dilation != (1, 1) or groups != 1:
        return None
    name = choose_variant(x.shape, w.shape, (1, 1), padding, (1, 1), 1)
    if name not in WINOGRAD_SHAPES:
        return None
    tile, r = WINOGRAD_SHAPES[name]
    return winograd.backward_dw(x, dy, padding, tile, r)


def _dw_product(dyg, colsg, out):
    """out (G, Kg, CRSg) = dY_g . cols_g^T, the batch summed inside the product. With fewer
    output channels than unfolded rows, OpenBLAS runs the transposed product, cols_g . dY_g^T,
    faster (docs/kernels.md, "NCHW convs' products in registers"): that one goes to a workspace
    and is copied back transposed."""
    G, Kg, CRSg = out.shape
    if Kg >= CRSg:
        return _threads.matmul(dyg, colsg.transpose(0, 2, 1), out)
    t = _threads.workspace("conv.dwT", (G, CRSg, Kg), out.dtype)
    _threads.matmul(colsg, dyg.transpose(0, 2, 1), t)
    out[...] = t.transpose(0, 2, 1)
    return out


def conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of a convolution; entries not needed are None.

    3x3 and 5x5 stride-1 layers the selection rule sends to Winograd get dX from a Winograd forward
    convolution of dY (``_dx_by_winograd``) and dW from Winograd's transposed form
    (``_dw_by_winograd``). Otherwise, per chunk of images: dY is packed once to (K, n*P*Q);
    dW += dY_g . cols_g^T (one GEMM per group, the batch sum happening inside the GEMM);
    dcols = W_g^T . dY_g and col2im folds them back, one task per (image, channel) plane. Where
    ``conv_images.applies``, each thread does both per image instead, from one unfold kept in
    cache (``conv_images.backward_images``). db is a float64-accumulated channel sum.
    """
    dy, x, w = np.asarray(dy), np.asarray(x), np.asarray(w)
    stride, padding, dilation, groups, P, Q = check_conv(x, w, None, stride, padding, dilation, groups,
                                                          "conv2d_backward")
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    if tuple(dy.shape) != (N, K, P, Q):
        raise ValueError(f"conv2d_backward: dy shape {tuple(dy.shape)} does not match the output shape {(N, K, P, Q)}")
    dt = compute_dtype(dy, x, w)
    dy, x, w = prepare(dy, dt), prepare(x, dt), prepare(w, dt)
    G, Kg, CRSg, PQ = groups, K // groups, Cg * R * S, P * Q
    dy3 = dy.reshape(N, K, PQ)
    direct_cols = R == 1 and S == 1 and stride == (1, 1) and padding == (0, 0)
    by_images = not direct_cols and conv_images.applies(x.shape, w.shape, G, P, Q, dt)
    # the per-image path sums db itself, while each image's dY is in cache
    db = sum_over_n_l(dy3).astype(dt) if need_db and not by_images else None
    dx = _dx_by_winograd(dy, w, stride, padding, dilation, groups, x.shape) if need_dx else None
    dw = _dw_by_winograd(dy, x, w, stride, padding, dilation, groups) if need_dw else None
    dx_by_col2im = need_dx and dx is None
    dw_by_gemm = need_dw and dw is None
    if by_images:
        # each thread unfolds its images once for both gradients, in cache (see conv_images)
        dx_i, dw_i, db = conv_images.backward_images(dy, x, w, stride, padding, dilation, dx_by_col2im, dw_by_gemm,
                                                     need_db)
        dx, dw = (dx_i if dx_by_col2im else dx), (dw_i if dw_by_gemm else dw)
        return dx, (dw.reshape(K, Cg, R, S) if need_dw else None), db
    if not (dx_by_col2im or dw_by_gemm):
        return dx, dw, db
    if dx_by_col2im:
        dx = _memory.empty(x.shape, dt)
    wg = w.reshape(G, Kg, CRSg)
    if dw_by_gemm:
        dw = _memory.empty((G, Kg, CRSg), dt)
    nc = chunk_images(N, C * R * S * PQ * dt.itemsize, PQ)
    g = geometry(R, S, stride, padding, dilation, P, Q)
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        if m == 1:
            dyp = dy3[n0]
        else:
            dyp = _threads.workspace("conv.dy", (K, m * PQ), dt)
            run_epilogue(nkl(dy, n0), Rows(dyp.reshape(-1), 0, PQ, m * PQ), m, K, PQ)
        dyg = dyp.reshape(G, Kg, m * PQ)
        if dw_by_gemm:
            if m == 1 and direct_cols:
                cols = x[n0].reshape(C, PQ)
            else:
                cols = _threads.workspace("conv.cols", (C * R * S, m * PQ), dt)
                im2col(x, n0, m, cols, g)
            colsg = cols.reshape(G, CRSg, m * PQ)
            if n0 == 0:
                _dw_product(dyg, colsg, dw)
            else:
                dw += _dw_product(dyg, colsg, _threads.workspace("conv.dw", dw.shape, dt))
        if dx_by_col2im:
            if m == 1 and direct_cols:
                _product(wg.transpose(0, 2, 1), dyg, dx[n0].reshape(G, CRSg, PQ))
                continue
            # cols (if any) is consumed: its workspace now takes the column gradients
            dcols = _threads.workspace("conv.cols", (C * R * S, m * PQ), dt)
            _product(wg.transpose(0, 2, 1), dyg, dcols.reshape(G, CRSg, m * PQ))
            col2im(dcols, dx, n0, m, g)
    return dx, (dw.reshape(K, Cg, R, S) if need_dw else None), db
