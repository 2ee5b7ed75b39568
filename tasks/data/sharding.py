"""A corpus into token shards for tasks.prepare, resumable after a crash.

The token stream is cut into shards of `shard_tokens` tokens (a document may run on into the
next shard): NAME_val_000000.bin first (the validation shard), then NAME_train_000001.bin, ...,
and index.json. After each shard the state a rerun needs (STATE_FILE: the shards written and
where the next one starts in the stream of pieces) is saved, so a rerun keeps the complete
shards and continues after them; index.json, written last, says the preparation is complete.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from files import hub
from files.atomic import atomic_write_text

from ..common.errors import UsageError
from ..common.signals import pause_point
from .documents import CorpusError, Source, read_pieces
from .encoding import encoded, work_items
from .shards import FORMAT, SHARD_RE, header, read_header, shard_name, write_shard

STATE_FILE = ".prepare_state.json"  # what a rerun needs to continue; gone once index.json is written


def _config(name: str, sources: list[Source], shard_tokens: int, field: str) -> dict:
    # what identifies a preparation (a rerun with another --workers is the same one)
    return {"name": name, "shard_tokens": shard_tokens, "text_field": field,
            "tokenizer": "gpt2 (tiktoken encode_ordinary), <|endoftext|> before each document",
            "inputs": [{"path": str(s.path.resolve()), "bytes": s.size,
                        "mtime_ns": s.path.stat().st_mtime_ns} for s in sources]}


def _check_out(out: Path, name: str, config: dict) -> dict | None:
    """The saved state of an earlier run of this same preparation, or None; refuse a folder
    holding anything else (a usage error, as a run folder that already holds a run)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    saved = None
    for fname in (STATE_FILE, "index.json"):
        if (out / fname).is_file():
            saved = json.loads((out / fname).read_text())
            if saved.get("config") != config:
                raise UsageError(f"--out {out} holds shards of another preparation "
                                   f"(see its {fname}); choose another --out or delete them")
            saved["complete"] = fname == "index.json"
            break
    shards = [p for p in out.iterdir() if SHARD_RE.match(p.name)]
    if shards and saved is None:
        raise UsageError(f"--out {out} already holds shards ({shards[0].name}, ...) that are not "
                           f"from this preparation; choose another --out")
    others = [p.name for p in shards if SHARD_RE.match(p.name)["name"] != name]
    if others:
        raise UsageError(f"--out {out} holds shards of another corpus ({others[0]}); choose another --out")
    return saved


class _ShardWriter:
    """The one shard being filled (a buffer of shard_tokens tokens), written out when full; after
    each shard, the state a rerun continues from."""

    def __init__(self, out: Path, name: str, shard_tokens: int, config: dict, done: list[dict]):
        self.out, self.name, self.config, self.done = out, name, config, done
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill, self.index = 0, len(done)
        self.tokens = sum(s["tokens"] for s in done)

    def add(self, first: int, toks: np.ndarray, counts: np.ndarray, pos: int) -> None:
        """Tokens of a work item (its first piece, tokens, tokens per piece) from `pos` on."""
        ends = np.cumsum(counts)
        while pos < len(toks):
            if self.fill == len(self.buf):  # full, and more is coming: write it out
                j = int(np.searchsorted(ends, pos, side="right"))
                self.flush(first + j, pos - (int(ends[j - 1]) if j else 0))
            take = min(len(self.buf) - self.fill, len(toks) - pos)
            self.buf[self.fill:self.fill + take] = toks[pos:pos + take]
            self.fill, pos, self.tokens = self.fill + take, pos + take, self.tokens + take

    def flush(self, next_piece: int, next_offset: int, last: bool = False) -> None:
        fname = shard_name(self.name, self.index)
        write_shard(self.out / fname, self.buf[:self.fill])
        digest = hashlib.sha256(header(self.fill).tobytes())  # what a run records of its data
        digest.update(self.buf[:self.fill].tobytes())
        self.done.append({"file": fname, "tokens": int(self.fill), "sha256": digest.hexdigest(),
                          "next_piece": int(next_piece), "next_offset": int(next_offset)})
        if not last:  # (after the last one comes index.json; until then a rerun redoes it)
            atomic_write_text(self.out / STATE_FILE, json.dumps({"config": self.config, "shards": self.done},
                                                                indent=1))
            pause_point("shard")
        self.fill, self.index = 0, self.index + 1


