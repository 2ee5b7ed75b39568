"""What every benchmark shares: timing, model sizes, markdown tables, machine info, safe output.

This module imports neither minigrad nor torch at the top, so that a benchmark's processes load
only what they measure. minigrad's side of each benchmark calls minigrad.backend.tune_allocator()
as the tasks do (bench/train.py's worker_minigrad, ops.py, generate.py, scaling.py); a PyTorch
baseline measured in a process of its own keeps the allocator PyTorch users get.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Small shapes for developing a benchmark; the official presets ("124M", ...) come from gpt2.config.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128),
    "small": dict(n_layer=4, n_head=8, n_embd=256),
}


class BenchError(Exception):
    """An expected way for a benchmark to fail (no GPU, bad option): one line, exit status 2."""


def main_guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn BenchError (and a missing GPU) into `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except BenchError as e:
            if os.environ.get("MINIGRAD_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # minigrad.BackendError, without importing minigrad here
            if type(e).__name__ != "BackendError" or os.environ.get("MINIGRAD_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapper


# ---------------------------------------------------------------- model sizes
def config_dict(size: str, **overrides: int | None) -> dict[str, Any]:
    """GPT-2 hyper-parameters for a preset ("124M", ...) or a small size ("tiny", "small"),
    with any non-None override (n_layer, n_head, n_embd, vocab_size, n_ctx) applied."""
    from gpt2.config import PRESETS, GPT2Config

    if size in SIZES:
        base = dict(SIZES[size])
    elif size in PRESETS:
        base = dict(PRESETS[size])
    else:
        raise BenchError(f"unknown size {size!r}; known: {', '.join([*PRESETS, *SIZES])}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["dropout"] = 0.0
    try:
        return GPT2Config(**base).to_dict()
    except (TypeError, ValueError) as e:
        raise BenchError(f"bad model size: {e}") from None


def size_choices() -> list[str]:
    from gpt2.config import PRESETS
    return [*PRESETS, *SIZES]


# ---------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per call: the median and every sample (after the warm-up calls)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def ms(self) -> float:
        return 1e3 * self.median


def time_each(fns: Sequence[Callable[[], Any]], repeat: int = 5, warmup: int = 1,
              syncs: Sequence[Callable[[], None] | None] | None = None, settle: float = 0.3) -> list[Timing]:
    """Seconds per call of each function: `warmup` untimed calls, then `repeat` timed ones, one
    function after the other. `syncs[i]` (or None) waits for fns[i]'s queued GPU work, so that a
    sample covers the work and not only its launch.

    Before each function the CPU gets `settle` seconds of rest: BLAS and OpenMP worker threads
    keep spinning for a while after their last call (OpenBLAS's for ~0.1 s), and samples of
    NumPy and PyTorch taken in turn made each slow the other down, up to 3x on 2 cores.
    """
    if repeat < 1:
        raise BenchError(f"repeat must be at least 1, got {repeat}")
    syncs = list(syncs) if syncs is not None else [None] * len(fns)
    out = []
    for fn, sync in zip(fns, syncs):
        if settle:
            time.sleep(settle)
        for _ in range(warmup):
            fn()
        if sync:
            sync()
        timing = Timing()
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            timing.times.append(time.perf_counter() - t0)
        out.append(timing)
    return out


def time_fn(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1,
            sync: Callable[[], None] | None = None) -> Timing:
    """Call fn `warmup` times untimed (first-touch allocations, lazy init), then `repeat` times.

    `sync` waits for queued GPU work (CuPy or CUDA), so each sample covers the work and not just
    its launch; on the CPU it is not needed.
    """
    return time_each([fn], repeat, warmup, [sync], settle=0.0)[0]


def device_syncs(backend: str) -> tuple[Callable[[], None] | None, Callable[[], None] | None]:
    """(minigrad sync, torch sync) for a backend: None on the CPU."""
    if backend != "cupy":
        return None, None
    import torch
    import minigrad as mg
    cp = mg.backend.cupy()
    return (lambda: cp.cuda.Device().synchronize()), torch.cuda.synchronize


def gpu_event_timer(framework: str) -> Callable[[], tuple[Callable[[], None], Callable[[], None], Callable[[], float]]]:
    """A factory of CUDA-event timers for "minigrad" (CuPy events) or "torch": each call gives
    (start, stop, seconds); start and stop record an event on the current stream, and seconds()
    (after the GPU has passed stop) is the GPU time between them, launch gaps included."""
    if framework == "torch":
        import torch

        def make():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            return a.record, b.record, lambda: a.elapsed_time(b) / 1e3
        return make
    import minigrad as mg
    cp = mg.backend.cupy()

    def make():
        a, b = cp.cuda.Event(), cp.cuda.Event()
        return a.record, b.record, lambda: (b.synchronize(), cp.cuda.get_elapsed_time(a, b) / 1e3)[1]
    return make


def check_backend(backend: str) -> str:
    """The minigrad device for --backend, checked now so that a missing GPU is one clear message.

    Raises BenchError naming what is missing (CuPy, a GPU, or CUDA in the installed torch)."""
    if backend == "numpy":
        return "cpu"
    if backend == "standin":  # NumPy behaving as CuPy (minigrad/standin.py): compared with torch on the CPU
        return "standin"
    import minigrad as mg
    try:
        mg.backend.cupy()
    except mg.BackendError as e:
        raise BenchError(f"--backend cupy: {e}") from None
    import torch
    if not torch.cuda.is_available():
        raise BenchError("--backend cupy compares with PyTorch on the GPU, but the installed torch "
                         f"({torch.__version__}) cannot use CUDA here; install a CUDA build of torch")
    return "cuda"


def set_torch_threads() -> int:
    """PyTorch eager with one thread per core (the fair baseline for NumPy's threaded BLAS)."""
    import torch
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one letter per column, 'l' or 'r' (default: first
    column left, the rest right, which suits a name followed by numbers)."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} letters for {len(headers)} columns")
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(r, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename: never half a file.
    Raises BenchError when the file cannot be written."""
    from files.atomic import atomic_write_text  # here, not at the top: see the module's docstring

    path = Path(path)
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise BenchError(f"cannot write {path}: {e}") from None
    return path


def fmt_ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


# ---------------------------------------------------------------- machine info
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_blas() -> str:
    import numpy as np
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def _torch_blas(torch) -> str:
    cfg = torch.__config__.show()
    blas = next((p.split("=", 1)[1] for p in cfg.replace(",", " ").split() if p.startswith("BLAS_INFO=")), "?")
    mkldnn = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
    return f"{blas}, {mkldnn}"


def machine_info(backend: str = "numpy", with_torch: bool = True) -> dict[str, str]:
    """What a reader needs to compare these numbers with theirs."""
    import numpy as np
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "numpy": f"{np.__version__} (BLAS: {_numpy_blas()}; as loaded here: {blas_info()})",
    }
    if with_torch:
        try:
            import torch
            info["torch"] = (f"{torch.__version__} (BLAS: {_torch_blas(torch)}; "
                             f"{torch.get_num_threads()} threads)")
        except ImportError:
            info["torch"] = "not installed"
    if backend == "cupy":
        import minigrad as mg
        cp = mg.backend.cupy()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["gpu"] = f"{name}, CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}"
    return info


def blas_info() -> str:
    """What does this process's matrix products on the CPU: each BLAS library loaded, its version,
    the kernel it chose for this CPU and its threads (threadpoolctl), and OPENBLAS_CORETYPE when
    that forces OpenBLAS's kernel. Call it where the work runs, after importing the library."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    libs = [f"{d.get('internal_api', '?')} {d.get('version') or ''} ({d.get('architecture') or '?'} kernel, "
            f"{d.get('num_threads', '?')} threads)".replace("  ", " ")
            for d in threadpool_info() if d.get("user_api") == "blas"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return "; ".join(libs or ["none found"]) + (f"; OPENBLAS_CORETYPE={forced} forces the kernel" if forced else "")


def torch_blas_info(torch) -> str:
    """PyTorch's CPU matrix library (linked into torch, out of threadpoolctl's sight), the kernels
    ATen dispatches to on this CPU, and its threads."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"{_torch_blas(torch)} ({capability} kernels, {torch.get_num_threads()} threads)"


# Dense datasheet peaks in TFLOP/s for MFU (float32 on CUDA cores, TF32 and float16 on tensor
# cores), by the device's name as CUDA gives it ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_TFLOPS = {
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "float16": 756.0},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "float16": 835.0},
    "H200 NVL": {"float32": 60.0, "tf32": 417.5, "float16": 835.5},
    "H100": {"float32": 66.9, "tf32": 494.7, "float16": 989.4},   # SXM5
    "H200": {"float32": 66.9, "tf32": 494.7, "float16": 989.4},   # SXM: the H100's arithmetic
}


def peak_tflops(device_name: str, dtype: str) -> tuple[float, str] | None:
    """(peak TFLOP/s, which datasheet entry) for a GPU's name and a precision; None if unknown."""
    for key, peaks in PEAK_TFLOPS.items():  # the more specific names first
        if key in device_name and dtype in peaks:
            return peaks[dtype], key
    return None


def machine_info_markdown(info: dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


class ForeignLoad:
    """How much CPU time processes other than this one (and its children) used while it ran, as a
    share of all CPUs: /proc/stat's busy time minus our own. 0.0 on an otherwise idle machine;
    None where /proc/stat does not exist."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def share(self) -> float | None:
        end = self._read()
        if end is None or self._start is None or end[2] <= self._start[2]:
            return None
        (b0, own0, w0), (b1, own1, w1) = self._start, end
        return max((b1 - b0) - (own1 - own0), 0.0) / ((w1 - w0) * (os.cpu_count() or 1))


def load_note(share: float | None) -> str | None:
    """A warning for the report when other processes took more than 10% of the CPUs' time while
    we measured: shared cores make every time longer, threaded BLAS most of all."""
    if share is None or share <= 0.10:
        return None
    return (f"Warning: other processes used {100 * share:.0f}% of the {os.cpu_count()} CPUs' time during "
            "this measurement, so these times are longer than on an idle machine.")
