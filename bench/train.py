"""GPT-2 training steps, minigrad against PyTorch eager: time, tokens/s, peak memory, losses.

    python -m bench.train [--backend numpy|cupy] [--batch-size 2] [--context 256] [--steps 10]
                          [--size 124M] [--out FILE]

Both frameworks start from the same weights (drawn once by gpt2.GPT2's initialisation and copied,
transposed where PyTorch's Linear wants (out, in)), see the same random batches, and train with
AdamW (lr 4e-4, weight decay 0.1 on matrices only, as tasks/train.py) with dropout 0. Each runs
in a subprocess of its own, so that each peak RSS is its own and PyTorch runs with the default
allocator. The first step is a warm-up; the time per step is the median of the others. Their
losses must agree to 1e-4 relative. A breakdown of minigrad's step by op and phase, next to
PyTorch's from torch.profiler, and cProfile's top functions follow the table.

On --backend cupy the defaults become batch 8 x 1024 tokens and the report adds MFU
(6 x parameters x tokens/s / --peak-tflops).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
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
from .common import (RESULTS_DIR, BenchError, ForeignLoad, check_backend, config_dict, fmt_ms, gpu_event_timer,
                     load_note, machine_info,
                     machine_info_markdown, main_guard, markdown_table, set_torch_threads, size_choices,
                     write_atomic)
from tasks.common.args import add_backend_arg

LOSS_RTOL = 1e-4
PROFILE_STEPS = 2
REPO = Path(__file__).resolve().parents[1]


def batches(job: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same random (inputs, targets) for both frameworks: one batch per step."""
    rng = np.random.default_rng(job["seed"] + 1)
    ids = rng.integers(0, job["cfg"]["vocab_size"], (job["steps"], job["B"], job["T"] + 1))
    return [(b[:, :-1].copy(), b[:, 1:].copy()) for b in ids]


def decay_groups(named: list[tuple[str, Any]], weight_decay: float) -> list[dict]:
    """tasks/train.py's groups: weight decay on matrices (ndim >= 2), none on biases and LayerNorm."""
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


