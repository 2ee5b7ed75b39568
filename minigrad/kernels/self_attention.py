"""Causal self-attention straight from the QKV projection, on the attention kernels.

GPT-2's c_attn writes q, k and v side by side: qkv (B, T, 3C) is (B, T, 3, H, D) by head, and
the kernels read it in place through strides (no split into q, k, v, no transposes, no copies),
add the projection's bias as they read, draw the dropout mask inside, write the output (B, T, H, D),
which the output projection reads as (B, T, C), and the gradient as one (B, T, 3, H, D) array,
every element written once (no zero fill). Which kernels:

    float16                 flash_attention.cu   tensor cores (mma.sync), float32 accumulation
    float32 under TF32      flash_attention.cu   qkv + bias cast to float16 in one pass, the output
                                                 and the gradient cast back (backend.set_tf32)
    float32                 attention.cu         CUDA cores, float32 throughout: the reference

The op is minigrad.ops.attention.causal_self_attention, whose composite path (NumPy,
MINIGRAD_FUSED=0) gives the same numbers to float16 rounding (float32: to float32 rounding) and
the same dropout mask: one key from backend.next_dropout_key, element (b, h, i, j) of the
(B, H, T, T) probabilities.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Function
from . import attention, flash_attention, use_fused
from .dropout import Dropout
from .fused import bias_grad_of


def tensor_cores(dtype, D: int) -> bool:
    """Whether attention in `dtype` with head size D runs on the tensor-core kernels: float16, or
    float32 under TF32, with a head size they are built for."""
    return D in flash_attention.HEAD_DIMS and (dtype == np.float16 or (dtype == np.float32 and backend.tf32_enabled()))


def fits(qkv, n_head: int, bias=None) -> bool:
    """Whether FusedSelfAttention covers causal self-attention over this packed qkv (B, T, 3C)
    (and bias (3C,)): device arrays of one dtype (kernels.use_fused), heads the kernels take."""
    arrays = (qkv,) if bias is None else (qkv, bias)
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) or not use_fused(*arrays):
        return False
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    if B * n_head >= 65536 or B * T * n_head >= 2 ** 31:
        return False
    return tensor_cores(qkv.dtype, D) or (qkv.dtype == np.float32 and D <= attention.MAX_HEAD_DIM)


def _aligned(a):
    """a as a contiguous array whose first element sits on 16 bytes (the tensor-core kernels load
    rows 16 bytes at a time); no copy when it already is one."""
    a = backend.array_module(a).ascontiguousarray(a)
    address = a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data  # CuPy, or NumPy under the CPU emulator
    return a if address % 16 == 0 else a.copy()


def _half(x, bias):
    """(qkv, bias) for the tensor-core kernels: float16 as they are (the kernels add the bias);
    float32 (TF32) cast to float16 with the bias added in the same pass, in float32."""
    xp = backend.array_module(x)
    if x.dtype == np.float16:
        return _aligned(x), None if bias is None else xp.ascontiguousarray(bias)
    x16 = xp.empty(x.shape, dtype=np.float16)
    if bias is None:
        x16[...] = x
    else:
        xp.add(x, bias, out=x16)  # float32 sums, each rounded to float16 as it is stored
    return x16, None


class FusedSelfAttention(Function):
    """qkv (B, T, 3C) (+ bias (3C,)) -> (B, T, C): see the module's docstring."""

    @staticmethod
    def forward(ctx, qkv, bias=None, n_head=1, dropout_p=0.0):
        xp = backend.array_module(qkv)
        B, T, C3 = qkv.shape
        H, D = n_head, C3 // 3 // n_head
        x = xp.ascontiguousarray(qkv).reshape(B, T, 3, H, D)      # a view, as c_attn wrote it
        b = None if bias is None else bias.reshape(3, H, D)
        drop = Dropout.draw(dropout_p)                              # the composite op's mask: the next key
        scale = 1.0 / math.sqrt(D)
        ctx.flash = tensor_cores(qkv.dtype, D)
        if ctx.flash:
            x, b = _half(x, b)
            o, lse = flash_attention.forward(x, scale, True, drop, bias=b)   # (B, T, H, D), (B, H, T)
        else:
            b = None if b is None else xp.ascontiguousarray(b)
            o, lse = attention.forward_qkv(x, b, scale, drop)               # (B, T, H, D), (B H, T)
        ctx.save_for_backward(x, b, o, lse)
        ctx.drop, ctx.scale, ctx.dtype, ctx.has_bias = drop, scale, qkv.dtype, bias is not None
        return o.reshape(B, T, H * D).astype(qkv.dtype, copy=False)     # heads side by side: no copy

    @staticmethod
    def backward(ctx, g):
        x, b, o, lse = ctx.saved
        B, T, _, H, D = x.shape
        dout = g.reshape(B, T, H, D)
        if ctx.flash:
            dout = _aligned(dout.astype(np.float16, copy=False))
            dqkv = flash_attention.backward(x, o, lse, dout, ctx.scale, True, ctx.drop, bias=b)
            dqkv = dqkv.astype(ctx.dtype, copy=False)
        else:
            dqkv = attention.backward_qkv(x, b, o, lse, backend.array_module(g).ascontiguousarray(dout), ctx.scale,
                                          ctx.drop)
        dqkv = dqkv.reshape(B, T, 3 * H * D)
        return (dqkv, bias_grad_of(ctx, 1, dqkv)) if ctx.has_bias else dqkv
