// out = residual + dropout(x + bias) on (N, P) row-major arrays, bias (P,) broadcast over rows:
// the add that closes a transformer sub-block (projection bias, dropout, then the residual stream)
// in one pass, or (no residual) the embeddings' sum and dropout. Dropout draws its mask inside
// (dropout.cuh: element i of x is kept as backend.dropout_keep keeps it), so it costs no launch.
// io_t is float32, or float16 with -DFP16=1 (common.cuh); the math is float32, rounded once.
// Backward: dresidual = dout (no kernel needed); without dropout dx = dout too and dbias = column
// sums of dout (bias_grad); with it, dropout_bias_grad writes dx = dout * keep / (1 - p) and sums
// its columns in the same launch. Column sums in one launch and a fixed order (common.cuh's
// last_block: partial sums over chunks of rows, then the last block of each column range adds
// the partials in chunk order).

#include "common.cuh"
#include "dropout.cuh"

// residual: null for none; drop_key, drop_threshold, drop_scale: 0, 0, 1 without dropout
extern "C" __global__ void bias_residual_forward(const io_t* __restrict__ x, const io_t* __restrict__ bias,
                                                 const io_t* __restrict__ residual, io_t* __restrict__ out,
                                                 long long n, int P, unsigned long long drop_key,
                                                 unsigned drop_threshold, float drop_scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float y = load(x, i) + load(bias, i % P);
        if (drop_threshold || drop_scale != 1.0f) y *= dropout_weight(drop_key, drop_threshold, drop_scale, i);
        store(out, i, residual ? y + load(residual, i) : y);
    }
}

// column c's partial sum over rows chunk blockIdx.y of d = dout * dropout weight (written to dx
// when dx is not null), then, in the last block of the column range, the chunks' sums in order
__device__ __forceinline__ void column_sums(const io_t* __restrict__ dout, io_t* __restrict__ dx,
                                            float* __restrict__ part, io_t* __restrict__ db,
                                            unsigned int* __restrict__ done, int N, int C, int rows_per_chunk,
                                            unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        int r0 = blockIdx.y * rows_per_chunk;
        int r1 = min(N, r0 + rows_per_chunk);
        float s = 0.0f;
        for (int r = r0; r < r1; ++r) {
            size_t i = (size_t)r * C + c;
            float d = load(dout, i);
            if (dx) {
                d *= dropout_weight(drop_key, drop_threshold, drop_scale, i);
                store(dx, i, d);
            }
            s += d;
        }
        part[(size_t)blockIdx.y * C + c] = s;
    }
    if (!last_block(done + blockIdx.x, gridDim.y) || c >= C) return;
    const volatile float* p = part;
    float s = 0.0f;
    for (int k = 0; k < (int)gridDim.y; ++k) s += p[(size_t)k * C + c];
    store(db, c, s);
}

// grid: (ceil(C / blockDim.x), n_chunks); part: (n_chunks, C) float32 scratch;
// done: ceil(C / blockDim.x) zeros (left zero again)
extern "C" __global__ void bias_grad(const io_t* __restrict__ dout, float* __restrict__ part, io_t* __restrict__ db,
                                     unsigned int* __restrict__ done, int N, int C, int rows_per_chunk) {
    column_sums(dout, nullptr, part, db, done, N, C, rows_per_chunk, 0ull, 0u, 1.0f);
}

// the same, through the forward's dropout: dx = dout * keep * drop_scale, db = column sums of dx
extern "C" __global__ void dropout_bias_grad(const io_t* __restrict__ dout, io_t* __restrict__ dx,
                                             float* __restrict__ part, io_t* __restrict__ db,
                                             unsigned int* __restrict__ done, int N, int C, int rows_per_chunk,
                                             unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    column_sums(dout, dx, part, db, done, N, C, rows_per_chunk, drop_key, drop_threshold, drop_scale);
}
