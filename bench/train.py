"""GPT-2 training steps, minigrad against PyTorch eager: time, tokens/s, peak memory, losses.

    python -m bench.train [--backend numpy|cupy] [--dtype float32|tf32|float16] [--batch-size 2]
                          [--context 256] [--steps 10] [--size 124M] [--out FILE]

Both frameworks start from the same weights (drawn once by gpt2.GPT2's initialisation and copied,
transposed where PyTorch's Linear wants (out, in)), see the same random batches, and train with
AdamW (lr 4e-4, weight decay 0.1 on matrices only, as tasks/training/trainer.py) with dropout 0, in the same
precision (bench/precision.py: float32; tf32 on a GPU; float16 mixed precision, minigrad as
tasks.training's Trainer does it, PyTorch with autocast and GradScaler). Each runs in a subprocess of its own,
so that each peak RSS is its own and PyTorch runs with the default allocator. The first step is a
warm-up; the time per step is the median of the others. Their losses must agree (1e-4 relative in
float32; bench/precision.py gives the others). A breakdown of each step by op and phase and
cProfile's top functions follow the table; the CPU tables name the BLAS library, the kernel it
chose and its threads (threadpoolctl) on each side.

On --backend cupy the defaults become batch 8 x 1024 tokens, the times are CUDA events, the
breakdown is GPU time (CUDA events around every minigrad Function; torch.profiler's device times
for PyTorch), torch.profiler's CUPTI records list each side's kernels, and the report adds MFU
(6 x parameters x tokens/s over --peak-tflops, or the datasheet peak for the GPU's name).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import breakdown
from .breakdown import PROFILE_STEPS
from .common import (RESULTS_DIR, BenchError, ForeignLoad, blas_info, check_backend, config_dict, gpu_event_timer,
                     machine_info, main_guard, set_torch_threads, size_choices, torch_blas_info, write_atomic)
from .precision import DTYPES, minigrad_precision, torch_precision
from .train_report import render
from tasks.common.args import add_backend_arg

REPO = Path(__file__).resolve().parents[1]


def batches(job: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same random (inputs, targets) for both frameworks: one batch per step."""
    rng = np.random.default_rng(job["seed"] + 1)
    ids = rng.integers(0, job["cfg"]["vocab_size"], (job["steps"], job["B"], job["T"] + 1))
    return [(b[:, :-1].copy(), b[:, 1:].copy()) for b in ids]


def decay_groups(named: list[tuple[str, Any]], weight_decay: float) -> list[dict]:
    """tasks/training/trainer.py's groups: weight decay on matrices (ndim >= 2), none on biases and LayerNorm."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_steps(step: Callable[[Any, Any], tuple[float, dict]], data: list,
              log: str) -> tuple[list[float], list[float], float | None]:
    """Run one training step per batch; returns (losses, seconds per step, the share of the CPUs
    that other processes used during the timed steps)."""
    losses, times = [], []
    for i, (x, y) in enumerate(data):
        if i == 1:  # the warm-up step is over
            foreign = ForeignLoad()
        loss, parts = step(x, y)
        losses.append(loss)
        times.append(parts["total"])
        print(f"  {log} step {i + 1}/{len(data)}: loss {loss:.6f}, {parts['total']:.3f} s", file=sys.stderr)
    return losses, times, foreign.share()


def make_step(model, opt, precision, timer=None) -> Callable[..., tuple[float, dict[str, float]]]:
    """One training step, the same code for both frameworks (their APIs agree here, and
    `precision` (bench/precision.py) does what differs): step(x, y, phase_sync=None) -> (loss,
    seconds per phase). `phase_sync` waits for the GPU between phases; without it, or timer, the
    phases on a GPU are launch times only. With `timer` (common.gpu_event_timer), each phase is
    the GPU's time between two CUDA events ("forward", "backward", "optimizer", and "total" their
    sum, from before the forward to after the optimizer); "host_total" is the host's."""

    def step(x, y, phase_sync: Callable[[], None] | None = None):
        marks = [timer() for _ in range(3)] if timer else None
        t = [time.perf_counter()]

        def phase(i: int, run: Callable[[], Any]) -> Any:
            if marks:
                marks[i][0]()
            result = run()
            if marks:
                marks[i][1]()
            if phase_sync:
                phase_sync()
            t.append(time.perf_counter())
            return result

        loss = phase(0, lambda: precision.forward(model, x, y))
        phase(1, lambda: precision.backward(loss))
        phase(2, lambda: precision.step(opt))
        value = float(loss.item())   # waits for the GPU, so "total" is the whole step
        opt.zero_grad()              # drops the gradients (PyTorch: set_to_none, its default)
        t.append(time.perf_counter())
        parts = {"forward": t[1] - t[0], "backward": t[2] - t[1], "optimizer": t[3] - t[2], "total": t[4] - t[0]}
        if marks:
            gpu = [m[2]() for m in marks]
            parts.update(host_total=parts["total"], forward=gpu[0], backward=gpu[1], optimizer=gpu[2],
                         total=sum(gpu), gpu=sum(gpu))
        return value, parts
    return step


