// The CUDA device features the cupy backend's kernels use, for the host C++ compiler.
//
// The emulator (minicnn/backends/cupy/_emulator.py) compiles a kernel file as
//   g++ -std=c++20 -DMINICNN_EMULATE -include cuda_emu.h kernels/<file>.cu
// and runs each launch block after block on the calling host thread. The threads of one block are
// coroutines on that host thread, each with its own stack, run in order of their linear index
// (threadIdx.x fastest; ascending and descending in turn from block to block) until they finish
// or wait:
//   __syncthreads()        waits until every thread of the block waits there; a thread that returned
//                          while others wait is an error (on a GPU: a hang or a wrong result)
//   __shfl_*_sync(full)    waits until every running lane of the warp (32 consecutive linear indices)
//                          has written its value, then reads its source lane; a lane that does not
//                          exist (blockDim not a multiple of 32) or has returned reads as poison
//                          (NaN for floating types), where a GPU gives an undefined value
//   atomic*                std::atomic_ref on the address
//   static __shared__      a function-local static: one array for the block (blocks run one at a time)
//   MINICNN_DYNAMIC_SHARED the launch's shared_mem bytes, filled with 0xff (NaN) before each block
// A barrier no thread can pass (threads of a block waiting at different barriers) stops the launch
// with an error naming where each thread waits. What this does not model: timing, memory
// coalescing, the GPU's memory model (a missing __syncthreads between a write and another thread's
// read shows through the alternating order; a race between blocks does not), out-of-bounds accesses.
#pragma once
#ifndef MINICNN_EMULATE
#error "cuda_emu.h is the host emulator's header; the GPU build does not include it"
#endif

// every standard header first: the macros below (__shared__, __device__, ...) must not reach them
#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS declares the ucontext functions only then
#define _DARWIN_C_SOURCE   // and MAP_ANONYMOUS only with this
#endif
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
// the context switch: a few lines of assembly on x86-64 ELF (Linux), else the C library's ucontext
#if defined(__x86_64__) && defined(__ELF__) && !defined(MINICNN_EMU_UCONTEXT)
#define MINICNN_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif
#include <sys/mman.h>
#include <unistd.h>

#define MINICNN_EMU_EXPORT extern "C" __attribute__((visibility("default")))

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// the launch state; one launch at a time per compiled file (see launch_lock)
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

