// Kernels that exercise each device feature the emulator provides (tests/test_cupy_emulator.py);
// they are the emulator's own tests, not part of the backend.
#include "common.cuh"

// 1-D grid-stride loop: out[i] = 3 * i + 1
extern "C" __global__ void iota_i64(long long* __restrict__ out, long long n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) out[i] = 3 * i + 1;
}

// 3-D grid of 3-D blocks over an (Z, Y, X) array: each element gets its coordinates and the
// linear index of the thread in its block, so the test can check every mapping at once
extern "C" __global__ void coords_3d(int* __restrict__ out, int Z, int Y, int X) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x >= X || y >= Y || z >= Z) return;
    int* o = out + 4 * ((i64)(z * Y + y) * X + x);
    o[0] = z;
    o[1] = y;
    o[2] = x;
    o[3] = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
}

// 2-D: out[r, c] = a[r, c] * 2 + r
extern "C" __global__ void affine_2d_f64(const double* __restrict__ a, double* __restrict__ out, int R, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y * blockDim.y + threadIdx.y;
    if (r < R && c < C) out[(i64)r * C + c] = a[(i64)r * C + c] * 2.0 + r;
}

// one block sums 256 elements through a static shared array, halving with __syncthreads
template <typename T>
__device__ void block_sum(const T* x, T* out, i64 n) {
    __shared__ T s[256];
    i64 i = global_index_1d();
    s[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}
extern "C" __global__ void block_sum_f32(const float* __restrict__ x, float* __restrict__ out, long long n) { block_sum(x, out, n); }
extern "C" __global__ void block_sum_f64(const double* __restrict__ x, double* __restrict__ out, long long n) { block_sum(x, out, n); }

// per-warp sums with __shfl_down_sync (lane 0 holds the sum), then the warps' sums through shared
// memory and a second shuffle round in warp 0
extern "C" __global__ void shfl_down_sum_f32(const float* __restrict__ x, float* __restrict__ warp_out,
                                             float* __restrict__ block_out, long long n) {
    __shared__ float partial[32];
    i64 i = global_index_1d();
    float v = i < n ? x[i] : 0.0f;
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffff, v, d);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        warp_out[blockIdx.x * (blockDim.x / 32) + warp] = v;
        partial[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        float w = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
        for (int d = 16; d > 0; d /= 2) w += __shfl_down_sync(0xffffffff, w, d);
        if (lane == 0) block_out[blockIdx.x] = w;
    }
}

// butterfly with __shfl_xor_sync: every lane ends with its warp's maximum
extern "C" __global__ void shfl_xor_max_f64(const double* __restrict__ x, double* __restrict__ out) {
    i64 i = global_index_1d();
    double v = x[i];
    for (int m = 16; m > 0; m /= 2) v = fmax(v, __shfl_xor_sync(0xffffffff, v, m));
    out[i] = v;
}

// every thread of every block adds into one counter of each type
extern "C" __global__ void atomic_sums(const float* __restrict__ x, float* __restrict__ sf, double* __restrict__ sd,
                                       int* __restrict__ si, unsigned long long* __restrict__ su, long long n) {
    for (i64 i = global_index_1d(); i < n; i += global_stride_1d()) {
        atomicAdd(sf, x[i]);
        atomicAdd(sd, (double)x[i]);
        atomicAdd(si, 1);
        atomicAdd(su, (unsigned long long)i);
    }
}

// reverses each block's slice through dynamic shared memory
template <typename T>
__device__ void reverse_blocks(const T* x, T* out, i64 n) {
    MINICNN_DYNAMIC_SHARED(T, tile);
    i64 i = global_index_1d();
    if (i < n) tile[threadIdx.x] = x[i];
    __syncthreads();
    i64 base = (i64)blockIdx.x * blockDim.x;
    i64 count = n - base < blockDim.x ? n - base : (i64)blockDim.x;
    if (threadIdx.x < count) out[base + threadIdx.x] = tile[count - 1 - threadIdx.x];
}
extern "C" __global__ void reverse_blocks_f32(const float* __restrict__ x, float* __restrict__ out, long long n) { reverse_blocks(x, out, n); }
extern "C" __global__ void reverse_blocks_f64(const double* __restrict__ x, double* __restrict__ out, long long n) { reverse_blocks(x, out, n); }

