// Probes for the emulated warp-level instructions of tests/cuda_emulator.py (emulator only: the
// functions called here are the prelude's). One warp; each lane loads the registers the test gives
// it, runs one instruction, and writes back what it holds afterwards.

// d[lane][i] = c_i after mma_16816 with this lane's a[lane][0..3], b[lane][0..1], c[lane][0..3]
extern "C" __global__ void probe_mma(const unsigned* a, const unsigned* b, const float* c, float* d) {
    unsigned lane = threadIdx.x;
    unsigned ar[4], br[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) ar[i] = a[lane * 4 + i];
    for (int i = 0; i < 2; ++i) br[i] = b[lane * 2 + i];
    for (int i = 0; i < 4; ++i) acc[i] = c[lane * 4 + i];
    mma_16816(acc, ar, br);
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// rows: 32 rows of 8 float16, copied to shared memory; lane l gives the address of row rows_of[l]
// to ldmatrix .x{count} (.trans when trans), and writes its `count` registers to out[l][0..count)
extern "C" __global__ void probe_ldmatrix(const unsigned short* rows, const int* rows_of, unsigned* out, int count,
                                          int trans) {
    __shared__ __align__(16) unsigned short sm[32 * 8];
    unsigned lane = threadIdx.x;
    for (int i = 0; i < 8; ++i) sm[lane * 8 + i] = rows[lane * 8 + i];
    __syncthreads();
    unsigned r[4] = {0, 0, 0, 0};
    const unsigned short* row = sm + rows_of[lane] * 8;
    if (count == 1) trans ? ldmatrix_x1_trans(r, row) : ldmatrix_x1(r, row);
    if (count == 2) trans ? ldmatrix_x2_trans(r, row) : ldmatrix_x2(r, row);
    if (count == 4) trans ? ldmatrix_x4_trans(r, row) : ldmatrix_x4(r, row);
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// the float16 conversions: h[i] = half bits of x[i] (low half of pack_half2), back[i] = h[i] as a float
extern "C" __global__ void probe_half(const float* x, unsigned short* h, float* back, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = (unsigned short)(pack_half2(x[i], 0.0f) & 0xffffu);
    back[i] = half_to_float(h[i]);
}
