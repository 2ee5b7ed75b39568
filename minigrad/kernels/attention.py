"""Launchers for attention.cu. q, o: (BH, T, D); k, v: (BH, S, D); contiguous float32, D <= 64."""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ._loader import define, kernel, source_text

MAX_HEAD_DIM = 64  # the shared-memory tiles are sized for this (48 KB static limit)


@functools.lru_cache(maxsize=None)
def tiles() -> dict[str, int]:
    """The tile sizes compiled into attention.cu (BQ, BK, BKB, BQB, BQD, BKD)."""
    text = source_text("attention.cu")
    return {name: define(text, name) for name in ("BQ", "BK", "BKB", "BQB", "BQD", "BKD")}


def _k(name: str, D: int):
    return kernel("attention.cu", name, HEAD_DIM=D)


def forward(q, k, v, scale: float, causal: bool):
    """(o (BH, T, D), lse (BH, T)); with causal, query i sees keys j <= i + S - T (needs S >= T)."""
    xp = backend.array_module(q)
    BH, T, D = q.shape
    S = k.shape[1]
    t = tiles()
    o = xp.empty_like(q)
    lse = xp.empty((BH, T), dtype=np.float32)
    _k("attention_forward", D)(((T + t["BQ"] - 1) // t["BQ"], BH), (t["BQ"],),
                               (q, k, v, o, lse, np.int32(T), np.int32(S), np.float32(scale), np.int32(causal)))
    return o, lse


def backward(q, k, v, o, lse, dout, scale: float, causal: bool, out=None):
    """(dq, dk, dv), each the shape of its input; written into `out` (three contiguous float32
    arrays of those shapes) when given."""
    xp = backend.array_module(q)
    BH, T, D = q.shape
    S = k.shape[1]
    t = tiles()
    delta = xp.empty((BH, T), dtype=np.float32)
    rows_per_block = 8
    _k("attention_backward_preprocess", D)(((BH * T + rows_per_block - 1) // rows_per_block,), (32 * rows_per_block,),
                                           (o, dout, delta, np.int64(BH * T)))
    dq, dk, dv = out if out is not None else (xp.empty_like(q), xp.empty_like(k), xp.empty_like(v))
    args = (np.int32(T), np.int32(S), np.float32(scale), np.int32(causal))
    _k("attention_backward_dkdv", D)(((S + t["BKB"] - 1) // t["BKB"], BH), (t["BKB"],),
                                     (q, k, v, dout, lse, delta, dk, dv) + args)
    _k("attention_backward_dq", D)(((T + t["BQD"] - 1) // t["BQD"], BH), (t["BQD"],),
                                   (q, k, v, dout, lse, delta, dq) + args)
    return dq, dk, dv
