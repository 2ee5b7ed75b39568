"""JSON and JSON-lines files, the way every task writes and reads them.

A JSON file (run.json, state.json, results) is written atomically: readers never see half of
one. A JSON-lines file holds one record a line; the ones a task appends to as results come
(metrics.jsonl, answers, scores) are flushed a record at a time, so a crash or Ctrl-C loses at
most the record in flight: a last line without its line end, which the reader then skips.
`JsonLines` is the one JSON-lines reader; its errors name the file and the line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from files.atomic import atomic_write_text


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


class JsonLinesError(ValueError):
    """A line of a JSON-lines file that is not UTF-8 or not JSON."""


class JsonLines:
    """The records of a JSON-lines file, read a line at a time (memory stays flat).

        for line_number, record in JsonLines(path): ...

    Blank lines are skipped. A line that is not UTF-8 or not JSON is a JsonLinesError naming
    the file and the line. With `appended` (a file a task appends to), a last line without its
    line end is a write cut short: it is skipped, and `torn_at` is then its byte offset.
    `on_line` sees every line's bytes first (for a digest, a byte count, a check of its own).
    """

    def __init__(self, path: str | os.PathLike, *, appended: bool = False,
                 on_line: Callable[[bytes], None] | None = None):
        self.path, self.appended, self.on_line = Path(path), appended, on_line
        self.torn_at: int | None = None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        offset = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if self.on_line is not None:
                    self.on_line(raw)
                if self.appended and not raw.endswith(b"\n"):
                    self.torn_at = offset
                    return
                record = self._parse(raw, number, offset)
                offset += len(raw)
                if record is not _BLANK:
                    yield number, record

    def _parse(self, raw: bytes, number: int, offset: int) -> Any:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonLinesError(f"{self.path}, line {number}: invalid UTF-8 at byte {offset + e.start}") from None
        if not line.strip():
            return _BLANK
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonLinesError(f"{self.path}, line {number}: not valid JSON ({e.msg})") from None


_BLANK = object()


def read_jsonl(path: str | os.PathLike, *, cut_torn_tail: bool = False) -> list[Any]:
    """Every record of a JSON-lines file a task appends to ([] when there is none yet). A torn
    last line is skipped; with `cut_torn_tail` it is also cut off the file, so that appending
    goes on from a clean line end (do it only when about to append)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = JsonLines(path, appended=True)
    records = [record for _, record in lines]
    if cut_torn_tail and lines.torn_at is not None:
        with open(path, "r+b") as f:
            f.truncate(lines.torn_at)
    return records


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Add one record as a line, flushed to the file before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def rewrite_jsonl(path: str | os.PathLike, records: list[Any]) -> None:
    """Replace the file's records at once (atomically), e.g. to drop a torn last line."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
