"""2-D convolution on the device: im2col + cuBLAS, and an implicit-GEMM kernel with a fused epilogue.

The reference is ``backends/numpy/conv.py`` (derivation: docs/conv.md). Kernels:
``kernels/conv.cu`` (im2col, col2im, the bias / residual / ReLU epilogue, the bias gradient) and
``kernels/conv_igemm.cu`` (the implicit-GEMM forward and its TF32 and bf16 versions); each file
opens with the mapping from thread to output of every kernel.

Forward algorithms, all with the ``conv2d_fused_forward`` signature (``conv_variants`` offers
them to the autotuner, :func:`pick_forward` chooses for the ops):

- ``im2col_gemm``: unfold a chunk of images into columns, one batched cuBLAS GEMM per chunk
  writes y in place, then one epilogue pass. A pointwise layer (1x1, stride 1, no padding) needs
  no unfolding: x is its own column matrix. Chunks keep the column buffer within
  ``WORKSPACE_BYTES`` (:func:`batch_chunk`).
- ``implicit_gemm``: one kernel, no column buffer; blocks gather their slice of the column
  matrix from x into shared memory and apply bias, residual and ReLU as they store.
  ``implicit_gemm_128``: the same with 128 x 128 block tiles, for large layers.
- ``implicit_gemm_tf32`` / ``implicit_gemm_bf16``: the same on tensor cores, on TF32-rounded
  operands or on bfloat16 copies of x and w, float32 accumulation, float32 only; used only in
  the matching ``precision`` mode.

The backward runs im2col + cuBLAS in batch chunks: dW_g = dY_g @ cols_g^T (the batch joins the
GEMM's inner dimension), dX = col2im(W_g^T @ dY_g), db a per-channel sum.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...shapes import conv_output_size
from ._launch import ceil_div, grid_1d, i32, i64, suffix
from .pool import maxpool2d_forward
from .precision import get_precision

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_fused_forward", "conv_variants", "conv2d_maxpool_fused",
           "tuning_key"]

BLOCK = 256  # threads of the 1-D launches (conv.cu)
MAX_GRID_YZ = 65535

# per implicit-GEMM version: its kernel (dtype suffix appended where it takes both), threads per
# block, and (filters, output columns) per block tile; conv_igemm.cu describes each
IGEMM = {
    "implicit_gemm": ("conv_igemm_", 256, (64, 64)),
    "implicit_gemm_128": ("conv_igemm128_", 256, (128, 128)),
    "implicit_gemm_tf32": ("conv_igemm_tf32", 128, (64, 64)),
    "implicit_gemm_bf16": ("conv_igemm_bf16", 128, (64, 64)),
}

# implicit_gemm_128 is picked when its grid has at least this many blocks: two per SM of a
# 132-SM H100 / H200, so the larger tiles still fill the device. A starting rule: the one device
# run so far timed ResNet-18's layers at batch 32, where no layer reaches it (there the 128 tiles
# were the slowest version everywhere); compiled models time every variant instead (conv_variants)
FILL_BLOCKS = 264

# a layer whose reduction per output (C/groups * R * S) is at least this long goes to
# im2col + cuBLAS rather than the 64-tile implicit GEMM: cuBLAS keeps a long reduction busier
# than 64 x 64 tiles on a grid too small for implicit_gemm_128 (measured on an H200 at ResNet-18's
# layer3 and layer4 shapes, docs/benchmarks.md "GPU (CuPy backend)")
IM2COL_MIN_REDUCTION = 2048

# bytes of column buffer (and transposed dY) one chunk of the batch may use
WORKSPACE_BYTES = 256 * 2**20

VARIANTS = ("im2col_gemm", "implicit_gemm", "implicit_gemm_128", "implicit_gemm_tf32", "implicit_gemm_bf16")


@dataclass(frozen=True)
class ConvGeometry:
    """The shapes of one convolution: x (N, C, H, W), w (K, Cg, R, S), y (N, K, P, Q), G groups."""

    N: int
    C: int
    H: int
    W: int
    K: int
    Cg: int
    R: int
    S: int
    P: int
    Q: int
    stride: tuple
    padding: tuple
    dilation: tuple
    G: int

    @property
    def Kg(self) -> int:
        return self.K // self.G

    @property
    def CRSg(self) -> int:
        return self.Cg * self.R * self.S

    @property
    def PQ(self) -> int:
        return self.P * self.Q

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: x is its own column matrix."""
        return self.R == 1 and self.S == 1 and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0)


