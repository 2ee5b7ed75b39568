"""The backend boundary: which array module (`xp`) holds a tensor, and the random generators.

A tensor wraps one array, `numpy.ndarray` on "cpu" or `cupy.ndarray` on "cuda". Ops never ask
which backend they run on: they call `xp = array_module(a)` and use `xp.exp`, `xp.matmul`, ...
so one piece of op code serves both. CuPy is imported the first time something asks for "cuda".
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import numpy as np


class BackendError(RuntimeError):
    """Asked for a device that this machine cannot provide (no CuPy, no GPU, unknown name)."""


_cupy = None


def _tune_malloc() -> None:
    # glibc returns freed blocks of a few MB to the kernel at once, so every new activation pays
    # page faults and zeroing again (3.2 ms vs 0.45 ms for one elementwise op on 6 MB, measured).
    # Keeping them in the heap is the single cheapest speed-up for a NumPy training step.
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
        libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    except (OSError, AttributeError):
        pass
    # NumPy asks the kernel for 2 MB huge pages on large arrays. A sparse write into a fresh one,
    # such as an embedding gradient of 50,257 x 768 with 512 rows set, then faults in and zeroes
    # most of its 154 MB: 100-460 ms a 124M step here, against 3-20 ms with ordinary pages.
    # NUMPY_MADVISE_HUGEPAGE, when the user sets it, still decides.
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        try:
            from numpy._core.multiarray import _set_madvise_hugepage
        except ImportError:  # NumPy 1.x
            from numpy.core.multiarray import _set_madvise_hugepage
        _set_madvise_hugepage(False)


_tune_malloc()


def cupy():
    """Import CuPy on first use, with one clear error when it or a GPU is missing."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy as cp  # noqa: WPS433 (a lazy import is the point)
    except ImportError as e:
        raise BackendError(
            "device 'cuda' needs CuPy, which is not installed. Install it with "
            "`pip install -e '.[cuda]'` (cupy-cuda12x) on a machine with an NVIDIA GPU."
        ) from e
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise BackendError(f"device 'cuda' needs an NVIDIA GPU, but CUDA reports: {e}") from e
    if n == 0:
        raise BackendError("device 'cuda' needs an NVIDIA GPU, and none is visible to CUDA.")
    _cupy = cp
    return cp


def normalize_device(device: str | None) -> str:
    if device is None:
        return "cpu"
    device = str(device).lower()
    if device in ("cpu", "numpy"):
        return "cpu"
    if device in ("cuda", "gpu", "cupy") or device.startswith("cuda:"):
        return "cuda"
    raise BackendError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def xp_for(device: str | None):
    """The array module for a device name."""
    return cupy() if normalize_device(device) == "cuda" else np


def array_module(a: Any):
    """The array module that owns array `a` (NumPy for anything that is not a CuPy array)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy
    return np


def device_of(a: Any) -> str:
    return "cuda" if array_module(a) is not np else "cpu"


def to_device(a: Any, device: str):
    """Move an array to `device` ("cpu" or "cuda"); a no-op when it is there already."""
    device = normalize_device(device)
    if device == "cuda":
        cp = cupy()
        return a if isinstance(a, cp.ndarray) else cp.asarray(a)
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def gpu_available() -> bool:
    try:
        cupy()
        return True
    except BackendError:
        return False


# ---------------------------------------------------------------- random numbers
# One generator per backend, seeded together by manual_seed. Explicit generators (not NumPy's
# global state) so a checkpoint can save and restore them for an exact resume.
_rng: dict[str, Any] = {}
_seed = 0


def manual_seed(seed: int) -> None:
    """Seed every backend's generator (as torch.manual_seed)."""
    global _seed
    _seed = int(seed)
    _rng.clear()


def rng(device: str = "cpu"):
    """The generator for a device: numpy.random.Generator or cupy.random.Generator."""
    device = normalize_device(device)
    if device not in _rng:
        if device == "cpu":
            _rng[device] = np.random.default_rng(_seed)
        else:
            _rng[device] = cupy().random.default_rng(_seed)
    return _rng[device]


def get_rng_state() -> dict:
    """A JSON-serialisable snapshot of the CPU generator (plus the seed the others start from)."""
    return {"seed": _seed, "cpu": rng("cpu").bit_generator.state}


def set_rng_state(state: dict) -> None:
    manual_seed(state["seed"])
    rng("cpu").bit_generator.state = state["cpu"]
