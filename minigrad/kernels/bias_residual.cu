// out = x + bias + residual on (N, C) row-major arrays, bias broadcast over rows: the add that
// closes a transformer sub-block (projection bias, then the residual stream) in one pass.
// io_t is float32, or float16 with -DFP16=1 (common.cuh).
// Backward: dx = dresidual = dout (no kernel needed), dbias = column sums of dout in one launch
// and a fixed order (common.cuh's last_block: partial sums over chunks of rows, then the last
// block of each column range adds the partials in chunk order).

#include "common.cuh"

extern "C" __global__ void bias_residual_forward(const io_t* __restrict__ x, const io_t* __restrict__ bias,
                                                 const io_t* __restrict__ residual, io_t* __restrict__ out,
                                                 long long n, int C) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        store(out, i, (load(x, i) + load(bias, i % C)) + load(residual, i));
    }
}

// grid: (ceil(C / blockDim.x), n_chunks); part: (n_chunks, C) float32 scratch;
// done: ceil(C / blockDim.x) zeros (left zero again)
extern "C" __global__ void bias_grad(const io_t* __restrict__ dout, float* __restrict__ part, io_t* __restrict__ db,
                                     unsigned int* __restrict__ done, int N, int C, int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        int r0 = blockIdx.y * rows_per_chunk;
        int r1 = min(N, r0 + rows_per_chunk);
        float s = 0.0f;
        for (int r = r0; r < r1; ++r) s += load(dout, (size_t)r * C + c);
        part[(size_t)blockIdx.y * C + c] = s;
    }
    if (!last_block(done + blockIdx.x, gridDim.y) || c >= C) return;
    const volatile float* p = part;
    float s = 0.0f;
    for (int k = 0; k < (int)gridDim.y; ++k) s += p[(size_t)k * C + c];
    store(db, c, s);
}
