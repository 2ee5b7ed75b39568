"""Launchers for gelu.cu (elementwise over contiguous float32 or float16 device arrays, with an
optional bias over the last axis)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import fp16, kernel

_THREADS = 256
_MAX_BLOCKS = 8192  # grid-stride loops cover the rest


def _grid(n: int) -> int:
    return max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))


def _bias(x, bias):
    """(bias array, C) as the kernels take them: C = 0 and any array for no bias."""
    return (x, np.int32(0)) if bias is None else (bias, np.int32(bias.size))


def forward(x, bias=None):
    """gelu(x + bias)."""
    out = backend.array_module(x).empty_like(x)
    kernel("gelu.cu", "gelu_forward", **fp16(x))((_grid(x.size),), (_THREADS,), (x, *_bias(x, bias), out,
                                                                                  np.int64(x.size)))
    return out


def backward(x, dout, bias=None):
    """d gelu(x + bias) / dx, times dout."""
    dx = backend.array_module(x).empty_like(x)
    kernel("gelu.cu", "gelu_backward", **fp16(x))((_grid(x.size),), (_THREADS,), (x, *_bias(x, bias), dout, dx,
                                                                                   np.int64(x.size)))
    return dx
