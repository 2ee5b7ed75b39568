// FlashAttention-2 on tensor cores: causal (or full) self-attention, float16 in and out, float32
// accumulation and softmax statistics, dropout drawn inside, q/k/v read in place.
// The algorithm, the fragment layout and a picture: README.md; the same steps in NumPy:
// twins_flash.py (tests run this file on the CPU through tests/cuda_emulator.py).
//
// Layout (float16 as its bits, `half_bits`): qkv (B, T, 3, H, D), the QKV projection's output as it
// is, read through strides (no split copies), plus its bias (3, H, D) when one is given (added to
// each row as the kernels read it, so the projection needs no bias pass of its own); o and dout
// (B, T, H, D), ready for the output
// projection; lse and delta (B, H, T) float32; dqkv (B, T, 3, H, D), every element written once
// (dq by flash_backward_dq, dk and dv by flash_backward_dkdv): no zero fill, no atomics, so the
// gradients are the same bits on every run.
//
// Work split: a block is 4 warps; each warp owns 16 rows of the block's tile (queries in the
// forward and dq kernels, keys in dkdv) and runs every product as mma.sync m16n8k16 (float16 x
// float16 + float32), its operands loaded from shared memory by ldmatrix. Two shapes of product
// cover the whole algorithm (see mma_rows_rowsT and mma_frag_rows below):
//     forward  S = Q K^T,   O += P V
//     dk/dv    S^T = K Q^T, dV += P^T dO,  dP^T = V dO^T,  dK += dS^T Q
//     dq       S = Q K^T,   dP = dO V^T,   dQ += dS K
// Softmax in base 2: s2 = (scale log2 e) q.k, p = exp2(s2 - m); lse is stored in natural log.
// Dropout: element (b, h, i, j) of the (B, H, T, T) probabilities is kept when
// hash(key, ((b H + h) T + i) T + j) >= threshold, the hash of minigrad.backend.dropout_keep,
// so the masks are the composite op's bits. O = (P * keep) V / (1 - p) and, with delta = rowsum(dO * O),
// dS = P * (dP * keep / (1 - p) - delta).

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define D HEAD_DIM
static_assert(HEAD_DIM % 16 == 0 && HEAD_DIM <= 128, "head size: a multiple of 16, at most 128");
#define LD (HEAD_DIM + 8)  // shared row stride in halves: 16 bytes of padding keep ldmatrix free of bank conflicts
#define THREADS 128        // 4 warps, 16 rows each
#define MIN_BLOCKS 4       // 4 blocks of 128 threads an SM: 25% occupancy, and at most 128 registers a thread
#define BM 64              // forward and dq: query rows per block
#define BKV 64             // dk/dv: key rows per block
// tiles along each kernel's loop, per head size (twins_flash.py reads the same numbers): the
// largest that keep every kernel within 128 registers without spilling (`python -m minigrad.kernels
// --resources`); with larger ones ptxas spills the accumulators
#define BN_SMALL 64        // forward: keys per tile, head size <= 64
#define BN_LARGE 16        //                          head size > 64
#define BQB_SMALL 32       // dk/dv: queries per tile
#define BQB_LARGE 16
#define BKQ_SMALL 32       // dq: keys per tile
#define BKQ_LARGE 16
// Head size > 64: dk and dv together would hold 2 x 64 float32 accumulators a thread, all of the
// 128 registers, and dq's 64 leave too few for the rest; so for the backward the launcher also
// builds the file with PART 1 and with PART 2 and runs each backward kernel once from each: dk/dv
// computes dk alone (PART 1) or dv alone (PART 2), dq the first or the second half of dq's columns.
#ifndef PART
#define PART 0
#endif
static_assert(PART == 0 || HEAD_DIM % 32 == 0, "PART splits dq's columns in halves of a multiple of 16");
#if HEAD_DIM <= 64
#define BN BN_SMALL
#define BQB BQB_SMALL
#define BKQ BKQ_SMALL
#else
#define BN BN_LARGE
#define BQB BQB_LARGE
#define BKQ BKQ_LARGE
#endif
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define FULL_MASK 0xffffffffu

