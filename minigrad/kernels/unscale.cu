// float16 mixed precision (minigrad/amp.py): the scaled float16 gradients, all of them in one flat
// buffer, become the float32 gradients the optimizer reads, g32 = float(g16) * inv_scale, in one
// pass. A float16 gradient that overflowed (inf) or is NaN writes `stamp` into *flag: the host
// reads the flag once (the step's one sync for it) and skips the step when it equals the stamp
// it passed. A stamp that changes every call means the flag never needs clearing.

#include "common.cuh"

extern "C" __global__ void unscale_grads(const half_bits* __restrict__ g16, float* __restrict__ g32, long long n,
                                         float inv_scale, int* __restrict__ flag, int stamp) {
    bool bad = false;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        half_bits h = g16[i];
        bad |= (h & 0x7c00) == 0x7c00;  // exponent all ones: inf or NaN
        g32[i] = to_float(h) * inv_scale;
    }
    if (bad) *flag = stamp;  // every writer writes the same value
}