def make_step(model, opt, timer=None) -> Callable[..., tuple[float, dict[str, float]]]:
    """One training step, the same code for both frameworks (their APIs agree here):
    step(x, y, phase_sync=None) -> (loss, seconds per phase). `phase_sync` waits for the GPU
    between phases, for a breakdown; without it the phases on a GPU are launch times only.
    With `timer` (common.gpu_event_timer), "gpu" is the step's time between two CUDA events, from
    before the forward to after the optimizer, and "total" (host clock) becomes that time."""

    def step(x, y, phase_sync: Callable[[], None] | None = None):
        events = timer() if timer else None
        if events:
            events[0]()
        t0 = time.perf_counter()
        _, loss = model(x, y)
        if phase_sync:
            phase_sync()
        t1 = time.perf_counter()
        loss.backward()
        if phase_sync:
            phase_sync()
        t2 = time.perf_counter()
        opt.step()
        if events:
            events[1]()
        if phase_sync:
            phase_sync()
        t3 = time.perf_counter()
        value = float(loss.item())   # waits for the GPU, so "total" is the whole step
        opt.zero_grad()              # drops the gradients (PyTorch: set_to_none, its default)
        t4 = time.perf_counter()
        parts = {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t4 - t0}
        if events:
            parts["host_total"] = parts["total"]
            parts["total"] = parts["gpu"] = events[2]()
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
    sync = None
    if device == "cuda":
        cp = mg.backend.cupy()
        sync = cp.cuda.Device().synchronize
    data = [(mg.backend.to_device(x, device), mg.backend.to_device(y, device)) for x, y in batches(job)]

    step = make_step(model, opt, gpu_event_timer("minigrad") if device == "cuda" else None)
    losses, times, load = run_steps(step, data, "minigrad")
    out = {"losses": losses, "times": times, "load": load, "peak_rss_mib": peak_rss_mib()}
    if device == "cuda":
        out["gpu_pool_mib"] = mg.backend.cupy().get_default_memory_pool().total_bytes() / 2**20
        out["fused"] = os.environ.get("MINIGRAD_FUSED", "1") != "0"
    if job["profile"]:
        prof_data = [data[i % len(data)] for i in range(PROFILE_STEPS)]
        it = iter(prof_data)
        parts = breakdown.minigrad_breakdown(lambda: step(*next(it), phase_sync=sync)[1], PROFILE_STEPS, sync)
        out["breakdown"] = breakdown.as_json(parts)
        it2 = iter(prof_data)
        out["cprofile"] = breakdown.cprofile_top(lambda: step(*next(it2)), PROFILE_STEPS)
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
    data = [(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)) for x, y in batches(job)]

    step = make_step(model, opt, gpu_event_timer("torch") if dev == "cuda" else None)
    losses, times, load = run_steps(step, data, "torch")
    out = {"losses": losses, "times": times, "load": load, "peak_rss_mib": peak_rss_mib(),
           "threads": torch.get_num_threads()}
    if dev == "cuda":
        out["gpu_pool_mib"] = torch.cuda.max_memory_reserved() / 2**20
    elif job["profile"]:  # the profiler's CPU events say little about GPU kernels
        it = iter([data[i % len(data)] for i in range(PROFILE_STEPS)])
        out["breakdown"] = breakdown.as_json(breakdown.torch_breakdown(lambda: step(*next(it))[1], PROFILE_STEPS))
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
def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _combine(results: list[dict]) -> dict:
    """One framework's repeats as one result: the first run's losses and breakdown, each run's
    median step time in `repeat_times`, the worst load and peak memory."""
    out = dict(results[0])
    out["repeat_times"] = [_median(r["times"][1:]) for r in results]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    loads = [r["load"] for r in results if r["load"] is not None]
    out["load"] = max(loads) if loads else None
    return out


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def render(args, job: dict, n_params: int, mg_res: dict, th_res: dict, info: dict[str, str]) -> tuple[str, bool]:
    B, T = job["B"], job["T"]
    tokens = B * T
    t_mg, t_th = _median(mg_res["repeat_times"]), _median(th_res["repeat_times"])
    gpu = job["device"] == "cuda"
    rows = [["time per step, median (s)", f"{t_mg:.3f}", f"{t_th:.3f}", f"{t_mg / t_th:.2f}x"],
            ["tokens/s", f"{tokens / t_mg:.0f}", f"{tokens / t_th:.0f}", f"{t_th / t_mg:.2f}x"],
            ["peak RSS (MiB)", f"{mg_res['peak_rss_mib']:.0f}", f"{th_res['peak_rss_mib']:.0f}",
             f"{mg_res['peak_rss_mib'] / th_res['peak_rss_mib']:.2f}x"],
            ["CPU time taken by other processes while timed", _pct(mg_res["load"]), _pct(th_res["load"]), ""]]
    if gpu:
        rows.append(["GPU memory pool, peak (MiB)", f"{mg_res['gpu_pool_mib']:.0f}", f"{th_res['gpu_pool_mib']:.0f}",
                     f"{mg_res['gpu_pool_mib'] / th_res['gpu_pool_mib']:.2f}x"])
        if args.peak_tflops:
            mfu = [6 * n_params * tokens / t / (args.peak_tflops * 1e12) for t in (t_mg, t_th)]
            rows.append([f"MFU (6 N tokens/s over {args.peak_tflops:g} TFLOP/s)", f"{100 * mfu[0]:.1f}%", f"{100 * mfu[1]:.1f}%",
                         f"{mfu[0] / mfu[1]:.2f}x"])
    n = min(len(mg_res["losses"]), len(th_res["losses"]), 10)
    loss_rows, worst = [], 0.0
    for i in range(n):
        a, b = mg_res["losses"][i], th_res["losses"][i]
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        loss_rows.append([i + 1, f"{a:.6f}", f"{b:.6f}", f"{rel:.1e}"])
    ok = worst <= LOSS_RTOL
    cfg = job["cfg"]
    lines = [f"# GPT-2 training step: minigrad vs PyTorch eager ({args.backend})", "",
             f"`{shlex.join(['python', '-m', 'bench.train', *args.argv])}`", "",
             f"Model: {cfg['n_layer']} layers, {cfg['n_head']} heads, width {cfg['n_embd']}, vocabulary "
             f"{cfg['vocab_size']}, {n_params:,} parameters, dropout 0, float32. Batch {B} x {T} tokens "
             f"({tokens} per step). AdamW lr {job['lr']:g}, weight decay {job['weight_decay']:g} on matrices "
             "only (PyTorch: fused=True). Same initial weights and batches on both sides, each framework "
             f"in its own process. {job['steps']} steps: the first is a warm-up, the time is the median "
             f"of the other {job['steps'] - 1}; peak RSS is the process's maximum resident memory "
             "(resource.getrusage), model creation included.", "",
             markdown_table(["", "minigrad", "PyTorch", "minigrad / PyTorch"], rows), "",
             *([f"Times per step on the GPU: CUDA events (cupy.cuda.Event, torch.cuda.Event) around forward, "
                f"backward and optimizer; minigrad's fused kernels "
                f"{'on' if mg_res.get('fused', True) else 'off (MINIGRAD_FUSED=0)'}.", ""] if gpu else []),
             f"PyTorch: {th_res.get('threads', '?')} threads. Ratio below 1 in time (above 1 in tokens/s): "
             "minigrad is faster. PyTorch's peak RSS includes its own libraries (a few hundred MiB).", ""]
    if len(mg_res["repeat_times"]) > 1:
        reps = [[i + 1, f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x"]
                for i, (a, b) in enumerate(zip(mg_res["repeat_times"], th_res["repeat_times"]))]
        ratios = [a / b for a, b in zip(mg_res["repeat_times"], th_res["repeat_times"])]
        lines += [f"{len(reps)} repeats, the two frameworks interleaved (odd repeats minigrad first, even "
                  f"ones PyTorch first); the table above gives the median of the repeats' medians. "
                  f"Median of the per-repeat ratios: {_median(ratios):.2f}x.", "",
                  markdown_table(["repeat", "minigrad s/step", "PyTorch s/step", "ratio"], reps), ""]
    note = load_note(max(mg_res["load"] or 0.0, th_res["load"] or 0.0))
    if note:
        lines += [note, ""]
    lines += [f"## Losses of the first {n} steps", "",
              markdown_table(["step", "minigrad", "PyTorch", "relative difference"], loss_rows), "",
              f"Loss agreement (every step within {LOSS_RTOL:g} relative): **{'PASS' if ok else 'FAIL'}** "
              f"(worst {worst:.1e}).", ""]
    if "breakdown" in mg_res:
        lines += _render_profile(mg_res, th_res)
    lines += ["## Machine", "", machine_info_markdown(info), ""]
    return "\n".join(lines), ok


def _render_profile(mg_res: dict, th_res: dict) -> list[str]:
    mg_parts = breakdown.from_json(mg_res["breakdown"])
    th_parts = breakdown.from_json(th_res.get("breakdown", []))
    mg_cat, th_cat = breakdown.by_category(mg_parts), breakdown.by_category(th_parts)
    total_mg, total_th = sum(mg_cat.values()), sum(th_cat.values())
    cat_rows = [[c, fmt_ms(mg_cat.get(c, 0.0)), f"{100 * mg_cat.get(c, 0.0) / total_mg:.0f}%",
                 fmt_ms(th_cat[c]) if c in th_cat else "-"]
                for c in sorted(set(mg_cat) | set(th_cat), key=lambda c: -mg_cat.get(c, 0.0))]
    cat_rows.append(["total", fmt_ms(total_mg), "100%", fmt_ms(total_th) if th_cat else "-"])
    keys = sorted(set(mg_parts) | set(th_parts),
                  key=lambda k: -(mg_parts.get(k, 0.0) - th_parts.get(k, 0.0)))
    op_rows = [[op, phase, fmt_ms(mg_parts.get((op, phase), 0.0)),
                fmt_ms(th_parts[(op, phase)]) if (op, phase) in th_parts else "-",
                f"{1e3 * (mg_parts.get((op, phase), 0.0) - th_parts.get((op, phase), 0.0)):+.1f}"]
               for op, phase in keys]
    prof_rows = [[name, calls, f"{own:.1f}", f"{cum:.1f}"] for name, calls, own, cum in mg_res["cprofile"]]
    return [f"## Where the time goes (ms per step, averaged over {PROFILE_STEPS} extra profiled steps)", "",
            "minigrad: each Function's forward and backward timed by a wrapper (matmul = Linear, which "
            "is BLAS but for the bias add and sum); the rest of the forward is Python around the ops "
            "(modules, graph recording), the rest of the backward the autograd engine (topological "
            "order, gradient sums and copies). PyTorch: torch.profiler events at their outermost "
            "level, same grouping; profiling slows both a little.", "",
            markdown_table(["category", "minigrad ms", "share", "PyTorch ms"], cat_rows), "",
            "By op and phase, the ops where minigrad spends the most more than PyTorch first:", "",
            markdown_table(["op", "phase", "minigrad ms", "PyTorch ms", "minigrad - PyTorch ms"], op_rows,
                           "llrrr"), "",
            "minigrad under cProfile, top functions by own time (operators such as `@` and `+=` run "
            "inside the function that uses them, so an op's BLAS time is its own time):", "",
            markdown_table(["function", "calls/step", "own ms/step", "cumulative ms/step"], prof_rows), ""]


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_arg(p)
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
    p.add_argument("--peak-tflops", type=float, help="the GPU's peak float32 TFLOP/s, for MFU (cupy)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op breakdown")
    p.add_argument("--repeats", type=int, default=1,
                   help="run both frameworks this many times, alternating which goes first; the time "
                        "is the median over repeats of each run's median (on a shared machine use 3 "
                        "or more) (default: %(default)s)")
    p.add_argument("--out", help="markdown file (default: bench/results/train_cpu.md or train_cuda.md; "
                                 "sizes other than 124M add _<size>)")
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
    cfg = config_dict(args.size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                      vocab_size=args.vocab_size)
    if T > cfg["n_ctx"]:
        raise BenchError(f"--context {T} is longer than the model's context of {cfg['n_ctx']}")
    suffix = "" if args.size == "124M" else f"_{args.size}"
    out = Path(args.out) if args.out else RESULTS_DIR / f"train_{'cuda' if gpu else 'cpu'}{suffix}.md"

    set_torch_threads()
    info = machine_info(args.backend)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        job = dict(cfg=cfg, B=B, T=T, steps=args.steps, seed=args.seed, lr=args.lr,
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
