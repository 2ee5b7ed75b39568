"""Tokenize a corpus into llm.c-format shards: `python -m tasks.prepare --input FILES... --out DIR`.

    python -m tasks.prepare --input 'books/*.txt' notes.jsonl --out data/shards/mine
    python -m tasks.prepare --corpus tinystories                  # downloaded, then tokenized
    python -m tasks.prepare --corpus fineweb10B --shards 2        # already tokenized: fetched as is
    python -m tasks.pretrain --data data/shards/mine ...

Each document becomes <|endoftext|> (50256) followed by tiktoken's GPT-2 `encode_ordinary` of its
text, byte for byte. A `.txt` file is one document, or several split at each literal
<|endoftext|>; a `.jsonl` file has one JSON object a line (field --text-field); a `.parquet`
file (needs pyarrow) has a text column. Documents whose text is empty or only whitespace are
dropped. Files are read in the order given, globs sorted.

The token stream is cut into shards of --shard-tokens tokens (a document may run on into the
next shard): NAME_val_000000.bin first (the validation shard), then NAME_train_000001.bin, ...,
and index.json. Shards are byte-identical for any --workers. Memory stays flat: files are read
in blocks, a long document is tokenized in pieces cut where GPT-2's pre-tokenizer cuts anyway
(so the tokens are the same), at most a few pieces are in flight, and one shard is buffered.
A rerun after a crash keeps the complete shards and continues after them.
"""
from __future__ import annotations

import argparse
import codecs
import glob
import hashlib
import json
import multiprocessing
import os
import signal
import string
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from gpt2.tokenizer import EOT_ID
from files import hub
from files.atomic import atomic_write_text

from .common.args import parse
from .common.errors import TaskError, Terminated, UsageError
from .common.guard import main_guard, pause_point
from .shards import SHARD_RE, read_header, shard_name, write_shard
SEPARATOR = "<|endoftext|>"
BLOCK_BYTES = 1 << 22  # read size
PIECE_CHARS = 1 << 20  # a longer document is tokenized in pieces of about this size
TASK_CHARS = 1 << 19  # text handed to a worker at once (small: the last task ends the run sooner)
STATE_FILE = ".prepare_state.json"  # what a rerun needs to continue; gone once index.json is written
_SAFE = set(string.ascii_letters + string.digits + string.punctuation)


class PrepareError(TaskError):
    """Bad input for tasks.prepare: one message, nothing half-written."""


# ----------------------------------------------------------------------------- reading


def safe_cut(text: str, hi: int) -> int:
    """The last index i <= hi where encoding text[:i] and text[i:] separately gives the same
    tokens as encoding text whole (0 if there is none).

    GPT-2's pre-tokenizer never joins a newline to the character after it, and a newline
    between two non-space characters is a pre-token of its own; BPE merges stay inside
    pre-tokens, so cutting right after such a newline changes nothing. We only trust ASCII
    letters, digits and punctuation on both sides: they are non-space for any definition.
    """
    i = text.rfind("\n", 0, hi)
    while i > 0:
        if i + 1 < len(text) and text[i - 1] in _SAFE and text[i + 1] in _SAFE:
            return i + 1
        i = text.rfind("\n", 0, i)
    return 0


def split_long(text: str, start: bool) -> Iterator[tuple[bool, str]]:
    """(starts a document, text) pieces of one document text, cut by safe_cut."""
    while len(text) > PIECE_CHARS:
        cut = safe_cut(text, PIECE_CHARS)
        if cut == 0:
            break  # no safe place: keep the rest in one piece
        yield start, text[:cut]
        text, start = text[cut:], False
    yield start, text


@dataclass
class Source:
    path: Path
    size: int
    bytes_read: int = 0
    sha256: str = ""


def _binary(src: Source, where: int) -> PrepareError:
    return PrepareError(f"{src.path} looks like a binary file (a NUL byte at byte {where}); "
                        "inputs must be UTF-8 text, .jsonl or .parquet")


