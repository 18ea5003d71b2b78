// Activations, PReLU and softmax / log-softmax: the GPU twins of backends/numpy/activation.py.
// Written and compile-checked (NVRTC, sm_80 / sm_90), checked against the reference on the
// host emulator; not yet run on a GPU.
//
// Every kernel comes as _f32 and _f64 (float / double storage, stamped by common.cuh's
// MINICNN_STAMP_F32_F64; the arithmetic is done in the storage type, as the numpy reference
// does, except PReLU's slope gradient which sums in double).
// NaN handling follows the reference branch by branch: every comparison with NaN is false in
// both, and max(x, 0) / clip are written with comparisons so that a NaN passes through (fmaxf
// would drop it).
//
// act_forward_{f32,f64}(x, y, n, kind, p0, p1)
//     thread i (grid-stride over the n flat elements) -> y[i] = f_kind(x[i]).
//     Replaces relu_forward / sigmoid_forward / tanh_forward and the reference's
//     activation_forward, whose np.where over the whole array is evaluated here one element at
//     a time (only the branch taken is computed, so nothing overflows on the other one).
//     kind: the ACT_* numbers below; p0, p1: the kind's parameters (leaky_relu: slope; elu and
//     selu: alpha, scale; softplus: beta, threshold), rounded to the storage type on the host as
//     the reference's weak Python scalars are.
// act_backward_{f32,f64}(dy, x, dx, n, kind, p0, p1)
//     thread i -> dx[i] = dy[i] * f'_kind(x[i]), from the input x; PyTorch's values at the kinks
//     (leaky_relu: the slope at 0; elu: alpha at 0; hardswish: 0 at -3, 1 at +3; hardsigmoid: 0
//     at both). Replaces the reference's activation_backward.
// act_backward_from_output_{f32,f64}(dy, y, dx, n, kind)
//     thread i -> dx[i] from the forward output y (relu: dy * (y > 0); sigmoid: dy * y * (1 - y);
//     tanh: dy * (1 - y^2)). Replaces relu_backward / sigmoid_backward / tanh_backward.
// add_relu_{f32,f64}(a, b, y, n)
//     thread i -> y[i] = max(a[i] + b[i], 0) (NaN kept): the residual join, add_relu_forward.
// prelu_forward_{f32,f64}(x, w, y, n, C, inner)
//     thread i -> y[i] = x > 0 ? x : w[c] * x with c = (i / inner) % C (C = 1: one shared slope).
//     Replaces prelu_forward's np.where with the slopes broadcast along axis 1.
// prelu_backward_{f32,f64}(dy, x, w, dx, partial, N, C, inner, need_dx, need_dw)
//     grid (C, B), 256 threads: block (c, b) walks, grid-stride over B blocks, the N*inner elements
//     of channel c (element e = n*inner + j is x[n, c, j]); it writes dx there and sums
//     x * dy where x <= 0 in double, reduced over the block into partial[c*B + b] (the host
//     adds the B partials of each channel). Replaces prelu_backward's np.where and its
//     sum over every axis but 1. blockDim must be 256 (the shared buffer's size).
// softmax_forward_{f32,f64}(x, y, outer, L, inner, log_mode, team)
//     x viewed as (outer, L, inner), softmax (log_mode 0) or log-softmax (1) over L for each of
//     the outer*inner rows r = o*inner + i, whose elements sit inner apart. The reference's
//     x - x.max(axis), exp, sum, divide (or subtract the log of the sum), row by row.
//     The rows of a thread or block come from common.cuh's rows_of(team).
//     team 1: one thread per row (grid-stride), three passes over its row; suits short rows and
//     rows with inner > 1 (neighbouring threads read neighbouring addresses).
//     team = blockDim.x (a power of two <= 256): one block per row (grid-stride over rows), the
//     lanes stride the row and the max and the sum are block reductions; suits long rows.
// softmax_backward_{f32,f64}(dy, y, dx, outer, L, inner, log_mode, team)
//     the same rows and teams: dx = y * (dy - sum(dy * y)) (softmax) or dy - exp(y) * sum(dy)
//     (log-softmax), from the forward output y. Replaces softmax_backward / log_softmax_backward.
#include "common.cuh"

#ifndef INFINITY
#define INFINITY (__int_as_float(0x7f800000))
#endif

