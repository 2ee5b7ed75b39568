"""Where a training step's time goes, per op and phase, for minigrad and for PyTorch.

minigrad: every Function subclass's forward and backward is wrapped with a timer for a few steps
(nothing in minigrad changes; the wrappers are removed afterwards), and the rest of each phase is
what the engine and the Python around the ops cost. On a GPU the timer is a pair of CUDA events
around each call (no host sync in between), so an op's time is the GPU's. PyTorch: torch.profiler's
events, each op counted once at its outermost level (on a GPU, the device time of the kernels
under it). Both sides are mapped onto the same op names so that the two can be put side by side.
cProfile's list sorted by own time is kept as the raw evidence; on a GPU, torch.profiler's CUPTI
records list the kernels themselves, CuPy's as well as PyTorch's (kernel_table).
"""
from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

# minigrad Function class -> the op name both sides share
MG_OPS = {
    "LinearFn": "linear", "MatMulFn": "matmul", "LayerNormFn": "layer_norm", "GeluFn": "gelu",
    "AttentionFn": "attention (sdpa)", "CrossEntropyFn": "cross_entropy",
    "EmbeddingFn": "embedding", "AddFn": "add", "ReshapeFn": "views/copies", "PermuteFn": "views/copies",
    "GetItemFn": "views/copies", "ConcatFn": "views/copies",
    "FusedLayerNorm": "layer_norm", "FusedGelu": "gelu", "FusedAttention": "attention (sdpa)",
    "FusedSelfAttention": "attention (sdpa)", "FusedCrossEntropy": "cross_entropy", "FusedBiasResidual": "add",
}
# PyTorch forward ops (outermost aten call) -> op name
TORCH_FWD = {
    "aten::linear": "linear", "aten::matmul": "matmul", "aten::layer_norm": "layer_norm",
    "aten::gelu": "gelu", "aten::scaled_dot_product_attention": "attention (sdpa)",
    "aten::cross_entropy_loss": "cross_entropy", "aten::embedding": "embedding", "aten::add": "add",
    "aten::view": "views/copies", "aten::transpose": "views/copies", "aten::split": "views/copies",
    "aten::contiguous": "views/copies", "aten::clone": "views/copies", "aten::reshape": "views/copies",
}
# PyTorch backward nodes (a substring of the node's name) -> op name
TORCH_BWD = [
    ("AddmmBackward", "linear"), ("MmBackward", "linear"), ("LinearBackward", "linear"),
    ("NativeLayerNormBackward", "layer_norm"), ("GeluBackward", "gelu"),
    ("ScaledDotProduct", "attention (sdpa)"), ("NllLoss", "cross_entropy"),
    ("LogSoftmaxBackward", "cross_entropy"), ("EmbeddingBackward", "embedding"), ("AddBackward", "add"),
    ("ViewBackward", "views/copies"), ("TransposeBackward", "views/copies"), ("SplitBackward", "views/copies"),
    ("UnsafeViewBackward", "views/copies"), ("CloneBackward", "views/copies"), ("TBackward", "views/copies"),
    ("PermuteBackward", "views/copies"), ("AccumulateGrad", "autograd engine"),
]
PROFILE_STEPS = 2                   # extra steps profiled after the timed ones
ENGINE = "autograd engine"          # backward time outside the ops' own backward functions
FWD_OTHER = "python around ops"     # forward time outside the ops (modules, graph recording)
OPTIMIZER = "AdamW step"


# ---------------------------------------------------------------- minigrad
def _function_classes(base) -> list[type]:
    out, stack = [], list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


