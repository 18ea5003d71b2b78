// conv_igemm.cu: the implicit-GEMM forward convolution, NCHW, with the inference epilogue fused.
// The reference is minicnn/backends/numpy/conv.py: conv2d_forward's `W_g @ im2col(x)_g + b` and
// conv2d_fused_forward's residual add and ReLU. Per group g the convolution is the GEMM
//     y_g[k, j] = sum_{crs} W_g[k, crs] * X_g[crs, j],   k < Kg, crs < Cg*R*S, j < N*P*Q
// where X_g is the im2col matrix: column j = (n, p, q), row crs = (c, r, s), entry
// x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] (0 in the padding). Here X_g is never
// stored: each block gathers the slice of it that it needs straight from x into shared memory
// ("implicit"), so there is no column buffer and no separate epilogue pass over y.
//
// Versions (each a conv_variants entry of backends/cupy/conv.py; the host picks by shape, dtype
// and precision mode, see conv.pick_forward):
//
// 1. conv_igemm_{f32,f64}(x, w, bias, residual, y, N, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, ph,
//                         pw, dh, dw, has_bias, has_residual, relu)
//    grid (ceil(N*P*Q / 64), ceil(Kg / 64), G), 256 threads (16 x 16). Block (bx, by, g) owns
//    the 64 x 64 output tile of group g: filters k0 = 64*by .. +64, columns j0 = 64*bx .. +64.
//    The inner dimension Cg*R*S is walked 8 at a time: the block stages an 8 x 64 slice of W_g
//    (transposed, As[kk][m]) and an 8 x 64 slice of X_g (Bs[kk][j], gathered from x) in shared
//    memory, each thread loading 2 + 2 elements, then thread (tx, ty) accumulates its 4 x 4
//    register tile: filters k0 + ty + 16*i, columns j0 + tx + 16*jj (i, jj < 4), so neighbouring
//    threads read neighbouring shared words and write neighbouring outputs (along q). The
//    slices are double-buffered: the next step's loads wait in registers while this step is
//    multiplied. Tiles that overhang Kg, N*P*Q or Cg*R*S load zeros and store nothing.
//    Epilogue per output, in the reference's order: acc + bias[k], + residual, then ReLU (a NaN
//    stays). Accumulates in the storage type (float for f32, as cuBLAS sgemm and the reference do).
//
// 2. conv_igemm128_{f32,f64}(...same)
//    version 1 with 128 x 128 block tiles and an 8 x 8 register tile per thread (256 threads,
//    4 + 4 staged elements each): twice the multiply-adds per shared-memory read, for layers
//    with many filters and outputs; a quarter as many blocks, so small layers leave SMs idle.
//
// 3. conv_igemm_tf32(x, w, bias, residual, y, ...same)   float32 only, sm_80+
//    version 1's 64 x 64 tiles on tensor cores: grid (ceil(N*P*Q / 64), ceil(Kg / 64), G), 128 threads =
//    4 warps; warp v computes the 32 x 32 sub-tile at rows 32*(v % 2), columns 32*(v / 2) as
//    2 x 4 mma.sync.m16n8k8 (tf32 inputs, f32 accumulators; 32 floats per thread). Operands are
//    rounded to tf32 (cvt.rna) as they are staged; shared rows are padded by 8 words so that the
//    fragment loads (lane -> row lane/4, column lane%4) hit 32 different banks. Fragment layout
//    (PTX ISA, mma.m16n8k8 .tf32): with gid = lane/4, tig = lane%4, A regs a0..a3 hold
//    A[gid][tig], A[gid+8][tig], A[gid][tig+4], A[gid+8][tig+4]; B regs b0, b1 hold B[tig][gid],
//    B[tig+4][gid]; C regs c0..c3 hold C[gid][2tig], C[gid][2tig+1], C[gid+8][2tig],
//    C[gid+8][2tig+1]. The emulator cannot run PTX, so there mma_tf32 below computes the same
//    fragment product with warp shuffles (each lane fetches the A row and B columns it needs
//    from the lanes holding them): the emulator checks the fragment bookkeeping, the GPU runs
//    the instruction.
//
// 4. conv_igemm_bf16(xh, wh, bias, residual, y, ...same)
//    version 3's tiles and warps on bfloat16 operands: xh and wh are bfloat16 copies of x and w
//    (unsigned short bit patterns, rounded by to_bf16_f32 below), each warp 2 x 4
//    mma.sync.m16n8k16 (bf16 inputs, f32 accumulators) per 16-deep K step; float bias, residual
//    and output. Products of 8-bit mantissas are exact in float32, so the result is the float32
//    sum of the rounded operands' products; relative errors near 1e-2 of the exact convolution
//    (the "bf16" precision mode). Shared slices are stored k-contiguous (As[m][k], Bs[j][k], rows
//    padded to 24 halves) so that each fragment register is one pair of neighbouring halves and
//    the 32 lanes' pairs fall in 32 different banks. Fragment layout (PTX ISA, m16n8k16 .bf16):
//    A regs a0..a3 hold the pairs A[gid][2tig..+1], A[gid+8][2tig..+1], A[gid][2tig+8..+9],
//    A[gid+8][2tig+8..+9]; B regs b0, b1 hold B[2tig..+1][gid], B[2tig+8..+9][gid]; the lower
//    index in the low half; C as version 3. On the emulator mma_bf16 computes the same product
//    from warp shuffles, as mma_tf32 does. The bit conversions are written out instead of
//    cuda_bf16.h so that the emulator runs the same code.
//
// Versions 3 and 4 differ only in the operand type, the K step and the shared layout; the block
// and warp placement (tc_place), the accumulators (tc_clear) and the fused epilogue from the C
// fragments (tc_store) are one definition for both.
//
// to_bf16_f32(x, h, n): thread i (grid-stride) -> h[i] = x[i] rounded to bfloat16, to nearest,
//    ties to even (NaN stays a quiet NaN), as __float2bfloat16_rn.
#include "common.cuh"

