"""Launchers for layernorm.cu: (N, C) float32 CuPy arrays in, arrays out."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import kernel

_ROWS_PER_BLOCK = 8      # warps (rows) per block
_ROWS_PER_CHUNK = 64     # rows each dw/db partial sum covers
_COLS = 256              # threads (columns) per block of the column sums


def forward(x, w, b, eps: float):
    """LayerNorm of each row of x (N, C): (out (N, C), mean (N,), rstd (N,))."""
    xp = backend.array_module(x)
    N, C = x.shape
    out = xp.empty_like(x)
    mean = xp.empty(N, dtype=np.float32)
    rstd = xp.empty(N, dtype=np.float32)
    grid = (N + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
    kernel("layernorm.cu", "layernorm_forward")(
        (grid,), (32 * _ROWS_PER_BLOCK,), (x, w, b, out, mean, rstd, np.int32(N), np.int32(C), np.float32(eps)))
    return out, mean, rstd


def backward(dout, x, w, mean, rstd, need_dx: bool = True, need_dwdb: bool = True):
    """(dx, dw, db) for LayerNorm; None for what is not needed. dout, x: (N, C)."""
    xp = backend.array_module(x)
    N, C = x.shape
    dx = dw = db = None
    if need_dx:
        dx = xp.empty_like(x)
        grid = (N + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        kernel("layernorm.cu", "layernorm_backward_dx")(
            (grid,), (32 * _ROWS_PER_BLOCK,), (dout, x, w, mean, rstd, dx, np.int32(N), np.int32(C)))
    if need_dwdb:
        n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
        pdw = xp.empty((n_chunks, C), dtype=np.float32)
        pdb = xp.empty((n_chunks, C), dtype=np.float32)
        cols = (C + _COLS - 1) // _COLS
        kernel("layernorm.cu", "layernorm_backward_dwdb")(
            (cols, n_chunks), (_COLS,), (dout, x, mean, rstd, pdw, pdb, np.int32(N), np.int32(C),
                                         np.int32(_ROWS_PER_CHUNK)))
        dw = xp.empty(C, dtype=np.float32)
        db = xp.empty(C, dtype=np.float32)
        total = kernel("layernorm.cu", "layernorm_sum_partials")
        total((cols,), (_COLS,), (pdw, dw, np.int32(n_chunks), np.int32(C)))
        total((cols,), (_COLS,), (pdb, db, np.int32(n_chunks), np.int32(C)))
    return dx, dw, db