namespace minicnn_emu {

// ---- coroutines: one per thread of the block, switched on the host thread that launched ----------

#ifdef MINICNN_EMU_ASM_SWITCH
// save the callee-saved registers of the System V ABI on the current stack, store the stack
// pointer in *from, load `to` and restore what is saved there
extern "C" void minicnn_emu_switch(void** from, void* to);
asm(R"(
    .text
    .p2align 4
    .hidden minicnn_emu_switch
    .type minicnn_emu_switch,@function
minicnn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size minicnn_emu_switch,.-minicnn_emu_switch
)");
#endif

enum State : int { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct Coro {
    int state = READY;
    unsigned shfl_calls = 0;  // this lane's __shfl_*_sync calls so far: picks the exchange buffer
#ifdef MINICNN_EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
};

constexpr size_t STACK_BYTES = 256 * 1024;

inline std::mutex launch_lock;          // statics of the kernels and the state below are per launch
inline std::vector<Coro> coros;
inline std::vector<unsigned char*> stacks;  // mmap'd, a guard page below each
inline int current = 0;                 // linear index of the running thread
inline int nthreads = 0;
inline void (*body)(void**) = nullptr;  // the kernel's trampoline
inline void** body_args = nullptr;
inline unsigned char* dynamic_shared = nullptr;
inline std::vector<unsigned char> dynamic_shared_buf;
inline std::vector<unsigned long long> exchange;  // two buffers of one 8-byte slot per thread
inline bool failed = false;
inline std::string error;
#ifdef MINICNN_EMU_ASM_SWITCH
inline void* scheduler_sp = nullptr;
#else
inline ucontext_t scheduler_ctx;
#endif

inline void to_scheduler() {
#ifdef MINICNN_EMU_ASM_SWITCH
    minicnn_emu_switch(&coros[current].sp, scheduler_sp);
#else
    swapcontext(&coros[current].ctx, &scheduler_ctx);
#endif
}

inline void fail(const std::string& what) {
    if (!failed) {
        failed = true;
        error = what;
    }
    coros[current].state = DONE;
    for (;;) to_scheduler();  // never resumed
}

inline std::string thread_name(int t) {
    unsigned x = t % blockDim.x, y = (t / blockDim.x) % blockDim.y, z = t / (blockDim.x * blockDim.y);
    return "thread (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ") of block (" +
           std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + ")";
}

inline void coro_main() {
    body(body_args);
    coros[current].state = DONE;
    for (;;) to_scheduler();  // never resumed
}

#ifdef MINICNN_EMU_ASM_SWITCH
inline void minicnn_emu_entry() { coro_main(); }
#else
inline void ucontext_entry() { coro_main(); }
#endif

inline bool ensure_stacks(int n) {
    long page = sysconf(_SC_PAGESIZE);
    while ((int)stacks.size() < n) {
        size_t total = STACK_BYTES + page;
        void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, page, PROT_NONE);  // a stack overflow faults instead of writing a neighbour's stack
        stacks.push_back(static_cast<unsigned char*>(p) + page);
    }
    return true;
}

inline void start(int t) {
    Coro& c = coros[t];
    c.state = READY;
    c.shfl_calls = 0;
#ifdef MINICNN_EMU_ASM_SWITCH
    // a frame minicnn_emu_switch pops: mxcsr/fpu control word, six registers, then it "returns"
    // into the entry with the stack aligned as after a call
    uintptr_t top = reinterpret_cast<uintptr_t>(stacks[t] + STACK_BYTES) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                             // the entry's return address (never used)
    *--sp = reinterpret_cast<void*>(&minicnn_emu_entry);         // where the first switch returns to
    for (int i = 0; i < 6; ++i) *--sp = nullptr;                 // rbp rbx r12 r13 r14 r15
    --sp;
    unsigned int mxcsr;
    unsigned short fcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
    c.sp = sp;
#else
    getcontext(&c.ctx);
    c.ctx.uc_stack.ss_sp = stacks[t];
    c.ctx.uc_stack.ss_size = STACK_BYTES;
    c.ctx.uc_link = nullptr;
    makecontext(&c.ctx, ucontext_entry, 0);
#endif
}

inline void resume(int t) {
    current = t;
    unsigned bx = blockDim.x, by = blockDim.y;
    threadIdx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
#ifdef MINICNN_EMU_ASM_SWITCH
    minicnn_emu_switch(&scheduler_sp, coros[t].sp);
#else
    swapcontext(&scheduler_ctx, &coros[t].ctx);
#endif
}

inline std::string where_each_waits() {
    std::string s;
    const char* names[] = {"are running", "wait in __syncthreads()", "wait in a __shfl_*_sync/__syncwarp", "have returned"};
    int t = 0;
    while (t < nthreads) {
        int u = t;
        while (u + 1 < nthreads && coros[u + 1].state == coros[t].state) ++u;
        if (!s.empty()) s += "; ";
        s += "threads " + std::to_string(t) + "-" + std::to_string(u) + " " + names[coros[t].state];
        t = u + 1;
    }
    return s + " (linear thread indices)";
}

// run one block to the end, its threads in ascending linear order or, `reverse`, descending;
// false (with `error` set) when it cannot finish
inline bool run_block(bool reverse) {
    for (int t = 0; t < nthreads; ++t) start(t);
    if (!dynamic_shared_buf.empty()) memset(dynamic_shared_buf.data(), 0xff, dynamic_shared_buf.size());
    int nwarps = (nthreads + 31) / 32;
    for (;;) {
        bool ran = false;
        for (int i = 0; i < nthreads; ++i) {
            int t = reverse ? nthreads - 1 - i : i;
            if (coros[t].state != READY) continue;
            resume(t);
            ran = true;
            if (failed) return false;
        }
        bool released = false;
        int at_block = 0, done = 0;
        for (int w = 0; w < nwarps; ++w) {
            int lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
            int waiting = 0, live = 0;
            for (int t = lo; t < hi; ++t) {
                int s = coros[t].state;
                if (s == DONE) continue;
                ++live;
                if (s == AT_WARP_BARRIER) ++waiting;
            }
            if (waiting > 0 && waiting == live) {
                for (int t = lo; t < hi; ++t)
                    if (coros[t].state == AT_WARP_BARRIER) coros[t].state = READY;
                released = true;
            }
        }
        if (released || ran) continue;
        for (int t = 0; t < nthreads; ++t) {
            at_block += coros[t].state == AT_BLOCK_BARRIER;
            done += coros[t].state == DONE;
        }
        if (done == nthreads) return true;
        if (at_block == nthreads) {
            for (int t = 0; t < nthreads; ++t) coros[t].state = READY;
            continue;
        }
        failed = true;
        if (at_block + done == nthreads)
            error = "__syncthreads() in block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
                    std::to_string(blockIdx.z) + ") is reached by " + std::to_string(at_block) + " of " +
                    std::to_string(nthreads) + " threads, the others returned before it (a GPU may hang or " +
                    "compute garbage): " + where_each_waits();
        else
            error = "the threads of block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
                    std::to_string(blockIdx.z) + ") wait at different barriers and none can pass: " + where_each_waits();
        return false;
    }
}

inline int launch(void (*tramp)(void**), void** args, const unsigned* grid, const unsigned* block, size_t shared_mem,
                  char* err, size_t errlen) {
    std::lock_guard<std::mutex> guard(launch_lock);
    failed = false;
    error.clear();
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    nthreads = int(block[0] * block[1] * block[2]);
    if (!ensure_stacks(nthreads)) {
        snprintf(err, errlen, "could not map %d thread stacks", nthreads);
        return 1;
    }
    if ((int)coros.size() < nthreads) coros.resize(nthreads);
    exchange.assign(2 * size_t(nthreads), 0);
    dynamic_shared_buf.assign(shared_mem, 0xff);
    dynamic_shared = shared_mem ? dynamic_shared_buf.data() : nullptr;
    body = tramp;
    body_args = args;
    // the order of the threads alternates from block to block, and from launch to launch, so a
    // read of another thread's write with no barrier between shows whichever thread is the later
    static unsigned long long launches = 0;
    unsigned long long order = launches++;
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                blockIdx = uint3{bx, by, bz};
                if (!run_block((order++) & 1)) {
                    snprintf(err, errlen, "%s", error.c_str());
                    return 1;
                }
            }
    return 0;
}

