"""A matrix product with its accumulators in vector registers: ``C = A . B`` for the products of
channels-last convolutions, and of the NCHW im2col convolutions where it beats OpenBLAS
(``conv.by_tiles``).

What it is for: the products a compiled ResNet's convs make, from the 7x7 stem's (147 values per
output pixel, 64 output channels) to layer4's (4608 by 512) and the Winograd convs' stacks of 16
or 36. OpenBLAS runs these short or narrow products below its large-GEMM rate, and on AVX-512 this
kernel runs them faster (timed by ``python -m benchmarks.tiles_ab``; docs/kernels.md, "A product
with its tile in registers", has the numbers and how the form below was arrived at). It reads A's
rows in place (no packing), takes B as panels packed once (``pack``: a conv's filter, cached with
it) or, for a B made for one product (the NCHW convs' unfolded columns), reads B's rows in place
too, and keeps a 6-row by ``tile_cols`` block of C in registers for the whole inner dimension.
``tests/test_tiles.py`` checks it against numpy.

How: numba cannot be made to keep an array of accumulators in registers from Python loops (its
arrays live in memory and LLVM cannot prove they do not alias the inputs; docs/kernels.md, "A
direct convolution over channel blocks"), so the inner block is written as LLVM IR by
``tile``, a numba intrinsic: a loop over k whose accumulators are SSA values (``phi`` nodes) of
LLVM vector type, each step

    for each of B's vectors v:  bv[v] = B[k, j0 + v*L : j0 + (v+1)*L]
    for each row i of the block: a = A[i0 + i, k] broadcast to L lanes
                                 acc[i][v] = fma(a, bv[v], acc[i][v])  for every v

and at the end the accumulators stored to C's rows. In plain Python the block computes exactly

    C[i0:i0+m, j0:j0+NV*L] = A[i0:i0+m, :] @ B[:, j0:j0+NV*L]

with each C value summed over k in order, one fused multiply-add per term. The vectors are as
wide as the machine's (64 bytes with AVX-512, else 32), and there are MR x NV of them: 6 x 4 with
AVX-512 (24 of its 32 registers), 6 x 2 otherwise (12 of 16). The kernel is correct on any x86 or
other CPU LLVM targets (a vector wider than the hardware's is split into several); it is fast
only where the registers suffice.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _threads

# rows of C per register block
MR = 6


def _vector_bytes() -> int:
    """64 where numba compiles for a CPU with AVX-512, else 32."""
    from llvmlite import binding
    from numba.core import config

    name = config.CPU_NAME
    if name and name != "host":  # numba told to compile for a named CPU: assume the narrower vectors
        return 32
    features = binding.get_host_cpu_features()
    return 64 if features.get("avx512f", False) else 32


VECTOR_BYTES = _vector_bytes()
# With AVX-512 this product runs the convolutions' products faster than OpenBLAS: the
# channels-last convs' (docs/kernels.md, "A product with its tile in registers") and the NCHW
# im2col convs' with their columns read in place (docs/kernels.md, "NCHW convs' products in
# registers"). With AVX2 the two were level on the channels-last products, and OpenBLAS stays.
FASTER_THAN_BLAS = VECTOR_BYTES == 64
# vectors per row of the register block: MR x NV accumulators plus NV for B and one broadcast
NV = 4 if VECTOR_BYTES == 64 else 2


def tile_cols(dtype) -> int:
    """C's columns per register block for this dtype (64 float32 or 32 float64 values with
    AVX-512): the width of ``pack``'s panels."""
    return NV * (VECTOR_BYTES // np.dtype(dtype).itemsize)


@intrinsic
def tile(typingctx, a, a_off, lda, m, b, b_off, ldb, c, c_off, ldc, K, nseg, seg_stride, accumulate):
    """One register block, on flat arrays: for rows i < m (1 <= m <= MR) and columns j < NV*L,

        C[c_off + i*ldc + j] (+)= sum over r < nseg, k < K of
                                  A[a_off + i*lda + r*seg_stride + k] * B[b_off + (r*K + k)*ldb + j]

    the terms in that order (r, then k), one fused multiply-add each. With ``nseg`` 1 it is a plain
    product of A's rows (K values each) and B's rows; with more, each row of A is ``nseg`` runs of K
    values ``seg_stride`` apart, as a convolution window's rows lie in an image (``channels_last``'s
    direct form). ``accumulate``: add to what C holds instead of overwriting it. See the module
    docstring."""
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.ndim == 1 and t.dtype in (types.float32, types.float64)
               for t in arrays) or len({t.dtype for t in arrays}) != 1:
        return None
    sig = types.void(a, a_off, lda, m, b, b_off, ldb, c, c_off, ldc, K, nseg, seg_stride, accumulate)
    L = VECTOR_BYTES // (a.dtype.bitwidth // 8)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        ints = {name: context.cast(builder, args[i], signature.args[i], types.int64) for i, name in
                ((1, "a_off"), (2, "lda"), (3, "m"), (5, "b_off"), (6, "ldb"), (8, "c_off"), (9, "ldc"), (10, "K"),
                 (11, "nseg"), (12, "seg_stride"))}
        ad = context.make_array(signature.args[0])(context, builder, args[0]).data
        bd = context.make_array(signature.args[4])(context, builder, args[4]).data
        cd = context.make_array(signature.args[7])(context, builder, args[7]).data
        add = context.cast(builder, args[13], signature.args[13], types.boolean)
        elt = ad.type.pointee
        vt = ir.VectorType(elt, L)
        vptr = vt.as_pointer()
        bits = a.dtype.bitwidth
        align = bits // 8  # rows start anywhere a value can: one value's alignment
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{L}f{bits}")
        m_ = ints["m"]
        # rows at or past m read and load row 0 instead (their sums are never stored)
        rows = [builder.select(builder.icmp_signed("<", const(i), m_), const(i), const(0)) for i in range(MR)]
        arows = [builder.gep(ad, [builder.add(ints["a_off"], builder.mul(r, ints["lda"]))]) for r in rows]
        crows = [builder.gep(cd, [builder.add(ints["c_off"], builder.mul(r, ints["ldc"]))]) for r in rows]
        bbase = builder.gep(bd, [ints["b_off"]])
        zero = ir.Constant(vt, [0.0] * L)

        def cvec(i, v):  # pointer to vector v of C's row i
            return builder.bitcast(builder.gep(crows[i], [const(v * L)]), vptr)

        # the accumulators' first values: zero, or C's
        init = [[builder.select(add, builder.load(cvec(i, v), align=align), zero) for v in range(NV)]
                for i in range(MR)]
        lane0 = ir.Constant(ir.IntType(32), 0)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)
        undef = ir.Constant(vt, None)
        K_, nseg_ = ints["K"], ints["nseg"]

        pre = builder.block
        seg = builder.append_basic_block("tile.segment")
        loop = builder.append_basic_block("tile.k")
        latch = builder.append_basic_block("tile.next_segment")
        done = builder.append_basic_block("tile.store")
        work = builder.and_(builder.icmp_signed(">", K_, const(0)), builder.icmp_signed(">", nseg_, const(0)))
        builder.cbranch(work, seg, done)

        # segment r: its rows of A start r*seg_stride further on, its rows of B r*K further down
        builder.position_at_end(seg)
        r = builder.phi(i64)
        acc_seg = [[builder.phi(vt) for _ in range(NV)] for _ in range(MR)]
        a_seg = [builder.gep(row, [builder.mul(r, ints["seg_stride"])]) for row in arows]
        b_seg = builder.gep(bbase, [builder.mul(builder.mul(r, K_), ints["ldb"])])
        builder.branch(loop)

        # one k: NV vectors of B's row, each row of A's value broadcast, MR x NV fused multiply-adds
        builder.position_at_end(loop)
        k = builder.phi(i64)
        acc = [[builder.phi(vt) for _ in range(NV)] for _ in range(MR)]
        brow = builder.gep(b_seg, [builder.mul(k, ints["ldb"])])
        bv = [builder.load(builder.bitcast(builder.gep(brow, [const(v * L)]), vptr), align=align) for v in range(NV)]
        new = []
        for i in range(MR):
            s = builder.load(builder.gep(a_seg[i], [k]))
            sv = builder.shuffle_vector(builder.insert_element(undef, s, lane0), undef, splat)
            new.append([builder.call(fma, [sv, bv[v], acc[i][v]]) for v in range(NV)])
        k1 = builder.add(k, const(1))
        builder.cbranch(builder.icmp_signed("<", k1, K_), loop, latch)
        k.add_incoming(const(0), seg)
        k.add_incoming(k1, loop)

        builder.position_at_end(latch)
        r1 = builder.add(r, const(1))
        builder.cbranch(builder.icmp_signed("<", r1, nseg_), seg, done)
        r.add_incoming(const(0), pre)
        r.add_incoming(r1, latch)
        for i in range(MR):
            for v in range(NV):
                acc_seg[i][v].add_incoming(init[i][v], pre)
                acc_seg[i][v].add_incoming(new[i][v], latch)
                acc[i][v].add_incoming(acc_seg[i][v], seg)
                acc[i][v].add_incoming(new[i][v], loop)

        builder.position_at_end(done)
        out = [[builder.phi(vt) for _ in range(NV)] for _ in range(MR)]
        for i in range(MR):
            for v in range(NV):
                out[i][v].add_incoming(init[i][v], pre)
                out[i][v].add_incoming(new[i][v], latch)
        for i in range(MR):
            # row 0 always exists (m >= 1); the others only when i < m
            with builder.if_then(builder.icmp_signed("<", const(i), m_), likely=True):
                for v in range(NV):
                    builder.store(out[i][v], cvec(i, v), align=align)
        return context.get_dummy_value()

    return sig, codegen


