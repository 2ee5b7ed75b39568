"""Creating tensors: tensor, zeros, ones, full, randn, rand, arange (PyTorch's names and
arguments). Random ones draw from the backend's seeded generator (minigrad.manual_seed)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import backend
from .tensor import Tensor


def tensor(data: Any, requires_grad: bool = False, device: str | None = None, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)


def _shape(shape: Sequence) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def zeros(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.zeros(_shape(shape), dtype=dtype), requires_grad)


def ones(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.ones(_shape(shape), dtype=dtype), requires_grad)


def full(shape: Sequence[int], value: float, dtype=np.float32, device: str | None = None) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.full(tuple(shape), value, dtype=dtype))


def randn(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the backend's seeded generator (see manual_seed)."""
    g = backend.rng(device)
    data = g.standard_normal(_shape(shape), dtype=np.float32 if dtype == np.float32 else np.float64)
    return Tensor._wrap(data.astype(dtype, copy=False), requires_grad)


def rand(*shape, dtype=np.float32, device: str | None = None) -> Tensor:
    g = backend.rng(device)
    return Tensor._wrap(g.random(_shape(shape), dtype=np.float32 if dtype == np.float32 else np.float64))


def arange(start: int, stop: int | None = None, step: int = 1, dtype=np.int64,
           device: str | None = None) -> Tensor:
    if stop is None:
        start, stop = 0, start
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.arange(start, stop, step, dtype=dtype))
