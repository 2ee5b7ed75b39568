"""What the training loop evaluates and logs: the mean loss over a few batches (summed over
ranks), a language model's loss, extra evaluations every N steps (Periodic), and the records of
metrics.jsonl with the loss plot drawn from them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import minigrad as mg
import minigrad.distributed as dist
import minigrad.functional as F

from ..common.jsonfiles import read_jsonl
from ..common.plots import plot_curves
from ..common.signals import between_batches
from .parallel import local_batch


@dataclass
class Periodic:
    """An extra evaluation every `every` updates and after the last (e.g. HellaSwag), logged as
    {"type": name, "step", "epoch", "tokens_seen", **fn(model)}. It writes to the run folder, so
    with data parallel it belongs to rank 0 alone."""
    name: str
    every: int
    fn: Callable[[Any], dict[str, Any]]


def mean_loss(model, loader, loss_fn: Callable, max_batches: int) -> float:
    """Average of loss_fn over the first `max_batches` batches of `loader`, in eval mode.

    Under several ranks each evaluates its rows of every (global) batch and the row-weighted
    average is summed over ranks, so the number covers the same tokens whatever the world size.
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with mg.no_grad():
        for i, batch in enumerate(loader.peek() if hasattr(loader, "peek") else loader):
            if i >= max_batches:
                break
            between_batches()
            part, rows = local_batch(batch)
            if rows is None:
                total += float(loss_fn(model, part).item())
            elif len(part[0]):
                total += float(loss_fn(model, part).item()) * len(part[0]) / rows
            n += 1
    model.train(was_training)  # (an EvaluationStopped leaves it in eval mode: the loop stops anyway)
    total = dist.all_reduce_sum([total])[0]
    return total / n if n else float("nan")


def lm_loss(model, batch):
    """Next-token cross-entropy of a GPT-2 on a batch (x, y) of token ids (B, T); targets of -100
    (instruct's padding and masked prompts) add nothing."""
    x, y = batch  # host arrays: the model and cross_entropy check them there, then copy them in
    return F.cross_entropy(model(x), y)


def loss_evaluation(loaders: dict[str, Any], loss_fn: Callable, batches: int) -> Callable:
    """The `evaluate` of a language-model task: {NAME_loss: mean loss of `batches` batches} for
    each loader, e.g. {"train": ..., "val": ...}."""
    return lambda model: {f"{name}_loss": mean_loss(model, loader, loss_fn, batches)
                          for name, loader in loaders.items()}


def plot_losses(run_dir: str | Path) -> Path | None:
    """loss.png of a run: train and validation loss of every evaluation in metrics.jsonl, over
    the training loss of every logged step."""
    records = read_metrics(run_dir)
    evals = [r for r in records if r["type"] == "eval"]
    return plot_curves(evals, ["train_loss", "val_loss"], Path(run_dir) / "loss.png", "loss",
                       steps=with_epochs([r for r in records if r["type"] == "step"], evals))


def with_epochs(steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step records (which log no epoch) with their epoch, from the steps per epoch an
    evaluation record shows; none when no evaluation past step 0 says it."""
    rate = next((e["step"] / e["epoch"] for e in evals if e.get("epoch")), None)
    return [] if rate is None else [{**s, "epoch": s["step"] / rate} for s in steps if "step" in s]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a torn last line (the process died mid-write) is skipped."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
