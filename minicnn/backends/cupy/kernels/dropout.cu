// Inverted dropout and channel dropout: the GPU twins of backends/numpy/dropout.py and
// backends/numpy/dropout2d.py.
// Written and compile-checked (NVRTC, sm_80 / sm_90), checked against the reference on the
// host emulator; not yet run on a GPU.
//
// The random numbers are not drawn here: the host draws u = rng.random(shape) (float64 in
// [0, 1)) from the backend's generator, exactly as the reference does, so that a generator in
// the same state gives the same mask; these kernels only threshold and scale. Each kernel's
// _f32 and _f64 entry points are stamped by common.cuh's MINICNN_STAMP_F32_F64.
//
// dropout_forward_{f32,f64}(u, x, y, mask, n, p, scale)
//     thread i (grid-stride over the n elements) -> mask[i] = u[i] >= p ? scale : 0 and
//     y[i] = x[i] * mask[i]. Replaces dropout_forward's (rng.random(x.shape) >= p).astype(dtype)
//     / (1 - p) and x * mask, fused into one pass. scale = dtype(1) / dtype(1 - p) is computed on
//     the host in the storage type, as the reference rounds it.
// dropout_mask_{f32,f64}(u, mask, n, p, scale)
//     thread i -> mask[i] = u[i] >= p ? scale : 0: dropout2d's (N, C) mask, one entry per plane.
// scale_by_mask_{f32,f64}(a, m, out, n, inner)
//     thread i -> out[i] = a[i] * m[i / inner]: each run of ``inner`` values times its mask entry.
//     inner 1: dropout_backward (dy * mask) and the forward when p >= 1 (x * 0); inner = H*W...:
//     dropout2d's forward y = x * mask[n, c] and its backward dy * mask[n, c], the reference's
//     product with the mask reshaped to (N, C, 1, ...).
#include "common.cuh"

namespace drop {

template <typename T>
__device__ void forward(const double* u, const T* x, T* y, T* mask, i64 n, double p, T scale) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        const T m = u[i] >= p ? scale : T(0);
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

template <typename T> __device__ void mask_only(const double* u, T* mask, i64 n, double p, T scale) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) mask[i] = u[i] >= p ? scale : T(0);
}

template <typename T> __device__ void scale_by_mask(const T* a, const T* m, T* out, i64 n, i64 inner) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) out[i] = a[i] * m[i / inner];
}

}  // namespace drop

#define DROPOUT_FORWARD_ENTRY(SUF, T)                                                                                  \
    extern "C" __global__ void dropout_forward_##SUF(const double* __restrict__ u, const T* __restrict__ x,            \
                                                     T* __restrict__ y, T* __restrict__ mask, i64 n, double p,         \
                                                     T scale) {                                                        \
        drop::forward(u, x, y, mask, n, p, scale);                                                                     \
    }
MINICNN_STAMP_F32_F64(DROPOUT_FORWARD_ENTRY)

#define DROPOUT_MASK_ENTRY(SUF, T)                                                                                     \
    extern "C" __global__ void dropout_mask_##SUF(const double* __restrict__ u, T* __restrict__ mask, i64 n, double p, \
                                                  T scale) {                                                           \
        drop::mask_only(u, mask, n, p, scale);                                                                         \
    }
MINICNN_STAMP_F32_F64(DROPOUT_MASK_ENTRY)

#define SCALE_BY_MASK_ENTRY(SUF, T)                                                                                    \
    extern "C" __global__ void scale_by_mask_##SUF(const T* __restrict__ a, const T* __restrict__ m,                   \
                                                   T* __restrict__ out, i64 n, i64 inner) {                            \
        drop::scale_by_mask(a, m, out, n, inner);                                                                      \
    }
MINICNN_STAMP_F32_F64(SCALE_BY_MASK_ENTRY)
