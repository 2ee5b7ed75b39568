"""Run the CUDA kernels of minigrad/kernels on the CPU, for tests on machines without a GPU.

Each `.cu` source is compiled as C++20 with g++ after a small prelude that maps CUDA's names onto
the CPU: a block runs as `blockDim.x` std::threads, `__shared__` variables are function statics
(blocks run one after another, so a block owns them while it runs), `__syncthreads()` is a
std::barrier over the block's threads and `__shfl_xor_sync` exchanges values through a per-warp
slot between two warp barriers. Every kernel gets a generated `launch_<name>(gx, gy, bx, args...)`
that ctypes calls with NumPy arrays. It executes the kernels' own code (indexing, tiles, barriers,
shuffles), slowly: tests keep the shapes small. Floating-point results differ from a GPU's only
where the two libm's expf/tanhf differ.

The tensor-core kernels (flash_attention.cu) wrap each PTX instruction in a `__device__` function
(mma_16816, ldmatrix_x4, ...), compiled from inline asm on the GPU; with MINIGRAD_EMULATOR defined,
this prelude supplies those functions instead, written from the PTX ISA's description: the 32
lanes of a warp publish their registers (or row addresses) in per-thread slots, meet at the warp
barrier, and each lane assembles the whole operand and takes its own part of the result by the
documented fragment layout (`emu_a_pos`, `emu_b_pos`, `emu_c_pos` below). Products of float16 are
exact in float32 and the sums run in k order, so a result can differ from the hardware's in the
last bits of float32, never in the layout (tests/test_flash_attention_emulated.py checks these
functions against a NumPy reading of the same tables).
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minigrad.kernels._loader import expand_includes, kernel_names, source_text

PRELUDE = r"""
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
using std::min; using std::max;
struct emu_uint3 { unsigned x, y, z; };
static thread_local emu_uint3 threadIdx, blockIdx;
static emu_uint3 blockDim, gridDim;
static std::barrier<>* emu_block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
static float emu_slots[1024];
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define MINIGRAD_EMULATOR 1
static inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline void emu_warp_sync() { emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int off) {
    unsigned t = threadIdx.x, w = t / 32;
    emu_slots[t] = v;
    emu_warp_sync();
    float r = emu_slots[w * 32 + ((t % 32) ^ off)];
    emu_warp_sync();
    return r;
}
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- float16 as bits (cvt.rn.f16.f32: round to nearest, ties to even; past the largest half: inf)
static inline unsigned short emu_f2h(float f) {
    unsigned x;
    std::memcpy(&x, &f, 4);
    unsigned sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return sign | 0x7e00u;                  // nan
    if (mag >= 0x47800000u) return sign | 0x7c00u;                 // >= 2^16 (and inf): inf
    if (mag < 0x38800000u) {                                       // below 2^-14: a subnormal half, in 2^-24 units
        float a;
        std::memcpy(&a, &mag, 4);
        return sign | (unsigned)std::nearbyint(a * 16777216.0f);  // exact scaling; the default rounding: to even
    }
    unsigned h = ((((mag >> 23) - 112u) << 10) | ((mag >> 13) & 0x3ffu)), rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;    // a carry may reach the exponent, or inf: right
    return sign | h;
}
static inline float half_to_float(unsigned short u) {
    unsigned sign = (u & 0x8000u) << 16, e = (u >> 10) & 0x1fu, m = u & 0x3ffu, x;
    if (e == 0) {
        float f = std::ldexp((float)m, -24);
        return sign ? -f : f;
    }
    x = sign | (e == 31 ? 0x7f800000u : (e + 112u) << 23) | (m << 13);
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
static inline unsigned pack_half2(float lo, float hi) { return emu_f2h(lo) | ((unsigned)emu_f2h(hi) << 16); }

// ---- mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, PTX ISA "Matrix Fragments for mma.m16n8k16
// with floating point type": groupID = lane >> 2, threadID_in_group = lane % 4.
// A (16x16): a_i, i = 0..7 (register i / 2, half i % 2): row = groupID + 8 for i in {2,3,6,7},
//            else groupID; col = threadID_in_group * 2 + (i & 1), + 8 for i >= 4.
// B (16x8):  b_i, i = 0..3: row (k) = threadID_in_group * 2 + (i & 1), + 8 for i >= 2; col = groupID.
// C, D (16x8 float32): c_i, i = 0..3: row = groupID, + 8 for i >= 2; col = threadID_in_group * 2 + (i & 1).
static inline void emu_a_pos(unsigned lane, int i, int& row, int& col) {
    row = lane / 4 + ((i / 2) % 2) * 8;
    col = (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
static inline void emu_b_pos(unsigned lane, int i, int& row, int& col) {
    row = (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    col = lane / 4;
}
static inline void emu_c_pos(unsigned lane, int i, int& row, int& col) {
    row = lane / 4 + (i >= 2 ? 8 : 0);
    col = (lane % 4) * 2 + (i & 1);
}
static unsigned emu_regs[1024][6];  // a lane's registers, published for the rest of its warp
static const void* emu_rows[1024];  // a lane's ldmatrix row address
static inline void mma_16816(float* c, const unsigned* a, const unsigned* b) {
    unsigned t = threadIdx.x, w0 = t & ~31u, lane = t % 32;
    for (int r = 0; r < 4; ++r) emu_regs[t][r] = a[r];
    for (int r = 0; r < 2; ++r) emu_regs[t][4 + r] = b[r];
    emu_warp_sync();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        for (int i = 0; i < 8; ++i) {
            int row, col;
            emu_a_pos(l, i, row, col);
            A[row][col] = half_to_float((unsigned short)(emu_regs[w0 + l][i / 2] >> (16 * (i % 2))));
        }
        for (int i = 0; i < 4; ++i) {
            int row, col;
            emu_b_pos(l, i, row, col);
            B[row][col] = half_to_float((unsigned short)(emu_regs[w0 + l][4 + i / 2] >> (16 * (i % 2))));
        }
    }
    emu_warp_sync();  // every lane has read the others' registers
    float d[4];
    for (int i = 0; i < 4; ++i) {
        int row, col;
        emu_c_pos(lane, i, row, col);
        float s = c[i];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];  // float16 products are exact in float32
        d[i] = s;
    }
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: lanes 8 m .. 8 m + 7 give the
// addresses of rows 0..7 of matrix m; lane l receives in r[m] the 32 bits holding elements
// (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix m, the first in the low half; with
// .trans, the elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4) instead.
template <int N, bool TRANS>
static inline void emu_ldmatrix(unsigned* r, const unsigned short* row) {
    unsigned t = threadIdx.x, w0 = t & ~31u, lane = t % 32;
    emu_rows[t] = row;
    emu_warp_sync();
    for (int m = 0; m < N; ++m) {
        unsigned short e[2];
        for (int h = 0; h < 2; ++h) {
            unsigned i = TRANS ? 2 * (lane % 4) + h : lane / 4, j = TRANS ? lane / 4 : 2 * (lane % 4) + h;
            e[h] = static_cast<const unsigned short*>(emu_rows[w0 + 8 * m + i])[j];
        }
        r[m] = e[0] | ((unsigned)e[1] << 16);
    }
    emu_warp_sync();
}
static inline void ldmatrix_x1(unsigned* r, const unsigned short* p) { emu_ldmatrix<1, false>(r, p); }
static inline void ldmatrix_x2(unsigned* r, const unsigned short* p) { emu_ldmatrix<2, false>(r, p); }
static inline void ldmatrix_x4(unsigned* r, const unsigned short* p) { emu_ldmatrix<4, false>(r, p); }
static inline void ldmatrix_x1_trans(unsigned* r, const unsigned short* p) { emu_ldmatrix<1, true>(r, p); }
static inline void ldmatrix_x2_trans(unsigned* r, const unsigned short* p) { emu_ldmatrix<2, true>(r, p); }
static inline void ldmatrix_x4_trans(unsigned* r, const unsigned short* p) { emu_ldmatrix<4, true>(r, p); }
static void emu_launch(unsigned gx, unsigned gy, unsigned bx, const std::function<void()>& body) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned by = 0; by < gy; ++by)
        for (unsigned bxi = 0; bxi < gx; ++bxi) {
            std::barrier<> block((std::ptrdiff_t)bx);
            emu_block_barrier = &block;
            emu_warp_barriers.clear();
            for (unsigned w = 0; w < (bx + 31) / 32; ++w)
                emu_warp_barriers.emplace_back(new std::barrier<>((std::ptrdiff_t)std::min(32u, bx - 32 * w)));
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t)
                threads.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bxi, by, 0};
                    body();
                    emu_warp_barriers[t / 32]->arrive_and_drop();  // a returned thread waits no more
                    block.arrive_and_drop();
                });
            for (auto& th : threads) th.join();
        }
}
"""

# the counter of common.cuh's last_block (blocks run one after another here, so any order is one)
PRELUDE_ATOMICS = r"""
#include <atomic>
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
"""

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)',
                  re.S)


def _params(text: str) -> list[tuple[str, str]]:
    """(type, name) of each parameter of a kernel signature."""
    out = []
    for p in (p.strip() for p in text.split(",")):
        typ, name = p.rsplit(None, 1)
        while name.startswith("*"):
            typ, name = typ + "*", name[1:]
        out.append((typ, name))
    return out


def _ctype(typ: str):
    if "*" in typ:
        return ctypes.c_void_p
    base = typ.replace("const", "").strip()
    return {"int": ctypes.c_int, "float": ctypes.c_float, "long long": ctypes.c_longlong, "unsigned": ctypes.c_uint,
            "unsigned long long": ctypes.c_ulonglong}[base]


def compiler() -> str | None:
    return shutil.which("g++")


class Module:
    """One .cu source compiled for the CPU; `module.kernel_name((gx, gy), bx, *args)` launches."""

    def __init__(self, file: str | Path, defines: dict[str, int] | None = None):
        if Path(file).is_absolute():  # a test's own source (tests/cuda/)
            path = Path(file)
            text, file = expand_includes(path.read_text()), path.name
        else:  # the package's, with minigrad's own headers pasted in, as NVRTC gets it
            text = source_text(file)
        launchers, self._sigs = [], {}
        for name, params in _SIG.findall(text):
            ps = _params(params)
            self._sigs[name] = ps
            decl = ", ".join(f"{t} {n}" for t, n in ps)
            call = ", ".join(n for _, n in ps)
            launchers.append(f'extern "C" void launch_{name}(unsigned gx, unsigned gy, unsigned bx, {decl}) '
                             f'{{ emu_launch(gx, gy, bx, [=] {{ {name}({call}); }}); }}')
        assert list(self._sigs) == kernel_names(text)
        flags = [f"-D{k}={v}" for k, v in (defines or {}).items()]
        src = PRELUDE + PRELUDE_ATOMICS + "\n#line 1 \"" + file + "\"\n" + text + "\n" + "\n".join(launchers) + "\n"
        key = hashlib.sha256((src + " ".join(flags)).encode()).hexdigest()[:16]
        build = Path(tempfile.gettempdir()) / "minigrad-cuda-emulator"
        build.mkdir(exist_ok=True)
        lib = build / f"{Path(file).stem}-{key}.so"
        if not lib.exists():
            cpp = build / f"{Path(file).stem}-{key}.cpp"
            cpp.write_text(src)
            tmp = lib.with_suffix(".tmp.so")
            r = subprocess.run([compiler(), "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", *flags,
                                "-o", str(tmp), str(cpp)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"g++ failed on {file}:\n{r.stderr[-4000:]}")
            tmp.rename(lib)
        self._lib = ctypes.CDLL(str(lib))

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self._sigs:
            raise AttributeError(name)
        fn = getattr(self._lib, f"launch_{name}")
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint] + [_ctype(t) for t, _ in self._sigs[name]]
        fn.restype = None

        def launch(grid, block: int, *args):
            gx, gy = (grid, 1) if isinstance(grid, int) else (grid + (1,))[:2]
            conv = []
            for a in args:
                if isinstance(a, np.ndarray):
                    assert a.flags.c_contiguous, "kernels take contiguous arrays"
                    conv.append(a.ctypes.data)
                else:
                    conv.append(a.item() if isinstance(a, np.generic) else a)
            fn(gx, gy, block, *conv)
        return launch


_modules: dict = {}


def kernel(file: str, name: str, **defines: int):
    """minigrad.kernels._loader.kernel's stand-in: the emulated kernel, called as CuPy's
    (grid, block, args); each (file, defines) is built once per process."""
    key = (file, tuple(sorted(defines.items())))
    if key not in _modules:
        _modules[key] = Module(file, defines)
    fn = getattr(_modules[key], name)
    return lambda grid, block, args: fn(grid, block[0], *args)
