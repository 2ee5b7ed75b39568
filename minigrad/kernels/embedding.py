"""Launchers for embedding_backward.cu: the (n, C) table gradient from (N, C) gradient rows."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import fp16, kernel

_THREADS = 256


def backward(ids, rows, n: int, out=None):
    """ids: (N,) integers in [0, n); rows: (N, C) float32 or float16. Deterministic: no atomics.
    With `out` ((n, C), contiguous, rows' dtype) the gradient is added to what it holds."""
    xp = backend.array_module(rows)
    N, C = rows.shape
    gw = out if out is not None else xp.zeros((n, C), dtype=rows.dtype)
    if N == 0:
        return gw
    ids = xp.ascontiguousarray(ids.reshape(-1), dtype=np.int64)
    key64 = n * N >= 2 ** 31  # keys id * N + position in 32 bits when they fit: half the sort's passes
    keys = xp.empty(N, dtype=np.int64 if key64 else np.int32)
    kernel("embedding_backward.cu", "embedding_keys", KEY64=int(key64))(
        (min((N + _THREADS - 1) // _THREADS, 4096),), (_THREADS,), (ids, keys, np.int32(N)))
    keys.sort()  # unique keys, so the sorted order (and with it the order of every sum) is fixed
    col_blocks = min((C + _THREADS - 1) // _THREADS, 4)
    kernel("embedding_backward.cu", "embedding_backward", KEY64=int(key64), **fp16(rows))(
        (N, col_blocks), (_THREADS,), (rows, keys, gw, np.int32(N), np.int32(C), np.int32(out is not None)))
    return gw
