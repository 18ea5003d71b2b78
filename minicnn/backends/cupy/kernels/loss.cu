// Losses: the GPU twins of backends/numpy/loss.py.
// Written and compile-checked (NVRTC, sm_80 / sm_90), checked against the reference on the
// host emulator; not yet run on a GPU.
//
// Losses are reduced in double whatever the storage type (per-position values, per-block
// partial sums, the total), as the reference sums in float64; the rows of the class losses are
// also reduced in double. Every reduction is a fixed tree, so a loss is the same bit for bit from
// run to run. The reductions need blockDim.x a power of two <= 256 (the shared buffers' size).
// Each kernel's _f32 and _f64 entry points are stamped by common.cuh's MINICNN_STAMP_F32_F64.
//
// class_forward_{f32,f64}(z, t, y, w, lse, per, probs, part_loss, part_w, bad, N, C, S, soft, has_w,
//                         has_ignore, ignore, eps, log_input, store_lse, store_per, store_probs, team)
//     z (N, C, S): logits (or log-probabilities when log_input: NLL) of (N, C, d1, ...), S = d1*...;
//     row r = n*S + s holds the C scores z[n, c, s], S apart. A row is taken by one thread (team 1)
//     or by a whole block (team = blockDim.x, for long contiguous rows), as in activation.cu's
//     softmax (common.cuh's rows_of). Per row: lse = logsumexp over c (max first; 0 for NLL), then
//       class indices t[r] (soft 0): per = (1 - eps) w_t (lse - z_t) + eps/C sum_c w_c (lse - z_c),
//         weight w_t; an ignored row (has_ignore, t == ignore) gives 0 and 0; an index outside
//         [0, C) gives NaN and NaN and counts in *bad (the host then raises ValueError);
//       class probabilities y (N, C, S) (soft 1): per = sum_c w_c ((1 - eps) y_c + eps/C) (lse - z_c);
//     a class whose coefficient is 0 adds nothing (the reference skips q == 0).
//     Writes lse[r], per[r], probs = exp(z - lse) when asked (store_*), and per block the sums
//     of per and of the weights into part_loss[blockIdx.x], part_w[blockIdx.x].
//     Replaces the reference's _classes_last + _log_softmax_rows + _coefficients and the sum
//     over classes (cross_entropy_forward, nll_forward, softmax_cross_entropy_forward).
// class_backward_{f32,f64}(z, lse, t, y, w, g, den, d, N, C, S, soft, has_w, has_ignore, ignore, eps,
//                          log_input, has_g, gs, has_den, team)
//     the same rows: d[n, :, s] = u (Q p - q), p = exp(z - lse), q the coefficients of -log p in
//     the loss, Q = sum_c q; NLL (log_input): d = -u w_t at the target class. u = gs (/ *den
//     when has_den) (* g[r] when has_g); an ignored or out-of-range row gets 0.
//     Replaces cross_entropy_backward and nll_backward.
// class_weight_sum_{f32,f64}(t, w, part_w, M, C, has_w, has_ignore, ignore)
//     thread per row (grid-stride): the sum of the kept rows' weights w_t per block, into
//     part_w[blockIdx.x]: 'mean''s denominator for the backward.
// softmax_ce_backward_{f32,f64}(p, t, d, N, C)
//     thread i = n*C + c -> d[i] = (p[i] - [c == t[n]]) / N, in the storage type as the reference's
//     probs.copy(); d[n, t] -= 1; d / N.
// elem_forward_{f32,f64}(kind, a, b, w, pw, has_w, has_pw, param, per, store_per, partial, n)
//     thread i (grid-stride) -> the loss of element i, in double: BCE with logits (pos_weight pw),
//     MSE, L1, smooth L1 (param = beta; 0 is L1), Huber (param = delta), times w[i]; per[i] when
//     store_per, and the block's sum into partial[blockIdx.x]. w and pw arrive broadcast to a's
//     shape. Replaces bce_with_logits_forward, mse/l1/smooth_l1/huber_forward before _reduce.
// elem_backward_{f32,f64}(kind, a, b, w, pw, has_w, has_pw, param, g, has_g, gs, d, n)
//     thread i -> d[i] = gs (* g[i]) (* w[i]) * the loss's slope at element i. Replaces the
//     elementwise backwards (_upstream times the derivative).
// loss_total_{f32,f64}(part, count, den_part, den_count, den_const, mean, out)
//     one block: out[0] = sum(part) (/ den when mean; den = sum(den_part) when den_count > 0, else
//     den_const); 0 / 0 gives NaN, as the reference's mean of nothing. Replaces _reduce's sum.
#include "common.cuh"