// common.cuh: half_bits (a float16, as its bits: all arithmetic is float32), to_float, INFINITY
#include "common.cuh"

// ---------------------------------------------------------------- the warp-level instructions
// One wrapper per PTX instruction. tests/cuda_emulator.py compiles this file with its own bodies
// for these (MINIGRAD_EMULATOR), written from the PTX ISA's fragment tables.
#ifndef MINIGRAD_EMULATOR
// c (16x8 float32, C layout) += a (16x16 float16, A layout) . b (16x8 float16, B layout)
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// four 8x8 float16 matrices from shared memory: lane l gives the address of row l % 8 of matrix
// l / 8 and receives, in r[m], elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix m
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const half_bits* row) {
    unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
// the same with each matrix transposed: lane l receives elements (2 (l % 4), l / 4), (2 (l % 4) + 1, l / 4)
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const half_bits* row) {
    unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
// two float32 to a float16x2 register (round to nearest even): lo in bits 0-15, hi in 16-31
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));  // PTX: the first source goes high
    return r;
}
#endif

// ---------------------------------------------------------------- dropout: minigrad's hash
#include "dropout.cuh"

// the hash alone, for the tests: out[i] = dropout_bits(key, start + i)
extern "C" __global__ void flash_dropout_bits(unsigned* __restrict__ out, unsigned long long key,
                                              unsigned long long start, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = dropout_bits(key, start + i);
}

// ---------------------------------------------------------------- tiles and the two products
// 8 halves of a row plus the 8 bias values over their columns, each sum rounded to float16: the
// bits of `qkv + bias` in float16 (NumPy and CuPy add two halves in float32 and round the sum)
__device__ __forceinline__ uint4 add_bias8(uint4 v, const half_bits* bias) {
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k)
        w[k] = pack_half2(to_float((half_bits)(w[k] & 0xffffu)) + to_float(bias[2 * k]),
                          to_float((half_bits)(w[k] >> 16)) + to_float(bias[2 * k + 1]));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// rows [r0, r0 + ROWS) of a (T, D) matrix whose rows lie `stride` halves apart, into shared rows
// of LD halves, 16 bytes a thread at a time; rows past T are zeros. `bias` (D halves, or null):
// added to every row as it is read (c_attn's bias: no pass of its own over qkv)
template <int ROWS>
__device__ __forceinline__ void load_rows(half_bits* dst, const half_bits* src, long long stride, int r0, int T,
                                          const half_bits* bias = nullptr) {
    constexpr int CHUNKS = D / 8;
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < T) {
            v = *reinterpret_cast<const uint4*>(src + (r0 + r) * stride + c);
            if (bias) v = add_bias8(v, bias + c);
        }
        *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
    }
}

