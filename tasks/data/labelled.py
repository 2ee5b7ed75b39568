"""Labelled texts for tasks.classify: read a `label<TAB>text` file, balance the classes, split it
70/10/20 as "Build a Large Language Model (From Scratch)" chapter 6 does, turn the texts into
padded token ids, and score predictions (confusion matrix, precision/recall/F1).

On the SMS Spam Collection this gives the book's numbers: 747 ham sampled to match the 747 spam,
1,494 rows split 1,045 / 149 / 300, padded to the longest training text (120 tokens).
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from gpt2.classifier import PAD_ID
from files.atomic import atomic_write

from ..common.errors import TaskError, UsageError
from .manifest import ensure_dataset

SPLIT_NAMES = ("train", "validation", "test")


class DataError(TaskError):
    """The labelled file cannot be used (missing, empty, no valid rows, ...)."""


Row = tuple[str, str]  # (label, text)


@dataclass
class LabelledFile:
    path: Path
    rows: list[Row]
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number, why skipped)

    def problem_summary(self, limit: int = 5) -> str:
        """One line: how many rows were malformed, and the first few with their line numbers."""
        shown = "; ".join(f"line {n}: {why}" for n, why in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return f"{self.path}: {len(self.problems)} malformed row(s) ({shown}{more})"


def read_labelled_file(path: str | os.PathLike, labels: Sequence[str] | None = None,
                       strict: bool = False) -> LabelledFile:
    """Rows of a `label<TAB>text` file (UTF-8, one row a line; blank lines are ignored).

    Malformed rows (no tab, empty label or text, a label not in `labels` when given) are
    collected in `.problems` and left out; with `strict` the first of them is an error instead.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise DataError(f"{path} is empty: expected lines of label<TAB>text")
    allowed = set(labels) if labels else None
    out = LabelledFile(path, [])
    # split on "\n" only: str.splitlines would also break at characters such as \x0c or
    # U+2028, which can occur inside a message
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if "\t" not in line:
            out.problems.append((number, "no tab between label and text"))
            continue
        label, message = line.split("\t", 1)  # a later tab belongs to the text
        label = label.strip()
        if not label:
            out.problems.append((number, "empty label"))
        elif allowed is not None and label not in allowed:
            out.problems.append((number, f"unknown label {label!r}"))
        elif not message.strip():
            out.problems.append((number, "empty text"))
        else:
            out.rows.append((label, message))
    if out.problems and strict:
        raise DataError(out.problem_summary() + "; fix them or leave out --strict to skip them")
    if not out.rows:
        why = f": {out.problem_summary()}" if out.problems else ""
        raise DataError(f"{path} has no valid label<TAB>text rows{why}")
    return out


def class_names(rows: Sequence[Row], labels: Sequence[str] | None = None,
                where: str = "the data") -> list[str]:
    """The classes in id order: `labels` as given, else the labels found, sorted (ham=0, spam=1)."""
    found = sorted({label for label, _ in rows})
    if labels:
        absent = [c for c in labels if c not in found]
        if absent:
            raise DataError(f"label(s) {', '.join(map(repr, absent))} from --labels do not occur in {where}")
        names = list(labels)
    else:
        names = found
    if len(names) < 2:
        raise DataError(f"{where} has only one label ({names[0]!r}); a classifier needs at least two")
    return names


def balance(rows: Sequence[Row], classes: Sequence[str], seed: int) -> list[Row]:
    """Every class cut down to the size of the smallest one, by random sampling.

    Classes are concatenated in `classes` order. NumPy's legacy RandomState(seed).permutation is
    what pandas' DataFrame.sample(random_state=seed) draws from, so this picks the same rows as
    the book's create_balanced_dataset (ham sampled, then all spam).
    """
    groups = {c: [r for r in rows if r[0] == c] for c in classes}
    n = min(len(g) for g in groups.values())
    out: list[Row] = []
    for c in classes:
        group = groups[c]
        if len(group) > n:
            pick = np.random.RandomState(seed).permutation(len(group))[:n]
            group = [group[i] for i in pick]
        out.extend(group)
    return out


