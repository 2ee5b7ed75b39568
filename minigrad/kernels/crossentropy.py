"""Launchers for crossentropy.cu: (N, V) float32 or float16 logits, int64 targets, one block per row."""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ._loader import define, fp16, kernel, source_text, zeroed_counters


@functools.lru_cache(maxsize=None)
def threads() -> int:
    return define(source_text("crossentropy.cu"), "CE_THREADS")


def forward(logits, targets, ignore_index: int, weight: float = 1.0):
    """(losses (N,), lse (N,), total (1,)): float32, total = weight * the sum of the losses. A
    target outside [0, V) (and not ignore_index) makes its row's loss NaN."""
    xp = backend.array_module(logits)
    N, V = logits.shape
    losses = xp.empty(N, dtype=np.float32)
    lse = xp.empty(N, dtype=np.float32)
    total = xp.empty(1, dtype=np.float32)
    kernel("crossentropy.cu", "crossentropy_forward", **fp16(logits))(
        (N,), (threads(),), (logits, targets, losses, lse, total, zeroed_counters(logits, 1), np.int32(N),
                             np.int32(V), np.int64(ignore_index), np.float32(weight)))
    return losses, lse, total


def backward(logits, targets, lse, scale, ignore_index: int, mult: float = 1.0):
    """dlogits = (softmax - onehot) * scale * mult per row (logits' dtype); scale is float32, (N,)
    or (1,) (the same for all rows)."""
    xp = backend.array_module(logits)
    N, V = logits.shape
    d = xp.empty_like(logits)
    stride = 0 if scale.size == 1 else 1
    kernel("crossentropy.cu", "crossentropy_backward", **fp16(logits))(
        (N,), (threads(),), (logits, targets, lse, scale, np.int32(stride), np.float32(mult), d, np.int32(N),
                             np.int32(V), np.int64(ignore_index)))
    return d
