"""Launchers for flash_attention.cu, the tensor-core attention over the QKV projection's output.

qkv (B, T, 3, H, D) and dout (B, T, H, D): contiguous float16 CuPy arrays, and the projection's
bias (3, H, D) float16 or None (added as the kernels read q, k, v); the output o is (B, T, H, D)
float16, lse (B, H, T) float32, the gradient dqkv (B, T, 3, H, D) float16 (that of qkv, and of the
bias: its column sums). Head sizes 16, 32, 64 (GPT-2's) and 128; above 64 the backward kernels run
in two parts (flash_attention.cu's PART). Dropout on the attention probabilities is a
dropout.Dropout (key, threshold) from backend.next_dropout_key, or None.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ._loader import define, kernel, source_text
from .dropout import Dropout, kernel_args

FILE = "flash_attention.cu"
HEAD_DIMS = (16, 32, 64, 128)  # each is its own build; tests/test_kernel_resources.py checks them all
__all__ = ["Dropout", "FILE", "HEAD_DIMS", "tiles", "parts", "variants", "check_shape", "forward", "backward",
           "dropout_bits"]


@functools.lru_cache(maxsize=None)
def tiles(D: int) -> dict[str, int]:
    """The tiles compiled for head size D: THREADS, BM, BKV, and BN / BQB / BKQ for this D."""
    text = source_text(FILE)
    size = "SMALL" if D <= 64 else "LARGE"
    t = {name: define(text, name) for name in ("THREADS", "BM", "BKV")}
    t.update({name: define(text, f"{name}_{size}") for name in ("BN", "BQB", "BKQ")})
    return t


def parts(D: int) -> tuple[int, ...]:
    """The PART values the backward kernels are built with for head size D (see the .cu)."""
    return (0,) if D <= 64 else (1, 2)


def variants() -> list[tuple[dict[str, int], list[str]]]:
    """Every (defines, kernels) this module launches, for `python -m minigrad.kernels --resources`."""
    out = [({}, ["flash_dropout_bits"])]  # dropout_bits builds with the file's default HEAD_DIM
    for D in HEAD_DIMS:
        fwd = ["flash_forward", "flash_backward_preprocess"]
        if parts(D) == (0,):
            out.append(({"HEAD_DIM": D}, fwd + ["flash_backward_dkdv", "flash_backward_dq"]))
        else:
            out.append(({"HEAD_DIM": D}, fwd))
            out += [({"HEAD_DIM": D, "PART": p}, ["flash_backward_dkdv", "flash_backward_dq"]) for p in parts(D)]
    return out


def check_shape(shape: tuple[int, ...]) -> None:
    """Raise ValueError unless (B, T, 3, H, D) is a shape these kernels take."""
    if len(shape) != 5 or shape[2] != 3:
        raise ValueError(f"flash attention takes qkv of shape (B, T, 3, H, D), got {shape}")
    B, T, _, H, D = shape
    if D not in HEAD_DIMS:
        raise ValueError(f"flash attention takes head sizes {HEAD_DIMS}, got {D}")
    if B * H >= 65536 or B * T * H >= 2 ** 31 or min(B, T, H) < 1:
        raise ValueError(f"flash attention: (B, T, H) = {(B, T, H)} is out of the grid's range")


def _k(name: str, D: int, part: int = 0):
    return kernel(FILE, name, HEAD_DIM=D, **({"PART": part} if part else {}))


def _scalars(scale: float, causal: bool, drop: Dropout | None) -> tuple:
    return (np.float32(scale), np.int32(causal)) + kernel_args(drop)


def forward(qkv, scale: float, causal: bool, drop: Dropout | None = None, bias=None):
    """(o (B, T, H, D) float16, lse (B, H, T) float32) of attention over qkv (B, T, 3, H, D) (+ bias)."""
    cp = backend.array_module(qkv)
    check_shape(qkv.shape)
    B, T, _, H, D = qkv.shape
    t = tiles(D)
    o = cp.empty((B, T, H, D), dtype=np.float16)
    lse = cp.empty((B, H, T), dtype=np.float32)
    _k("flash_forward", D)(((T + t["BM"] - 1) // t["BM"], B * H), (t["THREADS"],),
                           (qkv, bias, o, lse, np.int32(T), np.int32(H)) + _scalars(scale, causal, drop))
    return o, lse


def backward(qkv, o, lse, dout, scale: float, causal: bool, drop: Dropout | None = None, bias=None):
    """dqkv (B, T, 3, H, D) float16 from the forward's qkv (and bias), o, lse and dout = d loss / d o."""
    cp = backend.array_module(qkv)
    B, T, _, H, D = qkv.shape
    t = tiles(D)
    rows = B * T * H
    delta = cp.empty((B, H, T), dtype=np.float32)
    warps = t["THREADS"] // 32
    _k("flash_backward_preprocess", D)(((rows + warps - 1) // warps,), (t["THREADS"],),
                                       (o, dout, delta, np.int32(T), np.int32(H), np.int32(rows)))
    dqkv = cp.empty_like(qkv)  # every element is written below: dq by the dq kernel, dk and dv by dkdv
    args = (qkv, bias, dout, lse, delta, dqkv, np.int32(T), np.int32(H)) + _scalars(scale, causal, drop)
    for part in parts(D):
        _k("flash_backward_dkdv", D, part)(((T + t["BKV"] - 1) // t["BKV"], B * H), (t["THREADS"],), args)
        _k("flash_backward_dq", D, part)(((T + t["BM"] - 1) // t["BM"], B * H), (t["THREADS"],), args)
    return dqkv


def dropout_bits(key: int, start: int, n: int):
    """Elements start .. start + n - 1 of the hash stream `key` as the kernels draw them (for the tests)."""
    cp = backend.cupy()
    out = cp.empty(n, dtype=np.uint32)
    kernel(FILE, "flash_dropout_bits")(((n + 255) // 256,), (256,), (out, np.uint64(key), np.uint64(start), np.int32(n)))
    return out
