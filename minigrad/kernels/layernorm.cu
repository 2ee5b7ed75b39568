// LayerNorm over the last axis of a row-major (N, C) array, forward and backward; io_t is float32,
// or float16 with -DFP16=1 (statistics and sums in float32 either way: common.cuh).
//
// Forward: one warp per row. The row is read three times (mean, variance, output) but it is at
// most a few KB, so the second and third reads come from L1/L2. mean and rstd are kept per row
// (two floats), which is all the backward needs besides x: no normalised copy is stored.
//
// Backward, without floating-point atomics so the result is the same on every run:
//   dx: one warp per row, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * w;
//   with `accumulate`, dx is added to what dx holds (the residual stream's gradient so far), so
//   the sum of the two branches costs no pass of its own;
//   dw, db: column sums over rows in one launch (common.cuh's last_block): each block sums a
//   chunk of rows for a range of columns, and the last block of each range adds the chunks'
//   partial sums in chunk order.

#include "common.cuh"

// grid: ceil(N / (blockDim.x / 32)); block: a multiple of 32 threads
extern "C" __global__ void layernorm_forward(const io_t* __restrict__ x, const io_t* __restrict__ w,
                                             const io_t* __restrict__ b, io_t* __restrict__ out,
                                             float* __restrict__ mean, float* __restrict__ rstd,
                                             int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;  // uniform across the warp: the shuffles below stay complete
    const io_t* xr = x + (size_t)row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32) s += load(xr, i);
    float mu = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float d = load(xr, i) - mu;
        v += d * d;
    }
    float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
    io_t* o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) store(o, i, (load(xr, i) - mu) * r * load(w, i) + load(b, i));
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// grid: ceil(N / (blockDim.x / 32)); block: a multiple of 32 threads
extern "C" __global__ void layernorm_backward_dx(const io_t* __restrict__ dout, const io_t* __restrict__ x,
                                                 const io_t* __restrict__ w, const float* __restrict__ mean,
                                                 const float* __restrict__ rstd, io_t* __restrict__ dx,
                                                 int N, int C, int accumulate) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const io_t* xr = x + (size_t)row * C;
    const io_t* gr = dout + (size_t)row * C;
    float mu = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float g = load(gr, i) * load(w, i);
        sg += g;
        sgx += g * (load(xr, i) - mu) * r;
    }
    float m1 = warp_sum(sg) / C, m2 = warp_sum(sgx) / C;
    io_t* d = dx + (size_t)row * C;
    for (int i = lane; i < C; i += 32) {
        float xhat = (load(xr, i) - mu) * r;
        float v = (load(gr, i) * load(w, i) - m1 - xhat * m2) * r;
        store(d, i, accumulate ? load(d, i) + v : v);
    }
}

// grid: (ceil(C / blockDim.x), n_chunks); block b of chunk k sums rows [k * rows_per_chunk, ...)
// part: (n_chunks, 2, C) float32 scratch; done: ceil(C / blockDim.x) zeros (left zero again)
extern "C" __global__ void layernorm_backward_dwdb(const io_t* __restrict__ dout, const io_t* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   float* __restrict__ part, io_t* __restrict__ dw,
                                                   io_t* __restrict__ db, unsigned int* __restrict__ done,
                                                   int N, int C, int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        int r0 = blockIdx.y * rows_per_chunk;
        int r1 = min(N, r0 + rows_per_chunk);
        float sw = 0.0f, sb = 0.0f;
        for (int r = r0; r < r1; ++r) {
            size_t at = (size_t)r * C + c;  // consecutive threads read consecutive columns
            float g = load(dout, at);
            sw += g * (load(x, at) - mean[r]) * rstd[r];
            sb += g;
        }
        part[(size_t)blockIdx.y * 2 * C + c] = sw;
        part[((size_t)blockIdx.y * 2 + 1) * C + c] = sb;
    }
    if (!last_block(done + blockIdx.x, gridDim.y) || c >= C) return;
    const volatile float* p = part;
    float sw = 0.0f, sb = 0.0f;
    for (int k = 0; k < (int)gridDim.y; ++k) {  // chunk order: the same sum on every run
        sw += p[(size_t)k * 2 * C + c];
        sb += p[((size_t)k * 2 + 1) * C + c];
    }
    store(dw, c, sw);
    store(db, c, sb);
}