# ---------------------------------------------------------------- workers (one subprocess each)
def worker_init(job: dict) -> dict:
    """Draw the initial weights with gpt2.GPT2's own initialisation and save them for both."""
    import minigrad as mg
    from gpt2 import GPT2, GPT2Config

    mg.manual_seed(job["seed"])
    model = GPT2(GPT2Config(**job["cfg"]))
    mg.save(model.state_dict(), job["weights"])
    return {"n_params": model.num_parameters()}


def _stream_weights(path: str):
    """(name, array) from a safetensors file one at a time: never two copies of the model."""
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


def _kernels(out: dict, run: Callable[[], Any]) -> None:
    """torch.profiler's kernel records of PROFILE_STEPS calls of run() into out["kernels"], or
    why there are none into out["kernels_error"] (the profiler may not see another library's)."""
    try:
        rows = breakdown.kernel_table(run, PROFILE_STEPS)
    except Exception as e:  # no torch, no CUPTI: the report says so
        out["kernels_error"] = f"torch.profiler failed ({type(e).__name__}: {e})"
        return
    if rows:
        out["kernels"] = rows
    else:
        out["kernels_error"] = "torch.profiler recorded no kernel of this process"


def worker_minigrad(job: dict) -> dict:
    import minigrad as mg
    mg.backend.tune_allocator()  # as tasks do; PyTorch's worker keeps glibc's defaults
    from gpt2 import GPT2, GPT2Config
    from minigrad.optim import AdamW

    device = job["device"]
    model = GPT2(GPT2Config(**job["cfg"]), init=False)
    params = dict(model.named_parameters())
    loaded = set()
    for name, arr in _stream_weights(job["weights"]):
        params[name].data[...] = arr
        loaded.add(name)
    if loaded != set(params):
        raise BenchError(f"initial weights miss {sorted(set(params) - loaded)}")
    model.to(device)
    model.train()
    opt = AdamW(decay_groups(list(params.items()), job["weight_decay"]), lr=job["lr"],
                weight_decay=job["weight_decay"])
    precision = minigrad_precision(job["dtype"], model, opt, device)
    data = batches(job)  # host arrays, as tasks.training hands them over: checked there, then copied in
    gpu = device == "cuda"
    step = make_step(model, opt, precision, gpu_event_timer("minigrad") if gpu else None)
    losses, times, load = run_steps(step, data, "minigrad")
    out = {"losses": losses, "times": times, "load": load, "peak_rss_mib": peak_rss_mib(), "blas": blas_info(),
           "skipped": precision.skipped}
    if gpu:
        out["gpu_pool_mib"] = mg.backend.cupy().get_default_memory_pool().total_bytes() / 2**20
        out["fused"] = os.environ.get("MINIGRAD_FUSED", "1") != "0"
    if job["profile"]:
        prof_data = [data[i % len(data)] for i in range(PROFILE_STEPS)]
        it = iter(prof_data)
        parts = breakdown.minigrad_breakdown(lambda: step(*next(it))[1], PROFILE_STEPS,
                                             events=gpu_event_timer("minigrad") if gpu else None)
        out["breakdown"] = breakdown.as_json(parts)
        it2 = iter(prof_data)
        out["cprofile"] = breakdown.cprofile_top(lambda: step(*next(it2)), PROFILE_STEPS)
        if gpu:
            it3 = iter(prof_data)
            _kernels(out, lambda: step(*next(it3)))
    return out