#ifndef INFINITY
#define INFINITY (__int_as_float(0x7f800000))
#endif
#ifndef NAN
#define NAN (__int_as_float(0x7fffffff))
#endif

namespace loss {

enum { E_BCE = 0, E_MSE = 1, E_L1 = 2, E_SMOOTH_L1 = 3, E_HUBER = 4 };

template <typename T>
__device__ void class_forward(const T* z, const i64* t, const T* y, const T* w, T* lse_out, T* per_out, T* probs,
                              double* part_loss, double* part_w, int* bad, i64 N, i64 C, i64 S, int soft, int has_w,
                              int has_ignore, i64 ignore, double eps, int log_input, int store_lse, int store_per,
                              int store_probs, int team, double* sh) {
    const Rows rw = rows_of(team);
    const bool tm = team > 1;
    const double share = eps / (double)C;
    double acc_loss = 0.0, acc_w = 0.0;
    for (i64 r = rw.first; r < N * S; r += rw.step) {  // uniform over a block when team > 1
        const i64 n = r / S;
        const i64 base = n * C * S + (r - n * S);
        double lo = 0.0;
        if (!log_input) {
            double m = -INFINITY;
            for (i64 c = rw.lane; c < C; c += rw.width) m = max_nan(m, (double)z[base + c * S]);
            if (tm) m = block_max(m, sh);
            double a = 0.0;
            for (i64 c = rw.lane; c < C; c += rw.width) a += exp((double)z[base + c * S] - m);
            if (tm) a = block_sum(a, sh);
            lo = m + log(a);
            if (store_lse && rw.lane == 0) lse_out[r] = (T)lo;
            if (store_probs)
                for (i64 c = rw.lane; c < C; c += rw.width) probs[base + c * S] = (T)exp((double)z[base + c * S] - lo);
        }
        double per, wt;
        if (soft) {
            double a = 0.0;
            for (i64 c = rw.lane; c < C; c += rw.width) {
                const double q = ((1.0 - eps) * (double)y[base + c * S] + share) * (has_w ? (double)w[c] : 1.0);
                if (q != 0.0) a += q * (lo - (double)z[base + c * S]);
            }
            if (tm) a = block_sum(a, sh);
            per = a;
            wt = 1.0;
        } else {
            const i64 k = t[r];
            if (has_ignore && k == ignore) {
                per = 0.0;
                wt = 0.0;
            } else if (k < 0 || k >= C) {  // never read through; the host names the index
                per = NAN;
                wt = NAN;
                if (rw.lane == 0) atomicAdd(bad, 1);
            } else {
                const double wk = has_w ? (double)w[k] : 1.0;
                const double qk = (1.0 - eps) * wk;
                double a = (log_input || qk != 0.0) ? qk * (lo - (double)z[base + k * S]) : 0.0;
                if (eps != 0.0) {
                    double sm = 0.0;
                    for (i64 c = rw.lane; c < C; c += rw.width) {
                        const double wc = has_w ? (double)w[c] : 1.0;
                        if (wc != 0.0) sm += wc * (lo - (double)z[base + c * S]);
                    }
                    if (tm) sm = block_sum(sm, sh);
                    a += share * sm;
                }
                per = a;
                wt = wk;
            }
        }
        if (rw.lane == 0) {
            if (store_per) per_out[r] = (T)per;
            acc_loss += per;
            acc_w += wt;
        }
    }
    acc_loss = block_sum(acc_loss, sh);
    acc_w = block_sum(acc_w, sh);
    if (threadIdx.x == 0) {
        part_loss[blockIdx.x] = acc_loss;
        part_w[blockIdx.x] = acc_w;
    }
}

template <typename T>
__device__ void class_backward(const T* z, const T* lse, const i64* t, const T* y, const T* w, const T* g,
                               const double* den, T* d, i64 N, i64 C, i64 S, int soft, int has_w, int has_ignore,
                               i64 ignore, double eps, int log_input, int has_g, double gs, int has_den, int team,
                               double* sh) {
    const Rows rw = rows_of(team);
    const bool tm = team > 1;
    const double share = eps / (double)C;
    for (i64 r = rw.first; r < N * S; r += rw.step) {
        const i64 n = r / S;
        const i64 base = n * C * S + (r - n * S);
        const double u = (has_den ? gs / den[0] : gs) * (has_g ? (double)g[r] : 1.0);
        const double lo = log_input ? 0.0 : (double)lse[r];
        if (soft) {
            double big_q = 0.0;
            for (i64 c = rw.lane; c < C; c += rw.width)
                big_q += ((1.0 - eps) * (double)y[base + c * S] + share) * (has_w ? (double)w[c] : 1.0);
            if (tm) big_q = block_sum(big_q, sh);
            for (i64 c = rw.lane; c < C; c += rw.width) {
                const double q = ((1.0 - eps) * (double)y[base + c * S] + share) * (has_w ? (double)w[c] : 1.0);
                d[base + c * S] = (T)(u * (big_q * exp((double)z[base + c * S] - lo) - q));
            }
            continue;
        }
        const i64 k = t[r];
        if ((has_ignore && k == ignore) || k < 0 || k >= C) {  // 0 even when u is NaN (nothing kept)
            for (i64 c = rw.lane; c < C; c += rw.width) d[base + c * S] = T(0);
            continue;
        }
        const double wk = has_w ? (double)w[k] : 1.0;
        if (log_input) {
            for (i64 c = rw.lane; c < C; c += rw.width) d[base + c * S] = c == k ? (T)(-u * wk) : T(0);
            continue;
        }
        double wsum = (double)C;  // sum_c w_c, needed only with label smoothing
        if (has_w && eps != 0.0) {
            wsum = 0.0;
            for (i64 c = rw.lane; c < C; c += rw.width) wsum += (double)w[c];
            if (tm) wsum = block_sum(wsum, sh);
        }
        const double big_q = (1.0 - eps) * wk + share * wsum;
        for (i64 c = rw.lane; c < C; c += rw.width) {
            double q = share * (has_w ? (double)w[c] : 1.0);
            if (c == k) q += (1.0 - eps) * wk;
            d[base + c * S] = (T)(u * (big_q * exp((double)z[base + c * S] - lo) - q));
        }
    }
}

template <typename T>
__device__ void class_weight_sum(const i64* t, const T* w, double* part_w, i64 M, i64 C, int has_w, int has_ignore,
                                 i64 ignore, double* sh) {
    double acc = 0.0;
    for (i64 r = global_index_1d(); r < M; r += global_stride_1d()) {
        const i64 k = t[r];
        if (!(has_ignore && k == ignore) && k >= 0 && k < C) acc += has_w ? (double)w[k] : 1.0;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) part_w[blockIdx.x] = acc;
}

template <typename T> __device__ void softmax_ce_backward(const T* p, const i64* t, T* d, i64 N, i64 C) {
    for (i64 i = global_index_1d(); i < N * C; i += global_stride_1d()) {
        const i64 n = i / C;
        T v = p[i];
        if (i - n * C == t[n]) v = v - T(1);
        d[i] = v / T(N);
    }
}

// log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): never overflows
__device__ __forceinline__ double softplus(double x) { return (x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))); }

