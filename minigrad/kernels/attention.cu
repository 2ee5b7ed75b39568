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
// Forward (grid: ceil(T / BQ) x BH, BQ threads): thread = query row, its scaled q in registers.
// Keys arrive in shared tiles of BK; per tile the row's running max m, sum l and output accumulator acc follow
//     m' = max(m, max_j s_ij);  l = l exp(m - m') + sum_j exp(s_ij - m');
//     acc = acc exp(m - m') + sum_j exp(s_ij - m') v_j
// and at the end o_i = acc / l, lse_i = m + log(l).
// Backward, deterministic (no atomics): delta_i = dO_i . O_i (attention_backward_preprocess);
// p_ij = exp(s_ij - lse_i), dp_ij = dO_i . v_j, ds_ij = p_ij (dp_ij - delta_i);
// dv_j = sum_i p_ij dO_i and dk_j = sum_i ds_ij (scale q_i) in attention_backward_dkdv (thread =
// key row, queries in shared tiles of BQB); dq_i = scale sum_j ds_ij k_j in
// attention_backward_dq (thread = query row, keys in shared tiles of BKD).
// The loops over keys and queries stay rolled (the loops over d are unrolled, so the per-row
// accumulators stay in registers): full unrolling made NVRTC take 20 s for this file.
// Thread-private rows live in shared memory with a padded stride (D + 1), so that the threads of
// a warp reading "their" row at the same d hit different banks; tiles read by all threads at
// the same address are broadcasts.

#ifndef INFINITY  // NVRTC has no math.h
#define INFINITY __int_as_float(0x7f800000)
#endif

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define D HEAD_DIM
#define DP (HEAD_DIM + 1)
#define BQ 64   // forward: queries per block (one thread each)
#define BK 32   // forward: keys per shared tile
#define BKB 64  // backward dk/dv: keys per block (one thread each)
#define BQB 16  // backward dk/dv: queries per shared tile
#define BQD 64  // backward dq: queries per block (one thread each)
#define BKD 16  // backward dq: keys per shared tile

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

// 6 blocks an SM at most 170 registers a thread: without the bound ptxas takes 224 for the strided
// loads and the dropout test and the kernel runs at 14% occupancy, with it 168 and 19%, no spills
extern "C" __global__ void __launch_bounds__(BQ, 6) attention_forward(const float* __restrict__ q, const float* __restrict__ k,
                                             const float* __restrict__ v, const float* __restrict__ bias,
                                             float* __restrict__ o, float* __restrict__ lse, int T, int S, int H,
                                             int packed, float scale, int causal, unsigned long long drop_key,
                                             unsigned drop_threshold, float drop_scale) {
    __shared__ float ks[BK * D];
    __shared__ float vs[BK * D];
    __shared__ float ss[BQ * (BK + 1)];  // this tile's scores, a padded row per thread
    float* s = ss + threadIdx.x * (BK + 1);
    int bh = blockIdx.y, q0 = blockIdx.x * BQ, tid = threadIdx.x, i = q0 + tid;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *qb = q + hd.q, *kb = k + hd.k, *vb = v + hd.v;
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    float qr[D];  // this row of q, scaled, in registers: the score loop then reads one shared operand
#pragma unroll
    for (int d = 0; d < D; ++d) qr[d] = (i < T) ? biased(qb + i * hd.qs, bq, d) * scale : 0.0f;
    int off = S - T;
    int key_end = causal ? min(S, q0 + BQ + off) : S;  // keys any row of this block sees
    int last = causal ? i + off : S - 1;               // the last key this row sees
    float acc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the previous tile has been used by every thread
        for (int idx = tid; idx < BK * D; idx += BQ) {
            int r = idx / D, c = idx % D;
            bool in = k0 + r < S;
            ks[idx] = in ? biased(kb + (k0 + r) * hd.ks, bk, c) : 0.0f;
            vs[idx] = in ? biased(vb + (k0 + r) * hd.ks, bv, c) : 0.0f;
        }
        __syncthreads();
        float mt = -INFINITY;
#pragma unroll 1
        for (int j = 0; j < BK; ++j) {
            float dot = 0.0f;
#pragma unroll
            for (int d = 0; d < D; ++d) dot += qr[d] * ks[j * D + d];
            int kk = k0 + j;
            s[j] = (kk < S && kk <= last) ? dot : -INFINITY;
            mt = fmaxf(mt, s[j]);
        }
        float m_new = fmaxf(m, mt);
        if (m_new != -INFINITY) {  // false only while this row has seen no key yet
            float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
            l *= corr;
#pragma unroll
            for (int d = 0; d < D; ++d) acc[d] *= corr;
#pragma unroll 1
            for (int j = 0; j < BK; ++j) {
                float p = expf(s[j] - m_new);  // 0 for masked keys
                l += p;                        // the softmax sums every probability, kept or dropped
                if (drop_threshold && p != 0.0f && !dropout_keep(drop_key, drop_threshold,
                                                                  ((unsigned long long)bh * T + i) * S + k0 + j))
                    p = 0.0f;
#pragma unroll
                for (int d = 0; d < D; ++d) acc[d] += p * vs[j * D + d];
            }
            m = m_new;
        }
    }
    if (i < T) {
        float inv = drop_scale / l;
        float* ob = o + hd.o + i * hd.os;
#pragma unroll
        for (int d = 0; d < D; ++d) ob[d] = acc[d] * inv;
        lse[(size_t)bh * T + i] = m + logf(l);
    }
}

