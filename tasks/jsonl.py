"""JSON-lines files written as results come: one record a line, appended and flushed, so a crash
or Ctrl-C loses at most the record in flight; a torn last line (a kill mid-write) is skipped."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of `path` ([] when it does not exist); only the last line may be torn."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}, line {i + 1}: not a JSON record") from None
    return records


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Add one record as a line, flushed to the file before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def rewrite_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    """Replace the file's records at once (atomically), e.g. to drop a torn last line."""
    from files.atomic import atomic_write_text
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