@contextlib.contextmanager
def minigrad_op_timers(sync: Callable[[], None] | None = None,
                       events: Callable[[], tuple] | None = None) -> Iterator[dict[tuple[str, str], float]]:
    """Wrap forward/backward of every minigrad Function with a timer; yields {(op, phase): s},
    filled when the block ends.

    With `sync` each op waits for its kernels, so its host time is its own. With `events` (on the
    GPU: common.gpu_event_timer("minigrad")) each call is timed by two CUDA events around it
    instead: GPU time, with no host sync to change what is timed.
    """
    from minigrad.tensor import Function

    acc: dict[tuple[str, str], float] = defaultdict(float)
    saved, pending = [], []

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            if events:
                start, stop, seconds = events()
                start()
                try:
                    return fn(*args, **kwargs)
                finally:
                    stop()
                    pending.append((key, seconds))
            if sync:
                sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    sync()
                acc[key] += time.perf_counter() - t0
        return staticmethod(wrapper)

    for cls in _function_classes(Function):
        op = MG_OPS.get(cls.__name__, cls.__name__.lower())
        for phase in ("forward", "backward"):
            if phase in cls.__dict__:   # only where the class defines it (not inherited)
                saved.append((cls, phase, cls.__dict__[phase]))
                setattr(cls, phase, timed(cls.__dict__[phase].__func__, (op, phase)))
    try:
        yield acc
    finally:
        for cls, phase, orig in saved:
            setattr(cls, phase, orig)
        for key, seconds in pending:
            acc[key] += seconds()


def minigrad_breakdown(step_parts: Callable[[], dict[str, float]], steps: int,
                       sync: Callable[[], None] | None = None,
                       events: Callable[[], tuple] | None = None) -> dict[tuple[str, str], float]:
    """Seconds per step by (op, phase) over `steps` calls of step_parts, which runs one training
    step and returns its phases' times {"forward", "backward", "optimizer", "total"} (GPU times
    when `events` is given: see minigrad_op_timers)."""
    walls: dict[str, float] = defaultdict(float)
    with minigrad_op_timers(sync, events) as acc:
        for _ in range(steps):
            for k, v in step_parts().items():
                walls[k] += v
    out = {k: v / steps for k, v in acc.items()}
    return _add_remainders(out, {k: v / steps for k, v in walls.items()})


def _add_remainders(ops: dict[tuple[str, str], float], walls: dict[str, float]) -> dict[tuple[str, str], float]:
    """Attribute each phase's wall time not covered by ops to the engine / Python around them."""
    out = dict(ops)
    fwd_ops = sum(v for (_, phase), v in ops.items() if phase == "forward")
    # PyTorch's AccumulateGrad nodes are engine work: the remainder below includes them
    bwd_ops = sum(v for (op, phase), v in ops.items() if phase == "backward" and op != ENGINE)
    out[(FWD_OTHER, "forward")] = max(walls["forward"] - fwd_ops, 0.0)
    out[(ENGINE, "backward")] = max(walls["backward"] - bwd_ops, 0.0)
    out[(OPTIMIZER, "step")] = walls["optimizer"]
    out[("other (zero_grad, loss.item)", "step")] = max(
        walls["total"] - walls["forward"] - walls["backward"] - walls["optimizer"], 0.0)
    return out