__device__ __forceinline__ double sign(double v) { return v > 0.0 ? 1.0 : (v < 0.0 ? -1.0 : v); }  // NaN kept

__device__ double elem_value(int kind, double x, double t, double pw, double param) {
    if (kind == E_BCE) return pw * t * softplus(-x) + (1.0 - t) * softplus(x);
    const double dd = x - t;
    if (kind == E_MSE) return dd * dd;
    const double a = fabs(dd);
    if (kind == E_L1 || (kind == E_SMOOTH_L1 && param == 0.0)) return a;
    if (kind == E_SMOOTH_L1) return a < param ? 0.5 * a * a / param : a - 0.5 * param;
    return a < param ? 0.5 * a * a : param * (a - 0.5 * param);  // E_HUBER
}

__device__ double elem_slope(int kind, double x, double t, double pw, double param) {
    if (kind == E_BCE) {  // sigmoid(x) (pw t + 1 - t) - pw t, sigmoid split by sign
        double s;
        if (x >= 0.0) {
            s = 1.0 / (1.0 + exp(-x));
        } else {
            const double e = exp(x);
            s = e / (1.0 + e);
        }
        return s * (pw * t + 1.0 - t) - pw * t;
    }
    const double dd = x - t;
    if (kind == E_MSE) return 2.0 * dd;
    if (kind == E_L1 || (kind == E_SMOOTH_L1 && param == 0.0)) return sign(dd);
    if (kind == E_SMOOTH_L1) return fabs(dd) < param ? dd / param : sign(dd);
    return dd < -param ? -param : (dd > param ? param : dd);  // E_HUBER: clip(d, -delta, delta)
}