def _kept_shards(out: Path, saved: dict | None) -> list[dict]:
    """The shards a previous run completed, as long as each is still whole on disk."""
    done: list[dict] = []
    for s in (saved or {}).get("shards", []):
        path = out / s["file"]
        if not path.is_file() or path.stat().st_size != 1024 + 2 * s["tokens"]:
            break
        done.append(s)
    return done


def prepare(sources: list[Source], out: Path, name: str, shard_tokens: int, workers: int,
            field: str = "text", progress: bool = True) -> dict:
    """Tokenize `sources` into shards in `out`; returns what index.json says."""
    if shard_tokens < 1:
        raise UsageError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    config = _config(name, sources, shard_tokens, field)
    saved = _check_out(out, name, config)
    if saved is not None and saved["complete"]:
        for s in saved["shards"]:
            read_header(out / s["file"])
        print(f"{out} already holds this preparation ({saved['tokens']:,} tokens); nothing to do")
        return saved
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob("*.tmp"):  # a shard being written when the last run stopped
        p.unlink()
    done = _kept_shards(out, saved)
    if done:
        print(f"continuing after {len(done)} complete shard(s) in {out}")
    writer = _ShardWriter(out, name, shard_tokens, config, done)
    documents = _tokenize(sources, field, workers, writer, progress)
    for s in sources:  # sha256 of the inputs, read along the way (complete now)
        if not s.sha256:
            s.sha256 = hub.sha256_of(s.path)
    if writer.tokens == 0:
        raise CorpusError(f"the corpus is empty: no document with text in "
                          f"{', '.join(str(s.path) for s in sources)}")
    if writer.index == 0:  # nothing written yet: one validation shard and no training tokens
        raise CorpusError(f"the corpus is too small: {writer.tokens:,} tokens fill at most the validation "
                          f"shard (--shard-tokens {shard_tokens:,}); a training shard needs more. "
                          f"Use a smaller --shard-tokens or more text")
    writer.flush(0, 0, last=True)
    return _write_index(out, config, writer, documents, sources)


def _tokenize(sources: list[Source], field: str, workers: int, writer: _ShardWriter, progress: bool) -> int:
    """Every piece of the sources after those already in complete shards, tokenized into the
    writer; returns how many documents the corpus holds."""
    skip_piece, skip_tokens = (writer.done[-1]["next_piece"], writer.done[-1]["next_offset"]) \
        if writer.done else (0, 0)
    total_bytes = sum(s.size for s in sources)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    documents, skipped_docs, t0 = 0, [0], time.perf_counter()
    try:
        items = work_items(read_pieces(sources, field), skip_piece, skipped_docs)
        for first, toks, counts, docs in encoded(items, workers):
            documents += docs
            writer.add(first, toks, counts, skip_tokens if first == skip_piece else 0)  # past a complete shard
            bar.n = min(sum(s.bytes_read for s in sources), total_bytes)
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{documents / dt:,.0f} docs/s, {writer.tokens / dt:,.0f} tok/s, "
                                f"{writer.index} shards", refresh=False)
            bar.update(0)
    finally:
        bar.close()
    return documents + skipped_docs[0]


def _write_index(out: Path, config: dict, writer: _ShardWriter, documents: int, sources: list[Source]) -> dict:
    done, tokens = writer.done, int(writer.tokens)
    info = {"format": FORMAT, "config": config, "tokens": tokens,
            "val_tokens": done[0]["tokens"], "train_tokens": tokens - done[0]["tokens"],
            "documents": documents,
            "sources": [{"path": str(s.path), "bytes": s.size, "sha256": s.sha256} for s in sources],
            "shards": [{k: s[k] for k in ("file", "tokens", "sha256") if k in s} for s in done]}
    atomic_write_text(out / "index.json", json.dumps(info, indent=1))
    (out / STATE_FILE).unlink(missing_ok=True)
    return info
