// Causal (or full) attention with online softmax, forward and backward, FlashAttention-2's
// recurrences, float32 on CUDA cores. No (T, S) tensor is ever stored: the forward keeps one
// float per query row, lse = log(sum_j exp(s_ij)), and the backward recomputes the scores.
//
// Layout: q, o, dq: (BH, T, D); k, v, dk, dv: (BH, S, D); lse, delta: (BH, T); contiguous.
// Scores s_ij = (scale * q_i) . k_j. With causal, query i sees keys j <= i + (S - T) (the last T
// of S positions, as with a KV cache); the host only sends S >= T, so every row sees key 0.
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

extern "C" __global__ void attention_forward(const float* __restrict__ q, const float* __restrict__ k,
                                             const float* __restrict__ v, float* __restrict__ o,
                                             float* __restrict__ lse, int T, int S, float scale, int causal) {
    __shared__ float ks[BK * D];
    __shared__ float vs[BK * D];
    __shared__ float ss[BQ * (BK + 1)];  // this tile's scores, a padded row per thread
    float* s = ss + threadIdx.x * (BK + 1);
    int bh = blockIdx.y, q0 = blockIdx.x * BQ, tid = threadIdx.x, i = q0 + tid;
    const float* qb = q + (size_t)bh * T * D;
    const float* kb = k + (size_t)bh * S * D;
    const float* vb = v + (size_t)bh * S * D;
    float qr[D];  // this row of q, scaled, in registers: the score loop then reads one shared operand
#pragma unroll
    for (int d = 0; d < D; ++d) qr[d] = (i < T) ? qb[(size_t)i * D + d] * scale : 0.0f;
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
            ks[idx] = in ? kb[(size_t)(k0 + r) * D + c] : 0.0f;
            vs[idx] = in ? vb[(size_t)(k0 + r) * D + c] : 0.0f;
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
                l += p;
#pragma unroll
                for (int d = 0; d < D; ++d) acc[d] += p * vs[j * D + d];
            }
            m = m_new;
        }
    }
    if (i < T) {
        float inv = 1.0f / l;
        float* ob = o + ((size_t)bh * T + i) * D;
#pragma unroll
        for (int d = 0; d < D; ++d) ob[d] = acc[d] * inv;
        lse[(size_t)bh * T + i] = m + logf(l);
    }
}

// one warp per row: delta = sum_d dO * O; grid: ceil(rows / (blockDim.x / 32))
extern "C" __global__ void attention_backward_preprocess(const float* __restrict__ o, const float* __restrict__ dout,
                                                         float* __restrict__ delta, long long rows) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += dout[row * D + d] * o[row * D + d];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[row] = s;
}

// grid: ceil(S / BKB) x BH, BKB threads
extern "C" __global__ void attention_backward_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, const float* __restrict__ dout,
                                                   const float* __restrict__ lse, const float* __restrict__ delta,
                                                   float* __restrict__ dk, float* __restrict__ dv,
                                                   int T, int S, float scale, int causal) {
    __shared__ float ksh[BKB * DP];
    __shared__ float vsh[BKB * DP];
    __shared__ float qt[BQB * D];
    __shared__ float dot_[BQB * D];
    __shared__ float lt[BQB];
    __shared__ float dt[BQB];
    int bh = blockIdx.y, k0 = blockIdx.x * BKB, tid = threadIdx.x, j = k0 + tid;
    const float* qb = q + (size_t)bh * T * D;
    const float* dob = dout + (size_t)bh * T * D;
    const float* kb = k + (size_t)bh * S * D;
    const float* vb = v + (size_t)bh * S * D;
    for (int idx = tid; idx < BKB * D; idx += BKB) {
        int r = idx / D, c = idx % D;
        bool in = k0 + r < S;
        ksh[r * DP + c] = in ? kb[(size_t)(k0 + r) * D + c] : 0.0f;
        vsh[r * DP + c] = in ? vb[(size_t)(k0 + r) * D + c] : 0.0f;
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
            qt[idx] = in ? qb[(size_t)(i0 + r) * D + c] * scale : 0.0f;
            dot_[idx] = in ? dob[(size_t)(i0 + r) * D + c] : 0.0f;
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
            float dp = 0.0f;
#pragma unroll
            for (int d = 0; d < D; ++d) {
                dva[d] += p * dot_[r * D + d];
                dp += dot_[r * D + d] * vsh[tid * DP + d];
            }
            float ds = p * (dp - dt[r]);
#pragma unroll
            for (int d = 0; d < D; ++d) dka[d] += ds * qt[r * D + d];
        }
    }
    if (j < S) {
        float* dkb = dk + ((size_t)bh * S + j) * D;
        float* dvb = dv + ((size_t)bh * S + j) * D;
#pragma unroll
        for (int d = 0; d < D; ++d) {
            dkb[d] = dka[d];
            dvb[d] = dva[d];
        }
    }
}

// grid: ceil(T / BQD) x BH, BQD threads
extern "C" __global__ void attention_backward_dq(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, const float* __restrict__ dout,
                                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                                 float* __restrict__ dq, int T, int S, float scale, int causal) {
    __shared__ float qsh[BQD * DP];
    __shared__ float dosh[BQD * DP];
    __shared__ float kt[BKD * D];
    __shared__ float vt[BKD * D];
    int bh = blockIdx.y, q0 = blockIdx.x * BQD, tid = threadIdx.x, i = q0 + tid;
    const float* qb = q + (size_t)bh * T * D;
    const float* dob = dout + (size_t)bh * T * D;
    const float* kb = k + (size_t)bh * S * D;
    const float* vb = v + (size_t)bh * S * D;
    for (int idx = tid; idx < BQD * D; idx += BQD) {
        int r = idx / D, c = idx % D;
        bool in = q0 + r < T;
        qsh[r * DP + c] = in ? qb[(size_t)(q0 + r) * D + c] * scale : 0.0f;
        dosh[r * DP + c] = in ? dob[(size_t)(q0 + r) * D + c] : 0.0f;
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
            kt[idx] = in ? kb[(size_t)(k0 + r) * D + c] : 0.0f;
            vt[idx] = in ? vb[(size_t)(k0 + r) * D + c] : 0.0f;
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
            float ds = expf(s - li) * (dp - di);
#pragma unroll
            for (int d = 0; d < D; ++d) dqa[d] += ds * kt[c * D + d];
        }
    }
    if (i < T) {
        float* dqb = dq + ((size_t)bh * T + i) * D;
#pragma unroll
        for (int d = 0; d < D; ++d) dqb[d] = dqa[d] * scale;
    }
}
