// Cross-entropy over the vocabulary, one block per row of (N, V) float32 logits: no probability
// tensor, no loop over row blocks on the host.
//
// Forward: each thread keeps a running (max m, sum s of exp(x - m)) over its strided share of the
// row (online softmax: when a larger value arrives, the sum is rescaled by exp(old m - new m)),
// then the block merges the pairs. One read of the row gives lse = m + log(s), and the loss is
// lse - x[target]. Rows whose target is ignore_index get loss 0; a target outside [0, V) sets
// *bad (the host raises) instead of reading out of bounds.
// Backward: dlogits = (exp(x - lse) - onehot(target)) * scale[row * scale_stride], written into
// a fresh buffer (the logits may have other readers); ignored rows get zeros.

#ifndef INFINITY  // NVRTC has no math.h
#define INFINITY __int_as_float(0x7f800000)
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

extern "C" __global__ void crossentropy_forward(const float* __restrict__ logits,
                                                const long long* __restrict__ targets,
                                                float* __restrict__ losses, float* __restrict__ lse,
                                                int* __restrict__ bad, int N, int V, long long ignore_index) {
    __shared__ MaxSum warp_part[CE_THREADS / 32];
    int row = blockIdx.x;
    const float* x = logits + (size_t)row * V;
    MaxSum a = {-INFINITY, 0.0f};
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = x[j];
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
        if (t != ignore_index) {
            if (t < 0 || t >= V) {
                *bad = 1;  // every writer writes the same value
            } else {
                loss = l - x[t];
            }
        }
        losses[row] = loss;
    }
}

extern "C" __global__ void crossentropy_backward(const float* __restrict__ logits,
                                                 const long long* __restrict__ targets,
                                                 const float* __restrict__ lse, const float* __restrict__ scale,
                                                 int scale_stride, float* __restrict__ dlogits,
                                                 int N, int V, long long ignore_index) {
    int row = blockIdx.x;
    const float* x = logits + (size_t)row * V;
    float* d = dlogits + (size_t)row * V;
    long long t = targets[row];
    float sc = (t == ignore_index) ? 0.0f : scale[(size_t)row * scale_stride];
    float l = lse[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = expf(x[j] - l);
        d[j] = (p - (j == t ? 1.0f : 0.0f)) * sc;
    }
}
