"""Saving and loading arrays as safetensors, written atomically."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import backend
from .tensor import Tensor


def umask_mode(base: int = 0o666) -> int:
    """The permissions open() would give a new file (base 0o666) or folder (0o777).

    tempfile creates its files 0600 and folders 0700; what we rename into place should look like
    any other file the user writes."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return base & ~umask


def atomic_write(path: str | os.PathLike, write) -> None:
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


def save(state_dict: Mapping[str, Any], path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write name -> array (or Tensor) as a .safetensors file, atomically."""
    from safetensors.numpy import save_file

    arrays = {}
    for name, value in state_dict.items():
        if isinstance(value, Tensor):
            value = value.data
        arrays[name] = np.ascontiguousarray(backend.to_device(value, "cpu"))
    atomic_write(path, lambda tmp: _save_file(save_file, arrays, tmp, metadata, path))


def _save_file(save_file, arrays, tmp, metadata, path) -> None:
    """safetensors' writer, with its I/O failures (a full disk, ...) raised as the OSError they are."""
    from safetensors import SafetensorError

    try:
        save_file(arrays, tmp, metadata=dict(metadata) if metadata else None)
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e


def load(path: str | os.PathLike, device: str | None = None) -> dict[str, Any]:
    """Read a .safetensors file into name -> array (NumPy, or CuPy with device='cuda')."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    if device is not None and backend.normalize_device(device) != "cpu":
        arrays = {k: backend.to_device(v, device) for k, v in arrays.items()}
    return arrays
