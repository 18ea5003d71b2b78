// pool.cu: max, average and adaptive pooling and max unpooling, forward and backward, NCHW.
// The reference is minicnn/backends/numpy/pool.py; every kernel below names the loop it replaces.
// Each kernel has an _f32 and an _f64 entry point around one templated body (stamped by
// common.cuh's MINICNN_STAMP_F32_F64). Tensors are flat arrays of (N*C) planes; "plane" below is
// the flat n*C + c, decoded with (row, column) from a flat index by common.cuh's plane_index.
// 1-D launches use grid-stride loops.
//
// maxpool2d_forward: one thread per output (plane, p, q). It walks the window taps in the
//   reference's order (r outer, s inner: the `for r / for s` loop over `_window` slices) and
//   skips taps outside the input (padding and the ceil_mode overhang read -inf there, which never
//   wins). The rule is the reference's `better`: the first real tap is taken even at -inf, then a
//   strictly greater value or a NaN replaces the best (so a later NaN replaces an earlier one, as
//   PyTorch). A window with no real tap gives -inf and argmax -1. argmax is the flat h*W + w in
//   the plane, written only when write_argmax is nonzero (inference does not need it).
//
// maxpool2d_backward: a gather, one thread per input element, after inverting argmax. The op
//   receives only argmax, not the window geometry (it also serves adaptive pooling), so an input
//   cannot tell which outputs may have picked it; instead index_count and index_fill (below) build,
//   per input cell, the list of the outputs of its plane whose argmax is that cell (CSR: offsets
//   from an exclusive cumsum of the counts on the host). The thread sorts its short list and adds
//   dy in scan order: the reference's np.add.at order, so the sum is the reference's bit for bit
//   and the same on every run. Chosen over float atomicAdd scattering from each output (sums in
//   arrival order: neither exact nor deterministic) and over one thread per plane scanning its
//   outputs serially (exact, but only N*C threads, each serial over P*Q outputs). The only
//   atomics are integer counters, whose results do not depend on the order. An argmax outside
//   [0, H*W) (-1: a window of only padding) is left out.
//
// avgpool2d_forward: one thread per output: the window's taps inside the input summed in the
//   reference's order (padding adds 0, the reference's np.pad zeros), divided by the window's
//   size clipped to the padded input (count_include_pad) or to the input (`_avg_divisor`).
//
// avgpool2d_backward: one thread per input element (a gather, no atomics): for every tap (r, s),
//   in the reference's loop order, the output whose tap lands here (if any) adds dy / divisor;
//   the reference scatters the same terms in the same order (`dxp[:, :, hs, ws] += g`).
//
// adaptive_avgpool2d_forward: one thread per output: mean of its bin [floor(i*H/OH),
//   ceil((i+1)*H/OH)) x (same along W), PyTorch's `adaptive_bins`.
// adaptive_avgpool2d_backward: one thread per input element (gather): the bins containing row h
//   are i in [floor(h*OH/H), ceil((h+1)*OH/H)) (each checked against the bin itself), likewise
//   for columns; adds dy / bin size in the reference's (i, j) order.
// adaptive_maxpool2d_forward: one thread per output: the first maximum of its bin in scan order,
//   numpy's argmax (the first NaN wins and stays).
//
// maxunpool2d_forward: one thread per output cell, after inverting the indices with the same
//   index_count / index_fill lists: the cell takes the input with the largest position in its list
//   (the last in scan order, the reference's fancy assignment), or 0 when no index points there.
//   Deterministic; no float atomics. Indices were range-checked on the host before the launch.
// maxunpool2d_backward: one thread per input element: dx[i] = dy[plane].flat[indices[i]] (gather).
#include "common.cuh"

#ifndef INFINITY  // NVRTC has no <cmath>; common.cuh or the emulator may define it already
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// ---- maxpool2d_forward ----------------------------------------------------------------------

