// pad.cu: padding of the last two axes (constant, reflect, replicate, circular; negative pads
// crop), forward and backward, NCHW. The reference is minicnn/backends/numpy/pad.py.
// Each kernel has an _f32 and an _f64 entry point around one templated body (stamped by
// common.cuh's MINICNN_STAMP_F32_F64); 1-D launches loop grid-stride, common.cuh's plane_index
// decoding the flat index. Every mode is a gather through one index map per axis, computed on
// the host by shapes.pad_source_index (the one definition every backend uses) and passed as
// int64 arrays: padded row i copies input row rows[i], padded column j copies input column
// cols[j], and -1 (constant mode only) means the fill value.
//
// pad2d_forward: one thread per output element (plane, i, j): y = x[plane, rows[i], cols[j]],
//   or `value` where either map says -1. Replaces the reference's two fancy-index gathers and
//   its np.where with the fill.
//
// pad2d_backward: one thread per input element (plane, h, w), a gather (no atomics): the host
//   inverts the maps into CSR lists (row_ptr/row_idx: the padded rows that copy input row h, in
//   ascending order; col_ptr/col_idx likewise), and the thread sums
//       dx[h, w] = sum over j in cols-list(w) of ( sum over i in rows-list(h) of dy[i, j] )
//   in that order, which is the reference's: np.add.at first sums the rows that copy one input
//   row (per padded column), then the columns. Each input cell is written by one thread only,
//   so the result is deterministic and the reference's bit for bit.
#include "common.cuh"

template <typename T>
__device__ void pad2d_forward_body(const T* __restrict__ x, const i64* __restrict__ rows, const i64* __restrict__ cols,
                                   T* __restrict__ y, i64 total, int H, int W, int OH, int OW, T value) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, i, j] = plane_index(o, OH, OW);
        const i64 h = rows[i], w = cols[j];
        y[o] = (h < 0 || w < 0) ? value : x[(plane * H + h) * W + w];
    }
}

#define PAD2D_FORWARD_ENTRY(SUF, T)                                                                                    \
    extern "C" __global__ void pad2d_forward_##SUF(const T* __restrict__ x, const i64* __restrict__ rows,              \
                                                   const i64* __restrict__ cols, T* __restrict__ y, i64 total, int H,  \
                                                   int W, int OH, int OW, T value) {                                   \
        pad2d_forward_body<T>(x, rows, cols, y, total, H, W, OH, OW, value);                                           \
    }
MINICNN_STAMP_F32_F64(PAD2D_FORWARD_ENTRY)

template <typename T>
__device__ void pad2d_backward_body(const T* __restrict__ dy, const i64* __restrict__ row_ptr,
                                    const i64* __restrict__ row_idx, const i64* __restrict__ col_ptr,
                                    const i64* __restrict__ col_idx, T* __restrict__ dx, i64 total, int H, int W,
                                    int OH, int OW) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const auto [plane, h, w] = plane_index(e, H, W);
        const T* g = dy + plane * (i64)OH * OW;
        T acc = (T)0;
        for (i64 b = col_ptr[w]; b < col_ptr[w + 1]; ++b) {
            const i64 j = col_idx[b];
            T inner = (T)0;
            for (i64 a = row_ptr[h]; a < row_ptr[h + 1]; ++a) inner += g[row_idx[a] * OW + j];
            acc += inner;
        }
        dx[e] = acc;
    }
}

#define PAD2D_BACKWARD_ENTRY(SUF, T)                                                                                   \
    extern "C" __global__ void pad2d_backward_##SUF(const T* __restrict__ dy, const i64* __restrict__ row_ptr,         \
                                                    const i64* __restrict__ row_idx, const i64* __restrict__ col_ptr,  \
                                                    const i64* __restrict__ col_idx, T* __restrict__ dx, i64 total,    \
                                                    int H, int W, int OH, int OW) {                                    \
        pad2d_backward_body<T>(dy, row_ptr, row_idx, col_ptr, col_idx, dx, total, H, W, OH, OW);                       \
    }
MINICNN_STAMP_F32_F64(PAD2D_BACKWARD_ENTRY)
