// Causal (or full) attention with online softmax, forward and backward, FlashAttention-2's
// recurrences, float32 on CUDA cores. No (T, S) tensor is ever stored: the forward keeps one
// float per query row, lse = log(sum_j exp(s_ij)), and the backward recomputes the scores.
//
// Layout, float32, by `packed` (see head_of below):
//   0  q, o, dq: (BH, T, D); k, v, dk, dv: (BH, S, D); contiguous (scaled_dot_product_attention).
//   1  the QKV projection's output as it is, S = T: q, k and v are all qkv (B, T, 3, H, D), the
//      kernels reading slices 0, 1, 2 of it through strides (no split copies), plus its bias
//      (3, H, D) when given (else null), added as the rows are read; o and dout (B, T, H, D), ready
//      for the output projection; dq, dk and dv are all dqkv (B, T, 3, H, D), each kernel writing
//      its slices (every element once: no zero fill).
//   lse, delta: (BH, T) in both, bh = b H + h.
// Scores s_ij = (scale * q_i) . k_j. With causal, query i sees keys j <= i + (S - T) (the last T
// of S positions, as with a KV cache); the host only sends S >= T, so every row sees key 0.
// Dropout (drop_threshold > 0): p_ij is kept when dropout.cuh's hash of element (bh T + i) S + j
// (the composite op's (B, H, T, S) mask, bit for bit) passes, and kept ones weigh drop_scale =
// 1 / (1 - p): o_i = sum_j p_ij keep_ij v_j drop_scale; backward dp_ij = dO_i . v_j keep_ij drop_scale.
//
// Work split: a row (a query's, or in dk/dv a key's) belongs to a group of G = 4 neighbouring
// threads of a warp, and thread g of the group holds a quarter of the row's columns in registers
// (E of them): its part of q, k, v, dO and of the accumulators. The columns come in runs of V = 4
// neighbours, the four threads' runs side by side (thread g: 4g..4g+3, 16+4g..16+4g+3, ...; see
// col()), so a thread reads each run of a shared row as one 16-byte load, one load per four
// multiply-adds, and the four threads together read 64 neighbouring bytes (no bank conflict).
// A dot product of two rows is E multiply-adds in each thread and a butterfly over the group
// (row_sum: two shuffles), which leaves the same bits in all four threads, so they all follow the
// same running max and sum. Why four: a whole row per thread (64 accumulators, 128 in dk/dv) took
// 168-255 registers and ran at 12-19% occupancy; a quarter row keeps every kernel under 128
// registers (25% occupancy at 256 threads a block, 2 blocks an SM) without spills. A head size that
// 4 does not divide takes runs of V = 1. Shuffles need every lane of the warp: the kernels
// never branch around them, they compute masked entries and weigh them 0.
//
// Forward (grid: ceil(T / BQ) x BH, BQ G threads): a group per query row, its scaled q in registers.
// Keys arrive in shared tiles of BK (the loop over a tile unrolled, its scores in registers); per
// tile the row's running max m, sum l and output accumulator acc follow
//     m' = max(m, max_j s_ij);  l = l exp(m - m') + sum_j exp(s_ij - m');
//     acc = acc exp(m - m') + sum_j exp(s_ij - m') v_j
// and at the end o_i = acc / l, lse_i = m + log(l).
// Backward, deterministic (no atomics): delta_i = dO_i . O_i (attention_backward_preprocess);
// p_ij = exp(s_ij - lse_i), dp_ij = dO_i . v_j, ds_ij = p_ij (dp_ij - delta_i);
// dv_j = sum_i p_ij dO_i and dk_j = sum_i ds_ij (scale q_i) in attention_backward_dkdv (a group
// per key row, holding k_j and v_j; queries in shared tiles of BQB); dq_i = scale sum_j ds_ij k_j
// in attention_backward_dq (a group per query row, holding q_i and dO_i; keys in tiles of BKD).
// The loops over the backward tiles stay rolled (the loops over e are unrolled, so the
// accumulators stay in registers); every thread of a warp reading a tile row at the same e reads
// one of four addresses, a broadcast each.

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define D HEAD_DIM
#define G 4                    // threads per row
#if D % 4 == 0
#define V 4  // a thread's columns come in runs of 4 neighbours, read from shared memory as one float4
#else
#define V 1  // (a head size 4 does not divide: single columns)
#endif
#define E (((D + G * V - 1) / (G * V)) * V)  // a row's elements per thread
#define BQ 64   // forward: query rows per block (BQ G threads)
#define BK 16   // forward: keys per shared tile
#define BKB 64  // backward dk/dv: key rows per block (BKB G threads)
#define BQB 32  // backward dk/dv: queries per shared tile
#define BQD 64  // backward dq: query rows per block (BQD G threads)
#define BKD 32  // backward dq: keys per shared tile
#define BLOCKS_PER_SM 2  // with 256 threads a block: at most 128 registers a thread, 25% occupancy

