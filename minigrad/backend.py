"""The backend boundary: which array module (`xp`) holds a tensor, and the random generators.

A tensor wraps one array, `numpy.ndarray` on "cpu" or `cupy.ndarray` on "cuda". Ops never ask
which backend they run on: they call `xp = array_module(a)` and use `xp.exp`, `xp.matmul`, ...
so one piece of op code serves both. CuPy is imported the first time something asks for "cuda".

A third device, "standin", is a debugging aid for machines without a GPU: NumPy underneath, but
its arrays refuse implicit conversion to NumPy as CuPy's do (minigrad/standin.py), so CI runs the
CuPy code paths and catches host/device mixing that would crash on a GPU.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import numpy as np

from . import checks, standin


class BackendError(RuntimeError):
    """Asked for a device that this machine cannot provide (no CuPy, no GPU, unknown name)."""


_cupy = None


def tune_allocator() -> None:
    """Tune this process's memory allocation for a NumPy training step (Linux; call it once, at
    the start of a job: tasks.common.guard.main_guard and the minigrad side of each benchmark do). Importing
    minigrad does not: it changes the whole process, other libraries included.

    Measured (2-core AMD EPYC shared with other jobs, NumPy 2.4, AdamW steps of batch 2 x 256,
    fastest step of several, runs with and without it interleaved): GPT-2 124M 2.98 s a step
    with it, 4.05 s without (the vocabulary-sized embedding gradient is where it pays); the
    4-layer, 256-wide "small" size 0.51 s either way. `python -m bench.train --size small`
    repeats were too noisy on the shared machine to tell the two apart (0.6 to 4.3 s a step).

    Two settings. glibc returns freed blocks of a few MB to the kernel at once, so every new
    activation pays page faults and zeroing again (3.2 ms vs 0.45 ms for one elementwise op on
    6 MB, measured): raise mmap's and trim's thresholds to keep them in the heap. And NumPy asks
    the kernel for 2 MB huge pages on large arrays; a sparse write into a fresh one, such as an
    embedding gradient of 50,257 x 768 with 512 rows set, then faults in and zeroes most of its
    154 MB (100-460 ms a 124M step here, against 3-20 ms with ordinary pages): turn that off,
    unless the user set NUMPY_MADVISE_HUGEPAGE, which still decides.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
        libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    except (OSError, AttributeError):
        pass
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        try:
            from numpy._core.multiarray import _set_madvise_hugepage
        except ImportError:  # NumPy 1.x
            from numpy.core.multiarray import _set_madvise_hugepage
        _set_madvise_hugepage(False)


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
            "`pip install -e '.[cuda]'` (cupy-cuda12x, CUDA 12) or `'.[cuda13]'` (cupy-cuda13x, CUDA 13) on a "
            "machine with an NVIDIA GPU."
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
    if device == "standin":
        return "standin"
    raise BackendError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'standin'")


def xp_for(device: str | None):
    """The array module for a device name."""
    device = normalize_device(device)
    if device == "cuda":
        return cupy()
    return standin if device == "standin" else np


def array_module(a: Any):
    """The array module that owns array `a` (NumPy for anything that is not a device array)."""
    if isinstance(a, standin.ndarray):
        return standin
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy
    return np


def device_of(a: Any) -> str:
    xp = array_module(a)
    return "cpu" if xp is np else "standin" if xp is standin else "cuda"


def to_device(a: Any, device: str):
    """Move an array to `device` ("cpu", "cuda" or "standin"); a no-op when it is there already."""
    device = normalize_device(device)
    if device_of(a) == device:
        return a
    if device_of(a) != "cpu":  # to the host first: the explicit copy each library offers
        a = array_module(a).asnumpy(a)
    if device == "cpu":
        return np.asarray(a)
    return xp_for(device).asarray(a)


_tf32 = False  # see set_tf32


