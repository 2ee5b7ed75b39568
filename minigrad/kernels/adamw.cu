// AdamW, PyTorch's torch.optim.AdamW update (minigrad/optim.py), one pass over memory:
//     p = p * (1 - lr * wd)
//     m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//     p = p - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps),  step_size = lr / (1 - b1^t),
//                                                               inv_sqrt_bc2 = 1 / sqrt(1 - b2^t)
// The bias corrections are computed on the host in double precision. adamw_flat updates one
// flat array; adamw_multi updates several ranges of the optimizer's flat arrays (its parameter
// groups: weight decay on matrices, none on biases and LayerNorm) in one launch, each range with
// its own weight decay.

__device__ __forceinline__ void adamw_one(float* p, const float* g, float* m, float* v, long long i,
                                          float decay, float b1, float b2, float eps,
                                          float step_size, float inv_sqrt_bc2) {
    float gi = g[i];
    float pi = p[i] * (1.0f - decay);
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * (mi / (sqrtf(vi) * inv_sqrt_bc2 + eps));
}

extern "C" __global__ void adamw_flat(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                      float* __restrict__ v, long long n, float decay, float b1, float b2,
                                      float eps, float step_size, float inv_sqrt_bc2) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        adamw_one(p, g, m, v, i, decay, b1, b2, eps, step_size, inv_sqrt_bc2);
    }
}

// table: offsets (n_ranges + 1 prefix sums of the ranges' lengths), then starts (n_ranges): range
// r is p[starts[r] : starts[r] + offsets[r + 1] - offsets[r]], with weight decay wds[r]; element e
// of the ranges' concatenation belongs to the r with offsets[r] <= e < offsets[r + 1] (found by
// binary search).
extern "C" __global__ void adamw_multi(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                       float* __restrict__ v, const long long* __restrict__ table,
                                       const float* __restrict__ wds, int n_ranges, float lr, float b1, float b2,
                                       float eps, float step_size, float inv_sqrt_bc2) {
    const long long* offsets = table;
    const long long* starts = table + n_ranges + 1;
    long long total = offsets[n_ranges];
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int lo = 0, hi = n_ranges - 1;  // the last r with offsets[r] <= e
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= e) lo = mid; else hi = mid - 1;
        }
        adamw_one(p, g, m, v, starts[lo] + (e - offsets[lo]), lr * wds[lo], b1, b2, eps, step_size, inv_sqrt_bc2);
    }
}
