"""Saving and loading tensors as safetensors files (written under a temporary name, then renamed)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import backend
from .tensor import Tensor


def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """write(a temporary name beside path), then rename it to path. A checkpoint interrupted
    mid-save must never be left, half written, under its real name; this is the engine's only
    file write, so it has these few lines of its own rather than depending on files/ (above it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its file 0600: make it any file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(state_dict: Mapping[str, Any], path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write name -> array (or Tensor) as a .safetensors file, atomically."""
    from safetensors.numpy import save_file

    arrays = {}
    for name, value in state_dict.items():
        if isinstance(value, Tensor):
            value = value.data
        arrays[name] = np.ascontiguousarray(backend.to_device(value, "cpu"))
    _replace_atomically(Path(path), lambda tmp: _save_file(save_file, arrays, tmp, metadata, path))


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