def set_tf32(enabled: bool, device: str = "cuda") -> None:
    """CuPy's float32 matmuls on TensorFloat-32 tensor cores (10-bit mantissa inputs, float32
    accumulation), as CUPY_TF32=1 or torch's allow_tf32; or back to exact float32.

    The fused self-attention follows the same switch (tf32_enabled): under it, float32 attention
    runs on the float16 tensor-core kernels, its inputs cast in and its results cast out
    (kernels.FusedSelfAttention). device "standin" sets that switch alone (the stand-in counts
    what CuPy would run; its matmuls stay NumPy's)."""
    global _tf32
    device = normalize_device(device)
    if device == "cuda":
        from cupy._core import _routines_linalg as linalg  # where CuPy keeps the cuBLAS compute type
        cupy()
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
    elif device != "standin":
        raise BackendError(f"TF32 is a mode of NVIDIA GPUs (device 'cuda', or 'standin' to count what it runs); "
                           f"device {device!r} computes float32 in float32")
    _tf32 = bool(enabled)


def tf32_enabled() -> bool:
    """Whether set_tf32(True) is in force (float32 matmuls and the fused attention on tensor cores)."""
    return _tf32


def gpu_available() -> bool:
    try:
        cupy()
        return True
    except BackendError:
        return False


# ---------------------------------------------------------------- random numbers
# One generator per backend, seeded together by manual_seed. Explicit generators (not NumPy's
# global state) so a checkpoint can save and restore them for an exact resume. They serve
# initialisation and sampling; dropout draws from no generator at all (see dropout_keep below).
_rng: dict[str, Any] = {}
_seed = 0
_dropout_calls = 0  # dropout masks drawn since manual_seed: the counter of the counter-based hash


def manual_seed(seed: int) -> None:
    """Seed every backend's generator and restart the dropout counter (as torch.manual_seed).
    seed: an integer in [0, 2**64), what NumPy's and CuPy's generators take."""
    global _seed, _dropout_calls
    _seed = checks.seed("manual_seed", seed)
    _dropout_calls = 0
    _rng.clear()


def rng(device: str = "cpu"):
    """The generator for a device: numpy.random.Generator, cupy.random.Generator or the stand-in's."""
    device = normalize_device(device)
    if device not in _rng:
        _rng[device] = np.random.default_rng(_seed) if device == "cpu" else \
            xp_for(device).random.default_rng(_seed)
    return _rng[device]


def get_rng_state() -> dict:
    """A JSON-serialisable snapshot: the seed, the dropout counter and the CPU generator.

    Dropout, the only randomness inside a training step, is a function of (seed, counter), so
    these two integers make resume exact on every backend. Device generators are not saved: they
    only ever serve initialisation, which a resume replaces by the checkpoint's weights."""
    return {"seed": _seed, "dropout_calls": _dropout_calls, "cpu": rng("cpu").bit_generator.state}


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state() returned. Everything is checked before anything changes: a
    bad state raises (ValueError or TypeError naming the key) and leaves the generators as they were."""
    global _dropout_calls
    fn = "set_rng_state"
    if not isinstance(state, dict):
        raise TypeError(f"{fn}: state must be a dict from get_rng_state(), got {type(state).__name__}")
    missing = [k for k in ("seed", "cpu") if k not in state]
    if missing:
        raise ValueError(f"{fn}: state lacks {', '.join(map(repr, missing))} (keys: seed, dropout_calls, cpu)")
    seed = checks.seed(fn, state["seed"], "state['seed']")
    calls = checks.integer(fn, "state['dropout_calls']", state.get("dropout_calls", 0), 0)
    cpu = np.random.default_rng(seed)
    try:  # on a generator of our own first: NumPy checks the state's schema as it assigns it
        cpu.bit_generator.state = state["cpu"]
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as e:
        raise ValueError(f"{fn}: state['cpu'] is not a state of NumPy's {type(cpu.bit_generator).__name__} "
                         f"generator ({type(e).__name__}: {e})") from None
    manual_seed(seed)
    _dropout_calls = calls
    _rng["cpu"] = cpu


# ---------------------------------------------------------------- dropout masks from a hash
# A mask is hash(key, element index) >= threshold, where the key comes from (seed, call counter):
# no generator state lives on the device, the same integer ops give the same bits on NumPy and
# CuPy, and any mask can be recomputed from two integers. The hash is murmur3's 32-bit finaliser
# (a bijection with full avalanche) applied twice around a key xor, over a Weyl sequence of the
# index, which is plenty for Bernoulli masks (tests/test_dropout_rng.py checks the statistics).
_M64 = (1 << 64) - 1
_HASH_CHUNK = 1 << 16  # NumPy: 64K uint32 stay in the L2 cache through the dozen passes


def _splitmix64(z: int) -> int:
    """One step of splitmix64's output function on a Python int (host side, for the keys)."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _fmix32(xp, x, t) -> None:
    """murmur3's finaliser on a uint32 array, in place (t: scratch of x's shape)."""
    xp.right_shift(x, np.uint32(16), out=t)
    x ^= t
    x *= np.uint32(0x85EBCA6B)
    xp.right_shift(x, np.uint32(13), out=t)
    x ^= t
    x *= np.uint32(0xC2B2AE35)
    xp.right_shift(x, np.uint32(16), out=t)
    x ^= t