// reads dynamic shared memory no thread wrote: the emulator's fill shows as NaN
extern "C" __global__ void read_unwritten_shared(float* __restrict__ out) {
    MINICNN_DYNAMIC_SHARED(float, s);
    out[threadIdx.x] = s[threadIdx.x];
}

// writes each scalar parameter back, to check how arguments are passed
extern "C" __global__ void echo_scalars(double* __restrict__ out, int a, long long b, unsigned long long c, float d, double e) {
    out[0] = a;
    out[1] = (double)b;
    out[2] = (double)c;
    out[3] = d;
    out[4] = e;
}

// math functions of the emulator header, float and double
extern "C" __global__ void math_f32(const float* __restrict__ x, float* __restrict__ out) {
    float v = x[threadIdx.x];
    float* o = out + 12 * threadIdx.x;
    o[0] = expf(v); o[1] = logf(fabsf(v) + 1.0f); o[2] = tanhf(v); o[3] = erff(v); o[4] = rsqrtf(fabsf(v) + 1.0f);
    o[5] = log1pf(fabsf(v)); o[6] = expm1f(v); o[7] = powf(fabsf(v), 1.5f); o[8] = floorf(v); o[9] = ceilf(v);
    o[10] = isnan(v) ? 1.0f : (isinf(v) ? 2.0f : 0.0f); o[11] = fminf(fmaxf(v, -1.0f), 1.0f);
}
extern "C" __global__ void math_f64(const double* __restrict__ x, double* __restrict__ out) {
    double v = x[threadIdx.x];
    double* o = out + 12 * threadIdx.x;
    o[0] = exp(v); o[1] = log(fabs(v) + 1.0); o[2] = tanh(v); o[3] = erf(v); o[4] = rsqrt(fabs(v) + 1.0);
    o[5] = log1p(fabs(v)); o[6] = expm1(v); o[7] = pow(fabs(v), 1.5); o[8] = floor(v); o[9] = ceil(v);
    o[10] = isnan(v) ? 1.0 : (isinf(v) ? 2.0 : 0.0); o[11] = fmin(fmax(v, -1.0), 1.0);
}

// a bug the emulator must report: threads past `live` return before the barrier the others wait at
extern "C" __global__ void early_return_then_sync(float* __restrict__ out, int live) {
    if ((int)threadIdx.x >= live) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// a bug the emulator must report: half of warp 0 waits in a shuffle, the other threads in __syncthreads
extern "C" __global__ void divergent_barriers(float* __restrict__ out) {
    float v = threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_down_sync(0xffffffff, v, 1);
    else __syncthreads();
    out[threadIdx.x] = v;
}

// a warp shuffle in a warp of fewer than 32 threads: lanes that read a missing lane get poison
extern "C" __global__ void shfl_partial_warp(float* __restrict__ out) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffff, (float)threadIdx.x, 4);
}

// emulator: skip
extern "C" __global__ void ptx_only(float* __restrict__ out) {
    float v;
    asm volatile("{ mov.f32 %0, 0f3F800000; }" : "=f"(v));
    out[threadIdx.x] = v;
}

// a bug the emulator must show: each thread reads its neighbour's shared element with no
// __syncthreads() after the writes (`step` +1 reads the next thread's, -1 the previous one's)
extern "C" __global__ void missing_barrier(const float* __restrict__ x, float* __restrict__ out, int step) {
    __shared__ float s[64];
    int t = threadIdx.x, n = blockDim.x;
    s[t] = x[blockIdx.x * n + t];
    out[blockIdx.x * n + t] = s[(t + step + n) % n];
}

// a shuffle with a partial mask, which the emulator does not model: refused with the thread named
extern "C" __global__ void partial_mask(float* __restrict__ out) {
    out[threadIdx.x] = __shfl_down_sync(0x0000ffff, (float)threadIdx.x, 1);
}
