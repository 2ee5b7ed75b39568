"""Launchers for bias_residual.cu: out = x + bias + residual on (N, C), and the bias gradient."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import kernel
from .gelu import _grid, _THREADS

_ROWS_PER_CHUNK = 64
_COLS = 256


def forward(x, bias, residual):
    """x, residual: (N, C); bias: (C,)."""
    out = backend.array_module(x).empty_like(x)
    kernel("bias_residual.cu", "bias_residual_forward")(
        (_grid(x.size),), (_THREADS,), (x, bias, residual, out, np.int64(x.size), np.int32(x.shape[-1])))
    return out


def bias_grad(dout):
    """Column sums of dout (N, C), in a fixed order (no atomics)."""
    xp = backend.array_module(dout)
    N, C = dout.shape
    n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    part = xp.empty((n_chunks, C), dtype=np.float32)
    cols = (C + _COLS - 1) // _COLS
    kernel("bias_residual.cu", "bias_grad_partial")(
        (cols, n_chunks), (_COLS,), (dout, part, np.int32(N), np.int32(C), np.int32(_ROWS_PER_CHUNK)))
    db = xp.empty(C, dtype=np.float32)
    kernel("bias_residual.cu", "bias_grad_sum")((cols,), (_COLS,), (part, db, np.int32(n_chunks), np.int32(C)))
    return db
