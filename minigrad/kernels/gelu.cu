// GELU, tanh form (as GPT-2): y = 0.5 u (1 + tanh(k (u + c u^3))), k = sqrt(2 / pi), c = 0.044715,
// of u = x + bias: the bias of the linear layer before it (bias over the last axis, C columns;
// C = 0: no bias) is added in the same pass. Elementwise, grid-stride loops; io_t is float32, or
// float16 with -DFP16=1 (common.cuh). The backward recomputes u and tanh from x rather than
// keeping them: nothing saved but x, and the arithmetic is free next to the memory traffic. The
// bias's gradient is the column sums of dx (bias_residual.cu's bias_grad).

#include "common.cuh"

#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

__device__ __forceinline__ float gelu_input(const io_t* x, const io_t* bias, int C, long long i) {
    return C > 0 ? load(x, i) + load(bias, i % C) : load(x, i);
}

extern "C" __global__ void gelu_forward(const io_t* __restrict__ x, const io_t* __restrict__ bias, int C,
                                        io_t* __restrict__ out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float u = gelu_input(x, bias, C, i);
        float t = tanhf(GELU_K * (u + GELU_C * u * u * u));
        store(out, i, 0.5f * u * (1.0f + t));
    }
}

// d/du = 0.5 (1 + t) + 0.5 u (1 - t^2) k (1 + 3 c u^2)
extern "C" __global__ void gelu_backward(const io_t* __restrict__ x, const io_t* __restrict__ bias, int C,
                                         const io_t* __restrict__ dout, io_t* __restrict__ dx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float u = gelu_input(x, bias, C, i);
        float t = tanhf(GELU_K * (u + GELU_C * u * u * u));
        float dinner = GELU_K * (1.0f + 3.0f * GELU_C * u * u);
        store(dx, i, load(dout, i) * (0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * dinner));
    }
}
