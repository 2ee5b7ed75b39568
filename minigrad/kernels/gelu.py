"""Launchers for gelu.cu (elementwise, any shape; contiguous float32 CuPy arrays)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import kernel

_THREADS = 256
_MAX_BLOCKS = 8192  # grid-stride loops cover the rest


def _grid(n: int) -> int:
    return max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))


def forward(x):
    out = backend.array_module(x).empty_like(x)
    kernel("gelu.cu", "gelu_forward")((_grid(x.size),), (_THREADS,), (x, out, np.int64(x.size)))
    return out


def backward(x, dout):
    dx = backend.array_module(x).empty_like(x)
    kernel("gelu.cu", "gelu_backward")((_grid(x.size),), (_THREADS,), (x, dout, dx, np.int64(x.size)))
    return dx