#include "common.cuh"
#include "dropout.cuh"

// where head bh's rows of each tensor start (element offsets) and how far apart they lie
struct Head {
    long long q, k, v, o;  // q, k, v: offsets into the q, k, v arguments (dq, dk, dv the same); o: into o, dout
    long long qs, ks, os;  // row strides: q (and dq), k and v (dk, dv), o (dout)
};

__device__ __forceinline__ Head head_of(int bh, int T, int S, int H, int packed) {
    if (!packed) return {(long long)bh * T * D, (long long)bh * S * D, (long long)bh * S * D, (long long)bh * T * D, D, D, D};
    long long q = (long long)(bh / H) * T * 3 * H * D + (bh % H) * D;
    return {q, q + H * D, q + 2 * H * D, (long long)(bh / H) * T * H * D + (bh % H) * D, 3LL * H * D, 3LL * H * D,
            (long long)H * D};
}

// this head's bias over q's columns (k's and v's follow at + H D, + 2 H D); null without a bias
__device__ __forceinline__ const float* head_bias(const float* bias, int bh, int H) {
    return bias ? bias + (bh % H) * D : nullptr;
}
__device__ __forceinline__ float biased(const float* row, const float* bias, int c) {
    return bias ? row[c] + bias[c] : row[c];
}

// element e of thread g's part of a row is the row's column col(g, e): runs of V neighbours, the
// G threads' runs side by side (V = 4: thread g holds columns 4g..4g+3, 4g+16..4g+19, ...)
__device__ __forceinline__ int col(int g, int e) { return V * (g + G * (e / V)) + e % V; }
// whether that column exists (false past the row's end, only where G V does not divide D; a run
// is all in or all out, as V divides D)
__device__ __forceinline__ bool owns(int g, int e) { return D % (G * V) == 0 || V * (g + G * (e / V)) < D; }

// the V columns c .. c + V - 1 of a shared row: one 16-byte load when V = 4 (tiles are 16-byte
// aligned and D is a multiple of 4, so every run is)
__device__ __forceinline__ void shared_run(float* out, const float* row, int c) {
#if V == 4
    float4 t = *reinterpret_cast<const float4*>(row + c);
    out[0] = t.x;
    out[1] = t.y;
    out[2] = t.z;
    out[3] = t.w;
#else
    out[0] = row[c];
#endif
}

