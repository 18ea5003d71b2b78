// conv.cu: the data movement and epilogues around cuBLAS for 2-D convolution, transposed
// convolution and the fully connected layer, NCHW. The reference is
// minicnn/backends/numpy/conv.py (im2col, col2im, conv2d_forward, conv2d_backward) and
// conv_transpose.py / linear.py, which use the same pieces. The GEMMs themselves run in cuBLAS
// (cupy.matmul); the implicit-GEMM forward, which needs no column buffer, is in conv_igemm.cu.
// Every kernel has an _f32 and an _f64 entry point around one templated body (CONV_STAMP below,
// stamped by common.cuh's MINICNN_STAMP_F32_F64); 1-D launches loop with a grid stride.
//
// Column layout. A chunk of nb images is unfolded into columns: entry (n, c, r, s, p, q), with
// c = g*Cg + cg in group g, sits at
//     n*sN + g*sG + ((cg*R + r)*S + s)*sRow + p*Q + q
// so one kernel writes both layouts the ops need:
//   "per image"  (nb, G, Cg*R*S, P*Q): sN = G*Cg*R*S*P*Q, sG = Cg*R*S*P*Q, sRow = P*Q. The
//                forward's batched GEMM W_g @ cols[n, g] writes y[n] in place.
//   "per group"  (G, Cg*R*S, nb, P*Q): sN = P*Q, sG = Cg*R*S*nb*P*Q, sRow = nb*P*Q. The batch
//                joins the GEMM's inner dimension, so dW_g = dY_g @ cols_g^T is one GEMM per group
//                (the reference's einsum over n and l).
//
// im2col_{f32,f64}(x, cols, total, C, H, W, Cg, R, S, P, Q, sh, sw, ph, pw, dh, dw, sN, sG, sRow)
//     thread -> one column entry, flat t over (n, c, r, s, p, q), q fastest (total =
//     nb*C*R*S*P*Q); it reads x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw], 0 in the padding.
//     Replaces im2col's loop over (r, s) copying strided slices of the zero-padded input. P and Q
//     are arguments, not derived: the transposed convolution's backward unfolds dy on x's
//     (H, W) grid, the reference's `im2col(dy)[..., :H, :W]`.
// col2im_{f32,f64}(cols, x, total, C, H, W, Cg, R, S, P, Q, sh, sw, ph, pw, dh, dw, sN, sG, sRow)
//     thread -> one input pixel (n, c, h, w) (total = nb*C*H*W): the sum of every column entry
//     unfolded from it, over r then s as the reference's scatter-add `dxp[...] += cols[:, :, r, s]`
//     adds them; tap (r, s) saw it from output (p, q) when h + ph - r*dh = p*sh with 0 <= p < P
//     (likewise q). A gather: no atomics, the same sum in the same order on every run.
// conv_epilogue_{f32,f64}(y, bias, residual, total, K, L, has_bias, has_residual, relu)
//     thread i -> y[i] = max?(y[i] + bias[(i / L) % K] + residual[i], 0), y viewed as (N, K, L),
//     in place: the reference's `y += b`, `y += residual`, `np.maximum(y, 0)`, in that order (a
//     NaN stays NaN through the ReLU, as np.maximum). Also the bias add of linear_forward (L = 1).
// channel_sum_{f32,f64}(dy, out, N, K, L)
//     block k (grid (K,), 256 threads) -> out[k] = sum over n < N, l < L of dy[n, k, l]: each
//     thread adds a strided share, then a tree in shared memory. The bias gradients: conv's
//     `dy.sum(axis=(0, 2, 3))`, linear's `dy.sum(axis=0)` (L = 1).
// add_inplace_{f32,f64}(a, b, n)
//     thread i -> a[i] += b[i]: adds one batch chunk's filter gradient to the running total.
#include "common.cuh"

#define CONV_REDUCE_THREADS 256

template <typename T>
__device__ void im2col_body(const T* __restrict__ x, T* __restrict__ cols, i64 total, int C, int H, int W, int Cg,
                            int R, int S, int P, int Q, int sh, int sw, int ph, int pw, int dh, int dw, i64 sN,
                            i64 sG, i64 sRow) {
    for (i64 t = global_index_1d(); t < total; t += global_stride_1d()) {
        const int q = (int)(t % Q);
        i64 u = t / Q;
        const int p = (int)(u % P);
        u /= P;
        const int s = (int)(u % S);
        u /= S;
        const int r = (int)(u % R);
        u /= R;
        const int c = (int)(u % C);
        const i64 n = u / C;
        const int g = c / Cg, cg = c - g * Cg;
        const int h = p * sh - ph + r * dh, w = q * sw - pw + s * dw;
        T v = (T)0;
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[((n * C + c) * H + h) * (i64)W + w];
        cols[n * sN + g * sG + ((i64)(cg * R + r) * S + s) * sRow + (i64)p * Q + q] = v;
    }
}

