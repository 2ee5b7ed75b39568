"""The documents of a corpus for tasks.prepare, read as (starts a document, text) pieces.

A `.txt` file is one document, or several split at each literal <|endoftext|>; a `.jsonl` file
has one JSON object a line (its text field); a `.parquet` file (needs pyarrow) has a text
column. Documents whose text is empty or only whitespace are dropped. Files are read in blocks
and a long document is handed out in pieces cut where GPT-2's pre-tokenizer cuts anyway, so
memory stays flat and the tokens are the same as for the whole text.
"""
from __future__ import annotations

import codecs
import glob
import hashlib
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from files import hub

from ..common.errors import TaskError
from ..common.jsonfiles import JsonLines

SEPARATOR = "<|endoftext|>"
BLOCK_BYTES = 1 << 22  # read size
PIECE_CHARS = 1 << 20  # a longer document is tokenized in pieces of about this size
_SAFE = set(string.ascii_letters + string.digits + string.punctuation)


class CorpusError(TaskError):
    """Bad input for tasks.prepare: one message, nothing half-written."""


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


def _binary(src: Source, where: int) -> CorpusError:
    return CorpusError(f"{src.path} looks like a binary file (a NUL byte at byte {where}); "
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
                raise CorpusError(f"{src.path}: invalid UTF-8 at byte {src.bytes_read + pos} "
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


def read_jsonl_texts(src: Source, field: str) -> Iterator[tuple[bool, str]]:
    """Pieces of the documents of a .jsonl file: the text field of each record."""
    digest = hashlib.sha256()

    def check(raw: bytes) -> None:
        digest.update(raw)
        if (nul := raw.find(b"\0")) >= 0:
            raise _binary(src, src.bytes_read + nul)
        src.bytes_read += len(raw)

    for lineno, record in JsonLines(src.path, on_line=check):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise CorpusError(f"{src.path}, line {lineno}: no text field {field!r} (a string); "
                              f"choose the field with --text-field")
        if record[field].strip():
            yield from split_long(record[field], True)
    src.sha256 = digest.hexdigest()


def read_parquet(src: Source, field: str) -> Iterator[tuple[bool, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{src.path}: reading .parquet needs pyarrow: "
                           "pip install 'minigrad-gpt2[parquet]'") from None
    try:
        pf = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow's errors have no common base we can name
        raise CorpusError(f"{src.path} is not a readable parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise CorpusError(f"{src.path} has no column {field!r} (it has {pf.schema_arrow.names}); "
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
            yield from read_jsonl_texts(src, field)
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
                raise CorpusError(f"--input {pattern!r} matches no file")
            paths.extend(Path(m) for m in matches if not Path(m).is_dir())
        else:
            paths.append(Path(pattern))
    for p in paths:
        if not p.exists():
            raise CorpusError(f"--input {p}: no such file")
        if not p.is_file():
            raise CorpusError(f"--input {p} is not a file")
        try:
            with open(p, "rb"):
                pass
        except OSError as e:
            raise CorpusError(f"--input {p} cannot be read ({e.strerror})") from None
    return paths
