// Dropout masks drawn inside a kernel: minigrad.backend's counter-based hash, bit for bit.
//
// A mask is keep_i = dropout_bits(key, i) >= threshold for element i of the tensor the composite
// op would mask (its flat index), with (key, threshold) from backend.next_dropout_key: the same
// stream and counter step as backend.dropout_keep, so a fused kernel and the composite ops keep
// the same elements. threshold 0 keeps everything (p = 0, or p below 2^-33): callers skip the hash.
// The loader pastes this file in place of `#include "dropout.cuh"`.

__device__ __forceinline__ unsigned fmix32(unsigned x) {  // murmur3's finaliser
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// uint32 number `idx` of the stream `key` (backend.hash_stream: indices past 2^32 rekey)
__device__ __forceinline__ unsigned dropout_bits(unsigned long long key, unsigned long long idx) {
    unsigned long long hi = idx >> 32;
    if (hi) key = splitmix64(key ^ hi);
    unsigned x = fmix32((unsigned)idx * 0x9E3779B9u + (unsigned)key);
    return fmix32(x ^ (unsigned)(key >> 32));
}

__device__ __forceinline__ bool dropout_keep(unsigned long long key, unsigned threshold, unsigned long long idx) {
    return threshold == 0u || dropout_bits(key, idx) >= threshold;
}

// what element idx is multiplied by: drop_scale = 1 / (1 - p) where kept, 0 where dropped
// (1 without dropout: key, threshold, drop_scale = 0, 0, 1)
__device__ __forceinline__ float dropout_weight(unsigned long long key, unsigned threshold, float drop_scale,
                                                unsigned long long idx) {
    return dropout_keep(key, threshold, idx) ? drop_scale : 0.0f;
}