// one warp per row: delta = sum_d dO * O; grid: ceil(BH T / (blockDim.x / 32)). Rows in lse's order
// (bh, t); o and dout in `packed`'s layout
extern "C" __global__ void attention_backward_preprocess(const float* __restrict__ o, const float* __restrict__ dout,
                                                         float* __restrict__ delta, int T, int H, int packed,
                                                         long long rows) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int bh = (int)(row / T), t = (int)(row % T);
    const Head hd = head_of(bh, T, T, H, packed);
    long long at = hd.o + t * hd.os;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += dout[at + d] * o[at + d];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[row] = s;
}

// grid: ceil(S / BKB) x BH, BKB threads
extern "C" __global__ void attention_backward_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, const float* __restrict__ bias,
                                                   const float* __restrict__ dout, const float* __restrict__ lse,
                                                   const float* __restrict__ delta, float* __restrict__ dk,
                                                   float* __restrict__ dv, int T, int S, int H, int packed,
                                                   float scale, int causal, unsigned long long drop_key,
                                                   unsigned drop_threshold, float drop_scale) {
    __shared__ float ksh[BKB * DP];
    __shared__ float vsh[BKB * DP];
    __shared__ float qt[BQB * D];
    __shared__ float dot_[BQB * D];
    __shared__ float lt[BQB];
    __shared__ float dt[BQB];
    int bh = blockIdx.y, k0 = blockIdx.x * BKB, tid = threadIdx.x, j = k0 + tid;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *qb = q + hd.q, *kb = k + hd.k, *vb = v + hd.v, *dob = dout + hd.o;
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    for (int idx = tid; idx < BKB * D; idx += BKB) {
        int r = idx / D, c = idx % D;
        bool in = k0 + r < S;
        ksh[r * DP + c] = in ? biased(kb + (k0 + r) * hd.ks, bk, c) : 0.0f;
        vsh[r * DP + c] = in ? biased(vb + (k0 + r) * hd.ks, bv, c) : 0.0f;
    }
    int off = S - T;
    int i_begin = causal ? max(0, k0 - off) : 0;  // queries before this see no key of the block
    float dka[D], dva[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
        dka[d] = 0.0f;
        dva[d] = 0.0f;
    }
    for (int i0 = i_begin; i0 < T; i0 += BQB) {
        __syncthreads();
        for (int idx = tid; idx < BQB * D; idx += BKB) {
            int r = idx / D, c = idx % D;
            bool in = i0 + r < T;
            qt[idx] = in ? biased(qb + (i0 + r) * hd.qs, bq, c) * scale : 0.0f;
            dot_[idx] = in ? dob[(i0 + r) * hd.os + c] : 0.0f;
        }
        if (tid < BQB) {
            bool in = i0 + tid < T;
            lt[tid] = in ? lse[(size_t)bh * T + i0 + tid] : 0.0f;
            dt[tid] = in ? delta[(size_t)bh * T + i0 + tid] : 0.0f;
        }
        __syncthreads();
#pragma unroll 1
        for (int r = 0; r < BQB; ++r) {
            int ii = i0 + r;
            if (ii >= T || j >= S || (causal && j > ii + off)) continue;  // no barrier in this loop
            float s = 0.0f;
#pragma unroll
            for (int d = 0; d < D; ++d) s += qt[r * D + d] * ksh[tid * DP + d];
            float p = expf(s - lt[r]);
            float w = dropout_weight(drop_key, drop_threshold, drop_scale, ((unsigned long long)bh * T + ii) * S + j);
            float pw = p * w, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < D; ++d) {
                dva[d] += pw * dot_[r * D + d];
                dp += dot_[r * D + d] * vsh[tid * DP + d];
            }
            float ds = p * (dp * w - dt[r]);
#pragma unroll
            for (int d = 0; d < D; ++d) dka[d] += ds * qt[r * D + d];
        }
    }
    if (j < S) {
        float* dkb = dk + hd.k + j * hd.ks;
        float* dvb = dv + hd.v + j * hd.ks;
#pragma unroll
        for (int d = 0; d < D; ++d) {
            dkb[d] = dka[d];
            dvb[d] = dva[d];
        }
    }
}

