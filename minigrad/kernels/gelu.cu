// GELU, tanh form (as GPT-2): y = 0.5 x (1 + tanh(k (x + c x^3))), k = sqrt(2 / pi), c = 0.044715.
// Elementwise, grid-stride loops. The backward recomputes tanh from x rather than keeping it:
// one saved tensor instead of two, and the arithmetic is free next to the memory traffic.

#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

extern "C" __global__ void gelu_forward(const float* __restrict__ x, float* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float xi = x[i];
        float t = tanhf(GELU_K * (xi + GELU_C * xi * xi * xi));
        out[i] = 0.5f * xi * (1.0f + t);
    }
}

// d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)
extern "C" __global__ void gelu_backward(const float* __restrict__ x, const float* __restrict__ dout,
                                         float* __restrict__ dx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float xi = x[i];
        float t = tanhf(GELU_K * (xi + GELU_C * xi * xi * xi));
        float dinner = GELU_K * (1.0f + 3.0f * GELU_C * xi * xi);
        dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * dinner);
    }
}