#define IG_BM 64  // filters per block tile
#define IG_BN 64  // output columns (n, p, q) per block tile
#define IG_BK 8   // inner-dimension (c, r, s) step staged in shared memory
#define TC_PAD 8  // shared row padding of the tensor-core version (bank-conflict-free fragments)

typedef unsigned short bf16_bits;

__device__ __forceinline__ unsigned int ig_float_bits(float f) {
#ifdef MINICNN_EMULATE
    return __builtin_bit_cast(unsigned int, f);
#else
    return __float_as_uint(f);
#endif
}

__device__ __forceinline__ float ig_bits_float(unsigned int u) {
#ifdef MINICNN_EMULATE
    return __builtin_bit_cast(float, u);
#else
    return __uint_as_float(u);
#endif
}

// the geometry every version takes, gathered once per launch
struct IgGeom {
    int N, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, ph, pw, dh, dw;
};

// Column j of X_g: image n, top-left input corner (h0, w0); valid is false past N*P*Q.
struct IgColumn {
    i64 n;
    int h0, w0;
    bool valid;
};

__device__ __forceinline__ IgColumn ig_column(const IgGeom& G, i64 j) {
    IgColumn c;
    const i64 PQ = (i64)G.P * G.Q;
    c.valid = j < (i64)G.N * PQ;
    if (!c.valid) j = 0;
    c.n = j / PQ;
    const int pq = (int)(j - c.n * PQ);
    const int p = pq / G.Q, q = pq - (pq / G.Q) * G.Q;
    c.h0 = p * G.sh - G.ph;
    c.w0 = q * G.sw - G.pw;
    return c;
}

// X_g[crs, column]: the input pixel tap (c, r, s) of group g sees from the column, 0 in the padding
template <typename S>
__device__ __forceinline__ S ig_gather(const S* __restrict__ x, const IgGeom& G, int g, const IgColumn& col, int crs,
                                       int CRS) {
    if (!col.valid || crs >= CRS) return (S)0;
    const int RS = G.R * G.S;
    const int c = crs / RS, rs = crs - c * RS;
    const int r = rs / G.S, s = rs - r * G.S;
    const int h = col.h0 + r * G.dh, w = col.w0 + s * G.dw;
    if (h < 0 || h >= G.H || w < 0 || w >= G.W) return (S)0;
    return x[((col.n * G.C + (i64)g * G.Cg + c) * G.H + h) * (i64)G.W + w];
}

