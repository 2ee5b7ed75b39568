// What several kernels share (the loader pastes this file in place of `#include "common.cuh"`).
//
// Storage types. A kernel compiled with -DFP16=1 reads and writes float16 (IEEE binary16) where
// its code says io_t, float32 otherwise; its arithmetic is float32 either way: load() widens,
// store() rounds to nearest even. The conversions are the PTX instructions cuda_fp16.h uses,
// written out so that no CUDA header is needed; host compilers (the tests' CPU emulator) get the
// same conversions through _Float16.

#ifndef INFINITY  // NVRTC has no math.h
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef unsigned short half_bits;

#if defined(__CUDACC__)
__device__ __forceinline__ float to_float(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ half_bits to_half(float f) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
inline float to_float(half_bits h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
inline half_bits to_half(float f) {
    _Float16 x = (_Float16)f;
    half_bits h;
    memcpy(&h, &x, 2);
    return h;
}
#endif

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const half_bits* p, long long i) { return to_float(p[i]); }
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(half_bits* p, long long i, float v) { p[i] = to_half(v); }

#if FP16
typedef half_bits io_t;
#else
typedef float io_t;
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sums in one launch and a fixed order (no floating-point atomics: the same bits on every run).
// Each of `blocks` blocks writes its partial sums, then calls last_block(done, blocks); the last
// of them to get there (counted in *done, which it resets to 0 for the next launch) adds all the
// partial sums in block order. Returns whether this block is that last one, to every thread of
// the block. The partial sums must be read through a volatile pointer: the other blocks wrote
// them from other multiprocessors, past this one's L1 cache.
__device__ __forceinline__ bool last_block(unsigned int* done, unsigned int blocks) {
    __shared__ bool last;
    __threadfence();  // this thread's partial sums are visible to every block before it counts
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int before = atomicAdd(done, 1u);
        last = (before == blocks - 1);
        if (last) *done = 0u;
    }
    __syncthreads();
    return last;
}
