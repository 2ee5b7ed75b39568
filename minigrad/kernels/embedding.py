"""Launcher for embedding_backward.cu: the (n, C) table gradient from (N, C) gradient rows."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import kernel

_THREADS = 256


def backward(ids, rows, n: int):
    """ids: (N,) integers in [0, n); rows: (N, C) float32. Deterministic: no atomics."""
    xp = backend.array_module(rows)
    N, C = rows.shape
    gw = xp.zeros((n, C), dtype=np.float32)
    if N == 0:
        return gw
    # unique keys, so the sorted order (and with it the order of every sum) is fixed
    keys = xp.sort(ids.astype(np.int64) * N + xp.arange(N, dtype=np.int64))
    col_blocks = min((C + _THREADS - 1) // _THREADS, 4)
    kernel("embedding_backward.cu", "embedding_backward")((N, col_blocks), (_THREADS,),
                                                          (rows, keys, gw, np.int32(N), np.int32(C)))
    return gw