// the fused epilogue of output (filter m of group g, column j), in the reference's order
template <typename T>
__device__ __forceinline__ void ig_store(T* __restrict__ y, const T* __restrict__ bias, const T* __restrict__ residual,
                                         const IgGeom& G, int g, int m, i64 j, T acc, int has_bias, int has_residual,
                                         int relu) {
    const i64 PQ = (i64)G.P * G.Q;
    const i64 n = j / PQ, pq = j - n * PQ;
    const int k = g * G.Kg + m;
    const i64 o = (n * G.K + k) * PQ + pq;
    T v = acc;
    if (has_bias) v += bias[k];
    if (has_residual) v += residual[o];
    if (relu && v < (T)0) v = (T)0;
    y[o] = v;
}

// ---- versions 1 and 2: CUDA cores, a TM x TN register tile per thread ----------------------

// One block computes the BM x BN tile of group g at filters m0.., columns j0..; NT threads, thread
// (tx, ty) = (t % (BN/TN), t / (BN/TN)) owns filters m0 + ty + (BM/TM)*i and columns
// j0 + tx + (BN/TN)*jj. Shared slices are double-buffered: the next K step's global loads go to
// registers while the current one is multiplied, then to the other buffer, so one
// __syncthreads per K step suffices (no thread writes a buffer another may still read).
template <typename S, typename T, int BM, int BN, int TM, int TN>
__device__ void conv_igemm_body(const S* __restrict__ x, const S* __restrict__ w, const T* __restrict__ bias,
                                const T* __restrict__ residual, T* __restrict__ y, const IgGeom G, int has_bias,
                                int has_residual, int relu, T (*As)[IG_BK][BM], T (*Bs)[IG_BK][BN]) {
    constexpr int NT = (BM / TM) * (BN / TN);
    constexpr int LA = IG_BK * BM / NT, LB = IG_BK * BN / NT;  // elements each thread stages per K step
    static_assert(NT % IG_BK == 0 && NT % BN == 0 && LA * NT == IG_BK * BM && LB * NT == IG_BK * BN,
                  "tile shape and thread count do not divide");
    const int g = blockIdx.z;
    const int m0 = blockIdx.y * BM;
    const i64 j0 = (i64)blockIdx.x * BN;
    const int t = threadIdx.x, tx = t % (BN / TN), ty = t / (BN / TN);
    const int CRS = G.Cg * G.R * G.S;
    // staging roles, fixed for the whole loop: A elements (kk = t % 8, m = t / 8 + (NT/8)*h), so
    // neighbouring threads read neighbouring filter taps; B column t % BN, rows t / BN + (NT/BN)*h
    const int a_kk = t % IG_BK, a_m = t / IG_BK;
    const int b_j = t % BN, b_kk = t / BN;
    const IgColumn col = ig_column(G, j0 + b_j);
    const S* wg = w + (i64)g * G.Kg * CRS;
    T ra[LA], rb[LB];

    T acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int jj = 0; jj < TN; ++jj) acc[i][jj] = (T)0;

    int buf = 0;
    for (int k0 = 0; k0 < CRS; k0 += IG_BK) {
        if (k0 == 0) {  // the first slice: straight to shared memory
            for (int h = 0; h < LA; ++h) {
                const int m = a_m + (NT / IG_BK) * h, crs = a_kk;
                As[0][a_kk][m] = (m0 + m < G.Kg && crs < CRS) ? (T)(wg[(i64)(m0 + m) * CRS + crs]) : (T)0;
            }
            for (int h = 0; h < LB; ++h) {
                const int kk = b_kk + (NT / BN) * h;
                Bs[0][kk][b_j] = (T)(ig_gather(x, G, g, col, kk, CRS));
            }
            __syncthreads();
        }
        const int k1 = k0 + IG_BK;
        const bool more = k1 < CRS;
        if (more) {  // the next slice, into registers while this one is multiplied
            for (int h = 0; h < LA; ++h) {
                const int m = a_m + (NT / IG_BK) * h, crs = k1 + a_kk;
                ra[h] = (m0 + m < G.Kg && crs < CRS) ? (T)(wg[(i64)(m0 + m) * CRS + crs]) : (T)0;
            }
            for (int h = 0; h < LB; ++h) rb[h] = (T)(ig_gather(x, G, g, col, k1 + b_kk + (NT / BN) * h, CRS));
        }
        for (int kk = 0; kk < IG_BK; ++kk) {
            T a[TM], b[TN];
            for (int i = 0; i < TM; ++i) a[i] = As[buf][kk][ty + (BM / TM) * i];
            for (int jj = 0; jj < TN; ++jj) b[jj] = Bs[buf][kk][tx + (BN / TN) * jj];
            for (int i = 0; i < TM; ++i)
                for (int jj = 0; jj < TN; ++jj) acc[i][jj] += a[i] * b[jj];
        }
        if (more) {
            for (int h = 0; h < LA; ++h) As[buf ^ 1][a_kk][a_m + (NT / IG_BK) * h] = ra[h];
            for (int h = 0; h < LB; ++h) Bs[buf ^ 1][b_kk + (NT / BN) * h][b_j] = rb[h];
            __syncthreads();
            buf ^= 1;
        }
    }
    const i64 NPQ = (i64)G.N * G.P * G.Q;
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty + (BM / TM) * i;
        if (m >= G.Kg) continue;
        for (int jj = 0; jj < TN; ++jj) {
            const i64 j = j0 + tx + (BN / TN) * jj;
            if (j < NPQ) ig_store(y, bias, residual, G, g, m, j, acc[i][jj], has_bias, has_residual, relu);
        }
    }
}