// acc (16 x 8 NT, C fragments) += a (16 rows) . b (8 NT rows)^T; a, b: shared rows of D halves.
// Per 16 columns of the sum: a's 16x16 block as the A fragment (ldmatrix_x4: matrices = rows 0-7 /
// 8-15 times columns 0-7 / 8-15), and b's 16 rows, untransposed, as the B fragments of two n-tiles.
template <int NT>
__device__ __forceinline__ void mma_rows_rowsT(float (*acc)[4], const half_bits* a, const half_bits* b, int lane) {
#pragma unroll 1  // acc's indices do not depend on kk: a rolled loop holds fewer fragments live
    for (int kk = 0; kk < D / 16; ++kk) {
        unsigned af[4];
        ldmatrix_x4(af, a + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned bf[4];
            ldmatrix_x4(bf, b + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
            mma_16816(acc[2 * np], af, bf);
            mma_16816(acc[2 * np + 1], af, bf + 2);
        }
    }
}

// acc (16 x D) += (p * keep) (16 x 16 KT, C fragments, float32) . b (16 KT rows of D halves, shared).
// Two n-tiles of C fragments are one k-step of A fragments: the registers are reused as they are,
// rounded to float16 (pack_half2); element (nt, e) counts when bit 4 nt + e of `keep` is set.
// b's rows are the k axis here, so ldmatrix transposes them into B fragments.
template <int KT, int NCOL = D>  // NCOL: the columns of b (and acc) taken, from b's first
__device__ __forceinline__ void mma_frag_rows(float (*acc)[4], const float (*p)[4], unsigned keep, const half_bits* b,
                                              int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        unsigned pa[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // A registers: (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
            int nt = 2 * kk + q / 2, e = 2 * (q % 2);
            float lo = (keep >> (4 * nt + e)) & 1u ? p[nt][e] : 0.0f;
            float hi = (keep >> (4 * nt + e + 1)) & 1u ? p[nt][e + 1] : 0.0f;
            pa[q] = pack_half2(lo, hi);
        }
#pragma unroll
        for (int dp = 0; dp < NCOL / 16; ++dp) {
            unsigned bf[4];
            ldmatrix_x4_trans(bf, b + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
            mma_16816(acc[2 * dp], pa, bf);
            mma_16816(acc[2 * dp + 1], pa, bf + 2);
        }
    }
}

// a C fragment's element (nt, e) of this lane: row (lane / 4) + 8 (e / 2), column 8 nt + 2 (lane % 4) + e % 2
__device__ __forceinline__ int frag_col(int nt, int e, int lane) { return nt * 8 + 2 * (lane % 4) + (e & 1); }

// dropout keep bits of a warp's 16 x 8 NT tile of the (B H, T, T) probabilities, bit 4 nt + e for
// the lane's C-fragment element (nt, e): fragment row r is probability row row0 + 8 (e / 2) (with
// `transposed`, column), fragment column c is probability column col0 + c (with `transposed`, row)
template <int NT>
__device__ __forceinline__ unsigned keep_bits(unsigned long long key, unsigned threshold, int bh, int T, int row0,
                                              int col0, int transposed, int lane) {
    unsigned keep = FULL_MASK;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int fr = row0 + 8 * (e / 2), fc = col0 + frag_col(nt, e, lane);
            int i = transposed ? fc : fr, j = transposed ? fr : fc;
            if (dropout_bits(key, ((long long)bh * T + i) * T + j) < threshold) keep &= ~(1u << (4 * nt + e));
        }
    return keep;
}

// rows of 16 x NCOL float32 C fragments (scaled) to float16 rows of `out`, `stride` halves apart; rows >= T skipped
template <int NCOL = D>
__device__ __forceinline__ void store_rows(half_bits* out, long long stride, const float (*acc)[4], int row0, int T,
                                           float mul, int lane) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int row = row0 + lane / 4 + 8 * r;
        if (row >= T) continue;
#pragma unroll
        for (int dt = 0; dt < NCOL / 8; ++dt)
            *reinterpret_cast<unsigned*>(out + row * stride + frag_col(dt, 0, lane)) =
                pack_half2(acc[dt][2 * r] * mul, acc[dt][2 * r + 1] * mul);
    }
}

// row 0 of this block's head (b, h) = (blockIdx.y / H, blockIdx.y % H) in a (B, T, W, H, D)
// tensor: W = 3 for qkv and dqkv (q's rows; k and v follow at + H D, + 2 H D), 1 for o and dout
template <typename P>
__device__ __forceinline__ P head_rows(P base, int T, int H, int W) {
    return base + (long long)(blockIdx.y / H) * T * W * H * D + (blockIdx.y % H) * D;
}

// this block's head's bias for q (k's and v's follow at + H D, + 2 H D), from bias (3, H, D); null without one
__device__ __forceinline__ const half_bits* head_bias(const half_bits* bias, int H) {
    return bias ? bias + (blockIdx.y % H) * D : nullptr;
}
__device__ __forceinline__ const half_bits* offset(const half_bits* bias, long long n) { return bias ? bias + n : nullptr; }

// lse (base 2) and delta of rows [r0, r0 + ROWS) of this head into shared memory; 0 past T
template <int ROWS>
__device__ __forceinline__ void load_stats(float* lse2_s, float* delta_s, const float* lse, const float* delta, int r0,
                                           int T) {
    for (int r = threadIdx.x; r < ROWS; r += THREADS) {
        bool in = r0 + r < T;
        lse2_s[r] = in ? lse[(long long)blockIdx.y * T + r0 + r] * LOG2E : 0.0f;
        delta_s[r] = in ? delta[(long long)blockIdx.y * T + r0 + r] : 0.0f;
    }
}