def cprofile_top(run: Callable[[], None], steps: int, n: int = 20) -> list[tuple[str, int, float, float]]:
    """cProfile over `steps` calls of run(): the n functions with most own time, as
    (name, calls per step, own ms per step, cumulative ms per step). Names of op methods are
    given as Class.forward / Class.backward."""
    from minigrad.tensor import Function

    where = {}
    for cls in _function_classes(Function):
        for phase in ("forward", "backward"):
            if phase in cls.__dict__:
                code = cls.__dict__[phase].__func__.__code__
                where[(code.co_filename, code.co_firstlineno)] = f"{cls.__name__}.{phase}"
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        run()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO()).stats
    rows = []
    for (fname, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        name = where.get((fname, line))
        if name is None:
            short = fname.rsplit("/", 2)[-2:] if "/" in fname else [fname]
            name = f"{'/'.join(short)}:{line}({func})" if line else func
        rows.append((name, ncalls // steps, 1e3 * tottime / steps, 1e3 * cumtime / steps))
    rows.sort(key=lambda r: -r[2])
    return rows[:n]


# ---------------------------------------------------------------- PyTorch
def _torch_op(name: str) -> tuple[str, str] | None:
    if name.startswith("autograd::engine::evaluate_function: "):
        node = name.split(": ", 1)[1]
        for pattern, op in TORCH_BWD:
            if pattern in node:
                return op, "backward"
        return "other backward nodes", "backward"
    if name.startswith("Optimizer.step#"):
        return OPTIMIZER, "step"
    if name in TORCH_FWD:
        return TORCH_FWD[name], "forward"
    return None


def torch_breakdown(step_parts: Callable[[], dict[str, float]], steps: int,
                    gpu: bool = False) -> dict[tuple[str, str], float]:
    """Seconds per step by (op, phase) from torch.profiler over `steps` training steps.

    Each event is counted at its outermost recognised level (aten::linear, not the aten::addmm
    inside it), so nothing is counted twice. With `gpu`, an op's time is the device time of the
    kernels it launched (CUPTI), and step_parts' phases are GPU times. Profiling slows PyTorch's
    ops a little, too."""
    from torch.profiler import ProfilerActivity, profile

    walls: dict[str, float] = defaultdict(float)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            for k, v in step_parts().items():
                walls[k] += v
    acc: dict[tuple[str, str], float] = defaultdict(float)
    for ev in prof.events():
        key = _torch_op(ev.name)
        if key is None:
            continue
        parent, nested = ev.cpu_parent, False
        while parent is not None:
            if _torch_op(parent.name) is not None:
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            acc[key] += (ev.device_time_total if gpu else ev.cpu_time_total) * 1e-6
    ops = {k: v / steps for k, v in acc.items() if k[0] != OPTIMIZER}
    return _add_remainders(ops, {k: v / steps for k, v in walls.items()})


def kernel_table(run: Callable[[], None], steps: int, n: int = 15) -> list[tuple[str, float, float]]:
    """The GPU kernels of `steps` calls of run() as torch.profiler's CUPTI records see them, in
    any framework of the process (CuPy's too): the n with most time, as (name, launches per step,
    ms per step), and a last row for all of them. [] when the profiler saw no kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for ev in prof.events():
        if ev.device_type == DeviceType.CUDA:
            acc[ev.name][0] += 1
            acc[ev.name][1] += ev.time_range.elapsed_us()
    rows = sorted(((name if len(name) <= 70 else name[:67] + "...", c / steps, us / steps / 1e3)
                   for name, (c, us) in acc.items()), key=lambda r: -r[2])
    if not rows:
        return []
    return rows[:n] + [("all kernels", sum(r[1] for r in rows), sum(r[2] for r in rows))]


# ---------------------------------------------------------------- summaries
CATEGORY = {"linear": "matmul (BLAS)", "matmul": "matmul (BLAS)",
            "attention (sdpa)": "attention (BLAS + softmax)", OPTIMIZER: "optimizer (elementwise)",
            FWD_OTHER: "Python / autograd overhead", ENGINE: "Python / autograd overhead",
            "other (zero_grad, loss.item)": "Python / autograd overhead"}


def by_category(parts: dict[tuple[str, str], float]) -> dict[str, float]:
    """matmul / attention / elementwise / optimizer / overhead, seconds per step."""
    out: dict[str, float] = defaultdict(float)
    for (op, _), s in parts.items():
        out[CATEGORY.get(op, "elementwise, reductions, indexing")] += s
    return dict(out)


def as_json(parts: dict[tuple[str, str], float]) -> list[list[Any]]:
    return [[op, phase, s] for (op, phase), s in parts.items()]


def from_json(rows: list[list[Any]]) -> dict[tuple[str, str], float]:
    return {(op, phase): s for op, phase, s in rows}