#define IG_STAMP(NAME, SIN, TOUT, BM, BN, TM, TN)                                                             \
    extern "C" __global__ void NAME(const SIN* __restrict__ x, const SIN* __restrict__ w,                      \
                                    const TOUT* __restrict__ bias, const TOUT* __restrict__ residual,          \
                                    TOUT* __restrict__ y, int N, int C, int H, int W, int K, int Cg, int Kg,    \
                                    int R, int S, int P, int Q, int sh, int sw, int ph, int pw, int dh, int dw, \
                                    int has_bias, int has_residual, int relu) {                                \
        __shared__ TOUT As[2][IG_BK][BM];                                                                     \
        __shared__ TOUT Bs[2][IG_BK][BN];                                                                     \
        conv_igemm_body<SIN, TOUT, BM, BN, TM, TN>(                                                           \
            x, w, bias, residual, y, IgGeom{N, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, ph, pw, dh, dw},        \
            has_bias, has_residual, relu, As, Bs);                                                            \
    }

IG_STAMP(conv_igemm_f32, float, float, 64, 64, 4, 4)
IG_STAMP(conv_igemm_f64, double, double, 64, 64, 4, 4)
IG_STAMP(conv_igemm128_f32, float, float, 128, 128, 8, 8)
IG_STAMP(conv_igemm128_f64, double, double, 128, 128, 8, 8)

// ---- float32 -> bfloat16 ----------------------------------------------------------------------

extern "C" __global__ void to_bf16_f32(const float* __restrict__ x, bf16_bits* __restrict__ h, i64 n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        const unsigned int u = ig_float_bits(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            h[i] = (bf16_bits)((u >> 16) | 0x0040u);  // NaN: keep the sign, make it quiet
        } else {
            h[i] = (bf16_bits)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // nearest, ties to even
        }
    }
}

// ---- versions 3 and 4: what the tensor-core kernels share ------------------------------------------

// Where a thread of a tensor-core block works: 128 threads = 4 warps over the IG_BM x IG_BN tile of
// group g at filters m0.., columns j0..; warp v owns the 32 x 32 sub-tile at rows wm = 32*(v % 2),
// columns wn = 32*(v / 2), as 2 x 4 mma tiles of 16 x 8; gid = lane / 4 and tig = lane % 4 place
// the lane in the fragments (the layouts in the header). Read it with a structured binding:
// ``const auto [g, m0, j0, t, gid, tig, wm, wn] = tc_place();``
struct TcPlace {
    int g, m0;
    i64 j0;
    int t, gid, tig, wm, wn;
};