template <typename T>
__device__ void elem_forward(int kind, const T* a, const T* b, const T* w, const T* pw, int has_w, int has_pw,
                             double param, T* per, int store_per, double* partial, i64 n, double* sh) {
    double acc = 0.0;
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        double v = elem_value(kind, (double)a[i], (double)b[i], has_pw ? (double)pw[i] : 1.0, param);
        if (has_w) v *= (double)w[i];
        if (store_per) per[i] = (T)v;
        acc += v;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T>
__device__ void elem_backward(int kind, const T* a, const T* b, const T* w, const T* pw, int has_w, int has_pw,
                              double param, const T* g, int has_g, double gs, T* d, i64 n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        double v = gs * elem_slope(kind, (double)a[i], (double)b[i], has_pw ? (double)pw[i] : 1.0, param);
        if (has_g) v *= (double)g[i];
        if (has_w) v *= (double)w[i];
        d[i] = (T)v;
    }
}

template <typename T>
__device__ void total(const double* part, i64 count, const double* den_part, i64 den_count, double den_const,
                      int mean, T* out, double* sh) {
    double s = 0.0;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) s += part[i];
    s = block_sum(s, sh);
    double den = den_const;
    if (mean && den_count > 0) {
        double a = 0.0;
        for (i64 i = threadIdx.x; i < den_count; i += blockDim.x) a += den_part[i];
        den = block_sum(a, sh);
    }
    if (threadIdx.x == 0) out[0] = (T)(mean ? s / den : s);
}

}  // namespace loss

#define CLASS_FORWARD_ENTRY(SUF, T)                                                                                    \
    extern "C" __global__ void class_forward_##SUF(const T* __restrict__ z, const i64* __restrict__ t,                 \
                                                   const T* __restrict__ y, const T* __restrict__ w,                   \
                                                   T* __restrict__ lse, T* __restrict__ per, T* __restrict__ probs,    \
                                                   double* __restrict__ part_loss, double* __restrict__ part_w,        \
                                                   int* __restrict__ bad, i64 N, i64 C, i64 S, int soft, int has_w,    \
                                                   int has_ignore, i64 ignore, double eps, int log_input,              \
                                                   int store_lse, int store_per, int store_probs, int team) {          \
        __shared__ double sh[256];                                                                                     \
        loss::class_forward(z, t, y, w, lse, per, probs, part_loss, part_w, bad, N, C, S, soft, has_w, has_ignore,     \
                            ignore, eps, log_input, store_lse, store_per, store_probs, team, sh);                      \
    }
MINICNN_STAMP_F32_F64(CLASS_FORWARD_ENTRY)

