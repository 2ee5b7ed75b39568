// LayerNorm over the last axis of a row-major (N, C) float32 array, forward and backward.
//
// Forward: one warp per row. The row is read three times (mean, variance, output) but it is at
// most a few KB, so the second and third reads come from L1/L2. mean and rstd are kept per row
// (two floats), which is all the backward needs besides x: no normalised copy is stored.
//
// Backward, without atomics so the result is the same on every run:
//   dx: one warp per row, dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * w;
//   dw, db: column sums over rows, in two passes: each block sums a chunk of rows for a range of
//   columns into a partial row, then layernorm_sum_partials adds the partials in a fixed order.

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// grid: ceil(N / (blockDim.x / 32)); block: a multiple of 32 threads
extern "C" __global__ void layernorm_forward(const float* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ b, float* __restrict__ out,
                                             float* __restrict__ mean, float* __restrict__ rstd,
                                             int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;  // uniform across the warp: the shuffles below stay complete
    const float* xr = x + (size_t)row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += 32) s += xr[i];
    float mu = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float d = xr[i] - mu;
        v += d * d;
    }
    float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
    float* o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) o[i] = (xr[i] - mu) * r * w[i] + b[i];
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// grid: ceil(N / (blockDim.x / 32)); block: a multiple of 32 threads
extern "C" __global__ void layernorm_backward_dx(const float* __restrict__ dout, const float* __restrict__ x,
                                                 const float* __restrict__ w, const float* __restrict__ mean,
                                                 const float* __restrict__ rstd, float* __restrict__ dx,
                                                 int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* xr = x + (size_t)row * C;
    const float* gr = dout + (size_t)row * C;
    float mu = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float g = gr[i] * w[i];
        sg += g;
        sgx += g * (xr[i] - mu) * r;
    }
    float m1 = warp_sum(sg) / C, m2 = warp_sum(sgx) / C;
    float* d = dx + (size_t)row * C;
    for (int i = lane; i < C; i += 32) {
        float xhat = (xr[i] - mu) * r;
        d[i] = (gr[i] * w[i] - m1 - xhat * m2) * r;
    }
}

// grid: (ceil(C / blockDim.x), n_chunks); partial sums of rows [chunk * rows_per_chunk, ...)
// pdw, pdb: (n_chunks, C)
extern "C" __global__ void layernorm_backward_dwdb(const float* __restrict__ dout, const float* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   float* __restrict__ pdw, float* __restrict__ pdb,
                                                   int N, int C, int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int r0 = blockIdx.y * rows_per_chunk;
    int r1 = min(N, r0 + rows_per_chunk);
    float sw = 0.0f, sb = 0.0f;
    for (int r = r0; r < r1; ++r) {
        size_t at = (size_t)r * C + c;  // consecutive threads read consecutive columns
        float g = dout[at];
        sw += g * (x[at] - mean[r]) * rstd[r];
        sb += g;
    }
    pdw[(size_t)blockIdx.y * C + c] = sw;
    pdb[(size_t)blockIdx.y * C + c] = sb;
}

// grid: ceil(C / blockDim.x); out[c] = sum over r of part[r, c], r ascending
extern "C" __global__ void layernorm_sum_partials(const float* __restrict__ part, float* __restrict__ out,
                                                  int n_parts, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int r = 0; r < n_parts; ++r) s += part[(size_t)r * C + c];
    out[c] = s;
}