// the sum of x over the G threads of a row, in each of them (the same bits in all: a butterfly
// adds the same pairs everywhere)
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
    for (int off = 1; off < G; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// thread g's part of row `row` (scaled), or zeros for a row past n
__device__ __forceinline__ void load_part(float* part, const float* base, long long stride, int row, int n,
                                          const float* bias, int g, float scale) {
#pragma unroll
    for (int e = 0; e < E; ++e)
        part[e] = (row < n && owns(g, e)) ? biased(base + row * stride, bias, col(g, e)) * scale : 0.0f;
}

// rows r0 .. r0 + R - 1 of a (n, D) head into a shared (R, D) tile, zeros past n, by all `threads`
__device__ __forceinline__ void load_tile(float* tile, const float* base, long long stride, int r0, int R, int n,
                                          const float* bias, float scale, int threads) {
    for (int idx = threadIdx.x; idx < R * D; idx += threads) {
        int r = idx / D, c = idx % D;
        tile[idx] = r0 + r < n ? biased(base + (r0 + r) * stride, bias, c) * scale : 0.0f;
    }
}

// sum_e part[e] * tile_row[col(g, e)]: thread g's share of a dot product with a shared row
__device__ __forceinline__ float part_dot(const float* part, const float* tile_row, int g) {
    float s = 0.0f, t[V];
#pragma unroll
    for (int e = 0; e < E; e += V) {
        if (!owns(g, e)) continue;
        shared_run(t, tile_row, col(g, e));
#pragma unroll
        for (int u = 0; u < V; ++u) s += part[e + u] * t[u];
    }
    return s;
}

// acc[e] += w * tile_row[col(g, e)]
__device__ __forceinline__ void part_axpy(float* acc, float w, const float* tile_row, int g) {
    float t[V];
#pragma unroll
    for (int e = 0; e < E; e += V) {
        if (!owns(g, e)) continue;
        shared_run(t, tile_row, col(g, e));
#pragma unroll
        for (int u = 0; u < V; ++u) acc[e + u] += w * t[u];
    }
}

// thread g's part of a row, times `scale`, into global memory
__device__ __forceinline__ void store_part(float* row, const float* part, int g, float scale) {
#pragma unroll
    for (int e = 0; e < E; ++e)
        if (owns(g, e)) row[col(g, e)] = part[e] * scale;
}

extern "C" __global__ void __launch_bounds__(BQ * G, BLOCKS_PER_SM) attention_forward(
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
        const float* __restrict__ bias, float* __restrict__ o, float* __restrict__ lse, int T, int S, int H,
        int packed, float scale, int causal, unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    __shared__ __align__(16) float ks[BK * D];
    __shared__ __align__(16) float vs[BK * D];
    int bh = blockIdx.y, q0 = blockIdx.x * BQ, g = threadIdx.x % G, i = q0 + threadIdx.x / G;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    float qr[E], acc[E];  // this thread's part of the row's scaled q and of its output accumulator
    load_part(qr, q + hd.q, hd.qs, i, T, bq, g, scale);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = 0.0f;
    int off = S - T;
    int key_end = causal ? min(S, q0 + BQ + off) : S;  // keys any row of this block sees
    int last = causal ? i + off : S - 1;               // the last key this row sees
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the previous tile has been used by every thread
        load_tile(ks, k + hd.k, hd.ks, k0, BK, S, bk, 1.0f, BQ * G);
        load_tile(vs, v + hd.v, hd.ks, k0, BK, S, bv, 1.0f, BQ * G);
        __syncthreads();
        float s[BK], mt = -INFINITY;  // the tile's scores (the loops over j unrolled: registers)
#pragma unroll
        for (int j = 0; j < BK; ++j) {
            float dot = row_sum(part_dot(qr, ks + j * D, g));
            s[j] = (k0 + j < S && k0 + j <= last) ? dot : -INFINITY;
            mt = fmaxf(mt, s[j]);
        }
        float m_new = fmaxf(m, mt);
        if (m_new != -INFINITY) {  // false only while this row has seen no key yet (no shuffles inside)
            float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
            l *= corr;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[e] *= corr;
#pragma unroll
            for (int j = 0; j < BK; ++j) {
                float p = expf(s[j] - m_new);  // 0 for masked keys
                l += p;                        // the softmax sums every probability, kept or dropped
                if (drop_threshold && p != 0.0f && !dropout_keep(drop_key, drop_threshold,
                                                                  ((unsigned long long)bh * T + i) * S + k0 + j))
                    p = 0.0f;
                part_axpy(acc, p, vs + j * D, g);
            }
            m = m_new;
        }
    }
    if (i < T) {
        store_part(o + hd.o + i * hd.os, acc, g, drop_scale / l);
        if (g == 0) lse[(size_t)bh * T + i] = m + logf(l);
    }
}