#define CLASS_BACKWARD_ENTRY(SUF, T)                                                                                   \
    extern "C" __global__ void class_backward_##SUF(const T* __restrict__ z, const T* __restrict__ lse,                \
                                                    const i64* __restrict__ t, const T* __restrict__ y,                \
                                                    const T* __restrict__ w, const T* __restrict__ g,                  \
                                                    const double* __restrict__ den, T* __restrict__ d, i64 N, i64 C,   \
                                                    i64 S, int soft, int has_w, int has_ignore, i64 ignore,            \
                                                    double eps, int log_input, int has_g, double gs, int has_den,      \
                                                    int team) {                                                        \
        __shared__ double sh[256];                                                                                     \
        loss::class_backward(z, lse, t, y, w, g, den, d, N, C, S, soft, has_w, has_ignore, ignore, eps, log_input,     \
                             has_g, gs, has_den, team, sh);                                                            \
    }
MINICNN_STAMP_F32_F64(CLASS_BACKWARD_ENTRY)

#define CLASS_WEIGHT_SUM_ENTRY(SUF, T)                                                                                 \
    extern "C" __global__ void class_weight_sum_##SUF(const i64* __restrict__ t, const T* __restrict__ w,              \
                                                      double* __restrict__ part_w, i64 M, i64 C, int has_w,            \
                                                      int has_ignore, i64 ignore) {                                    \
        __shared__ double sh[256];                                                                                     \
        loss::class_weight_sum(t, w, part_w, M, C, has_w, has_ignore, ignore, sh);                                     \
    }
MINICNN_STAMP_F32_F64(CLASS_WEIGHT_SUM_ENTRY)

#define SOFTMAX_CE_BACKWARD_ENTRY(SUF, T)                                                                              \
    extern "C" __global__ void softmax_ce_backward_##SUF(const T* __restrict__ p, const i64* __restrict__ t,           \
                                                         T* __restrict__ d, i64 N, i64 C) {                            \
        loss::softmax_ce_backward(p, t, d, N, C);                                                                      \
    }
MINICNN_STAMP_F32_F64(SOFTMAX_CE_BACKWARD_ENTRY)

#define ELEM_FORWARD_ENTRY(SUF, T)                                                                                     \
    extern "C" __global__ void elem_forward_##SUF(int kind, const T* __restrict__ a, const T* __restrict__ b,          \
                                                  const T* __restrict__ w, const T* __restrict__ pw, int has_w,        \
                                                  int has_pw, double param, T* __restrict__ per, int store_per,        \
                                                  double* __restrict__ partial, i64 n) {                               \
        __shared__ double sh[256];                                                                                     \
        loss::elem_forward(kind, a, b, w, pw, has_w, has_pw, param, per, store_per, partial, n, sh);                   \
    }
MINICNN_STAMP_F32_F64(ELEM_FORWARD_ENTRY)

#define ELEM_BACKWARD_ENTRY(SUF, T)                                                                                    \
    extern "C" __global__ void elem_backward_##SUF(int kind, const T* __restrict__ a, const T* __restrict__ b,         \
                                                   const T* __restrict__ w, const T* __restrict__ pw, int has_w,       \
                                                   int has_pw, double param, const T* __restrict__ g, int has_g,       \
                                                   double gs, T* __restrict__ d, i64 n) {                              \
        loss::elem_backward(kind, a, b, w, pw, has_w, has_pw, param, g, has_g, gs, d, n);                              \
    }
MINICNN_STAMP_F32_F64(ELEM_BACKWARD_ENTRY)

#define LOSS_TOTAL_ENTRY(SUF, T)                                                                                       \
    extern "C" __global__ void loss_total_##SUF(const double* __restrict__ part, i64 count,                            \
                                                const double* __restrict__ den_part, i64 den_count, double den_const,  \
                                                int mean, T* __restrict__ out) {                                       \
        __shared__ double sh[256];                                                                                     \
        loss::total(part, count, den_part, den_count, den_const, mean, out, sh);                                       \
    }
MINICNN_STAMP_F32_F64(LOSS_TOTAL_ENTRY)