__device__ __forceinline__ TcPlace tc_place() {
    TcPlace c;
    c.g = blockIdx.z;
    c.m0 = blockIdx.y * IG_BM;
    c.j0 = (i64)blockIdx.x * IG_BN;
    c.t = threadIdx.x;
    const int lane = c.t % 32, warp = c.t / 32;
    c.gid = lane / 4;
    c.tig = lane % 4;
    c.wm = 32 * (warp % 2);
    c.wn = 32 * (warp / 2);
    return c;
}

// a warp's 2 x 4 accumulator fragments (4 floats per lane each), set to 0
__device__ __forceinline__ void tc_clear(float (&acc)[2][4][4]) {
    for (int mt = 0; mt < 2; ++mt)
        for (int nt = 0; nt < 4; ++nt)
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
}

// the fused epilogue of a warp's sub-tile at filters m0.., columns j0..: c[e] of mma tile (mt, nt)
// is output row 16*mt + gid + 8*(e / 2), column 8*nt + 2*tig + e % 2; outputs past Kg or N*P*Q are
// not stored
__device__ __forceinline__ void tc_store(float* __restrict__ y, const float* __restrict__ bias,
                                         const float* __restrict__ residual, const IgGeom& G, int g, int m0, i64 j0,
                                         int gid, int tig, const float (&acc)[2][4][4], int has_bias,
                                         int has_residual, int relu) {
    const i64 NPQ = (i64)G.N * G.P * G.Q;
    for (int mt = 0; mt < 2; ++mt) {
        for (int nt = 0; nt < 4; ++nt) {
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + 16 * mt + gid + 8 * (e / 2);
                const i64 j = j0 + 8 * nt + 2 * tig + (e % 2);
                if (m < G.Kg && j < NPQ)
                    ig_store(y, bias, residual, G, g, m, j, acc[mt][nt][e], has_bias, has_residual, relu);
            }
        }
    }
}

// ---- version 3: TF32 tensor cores ---------------------------------------------------------------