def dropout_hash_key(seed: int, counter: int) -> int:
    """The 64-bit key of the stream (seed, counter): element i of hash_uniform_bits is a function of
    this key and i alone (CUDA kernels that draw a mask themselves take the key, not the pair)."""
    seed = checks.seed("dropout_hash_key", seed)
    counter = checks.integer("dropout_hash_key", "counter", counter, 0, checks.SEED_BOUND)
    return _splitmix64((_splitmix64(seed & _M64) ^ counter) & _M64)


def hash_uniform_bits(xp, n: int, seed: int, counter: int, start: int = 0):
    """Elements start .. start + n - 1 (flat uint32) of the pseudo-random stream (seed, counter):
    element i is a function of (seed, counter, i) alone, identical on every backend."""
    seed = checks.seed("hash_uniform_bits", seed)
    counter = checks.integer("hash_uniform_bits", "counter", counter, 0, checks.SEED_BOUND)
    return hash_stream(xp, n, dropout_hash_key(seed, counter), start)


def hash_stream(xp, n: int, base: int, start: int = 0):
    """Elements start .. start + n - 1 of the stream with the 64-bit key `base` (hash_uniform_bits)."""
    out = xp.empty(n, dtype=np.uint32)
    chunk = _HASH_CHUNK if xp is np else min(max(n, 1), 1 << 32)
    t = xp.empty(min(chunk, max(n, 1)), dtype=np.uint32)
    pos, stop = start, start + n
    while pos < stop:
        hi = pos >> 32  # element indices past 2**32 get keys of their own
        end = min(pos + chunk, stop, (hi + 1) << 32)  # so no chunk crosses a multiple of 2**32
        key = _splitmix64(base ^ hi) if hi else base
        k0, k1 = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
        x, tt = out[pos - start:end - start], t[:end - pos]
        lo = pos & 0xFFFFFFFF
        x[...] = xp.arange(lo, lo + (end - pos), dtype=np.uint32)
        x *= np.uint32(0x9E3779B9)  # a Weyl sequence: neighbouring indices land far apart
        x += k0
        _fmix32(xp, x, tt)
        x ^= k1
        _fmix32(xp, x, tt)
        pos = end
    return out


def next_dropout_key(p: float) -> tuple[int, int]:
    """(key, threshold) of the next dropout mask, advancing the counter by one: element i is kept
    when element i of the key's stream is >= threshold (threshold / 2**32 ~ p).

    Each call advances the counter, so every dropout site of every step gets its own mask, and a
    resumed run (seed and counter restored) draws exactly the masks the first run would. A kernel
    that draws its mask inside (flash_attention.cu) takes these two numbers."""
    global _dropout_calls
    p = checks.number("dropout_keep", "p", p, 0.0, 1.0, hi_open=True)
    counter = _dropout_calls
    _dropout_calls += 1
    return dropout_hash_key(_seed, counter), min(int(round(p * 2.0 ** 32)), 2 ** 32 - 1)


def dropout_keep(xp, shape: tuple[int, ...], p: float):
    """A boolean mask of `shape`, True with probability 1 - p, from the next dropout key."""
    key, threshold = next_dropout_key(p)
    n = int(np.prod(shape, dtype=np.int64))
    return (hash_stream(xp, n, key) >= np.uint32(threshold)).reshape(shape)