template <typename T>
__device__ void col2im_body(const T* __restrict__ cols, T* __restrict__ x, i64 total, int C, int H, int W, int Cg,
                            int R, int S, int P, int Q, int sh, int sw, int ph, int pw, int dh, int dw, i64 sN,
                            i64 sG, i64 sRow) {
    for (i64 t = global_index_1d(); t < total; t += global_stride_1d()) {
        const int w = (int)(t % W);
        i64 u = t / W;
        const int h = (int)(u % H);
        u /= H;
        const int c = (int)(u % C);
        const i64 n = u / C;
        const int g = c / Cg, cg = c - g * Cg;
        const T* base = cols + n * sN + g * sG;
        T acc = (T)0;
        for (int r = 0; r < R; ++r) {
            const int hp = h + ph - r * dh;
            if (hp < 0 || hp % sh != 0) continue;
            const int p = hp / sh;
            if (p >= P) continue;
            for (int s = 0; s < S; ++s) {
                const int wp = w + pw - s * dw;
                if (wp < 0 || wp % sw != 0) continue;
                const int q = wp / sw;
                if (q >= Q) continue;
                acc += base[((i64)(cg * R + r) * S + s) * sRow + (i64)p * Q + q];
            }
        }
        x[t] = acc;
    }
}

template <typename T>
__device__ void conv_epilogue_body(T* __restrict__ y, const T* __restrict__ bias, const T* __restrict__ residual,
                                   i64 total, int K, i64 L, int has_bias, int has_residual, int relu) {
    for (i64 i = global_index_1d(); i < total; i += global_stride_1d()) {
        T v = y[i];
        if (has_bias) v += bias[(int)((i / L) % K)];
        if (has_residual) v += residual[i];
        if (relu && v < (T)0) v = (T)0;  // a NaN fails the test and stays, as np.maximum(y, 0)
        y[i] = v;
    }
}

template <typename T>
__device__ void channel_sum_body(const T* __restrict__ dy, T* __restrict__ out, int N, int K, i64 L, T* partial) {
    const int k = blockIdx.x;
    const i64 count = (i64)N * L;
    T acc = (T)0;
    for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
        const i64 n = e / L, l = e - n * L;
        acc += dy[(n * K + k) * L + l];
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int half = CONV_REDUCE_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[k] = partial[0];
}

template <typename T>
__device__ void add_inplace_body(T* __restrict__ a, const T* __restrict__ b, i64 n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) a[i] += b[i];
}

#define CONV_STAMP(SUF, T)                                                                                           \
    extern "C" __global__ void im2col_##SUF(const T* __restrict__ x, T* __restrict__ cols, i64 total, int C, int H,  \
                                            int W, int Cg, int R, int S, int P, int Q, int sh, int sw, int ph,      \
                                            int pw, int dh, int dw, i64 sN, i64 sG, i64 sRow) {                      \
        im2col_body<T>(x, cols, total, C, H, W, Cg, R, S, P, Q, sh, sw, ph, pw, dh, dw, sN, sG, sRow);               \
    }                                                                                                                \
    extern "C" __global__ void col2im_##SUF(const T* __restrict__ cols, T* __restrict__ x, i64 total, int C, int H,  \
                                            int W, int Cg, int R, int S, int P, int Q, int sh, int sw, int ph,      \
                                            int pw, int dh, int dw, i64 sN, i64 sG, i64 sRow) {                      \
        col2im_body<T>(cols, x, total, C, H, W, Cg, R, S, P, Q, sh, sw, ph, pw, dh, dw, sN, sG, sRow);               \
    }                                                                                                                \
    extern "C" __global__ void conv_epilogue_##SUF(T* __restrict__ y, const T* __restrict__ bias,                    \
                                                   const T* __restrict__ residual, i64 total, int K, i64 L,          \
                                                   int has_bias, int has_residual, int relu) {                       \
        conv_epilogue_body<T>(y, bias, residual, total, K, L, has_bias, has_residual, relu);                         \
    }                                                                                                                \
    extern "C" __global__ void channel_sum_##SUF(const T* __restrict__ dy, T* __restrict__ out, int N, int K, i64 L) { \
        __shared__ T partial[CONV_REDUCE_THREADS];                                                                   \
        channel_sum_body<T>(dy, out, N, K, L, partial);                                                              \
    }                                                                                                                \
    extern "C" __global__ void add_inplace_##SUF(T* __restrict__ a, const T* __restrict__ b, i64 n) {                \
        add_inplace_body<T>(a, b, n);                                                                                \
    }

MINICNN_STAMP_F32_F64(CONV_STAMP)
