"""Where the CUDA sources live, and how they become callable kernels.

Each layer's kernels are one `.cu` file beside this module (llm.c's layout). On a GPU,
`kernel(file, name)` compiles the file with CuPy's RawModule the first time it is asked for
(NVRTC, then CuPy's own on-disk cache) and keeps the module for the life of the process.
Compile-time constants (`HEAD_DIM` for attention) are `-D` defines, one module per value.
Nothing here imports CuPy until a kernel is asked for.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from .. import backend

KERNEL_DIR = Path(__file__).resolve().parent
# NVRTC options shared by the runtime loader and `python -m minigrad.kernels`
NVRTC_OPTIONS = ("-std=c++17",)  # CUDA 12 and 13 both accept C++17
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')


def sources() -> list[Path]:
    """Every CUDA source of the package, sorted by name."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def source_text(file: str) -> str:
    return (KERNEL_DIR / file).read_text()


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


def kernel(file: str, name: str, **defines: int):
    """The compiled kernel `name` of `file` (compiled on first use, then cached)."""
    return _module(file, tuple(sorted(defines.items()))).get_function(name)
