"""Scaled dot-product attention, softmax(q k^T / sqrt(D) + mask) v, as one op: the (B, H, T, S)
score matrix is built, masked and normalised in place (softmax_family.softmax_into), and its backward
goes through softmax_family.softmax_backward. On a GPU, maskless calls run the fused kernels
(dropout drawn inside them), and causal_self_attention reads q, k, v straight out of the QKV
projection (kernels/self_attention.py)."""
from __future__ import annotations

import math
from typing import Any

from .. import backend, checks, kernels
from ..backend import array_module
from ..tensor import Function, Tensor
from .common import raw
from .softmax_family import softmax_backward, softmax_into


def keep_mask(xp, T: int, S: int, is_causal: bool, attn_mask):
    """Boolean (.., T, S) mask of the positions a query may attend to, or None for all."""
    if attn_mask is not None:
        checks.int_dtype("keep_mask", "attn_mask", attn_mask, "biu")
    keep = None
    if is_causal:
        # with a KV cache the T queries are the last T of S positions
        keep = xp.tril(xp.ones((T, S), dtype=bool), k=S - T)
    if attn_mask is not None:
        keep = attn_mask if keep is None else (keep & attn_mask)
    return keep


class AttentionFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal=True, attn_mask=None, dropout_p=0.0, scale=None):
        xp = array_module(q)
        T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
        scale = q.dtype.type(1.0 / math.sqrt(D) if scale is None else scale)
        # NumPy's stacked matmul calls BLAS only on arrays with BLAS-friendly strides; q, k, v
        # usually arrive as strided views of one qkv projection, which would take a slow loop
        k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
        qs = q * scale
        s = qs @ xp.swapaxes(k, -1, -2)                        # (B, H, T, S)
        keep = keep_mask(xp, T, S, is_causal, attn_mask)
        if keep is not None:
            # a large finite value rather than -inf: a row with nothing to attend to (a left
            # padding query) then gets uniform weights instead of NaN
            xp.copyto(s, xp.finfo(s.dtype).min, where=~keep)  # in place: no second (B, H, T, S)
        p = softmax_into(s, -1)
        drop = None
        if dropout_p > 0.0:
            drop = backend.dropout_keep(xp, p.shape, dropout_p)
            pd = p * drop
            pd *= p.dtype.type(1.0 / (1.0 - dropout_p))
        else:
            pd = p
        out = pd @ v                                           # (B, H, T, D)
        # causal alone leaves no row empty unless there are more queries than keys (T > S)
        fully_masked_possible = attn_mask is not None or T > S
        ctx.save_for_backward(qs, k, v, p, drop, keep if fully_masked_possible else None)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        return out

    @staticmethod
    def backward(ctx, g):
        qs, k, v, p, drop, keep = ctx.saved
        xp = array_module(g)
        g = xp.ascontiguousarray(g)  # see forward: strided operands leave BLAS out
        need = ctx.needs_input_grad
        if drop is not None:
            keep_scale = p.dtype.type(1.0 / (1.0 - ctx.dropout_p))
            pd = p * drop
            pd *= keep_scale
        else:
            pd = p
        gv = xp.swapaxes(pd, -1, -2) @ g if need[2] else None
        gp = g @ xp.swapaxes(v, -1, -2)                        # d out / d p   (B, H, T, S)
        if drop is not None:
            gp *= drop
            gp *= keep_scale
        gs = softmax_backward(p, gp, -1, out=gp)               # gp is ours: overwrite it
        if keep is not None:
            gs *= keep  # a fully masked row has uniform p, but its scores were constants
        gq = (gs @ k) * ctx.scale if need[0] else None
        gk = xp.swapaxes(gs, -1, -2) @ qs if need[1] else None
        return gq, gk, gv


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 attn_mask: Any = None, dropout_p: float = 0.0,
                                 scale: float | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v on (B, H, T, D) inputs.

    `attn_mask` is boolean and broadcastable to (B, H, T, S): True where a query may attend
    (PyTorch's convention). With `is_causal`, query i sees keys up to i + S - T, which is what
    decoding with a KV cache needs.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    mask = raw(attn_mask)
    if mask is not None:
        mask = array_module(q.data).asarray(mask)
        # booleans (or 0/1), True where a query may attend; a float mask is refused, as it may be
        # an additive one (0 and -inf), which astype(bool) would turn inside out
        checks.int_dtype("scaled_dot_product_attention", "attn_mask", mask, "biu")
        mask = mask.astype(bool, copy=False)
    dropout_p = checks.number("scaled_dot_product_attention", "dropout_p", dropout_p, 0.0, 1.0, hi_open=True)
    if scale is not None:
        scale = checks.number("scaled_dot_product_attention", "scale", scale)
    if kernels.attention_fits(q.data, k.data, v.data, is_causal, mask):
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return kernels.FusedAttention.apply(q, k, v, is_causal=is_causal, scale=s, dropout_p=float(dropout_p))
    return AttentionFn.apply(q, k, v, is_causal=is_causal, attn_mask=mask,
                             dropout_p=float(dropout_p), scale=scale)


def causal_self_attention(qkv: Tensor, n_head: int, dropout_p: float = 0.0, bias: Tensor | None = None) -> Tensor:
    """Causal multi-head self-attention from a packed projection: qkv (B, T, 3C) holds q, k and v
    side by side (GPT-2's c_attn), each split into n_head heads, and `bias` (3C,), when given, is
    the projection's bias; returns (B, T, C), the heads side by side again, with dropout p on the
    attention probabilities.

    It is adding the bias, splitting the heads, scaled_dot_product_attention(q, k, v,
    is_causal=True, dropout_p) and merging them, which is what it does on the CPU (and with
    MINIGRAD_FUSED=0). On a GPU one op does all of it (kernels.FusedSelfAttention): the kernels
    read q, k and v in place, add the bias as they read, draw the dropout mask inside (the same
    bits) and write the output with the heads side by side; float16 (and float32 under TF32) on
    the tensor cores, float32 on the CUDA-core kernels."""
    dropout_p = checks.number("causal_self_attention", "dropout_p", dropout_p, 0.0, 1.0, hi_open=True)
    B, T, C3 = qkv.shape
    if C3 % (3 * n_head) or (bias is not None and bias.shape != (C3,)):
        raise ValueError(f"causal_self_attention: a last axis of {C3} is not 3 x {n_head} heads, "
                         f"or a bias of shape {None if bias is None else bias.shape} does not fit it")
    if kernels.self_attention_fits(qkv.data, n_head, None if bias is None else bias.data):
        args = (qkv,) if bias is None else (qkv, bias)
        return kernels.FusedSelfAttention.apply(*args, n_head=n_head, dropout_p=float(dropout_p))
    if bias is not None:
        qkv = qkv + bias
    D = C3 // 3 // n_head
    heads = qkv.reshape(B, T, 3, n_head, D).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
    y = scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)                 # (B, T, H, D) -> (B, T, C)