def geometry(x_shape, w_shape, stride, padding, dilation, groups, where="conv2d") -> ConvGeometry:
    """The :class:`ConvGeometry` of a convolution; ValueError naming ``where`` for shapes that do not fit."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"{where}: expected x (N, C, H, W) and w (K, C/groups, R, S), got {tuple(x_shape)} and "
                         f"{tuple(w_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    K, Cg, R, S = (int(v) for v in w_shape)
    groups = int(groups)
    if groups < 1 or C != Cg * groups or K % groups:
        raise ValueError(f"{where}: x {tuple(x_shape)} and w {tuple(w_shape)} do not fit groups={groups} "
                         f"(need C = {Cg} * groups and K divisible by groups)")
    P, Q = conv_output_size(H, W, R, S, stride, padding, dilation)
    if P < 1 or Q < 1:
        raise ValueError(f"{where}: a {R}x{S} kernel (dilation {tuple(dilation)}) does not fit the "
                         f"{H}x{W} input with padding {tuple(padding)}")
    return ConvGeometry(N, C, H, W, K, Cg, R, S, P, Q, tuple(stride), tuple(padding), tuple(dilation), groups)


def batch_chunk(n: int, per_image_bytes: int, budget: int = WORKSPACE_BYTES) -> int:
    """Images per chunk so that ``chunk * per_image_bytes`` stays within ``budget`` (at least 1, at most n)."""
    if per_image_bytes <= 0:
        return max(1, n)
    return max(1, min(n, budget // per_image_bytes))


def column_strides(layout: str, nb: int, G: int, CRSg: int, PQ: int) -> tuple:
    """(sN, sG, sRow) of the column buffer of ``nb`` images, as conv.cu's im2col and col2im take them.

    ``"image"``: (nb, G, Cg*R*S, P*Q), the forward's; ``"group"``: (G, Cg*R*S, nb, P*Q), the
    backward's (one GEMM per group over the whole chunk).
    """
    if layout == "image":
        return G * CRSg * PQ, CRSg * PQ, PQ
    if layout == "group":
        return PQ, CRSg * nb * PQ, nb * PQ
    raise ValueError(f"column layout must be 'image' or 'group', got {layout!r}")


# ---- launches of conv.cu --------------------------------------------------------------------------


def _unfold_args(C, H, W, Cg, R, S, P, Q, stride, padding, dilation, strides):
    return (*(i32(v) for v in (C, H, W, Cg, R, S, P, Q, *stride, *padding, *dilation)),
            *(i64(v) for v in strides))


def im2col(rt, x, cols, Cg, R, S, P, Q, stride, padding, dilation, strides):
    """Unfold x (nb, C, H, W), contiguous, into ``cols`` at ``strides`` (see :func:`column_strides`),
    on the output grid (P, Q)."""
    nb, C, H, W = x.shape
    total = nb * C * R * S * P * Q
    if total:
        rt.kernel("conv.cu", f"im2col_{suffix(x.dtype)}")(
            grid_1d(total, BLOCK), (BLOCK,),
            (x, cols, i64(total), *_unfold_args(C, H, W, Cg, R, S, P, Q, stride, padding, dilation, strides)))


def col2im(rt, cols, x, Cg, R, S, P, Q, stride, padding, dilation, strides):
    """Fold ``cols`` (at ``strides``) back onto x (nb, C, H, W), contiguous, summing overlaps (a gather)."""
    nb, C, H, W = x.shape
    total = nb * C * H * W
    if total:
        rt.kernel("conv.cu", f"col2im_{suffix(x.dtype)}")(
            grid_1d(total, BLOCK), (BLOCK,),
            (cols, x, i64(total), *_unfold_args(C, H, W, Cg, R, S, P, Q, stride, padding, dilation, strides)))


def epilogue(rt, y, bias, residual, relu):
    """In place on y (N, K, ...) contiguous: ``y += bias[k]``, ``y += residual``, then ReLU (each if given)."""
    if y.size == 0 or (bias is None and residual is None and not relu):
        return
    K = y.shape[1]
    L = y.size // (y.shape[0] * K)
    dummy = _dummy(rt, y.dtype)
    rt.kernel("conv.cu", f"conv_epilogue_{suffix(y.dtype)}")(
        grid_1d(y.size, BLOCK), (BLOCK,),
        (y, dummy if bias is None else bias, dummy if residual is None else residual, i64(y.size), i32(K), i64(L),
         i32(bias is not None), i32(residual is not None), i32(bool(relu))))


def channel_sum(rt, dy):
    """``dy.sum`` over every axis but 1, for dy (N, K, ...) contiguous: the bias gradient."""
    N, K = dy.shape[0], dy.shape[1]
    L = dy.size // (N * K) if N * K else 0
    out = rt.xp.zeros((K,), dtype=dy.dtype)
    if K and N * L:
        rt.kernel("conv.cu", f"channel_sum_{suffix(dy.dtype)}")((K,), (BLOCK,), (dy, out, i32(N), i32(K), i64(L)))
    return out


def add_inplace(rt, a, b):
    """``a += b`` for contiguous arrays of one shape."""
    if a.size:
        rt.kernel("conv.cu", f"add_inplace_{suffix(a.dtype)}")(grid_1d(a.size, BLOCK), (BLOCK,), (a, b, i64(a.size)))


def _dummy(rt, dtype):
    # stands in for an absent bias or residual: the kernel reads it only when told it is there
    return rt.xp.zeros((1,), dtype=dtype)


# ---- forward --------------------------------------------------------------------------------------


def _prepare_forward(rt, x, w, b, stride, padding, dilation, groups, residual, out, where):
    """Contiguous operands of x's dtype, the geometry, and the array to write y into (``out`` itself
    when it is a C-contiguous array of y's shape and dtype, else a new one)."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups, where)
    w = xp.ascontiguousarray(w, dtype=x.dtype)
    if b is not None:
        b = xp.ascontiguousarray(b, dtype=x.dtype)
        if b.shape != (g.K,):
            raise ValueError(f"{where}: bias shape {tuple(b.shape)} does not match {g.K} filters")
    y_shape = (g.N, g.K, g.P, g.Q)
    if residual is not None:
        if tuple(residual.shape) != y_shape:
            raise ValueError(f"{where}: residual shape {tuple(residual.shape)} differs from the output's {y_shape}")
        residual = xp.ascontiguousarray(residual, dtype=x.dtype)
    if out is not None:
        if tuple(out.shape) != y_shape or out.dtype != x.dtype:
            raise ValueError(f"{where}: out has shape {tuple(out.shape)} and dtype {out.dtype}, the output is "
                             f"{y_shape} {x.dtype}")
    direct = out is not None and rt.is_native(out) and out.flags.c_contiguous
    y = out if direct else xp.empty(y_shape, dtype=x.dtype)
    return x, w, b, residual, y, g