// ---------------------------------------------------------------- forward
// grid: (ceil(T / BM), B H), THREADS threads. o (B, T, H, D), lse (B, H, T).
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
flash_forward(const half_bits* __restrict__ qkv, const half_bits* __restrict__ bias, half_bits* __restrict__ o,
              float* __restrict__ lse, int T, int H, float scale, int causal, unsigned long long drop_key,
              unsigned drop_threshold, float drop_scale) {
    __shared__ __align__(16) half_bits qs[BM * LD];
    __shared__ __align__(16) half_bits ks[BN * LD];
    __shared__ __align__(16) half_bits vs[BN * LD];
    const int bh = blockIdx.y, q0 = blockIdx.x * BM, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * H * D;  // qkv: from (b, t) to (b, t + 1)
    const half_bits* qb = head_rows(qkv, T, H, 3);
    const half_bits* bq = head_bias(bias, H);
    load_rows<BM>(qs, qb, stride, q0, T, bq);
    const int row[2] = {q0 + warp * 16 + lane / 4, q0 + warp * 16 + lane / 4 + 8};  // this lane's rows
    const float sl2 = scale * LOG2E;
    float acc[D / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // running max (base 2) and sum, per row
    const int kend = causal ? min(T, q0 + BM) : T;
    for (int k0 = 0; k0 < kend; k0 += BN) {
        __syncthreads();  // the last tile has been used by every warp
        load_rows<BN>(ks, qb + H * D, stride, k0, T, offset(bq, H * D));
        load_rows<BN>(vs, qb + 2 * H * D, stride, k0, T, offset(bq, 2 * H * D));
        __syncthreads();
        // the dropout bits first, while only acc is live (fewer registers than amid the scores)
        const unsigned keep = drop_threshold ? keep_bits<BN / 8>(drop_key, drop_threshold, bh, T, row[0], k0, 0, lane)
                                             : FULL_MASK;
        float s[BN / 8][4] = {};
        mma_rows_rowsT<BN / 8>(s, qs + warp * 16 * LD, ks, lane);
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int col = k0 + frag_col(nt, e, lane), r = e / 2;
                bool vis = col < T && (!causal || col <= row[r]);
                s[nt][e] = vis ? s[nt][e] * sl2 : -INFINITY;
                mt[r] = fmaxf(mt[r], s[nt][e]);
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // a row's 8 NT values sit in 4 lanes: reduce over them
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(FULL_MASK, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(FULL_MASK, mt[r], 2));
            float mn = fmaxf(m[r], mt[r]);  // finite: key 0 is in the first tile and every row sees it
            float corr = exp2f(m[r] - mn);  // 0 on the first tile
            m[r] = mn;
            l[r] *= corr;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                acc[dt][2 * r] *= corr;
                acc[dt][2 * r + 1] *= corr;
            }
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - m[e / 2]);  // 0 where masked
                l[e / 2] += s[nt][e];                   // the softmax sums every probability, kept or dropped
            }
        mma_frag_rows<BN / 16>(acc, s, keep, vs, lane);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // each lane summed its own columns
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
    }
    const long long ostride = (long long)H * D;
    const int row0 = q0 + warp * 16;
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // store_rows scales both rows alike: normalise here
        float inv = drop_scale / l[r];
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            acc[dt][2 * r] *= inv;
            acc[dt][2 * r + 1] *= inv;
        }
        if (lane % 4 == 0 && row[r] < T) lse[(long long)bh * T + row[r]] = (m[r] + log2f(l[r])) * LN2;
    }
    store_rows(head_rows(o, T, H, 1), ostride, acc, row0, T, 1.0f, lane);
}

