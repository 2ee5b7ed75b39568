"""Launchers for bias_residual.cu: out = x + bias + residual on (N, C), and the bias gradient
(float32 or float16 device arrays)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import fp16, kernel, zeroed_counters
from .gelu import _grid, _THREADS

_ROWS_PER_CHUNK = 64
_COLS = 256


def forward(x, bias, residual):
    """x, residual: (N, C); bias: (C,)."""
    out = backend.array_module(x).empty_like(x)
    kernel("bias_residual.cu", "bias_residual_forward", **fp16(x))(
        (_grid(x.size),), (_THREADS,), (x, bias, residual, out, np.int64(x.size), np.int32(x.shape[-1])))
    return out


def bias_grad(dout, out=None):
    """Column sums of dout (N, C) in a fixed order (no atomics), into `out` (C,) when given."""
    xp = backend.array_module(dout)
    N, C = dout.shape
    n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    cols = (C + _COLS - 1) // _COLS
    part = xp.empty((n_chunks, C), dtype=np.float32)
    db = out if out is not None else xp.empty(C, dtype=dout.dtype)
    kernel("bias_residual.cu", "bias_grad", **fp16(dout))(
        (cols, n_chunks), (_COLS,), (dout, part, db, zeroed_counters(dout, cols), np.int32(N), np.int32(C),
                                     np.int32(_ROWS_PER_CHUNK)))
    return db
