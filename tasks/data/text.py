"""Raw text for tasks.pretrain: split into training and validation text by characters (as
"Build a Large Language Model (From Scratch)" does), tokenized once into token shards in the
cache, and served by the same ShardLoader that serves prepared corpora."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from files import hub
from files.atomic import atomic_write_text

from .shards import ShardLoader, write_shard


class Tokenizer(Protocol):
    def encode(self, text: str) -> Sequence[int]: ...


def train_val_split_text(text: str, train_frac: float = 0.9) -> tuple[str, str]:
    """Split raw text by characters: the first `train_frac` for training, the rest for validation."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be strictly between 0 and 1, got {train_frac}")
    split = int(train_frac * len(text))
    return text[:split], text[split:]


def make_pretrain_loaders(text: str, tokenizer: Tokenizer, context: int, stride: int,
                          batch_size: int, seed: int = 0, train_frac: float = 0.9):
    """Train and validation loaders over raw text in memory, split by characters as in the book.

    Train: shuffled, drop_last=True. Validation: in order, drop_last=False. The same
    ShardLoader that serves prepared shards (`text_shards` + `find_shards`).
    """
    train_text, val_text = train_val_split_text(text, train_frac)
    train = np.asarray(tokenizer.encode(train_text), dtype=np.int64)
    val = np.asarray(tokenizer.encode(val_text), dtype=np.int64)
    return (ShardLoader([train], context, batch_size, stride, shuffle=True, drop_last=True,
                        seed=seed, name="training split"),
            ShardLoader([val], context, batch_size, stride, shuffle=False, drop_last=False,
                        seed=seed, name="validation split"))


def text_shards(text: str, tokenizer: Tokenizer, train_frac: float = 0.9) -> Path:
    """A folder of shards holding `text` split by characters (the last 1 - train_frac is the
    validation shard), prepared once in the cache under the text's sha256 and the split.

    The tokens are `tokenizer.encode` of each part, as tasks.pretrain has always trained on
    them (no <|endoftext|> added: the text is one document), so the batches stay the same.
    """
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    folder = hub.cache_dir() / "shards" / f"text-{key[:16]}-{train_frac:g}"
    if (folder / "index.json").is_file():
        return folder
    train_text, val_text = train_val_split_text(text, train_frac)
    parts = {"text_val_000000.bin": val_text, "text_train_000001.bin": train_text}
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")  # renamed whole when complete
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        shards = []
        for fname, part in parts.items():
            ids = np.asarray(tokenizer.encode(part), dtype=np.int64)
            write_shard(tmp / fname, ids)
            shards.append({"file": fname, "tokens": int(ids.size), "characters": len(part),
                           "sha256": hub.sha256_of(tmp / fname)})
        atomic_write_text(tmp / "index.json", json.dumps(
            {"text_sha256": key, "train_frac": train_frac, "tokenizer": "gpt2 (encode)",
             "shards": shards}, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another run made it meanwhile
            if not (folder / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