def read_txt(src: Source) -> Iterator[tuple[bool, str]]:
    """Pieces of the documents of a .txt file, streamed in blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    digest = hashlib.sha256()
    buf, start, lines = "", True, 1
    with open(src.path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            final = not block
            digest.update(block)
            if (nul := block.find(b"\0")) >= 0:
                raise _binary(src, src.bytes_read + nul)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final)
            except UnicodeDecodeError as e:
                pos = e.start - pending  # in this block (negative: in the bytes held back)
                line = lines + block[:max(pos, 0)].count(b"\n")
                raise PrepareError(f"{src.path}: invalid UTF-8 at byte {src.bytes_read + pos} "
                                   f"(line {line})") from None
            lines += block.count(b"\n")
            src.bytes_read += len(block)
            parts = (buf + text).split(SEPARATOR)
            buf = parts.pop()
            for doc in parts:  # complete documents
                if not start or doc.strip():
                    yield from split_long(doc, start)
                start = True
            if final:
                break
            # a long document: hand out its safe head, keep a tail that may hold half a separator
            cut = safe_cut(buf, len(buf) - len(SEPARATOR)) if len(buf) > PIECE_CHARS else 0
            if cut:
                if start or buf[:cut].strip():
                    yield start, buf[:cut]
                    start = False
                buf = buf[cut:]
    if not start or buf.strip():
        yield from split_long(buf, start)
    src.sha256 = digest.hexdigest()


def read_jsonl(src: Source, field: str) -> Iterator[tuple[bool, str]]:
    digest = hashlib.sha256()
    with open(src.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            digest.update(raw)
            if (nul := raw.find(b"\0")) >= 0:
                raise _binary(src, src.bytes_read + nul)
            src.bytes_read += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{src.path}:{lineno}: invalid UTF-8 at byte "
                                   f"{src.bytes_read - len(raw) + e.start}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{src.path}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise PrepareError(f"{src.path}:{lineno}: no text field {field!r} (a string); "
                                   f"choose the field with --text-field")
            if record[field].strip():
                yield from split_long(record[field], True)
    src.sha256 = digest.hexdigest()


def read_parquet(src: Source, field: str) -> Iterator[tuple[bool, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(f"{src.path}: reading .parquet needs pyarrow: "
                           "pip install 'minigrad-gpt2[parquet]'") from None
    try:
        pf = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow's errors have no common base we can name
        raise PrepareError(f"{src.path} is not a readable parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise PrepareError(f"{src.path} has no column {field!r} (it has {pf.schema_arrow.names}); "
                           f"choose it with --text-field")
    src.sha256 = hub.sha256_of(src.path)
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        src.bytes_read = min(src.size, src.bytes_read + batch.nbytes)
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield from split_long(text, True)
    src.bytes_read = src.size


def read_pieces(sources: list[Source], field: str) -> Iterator[tuple[bool, str]]:
    """(starts a document, text) pieces of every document of every source, in order."""
    for src in sources:
        suffix = src.path.suffix.lower()
        if suffix == ".jsonl":
            yield from read_jsonl(src, field)
        elif suffix == ".parquet":
            yield from read_parquet(src, field)
        else:
            yield from read_txt(src)


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files in the order given, each glob's matches sorted; checked readable before any work."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise PrepareError(f"--input {pattern!r} matches no file")
            paths.extend(Path(m) for m in matches if not Path(m).is_dir())
        else:
            paths.append(Path(pattern))
    for p in paths:
        if not p.exists():
            raise PrepareError(f"--input {p}: no such file")
        if not p.is_file():
            raise PrepareError(f"--input {p} is not a file")
        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            raise PrepareError(f"--input {p} cannot be read ({e.strerror})") from None
    return paths


# ----------------------------------------------------------------------------- tokenizing

_ENC = None


def _encoding():
    global _ENC
    if _ENC is None:
        from gpt2.tokenizer import get_tokenizer
        _ENC = get_tokenizer().encoding  # tiktoken's gpt2 (or the same built from our cache)
    return _ENC


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _start_pool(ctx, workers: int):
    """A pool whose workers never run the parent's signal handlers.

    A forked worker inherits main_guard's SIGTERM handler, and Python drops a signal that arrives
    before the child has finished forking: the SIGTERM of Pool.terminate could then be lost and
    the worker left waiting on the task queue, with the parent waiting for it forever (seen as a
    hung test suite). So the stop signals are blocked while the workers (and the pool's threads)
    start; each worker sets plain handlers, then unblocks them, and a SIGTERM that came early is
    delivered then, ending it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return ctx.Pool(workers, initializer=_worker_start)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_start() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it stops the pool
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _encoding()


def encode_pieces(pieces: list[tuple[bool, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens uint16, tokens per piece) of a list of pieces; runs in a worker process."""
    enc = _encoding()
    eot = np.array([EOT_ID], dtype=np.uint16)
    out, counts = [], np.empty(len(pieces), dtype=np.int64)
    for i, (start, text) in enumerate(pieces):
        if hasattr(enc, "encode_to_numpy"):  # tiktoken >= 0.8: no list of Python ints on the way
            # with no special token allowed nor disallowed this is encode_ordinary (tested)
            ids = enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        else:
            ids = np.array(enc.encode_ordinary(text), dtype=np.uint32)
        if start:
            out.append(eot)
        out.append(ids.astype(np.uint16))
        counts[i] = len(ids) + start
    return (np.concatenate(out) if out else np.zeros(0, np.uint16)), counts


def _tasks(pieces: Iterator[tuple[bool, str]], skip: int, skipped_docs: list[int]
           ) -> Iterator[tuple[int, list]]:
    """(index of the first piece, pieces) groups of about TASK_CHARS, from piece `skip` on."""
    group, size, first = [], 0, skip
    for index, piece in enumerate(pieces):
        if index < skip:
            skipped_docs[0] += piece[0]
            continue  # already in a complete shard: read, not tokenized
        group.append(piece)
        size += len(piece[1])
        if size >= TASK_CHARS:
            yield first, group
            group, size, first = [], 0, index + 1
    if group:
        yield first, group


def encoded(tasks: Iterator[tuple[int, list]], workers: int
            ) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """(first piece, tokens, tokens per piece, documents) of each task, in order.

    With several workers at most 2*workers tasks are in flight (bounded memory, unlike
    Pool.imap, which reads its whole input ahead)."""
    if workers == 1:
        for first, group in tasks:
            yield first, *encode_pieces(group), sum(s for s, _ in group)
        return
    _encoding()  # loaded once here: forked workers inherit it
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with _start_pool(ctx, workers) as pool:
        pending: deque = deque()
        for first, group in tasks:
            pending.append((first, pool.apply_async(encode_pieces, (group,)),
                            sum(s for s, _ in group)))
            if len(pending) >= 2 * workers:
                f, res, docs = pending.popleft()
                yield f, *res.get(), docs
        while pending:
            f, res, docs = pending.popleft()
            yield f, *res.get(), docs


# ----------------------------------------------------------------------------- the job


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
    # shards a previous run completed, as long as each is still whole on disk
    done: list[dict] = []
    for s in (saved or {}).get("shards", []):
        path = out / s["file"]
        if not path.is_file() or path.stat().st_size != 1024 + 2 * s["tokens"]:
            break
        done.append(s)
    skip_piece, skip_tokens = (done[-1]["next_piece"], done[-1]["next_offset"]) if done else (0, 0)
    if done:
        print(f"continuing after {len(done)} complete shard(s) in {out}")

    total_bytes = sum(s.size for s in sources)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    buf = np.empty(shard_tokens, dtype=np.uint16)  # the one shard being filled
    fill, index, documents, tokens = 0, len(done), 0, sum(s["tokens"] for s in done)
    t0 = time.perf_counter()

    def flush(next_piece: int, next_offset: int, last: bool = False) -> None:
        nonlocal fill, index
        fname = shard_name(name, index)
        write_shard(out / fname, buf[:fill])
        done.append({"file": fname, "tokens": int(fill), "next_piece": int(next_piece),
                     "next_offset": int(next_offset)})
        if not last:  # (after the last one comes index.json; until then a rerun redoes it)
            atomic_write_text(out / STATE_FILE, json.dumps({"config": config, "shards": done},
                                                           indent=1))
            pause_point("shard")
        fill, index = 0, index + 1

    pieces = read_pieces(sources, field)
    skipped_docs = [0]
    try:
        for first, toks, counts, docs in encoded(_tasks(pieces, skip_piece, skipped_docs), workers):
            documents += docs
            ends = np.cumsum(counts)
            pos = skip_tokens if first == skip_piece else 0  # tokens already in a complete shard
            while pos < len(toks):
                if fill == shard_tokens:  # full, and more is coming: write it out
                    j = int(np.searchsorted(ends, pos, side="right"))
                    flush(first + j, pos - (int(ends[j - 1]) if j else 0))
                take = min(shard_tokens - fill, len(toks) - pos)
                buf[fill:fill + take] = toks[pos:pos + take]
                fill, pos, tokens = fill + take, pos + take, tokens + take
            bar.n = min(sum(s.bytes_read for s in sources), total_bytes)
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{documents / dt:,.0f} docs/s, {tokens / dt:,.0f} tok/s, "
                                f"{index} shards", refresh=False)
            bar.update(0)
    finally:
        bar.close()
    for s in sources:  # sha256 of the inputs, read along the way (complete now)
        if not s.sha256:
            s.sha256 = hub.sha256_of(s.path)
    if tokens == 0:
        raise PrepareError(f"the corpus is empty: no document with text in "
                           f"{', '.join(str(s.path) for s in sources)}")
    if index == 0:  # nothing written yet: one validation shard and no training tokens
        raise PrepareError(f"the corpus is too small: {tokens:,} tokens fill at most the validation "
                           f"shard (--shard-tokens {shard_tokens:,}); a training shard needs more. "
                           f"Use a smaller --shard-tokens or more text")
    flush(0, 0, last=True)
    documents += skipped_docs[0]
    info = {"format": "llm.c token shards: 256 int32 header (20240520, 1, tokens), uint16 tokens",
            "config": config, "tokens": int(tokens),
            "val_tokens": done[0]["tokens"], "train_tokens": int(tokens) - done[0]["tokens"],
            "documents": documents,
            "sources": [{"path": str(s.path), "bytes": s.size, "sha256": s.sha256} for s in sources],
            "shards": [{"file": s["file"], "tokens": s["tokens"]} for s in done]}
    atomic_write_text(out / "index.json", json.dumps(info, indent=1))
    (out / STATE_FILE).unlink(missing_ok=True)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .data import CORPORA
    p = argparse.ArgumentParser(prog="python -m tasks.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="FILE|GLOB", help=".txt, .jsonl or .parquet files")
    src.add_argument("--corpus", choices=sorted(CORPORA), help="a named corpus, downloaded when online")
    p.add_argument("--out", help="folder for the shards (default for --corpus: the data cache's shards/NAME)")
    p.add_argument("--name", help="shard name prefix (default: the corpus name or the first input's stem)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="tokenizer processes (default: all cores, %(default)s)")
    p.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet (default: %(default)s)")
    p.add_argument("--shards", type=int, help="fineweb10B / fineweb-edu-10B: download only this many training files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parse(p, argv)


def _plain_malloc() -> None:
    """Undo minigrad's allocator tuning (minigrad/backend.py keeps freed memory for the next
    training step): here each block of text is freed for good, and keeping it made the peak
    memory creep up with the corpus."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # glibc's default
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _plain_malloc()
    from .data import CORPORA, ensure_corpus, link_pretokenized
    if args.shard_tokens < 1:
        raise UsageError(f"--shard-tokens must be at least 1, got {args.shard_tokens}")
    if args.corpus:
        name = args.name or args.corpus
        out = Path(args.out) if args.out else hub.cache_dir() / "shards" / args.corpus
        corpus = CORPORA[args.corpus]
        paths = ensure_corpus(args.corpus, shards=args.shards, progress=not args.no_progress)
        if corpus.kind == "shards":  # already in our format: checked and put in place, not re-tokenized
            info = link_pretokenized(args.corpus, paths, out)
            print(f"{out}: {len(info['shards'])} shards, {info['tokens']:,} tokens")
            return 0
    else:
        if args.out is None:
            raise UsageError("--out is required with --input")
        paths, out = expand_inputs(args.input), Path(args.out)
        name = args.name or paths[0].stem
    if not SHARD_RE.match(shard_name(name, 0)) or "/" in name:
        raise UsageError(f"--name {name!r} cannot name shard files")
    sources = [Source(p, p.stat().st_size) for p in paths]
    try:
        info = prepare(sources, out, name, args.shard_tokens, args.workers, args.text_field,
                       progress=not args.no_progress)
    except KeyboardInterrupt as e:
        print(f"interrupted: the complete shards in {out} are kept; run the same command again "
              "to continue after them", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    print(f"{out}: {len(info['shards'])} shards, {info['tokens']:,} tokens "
          f"({info['val_tokens']:,} validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