// grid: ceil(T / BQD) x BH, BQD threads
extern "C" __global__ void attention_backward_dq(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, const float* __restrict__ bias,
                                                 const float* __restrict__ dout, const float* __restrict__ lse,
                                                 const float* __restrict__ delta, float* __restrict__ dq, int T, int S,
                                                 int H, int packed, float scale, int causal,
                                                 unsigned long long drop_key, unsigned drop_threshold,
                                                 float drop_scale) {
    __shared__ float qsh[BQD * DP];
    __shared__ float dosh[BQD * DP];
    __shared__ float kt[BKD * D];
    __shared__ float vt[BKD * D];
    int bh = blockIdx.y, q0 = blockIdx.x * BQD, tid = threadIdx.x, i = q0 + tid;
    const Head hd = head_of(bh, T, S, H, packed);
    const float *qb = q + hd.q, *kb = k + hd.k, *vb = v + hd.v, *dob = dout + hd.o;
    const float *bq = head_bias(bias, bh, H), *bk = bq ? bq + H * D : nullptr, *bv = bq ? bq + 2 * H * D : nullptr;
    for (int idx = tid; idx < BQD * D; idx += BQD) {
        int r = idx / D, c = idx % D;
        bool in = q0 + r < T;
        qsh[r * DP + c] = in ? biased(qb + (q0 + r) * hd.qs, bq, c) * scale : 0.0f;
        dosh[r * DP + c] = in ? dob[(q0 + r) * hd.os + c] : 0.0f;
    }
    int off = S - T;
    float li = (i < T) ? lse[(size_t)bh * T + i] : 0.0f;
    float di = (i < T) ? delta[(size_t)bh * T + i] : 0.0f;
    int key_end = causal ? min(S, q0 + BQD + off) : S;
    float dqa[D];
#pragma unroll
    for (int d = 0; d < D; ++d) dqa[d] = 0.0f;
    for (int k0 = 0; k0 < key_end; k0 += BKD) {
        __syncthreads();
        for (int idx = tid; idx < BKD * D; idx += BQD) {
            int r = idx / D, c = idx % D;
            bool in = k0 + r < S;
            kt[idx] = in ? biased(kb + (k0 + r) * hd.ks, bk, c) : 0.0f;
            vt[idx] = in ? biased(vb + (k0 + r) * hd.ks, bv, c) : 0.0f;
        }
        __syncthreads();
#pragma unroll 1
        for (int c = 0; c < BKD; ++c) {
            int jj = k0 + c;
            if (i >= T || jj >= S || (causal && jj > i + off)) continue;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < D; ++d) {
                s += qsh[tid * DP + d] * kt[c * D + d];
                dp += dosh[tid * DP + d] * vt[c * D + d];
            }
            float w = dropout_weight(drop_key, drop_threshold, drop_scale, ((unsigned long long)bh * T + i) * S + jj);
            float ds = expf(s - li) * (dp * w - di);
#pragma unroll
            for (int d = 0; d < D; ++d) dqa[d] += ds * kt[c * D + d];
        }
    }
    if (i < T) {
        float* dqb = dq + hd.q + i * hd.qs;
#pragma unroll
        for (int d = 0; d < D; ++d) dqb[d] = dqa[d] * scale;
    }
}
