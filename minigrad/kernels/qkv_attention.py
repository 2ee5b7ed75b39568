"""Self-attention straight from the QKV projection's output, on the tensor-core kernels.

`flash_attention_qkv(qkv)` takes the (B, T, 3, H, D) view of a fused QKV projection and returns
the (B, T, H, D) attention output, ready to be seen as (B, T, C) by the output projection: no
split of q, k, v, no transposes, no copies; its gradient is one (B, T, 3, H, D) array, written by
the kernels without a zero fill. It equals

    q, k, v = qkv.permute(2, 0, 3, 1, 4)                                    # (B, H, T, D) each
    F.scaled_dot_product_attention(q, k, v, is_causal, dropout_p=p).transpose(1, 2)

with the same dropout mask (the same counter step and bits as backend.dropout_keep), up to float16
rounding: the kernels take float16 (float32 inputs are cast in and the results cast back, which
is how a tf32 run uses them). `attention_qkv` chooses: the kernels where `flash_fits` (CuPy,
float16 or float32, a head size in flash_attention.HEAD_DIMS, MINIGRAD_FUSED not 0), the
composite op above elsewhere (NumPy, the stand-in, float64).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..ops.attention import scaled_dot_product_attention
from ..tensor import Function, Tensor
from . import enabled, flash_attention


def _kernel_ready(cp, a):
    """a as a contiguous float16 array whose first element sits on 16 bytes (the kernels load rows
    16 bytes at a time); no copy when it already is one."""
    a = cp.ascontiguousarray(a, dtype=np.float16)
    address = a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data  # CuPy, or NumPy under the CPU emulator
    return a if address % 16 == 0 else a.copy()


class FlashAttentionQKV(Function):
    @staticmethod
    def forward(ctx, qkv, causal=True, dropout_p=0.0, scale=None):
        cp = backend.cupy()
        flash_attention.check_shape(qkv.shape)
        D = qkv.shape[-1]
        x16 = _kernel_ready(cp, qkv)  # no copy when the projection ran in float16
        drop = flash_attention.Dropout(*backend.next_dropout_key(dropout_p), dropout_p) if dropout_p > 0 else None
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        o, lse = flash_attention.forward(x16, scale, causal, drop)  # (B, T, H, D), (B, H, T)
        ctx.save_for_backward(x16, o, lse)
        ctx.scale, ctx.causal, ctx.drop, ctx.dtype = scale, causal, drop, qkv.dtype
        return o if qkv.dtype == np.float16 else o.astype(qkv.dtype)

    @staticmethod
    def backward(ctx, g):
        cp = backend.cupy()
        x16, o, lse = ctx.saved
        g16 = _kernel_ready(cp, g)
        dqkv = flash_attention.backward(x16, o, lse, g16, ctx.scale, ctx.causal, ctx.drop)  # (B, T, 3, H, D)
        return dqkv if ctx.dtype == np.float16 else dqkv.astype(ctx.dtype)


def flash_attention_qkv(qkv: Tensor, is_causal: bool = True, dropout_p: float = 0.0,
                        scale: float | None = None) -> Tensor:
    """Attention over qkv (B, T, 3, H, D): the (B, T, H, D) output (see the module's docstring)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {dropout_p}")
    return FlashAttentionQKV.apply(qkv, causal=is_causal, dropout_p=float(dropout_p), scale=scale)


def flash_fits(qkv) -> bool:
    """Whether the kernels take this (B, T, 3, H, D) array: CuPy, float16 or float32, a head size
    and grid they cover, and MINIGRAD_FUSED not 0."""
    cp = backend._cupy  # None until something asked for "cuda": then nothing here is CuPy
    if cp is None or not enabled() or not isinstance(qkv, cp.ndarray) or qkv.dtype not in (np.float16, np.float32):
        return False
    try:
        flash_attention.check_shape(qkv.shape)
    except ValueError:
        return False
    return True


def attention_qkv(qkv: Tensor, is_causal: bool = True, dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """Attention over a fused QKV projection qkv (B, T, 3, H, D): the (B, T, H, D) output, from
    the tensor-core kernels where they fit, else from the composite op over the split heads."""
    if flash_fits(qkv.data):
        return flash_attention_qkv(qkv, is_causal, dropout_p, scale)
    heads = qkv.permute(2, 0, 3, 1, 4)                                      # (3, B, H, T, D)
    out = scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=is_causal, dropout_p=dropout_p,
                                       scale=scale)
    return out.transpose(1, 2)                                              # (B, T, H, D)