template <typename T>
__device__ void maxpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, i64* __restrict__ argmax,
                                       i64 total, int H, int W, int P, int Q, int R, int S, int sh, int sw,
                                       int ph, int pw, int dh, int dw, int write_argmax) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, p, q] = plane_index(o, P, Q);
        const T* xp = x + plane * (i64)H * W;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        T best = -(T)INFINITY;
        i64 arg = -1;
        for (int r = 0; r < R; ++r) {
            const int h = h0 + r * dh;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < S; ++s) {
                const int w = w0 + s * dw;
                if (w < 0 || w >= W) continue;
                const T v = xp[(i64)h * W + w];
                if (arg < 0 || v > best || isnan(v)) {
                    best = v;
                    arg = (i64)h * W + w;
                }
            }
        }
        y[o] = best;
        if (write_argmax) argmax[o] = arg;
    }
}

#define MAXPOOL2D_FORWARD_ENTRY(SUF, T)                                                                                \
    extern "C" __global__ void maxpool2d_forward_##SUF(const T* __restrict__ x, T* __restrict__ y,                     \
                                                       i64* __restrict__ argmax, i64 total, int H, int W, int P,       \
                                                       int Q, int R, int S, int sh, int sw, int ph, int pw, int dh,    \
                                                       int dw, int write_argmax) {                                     \
        maxpool2d_forward_body<T>(x, y, argmax, total, H, W, P, Q, R, S, sh, sw, ph, pw, dh, dw, write_argmax);        \
    }
MINICNN_STAMP_F32_F64(MAXPOOL2D_FORWARD_ENTRY)

// ---- inverting a per-plane index map (maxpool2d_backward, maxunpool2d_forward) -----------------

// Entry e of idx (planes of L entries, plane = e / L) points at cell idx[e] of a plane of T cells.
// index_count: one thread per entry; counts[plane*T + idx[e] + 1] += 1 (int atomics: the counts do
//   not depend on the order). The host turns counts into offsets with an exclusive cumsum.
// index_fill: one thread per entry; appends e's position in its plane, e % L, to the list of its
//   cell at offsets[cell] + (a slot taken with an int atomicAdd). The order inside a list depends
//   on timing; every consumer below reads a list in an order of its own (sorted, or its maximum).
// Entries outside [0, T) (max pooling's -1 for a window of only padding) are left out.
extern "C" __global__ void index_count(const i64* __restrict__ idx, int* __restrict__ counts, i64 total, i64 L, i64 T) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const i64 k = idx[e];
        if (k >= 0 && k < T) atomicAdd(&counts[(e / L) * T + k + 1], 1);
    }
}

extern "C" __global__ void index_fill(const i64* __restrict__ idx, const i64* __restrict__ offsets, int* __restrict__ cursor, i64* __restrict__ lists, i64 total, i64 L, i64 T) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const i64 k = idx[e];
        if (k < 0 || k >= T) continue;
        const i64 plane = e / L;
        const i64 cell = plane * T + k;
        const int slot = atomicAdd(&cursor[cell], 1);
        lists[offsets[cell] + slot] = e - plane * L;
    }
}

// ---- maxpool2d_backward ---------------------------------------------------------------------

template <typename T>
__device__ void maxpool2d_backward_body(const T* __restrict__ dy, const i64* __restrict__ offsets,
                                        i64* __restrict__ lists, T* __restrict__ dx, i64 total, i64 HW, i64 PQ) {
    for (i64 g = global_index_1d(); g < total; g += global_stride_1d()) {
        const i64 lo = offsets[g], hi = offsets[g + 1];
        // insertion sort of this cell's outputs (a handful: the windows that overlap here), so the
        // gradients are added in scan order, the reference's np.add.at order
        for (i64 a = lo + 1; a < hi; ++a) {
            const i64 v = lists[a];
            i64 b = a;
            for (; b > lo && lists[b - 1] > v; --b) lists[b] = lists[b - 1];
            lists[b] = v;
        }
        const T* gp = dy + (g / HW) * PQ;
        T acc = (T)0;
        for (i64 a = lo; a < hi; ++a) acc += gp[lists[a]];
        dx[g] = acc;
    }
}

