// batchnorm.cu: batch normalisation over (N, H, W) per channel, train and eval, forward and
// backward, NCHW. The reference is minicnn/backends/numpy/batchnorm.py (derivation:
// docs/batchnorm.md). Each kernel has an _f32 and an _f64 entry point around one templated body,
// stamped by common.cuh's MINICNN_STAMP_F32_F64.
//
// Per-channel reductions (the reference's x.mean / x.var / dy.sum over axes (0, 2, 3)) run in two
// steps, so that a channel of millions of values still spreads over many blocks and the result
// does not depend on timing (no atomics):
//   1. bn_partial_*: a 1-D grid of C*G blocks of BN_BLOCK threads; block b reduces chunk
//      g = b % G of channel c = b / G, i.e. the flat positions m in [g*chunk, (g+1)*chunk) of the
//      channel's M = N*H*W values (m = n*HW + hw, read at x[(n*C + c)*HW + hw]: consecutive
//      threads read consecutive addresses). Each thread sums its strided share in double, then
//      the block sums the threads' values in shared memory (a tree over BN_BLOCK, a power of
//      two) and thread 0 writes part[c*G + g].
//   2. bn_stats / bn_grad_sums: one thread per channel adds its G partials in order.
// The chunk count G is a host decision (batchnorm.py `chunks`); the same (M, C) always takes the
// same G, so repeated runs agree bit for bit. Sums are kept in double for float32 data too: the
// statistics of a channel with a large mean and a small spread must not cancel (the variance is
// computed as the mean of (x - mean)^2 in a second pass, never as E[x^2] - E[x]^2).
//
// bn_partial_sum:    part1 = sum of x                      (pass 1 of the training statistics)
// bn_partial_sqdev:  part2 = sum of (x - mean)^2, the mean taken from pass 1's partials
// bn_stats:          mean = sum(part1) / M, var = sum(part2) / M (biased), rounded to T
// bn_train_forward:  one thread per element: y = (x - mean) / sqrt(var + eps) * gamma + beta
// bn_partial_grad:   part1 = sum of dy, part2 = sum of dy * xhat, xhat = (x - mean) * rstd,
//                    rstd = 1 / sqrt(var + eps) (batch statistics in training, the running ones
//                    in eval)
// bn_grad_sums:      dbeta = sum(part1), dgamma = sum(part2), rounded to T
// bn_train_dx:       one thread per element:
//                    dx = gamma * rstd / M * (M * dy - dbeta - xhat * dgamma)
// bn_eval_forward:   one thread per element: y = x * scale + shift,
//                    scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale
// bn_eval_dx:        one thread per element: dx = dy * (gamma * rstd)
// The element-wise kernels loop grid-stride over the flat (N, C, H, W) index; channel c = (e / HW) % C.
#include "common.cuh"

#define BN_BLOCK 256  // threads per reduction block; batchnorm.py launches with this many

__device__ __forceinline__ float bn_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double bn_sqrt(double v) { return sqrt(v); }

// the flat positions [m0, m1) of chunk g of a channel of M values
__device__ __forceinline__ void chunk_range(i64 g, i64 chunk, i64 M, i64* m0, i64* m1) {
    *m0 = g * chunk;
    *m1 = (g + 1) * chunk < M ? (g + 1) * chunk : M;
}

// ---- pass 1 and 2: per-channel sums of x and of (x - mean)^2 --------------------------------

template <typename T>
__device__ void bn_partial_sum_body(const T* __restrict__ x, double* __restrict__ part1, int C, i64 HW, i64 M,
                                    int G, i64 chunk, double* buf) {
    const int c = blockIdx.x / G, g = blockIdx.x % G;
    i64 m0, m1;
    chunk_range(g, chunk, M, &m0, &m1);
    double acc = 0.0;
    for (i64 m = m0 + threadIdx.x; m < m1; m += BN_BLOCK) {
        const i64 n = m / HW;
        acc += (double)x[(n * C + c) * HW + (m - n * HW)];
    }
    acc = block_sum(acc, buf);
    if (threadIdx.x == 0) part1[(i64)c * G + g] = acc;
}

#define BN_PARTIAL_SUM_ENTRY(SUF, T)                                                                                   \
    extern "C" __global__ void bn_partial_sum_##SUF(const T* __restrict__ x, double* __restrict__ part1, int C,        \
                                                    i64 HW, i64 M, int G, i64 chunk) {                                 \
        __shared__ double buf[BN_BLOCK];                                                                               \
        bn_partial_sum_body<T>(x, part1, C, HW, M, G, chunk, buf);                                                     \
    }
MINICNN_STAMP_F32_F64(BN_PARTIAL_SUM_ENTRY)