def _finish(y, out):
    if out is None or y is out:
        return y
    out[...] = y
    return out


def forward_im2col_gemm(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None,
                        workspace_bytes=WORKSPACE_BYTES):
    """``conv2d_fused_forward`` by im2col + cuBLAS in batch chunks (see the module docstring)."""
    x, w, b, residual, y, g = _prepare_forward(rt, x, w, b, stride, padding, dilation, groups, residual, out,
                                               "conv2d (im2col_gemm)")
    xp = rt.xp
    if y.size:
        wg = w.reshape(g.G, g.Kg, g.CRSg)
        if g.pointwise:
            rt.matmul(wg, x.reshape(g.N, g.G, g.Cg, g.PQ), out=y.reshape(g.N, g.G, g.Kg, g.PQ))
        else:
            chunk = batch_chunk(g.N, g.C * g.R * g.S * g.PQ * x.itemsize, workspace_bytes)
            cols = xp.empty((chunk, g.G, g.CRSg, g.PQ), dtype=x.dtype)
            for n0 in range(0, g.N, chunk):
                nb = min(chunk, g.N - n0)
                c = cols[:nb]
                im2col(rt, x[n0:n0 + nb], c, g.Cg, g.R, g.S, g.P, g.Q, g.stride, g.padding, g.dilation,
                       column_strides("image", nb, g.G, g.CRSg, g.PQ))
                rt.matmul(wg, c, out=y[n0:n0 + nb].reshape(nb, g.G, g.Kg, g.PQ))
        epilogue(rt, y, b, residual, relu)
    return _finish(y, out)


