"""Launchers for layernorm.cu: (N, C) float32 or float16 device arrays in, arrays out."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import fp16, kernel, zeroed_counters

_ROWS_PER_BLOCK = 8      # warps (rows) per block
_ROWS_PER_CHUNK = 64     # rows each dw/db partial sum covers
_COLS = 256              # threads (columns) per block of the column sums


def forward(x, w, b, eps: float):
    """LayerNorm of each row of x (N, C): (out (N, C), mean (N,), rstd (N,) float32)."""
    xp = backend.array_module(x)
    N, C = x.shape
    out = xp.empty_like(x)
    mean = xp.empty(N, dtype=np.float32)
    rstd = xp.empty(N, dtype=np.float32)
    grid = (N + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
    kernel("layernorm.cu", "layernorm_forward", **fp16(x))(
        (grid,), (32 * _ROWS_PER_BLOCK,), (x, w, b, out, mean, rstd, np.int32(N), np.int32(C), np.float32(eps)))
    return out, mean, rstd


def backward(dout, x, w, mean, rstd, need_dx: bool = True, need_dwdb: bool = True, dx=None, dw=None, db=None):
    """(dx, dw, db) for LayerNorm; None for what is not needed. dout, x: (N, C). A `dx` given
    (contiguous, (N, C)) gets this gradient added to what it holds; a `dw` or `db` given ((C,),
    x's dtype) is written into. Those given are the ones returned."""
    xp = backend.array_module(x)
    N, C = x.shape
    if need_dx:
        accumulate = dx is not None
        dx = dx if accumulate else xp.empty_like(x)
        grid = (N + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        kernel("layernorm.cu", "layernorm_backward_dx", **fp16(x))(
            (grid,), (32 * _ROWS_PER_BLOCK,),
            (dout, x, w, mean, rstd, dx, np.int32(N), np.int32(C), np.int32(accumulate)))
    if need_dwdb:
        n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
        cols = (C + _COLS - 1) // _COLS
        part = xp.empty((n_chunks, 2, C), dtype=np.float32)
        dw = dw if dw is not None else xp.empty(C, dtype=x.dtype)
        db = db if db is not None else xp.empty(C, dtype=x.dtype)
        kernel("layernorm.cu", "layernorm_backward_dwdb", **fp16(x))(
            (cols, n_chunks), (_COLS,), (dout, x, mean, rstd, part, dw, db, zeroed_counters(x, cols),
                                         np.int32(N), np.int32(C), np.int32(_ROWS_PER_CHUNK)))
    return dx, (dw if need_dwdb else None), (db if need_dwdb else None)
