"""Alpaca-style instruction data: the prompt format (one place for the text an instruction-tuned
GPT-2 is trained on, answers to, and is judged by: tasks.instruct, tasks.evals.judge,
tasks.serving), the records of a JSON file and their split, and padded batches of them.

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when the record's input is non-empty
    {input}

    ### Response:
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gpt2.tokenizer import EOT_ID

from ..common.errors import TaskError
from .loaders import BatchLoader
from .manifest import DATASETS, ensure_dataset

HEADER = ("Below is an instruction that describes a task. "
          "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"


def format_alpaca_prompt(record: dict) -> str:
    """The Alpaca-style prompt of a record: instruction and, when non-empty, its input."""
    text = f"{HEADER}\n\n### Instruction:\n{record['instruction']}"
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text


def format_prompt(record: dict) -> str:
    """The text the model continues: the Alpaca prompt up to and including "### Response:\\n"."""
    return format_alpaca_prompt(record) + RESPONSE_HEADER


DEFAULT_DATA = "instruction-data"
IGNORE_INDEX = -100   # targets the loss skips (cross_entropy's default)


class InstructionDataError(TaskError):
    """An instruction file that cannot be used: not JSON, not a list, or a malformed record."""


# ----------------------------------------------------------------------------- records and prompts


def format_example(record: dict) -> str:
    """A whole training example: the prompt followed by the reference output."""
    return format_prompt(record) + record["output"]


def resolve_data(data: str | None) -> Path:
    """The file behind --data: a manifest name (downloaded into the cache if missing) or a path."""
    data = data or DEFAULT_DATA
    if data in DATASETS:
        return ensure_dataset(data)
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (or give a dataset name, e.g. {DEFAULT_DATA})")
    return path


def load_records(path: str | os.PathLike, require_output: bool = True) -> list[dict]:
    """The records of an Alpaca-style JSON file, checked one by one."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InstructionDataError(f"{path} is not a JSON file: {e}") from None
    if not isinstance(records, list) or not records:
        raise InstructionDataError(f"{path} must hold a non-empty JSON list of records "
                                   '{"instruction": ..., "input": ..., "output": ...}')
    required = ("instruction", "output") if require_output else ("instruction",)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InstructionDataError(f"record {i} of {path} is not a JSON object")
        for key in required:
            if key not in rec:
                raise InstructionDataError(f"record {i} of {path} has no {key!r} field")
        for key in ("instruction", "input", "output"):
            optional = key not in required  # a missing or null input means "no input"
            if key in rec and not isinstance(rec[key], str) and not (optional and rec[key] is None):
                raise InstructionDataError(f"record {i} of {path}: {key!r} must be a string")
    return records


def split_records(records: Sequence[dict], seed: int | None = None
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) the book's way: train = first int(0.85 n), test = next int(0.1 n),
    val = the rest. With a seed, the records are shuffled first (NumPy's default_rng(seed))."""
    records = list(records)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(records))
        records = [records[i] for i in order]
    n_train, n_test = int(len(records) * 0.85), int(len(records) * 0.1)
    train = records[:n_train]
    test = records[n_train:n_train + n_test]
    val = records[n_train + n_test:]
    return train, val, test


# ----------------------------------------------------------------------------- batches


def encode_record(tokenizer, record: dict) -> tuple[list[int], int]:
    """(token ids of the whole example, how many of them are the prompt).

    Prompt and output are encoded separately so that the prompt's ids are exactly those the
    model is given when it answers. Special-token strings in the text stay plain text.
    """
    prompt = tokenizer.encode_ordinary(format_prompt(record))
    return prompt + tokenizer.encode_ordinary(record["output"]), len(prompt)


def collate(items: Sequence[tuple[Sequence[int], int]], pad_id: int = EOT_ID,
            ignore_index: int = IGNORE_INDEX, max_length: int | None = None,
            mask_instructions: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (B, T) of one batch of (ids, prompt_length) items.

    Each sequence gets one end-of-text token and is padded with pad_id to the longest in the
    batch; inputs = seq[:-1], targets = seq[1:]. The end-of-text target stays (the model must
    learn to stop); the padding after it gets ignore_index, and so does every prompt token
    with mask_instructions. Both are then cut to max_length columns.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    width = max(len(ids) for ids, _ in items) + 1
    x = np.full((len(items), width - 1), pad_id, dtype=np.int64)
    y = np.full((len(items), width - 1), ignore_index, dtype=np.int64)
    for row, (ids, prompt_len) in enumerate(items):
        n = len(ids)
        x[row, :n] = ids
        y[row, :n - 1] = ids[1:]
        y[row, n - 1] = pad_id  # the one end-of-text target that is kept
        if mask_instructions:
            # target j is token j + 1: the prompt's tokens 1..P-1 are targets 0..P-2
            y[row, :max(prompt_len - 1, 0)] = ignore_index
    if max_length is not None:
        x, y = x[:, :max_length], y[:, :max_length]
    return x, y


class InstructionLoader(BatchLoader):
    """BatchLoader over (ids, prompt_length) items, each batch padded by `collate`.

    The order, state_dict() and exact resume are BatchLoader's; only building a batch differs.
    """

    def __init__(self, items: Sequence[tuple[list[int], int]], batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, max_length: int | None = None,
                 mask_instructions: bool = False):
        self.max_length, self.mask_instructions = max_length, mask_instructions
        super().__init__(list(items), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)

    def _batch(self, order: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        idx = order[position * self.batch_size:(position + 1) * self.batch_size]
        return collate([self.dataset[int(i)] for i in idx], max_length=self.max_length,
                       mask_instructions=self.mask_instructions)
