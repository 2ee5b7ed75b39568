// AdamW, PyTorch's torch.optim.AdamW update (minigrad/optim.py), one pass over memory:
//     p = p * (1 - lr * wd)
//     m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//     p = p - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps),  step_size = lr / (1 - b1^t),
//                                                               inv_sqrt_bc2 = 1 / sqrt(1 - b2^t)
// The bias corrections are computed on the host in double precision. adamw_flat updates one
// flat array (the flat parameter buffer); adamw_multi updates many tensors in one launch from
// tables of device pointers, each tensor with its own decay (lr * weight decay of its group).

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

// offsets: (n_tensors + 1) prefix sums of the sizes; element e of the concatenation belongs to
// the tensor t with offsets[t] <= e < offsets[t + 1] (found by binary search).
extern "C" __global__ void adamw_multi(const unsigned long long* __restrict__ p_ptrs,
                                       const unsigned long long* __restrict__ g_ptrs,
                                       const unsigned long long* __restrict__ m_ptrs,
                                       const unsigned long long* __restrict__ v_ptrs,
                                       const long long* __restrict__ offsets, const float* __restrict__ decays,
                                       int n_tensors, float b1, float b2, float eps, float step_size,
                                       float inv_sqrt_bc2) {
    long long total = offsets[n_tensors];
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        int lo = 0, hi = n_tensors - 1;  // the last t with offsets[t] <= e
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= e) lo = mid; else hi = mid - 1;
        }
        adamw_one((float*)p_ptrs[lo], (const float*)g_ptrs[lo], (float*)m_ptrs[lo], (float*)v_ptrs[lo],
                  e - offsets[lo], decays[lo], b1, b2, eps, step_size, inv_sqrt_bc2);
    }
}