def worker_torch(job: dict) -> dict:
    import torch
    from . import torch_gpt2

    set_torch_threads()
    dev = "cuda" if job["device"] == "cuda" else "cpu"
    model = torch_gpt2.GPT2(**job["cfg"])
    torch_gpt2.load_from(model, _stream_weights(job["weights"]))
    model.to(dev).train()
    named = list(model.named_parameters())
    # fused AdamW: PyTorch's fastest eager optimizer, on the CPU too
    opt = torch.optim.AdamW(decay_groups(named, job["weight_decay"]), lr=job["lr"],
                            weight_decay=job["weight_decay"], fused=True)
    precision = torch_precision(job["dtype"], torch, dev)
    data = [(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)) for x, y in batches(job)]

    step = make_step(model, opt, precision, gpu_event_timer("torch") if dev == "cuda" else None)
    losses, times, load = run_steps(step, data, "torch")
    out = {"losses": losses, "times": times, "load": load, "peak_rss_mib": peak_rss_mib(),
           "threads": torch.get_num_threads(), "blas": torch_blas_info(torch), "skipped": precision.skipped}
    if dev == "cuda":
        out["gpu_pool_mib"] = torch.cuda.max_memory_reserved() / 2**20
    if job["profile"]:
        it = iter([data[i % len(data)] for i in range(PROFILE_STEPS)])
        out["breakdown"] = breakdown.as_json(breakdown.torch_breakdown(lambda: step(*next(it))[1], PROFILE_STEPS,
                                                                       gpu=dev == "cuda"))
        if dev == "cuda":
            it2 = iter([data[i % len(data)] for i in range(PROFILE_STEPS)])
            _kernels(out, lambda: step(*next(it2)))
    return out


WORKERS = {"init": worker_init, "minigrad": worker_minigrad, "torch": worker_torch}


def run_worker(kind: str, job_path: Path) -> dict:
    """Run one worker in a fresh Python process and read back the JSON it wrote."""
    result = job_path.with_name(f"{kind}.json")
    proc = subprocess.run([sys.executable, "-m", "bench.train", "--worker", kind, str(job_path)], cwd=REPO)
    if proc.returncode != 0 or not result.is_file():
        raise BenchError(f"the {kind} run failed (exit status {proc.returncode}); its messages are above")
    return json.loads(result.read_text())


