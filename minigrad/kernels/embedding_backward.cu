// Embedding backward without atomics: gw[id] = sum of the gradient rows of every position that
// picked id, added in position order, so the result is the same bit for bit on every run.
//
// The host sorts keys id * N + position (unique, so any correct sort gives one order). Block k
// looks at sorted key k; if it is the first key of its id, its threads (over columns) add that
// id's rows in sorted order and write gw[id] once. gw starts zeroed: ids never picked stay 0.

// grid: (N, ceil(C / blockDim.x) or fewer); rows: (N, C) in original position order
extern "C" __global__ void embedding_backward(const float* __restrict__ rows,
                                              const long long* __restrict__ sorted_keys,
                                              float* __restrict__ gw, int N, int C) {
    int k = blockIdx.x;
    long long id = sorted_keys[k] / N;
    if (k > 0 && sorted_keys[k - 1] / N == id) return;  // not the first position of this id
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < C; c += gridDim.y * blockDim.x) {
        float acc = 0.0f;
        for (int k2 = k; k2 < N; ++k2) {
            long long key = sorted_keys[k2];
            if (key / N != id) break;
            acc += rows[(size_t)(key % N) * C + c];
        }
        gw[(size_t)id * C + c] = acc;
    }
}
