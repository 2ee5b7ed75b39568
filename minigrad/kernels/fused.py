"""The fused ops as autograd Functions over the CUDA kernels (CuPy float32 only).

The public functions of minigrad/ops/ (layer_norm, gelu, scaled_dot_product_attention,
cross_entropy; EmbeddingFn.backward) apply these when `use_fused` says so; each Function keeps what its
kernels' backward needs (LayerNorm: x, mean, rstd; attention: q, k, v, o and one lse per row)
rather than what the composite ops keep.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Function, Tensor
from . import attention, bias_residual as _bias_residual, crossentropy, embedding, gelu, layernorm


def _c(a):
    return backend.cupy().ascontiguousarray(a)


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
        dx, dw, db = layernorm.backward(_c(g).reshape(x2.shape), x2, w, mean, rstd, need[0], need[1] or need[2])
        return (dx.reshape(ctx.shape) if need[0] else None, dw if need[1] else None, db if need[2] else None)


class FusedGelu(Function):
    @staticmethod
    def forward(ctx, x):
        x = _c(x)
        ctx.save_for_backward(x)
        return gelu.forward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return gelu.backward(x, _c(g))


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
        db = _bias_residual.bias_grad(_c(g).reshape(-1, ctx.C)) if need[1] else None
        return (g if need[0] else None, db, g if need[2] else None)


class FusedAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal=True, scale=1.0):
        T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
        q3, k3, v3 = _c(q).reshape(-1, T, D), _c(k).reshape(-1, S, D), _c(v).reshape(-1, S, D)
        o, lse = attention.forward(q3, k3, v3, scale, is_causal)    # (BH, T, D), (BH, T)
        ctx.save_for_backward(q3, k3, v3, o, lse)
        ctx.shapes, ctx.scale, ctx.causal = (q.shape, k.shape, v.shape), scale, is_causal
        return o.reshape(q.shape)

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, o, lse = ctx.saved
        dq, dk, dv = attention.backward(q3, k3, v3, o, lse, _c(g).reshape(o.shape), ctx.scale, ctx.causal)
        return tuple(d.reshape(s) for d, s in zip((dq, dk, dv), ctx.shapes))


class FusedCrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        cp = backend.cupy()
        V = logits.shape[-1]
        x2 = _c(logits).reshape(-1, V)                               # (N, V)
        t = cp.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
        losses, lse, bad = crossentropy.forward(x2, t, ignore_index)
        if int(bad[0]):  # the one host sync: the composite op raises here too
            raise IndexError(f"cross_entropy targets must be in [0, {V}) or equal ignore_index={ignore_index}")
        n_valid = (t != ignore_index).sum()                            # stays on the device
        ctx.save_for_backward(x2, t, lse)
        ctx.n_valid, ctx.reduction, ctx.shape, ctx.ignore_index = n_valid, reduction, logits.shape, ignore_index
        if reduction == "mean":
            return losses.sum() / n_valid.astype(np.float32)  # 0 / 0 = nan when every row is ignored
        if reduction == "sum":
            return losses.sum()
        if reduction == "none":
            return losses.reshape(targets.shape)
        raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")

    @staticmethod
    def backward(ctx, g):
        cp = backend.cupy()
        x2, t, lse = ctx.saved
        if ctx.reduction == "none":
            scale = cp.ascontiguousarray(g.reshape(-1), dtype=np.float32)
        elif ctx.reduction == "mean":
            scale = (g / cp.maximum(ctx.n_valid, 1)).astype(np.float32).reshape(1)
        else:
            scale = g.astype(np.float32).reshape(1)
        return crossentropy.backward(x2, t, lse, scale, ctx.ignore_index).reshape(ctx.shape)


def embedding_backward(idx, g, w_shape: tuple[int, int]):
    """The (n, C) gradient of an embedding table from the output gradient g (idx.shape + (C,))."""
    return embedding.backward(idx.reshape(-1), _c(g).reshape(-1, w_shape[1]), w_shape[0])


def bias_residual(x: Tensor, bias: Tensor, residual: Tensor) -> Tensor:
    """x + bias + residual (bias over the last axis): one kernel on CuPy, the composite elsewhere."""
    from . import use_fused
    if use_fused(x.data, bias.data, residual.data) and x.shape == residual.shape and bias.shape == x.shape[-1:]:
        return FusedBiasResidual.apply(x, bias, residual)
    return x + bias + residual