// ---- what the kernels call ---------------------------------------------------------------------

inline void block_barrier() {
    coros[current].state = AT_BLOCK_BARRIER;
    to_scheduler();
}

inline void warp_barrier() {
    coros[current].state = AT_WARP_BARRIER;
    to_scheduler();
}

inline void check_full_mask(unsigned mask, const char* fn) {
    if (mask != 0xffffffffu) {
        char hex[16];
        snprintf(hex, sizeof hex, "0x%08x", mask);
        fail(std::string(fn) + " with mask " + hex + " in " + thread_name(current) +
             ": the emulator supports only the full mask 0xffffffff");
    }
}

template <class T>
T poison() {
    if constexpr (std::is_floating_point_v<T>)
        return std::numeric_limits<T>::quiet_NaN();
    else {
        T v;
        memset(&v, 0xa5, sizeof v);
        return v;
    }
}

// the value of `var` in lane `src` of this thread's warp (src < 0: this lane's own value)
template <class T>
T exchange_lanes(T var, int src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "__shfl_*_sync: a type of at most 8 bytes");
    Coro& me = coros[current];
    unsigned call = me.shfl_calls++;
    int buf = call & 1;
    unsigned long long slot = 0;
    memcpy(&slot, &var, sizeof(T));
    exchange[2 * size_t(current) + buf] = slot;
    warp_barrier();
    if (src < 0) return var;
    int lane0 = current & ~31;
    int from = lane0 + src;
    if (from >= nthreads || coros[from].shfl_calls <= call) return poison<T>();  // no such lane, or it returned
    T out;
    slot = exchange[2 * size_t(from) + buf];
    memcpy(&out, &slot, sizeof(T));
    return out;
}

}  // namespace minicnn_emu