namespace act {

// the kinds, numbered as minicnn/backends/cupy/activation.py numbers them
enum {
    ACT_RELU = 0, ACT_SIGMOID = 1, ACT_TANH = 2, ACT_LEAKY_RELU = 3, ACT_ELU = 4, ACT_GELU = 5,
    ACT_GELU_TANH = 6, ACT_SILU = 7, ACT_HARDSWISH = 8, ACT_HARDSIGMOID = 9, ACT_SOFTPLUS = 10,
    ACT_SOFTSIGN = 11
};

const double SQRT2 = 1.4142135623730951;
const double SQRT_2PI = 2.5066282746310002;           // sqrt(2 pi)
const double GELU_TANH_BETA = 0.7978845608028654;     // sqrt(2 / pi)
const double GELU_TANH_KAPPA = 0.044715;

// float and double versions under one name, for the templates
__device__ __forceinline__ float m_exp(float v) { return expf(v); }
__device__ __forceinline__ double m_exp(double v) { return exp(v); }
__device__ __forceinline__ float m_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double m_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float m_log(float v) { return logf(v); }
__device__ __forceinline__ double m_log(double v) { return log(v); }
__device__ __forceinline__ float m_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double m_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float m_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double m_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float m_erf(float v) { return erff(v); }
__device__ __forceinline__ double m_erf(double v) { return erf(v); }
__device__ __forceinline__ float m_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double m_abs(double v) { return fabs(v); }

// np.maximum(v, 0): NaN propagates
template <typename T> __device__ __forceinline__ T relu(T v) { return (v > T(0) || v != v) ? v : T(0); }

// np.clip(v, lo, hi): NaN propagates (both comparisons false)
template <typename T> __device__ __forceinline__ T clip(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

// split by sign so exp never overflows, as the reference's sigmoid_forward
template <typename T> __device__ __forceinline__ T sigmoid(T v) {
    if (v >= T(0)) return T(1) / (T(1) + m_exp(-v));
    T e = m_exp(v);
    return e / (T(1) + e);
}


template <typename T> __device__ T value(int kind, T v, T p0, T p1) {
    switch (kind) {
    case ACT_RELU: return relu(v);
    case ACT_SIGMOID: return sigmoid(v);
    case ACT_TANH: return m_tanh(v);
    case ACT_LEAKY_RELU: return v > T(0) ? v : v * p0;
    case ACT_ELU: return p1 * (v > T(0) ? v : p0 * m_expm1(v));
    case ACT_GELU: return T(0.5) * v * (T(1) + m_erf(v / T(SQRT2)));
    case ACT_GELU_TANH:
        return T(0.5) * v * (T(1) + m_tanh(T(GELU_TANH_BETA) * (v + T(GELU_TANH_KAPPA) * (v * v * v))));
    case ACT_SILU: return v * sigmoid(v);
    case ACT_HARDSWISH: return v * clip(v + T(3), T(0), T(6)) / T(6);
    case ACT_HARDSIGMOID: return clip(v + T(3), T(0), T(6)) / T(6);
    case ACT_SOFTPLUS: {
        T z = v * p0;  // beta * x in the storage type, so the threshold test matches the reference's
        return z > p1 ? v : m_log1p(m_exp(z)) / p0;
    }
    default: return v / (T(1) + m_abs(v));  // ACT_SOFTSIGN
    }
}

template <typename T> __device__ T slope(int kind, T v, T p0, T p1) {
    switch (kind) {
    case ACT_LEAKY_RELU: return v > T(0) ? T(1) : p0;
    case ACT_ELU: return p1 * (v <= T(0) ? p0 * m_exp(v) : T(1));
    case ACT_GELU:
        return T(0.5) * (T(1) + m_erf(v / T(SQRT2))) + v * m_exp(T(-0.5) * v * v) / T(SQRT_2PI);
    case ACT_GELU_TANH: {
        T t = m_tanh(T(GELU_TANH_BETA) * (v + T(GELU_TANH_KAPPA) * (v * v * v)));
        return T(0.5) * (T(1) + t)
               + T(0.5) * v * (T(1) - t * t) * T(GELU_TANH_BETA) * (T(1) + T(3.0 * GELU_TANH_KAPPA) * v * v);
    }
    case ACT_SILU: {
        T s = sigmoid(v);
        return s * (T(1) + v * (T(1) - s));
    }
    case ACT_HARDSWISH: return v <= T(-3) ? T(0) : (v < T(3) ? v / T(3) + T(0.5) : T(1));
    case ACT_HARDSIGMOID: return (v > T(-3) && v < T(3)) ? T(1.0 / 6.0) : T(0);
    case ACT_SOFTPLUS: {
        T bx = v * p0;
        T z = m_exp(bx);
        return bx > p1 ? T(1) : z / (z + T(1));
    }
    default: {  // ACT_SOFTSIGN
        T a = T(1) + m_abs(v);
        return T(1) / (a * a);
    }
    }
}

template <typename T> __device__ void forward(const T* x, T* y, i64 n, int kind, T p0, T p1) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) y[i] = value(kind, x[i], p0, p1);
}

