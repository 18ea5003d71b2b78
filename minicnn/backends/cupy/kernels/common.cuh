// Shared by every kernel file of the cupy backend: index types and small helpers.
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