def split_rows(rows: Sequence[Row], seed: int, train_frac: float = 0.7,
               val_frac: float = 0.1) -> dict[str, list[Row]]:
    """Shuffle, then cut as the book does: train_end = int(n * 0.7), val_end = train_end + int(n * 0.1)."""
    order = np.random.RandomState(seed).permutation(len(rows))
    shuffled = [rows[i] for i in order]
    train_end = int(len(shuffled) * train_frac)
    val_end = train_end + int(len(shuffled) * val_frac)
    parts = dict(zip(SPLIT_NAMES, (shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:])))
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise DataError(f"{len(rows)} rows are too few for a 70/10/20 split: the {' and '.join(empty)} "
                        f"split would be empty")
    return parts


def write_split_csvs(folder: str | os.PathLike, splits: dict[str, list[Row]]) -> list[Path]:
    """train.csv, validation.csv, test.csv with a Label,Text header (the book's files), atomically."""
    written = []
    for name, rows in splits.items():
        def write(tmp: str, rows=rows) -> None:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["Label", "Text"])
                w.writerows(rows)
        path = Path(folder) / f"{name}.csv"
        atomic_write(path, write)
        written.append(path)
    return written


def encode_texts(texts: Sequence[str], tokenizer) -> list[list[int]]:
    """GPT-2 token ids; "<|endoftext|>" inside a text is read as plain text, so PAD_ID only ever
    marks padding."""
    encode = getattr(tokenizer, "encode_ordinary", None) or tokenizer.encode
    return [list(encode(t)) for t in texts]


def pad_ids(encoded: Sequence[Sequence[int]], length: int, pad_id: int = PAD_ID) -> np.ndarray:
    """(N, length) int64: each sequence cut to `length` tokens, then right-padded with pad_id."""
    out = np.full((len(encoded), length), pad_id, dtype=np.int64)
    for i, ids in enumerate(encoded):
        ids = ids[:length]
        out[i, :len(ids)] = ids
    return out


class LabelledTokens:
    """(token ids (T,), class id) pairs of equal length T, for loaders.BatchLoader."""

    def __init__(self, rows: Sequence[Row], classes: Sequence[str], tokenizer, length: int):
        index = {c: i for i, c in enumerate(classes)}
        self.ids = pad_ids(encode_texts([t for _, t in rows], tokenizer), length)
        self.labels = np.array([index[label] for label, _ in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[i], self.labels[i]


def longest(rows: Sequence[Row], tokenizer) -> int:
    """Tokens in the longest text of `rows`."""
    return max(len(ids) for ids in encode_texts([t for _, t in rows], tokenizer))


def parse_labels(text: str | None) -> list[str] | None:
    """--labels ham,spam -> ["ham", "spam"] (None when not given), each class named once."""
    labels = [s.strip() for s in text.split(",") if s.strip()] if text else None
    if labels and len(set(labels)) < len(labels):
        twice = sorted({c for c in labels if labels.count(c) > 1})
        raise UsageError(f"--labels names {', '.join(map(repr, twice))} more than once")
    return labels


def labelled_source(path: str | None, progress: bool = True) -> Path:
    """The labelled file --data names (default: the SMS Spam Collection, from the cache)."""
    return Path(path) if path else ensure_dataset("sms-spam", progress=progress)


def load_splits(path: str | Path | None, labels: Sequence[str] | None, *, strict: bool, balanced: bool,
                split_seed: int, progress: bool = True) -> tuple[dict[str, list[Row]], list[str], int, int]:
    """The split rows of a labelled file (default: the SMS Spam Collection from the cache), the
    classes, and how many rows were valid / skipped."""
    path = labelled_source(path, progress)
    data = read_labelled_file(path, labels, strict=strict)
    if data.problems:
        print(f"warning: skipped {data.problem_summary()}", file=sys.stderr)
    classes = class_names(data.rows, labels, where=str(path))
    rows = balance(data.rows, classes, split_seed) if balanced else data.rows
    return split_rows(rows, split_seed), classes, len(data.rows), len(data.problems)


# ----------------------------------------------------------------------------- metrics

def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """m[true, predicted] counts."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (targets, predictions), 1)
    return m


def per_class_scores(matrix: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of each class taken as the positive one (0 where undefined)."""
    out = {}
    for k, name in enumerate(labels):
        tp = float(matrix[k, k])
        predicted, actual = float(matrix[:, k].sum()), float(matrix[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    return out
