// Embedding backward without atomics: gw[id] = sum of the gradient rows of every position that
// picked id, added in position order, so the result is the same bit for bit on every run.
// io_t is float32, or float16 with -DFP16=1 (common.cuh; the sums are float32 either way).
//
// embedding_keys writes key = id * N + position for each position (unique keys, so any correct
// sort gives one order; sort_key is 32-bit when n * N fits, -DKEY64=1 otherwise: half the sort's
// passes). After the host sorts them, block k of embedding_backward looks at sorted key k; if it
// is the first key of its id, its threads (over columns) add that id's rows in sorted order and
// write gw[id] once, or add to it with `accumulate` (gw then holds another op's gradient of the
// same table, e.g. a tied output head's). Without `accumulate` gw starts zeroed: ids never
// picked stay 0.

#include "common.cuh"

#if KEY64
typedef long long sort_key;
#else
typedef int sort_key;
#endif

extern "C" __global__ void embedding_keys(const long long* __restrict__ ids, sort_key* __restrict__ keys, int N) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N; i += gridDim.x * blockDim.x) {
        keys[i] = (sort_key)ids[i] * N + i;
    }
}

// grid: (N, ceil(C / blockDim.x) or fewer); rows: (N, C) in original position order
extern "C" __global__ void embedding_backward(const io_t* __restrict__ rows, const sort_key* __restrict__ sorted_keys,
                                              io_t* __restrict__ gw, int N, int C, int accumulate) {
    int k = blockIdx.x;
    sort_key id = sorted_keys[k] / N;
    if (k > 0 && sorted_keys[k - 1] / N == id) return;  // not the first position of this id
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < C; c += gridDim.y * blockDim.x) {
        float acc = 0.0f;
        for (int k2 = k; k2 < N; ++k2) {
            sort_key key = sorted_keys[k2];
            if (key / N != id) break;
            acc += load(rows, (size_t)(key % N) * C + c);
        }
        size_t at = (size_t)id * C + c;
        store(gw, at, accumulate ? load(gw, at) + acc : acc);
    }
}