// ---- the device API --------------------------------------------------------------------------------

inline void __syncthreads() { minicnn_emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    minicnn_emu::check_full_mask(mask, "__syncwarp");
    minicnn_emu::warp_barrier();
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    minicnn_emu::check_full_mask(mask, "__shfl_sync");
    int lane = minicnn_emu::current & 31;
    int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return minicnn_emu::exchange_lanes(var, src);
}

template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = 32) {
    minicnn_emu::check_full_mask(mask, "__shfl_down_sync");
    int lane = minicnn_emu::current & 31;
    int seg = lane & ~(width - 1);
    int src = lane + int(delta);
    return minicnn_emu::exchange_lanes(var, src < seg + width ? src : -1);
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = 32) {
    minicnn_emu::check_full_mask(mask, "__shfl_up_sync");
    int lane = minicnn_emu::current & 31;
    int seg = lane & ~(width - 1);
    int src = lane - int(delta);
    return minicnn_emu::exchange_lanes(var, src >= seg ? src : -1);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    minicnn_emu::check_full_mask(mask, "__shfl_xor_sync");
    int lane = minicnn_emu::current & 31;
    int seg = lane & ~(width - 1);
    int src = lane ^ lane_mask;
    return minicnn_emu::exchange_lanes(var, src < seg + width ? src : -1);
}

#define MINICNN_EMU_ATOMIC(T)                                                                         \
    inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }                     \
    inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
MINICNN_EMU_ATOMIC(float)
MINICNN_EMU_ATOMIC(double)
MINICNN_EMU_ATOMIC(int)
MINICNN_EMU_ATOMIC(unsigned int)
MINICNN_EMU_ATOMIC(unsigned long long)
#undef MINICNN_EMU_ATOMIC

#define MINICNN_EMU_ATOMIC_INT(T)                                                                     \
    inline T atomicCAS(T* p, T compare, T v) {                                                        \
        std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);                                   \
        return compare;                                                                               \
    }                                                                                                 \
    inline T atomicMax(T* p, T v) {                                                                   \
        std::atomic_ref<T> a(*p);                                                                     \
        T old = a.load();                                                                             \
        while (old < v && !a.compare_exchange_weak(old, v)) {}                                        \
        return old;                                                                                   \
    }                                                                                                 \
    inline T atomicMin(T* p, T v) {                                                                   \
        std::atomic_ref<T> a(*p);                                                                     \
        T old = a.load();                                                                             \
        while (old > v && !a.compare_exchange_weak(old, v)) {}                                        \
        return old;                                                                                   \
    }
MINICNN_EMU_ATOMIC_INT(int)
MINICNN_EMU_ATOMIC_INT(unsigned int)
MINICNN_EMU_ATOMIC_INT(unsigned long long)
#undef MINICNN_EMU_ATOMIC_INT

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// math the CUDA headers declare and the C library does not
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
using std::isinf;
using std::isnan;
using std::isfinite;

// CUDA's min/max overloads for the types kernels use
#define MINICNN_EMU_MINMAX(T)                                                                          \
    inline T min(T a, T b) { return b < a ? b : a; }                                                   \
    inline T max(T a, T b) { return a < b ? b : a; }