// one warp per row: delta = sum_d dO * O; grid: ceil(BH T / (blockDim.x / 32)). Rows in lse's order
// (bh, t); o and dout in `packed`'s layout
extern "C" __global__ void __launch_bounds__(256) attention_backward_preprocess(
        const float* __restrict__ o, const float* __restrict__ dout, float* __restrict__ delta, int T, int H,
        int packed, long long rows) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int bh = (int)(row / T), t = (int)(row % T);
    const Head hd = head_of(bh, T, T, H, packed);
    long long at = hd.o + t * hd.os;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += dout[at + d] * o[at + d];
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// grid: ceil(S / BKB) x BH, BKB G threads
extern "C" __global__ void __launch_bounds__(BKB * G, BLOCKS_PER_SM) attention_backward_dkdv(
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
        const float* __restrict__ bias, const float* __restrict__ dout, const float* __restrict__ lse,
        const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv, int T, int S, int H,
        int packed, float scale, int causal, unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    __shared__ __align__(16) float qt[BQB * D];   // a tile of queries, scaled
    __shared__ __align__(16) float dot_[BQB * D];  // their output gradients
    __shared__ float lt[BQB];
    __shared__ float dt[BQB];
    int bh = blockIdx.y, k0 = blockIdx.x * BKB, g = threadIdx.x % G, j = k0 + threadIdx.x / G;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    float kr[E], vr[E], dka[E], dva[E];  // this thread's part of k_j, v_j and of their gradients
    load_part(kr, k + hd.k, hd.ks, j, S, bk, g, 1.0f);
    load_part(vr, v + hd.v, hd.ks, j, S, bv, g, 1.0f);
#pragma unroll
    for (int e = 0; e < E; ++e) dka[e] = dva[e] = 0.0f;
    int off = S - T;
    int i_begin = causal ? max(0, k0 - off) : 0;  // queries before this see no key of the block
    for (int i0 = i_begin; i0 < T; i0 += BQB) {
        __syncthreads();
        load_tile(qt, q + hd.q, hd.qs, i0, BQB, T, bq, scale, BKB * G);
        load_tile(dot_, dout + hd.o, hd.os, i0, BQB, T, nullptr, 1.0f, BKB * G);
        if (threadIdx.x < BQB) {
            bool in = i0 + threadIdx.x < T;
            lt[threadIdx.x] = in ? lse[(size_t)bh * T + i0 + threadIdx.x] : 0.0f;
            dt[threadIdx.x] = in ? delta[(size_t)bh * T + i0 + threadIdx.x] : 0.0f;
        }
        __syncthreads();
#pragma unroll 1
        for (int r = 0; r < BQB; ++r) {
            int ii = i0 + r;
            float s = row_sum(part_dot(kr, qt + r * D, g));
            float dp = row_sum(part_dot(vr, dot_ + r * D, g));
            bool seen = ii < T && j < S && !(causal && j > ii + off);  // else this pair weighs 0
            float p = seen ? expf(s - lt[r]) : 0.0f;
            float w = seen ? dropout_weight(drop_key, drop_threshold, drop_scale,
                                            ((unsigned long long)bh * T + ii) * S + j) : 0.0f;
            part_axpy(dva, p * w, dot_ + r * D, g);
            part_axpy(dka, p * (dp * w - dt[r]), qt + r * D, g);
        }
    }
    if (j < S) {
        store_part(dk + hd.k + j * hd.ks, dka, g, 1.0f);
        store_part(dv + hd.v + j * hd.ks, dva, g, 1.0f);
    }
}

// grid: ceil(T / BQD) x BH, BQD G threads
extern "C" __global__ void __launch_bounds__(BQD * G, BLOCKS_PER_SM) attention_backward_dq(
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
        const float* __restrict__ bias, const float* __restrict__ dout, const float* __restrict__ lse,
        const float* __restrict__ delta, float* __restrict__ dq, int T, int S, int H, int packed, float scale,
        int causal, unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    __shared__ __align__(16) float kt[BKD * D];
    __shared__ __align__(16) float vt[BKD * D];
    int bh = blockIdx.y, q0 = blockIdx.x * BQD, g = threadIdx.x % G, i = q0 + threadIdx.x / G;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    float qr[E], dor[E], dqa[E];  // this thread's part of the scaled q_i, of dO_i and of dq_i
    load_part(qr, q + hd.q, hd.qs, i, T, bq, g, scale);
    load_part(dor, dout + hd.o, hd.os, i, T, nullptr, g, 1.0f);
#pragma unroll
    for (int e = 0; e < E; ++e) dqa[e] = 0.0f;
    int off = S - T;
    float li = (i < T) ? lse[(size_t)bh * T + i] : 0.0f;
    float di = (i < T) ? delta[(size_t)bh * T + i] : 0.0f;
    int key_end = causal ? min(S, q0 + BQD + off) : S;
    for (int k0 = 0; k0 < key_end; k0 += BKD) {
        __syncthreads();
        load_tile(kt, k + hd.k, hd.ks, k0, BKD, S, bk, 1.0f, BQD * G);
        load_tile(vt, v + hd.v, hd.ks, k0, BKD, S, bv, 1.0f, BQD * G);
        __syncthreads();
#pragma unroll 1
        for (int c = 0; c < BKD; ++c) {
            int jj = k0 + c;
            float s = row_sum(part_dot(qr, kt + c * D, g));
            float dp = row_sum(part_dot(dor, vt + c * D, g));
            bool seen = i < T && jj < S && !(causal && jj > i + off);  // else this pair weighs 0
            float w = seen ? dropout_weight(drop_key, drop_threshold, drop_scale,
                                            ((unsigned long long)bh * T + i) * S + jj) : 0.0f;
            part_axpy(dqa, seen ? expf(s - li) * (dp * w - di) : 0.0f, kt + c * D, g);
        }
    }
    if (i < T) store_part(dq + hd.q + i * hd.qs, dqa, g, scale);
}
