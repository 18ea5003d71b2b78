// Shared by every kernel file of the cupy backend: index types, the decoding of launch indices
// (1-D grid-stride loops, NCHW planes, the row teams of row-wise reductions), block-wide sum and
// max reductions, dynamic shared memory, and the macro that stamps a templated kernel's float32 and float64 entry points.
// Compiled by NVRTC for the GPU, and by the host C++ compiler for the emulator
// (MINICNN_EMULATE defined, cuda_emu.h included first; see _emulator.py).
#pragma once

typedef long long i64;

// the global index of this thread in a 1-D launch, as a 64-bit integer (tensors may pass 2^31 elements)
__device__ __forceinline__ i64 global_index_1d() {
    return (i64)blockIdx.x * blockDim.x + threadIdx.x;
}

// the number of threads in a 1-D launch, for grid-stride loops
__device__ __forceinline__ i64 global_stride_1d() {
    return (i64)gridDim.x * blockDim.x;
}

// Flat index i of a 1-D launch over planes of rows x cols elements (NCHW, plane = n*C + c, the
// column fastest) as (plane, row, column): ``const auto [plane, p, q] = plane_index(o, P, Q);``
struct PlaneIndex {
    i64 plane;
    int row, col;
};

__device__ __forceinline__ PlaneIndex plane_index(i64 i, int rows, int cols) {
    const int col = (int)(i % cols);
    const i64 t = i / cols;
    return PlaneIndex{t / rows, (int)(t % rows), col};
}

// The rows a thread or a block takes in a row-wise reduction (softmax, the class losses): with
// team 1 each thread owns whole rows, first, first + step, ... (grid-stride); with team > 1 (team
// = blockDim.x) block b owns rows b, b + gridDim.x, ... and its threads stride each row together,
// lane = threadIdx.x of width = blockDim.x.
struct Rows {
    i64 first, step;  // the rows taken: first, first + step, ...
    int lane, width;  // this thread's place in its team and the team's size
};

__device__ __forceinline__ Rows rows_of(int team) {
    Rows r;
    if (team > 1) {
        r.first = blockIdx.x; r.step = gridDim.x; r.lane = threadIdx.x; r.width = blockDim.x;
    } else {
        r.first = global_index_1d(); r.step = global_stride_1d(); r.lane = 0; r.width = 1;
    }
    return r;
}

// A max that keeps NaN, as np.max propagates it.
template <typename T> __device__ __forceinline__ T max_nan(T a, T b) { return (a > b || a != a) ? a : b; }

// The sum (max) of every thread's v over the block, returned to every thread: a tree over the
// shared buffer sh (blockDim.x entries; blockDim.x a power of two). The buffer is free again on
// return, so a caller's next reduction can reuse it.
template <typename T> __device__ T block_sum(T v, T* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) sh[t] = sh[t] + sh[t + s];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();  // sh is reused by the next reduction
    return r;
}

template <typename T> __device__ T block_max(T v, T* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) sh[t] = max_nan(sh[t], sh[t + s]);
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

// The float32 and float64 entry points of a kernel whose body is a template: STAMP(SUF, T) is a
// macro of the kernel file writing the extern "C" wrapper once, named ``name_##SUF`` with T for
// the storage type; MINICNN_STAMP_F32_F64(STAMP) writes it for (f32, float) and (f64, double),
// the suffixes the host picks by dtype (_launch.suffix).
#define MINICNN_STAMP_F32_F64(STAMP) STAMP(f32, float) STAMP(f64, double)

// The launch's dynamic shared memory (the ``shared_mem`` bytes of the launch) as a ``T*`` named
// ``name``: ``MINICNN_DYNAMIC_SHARED(float, tile);``, once per kernel, at function scope. One byte
// array serves every type, so template bodies instantiated for float and double do not clash; it
// is aligned to 16 bytes. The emulator gives a per-launch buffer, filled with 0xff (NaN) before
// each block, so a read of an element no thread wrote shows.
#ifdef MINICNN_EMULATE
#define MINICNN_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::minicnn_emu::dynamic_shared)
#else
#define MINICNN_DYNAMIC_SHARED(T, name)                                   \
    extern __shared__ __align__(16) unsigned char minicnn_dynamic_shared_[]; \
    T* name = reinterpret_cast<T*>(minicnn_dynamic_shared_)
#endif
