"""Where the CUDA sources live, and how they become callable kernels.

Each layer's kernels are one `.cu` file beside this module (llm.c's layout). On a GPU,
`kernel(file, name)` compiles the file with CuPy's RawModule the first time it is asked for
(NVRTC, then CuPy's own on-disk cache) and keeps the module for the life of the process.
Compile-time constants (`HEAD_DIM` for attention) are `-D` defines, one module per value.
Nothing here imports CuPy until a kernel is asked for.
"""
from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

from .. import backend, standin

KERNEL_DIR = Path(__file__).resolve().parent
# NVRTC options shared by the runtime loader and `python -m minigrad.kernels`
NVRTC_OPTIONS = ("-std=c++17",)  # CUDA 12 and 13 both accept C++17
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')


def sources() -> list[Path]:
    """Every CUDA source of the package, sorted by name."""
    return sorted(KERNEL_DIR.glob("*.cu"))


_INCLUDE = re.compile(r'^#include\s+"([\w.]+)"[ \t]*$', re.M)


def expand_includes(text: str, folder: Path = KERNEL_DIR) -> str:
    """`text` with each `#include "name.cuh"` replaced by that header's text (from `folder`, else
    from the package's folder), each header once. NVRTC then needs no include path for our own
    headers, and CuPy's kernel cache, keyed by the source text, sees a changed header."""
    seen: set[str] = set()

    def expand(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        path = folder / name if (folder / name).is_file() else KERNEL_DIR / name
        return _INCLUDE.sub(expand, path.read_text())
    return _INCLUDE.sub(expand, text)


def source_text(file: str) -> str:
    """A kernel source of the package, with our headers in place (expand_includes)."""
    return expand_includes((KERNEL_DIR / file).read_text())


SWITCHES = ("FP16", "KEY64")  # -D switches a source has both forms of (launchers pick one per call)


def forms(text: str) -> list[dict[str, int]]:
    """The -D switches of SWITCHES this source uses, in each combination (its compiled forms)."""
    used = [s for s in SWITCHES if s in text]
    return [dict(zip(used, bits)) for bits in itertools.product((0, 1), repeat=len(used))]


def kernel_names(text: str) -> list[str]:
    """The `extern "C" __global__` functions a CUDA source defines, in order."""
    return _ENTRY.findall(text)


def define(text: str, name: str) -> int:
    """The integer value of `#define NAME value` in a source (the twins read their tile sizes here,
    so that they cannot drift from the kernels)."""
    m = re.search(rf"^#define\s+{name}\s+(\d+)", text, re.M)
    if m is None:
        raise KeyError(f"no #define {name} in the source")
    return int(m.group(1))


@functools.lru_cache(maxsize=None)
def _module(file: str, defines: tuple[tuple[str, int], ...]):
    cp = backend.cupy()
    options = NVRTC_OPTIONS + tuple(f"-D{k}={v}" for k, v in defines)
    return cp.RawModule(code=source_text(file), options=options)


class Kernel:
    """`kernel(grid, block, args)` as CuPy's RawKernel is called. On CuPy arrays it launches the
    compiled kernel (compiled on the first call); on the stand-in's arrays (no GPU: see
    minigrad/standin.py) NumPy does the kernel's work, and the launch is counted
    (minigrad/kernels/on_standin.py)."""

    def __init__(self, file: str, name: str, defines: tuple[tuple[str, int], ...]):
        self.file, self.name, self.defines = file, name, defines
        self._raw = None

    def __call__(self, grid, block, args, **kwargs) -> None:
        if any(isinstance(a, standin.ndarray) for a in args):
            from . import on_standin
            on_standin.launch(self.name, dict(self.defines), grid, block, args)
            return
        if self._raw is None:
            self._raw = _module(self.file, self.defines).get_function(self.name)
        self._raw(grid, block, args, **kwargs)


@functools.lru_cache(maxsize=None)
def _kernel(file: str, name: str, defines: tuple[tuple[str, int], ...]) -> Kernel:
    return Kernel(file, name, defines)


def kernel(file: str, name: str, **defines: int) -> Kernel:
    """The kernel `name` of `file`, compiled with these `-D` defines."""
    return _kernel(file, name, tuple(sorted(defines.items())))


_counters: dict[tuple[str, str], object] = {}


def zeroed_counters(like, n: int):
    """n unsigned ints on `like`'s device that start at zero, for the kernels that finish a sum
    in their last block (common.cuh's last_block): each leaves its counters at zero again, so one
    array, zeroed once, serves every launch (launches on one stream never overlap)."""
    xp = backend.array_module(like)
    key = (xp.__name__, str(getattr(like, "device", "")))
    have = _counters.get(key)
    if have is None or have.size < n:
        have = _counters[key] = xp.zeros(max(n, 1024), dtype="uint32")
    return have


def fp16(a) -> dict[str, int]:
    """The define that compiles a kernel's float16 form for a float16 array (common.cuh's io_t)."""
    return {"FP16": 1} if a.dtype == "float16" else {}
