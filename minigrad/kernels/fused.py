"""The fused ops as autograd Functions over the CUDA kernels (float32 or float16 device arrays).

The public functions of minigrad/ops/ (layer_norm, gelu, scaled_dot_product_attention,
causal_self_attention, cross_entropy; EmbeddingFn.backward) send a call here when `use_fused`
says so; each Function keeps what its
kernels' backward needs (LayerNorm: x, mean, rstd; attention: q, k, v, o and one lse per row)
rather than what the composite ops keep. Where the engine offers one (autograd.GradLedger), a
backward writes a parameter's gradient straight into its slot of the optimizer's flat buffer
(ctx.grad_out), or adds an input's gradient into the sum that input already has (ctx.grad_sum).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import offered
from ..tensor import Function, Tensor
from . import attention, bias_residual as _bias_residual, crossentropy, embedding, gelu, layernorm


def _c(a):
    return backend.array_module(a).ascontiguousarray(a)


class FusedLayerNorm(Function):
    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        C = x.shape[-1]
        x2 = _c(x).reshape(-1, C)                                     # (N, C)
        out, mean, rstd = layernorm.forward(x2, _c(w), _c(b), eps)
        ctx.save_for_backward(x2, _c(w), mean, rstd)
        ctx.shape = x.shape
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x2, w, mean, rstd = ctx.saved
        need = ctx.needs_input_grad
        C = w.shape[0]
        into = offered(ctx, 0, ctx.shape, x2.dtype, "grad_sum") if need[0] else None  # the residual's sum
        dw, db = (offered(ctx, i, (C,), w.dtype) for i in (1, 2))
        dx, dw, db = layernorm.backward(_c(g).reshape(x2.shape), x2, w, mean, rstd, need[0], need[1] or need[2],
                                        dx=None if into is None else into.reshape(x2.shape), dw=dw, db=db)
        if need[0]:
            dx = into if into is not None else dx.reshape(ctx.shape)
        return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None)


class FusedGelu(Function):
    """gelu(x + bias), the bias (optional) over the last axis added in the same pass."""

    @staticmethod
    def forward(ctx, x, bias=None):
        x, bias = _c(x), None if bias is None else _c(bias)
        ctx.save_for_backward(x, bias)
        return gelu.forward(x, bias)

    @staticmethod
    def backward(ctx, g):
        x, bias = ctx.saved
        dx = gelu.backward(x, _c(g), bias)
        if bias is None:
            return dx
        return dx, _bias_grad(ctx, 1, dx)


def _bias_grad(ctx, i: int, d):
    """The gradient of input i, a bias over the last axis of the gradient d: d's column sums
    (into the parameter's slot of the optimizer's flat buffer when offered); None if not needed."""
    if not ctx.needs_input_grad[i]:
        return None
    C = d.shape[-1]
    return _bias_residual.bias_grad(_c(d).reshape(-1, C), out=offered(ctx, i, (C,), d.dtype))


class FusedBiasResidual(Function):
    @staticmethod
    def forward(ctx, x, bias, residual):
        C = x.shape[-1]
        ctx.C = C
        out = _bias_residual.forward(_c(x).reshape(-1, C), _c(bias), _c(residual).reshape(-1, C))
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        need = ctx.needs_input_grad
        return (g if need[0] else None, _bias_grad(ctx, 1, g), g if need[2] else None)


class FusedAttention(Function):
    """scaled_dot_product_attention on the float32 kernels; float16 q, k, v are cast around them."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=True, scale=1.0):
        T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
        q3, k3, v3 = (_f32(a).reshape(-1, n, D) for a, n in ((q, T), (k, S), (v, S)))
        o, lse = attention.forward(q3, k3, v3, scale, is_causal)    # (BH, T, D), (BH, T)
        ctx.save_for_backward(q3, k3, v3, o, lse)
        ctx.shapes, ctx.scale, ctx.causal, ctx.dtype = (q.shape, k.shape, v.shape), scale, is_causal, q.dtype
        return o.reshape(q.shape).astype(q.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, o, lse = ctx.saved
        dq, dk, dv = attention.backward(q3, k3, v3, o, lse, _f32(g).reshape(o.shape), ctx.scale, ctx.causal)
        return tuple(d.reshape(s).astype(ctx.dtype, copy=False) for d, s in zip((dq, dk, dv), ctx.shapes))


def _f32(a):
    """a as a contiguous float32 array (one copy at most: the cast and the layout in one pass)."""
    xp = backend.array_module(a)
    return xp.ascontiguousarray(a) if a.dtype == np.float32 else a.astype(np.float32, order="C")


class FusedSelfAttention(Function):
    """Causal self-attention from GPT-2's packed projection qkv (B, T, 3C) (plus its bias, when
    given) to (B, T, C): one pass adds the bias and puts q, k and v in the kernels' layout
    (3, B * H, T, D), float32; the attention kernels run on it; one copy puts the output back
    with the heads side by side, in qkv's dtype. Backward likewise: one copy of the gradient in,
    the kernels, one copy out (and the bias's gradient, its column sums)."""

    @staticmethod
    def forward(ctx, qkv, bias=None, n_head=1, scale=1.0):
        xp = backend.array_module(qkv)
        B, T, C3 = qkv.shape
        H, D = n_head, C3 // 3 // n_head
        heads = xp.empty((3, B, H, T, D), dtype=np.float32)
        split = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
        if bias is None:
            heads[...] = split
        else:
            xp.add(split, bias.reshape(3, 1, H, 1, D), out=heads, dtype=np.float32)
        ctx.has_bias = bias is not None
        q, k, v = heads.reshape(3, B * H, T, D)
        o, lse = attention.forward(q, k, v, scale, True)             # (BH, T, D), (BH, T)
        y = xp.empty((B, T, H, D), dtype=qkv.dtype)
        y[...] = o.reshape(B, H, T, D).transpose(0, 2, 1, 3)
        ctx.save_for_backward(heads, o, lse)
        ctx.scale = scale
        return y.reshape(B, T, H * D)

    @staticmethod
    def backward(ctx, g):
        heads, o, lse = ctx.saved
        xp = backend.array_module(g)
        _, B, H, T, D = heads.shape
        go = xp.empty((B, H, T, D), dtype=np.float32)
        go[...] = g.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        q, k, v = heads.reshape(3, B * H, T, D)
        dheads = xp.empty_like(heads)
        d = dheads.reshape(3, B * H, T, D)
        attention.backward(q, k, v, o, lse, go.reshape(B * H, T, D), ctx.scale, True, out=(d[0], d[1], d[2]))
        dqkv = xp.empty((B, T, 3, H, D), dtype=g.dtype)
        dqkv[...] = dheads.transpose(1, 3, 0, 2, 4)
        dqkv = dqkv.reshape(B, T, 3 * H * D)
        return (dqkv, _bias_grad(ctx, 1, dqkv)) if ctx.has_bias else dqkv


class FusedCrossEntropy(Function):
    """The mean (or sum) comes out of the forward kernel itself. `n_valid`: the rows whose target
    is not ignore_index, when the caller counted them on the host; else counted on the device."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean", n_valid=None):
        xp = backend.array_module(logits)
        V = logits.shape[-1]
        x2 = _c(logits).reshape(-1, V)                               # (N, V), float32 or float16
        t = xp.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")
        weight = 1.0
        if reduction == "mean" and n_valid is not None:
            weight = 1.0 / n_valid if n_valid else float("nan")      # 0 / 0 = nan when every row is ignored
        elif reduction == "mean":
            n_valid = (t != ignore_index).sum()                      # stays on the device
        losses, lse, total = crossentropy.forward(x2, t, ignore_index, weight)
        ctx.save_for_backward(x2, t, lse)
        ctx.n_valid, ctx.reduction, ctx.shape, ctx.ignore_index = n_valid, reduction, logits.shape, ignore_index
        if reduction == "none":
            return losses.reshape(targets.shape)
        if reduction == "mean" and not isinstance(n_valid, int):
            return total.reshape(()) / n_valid.astype(np.float32)
        return total.reshape(())

    @staticmethod
    def backward(ctx, g):
        xp = backend.array_module(g)
        x2, t, lse = ctx.saved
        scale, mult = xp.ascontiguousarray(g.reshape(-1), dtype=np.float32), 1.0
        if ctx.reduction == "mean":
            if isinstance(ctx.n_valid, int):
                mult = 1.0 / max(ctx.n_valid, 1)
            else:
                scale = (scale / xp.maximum(ctx.n_valid, 1)).astype(np.float32)
        return crossentropy.backward(x2, t, lse, scale, ctx.ignore_index, mult).reshape(ctx.shape)


def embedding_backward(idx, g, w_shape: tuple[int, int], into=None):
    """The (n, C) gradient of an embedding table from the output gradient g (idx.shape + (C,)),
    added into `into` when given (a contiguous (n, C) array of g's dtype)."""
    return embedding.backward(idx.reshape(-1), _c(g).reshape(-1, w_shape[1]), w_shape[0], out=into)


def bias_residual(x: Tensor, bias: Tensor, residual: Tensor) -> Tensor:
    """x + bias + residual (bias over the last axis): one kernel on the GPU, the composite elsewhere."""
    from . import use_fused
    if use_fused(x.data, bias.data, residual.data) and x.shape == residual.shape and bias.shape == x.shape[-1:]:
        return FusedBiasResidual.apply(x, bias, residual)
    return x + bias + residual
