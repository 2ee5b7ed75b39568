"""Atomic file writes: a reader (or a resumed run) never sees half a file under its real name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def umask_mode(base: int = 0o666) -> int:
    """The permissions open() would give a new file (base 0o666) or folder (0o777).

    tempfile creates its files 0600 and folders 0700; what we rename into place should look like
    any other file the user writes."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return base & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), then rename tmp_path over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