// x rounded to tf32 (10-bit mantissa), to nearest with ties away from zero, as cvt.rna.tf32.f32
__device__ __forceinline__ float ig_to_tf32(float v) {
#ifdef MINICNN_EMULATE
    unsigned int u = ig_float_bits(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // inf and NaN pass unchanged
    return ig_bits_float(u);
#else
    unsigned int u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
    return __uint_as_float(u);
#endif
}

// c[0..3] += A (16 x 8, fragments a[0..3]) @ B (8 x 8, fragments b[0..1]), one warp (layout above)
__device__ __forceinline__ void mma_tf32(float* c, const float* a, const float* b) {
#ifdef MINICNN_EMULATE
    const int lane = (int)(threadIdx.x % 32), gid = lane / 4, tig = lane % 4;
    for (int k = 0; k < 8; ++k) {
        const int lo = k < 4;  // the same for every lane: all 32 take part in each shuffle
        const float a_top = __shfl_sync(0xffffffffu, lo ? a[0] : a[2], gid * 4 + (k & 3));
        const float a_bot = __shfl_sync(0xffffffffu, lo ? a[1] : a[3], gid * 4 + (k & 3));
        const float b_even = __shfl_sync(0xffffffffu, lo ? b[0] : b[1], (2 * tig) * 4 + (k & 3));
        const float b_odd = __shfl_sync(0xffffffffu, lo ? b[0] : b[1], (2 * tig + 1) * 4 + (k & 3));
        c[0] += a_top * b_even;
        c[1] += a_top * b_odd;
        c[2] += a_bot * b_even;
        c[3] += a_bot * b_odd;
    }
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#endif
}

extern "C" __global__ void conv_igemm_tf32(const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ bias, const float* __restrict__ residual,
                                           float* __restrict__ y, int N, int C, int H, int W, int K, int Cg, int Kg,
                                           int R, int S, int P, int Q, int sh, int sw, int ph, int pw, int dh, int dw,
                                           int has_bias, int has_residual, int relu) {
    __shared__ float As[IG_BK][IG_BM + TC_PAD];
    __shared__ float Bs[IG_BK][IG_BN + TC_PAD];
    const IgGeom G{N, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, ph, pw, dh, dw};
    const auto [g, m0, j0, t, gid, tig, wm, wn] = tc_place();
    const int CRS = Cg * R * S;
    // staging roles: A element (kk = e % 8, m = e / 8) for e = t + 128*h; B column t % 64, rows t / 64 + 2*h
    const int a_kk = t % IG_BK, a_m = t / IG_BK;
    const int b_j = t % IG_BN, b_kk = t / IG_BN;
    const IgColumn col = ig_column(G, j0 + b_j);
    const float* wg = w + (i64)g * Kg * CRS;

    float acc[2][4][4];
    tc_clear(acc);

    for (int k0 = 0; k0 < CRS; k0 += IG_BK) {
        for (int h = 0; h < 4; ++h) {
            const int m = a_m + 16 * h, crs = k0 + a_kk;
            As[a_kk][m] = ig_to_tf32((m0 + m < Kg && crs < CRS) ? wg[(i64)(m0 + m) * CRS + crs] : 0.0f);
            const int kk = b_kk + 2 * h;
            Bs[kk][b_j] = ig_to_tf32(ig_gather(x, G, g, col, k0 + kk, CRS));
        }
        __syncthreads();
        float a[2][4], b[4][2];
        for (int mt = 0; mt < 2; ++mt) {
            const int r0 = wm + 16 * mt + gid;
            a[mt][0] = As[tig][r0];
            a[mt][1] = As[tig][r0 + 8];
            a[mt][2] = As[tig + 4][r0];
            a[mt][3] = As[tig + 4][r0 + 8];
        }
        for (int nt = 0; nt < 4; ++nt) {
            const int c0 = wn + 8 * nt + gid;
            b[nt][0] = Bs[tig][c0];
            b[nt][1] = Bs[tig + 4][c0];
        }
        for (int mt = 0; mt < 2; ++mt)
            for (int nt = 0; nt < 4; ++nt) mma_tf32(acc[mt][nt], a[mt], b[nt]);
        __syncthreads();
    }
    tc_store(y, bias, residual, G, g, m0 + wm, j0 + wn, gid, tig, acc, has_bias, has_residual, relu);
}

// ---- version 4: bfloat16 tensor cores ------------------------------------------------------------

#define BF_BK 16  // K step of mma.m16n8k16
#define BF_LD (BF_BK + 8)  // shared row length in halves: 12 words, so fragment pairs miss each other's banks

// the 32-bit fragment register holding halves lo (low 16 bits) and hi
__device__ __forceinline__ unsigned int bf_pair(bf16_bits lo, bf16_bits hi) {
    return (unsigned int)lo | ((unsigned int)hi << 16);
}

// the pair p[0] (low half), p[1] as one fragment register; p is 4-byte aligned (an even offset
// into a shared array aligned to 16)
__device__ __forceinline__ unsigned int bf_load_pair(const bf16_bits* p) {
#ifdef MINICNN_EMULATE
    return bf_pair(p[0], p[1]);
#else
    return *reinterpret_cast<const unsigned int*>(p);
#endif
}

__device__ __forceinline__ float bf_widen(unsigned int half) { return ig_bits_float(half << 16); }

// c[0..3] += A (16 x 16, fragments a[0..3]) @ B (16 x 8, fragments b[0..1]), bf16 in, f32 accumulate
__device__ __forceinline__ void mma_bf16(float* c, const unsigned int* a, const unsigned int* b) {
#ifdef MINICNN_EMULATE
    const int lane = (int)(threadIdx.x % 32), gid = lane / 4, tig = lane % 4;
    for (int kp = 0; kp < 8; ++kp) {  // k = 2*kp and 2*kp + 1, one register per lane
        const int lo = kp < 4;        // the same for every lane: all 32 take part in each shuffle
        const unsigned int a_top = __shfl_sync(0xffffffffu, lo ? a[0] : a[2], gid * 4 + (kp & 3));
        const unsigned int a_bot = __shfl_sync(0xffffffffu, lo ? a[1] : a[3], gid * 4 + (kp & 3));
        const unsigned int b_even = __shfl_sync(0xffffffffu, lo ? b[0] : b[1], (2 * tig) * 4 + (kp & 3));
        const unsigned int b_odd = __shfl_sync(0xffffffffu, lo ? b[0] : b[1], (2 * tig + 1) * 4 + (kp & 3));
        for (int half = 0; half < 2; ++half) {
            const int sh = 16 * half;
            const float at = bf_widen((a_top >> sh) & 0xffffu), ab = bf_widen((a_bot >> sh) & 0xffffu);
            const float be = bf_widen((b_even >> sh) & 0xffffu), bo = bf_widen((b_odd >> sh) & 0xffffu);
            c[0] += at * be;
            c[1] += at * bo;
            c[2] += ab * be;
            c[3] += ab * bo;
        }
    }
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

extern "C" __global__ void conv_igemm_bf16(const bf16_bits* __restrict__ x, const bf16_bits* __restrict__ w,
                                           const float* __restrict__ bias, const float* __restrict__ residual,
                                           float* __restrict__ y, int N, int C, int H, int W, int K, int Cg, int Kg,
                                           int R, int S, int P, int Q, int sh, int sw, int ph, int pw, int dh, int dw,
                                           int has_bias, int has_residual, int relu) {
    __shared__ __align__(16) bf16_bits As[IG_BM][BF_LD];
    __shared__ __align__(16) bf16_bits Bs[IG_BN][BF_LD];
    const IgGeom G{N, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, ph, pw, dh, dw};
    const auto [g, m0, j0, t, gid, tig, wm, wn] = tc_place();
    const int CRS = Cg * R * S;
    // staging roles: A element (k = t % 16, m = t / 16 + 8*h), B column t % 64, rows t / 64 + 2*h (h < 8)
    const int a_k = t % BF_BK, a_m = t / BF_BK;
    const int b_j = t % IG_BN, b_k = t / IG_BN;
    const IgColumn col = ig_column(G, j0 + b_j);
    const bf16_bits* wg = w + (i64)g * Kg * CRS;

    float acc[2][4][4];
    tc_clear(acc);

    for (int k0 = 0; k0 < CRS; k0 += BF_BK) {
        for (int h = 0; h < 8; ++h) {
            const int m = a_m + 8 * h, crs = k0 + a_k;
            As[m][a_k] = (m0 + m < Kg && crs < CRS) ? wg[(i64)(m0 + m) * CRS + crs] : (bf16_bits)0;
            const int k = b_k + 2 * h;
            Bs[b_j][k] = ig_gather(x, G, g, col, k0 + k, CRS);
        }
        __syncthreads();
        unsigned int a[2][4], b[4][2];
        for (int mt = 0; mt < 2; ++mt) {
            const int r0 = wm + 16 * mt + gid;
            a[mt][0] = bf_load_pair(&As[r0][2 * tig]);
            a[mt][1] = bf_load_pair(&As[r0 + 8][2 * tig]);
            a[mt][2] = bf_load_pair(&As[r0][2 * tig + 8]);
            a[mt][3] = bf_load_pair(&As[r0 + 8][2 * tig + 8]);
        }
        for (int nt = 0; nt < 4; ++nt) {
            const int c0 = wn + 8 * nt + gid;
            b[nt][0] = bf_load_pair(&Bs[c0][2 * tig]);
            b[nt][1] = bf_load_pair(&Bs[c0][2 * tig + 8]);
        }
        for (int mt = 0; mt < 2; ++mt)
            for (int nt = 0; nt < 4; ++nt) mma_bf16(acc[mt][nt], a[mt], b[nt]);
        __syncthreads();
    }
    tc_store(y, bias, residual, G, g, m0 + wm, j0 + wn, gid, tig, acc, has_bias, has_residual, relu);
}
