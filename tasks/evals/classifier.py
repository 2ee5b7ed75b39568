"""Scoring a classifier: loss and accuracy over batches of labelled tokens in one pass (with a
progress bar, and a stop honoured between batches during training), the table of scores before
and after training, and before.json, the scores a classify run keeps from its start."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minigrad as mg
import minigrad.functional as F
from files.schema import Int, Num, Obj, check
from minigrad import backend

from ..common.jsonfiles import read_json
from ..common.progress import progress_bar
from ..common.signals import between_batches, pause_point
from ..data.labelled import SPLIT_NAMES


@dataclass
class Scores:
    loss: float        # mean of the batch losses, as the book's calc_loss_loader
    accuracy: float    # over examples
    examples: int
    predictions: np.ndarray
    targets: np.ndarray


def score(model, loader, max_batches: int | None = None, desc: str | None = None) -> Scores:
    """Loss and accuracy over the first `max_batches` batches (all if None), in one pass; with
    `desc`, a progress bar of that name."""
    n_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    was_training = model.training
    model.eval()
    losses, preds, targets = [], [], []
    with mg.no_grad(), progress_bar(total=n_batches, desc=desc, unit="batch", disable=desc is None) as bar:
        for i, (x, y) in enumerate(loader.peek()):
            if i >= n_batches:
                break
            bar.update(1)
            between_batches()  # during training, a stop waits for one batch, not the whole evaluation
            if desc is not None:
                pause_point("scoring")
            logits = model(x)
            losses.append(float(F.cross_entropy(logits, backend.array_module(logits.data).asarray(y)).item()))
            preds.append(backend.to_device(logits.data, "cpu").argmax(axis=-1))
            targets.append(np.asarray(y))
    model.train(was_training)
    p = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    t = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    return Scores(float(np.mean(losses)) if losses else math.nan,
                  float((p == t).mean()) if len(t) else math.nan, len(t), p, t)


def results_table(before: dict | None, after: dict) -> str:
    head = f"{'split':<11}" + (f"{'loss before':>12}{'acc before':>12}" if before else "") + \
        f"{'loss after':>12}{'acc after':>12}"
    lines = [head]
    for name in SPLIT_NAMES:
        row = f"{name:<11}"
        if before:
            row += f"{before[name]['loss']:>12.3f}{before[name]['accuracy'] * 100:>11.2f}%"
        row += f"{after[name]['loss']:>12.3f}{after[name]['accuracy'] * 100:>11.2f}%"
        lines.append(row)
    return "\n".join(lines)


def scores_dict(s: Scores) -> dict:
    return {"loss": s.loss, "accuracy": s.accuracy, "examples": s.examples}


BEFORE = Obj({name: Obj({"loss": Num(finite=False), "accuracy": Num(finite=False), "examples": Int(min=0)})
              for name in SPLIT_NAMES})


def saved_before(path: Path) -> dict | None:
    """The scores a resumed run had at its start, checked (None if before.json was lost: the
    model holds the checkpoint's weights by now, so they cannot be taken again)."""
    if not path.exists():
        print(f"note: {path} is missing: the report leaves the scores before training out")
        return None
    before = read_json(path)
    check(before, BEFORE, str(path))
    return before