def implicit_gemm_supports(g: ConvGeometry, variant: str = "implicit_gemm") -> bool:
    """Whether an implicit-GEMM version can take this geometry: its grid fits CUDA's limits and
    every size fits the kernels' 32-bit int parameters."""
    BM, BN = IGEMM[variant][2]
    ints = (g.N, g.C, g.H, g.W, g.K, g.CRSg, g.P, g.Q)
    return (g.G <= MAX_GRID_YZ and ceil_div(g.Kg, BM) <= MAX_GRID_YZ
            and ceil_div(g.N * g.PQ, BN) <= 2**31 - 1 and max(ints) <= 2**31 - 1)


def igemm_grid(g: ConvGeometry, variant: str) -> tuple:
    """The launch grid of an implicit-GEMM version: (column tiles, filter tiles, groups)."""
    BM, BN = IGEMM[variant][2]
    return (ceil_div(g.N * g.PQ, BN), ceil_div(g.Kg, BM), g.G)


def _implicit(rt, variant, x, w, b, stride, padding, dilation, groups, residual, relu, out):
    where = f"conv2d ({variant})"
    x, w, b, residual, y, g = _prepare_forward(rt, x, w, b, stride, padding, dilation, groups, residual, out, where)
    reduced = variant in ("implicit_gemm_tf32", "implicit_gemm_bf16")
    if reduced and x.dtype != np.float32:
        raise TypeError(f"{where}: computes float32 inputs only, got {x.dtype}")
    if not implicit_gemm_supports(g, variant):
        raise ValueError(f"{where}: the shapes exceed the kernel's grid or 32-bit sizes; use im2col_gemm")
    if y.size:
        name, threads, _ = IGEMM[variant]
        if not reduced:
            name += suffix(x.dtype)
        if variant == "implicit_gemm_bf16":
            x, w = to_bf16(rt, x), to_bf16(rt, w)
        dummy = _dummy(rt, y.dtype)
        rt.kernel("conv_igemm.cu", name)(
            igemm_grid(g, variant), (threads,),
            (x, w, dummy if b is None else b, dummy if residual is None else residual, y,
             *(i32(v) for v in (g.N, g.C, g.H, g.W, g.K, g.Cg, g.Kg, g.R, g.S, g.P, g.Q, *g.stride, *g.padding,
                                *g.dilation)),
             i32(b is not None), i32(residual is not None), i32(bool(relu))))
    return _finish(y, out)


def to_bf16(rt, a):
    """A float32 array's bfloat16 copy (round to nearest even), as uint16 bit patterns of a's shape."""
    h = rt.xp.empty(a.shape, dtype=np.uint16)
    if a.size:
        rt.kernel("conv_igemm.cu", "to_bf16_f32")(grid_1d(a.size, BLOCK), (BLOCK,), (a, h, i64(a.size)))
    return h