template <typename T> __device__ void backward(const T* dy, const T* x, T* dx, i64 n, int kind, T p0, T p1) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) dx[i] = dy[i] * slope(kind, x[i], p0, p1);
}

template <typename T> __device__ void backward_from_output(const T* dy, const T* y, T* dx, i64 n, int kind) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        T g = dy[i], v = y[i];
        if (kind == ACT_RELU) dx[i] = g * T(v > T(0));  // a product, as the reference: inf * 0 is NaN
        else if (kind == ACT_SIGMOID) dx[i] = g * v * (T(1) - v);
        else dx[i] = g * (T(1) - v * v);  // ACT_TANH
    }
}

template <typename T> __device__ void add_relu(const T* a, const T* b, T* y, i64 n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) y[i] = relu(a[i] + b[i]);
}

template <typename T> __device__ void prelu_forward(const T* x, const T* w, T* y, i64 n, i64 C, i64 inner) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        T v = x[i];
        y[i] = v > T(0) ? v : w[(i / inner) % C] * v;
    }
}

template <typename T>
__device__ void prelu_backward(const T* dy, const T* x, const T* w, T* dx, double* partial, i64 N, i64 C,
                               i64 inner, int need_dx, int need_dw, double* sh) {
    const i64 c = blockIdx.x;
    const i64 count = N * inner;
    const T a = w[c];
    double acc = 0.0;
    for (i64 e = (i64)blockIdx.y * blockDim.x + threadIdx.x; e < count; e += (i64)gridDim.y * blockDim.x) {
        const i64 n = e / inner;
        const i64 i = (n * C + c) * inner + (e - n * inner);
        const T v = x[i], g = dy[i];
        if (need_dx) dx[i] = v > T(0) ? g : a * g;
        if (v <= T(0) || v != v) acc += (double)(v * g);  // the reference's where(x > 0, 0, x * dy)
    }
    if (need_dw) {
        acc = block_sum(acc, sh);
        if (threadIdx.x == 0) partial[c * gridDim.y + blockIdx.y] = acc;
    }
}

template <typename T>
__device__ void softmax_forward(const T* x, T* y, i64 outer, i64 L, i64 inner, int log_mode, int team, T* sh) {
    const Rows rw = rows_of(team);
    for (i64 r = rw.first; r < outer * inner; r += rw.step) {  // uniform over a block when team > 1
        const i64 o = r / inner;
        const i64 base = o * L * inner + (r - o * inner);
        T m = -INFINITY;
        for (i64 k = rw.lane; k < L; k += rw.width) m = max_nan(m, x[base + k * inner]);
        if (team > 1) m = block_max(m, sh);
        T s = T(0);
        for (i64 k = rw.lane; k < L; k += rw.width) s += m_exp(x[base + k * inner] - m);
        if (team > 1) s = block_sum(s, sh);
        if (log_mode) {
            const T ls = m_log(s);
            for (i64 k = rw.lane; k < L; k += rw.width) y[base + k * inner] = (x[base + k * inner] - m) - ls;
        } else {
            for (i64 k = rw.lane; k < L; k += rw.width) y[base + k * inner] = m_exp(x[base + k * inner] - m) / s;
        }
    }
}

template <typename T>
__device__ void softmax_backward(const T* dy, const T* y, T* dx, i64 outer, i64 L, i64 inner, int log_mode,
                                 int team, T* sh) {
    const Rows rw = rows_of(team);
    for (i64 r = rw.first; r < outer * inner; r += rw.step) {
        const i64 o = r / inner;
        const i64 base = o * L * inner + (r - o * inner);
        T s = T(0);
        for (i64 k = rw.lane; k < L; k += rw.width) {
            const i64 j = base + k * inner;
            s += log_mode ? dy[j] : dy[j] * y[j];
        }
        if (team > 1) s = block_sum(s, sh);
        for (i64 k = rw.lane; k < L; k += rw.width) {
            const i64 j = base + k * inner;
            dx[j] = log_mode ? dy[j] - m_exp(y[j]) * s : y[j] * (dy[j] - s);
        }
    }
}

}  // namespace act

