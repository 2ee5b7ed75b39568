"""Data-parallel scaling: training steps/s on R ranks (mpiexec) at a fixed global batch, with the
all-reduce's share of the step and the bytes it moves.

    python -m bench.scaling [--ranks 1,2] [--size small] [--global-batch 4] [--context 256]
                            [--steps 6] [--backend numpy|cupy] [--out FILE]

For each R in --ranks it starts `mpiexec -n R python -m bench.scaling --worker ...` (R = 1 runs
one plain process) with cores / R BLAS threads per rank, so every configuration uses the same
cores: on a 2-core machine, 1 rank x 2 threads against 2 ranks x 1 thread. Each rank trains
GPT-2 on its global-batch / R rows, all-reduces the optimizer's flat gradient buffer (one MPI
Allreduce, or one NCCL call on --backend cupy: one GPU per rank, run it on a machine with R
GPUs) and steps AdamW. The first step is a warm-up; times are medians of the others.

Bytes moved: each rank hands the all-reduce one float32 buffer of the trainable parameters;
a ring all-reduce sends and receives 2 (R - 1) / R of it per rank.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import (RESULTS_DIR, BenchError, ForeignLoad, config_dict, load_note, machine_info,
                     machine_info_markdown, main_guard, markdown_table, size_choices, write_atomic)
from tasks.common.args import add_backend_arg

REPO = Path(__file__).resolve().parents[1]


def worker(job: dict) -> None:
    """One rank: train `steps` steps, time each phase, rank 0 writes the JSON result."""
    import numpy as np

    import minigrad as mg
    import minigrad.distributed as dist
    import minigrad.functional as F
    from gpt2 import GPT2, GPT2Config
    from minigrad.optim import AdamW

    mg.backend.tune_allocator()  # as the tasks' training runs
    dist.init()
    rank, world = dist.rank(), dist.world_size()
    device = "cuda" if job["backend"] == "cupy" else "cpu"
    if device == "cuda":
        dist.select_gpu()
    mg.manual_seed(job["seed"])
    model = GPT2(GPT2Config(**job["cfg"])).to(device).train()
    opt = AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    dist.broadcast_parameters(opt.flat.data)
    G, T = job["global_batch"], job["T"]
    if G % world:
        raise BenchError(f"--global-batch {G} does not split over {world} ranks")
    B = G // world
    rng = np.random.default_rng(job["seed"] + 1)
    ids = rng.integers(0, job["cfg"]["vocab_size"], (job["steps"], G, T + 1))
    sync = mg.backend.cupy().cuda.Device().synchronize if device == "cuda" else (lambda: None)
    times, reduce_times, losses = [], [], []
    foreign = None
    for i in range(job["steps"]):
        if i == 1:
            foreign = ForeignLoad()
        rows = ids[i, rank * B:(rank + 1) * B]
        x, y = (mg.backend.to_device(a, device) for a in (rows[:, :-1], rows[:, 1:]))
        sync()
        dist.barrier()  # start together, so a step's time is the slowest rank's
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.flat.gather_grads()
        sync()
        t1 = time.perf_counter()
        if world > 1:  # as tasks/training/trainer.py: one process neither reduces nor rescales
            dist.all_reduce_(opt.flat.grad)
            opt.flat.grad *= opt.flat.grad.dtype.type(1.0 / world)
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        total = dist.all_reduce_sum([float(loss.item()) / world])[0]
        sync()
        t3 = time.perf_counter()
        times.append(t3 - t0)
        reduce_times.append(t2 - t1)
        losses.append(total)
        if rank == 0:
            print(f"  {world} rank(s): step {i + 1}/{job['steps']}: loss {total:.4f}, {t3 - t0:.3f} s "
                  f"(all-reduce {1e3 * (t2 - t1):.1f} ms)", file=sys.stderr)
    if rank == 0:
        result = {"world": world, "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "rows_per_rank": B,
                  "times": times, "reduce_times": reduce_times, "losses": losses,
                  "grad_bytes": int(opt.flat.grad.nbytes), "load": foreign.share() if foreign else None}
        write_atomic(job["result"], json.dumps(result))


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if not found:
        raise BenchError("no mpiexec: install one with `pip install mpi4py mpich`")
    return found


def run_config(ranks: int, job: dict, tmp: Path) -> dict:
    cores = len(os.sched_getaffinity(0))
    threads = max(cores // ranks, 1)
    job = dict(job, result=str(tmp / f"ranks{ranks}.json"))
    job_path = tmp / f"job{ranks}.json"
    job_path.write_text(json.dumps(job))
    py = [sys.executable, "-m", "bench.scaling", "--worker", str(job_path)]
    cmd = [_mpiexec(), "-n", str(ranks), *py] if ranks > 1 else py
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    print(f"{ranks} rank(s) x {threads} thread(s): {shlex.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0 or not Path(job["result"]).is_file():
        raise BenchError(f"the {ranks}-rank run failed (exit status {proc.returncode}); its messages are above")
    return json.loads(Path(job["result"]).read_text())


def render(args, job: dict, results: list[dict], info: dict) -> str:
    import numpy as np

    base = None
    rows = []
    for r in results:
        t = float(np.median(r["times"][1:]))
        red = float(np.median(r["reduce_times"][1:]))
        base = base or t
        W = r["world"]
        moved = 2 * (W - 1) / W * r["grad_bytes"]
        rows.append([f"{W} x {r['threads']}", r["rows_per_rank"], f"{t:.3f}", f"{1 / t:.3f}",
                     f"{base / t:.2f}x", f"{1e3 * red:.1f}", f"{100 * red / t:.1f}%",
                     f"{r['grad_bytes'] / 2**20:.1f}", f"{moved / 2**20:.1f}",
                     f"{moved / red / 1e9:.2f}" if W > 1 and red > 0 else "-"])
    cfg = job["cfg"]
    worst = max(abs(a - b) / abs(b) for r in results[1:] for a, b in zip(r["losses"], results[0]["losses"])) \
        if len(results) > 1 else 0.0
    lines = [f"# Data-parallel scaling ({args.backend})", "",
             f"`{shlex.join(['python', '-m', 'bench.scaling', *args.argv])}`", "",
             f"Model: {cfg['n_layer']} layers, {cfg['n_head']} heads, width {cfg['n_embd']}, vocabulary "
             f"{cfg['vocab_size']}; global batch {job['global_batch']} x {job['T']} tokens, split over the "
             f"ranks; {job['steps']} steps, the first a warm-up, medians of the others. Each configuration "
             "gets the same cores (BLAS threads per rank = cores / ranks).", "",
             markdown_table(["ranks x threads", "rows/rank", "s/step", "steps/s", "speed-up",
                             "all-reduce + 1/R scaling ms/step", "share of the step", "gradient MiB/rank",
                             "MiB sent per rank (ring)", "GB/s"], rows), "",
             f"Losses of every configuration agree with the first to {worst:.1e} relative "
             "(the same global batch, split differently).", ""]
    notes = [load_note(r["load"]) for r in results]
    lines += [n + "" for n in notes if n]
    lines += ["", "## Machine", "", machine_info_markdown(info), ""]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default: %(default)s)")
    p.add_argument("--size", default="small", choices=size_choices(), help="default: %(default)s")
    p.add_argument("--global-batch", type=int, default=4, help="sequences per step, all ranks (default: %(default)s)")
    p.add_argument("--context", type=int, default=256, help="default: %(default)s")
    p.add_argument("--steps", type=int, default=6, help="including one warm-up (default: %(default)s)")
    add_backend_arg(p)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", help="markdown file (default: bench/results/scaling.md, or scaling_cuda.md)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return 0
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        raise BenchError(f"--ranks wants numbers like 1,2,4; got {args.ranks!r}") from None
    if args.steps < 2 or any(r < 1 for r in ranks):
        raise BenchError("--steps must be at least 2 and every rank count at least 1")
    cfg = config_dict(args.size)
    if args.context > cfg["n_ctx"]:
        raise BenchError(f"--context {args.context} is longer than the model's {cfg['n_ctx']}")
    job = dict(cfg=cfg, global_batch=args.global_batch, T=args.context, steps=args.steps,
               backend=args.backend, seed=args.seed)
    info = machine_info(args.backend, with_torch=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        results = [run_config(r, job, tmp) for r in ranks]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out) if args.out else RESULTS_DIR / ("scaling_cuda.md" if args.backend == "cupy" else "scaling.md")
    text = render(args, job, results, info)
    write_atomic(out, text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
