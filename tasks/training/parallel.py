"""Data parallel for the training loop: which rows of a global batch are this rank's, and the
checks that keep ranks (and a resumed run) training on the same thing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import minigrad.distributed as dist

from ..common.errors import UsageError
from .config import TrainConfig


def rank_rows(n: int) -> slice:
    """This rank's rows of a global batch of n rows: rank r of W takes [r n/W, (r+1) n/W), so
    W ranks x B rows hold exactly the sequences of one rank x W B rows."""
    r, w = dist.rank(), dist.world_size()
    return slice(r * n // w, (r + 1) * n // w)


def local_batch(batch):
    """(rows of this rank, rows in all) of a batch: a tuple or list of arrays with the same
    first dimension (one process: the batch itself)."""
    if dist.world_size() == 1:
        return batch, None
    n = len(batch[0])
    sl = rank_rows(n)
    return type(batch)(a[sl] for a in batch), n


def code_fingerprint() -> str:
    """sha256 of the project's Python sources (minigrad, gpt2, tasks): ranks running different
    code would train on a silent mixture."""
    root = Path(__file__).resolve().parents[2]  # tasks/training/parallel.py -> the project
    h = hashlib.sha256()
    for pkg in ("minigrad", "gpt2", "tasks"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def check_ranks_agree(config: TrainConfig, loader, total_steps: int, model) -> None:
    """Ranks must run the same code on the same data with the same settings."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in vars(config).items() if k != "progress"},
                        sort_keys=True, default=str).encode())
    h.update(repr((len(loader), total_steps, loader.state_dict(),
                   [(n, p.shape) for n, p in model.named_parameters()])).encode())
    first = next(iter(loader.peek())) if hasattr(loader, "peek") else None
    for a in first or ():
        h.update(getattr(a, "tobytes", lambda: repr(a).encode())())
    dist.check_same("the code (sha256 of minigrad, gpt2, tasks)", code_fingerprint())
    dist.check_same("the training settings and data (loader, first batch, model shapes)", h.hexdigest()[:16])


def check_world_size(run_json: dict, world_size: int, batch_size: int, grad_accum: int) -> None:
    """On --resume: the global batch (batch x accumulation x ranks) must be the one the run
    started with, or the data position and the loss curve would mean something else."""
    before = int(run_json.get("world_size", 1))
    if before == world_size:
        return
    args = run_json.get("args", {})
    old = int(args.get("batch_size", 0)) * int(args.get("grad_accum", 1)) * before
    new = batch_size * grad_accum * world_size
    if old != new:
        raise UsageError(
            f"this run was trained on {before} rank(s) with a global batch of {old} sequences; resuming "
            f"on {world_size} rank(s) with --batch-size {batch_size} --grad-accum {grad_accum} gives {new}. "
            f"Resume with `mpiexec -n {before}`, or choose --batch-size/--grad-accum so that the global "
            f"batch stays {old}")
    if dist.is_main():
        print(f"note: resuming a run of {before} rank(s) on {world_size}; the global batch stays {old} "
              f"sequences, so the data order is unchanged (losses may differ by float rounding)")
