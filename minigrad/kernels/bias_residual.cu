// out = x + bias + residual on (N, C) row-major arrays, bias broadcast over rows: the add that
// closes a transformer sub-block (projection bias, then the residual stream) in one pass.
// Backward: dx = dresidual = dout (no kernel needed), dbias = column sums of dout, computed in
// two deterministic passes (partial sums over chunks of rows, then the partials in order).

extern "C" __global__ void bias_residual_forward(const float* __restrict__ x, const float* __restrict__ bias,
                                                 const float* __restrict__ residual, float* __restrict__ out,
                                                 long long n, int C) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = (x[i] + bias[i % C]) + residual[i];
    }
}

// grid: (ceil(C / blockDim.x), n_chunks); part: (n_chunks, C)
extern "C" __global__ void bias_grad_partial(const float* __restrict__ dout, float* __restrict__ part,
                                             int N, int C, int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int r0 = blockIdx.y * rows_per_chunk;
    int r1 = min(N, r0 + rows_per_chunk);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += dout[(size_t)r * C + c];
    part[(size_t)blockIdx.y * C + c] = s;
}

// grid: ceil(C / blockDim.x)
extern "C" __global__ void bias_grad_sum(const float* __restrict__ part, float* __restrict__ out, int n_parts, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int r = 0; r < n_parts; ++r) s += part[(size_t)r * C + c];
    out[c] = s;
}
