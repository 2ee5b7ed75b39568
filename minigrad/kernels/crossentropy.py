"""Launchers for crossentropy.cu: (N, V) float32 logits, int64 targets, one block per row."""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ._loader import define, kernel, source_text


@functools.lru_cache(maxsize=None)
def threads() -> int:
    return define(source_text("crossentropy.cu"), "CE_THREADS")


def forward(logits, targets, ignore_index: int):
    """(losses (N,), lse (N,), bad (1,) int32: 1 when a target is outside [0, V) and not ignored)."""
    xp = backend.array_module(logits)
    N, V = logits.shape
    losses = xp.empty(N, dtype=np.float32)
    lse = xp.empty(N, dtype=np.float32)
    bad = xp.zeros(1, dtype=np.int32)
    kernel("crossentropy.cu", "crossentropy_forward")(
        (N,), (threads(),), (logits, targets, losses, lse, bad, np.int32(N), np.int32(V), np.int64(ignore_index)))
    return losses, lse, bad


def backward(logits, targets, lse, scale, ignore_index: int):
    """dlogits = (softmax - onehot) * scale per row; scale is (N,) or (1,) (the same for all rows)."""
    xp = backend.array_module(logits)
    N, V = logits.shape
    d = xp.empty_like(logits)
    stride = 0 if scale.size == 1 else 1
    kernel("crossentropy.cu", "crossentropy_backward")(
        (N,), (threads(),), (logits, targets, lse, scale, np.int32(stride), d, np.int32(N), np.int32(V),
                             np.int64(ignore_index)))
    return d
