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

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import os
import sys
from pathlib import Path

from files import hub
from files.hub import MissingFileError

from .common.args import parse
from .common.errors import Terminated, UsageError, note_output
from .common.guard import main_guard
from .common.memory import check_buffer_memory
from .data.corpora import CORPORA, ensure_corpus, link_pretokenized
from .data.documents import Source, expand_inputs
from .data.manifest import ensure_inputs
from .data.shards import SHARD_RE, shard_name
from .data.sharding import prepare


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    if args.out is not None and str(args.out) in ("", "."):
        raise UsageError("--out is empty: give the shards a folder of their own")
    # a shard is filled in memory (uint16 tokens) before it is written out
    check_buffer_memory(2 * args.shard_tokens, "cpu", f"a shard of --shard-tokens {args.shard_tokens:,}",
                        "--shard-tokens")
    if args.corpus:
        name = args.name or args.corpus
        out = Path(args.out) if args.out else hub.cache_dir() / "shards" / args.corpus
        corpus = CORPORA[args.corpus]
        try:
            paths, missing = ensure_corpus(args.corpus, shards=args.shards, progress=not args.no_progress), []
        except MissingFileError as err:
            paths, missing = [], [err]
        # the corpus's missing files and the tokenizer's in one message
        ensure_inputs(tokenizer=corpus.kind != "shards", found=missing)
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
    note_output(out, "run the same command again: it continues after the complete shards")
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