#define MAXPOOL2D_BACKWARD_ENTRY(SUF, T)                                                                               \
    extern "C" __global__ void maxpool2d_backward_##SUF(const T* __restrict__ dy, const i64* __restrict__ offsets,     \
                                                        i64* __restrict__ lists, T* __restrict__ dx, i64 total,        \
                                                        i64 HW, i64 PQ) {                                              \
        maxpool2d_backward_body<T>(dy, offsets, lists, dx, total, HW, PQ);                                             \
    }
MINICNN_STAMP_F32_F64(MAXPOOL2D_BACKWARD_ENTRY)

// ---- avgpool2d ------------------------------------------------------------------------------

// how many cells output (p, q) averages: PyTorch's divisor (see `_avg_divisor` in the reference)
__device__ __forceinline__ int avg_divisor(int p, int q, int H, int W, int R, int S, int sh, int sw, int ph, int pw,
                                           int count_include_pad) {
    int hs = p * sh - ph, ws = q * sw - pw;
    int he = imin(hs + R, H + ph), we = imin(ws + S, W + pw);
    if (count_include_pad) return (he - hs) * (we - ws);
    hs = imax(hs, 0);
    ws = imax(ws, 0);
    he = imin(he, H);
    we = imin(we, W);
    return (he - hs) * (we - ws);
}

template <typename T>
__device__ void avgpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, i64 total, int H, int W, int P,
                                       int Q, int R, int S, int sh, int sw, int ph, int pw, int count_include_pad) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, p, q] = plane_index(o, P, Q);
        const T* xp = x + plane * (i64)H * W;
        const int h0 = p * sh - ph, w0 = q * sw - pw;
        T acc = (T)0;
        for (int r = 0; r < R; ++r) {
            const int h = h0 + r;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < S; ++s) {
                const int w = w0 + s;
                if (w < 0 || w >= W) continue;
                acc += xp[(i64)h * W + w];
            }
        }
        y[o] = acc / (T)avg_divisor(p, q, H, W, R, S, sh, sw, ph, pw, count_include_pad);
    }
}

#define AVGPOOL2D_FORWARD_ENTRY(SUF, T)                                                                                \
    extern "C" __global__ void avgpool2d_forward_##SUF(const T* __restrict__ x, T* __restrict__ y, i64 total, int H,   \
                                                       int W, int P, int Q, int R, int S, int sh, int sw, int ph,      \
                                                       int pw, int count_include_pad) {                                \
        avgpool2d_forward_body<T>(x, y, total, H, W, P, Q, R, S, sh, sw, ph, pw, count_include_pad);                   \
    }
MINICNN_STAMP_F32_F64(AVGPOOL2D_FORWARD_ENTRY)

template <typename T>
__device__ void avgpool2d_backward_body(const T* __restrict__ dy, T* __restrict__ dx, i64 total, int H, int W, int P,
                                        int Q, int R, int S, int sh, int sw, int ph, int pw, int count_include_pad) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const auto [plane, h, w] = plane_index(e, H, W);
        const T* g = dy + plane * (i64)P * Q;
        T acc = (T)0;
        for (int r = 0; r < R; ++r) {
            const int hp = h + ph - r;  // = p * sh for the output whose tap r lands on row h
            if (hp < 0 || hp % sh != 0 || hp / sh >= P) continue;
            const int p = hp / sh;
            for (int s = 0; s < S; ++s) {
                const int wq = w + pw - s;
                if (wq < 0 || wq % sw != 0 || wq / sw >= Q) continue;
                const int q = wq / sw;
                acc += g[(i64)p * Q + q] / (T)avg_divisor(p, q, H, W, R, S, sh, sw, ph, pw, count_include_pad);
            }
        }
        dx[e] = acc;
    }
}

