// Cross-entropy over the vocabulary, one block per row of (N, V) logits: no probability tensor,
// no loop over row blocks on the host. io_t is float32, or float16 with -DFP16=1: float16 logits
// are read as they are and the math is float32 (no float32 copy of the logits).
//
// Forward: each thread keeps a running (max m, sum s of exp(x - m)) over its strided share of the
// row (online softmax: when a larger value arrives, the sum is rescaled by exp(old m - new m)),
// then the block merges the pairs. One read of the row gives lse = m + log(s), and the loss is
// lse - x[target]. Rows whose target is ignore_index get loss 0; a target outside [0, V) gets
// NaN (read nothing out of bounds, and say so through the loss: no flag for the host to read).
// The last block to finish (common.cuh's last_block) adds the N losses in row order and writes
// total = weight * sum (weight 1 / rows counted for a mean, 1 for a sum): the reduced loss comes
// out of the same launch.
// Backward: dlogits = (exp(x - lse) - onehot(target)) * scale[row * scale_stride] * mult, into a
// fresh buffer (the logits may have other readers); ignored rows get zeros.

#include "common.cuh"

#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif

#define CE_THREADS 256  // the block size both kernels are launched with

struct MaxSum {
    float m;
    float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    if (a.m == -INFINITY) return b;  // an empty pair: nothing seen yet
    if (b.m == -INFINITY) return a;
    float m = fmaxf(a.m, b.m);
    MaxSum r = {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
    return r;
}

// grid: N blocks of CE_THREADS; done: one zero (left zero again)
extern "C" __global__ void crossentropy_forward(const io_t* __restrict__ logits,
                                                const long long* __restrict__ targets,
                                                float* __restrict__ losses, float* __restrict__ lse,
                                                float* __restrict__ total, unsigned int* __restrict__ done,
                                                int N, int V, long long ignore_index, float weight) {
    __shared__ MaxSum warp_part[CE_THREADS / 32];
    __shared__ float warp_sums[CE_THREADS / 32];
    int row = blockIdx.x;
    const io_t* x = logits + (size_t)row * V;
    MaxSum a = {-INFINITY, 0.0f};
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = load(x, j);
        if (v > a.m) {
            a.s = a.s * expf(a.m - v) + 1.0f;  // exp(-inf) = 0 for the first value
            a.m = v;
        } else if (a.m != -INFINITY) {
            a.s += expf(v - a.m);
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        MaxSum o = {__shfl_xor_sync(0xffffffffu, a.m, off), __shfl_xor_sync(0xffffffffu, a.s, off)};
        a = merge(a, o);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warp_part[warp] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
        MaxSum r = warp_part[0];
        for (int w = 1; w < (int)(blockDim.x / 32); ++w) r = merge(r, warp_part[w]);
        float l = r.m + logf(r.s);
        lse[row] = l;
        long long t = targets[row];
        float loss = 0.0f;
        if (t != ignore_index) loss = (t < 0 || t >= V) ? NAN : l - load(x, t);
        losses[row] = loss;
    }
    if (!last_block(done, gridDim.x)) return;
    const volatile float* ls = losses;
    float s = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) s += ls[i];  // a fixed order per thread ...
    s = warp_sum(s);                                                  // ... per warp ...
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {                                           // ... and warp by warp
        float sum = 0.0f;
        for (int w = 0; w < (int)(blockDim.x / 32); ++w) sum += warp_sums[w];
        *total = sum * weight;
    }
}

extern "C" __global__ void crossentropy_backward(const io_t* __restrict__ logits,
                                                 const long long* __restrict__ targets,
                                                 const float* __restrict__ lse, const float* __restrict__ scale,
                                                 int scale_stride, float mult, io_t* __restrict__ dlogits,
                                                 int N, int V, long long ignore_index) {
    int row = blockIdx.x;
    const io_t* x = logits + (size_t)row * V;
    io_t* d = dlogits + (size_t)row * V;
    long long t = targets[row];
    float sc = (t == ignore_index) ? 0.0f : scale[(size_t)row * scale_stride] * mult;
    float l = lse[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = expf(load(x, j) - l);
        store(d, j, (p - (j == t ? 1.0f : 0.0f)) * sc);
    }
}
