"""Dropout drawn inside a kernel (dropout.cuh): the (key, threshold) a launch takes.

A kernel keeps element i of what it masks when dropout.cuh's hash of (key, i) >= threshold: the
bits of backend.dropout_keep, which draws the same stream for the composite ops. `Dropout.draw(p)`
takes the next key from backend.next_dropout_key, so a fused op advances the dropout counter
exactly as the composite op it replaces (one step per mask): a run keeps its masks, and its
exact resume, whichever path runs.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend


class Dropout(NamedTuple):
    """Element i is kept when element i of the hash stream `key` is >= threshold; kept ones are
    scaled by 1 / (1 - p)."""
    key: int
    threshold: int
    p: float

    @classmethod
    def draw(cls, p: float) -> "Dropout | None":
        """The next mask's key (the dropout counter advances by one), or None for p == 0."""
        return cls(*backend.next_dropout_key(p), p) if p > 0.0 else None


def kernel_args(drop: Dropout | None) -> tuple:
    """(key, threshold, keep scale) as the kernels take them: (0, 0, 1) keeps everything, unscaled."""
    if drop is None:
        return np.uint64(0), np.uint32(0), np.float32(1.0)
    return np.uint64(drop.key), np.uint32(drop.threshold), np.float32(1.0 / (1.0 - drop.p))


def keep_mask(drop: Dropout | None, n: int, xp=np):
    """The n flat mask bits a kernel draws (bool, all True without dropout): for NumPy twins."""
    if drop is None:
        return xp.ones(n, dtype=bool)
    return backend.hash_stream(xp, n, drop.key) >= np.uint32(drop.threshold)