MINICNN_EMU_MINMAX(int)
MINICNN_EMU_MINMAX(unsigned int)
MINICNN_EMU_MINMAX(long long)
MINICNN_EMU_MINMAX(unsigned long long)
#undef MINICNN_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- the table of a compiled file's kernels, read by _emulator.py through ctypes ----------------

namespace minicnn_emu {

template <class T>
std::string type_code() {
    // "p<dtype>" / "P<dtype>" for a pointer (P: to const), "<dtype>" for a value; numpy's dtype names
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_pointer_t<U>;
        return (std::is_const_v<E> ? "P" : "p") + type_code<std::remove_cv_t<E>>();
    } else if constexpr (std::is_same_v<U, float>) return "float32";
    else if constexpr (std::is_same_v<U, double>) return "float64";
    else if constexpr (std::is_same_v<U, bool>) return "bool";
    else if constexpr (std::is_same_v<U, signed char>) return "int8";
    else if constexpr (std::is_same_v<U, unsigned char>) return "uint8";
    else if constexpr (std::is_same_v<U, short>) return "int16";
    else if constexpr (std::is_same_v<U, unsigned short>) return "uint16";
    else if constexpr (std::is_same_v<U, int>) return "int32";
    else if constexpr (std::is_same_v<U, unsigned int>) return "uint32";
    else if constexpr (std::is_same_v<U, long long> || (std::is_same_v<U, long> && sizeof(long) == 8)) return "int64";
    else if constexpr (std::is_same_v<U, unsigned long long> || (std::is_same_v<U, unsigned long> && sizeof(long) == 8))
        return "uint64";
    else {
        static_assert(sizeof(T) == 0, "kernel parameter type the emulator does not pass: use a pointer, int, long long, "
                                      "unsigned long long, float or double");
        return "";
    }
}

template <class F>
struct Signature;
template <class... P>
struct Signature<void(P...)> {
    static std::string get() {
        std::string s;
        ((s += (s.empty() ? "" : ",") + type_code<P>()), ...);
        return s;
    }
};

template <class... P, size_t... I>
void call(void (*f)(P...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <class... P>
void call_all(void (*f)(P...), void** args) {
    call(f, args, std::index_sequence_for<P...>{});
}

template <auto F>
void trampoline(void** args) {
    call_all(F, args);
}

struct Entry {
    const char* name;
    void (*tramp)(void**);
    std::string (*signature)();
};

}  // namespace minicnn_emu

// what _emulator.py appends to a kernel file: MINICNN_EMU_TABLE(ENTRY(kernel_a) ENTRY(kernel_b) ...)
#define MINICNN_EMU_ENTRY(f) {#f, &::minicnn_emu::trampoline<&f>, &::minicnn_emu::Signature<decltype(f)>::get},
#define MINICNN_EMU_TABLE(entries)                                                                         \
    static const ::minicnn_emu::Entry minicnn_emu_entries[] = {entries};                                   \
    MINICNN_EMU_EXPORT int minicnn_emu_count() { return int(sizeof minicnn_emu_entries / sizeof minicnn_emu_entries[0]); } \
    MINICNN_EMU_EXPORT const char* minicnn_emu_name(int i) { return minicnn_emu_entries[i].name; }        \
    MINICNN_EMU_EXPORT int minicnn_emu_signature(int i, char* buf, size_t n) {                            \
        return snprintf(buf, n, "%s", minicnn_emu_entries[i].signature().c_str());                        \
    }                                                                                                      \
    MINICNN_EMU_EXPORT int minicnn_emu_launch(int i, const unsigned* grid, const unsigned* block, size_t shared_mem, \
                                              void** args, char* err, size_t errlen) {                     \
        return ::minicnn_emu::launch(minicnn_emu_entries[i].tramp, args, grid, block, shared_mem, err, errlen); \
    }