def forward_implicit_gemm(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``conv2d_fused_forward`` by the implicit-GEMM kernel (float32 / float64, no column buffer)."""
    return _implicit(rt, "implicit_gemm", x, w, b, stride, padding, dilation, groups, residual, relu, out)


def forward_implicit_gemm_128(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``conv2d_fused_forward`` by the implicit-GEMM kernel with 128 x 128 block tiles."""
    return _implicit(rt, "implicit_gemm_128", x, w, b, stride, padding, dilation, groups, residual, relu, out)


def forward_implicit_gemm_tf32(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``conv2d_fused_forward`` on TF32 tensor cores (float32 input; products of tf32-rounded operands)."""
    return _implicit(rt, "implicit_gemm_tf32", x, w, b, stride, padding, dilation, groups, residual, relu, out)


def forward_implicit_gemm_bf16(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """``conv2d_fused_forward`` on tensor cores with bfloat16 copies of x and w, float32 accumulation and output."""
    return _implicit(rt, "implicit_gemm_bf16", x, w, b, stride, padding, dilation, groups, residual, relu, out)


FORWARD = {
    "im2col_gemm": forward_im2col_gemm,
    "implicit_gemm": forward_implicit_gemm,
    "implicit_gemm_128": forward_implicit_gemm_128,
    "implicit_gemm_tf32": forward_implicit_gemm_tf32,
    "implicit_gemm_bf16": forward_implicit_gemm_bf16,
}


def pick_forward(g: ConvGeometry, dtype, mode: str) -> str:
    """The forward algorithm the ops use for geometry ``g``, dtype and precision ``mode``.

    float32 in the ``"tf32"`` or ``"bf16"`` mode: that implicit-GEMM version. Otherwise a
    pointwise layer is one cuBLAS GEMM on x itself (``im2col_gemm``, which then unfolds
    nothing); a layer with at least 128 filters per group whose 128 x 128 grid still has
    ``FILL_BLOCKS`` blocks takes ``implicit_gemm_128``; of the rest, one whose reduction is at
    least ``IM2COL_MIN_REDUCTION`` long takes ``im2col_gemm``, any other ``implicit_gemm``;
    ``im2col_gemm`` where the implicit GEMM's grid or sizes do not fit.
    """
    fits = implicit_gemm_supports(g)
    if np.dtype(dtype) == np.float32 and mode in ("tf32", "bf16") and fits:
        return f"implicit_gemm_{mode}"
    if g.pointwise or not fits:
        return "im2col_gemm"
    if g.Kg >= 128 and implicit_gemm_supports(g, "implicit_gemm_128"):
        cols, rows, groups = igemm_grid(g, "implicit_gemm_128")
        if cols * rows * groups >= FILL_BLOCKS:
            return "implicit_gemm_128"
    if g.CRSg >= IM2COL_MIN_REDUCTION:
        return "im2col_gemm"
    return "implicit_gemm"


def variant_names(g: ConvGeometry, mode: str) -> list:
    """The forward algorithms an autotuner may time for ``g`` in precision ``mode``: the exact
    ones, plus the mode's reduced-precision version when that mode is on (never otherwise)."""
    names = ["im2col_gemm"]
    names += [v for v in ("implicit_gemm", "implicit_gemm_128") if implicit_gemm_supports(g, v)]
    if mode in ("tf32", "bf16") and implicit_gemm_supports(g, f"implicit_gemm_{mode}"):
        names.append(f"implicit_gemm_{mode}")
    return names


def conv2d_fused_forward(rt, x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
    """y = relu?(conv(x, w) + b + residual), written into ``out`` when given, by the algorithm
    :func:`pick_forward` names for this shape, dtype and the precision mode in force."""
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups, "conv2d_fused_forward")
    name = pick_forward(g, x.dtype, get_precision())
    return FORWARD[name](rt, x, w, b, stride, padding, dilation, groups, residual=residual, relu=relu, out=out)


def conv2d_forward(rt, x, w, b, stride, padding, dilation, groups):
    """y (N, K, P, Q) = conv(x, w) + b; shapes as ``minicnn.ops``."""
    return conv2d_fused_forward(rt, x, w, b, stride, padding, dilation, groups)


def conv_variants(rt, x_shape, w_shape, stride, padding, dilation, groups) -> dict:
    """The forward algorithms (``conv2d_fused_forward`` signature) that can compute this shape in
    the precision mode in force; see :func:`variant_names`."""
    g = geometry(x_shape, w_shape, stride, padding, dilation, groups, "conv_variants")
    return {name: functools.partial(FORWARD[name], rt) for name in variant_names(g, get_precision())}


def tuning_key(rt) -> tuple:
    """The precision mode in force: it decides which variants ``conv_variants`` offers, so an
    autotuned pick made in one mode is not reused in another."""
    return ("precision", get_precision())


def conv2d_maxpool_fused(rt, x, w, b, stride, padding, dilation, groups, relu, pool_kernel, pool_stride,
                         pool_padding, pool_dilation=(1, 1), out=None):
    """maxpool(relu?(conv(x) + b)) (a ResNet stem): the fused forward, then the max pool without
    argmax, both on this runtime; written into ``out`` (the pooled shape and dtype) when given.
    Not fused further: the table's default would do the same through the backend in force."""
    y = conv2d_fused_forward(rt, x, w, b, stride, padding, dilation, groups, None, relu)
    pooled, _ = maxpool2d_forward(rt, y, pool_kernel, pool_stride, pool_padding, pool_dilation, need_argmax=False)
    if out is not None and (tuple(out.shape) != tuple(pooled.shape) or out.dtype != pooled.dtype):
        raise ValueError(f"conv2d_maxpool_fused: out has shape {tuple(out.shape)} and dtype {out.dtype}, the output "
                         f"is {tuple(pooled.shape)} {pooled.dtype}")
    return _finish(pooled, out)


# ---- backward -------------------------------------------------------------------------------------


def backward_im2col_gemm(rt, dy, x, w, stride, padding, dilation, groups, need_dx=True, need_dw=True, need_db=True,
                         workspace_bytes=WORKSPACE_BYTES):
    """``conv2d_backward`` by im2col / col2im + cuBLAS in batch chunks of at most ``workspace_bytes``."""
    xp = rt.xp
    x = xp.ascontiguousarray(x)
    suffix(x.dtype)
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups, "conv2d_backward")
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    if tuple(dy.shape) != (g.N, g.K, g.P, g.Q):
        raise ValueError(f"conv2d_backward: dy shape {tuple(dy.shape)} differs from the output's "
                         f"{(g.N, g.K, g.P, g.Q)}")
    w = xp.ascontiguousarray(w, dtype=x.dtype)
    dx = dw = db = None
    if need_db:
        db = channel_sum(rt, dy)
    if not (need_dx or need_dw):
        return dx, dw, db
    G, Kg, CRSg, PQ = g.G, g.Kg, g.CRSg, g.PQ
    wgT = w.reshape(G, Kg, CRSg).transpose(0, 2, 1)
    if need_dx:
        dx = xp.empty(x.shape, dtype=x.dtype)
    if need_dw:
        dw = xp.zeros((G, Kg, CRSg), dtype=x.dtype)  # zeros: stays the answer for an empty batch
        part = xp.empty_like(dw)
    # per image: the columns, dY regrouped, and dX's columns
    per_image = (2 * g.C * g.R * g.S + g.K) * PQ * x.itemsize
    chunk = batch_chunk(g.N, per_image, workspace_bytes)
    for n0 in range(0, g.N, chunk):
        nb = min(chunk, g.N - n0)
        strides = column_strides("group", nb, G, CRSg, PQ)
        dyg = xp.ascontiguousarray(dy[n0:n0 + nb].reshape(nb, G, Kg, PQ).transpose(1, 2, 0, 3)).reshape(G, Kg, nb * PQ)
        if need_dw:
            cols = xp.empty((G, CRSg, nb * PQ), dtype=x.dtype)
            im2col(rt, x[n0:n0 + nb], cols, g.Cg, g.R, g.S, g.P, g.Q, g.stride, g.padding, g.dilation, strides)
            rt.matmul(dyg, cols.transpose(0, 2, 1), out=dw if n0 == 0 else part)
            if n0:
                add_inplace(rt, dw, part)
        if need_dx:
            dcols = xp.ascontiguousarray(rt.matmul(wgT, dyg))  # (G, CRSg, nb*PQ)
            col2im(rt, dcols, dx[n0:n0 + nb], g.Cg, g.R, g.S, g.P, g.Q, g.stride, g.padding, g.dilation, strides)
    if need_dw:
        dw = dw.reshape(g.K, g.Cg, g.R, g.S)
    return dx, dw, db


def conv2d_backward(rt, dy, x, w, stride, padding, dilation, groups, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of conv2d_forward, each computed only when asked (else None); see :func:`backward_im2col_gemm`."""
    return backward_im2col_gemm(rt, dy, x, w, stride, padding, dilation, groups, need_dx, need_dw, need_db)