#define AVGPOOL2D_BACKWARD_ENTRY(SUF, T)                                                                               \
    extern "C" __global__ void avgpool2d_backward_##SUF(const T* __restrict__ dy, T* __restrict__ dx, i64 total,       \
                                                        int H, int W, int P, int Q, int R, int S, int sh, int sw,      \
                                                        int ph, int pw, int count_include_pad) {                       \
        avgpool2d_backward_body<T>(dy, dx, total, H, W, P, Q, R, S, sh, sw, ph, pw, count_include_pad);                \
    }
MINICNN_STAMP_F32_F64(AVGPOOL2D_BACKWARD_ENTRY)

// ---- adaptive pooling -----------------------------------------------------------------------

// PyTorch's adaptive bin i of out over a length of in: [floor(i*in/out), ceil((i+1)*in/out))
__device__ __forceinline__ int bin_start(int i, int in, int out) { return (int)(((i64)i * in) / out); }
__device__ __forceinline__ int bin_end(int i, int in, int out) { return (int)(((i64)(i + 1) * in + out - 1) / out); }

template <typename T>
__device__ void adaptive_avgpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, i64 total, int H, int W,
                                                int OH, int OW) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, i, j] = plane_index(o, OH, OW);
        const T* xp = x + plane * (i64)H * W;
        const int h0 = bin_start(i, H, OH), h1 = bin_end(i, H, OH);
        const int w0 = bin_start(j, W, OW), w1 = bin_end(j, W, OW);
        T acc = (T)0;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) acc += xp[(i64)h * W + w];
        y[o] = acc / (T)((h1 - h0) * (w1 - w0));
    }
}

#define ADAPTIVE_AVGPOOL2D_FORWARD_ENTRY(SUF, T)                                                                       \
    extern "C" __global__ void adaptive_avgpool2d_forward_##SUF(const T* __restrict__ x, T* __restrict__ y, i64 total, \
                                                                int H, int W, int OH, int OW) {                        \
        adaptive_avgpool2d_forward_body<T>(x, y, total, H, W, OH, OW);                                                 \
    }
MINICNN_STAMP_F32_F64(ADAPTIVE_AVGPOOL2D_FORWARD_ENTRY)

template <typename T>
__device__ void adaptive_avgpool2d_backward_body(const T* __restrict__ dy, T* __restrict__ dx, i64 total, int H, int W,
                                                 int OH, int OW) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const auto [plane, h, w] = plane_index(e, H, W);
        const T* g = dy + plane * (i64)OH * OW;
        // the bins that contain row h (resp. column w): floor(h*OH/H) <= i < ceil((h+1)*OH/H)
        const int i0 = bin_start(h, OH, H), i1 = imin(bin_end(h, OH, H), OH);
        const int j0 = bin_start(w, OW, W), j1 = imin(bin_end(w, OW, W), OW);
        T acc = (T)0;
        for (int i = i0; i < i1; ++i) {
            const int bh0 = bin_start(i, H, OH), bh1 = bin_end(i, H, OH);
            if (h < bh0 || h >= bh1) continue;
            for (int j = j0; j < j1; ++j) {
                const int bw0 = bin_start(j, W, OW), bw1 = bin_end(j, W, OW);
                if (w < bw0 || w >= bw1) continue;
                acc += g[(i64)i * OW + j] / (T)((bh1 - bh0) * (bw1 - bw0));
            }
        }
        dx[e] = acc;
    }
}

#define ADAPTIVE_AVGPOOL2D_BACKWARD_ENTRY(SUF, T)                                                                      \
    extern "C" __global__ void adaptive_avgpool2d_backward_##SUF(const T* __restrict__ dy, T* __restrict__ dx,         \
                                                                 i64 total, int H, int W, int OH, int OW) {            \
        adaptive_avgpool2d_backward_body<T>(dy, dx, total, H, W, OH, OW);                                              \
    }
MINICNN_STAMP_F32_F64(ADAPTIVE_AVGPOOL2D_BACKWARD_ENTRY)