template <typename T>
__device__ void bn_partial_sqdev_body(const T* __restrict__ x, const double* __restrict__ part1,
                                      double* __restrict__ part2, int C, i64 HW, i64 M, int G, i64 chunk,
                                      double* buf) {
    const int c = blockIdx.x / G, g = blockIdx.x % G;
    double s = 0.0;
    for (int k = 0; k < G; ++k) s += part1[(i64)c * G + k];  // the same order as bn_stats
    const double mean = s / (double)M;
    i64 m0, m1;
    chunk_range(g, chunk, M, &m0, &m1);
    double acc = 0.0;
    for (i64 m = m0 + threadIdx.x; m < m1; m += BN_BLOCK) {
        const i64 n = m / HW;
        const double d = (double)x[(n * C + c) * HW + (m - n * HW)] - mean;
        acc += d * d;
    }
    acc = block_sum(acc, buf);
    if (threadIdx.x == 0) part2[(i64)c * G + g] = acc;
}

#define BN_PARTIAL_SQDEV_ENTRY(SUF, T)                                                                                 \
    extern "C" __global__ void bn_partial_sqdev_##SUF(const T* __restrict__ x, const double* __restrict__ part1,       \
                                                      double* __restrict__ part2, int C, i64 HW, i64 M, int G,         \
                                                      i64 chunk) {                                                     \
        __shared__ double buf[BN_BLOCK];                                                                               \
        bn_partial_sqdev_body<T>(x, part1, part2, C, HW, M, G, chunk, buf);                                            \
    }
MINICNN_STAMP_F32_F64(BN_PARTIAL_SQDEV_ENTRY)

template <typename T>
__device__ void bn_stats_body(const double* __restrict__ part1, const double* __restrict__ part2,
                              T* __restrict__ mean, T* __restrict__ var, int C, i64 M, int G) {
    for (i64 c = global_index_1d(); c < C; c += global_stride_1d()) {
        double s1 = 0.0, s2 = 0.0;
        for (int k = 0; k < G; ++k) {
            s1 += part1[c * G + k];
            s2 += part2[c * G + k];
        }
        mean[c] = (T)(s1 / (double)M);
        var[c] = (T)(s2 / (double)M);
    }
}

#define BN_STATS_ENTRY(SUF, T)                                                                                         \
    extern "C" __global__ void bn_stats_##SUF(const double* __restrict__ part1, const double* __restrict__ part2,      \
                                              T* __restrict__ mean, T* __restrict__ var, int C, i64 M, int G) {        \
        bn_stats_body<T>(part1, part2, mean, var, C, M, G);                                                            \
    }
MINICNN_STAMP_F32_F64(BN_STATS_ENTRY)

template <typename T>
__device__ void bn_train_forward_body(const T* __restrict__ x, const T* __restrict__ mean, const T* __restrict__ var,
                                      const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ y,
                                      i64 total, int C, i64 HW, T eps) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const int c = (int)((e / HW) % C);
        y[e] = (x[e] - mean[c]) / bn_sqrt(var[c] + eps) * gamma[c] + beta[c];
    }
}

#define BN_TRAIN_FORWARD_ENTRY(SUF, T)                                                                                 \
    extern "C" __global__ void bn_train_forward_##SUF(const T* __restrict__ x, const T* __restrict__ mean,             \
                                                      const T* __restrict__ var, const T* __restrict__ gamma,          \
                                                      const T* __restrict__ beta, T* __restrict__ y, i64 total, int C, \
                                                      i64 HW, T eps) {                                                 \
        bn_train_forward_body<T>(x, mean, var, gamma, beta, y, total, C, HW, eps);                                     \
    }
MINICNN_STAMP_F32_F64(BN_TRAIN_FORWARD_ENTRY)

// ---- backward: sums of dy and dy * xhat, then dx ---------------------------------------------

template <typename T>
__device__ void bn_partial_grad_body(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                                     const T* __restrict__ var, double* __restrict__ part1,
                                     double* __restrict__ part2, int C, i64 HW, i64 M, int G, i64 chunk, T eps,
                                     double* buf) {
    const int c = blockIdx.x / G, g = blockIdx.x % G;
    const T mu = mean[c];
    const T rstd = (T)1 / bn_sqrt(var[c] + eps);
    i64 m0, m1;
    chunk_range(g, chunk, M, &m0, &m1);
    double s_dy = 0.0, s_dyxhat = 0.0;
    for (i64 m = m0 + threadIdx.x; m < m1; m += BN_BLOCK) {
        const i64 n = m / HW;
        const i64 k = (n * C + c) * HW + (m - n * HW);
        const T d = dy[k];
        const T xhat = (x[k] - mu) * rstd;
        s_dy += (double)d;
        s_dyxhat += (double)(d * xhat);
    }
    s_dy = block_sum(s_dy, buf);
    s_dyxhat = block_sum(s_dyxhat, buf);
    if (threadIdx.x == 0) {
        part1[(i64)c * G + g] = s_dy;
        part2[(i64)c * G + g] = s_dyxhat;
    }
}

#define BN_PARTIAL_GRAD_ENTRY(SUF, T)                                                                                  \
    extern "C" __global__ void bn_partial_grad_##SUF(const T* __restrict__ dy, const T* __restrict__ x,                \
                                                     const T* __restrict__ mean, const T* __restrict__ var,            \
                                                     double* __restrict__ part1, double* __restrict__ part2, int C,    \
                                                     i64 HW, i64 M, int G, i64 chunk, T eps) {                         \
        __shared__ double buf[BN_BLOCK];                                                                               \
        bn_partial_grad_body<T>(dy, x, mean, var, part1, part2, C, HW, M, G, chunk, eps, buf);                         \
    }
