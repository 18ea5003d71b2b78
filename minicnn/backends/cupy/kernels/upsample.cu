// upsample.cu: nearest and bilinear upsampling (`interpolate`), forward and backward, NCHW.
// The reference is minicnn/backends/numpy/upsample.py. Each kernel has an _f32 and an _f64 entry
// point around one templated body (stamped by common.cuh's MINICNN_STAMP_F32_F64); 1-D launches
// loop grid-stride, common.cuh's plane_index decoding the flat index. The index maps and weights are
// PyTorch's rules computed on the host by shapes.nearest_source_index and
// shapes.linear_source_index (the one definition every backend uses), passed as small arrays.
//
// upsample_nearest2d_forward: one thread per output (plane, i, j): y = x[plane, rows[i], cols[j]]
//   (the reference's two fancy-index gathers). NaN and infinities are copied unchanged.
//
// upsample_bilinear2d_forward: one thread per output (plane, i, j): the 2x2 blend
//   t0 = x[h0[i], w0[j]] * b0[j] + x[h0[i], w1[j]] * b1[j]   (top row, along the width)
//   t1 = x[h1[i], w0[j]] * b0[j] + x[h1[i], w1[j]] * b1[j]   (bottom row)
//   y  = t0 * a0[i] + t1 * a1[i]
//   written as the reference computes it (width first, then height).
//
// upsample2d_backward: the adjoint of both forwards, one thread per input element (plane, h, w),
//   a gather (no atomics): the host inverts the maps into weighted CSR lists (for input row h: the
//   output rows i that read it through h0 with weight a0[i], then those that read it through h1
//   with a1[i]; columns likewise; nearest has one map and weight 1, which multiplies exactly), and
//       dx[h, w] = sum over (i, a) in rows-list(h) of a * ( sum over (j, b) in cols-list(w) of dy[i, j] * b )
//   The reference scatters with np.add.at the columns first, then the rows, in the same orders,
//   so each input cell receives the same terms in the same order; one thread writes each cell.
#include "common.cuh"

template <typename T>
__device__ void upsample_nearest2d_forward_body(const T* __restrict__ x, const i64* __restrict__ rows,
                                                const i64* __restrict__ cols, T* __restrict__ y, i64 total, int H,
                                                int W, int OH, int OW) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, i, j] = plane_index(o, OH, OW);
        y[o] = x[(plane * H + rows[i]) * W + cols[j]];
    }
}

#define UPSAMPLE_NEAREST2D_FORWARD_ENTRY(SUF, T)                                                                       \
    extern "C" __global__ void upsample_nearest2d_forward_##SUF(const T* __restrict__ x, const i64* __restrict__ rows, \
                                                                const i64* __restrict__ cols, T* __restrict__ y,       \
                                                                i64 total, int H, int W, int OH, int OW) {             \
        upsample_nearest2d_forward_body<T>(x, rows, cols, y, total, H, W, OH, OW);                                     \
    }
MINICNN_STAMP_F32_F64(UPSAMPLE_NEAREST2D_FORWARD_ENTRY)

template <typename T>
__device__ void upsample_bilinear2d_forward_body(const T* __restrict__ x, const i64* __restrict__ h0,
                                                 const i64* __restrict__ h1, const T* __restrict__ a0,
                                                 const T* __restrict__ a1, const i64* __restrict__ w0,
                                                 const i64* __restrict__ w1, const T* __restrict__ b0,
                                                 const T* __restrict__ b1, T* __restrict__ y, i64 total, int H, int W,
                                                 int OH, int OW) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, i, j] = plane_index(o, OH, OW);
        const T* top = x + (plane * H + h0[i]) * W;
        const T* bottom = x + (plane * H + h1[i]) * W;
        const T t0 = top[w0[j]] * b0[j] + top[w1[j]] * b1[j];
        const T t1 = bottom[w0[j]] * b0[j] + bottom[w1[j]] * b1[j];
        y[o] = t0 * a0[i] + t1 * a1[i];
    }
}

#define UPSAMPLE_BILINEAR2D_FORWARD_ENTRY(SUF, T)                                                                      \
    extern "C" __global__ void upsample_bilinear2d_forward_##SUF(const T* __restrict__ x, const i64* __restrict__ h0,  \
                                                                 const i64* __restrict__ h1, const T* __restrict__ a0, \
                                                                 const T* __restrict__ a1, const i64* __restrict__ w0, \
                                                                 const i64* __restrict__ w1, const T* __restrict__ b0, \
                                                                 const T* __restrict__ b1, T* __restrict__ y,          \
                                                                 i64 total, int H, int W, int OH, int OW) {            \
        upsample_bilinear2d_forward_body<T>(x, h0, h1, a0, a1, w0, w1, b0, b1, y, total, H, W, OH, OW);                \
    }
MINICNN_STAMP_F32_F64(UPSAMPLE_BILINEAR2D_FORWARD_ENTRY)

template <typename T>
__device__ void upsample2d_backward_body(const T* __restrict__ dy, const i64* __restrict__ row_ptr,
                                         const i64* __restrict__ row_idx, const T* __restrict__ row_w,
                                         const i64* __restrict__ col_ptr, const i64* __restrict__ col_idx,
                                         const T* __restrict__ col_w, T* __restrict__ dx, i64 total, int H, int W,
                                         int OH, int OW) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const auto [plane, h, w] = plane_index(e, H, W);
        const T* g = dy + plane * (i64)OH * OW;
        T acc = (T)0;
        for (i64 a = row_ptr[h]; a < row_ptr[h + 1]; ++a) {
            const T* grow = g + row_idx[a] * OW;
            T inner = (T)0;
            for (i64 b = col_ptr[w]; b < col_ptr[w + 1]; ++b) inner += grow[col_idx[b]] * col_w[b];
            acc += inner * row_w[a];
        }
        dx[e] = acc;
    }
}

#define UPSAMPLE2D_BACKWARD_ENTRY(SUF, T)                                                                              \
    extern "C" __global__ void upsample2d_backward_##SUF(const T* __restrict__ dy, const i64* __restrict__ row_ptr,    \
                                                         const i64* __restrict__ row_idx, const T* __restrict__ row_w, \
                                                         const i64* __restrict__ col_ptr,                              \
                                                         const i64* __restrict__ col_idx, const T* __restrict__ col_w, \
                                                         T* __restrict__ dx, i64 total, int H, int W, int OH,          \
                                                         int OW) {                                                     \
        upsample2d_backward_body<T>(dy, row_ptr, row_idx, row_w, col_ptr, col_idx, col_w, dx, total, H, W, OH, OW);    \
    }
MINICNN_STAMP_F32_F64(UPSAMPLE2D_BACKWARD_ENTRY)