// ---------------------------------------------------------------- backward
// delta = rowsum(dO * O) per (b, t, h) row, a warp a row; grid: ceil(rows / 4), THREADS threads
extern "C" __global__ void __launch_bounds__(THREADS)
flash_backward_preprocess(const half_bits* __restrict__ o, const half_bits* __restrict__ dout, float* __restrict__ delta,
                          int T, int H, int rows) {
    const int row = blockIdx.x * (THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps
    float s = 0.0f;
    for (int d = 2 * lane; d < D; d += 64) {
        unsigned a = *reinterpret_cast<const unsigned*>(o + (long long)row * D + d);
        unsigned g = *reinterpret_cast<const unsigned*>(dout + (long long)row * D + d);
        s += to_float(a & 0xffff) * to_float(g & 0xffff) + to_float(a >> 16) * to_float(g >> 16);
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(FULL_MASK, s, off);
    if (lane == 0) {
        int h = row % H, t = (row / H) % T, b = row / (H * T);
        delta[((long long)b * H + h) * T + t] = s;
    }
}

// dk, dv for BKV keys a block (16 a warp), queries in tiles of BQB; grid: (ceil(T / BKV), B H).
// PART 1 / 2: dk alone / dv alone (the other is not written).
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
flash_backward_dkdv(const half_bits* __restrict__ qkv, const half_bits* __restrict__ bias, const half_bits* __restrict__ dout,
                    const float* __restrict__ lse,
                    const float* __restrict__ delta, half_bits* __restrict__ dqkv, int T, int H, float scale, int causal,
                    unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    constexpr bool DO_DK = PART != 2, DO_DV = PART != 1;
    __shared__ __align__(16) half_bits ks[BKV * LD];
    __shared__ __align__(16) half_bits vs[BKV * LD];
    __shared__ __align__(16) half_bits qs[BQB * LD];
    __shared__ __align__(16) half_bits dos[BQB * LD];
    __shared__ float lse2_s[BQB], delta_s[BQB];
    const int bh = blockIdx.y, k0 = blockIdx.x * BKV, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * H * D;
    const half_bits *qb = head_rows(qkv, T, H, 3), *dob = head_rows(dout, T, H, 1), *bq = head_bias(bias, H);
    load_rows<BKV>(ks, qb + H * D, stride, k0, T, offset(bq, H * D));
    if (DO_DK) load_rows<BKV>(vs, qb + 2 * H * D, stride, k0, T, offset(bq, 2 * H * D));
    const int key[2] = {k0 + warp * 16 + lane / 4, k0 + warp * 16 + lane / 4 + 8};  // this lane's rows: keys
    const float sl2 = scale * LOG2E;
    float dk[DO_DK ? D / 8 : 1][4] = {}, dv[DO_DV ? D / 8 : 1][4] = {};
    for (int i0 = causal ? k0 : 0; i0 < T; i0 += BQB) {  // with causal, queries before k0 see none of these keys
        __syncthreads();
        load_rows<BQB>(qs, qb, stride, i0, T, bq);
        load_rows<BQB>(dos, dob, (long long)H * D, i0, T);
        load_stats<BQB>(lse2_s, delta_s, lse, delta, i0, T);
        __syncthreads();
        const unsigned keep = drop_threshold ? keep_bits<BQB / 8>(drop_key, drop_threshold, bh, T, key[0], i0, 1, lane)
                                             : FULL_MASK;
        float pt[BQB / 8][4] = {};  // S^T, then P^T: rows are this warp's keys, columns the tile's queries
        mma_rows_rowsT<BQB / 8>(pt, ks + warp * 16 * LD, qs, lane);
#pragma unroll
        for (int nt = 0; nt < BQB / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int ic = frag_col(nt, e, lane), i = i0 + ic, j = key[e / 2];
                bool vis = i < T && j < T && (!causal || j <= i);
                pt[nt][e] = vis ? exp2f(pt[nt][e] * sl2 - lse2_s[ic]) : 0.0f;
            }
        if constexpr (DO_DV) mma_frag_rows<BQB / 16>(dv, pt, keep, dos, lane);  // dV += (P keep)^T dO
        if constexpr (DO_DK) {
            float dst[BQB / 8][4] = {};  // dP^T, then dS^T
            mma_rows_rowsT<BQB / 8>(dst, vs + warp * 16 * LD, dos, lane);
#pragma unroll
            for (int nt = 0; nt < BQB / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float dp = (keep >> (4 * nt + e)) & 1u ? dst[nt][e] * drop_scale : 0.0f;
                    dst[nt][e] = pt[nt][e] * (dp - delta_s[frag_col(nt, e, lane)]);
                }
            mma_frag_rows<BQB / 16>(dk, dst, FULL_MASK, qs, lane);  // dK += dS^T Q
        }
    }
    half_bits* out = head_rows(dqkv, T, H, 3);
    if constexpr (DO_DK) store_rows(out + H * D, stride, dk, k0 + warp * 16, T, scale, lane);
    if constexpr (DO_DV) store_rows(out + 2 * H * D, stride, dv, k0 + warp * 16, T, drop_scale, lane);
}

// dq for BM queries a block (16 a warp), keys in tiles of BKQ; grid: (ceil(T / BM), B H).
// PART 1 / 2: dq's first / second D / 2 columns (the scores and dP are recomputed for each).
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
flash_backward_dq(const half_bits* __restrict__ qkv, const half_bits* __restrict__ bias, const half_bits* __restrict__ dout,
                  const float* __restrict__ lse,
                  const float* __restrict__ delta, half_bits* __restrict__ dqkv, int T, int H, float scale, int causal,
                  unsigned long long drop_key, unsigned drop_threshold, float drop_scale) {
    __shared__ __align__(16) half_bits qs[BM * LD];
    __shared__ __align__(16) half_bits dos[BM * LD];
    __shared__ __align__(16) half_bits ks[BKQ * LD];
    __shared__ __align__(16) half_bits vs[BKQ * LD];
    __shared__ float lse2_s[BM], delta_s[BM];
    const int bh = blockIdx.y, q0 = blockIdx.x * BM, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * H * D;
    const half_bits *qb = head_rows(qkv, T, H, 3), *bq = head_bias(bias, H);
    load_rows<BM>(qs, qb, stride, q0, T, bq);
    load_rows<BM>(dos, head_rows(dout, T, H, 1), (long long)H * D, q0, T);
    load_stats<BM>(lse2_s, delta_s, lse, delta, q0, T);  // in shared memory: 4 registers fewer than per lane
    const int row[2] = {q0 + warp * 16 + lane / 4, q0 + warp * 16 + lane / 4 + 8};
    constexpr int C0 = PART == 2 ? D / 2 : 0, NC = PART == 0 ? D : D / 2;  // dq's columns computed here
    const float sl2 = scale * LOG2E;
    float dq[NC / 8][4] = {};
    const int kend = causal ? min(T, q0 + BM) : T;
    for (int k0 = 0; k0 < kend; k0 += BKQ) {
        __syncthreads();
        load_rows<BKQ>(ks, qb + H * D, stride, k0, T, offset(bq, H * D));
        load_rows<BKQ>(vs, qb + 2 * H * D, stride, k0, T, offset(bq, 2 * H * D));
        __syncthreads();
        const unsigned keep = drop_threshold ? keep_bits<BKQ / 8>(drop_key, drop_threshold, bh, T, row[0], k0, 0, lane)
                                             : FULL_MASK;
        float s[BKQ / 8][4] = {}, dp[BKQ / 8][4] = {};
        mma_rows_rowsT<BKQ / 8>(s, qs + warp * 16 * LD, ks, lane);    // S
        mma_rows_rowsT<BKQ / 8>(dp, dos + warp * 16 * LD, vs, lane);  // dP = dO V^T
#pragma unroll
        for (int nt = 0; nt < BKQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int j = k0 + frag_col(nt, e, lane), r = e / 2;
                bool vis = j < T && row[r] < T && (!causal || j <= row[r]);  // rows past T: no lse
                int rl = row[r] - q0;
                float p = vis ? exp2f(s[nt][e] * sl2 - lse2_s[rl]) : 0.0f;
                float dpk = (keep >> (4 * nt + e)) & 1u ? dp[nt][e] * drop_scale : 0.0f;
                s[nt][e] = p * (dpk - delta_s[rl]);  // dS
            }
        mma_frag_rows<BKQ / 16, NC>(dq, s, FULL_MASK, ks + C0, lane);  // dQ += dS K  (scale at the end)
    }
    store_rows<NC>(head_rows(dqkv, T, H, 3) + C0, stride, dq, q0 + warp * 16, T, scale, lane);
}
