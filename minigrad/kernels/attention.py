"""Launchers for attention.cu, the float32 attention kernels on CUDA cores (head size <= 64).

Two layouts (attention.cu's `packed`):
- forward / backward: q, o (BH, T, D); k, v (BH, S, D); contiguous float32 (scaled_dot_product_attention);
- forward_qkv / backward_qkv: the QKV projection's output qkv (B, T, 3, H, D) read in place, plus
  its bias (3, H, D) or None, the output o (B, T, H, D), the gradient dqkv (B, T, 3, H, D).
Dropout on the attention probabilities is a dropout.Dropout drawn by the caller, or None.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ._loader import define, kernel, source_text
from .dropout import Dropout, kernel_args

MAX_HEAD_DIM = 64  # the shared-memory tiles are sized for this (48 KB static limit)


@functools.lru_cache(maxsize=None)
def tiles() -> dict[str, int]:
    """The tile sizes compiled into attention.cu (BQ, BK, BKB, BQB, BQD, BKD) and G, the threads
    that share a row (a block of BQ rows has BQ * G threads)."""
    text = source_text("attention.cu")
    return {name: define(text, name) for name in ("G", "BQ", "BK", "BKB", "BQB", "BQD", "BKD")}


def _k(name: str, D: int):
    return kernel("attention.cu", name, HEAD_DIM=D)


def _forward(q, k, v, bias, o, BH: int, T: int, S: int, H: int, packed: bool, scale: float, causal: bool,
             drop: Dropout | None):
    xp = backend.array_module(q)
    t = tiles()
    lse = xp.empty((BH, T), dtype=np.float32)
    _k("attention_forward", q.shape[-1])(
        ((T + t["BQ"] - 1) // t["BQ"], BH), (t["BQ"] * t["G"],),
        (q, k, v, bias, o, lse, np.int32(T), np.int32(S), np.int32(H), np.int32(packed), np.float32(scale),
         np.int32(causal)) + kernel_args(drop))
    return o, lse


def _backward(q, k, v, bias, o, lse, dout, dq, dk, dv, BH: int, T: int, S: int, H: int, packed: bool, scale: float,
              causal: bool, drop: Dropout | None) -> None:
    xp = backend.array_module(q)
    D = q.shape[-1]
    t = tiles()
    delta = xp.empty((BH, T), dtype=np.float32)
    rows_per_block = 8
    _k("attention_backward_preprocess", D)(((BH * T + rows_per_block - 1) // rows_per_block,), (32 * rows_per_block,),
                                           (o, dout, delta, np.int32(T), np.int32(H), np.int32(packed),
                                            np.int64(BH * T)))
    args = (np.int32(T), np.int32(S), np.int32(H), np.int32(packed), np.float32(scale), np.int32(causal)) + \
        kernel_args(drop)
    _k("attention_backward_dkdv", D)(((S + t["BKB"] - 1) // t["BKB"], BH), (t["BKB"] * t["G"],),
                                     (q, k, v, bias, dout, lse, delta, dk, dv) + args)
    _k("attention_backward_dq", D)(((T + t["BQD"] - 1) // t["BQD"], BH), (t["BQD"] * t["G"],),
                                   (q, k, v, bias, dout, lse, delta, dq) + args)


def forward(q, k, v, scale: float, causal: bool, drop: Dropout | None = None):
    """(o (BH, T, D), lse (BH, T)); with causal, query i sees keys j <= i + S - T (needs S >= T)."""
    BH, T, _ = q.shape
    o = backend.array_module(q).empty_like(q)
    return _forward(q, k, v, None, o, BH, T, k.shape[1], 1, False, scale, causal, drop)


def backward(q, k, v, o, lse, dout, scale: float, causal: bool, drop: Dropout | None = None):
    """(dq, dk, dv), each the shape of its input."""
    xp = backend.array_module(q)
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
    BH, T, _ = q.shape
    _backward(q, k, v, None, o, lse, dout, dq, dk, dv, BH, T, k.shape[1], 1, False, scale, causal, drop)
    return dq, dk, dv


def forward_qkv(qkv, bias, scale: float, drop: Dropout | None = None):
    """Causal attention over qkv (B, T, 3, H, D) (+ bias (3, H, D) or None): (o (B, T, H, D), lse (B H, T))."""
    B, T, _, H, D = qkv.shape
    o = backend.array_module(qkv).empty((B, T, H, D), dtype=np.float32)
    return _forward(qkv, qkv, qkv, bias, o, B * H, T, T, H, True, scale, True, drop)


def backward_qkv(qkv, bias, o, lse, dout, scale: float, drop: Dropout | None = None):
    """dqkv (B, T, 3, H, D) from forward_qkv's qkv, bias, o, lse and dout = d loss / d o (B, T, H, D)."""
    B, T, _, H, D = qkv.shape
    dqkv = backend.array_module(qkv).empty_like(qkv)  # every element written: dq by one kernel, dk and dv by the other
    _backward(qkv, qkv, qkv, bias, o, lse, dout, dqkv, dqkv, dqkv, B * H, T, T, H, True, scale, True, drop)
    return dqkv
