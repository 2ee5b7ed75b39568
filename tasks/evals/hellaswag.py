"""HellaSwag, completion style: which of 4 endings does the model find most likely after the context?

Scored as llm.c's dev/data/hellaswag.py does (the source of the published GPT-2 figures we quote):
the context is the item's `ctx` as it stands, each ending is tokenized with a leading space
(" " + ending: GPT-2's tokens carry the space before a word), and for each ending we add up the
log-probabilities of its tokens given the context and the ending's earlier tokens.

    acc       the ending with the highest summed log-probability is the right one
    acc_norm  the same with the sum divided by the ending's number of tokens (llm.c's choice;
              lm-evaluation-harness divides by the ending's length in characters instead, and
              builds its context differently: "activity_label: ctx_a Ctx_b", with [title]-style
              markup cleaned up, so its figures are not the ones quoted here)

The 4 endings of an item share one forward pass as a batch of 4 rows, right-padded (causal
attention: padding after a row's end changes none of its logits). Results are written one JSON
line per item as they come, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.jsonfiles import JsonLines, JsonLinesError, read_jsonl
from ..common.progress import progress_bar
from ..data.manifest import ensure_dataset

NUM_ENDINGS = 4


class HellaSwagDataError(ValueError):
    """The HellaSwag file, an item or an earlier results file cannot be used."""


@dataclass(frozen=True)
class Item:
    index: int  # position in the file (the key results are resumed by)
    ctx: str
    endings: tuple[str, ...]
    label: int  # index of the right ending


def load_hellaswag(path: str | os.PathLike | None = None, limit: int | None = None) -> list[Item]:
    """The first `limit` (default: all) items of a HellaSwag JSON-lines file (default: the cached
    validation set, downloaded when online)."""
    if limit is not None and limit < 1:
        raise HellaSwagDataError(f"limit must be >= 1, got {limit}")
    if path is None:
        path = ensure_dataset("hellaswag")  # clear MissingFileError / ChecksumError
    path = Path(path)
    if not path.is_file():
        raise HellaSwagDataError(f"HellaSwag file not found: {path}")
    items: list[Item] = []
    try:
        for lineno, row in JsonLines(path):
            if limit is not None and len(items) >= limit:
                break
            items.append(_item(row, len(items), f"{path}, line {lineno}"))
    except JsonLinesError as err:
        raise HellaSwagDataError(str(err)) from None
    if not items:
        raise HellaSwagDataError(f"{path} holds no HellaSwag item")
    return items


def _item(row, index: int, where: str) -> Item:
    try:
        ctx, endings, label = row["ctx"], row["endings"], row["label"]
    except (KeyError, TypeError) as err:
        raise HellaSwagDataError(f"{where}: not a HellaSwag item with ctx, endings and label ({err})") from None
    if (not isinstance(ctx, str) or not isinstance(endings, list)
            or len(endings) != NUM_ENDINGS or not all(isinstance(e, str) for e in endings)
            or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS):
        raise HellaSwagDataError(f"{where}: expected a string ctx, 4 string endings and a label in 0..3")
    return Item(index, ctx, tuple(endings), label)


def render(item: Item, tokenizer, n_ctx: int) -> tuple[np.ndarray, int, list[int]]:
    """The 4 rows of context + ending tokens, right-padded with 0: (tokens (4, T) int64, the
    context's length in tokens, each ending's length). When a row would not fit in `n_ctx`
    positions, the context loses its first tokens (the same ones in every row)."""
    ctx = list(tokenizer.encode(item.ctx))
    ends = [list(tokenizer.encode(" " + e)) for e in item.endings]
    if not ctx or min(len(e) for e in ends) == 0:
        raise HellaSwagDataError(f"item {item.index}: an empty context or ending has no tokens "
                                 f"to score")
    drop = max(0, len(ctx) + max(len(e) for e in ends) - n_ctx)
    if drop >= len(ctx):  # the first ending token needs at least one context token before it
        raise HellaSwagDataError(f"item {item.index}: an ending of {max(len(e) for e in ends)} "
                                 f"tokens leaves no room for the context in {n_ctx} positions")
    ctx = ctx[drop:]
    T = len(ctx) + max(len(e) for e in ends)
    tokens = np.zeros((NUM_ENDINGS, T), dtype=np.int64)                   # (4, T)
    for r, e in enumerate(ends):
        tokens[r, :len(ctx) + len(e)] = ctx + e
    return tokens, len(ctx), [len(e) for e in ends]


def ending_logprobs(logits: np.ndarray, tokens: np.ndarray, ctx_len: int,
                    end_lens: Sequence[int]) -> np.ndarray:
    """Summed log-probability of each row's ending tokens, shape (4,).

    logits (4, T, V): position t predicts token t + 1, so the ending's tokens, at positions
    ctx_len .. ctx_len + n - 1, are predicted by positions ctx_len - 1 .. ctx_len + n - 2.
    """
    sums = np.zeros(len(end_lens), dtype=np.float64)
    for r, n in enumerate(end_lens):
        rows = logits[r, ctx_len - 1:ctx_len - 1 + n].astype(np.float64)  # (n, V)
        m = rows.max(axis=1, keepdims=True)
        log_z = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))           # (n,)
        targets = tokens[r, ctx_len:ctx_len + n]
        sums[r] = float((rows[np.arange(n), targets] - log_z).sum())
    return sums


def score_item(model, item: Item, tokenizer) -> dict:
    """One result record: per ending the summed log-probability and token count, the two
    predictions and whether they are right."""
    import minigrad as mg

    tokens, ctx_len, end_lens = render(item, tokenizer, model.config.n_ctx)
    with mg.no_grad():
        logits = model(tokens).numpy()                                    # (4, T, V)
    sums = ending_logprobs(logits, tokens, ctx_len, end_lens)
    means = sums / np.asarray(end_lens)
    pred, pred_norm = int(np.argmax(sums)), int(np.argmax(means))
    return {"index": item.index, "label": item.label,
            "sum_logprob": [float(x) for x in sums], "num_tokens": list(end_lens),
            "pred": pred, "pred_norm": pred_norm,
            "correct": pred == item.label, "correct_norm": pred_norm == item.label}


@dataclass
class HellaSwagResult:
    records: list[dict]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def acc(self) -> float:
        return sum(r["correct"] for r in self.records) / self.n if self.n else 0.0

    @property
    def acc_norm(self) -> float:
        return sum(r["correct_norm"] for r in self.records) / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "acc": self.acc, "acc_norm": self.acc_norm}


def read_done(path: Path) -> dict[int, dict]:
    """Records of an earlier run, by item index. A torn last line (a crash mid-write) is cut off
    the file so that appending goes on from a clean line end."""
    try:
        return {int(r["index"]): r for r in read_jsonl(path, cut_torn_tail=True)}
    except (JsonLinesError, KeyError, TypeError, ValueError) as err:  # the file is not ours
        raise HellaSwagDataError(f"{path} is not a HellaSwag results file ({err}); choose another --out") from None


def evaluate_hellaswag(model, items: Sequence[Item], tokenizer, out: str | os.PathLike | None = None,
                       progress: bool = True) -> HellaSwagResult:
    """Score `items`; with `out` (a .jsonl file) each record is appended as soon as it is known
    and the items already in it are skipped, so a rerun after a crash or Ctrl-C resumes."""
    out = Path(out) if out is not None else None
    done = read_done(out) if out is not None else {}
    for r in done.values():
        i = r["index"]
        if i < len(items) and r["label"] != items[i].label:
            raise HellaSwagDataError(f"{out} holds results for another HellaSwag file (item {i} "
                                     f"has label {r['label']} there, {items[i].label} here)")
    todo = [it for it in items if it.index not in done]
    was_training = getattr(model, "training", False)
    model.eval()  # no dropout while scoring
    bar = progress_bar(total=len(items), initial=len(items) - len(todo), desc="HellaSwag", unit="item",
               disable=not progress, dynamic_ncols=True)
    f = None
    try:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = open(out, "a", encoding="utf-8")
        correct = sum(done[it.index]["correct_norm"] for it in items if it.index in done)
        for n, item in enumerate(todo, len(items) - len(todo) + 1):
            record = score_item(model, item, tokenizer)
            done[item.index] = record
            if f is not None:
                f.write(json.dumps(record) + "\n")
                f.flush()
            correct += record["correct_norm"]
            bar.update(1)
            bar.set_postfix(acc_norm=f"{correct / n:.4f}")
    finally:
        bar.close()
        if f is not None:
            f.close()
        model.train(was_training)
    return HellaSwagResult([done[it.index] for it in items])


def hellaswag_metrics(model, items: Sequence[Item], tokenizer) -> dict:
    """acc and acc_norm as metrics for a training run's log (no file, no progress bar)."""
    result = evaluate_hellaswag(model, items, tokenizer, progress=False)
    return {"hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm,
            "hellaswag_n": result.n}