# The inner dimension in blocks of this many values: a block of B's panel (KC x nr values, 256 KB
# of float32 with AVX-512) stays in L2 while a task's row blocks run over it, and the task's C
# rows are reloaded once per block. 64 to 1024 measured within a few percent of each other on the
# ResNet layers' products, 1024 slightly ahead (docs/kernels.md, "A product with its tile in registers").
KC = 1024
# row blocks per task: a task's share of A (GROUP * MR rows) and of C stay in cache across B's blocks
GROUP = 8


@njit(cache=True, nogil=True, parallel=True)
def _product(a, b, c, nr, kc_max, group, packed):  # pragma: no cover - jitted
    """c[z] (M, N) = a[z] (M, K) . B[z] for each z < a.shape[0]: a and c C-contiguous; b either
    ``pack(B)`` (``packed``: B[z]'s panels of nr columns, flattened to (Z, panels*K, nr)) or B
    itself, (Z, K, N) C-contiguous.

    One task per (product z, block of nr columns, group of about ``group`` row blocks), the groups
    of one column block consecutive. A task runs B's rows kc_max at a time, each block of B over all
    of its row blocks, accumulating into C. A column block past c's last column (N not a multiple
    of nr) is computed into a scratch tile and its first columns copied; from a plain B that block
    is first copied into a zero-padded (K, nr) panel (read in place, its rows would run past B's
    last row)."""
    Z, M, K = a.shape
    N = c.shape[2]
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    cf = c.reshape(c.size)
    # about ``group`` row blocks per task, as many in each: 49 rows (9 blocks) are one group, not
    # a group of 8 blocks and one of a single row that would read B's panels a second time
    row_blocks = (M + MR - 1) // MR
    groups = max(1, (row_blocks + group // 2) // group)
    rows = -(-row_blocks // groups) * MR
    groups = (M + rows - 1) // rows
    col_blocks = (N + nr - 1) // nr
    per_product = groups * col_blocks
    for t in prange(Z * per_product):
        z = t // per_product
        jb = (t - z * per_product) // groups
        g0 = (t - z * per_product - jb * groups) * rows
        g1 = min(M, g0 + rows)
        j0 = jb * nr
        a0 = z * M * K  # where product z's a and c start
        c0 = z * M * N
        edge = j0 + nr > N
        # where the task's block of B is read: a panel, B's own rows, or a copy of a partial block
        src, b0, ldb = bf, (z * col_blocks + jb) * K * nr, nr
        if not packed:
            if edge:
                src, b0 = np.zeros(K * nr, b.dtype), 0
                for k in range(K):
                    for j in range(N - j0):
                        src[k * nr + j] = bf[(z * K + k) * N + j0 + j]
            else:
                b0, ldb = z * K * N + j0, N
        # where the task's block of C goes: C itself, or for a partial panel a scratch block
        scratch = np.empty((g1 - g0) * nr if edge else 0, c.dtype)
        dst = scratch if edge else cf
        d0, ldd = (-g0 * nr, nr) if edge else (c0 + j0, N)  # row i of C at dst[d0 + i * ldd]
        for k0 in range(0, max(K, 1), kc_max):
            kc = min(kc_max, K - k0)
            for i0 in range(g0, g1, MR):
                tile(af, a0 + i0 * K + k0, K, min(MR, g1 - i0), src, b0 + k0 * ldb, ldb, dst, d0 + i0 * ldd, ldd, kc,
                     1, 0, k0 > 0)
        if edge:
            for i in range(g1 - g0):
                for j in range(N - j0):
                    cf[c0 + (g0 + i) * N + j0 + j] = scratch[i * nr + j]


def pack(b):
    """b (K, N), or a stack (Z, K, N), as the panels ``matmul`` reads: (ceil(N / nr), K, nr)
    (a stack: (Z, ceil(N / nr), K, nr)) with nr = ``tile_cols``, panel j holding b's columns
    j*nr .. j*nr+nr-1 (zeros past N), each contiguous, so that a block of B's rows is one run of
    memory rather than rows a whole row of b apart (which the cache holds only a few of). A new
    array."""
    if b.ndim not in (2, 3):
        raise ValueError(f"_tiles.pack: needs b (K, N) or a stack (Z, K, N), got shape {b.shape}")
    K, N = b.shape[-2:]
    nr = tile_cols(b.dtype)
    nb = -(-N // nr)
    out = np.zeros((*b.shape[:-2], nb, K, nr), b.dtype)
    for j in range(nb):
        cols = b[..., j * nr:(j + 1) * nr]
        out[..., j, :, :cols.shape[-1]] = cols
    return out


def matmul(a, b, out, kc: int = KC, group: int = GROUP):
    """``out = a . B`` for float arrays a (M, K) and out (M, N), b either B (K, N) itself or its
    panels ``pack(B)``; or a stack of such products: a (Z, M, K), out (Z, M, N), b (Z, K, N) or
    ``pack`` of it. All C-contiguous, one dtype (float32 or float64). By register blocks, on
    numba's threads. Panels suit a B used many times (a filter, packed once); a B made for one
    product (a conv's unfolded columns) is read in place, its rows ``N`` values apart.
    ``kc`` and ``group``: the k-block length and row blocks per task (``KC``, ``GROUP``; other
    values for tests and ``benchmarks/tiles_ab.py``). Returns ``out``."""
    if int(kc) < 1 or int(group) < 1:
        raise ValueError(f"_tiles.matmul: kc and group must be at least 1, got {kc} and {group}")
    packed = b.ndim == a.ndim + 1
    if not (a.ndim == out.ndim and a.ndim in (2, 3) and (packed or b.ndim == a.ndim)):
        raise ValueError(f"_tiles.matmul: needs a (M, K), b (K, N) or packed (panels, K, width), out (M, N), or "
                         f"stacks of them; got shapes {a.shape}, {b.shape}, {out.shape}")
    Z = a.shape[0] if a.ndim == 3 else 1
    M, K = a.shape[-2:]
    N = out.shape[-1]
    if not (a.dtype == b.dtype == out.dtype and a.dtype in (np.float32, np.float64)):
        raise ValueError(f"_tiles.matmul: needs one dtype, float32 or float64, got {a.dtype}, {b.dtype}, {out.dtype}")
    nr = tile_cols(a.dtype)
    lead = a.shape[:-2]
    want = (*lead, -(-N // nr), K, nr) if packed else (*lead, K, N)
    if b.shape != want or out.shape != (*lead, M, N):
        raise ValueError(f"_tiles.matmul: shapes {a.shape} . {'packed ' if packed else ''}{b.shape} -> {out.shape} "
                         "do not match")
    if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("_tiles.matmul: needs C-contiguous operands")
    if out.size == 0:
        return out
    # one specialisation for both forms of B: (Z, rows, columns)
    a3, out3 = (a[None], out[None]) if a.ndim == 2 else (a, out)
    b3 = b.reshape(Z, -(-N // nr) * K, nr) if packed else b.reshape(Z, K, N)
    _threads.run(_product, a3, b3, out3, nr, int(kc), int(group), packed, work=Z * M * max(K, 1) * N // 64)
    return out
