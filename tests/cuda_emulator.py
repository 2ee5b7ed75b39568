"""Run the CUDA kernels of minigrad/kernels on the CPU, for tests on machines without a GPU.

Each `.cu` source is compiled as C++20 with g++ after a small prelude that maps CUDA's names onto
the CPU: a block runs as `blockDim.x` std::threads, `__shared__` variables are function statics
(blocks run one after another, so a block owns them while it runs), `__syncthreads()` is a
std::barrier over the block's threads and `__shfl_xor_sync` exchanges values through a per-warp
slot between two warp barriers. Every kernel gets a generated `launch_<name>(gx, gy, bx, args...)`
that ctypes calls with NumPy arrays. It executes the kernels' own code (indexing, tiles, barriers,
shuffles), slowly: tests keep the shapes small. Floating-point results differ from a GPU's only
where the two libm's expf/tanhf differ.
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

from minigrad.kernels._loader import kernel_names, source_text

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
static inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __shfl_xor_sync(unsigned, float v, int off) {
    unsigned t = threadIdx.x, w = t / 32;
    emu_slots[t] = v;
    emu_warp_barriers[w]->arrive_and_wait();
    float r = emu_slots[w * 32 + ((t % 32) ^ off)];
    emu_warp_barriers[w]->arrive_and_wait();
    return r;
}
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

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


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
    return {"int": ctypes.c_int, "float": ctypes.c_float, "long long": ctypes.c_longlong}[base]


def compiler() -> str | None:
    return shutil.which("g++")


class Module:
    """One .cu source compiled for the CPU; `module.kernel_name((gx, gy), bx, *args)` launches."""

    def __init__(self, file: str, defines: dict[str, int] | None = None):
        text = source_text(file)  # with minigrad's own headers pasted in, as NVRTC gets it
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
