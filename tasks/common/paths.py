"""Where a command writes, checked before it starts: a run folder (--out of a training command),
an output file (--out of respond, judge, mmlu). Nothing is created here; `make_parent` creates
an output file's folder once the work is about to be written."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def _nearest_existing(path: Path) -> Path:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_out(out: Path, resume: bool) -> None:
    """--out can be created and written, and holds no other run unless --resume."""
    if str(out) in ("", "."):
        raise UsageError("--out is empty: give the run folder a name (e.g. --out runs/mine)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable (read-only or no permission)")


def check_output_file(path: Path, flag: str = "--out") -> None:
    """An output file can be written: a name, not a folder, and its folder exists or can be created
    (created by make_parent when the results are about to be written)."""
    if str(path) in ("", "."):
        raise UsageError(f"{flag} is empty: give the output file a name")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable (read-only or no permission)")


def make_parent(path: Path) -> None:
    """The folder of an output file, created (with its parents) if it is not there yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
