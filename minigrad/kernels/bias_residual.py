"""Launchers for bias_residual.cu: out = residual + dropout(x + bias) on (N, P) (residual optional,
bias (P,)), its backward through the dropout, and the bias gradient (float32 or float16 device
arrays). Dropout is a dropout.Dropout drawn by the caller, or None."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import fp16, kernel, zeroed_counters
from .dropout import Dropout, kernel_args
from .gelu import _grid, _THREADS

_ROWS_PER_CHUNK = 64
_COLS = 256


def forward(x, bias, residual, drop: Dropout | None = None):
    """x, residual (or None): (N, P); bias: (P,)."""
    out = backend.array_module(x).empty_like(x)
    kernel("bias_residual.cu", "bias_residual_forward", **fp16(x))(
        (_grid(x.size),), (_THREADS,), (x, bias, residual, out, np.int64(x.size), np.int32(x.shape[-1])) +
        kernel_args(drop))
    return out


def _column_sums(name: str, dout, front: tuple, back: tuple, out):
    xp = backend.array_module(dout)
    N, C = dout.shape
    n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    cols = (C + _COLS - 1) // _COLS
    part = xp.empty((n_chunks, C), dtype=np.float32)
    db = out if out is not None else xp.empty(C, dtype=dout.dtype)
    kernel("bias_residual.cu", name, **fp16(dout))(
        (cols, n_chunks), (_COLS,), front + (part, db, zeroed_counters(dout, cols), np.int32(N), np.int32(C),
                                             np.int32(_ROWS_PER_CHUNK)) + back)
    return db


def bias_grad(dout, out=None):
    """Column sums of dout (N, C) in a fixed order (no atomics), into `out` (C,) when given."""
    return _column_sums("bias_grad", dout, (dout,), (), out)


def dropout_bias_grad(dout, drop: Dropout | None, out=None):
    """(dx, db): dx = dout through the forward's dropout (dout * keep / (1 - p)), db its column
    sums (into `out` when given); one launch."""
    dx = backend.array_module(dout).empty_like(dout)
    return dx, _column_sums("dropout_bias_grad", dout, (dout, dx), kernel_args(drop), out)