template <typename T>
__device__ void adaptive_maxpool2d_forward_body(const T* __restrict__ x, T* __restrict__ y, i64* __restrict__ argmax,
                                                i64 total, int H, int W, int OH, int OW) {
    for (i64 o = global_index_1d(); o < total; o += global_stride_1d()) {
        const auto [plane, i, j] = plane_index(o, OH, OW);
        const T* xp = x + plane * (i64)H * W;
        const int h0 = bin_start(i, H, OH), h1 = bin_end(i, H, OH);
        const int w0 = bin_start(j, W, OW), w1 = bin_end(j, W, OW);
        T best = xp[(i64)h0 * W + w0];
        i64 arg = (i64)h0 * W + w0;
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) {
                const T v = xp[(i64)h * W + w];
                // numpy's argmax: the first maximum; the first NaN wins and nothing replaces it
                if (!isnan(best) && (isnan(v) || v > best)) {
                    best = v;
                    arg = (i64)h * W + w;
                }
            }
        }
        y[o] = best;
        argmax[o] = arg;
    }
}

#define ADAPTIVE_MAXPOOL2D_FORWARD_ENTRY(SUF, T)                                                                       \
    extern "C" __global__ void adaptive_maxpool2d_forward_##SUF(const T* __restrict__ x, T* __restrict__ y,            \
                                                                i64* __restrict__ argmax, i64 total, int H, int W,     \
                                                                int OH, int OW) {                                      \
        adaptive_maxpool2d_forward_body<T>(x, y, argmax, total, H, W, OH, OW);                                         \
    }
MINICNN_STAMP_F32_F64(ADAPTIVE_MAXPOOL2D_FORWARD_ENTRY)

// ---- max unpooling --------------------------------------------------------------------------

template <typename T>
__device__ void maxunpool2d_forward_body(const T* __restrict__ x, const i64* __restrict__ offsets,
                                         const i64* __restrict__ lists, T* __restrict__ y, i64 total, i64 HW,
                                         i64 OHW) {
    for (i64 g = global_index_1d(); g < total; g += global_stride_1d()) {
        // the last input in scan order that points here wins: the largest position in the list
        i64 last = -1;
        for (i64 a = offsets[g]; a < offsets[g + 1]; ++a) last = lists[a] > last ? lists[a] : last;
        y[g] = last >= 0 ? x[(g / OHW) * HW + last] : (T)0;
    }
}

#define MAXUNPOOL2D_FORWARD_ENTRY(SUF, T)                                                                              \
    extern "C" __global__ void maxunpool2d_forward_##SUF(const T* __restrict__ x, const i64* __restrict__ offsets,     \
                                                         const i64* __restrict__ lists, T* __restrict__ y, i64 total,  \
                                                         i64 HW, i64 OHW) {                                            \
        maxunpool2d_forward_body<T>(x, offsets, lists, y, total, HW, OHW);                                             \
    }
MINICNN_STAMP_F32_F64(MAXUNPOOL2D_FORWARD_ENTRY)

template <typename T>
__device__ void maxunpool2d_backward_body(const T* __restrict__ dy, const i64* __restrict__ indices, T* __restrict__ dx,
                                          i64 total, i64 HW, i64 OHW) {
    for (i64 e = global_index_1d(); e < total; e += global_stride_1d()) {
        const i64 plane = e / HW;
        const i64 d = indices[e];
        dx[e] = (d >= 0 && d < OHW) ? dy[plane * OHW + d] : (T)0;
    }
}

#define MAXUNPOOL2D_BACKWARD_ENTRY(SUF, T)                                                                             \
    extern "C" __global__ void maxunpool2d_backward_##SUF(const T* __restrict__ dy, const i64* __restrict__ indices,   \
                                                          T* __restrict__ dx, i64 total, i64 HW, i64 OHW) {            \
        maxunpool2d_backward_body<T>(dy, indices, dx, total, HW, OHW);                                                 \
    }
MINICNN_STAMP_F32_F64(MAXUNPOOL2D_BACKWARD_ENTRY)