# ---------------------------------------------------------------- report
def _combine(results: list[dict]) -> dict:
    """One framework's repeats as one result: the first run's losses and breakdown, each run's
    median step time in `repeat_times`, the worst load and peak memory."""
    out = dict(results[0])
    out["repeat_times"] = [float(np.median(r["times"][1:])) for r in results]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    loads = [r["load"] for r in results if r["load"] is not None]
    out["load"] = max(loads) if loads else None
    return out


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_arg(p)
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="float32; tf32 (GPU only): float32 with TensorFloat-32 matmuls; float16: mixed precision "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="default: 2 (numpy), 8 (cupy)")
    p.add_argument("--context", type=int, help="tokens per sequence; default: 256 (numpy), 1024 (cupy)")
    p.add_argument("--steps", type=int, default=10, help="including one warm-up step (default: %(default)s)")
    p.add_argument("--size", default="124M", choices=size_choices(), help="default: %(default)s")
    p.add_argument("--n-layer", type=int, help="override the size's layer count")
    p.add_argument("--n-embd", type=int, help="override the size's width")
    p.add_argument("--n-head", type=int, help="override the size's head count")
    p.add_argument("--vocab-size", type=int, help="override the vocabulary (default 50257)")
    p.add_argument("--lr", type=float, default=4e-4, help="default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=0.1, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=123, help="default: %(default)s")
    p.add_argument("--peak-tflops", type=float,
                   help="the GPU's peak TFLOP/s at --dtype, for MFU (cupy; default: the datasheet's for the GPU's name)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op breakdown")
    p.add_argument("--repeats", type=int, default=1,
                   help="run both frameworks this many times, alternating which goes first; the time "
                        "is the median over repeats of each run's median (on a shared machine use 3 "
                        "or more) (default: %(default)s)")
    p.add_argument("--out", help="markdown file (default: bench/results/train_cpu.md or train_cuda.md; "
                                 "sizes other than 124M add _<size>, precisions other than float32 _<dtype>)")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "JOB"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _worker_main(kind: str, job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = WORKERS[kind](job)
    write_atomic(Path(job_path).with_name(f"{kind}.json"), json.dumps(result))
    return 0


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker_main(*args.worker)
    device = check_backend(args.backend)
    gpu = device == "cuda"
    B = args.batch_size or (8 if gpu else 2)
    T = args.context or (1024 if gpu else 256)
    if B < 1 or T < 1:
        raise BenchError("--batch-size and --context must be positive")
    if args.steps < 2:
        raise BenchError("--steps must be at least 2 (one warm-up step, then timed ones)")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise BenchError("--peak-tflops must be positive")
    if args.dtype == "tf32" and not gpu:
        raise BenchError("--dtype tf32 is the GPU's TensorFloat-32 matmul mode (tensor cores); on the CPU "
                         "both frameworks multiply in float32: use --dtype float32")
    cfg = config_dict(args.size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                      vocab_size=args.vocab_size)
    if T > cfg["n_ctx"]:
        raise BenchError(f"--context {T} is longer than the model's context of {cfg['n_ctx']}")
    suffix = ("" if args.size == "124M" else f"_{args.size}") + ("" if args.dtype == "float32" else f"_{args.dtype}")
    out = Path(args.out) if args.out else RESULTS_DIR / f"train_{'cuda' if gpu else 'cpu'}{suffix}.md"

    set_torch_threads()
    info = machine_info(args.backend)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        job = dict(cfg=cfg, B=B, T=T, steps=args.steps, seed=args.seed, lr=args.lr, dtype=args.dtype,
                   weight_decay=args.weight_decay, device=device, profile=not args.no_profile,
                   weights=str(tmp / "init.safetensors"))
        job_path = tmp / "job.json"
        job_path.write_text(json.dumps(job))
        print(f"drawing the initial weights ({args.size}) ...", file=sys.stderr)
        n_params = run_worker("init", job_path)["n_params"]
        runs: dict[str, list[dict]] = {"minigrad": [], "torch": []}
        for rep in range(args.repeats):
            # interleaved: the load of a shared machine drifts, so neither side always goes first
            order = ("minigrad", "torch") if rep % 2 == 0 else ("torch", "minigrad")
            job_path.write_text(json.dumps(dict(job, profile=job["profile"] and rep == 0)))
            for kind in order:
                print(f"{kind} (repeat {rep + 1}/{args.repeats}): {args.steps} steps of {B} x {T} tokens",
                      file=sys.stderr)
                runs[kind].append(run_worker(kind, job_path))
        mg_res, th_res = _combine(runs["minigrad"]), _combine(runs["torch"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text, ok = render(args, job, n_params, mg_res, th_res, info)
    write_atomic(out, text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