MINICNN_STAMP_F32_F64(BN_PARTIAL_GRAD_ENTRY)

template <typename T>
__device__ void bn_grad_sums_body(const double* __restrict__ part1, const double* __restrict__ part2,
                                  T* __restrict__ dbeta, T* __restrict__ dgamma, int C, int G) {
    for (i64 c = global_index_1d(); c < C; c += global_stride_1d()) {
        double s1 = 0.0, s2 = 0.0;
        for (int k = 0; k < G; ++k) {
            s1 += part1[c * G + k];
            s2 += part2[c * G + k];
        }
        dbeta[c] = (T)s1;
        dgamma[c] = (T)s2;
    }
}

#define BN_GRAD_SUMS_ENTRY(SUF, T)                                                                                     \
    extern "C" __global__ void bn_grad_sums_##SUF(const double* __restrict__ part1, const double* __restrict__ part2,  \
                                                  T* __restrict__ dbeta, T* __restrict__ dgamma, int C, int G) {       \
        bn_grad_sums_body<T>(part1, part2, dbeta, dgamma, C, G);                                                       \
    }
MINICNN_STAMP_F32_F64(BN_GRAD_SUMS_ENTRY)

template <typename T>
__device__ void bn_train_dx_body(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ gamma,
                                 const T* __restrict__ mean, const T* __restrict__ var, const T* __restrict__ dbeta,
                                 const T* __restrict__ dgamma, T* __restrict__ dx, i64 total, int C, i64 HW, i64 M,
                                 T eps) {
    const T m = (T)M;
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const int c = (int)((e / HW) % C);
        const T rstd = (T)1 / bn_sqrt(var[c] + eps);
        const T xhat = (x[e] - mean[c]) * rstd;
        dx[e] = gamma[c] * rstd / m * (m * dy[e] - dbeta[c] - xhat * dgamma[c]);
    }
}

#define BN_TRAIN_DX_ENTRY(SUF, T)                                                                                      \
    extern "C" __global__ void bn_train_dx_##SUF(const T* __restrict__ dy, const T* __restrict__ x,                    \
                                                 const T* __restrict__ gamma, const T* __restrict__ mean,              \
                                                 const T* __restrict__ var, const T* __restrict__ dbeta,               \
                                                 const T* __restrict__ dgamma, T* __restrict__ dx, i64 total, int C,   \
                                                 i64 HW, i64 M, T eps) {                                               \
        bn_train_dx_body<T>(dy, x, gamma, mean, var, dbeta, dgamma, dx, total, C, HW, M, eps);                         \
    }
MINICNN_STAMP_F32_F64(BN_TRAIN_DX_ENTRY)

// ---- eval: an affine map per channel ---------------------------------------------------------

template <typename T>
__device__ void bn_eval_forward_body(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                                     const T* __restrict__ running_mean, const T* __restrict__ running_var,
                                     T* __restrict__ y, i64 total, int C, i64 HW, T eps) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const int c = (int)((e / HW) % C);
        const T scale = gamma[c] / bn_sqrt(running_var[c] + eps);
        const T shift = beta[c] - running_mean[c] * scale;
        y[e] = x[e] * scale + shift;
    }
}

#define BN_EVAL_FORWARD_ENTRY(SUF, T)                                                                                  \
    extern "C" __global__ void bn_eval_forward_##SUF(const T* __restrict__ x, const T* __restrict__ gamma,             \
                                                     const T* __restrict__ beta, const T* __restrict__ running_mean,   \
                                                     const T* __restrict__ running_var, T* __restrict__ y, i64 total,  \
                                                     int C, i64 HW, T eps) {                                           \
        bn_eval_forward_body<T>(x, gamma, beta, running_mean, running_var, y, total, C, HW, eps);                      \
    }
MINICNN_STAMP_F32_F64(BN_EVAL_FORWARD_ENTRY)

template <typename T>
__device__ void bn_eval_dx_body(const T* __restrict__ dy, const T* __restrict__ gamma,
                                const T* __restrict__ running_var, T* __restrict__ dx, i64 total, int C, i64 HW,
                                T eps) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const int c = (int)((e / HW) % C);
        const T rstd = (T)1 / bn_sqrt(running_var[c] + eps);
        dx[e] = dy[e] * (gamma[c] * rstd);
    }
}

#define BN_EVAL_DX_ENTRY(SUF, T)                                                                                       \
    extern "C" __global__ void bn_eval_dx_##SUF(const T* __restrict__ dy, const T* __restrict__ gamma,                 \
                                                const T* __restrict__ running_var, T* __restrict__ dx, i64 total,      \
                                                int C, i64 HW, T eps) {                                                \
        bn_eval_dx_body<T>(dy, gamma, running_var, dx, total, C, HW, eps);                                             \
    }
MINICNN_STAMP_F32_F64(BN_EVAL_DX_ENTRY)
