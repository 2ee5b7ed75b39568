"""Saving and loading arrays as safetensors, written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import backend
from .tensor import Tensor


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename tmp_path over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=dict(metadata) if metadata else None))


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