#define ACT_FORWARD_ENTRY(SUF, T)                                                                                      \
    extern "C" __global__ void act_forward_##SUF(const T* __restrict__ x, T* __restrict__ y, i64 n, int kind, T p0,    \
                                                 T p1) {                                                               \
        act::forward(x, y, n, kind, p0, p1);                                                                           \
    }
MINICNN_STAMP_F32_F64(ACT_FORWARD_ENTRY)

#define ACT_BACKWARD_ENTRY(SUF, T)                                                                                     \
    extern "C" __global__ void act_backward_##SUF(const T* __restrict__ dy, const T* __restrict__ x,                   \
                                                  T* __restrict__ dx, i64 n, int kind, T p0, T p1) {                   \
        act::backward(dy, x, dx, n, kind, p0, p1);                                                                     \
    }
MINICNN_STAMP_F32_F64(ACT_BACKWARD_ENTRY)

#define ACT_BACKWARD_FROM_OUTPUT_ENTRY(SUF, T)                                                                         \
    extern "C" __global__ void act_backward_from_output_##SUF(const T* __restrict__ dy, const T* __restrict__ y,       \
                                                              T* __restrict__ dx, i64 n, int kind) {                   \
        act::backward_from_output(dy, y, dx, n, kind);                                                                 \
    }
MINICNN_STAMP_F32_F64(ACT_BACKWARD_FROM_OUTPUT_ENTRY)

#define ADD_RELU_ENTRY(SUF, T)                                                                                         \
    extern "C" __global__ void add_relu_##SUF(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,     \
                                              i64 n) {                                                                 \
        act::add_relu(a, b, y, n);                                                                                     \
    }
MINICNN_STAMP_F32_F64(ADD_RELU_ENTRY)

#define PRELU_FORWARD_ENTRY(SUF, T)                                                                                    \
    extern "C" __global__ void prelu_forward_##SUF(const T* __restrict__ x, const T* __restrict__ w,                   \
                                                   T* __restrict__ y, i64 n, i64 C, i64 inner) {                       \
        act::prelu_forward(x, w, y, n, C, inner);                                                                      \
    }
MINICNN_STAMP_F32_F64(PRELU_FORWARD_ENTRY)

#define PRELU_BACKWARD_ENTRY(SUF, T)                                                                                   \
    extern "C" __global__ void prelu_backward_##SUF(const T* __restrict__ dy, const T* __restrict__ x,                 \
                                                    const T* __restrict__ w, T* __restrict__ dx,                       \
                                                    double* __restrict__ partial, i64 N, i64 C, i64 inner,             \
                                                    int need_dx, int need_dw) {                                        \
        __shared__ double sh[256];                                                                                     \
        act::prelu_backward(dy, x, w, dx, partial, N, C, inner, need_dx, need_dw, sh);                                 \
    }
MINICNN_STAMP_F32_F64(PRELU_BACKWARD_ENTRY)

#define SOFTMAX_FORWARD_ENTRY(SUF, T)                                                                                  \
    extern "C" __global__ void softmax_forward_##SUF(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 L,     \
                                                     i64 inner, int log_mode, int team) {                              \
        __shared__ T sh[256];                                                                                          \
        act::softmax_forward(x, y, outer, L, inner, log_mode, team, sh);                                               \
    }
MINICNN_STAMP_F32_F64(SOFTMAX_FORWARD_ENTRY)

#define SOFTMAX_BACKWARD_ENTRY(SUF, T)                                                                                 \
    extern "C" __global__ void softmax_backward_##SUF(const T* __restrict__ dy, const T* __restrict__ y,               \
                                                      T* __restrict__ dx, i64 outer, i64 L, i64 inner, int log_mode,   \
                                                      int team) {                                                      \
        __shared__ T sh[256];                                                                                          \
        act::softmax_backward(dy, y, dx, outer, L, inner, log_mode, team, sh);                                         \
    }
MINICNN_STAMP_F32_F64(SOFTMAX_BACKWARD_ENTRY)
