"""The fused ops as autograd Functions over the CUDA kernels (float32 or float16 device arrays).

The public functions of minigrad/ops/ (layer_norm, gelu, bias_residual, scaled_dot_product_attention,
cross_entropy; EmbeddingFn.backward) send a call here when `use_fused` says so (causal_self_attention
goes to self_attention.py); each Function keeps what its
kernels' backward needs (LayerNorm: x, mean, rstd; attention: q, k, v, o and one lse per row)
rather than what the composite ops keep. Where the engine offers one (autograd.GradLedger), a
backward writes a parameter's gradient straight into its slot of the optimizer's flat buffer
(ctx.grad_out), or adds an input's gradient into the sum that input already has (ctx.grad_sum).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import offered
from ..tensor import Function
from . import attention, bias_residual as _bias_residual, crossentropy, embedding, gelu, layernorm
from .dropout import Dropout


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
        return dx, bias_grad_of(ctx, 1, dx)


def bias_grad_of(ctx, i: int, d, shape: tuple[int, ...] | None = None, drop: Dropout | None = None):
    """The gradient of input i, a bias of `shape` (default: d's last axis) added to every row of d's
    trailing elements: d's sums over those rows (into the parameter's slot of the optimizer's flat
    buffer when offered); None if not needed. With `drop`, (dx, that sum): dx = d through the
    dropout, summed in the same launch."""
    shape = tuple(d.shape[-1:] if shape is None else shape)
    P, need = int(np.prod(shape)), ctx.needs_input_grad[i]
    into = offered(ctx, i, shape, d.dtype) if need else None
    out = None if into is None else into.reshape(P)
    if drop is not None:
        dx, db = _bias_residual.dropout_bias_grad(_c(d).reshape(-1, P), drop, out=out)
    elif need:
        dx, db = None, _bias_residual.bias_grad(_c(d).reshape(-1, P), out=out)
    else:
        return None
    # the offered array itself: a reshaped view of it would be copied into it again
    db = (into if into is not None else db.reshape(shape)) if need else None
    return db if drop is None else (dx.reshape(d.shape), db)


class FusedBiasResidual(Function):
    """residual + dropout(x + bias), the bias added to every row of x's trailing bias.size
    elements; without a residual, dropout(x + bias). One kernel each way, the mask drawn inside."""

    @staticmethod
    def forward(ctx, x, bias, residual=None, dropout_p=0.0):
        P = bias.size
        ctx.drop = Dropout.draw(dropout_p)  # the composite F.dropout's mask: the next key
        r = None if residual is None else _c(residual).reshape(-1, P)
        out = _bias_residual.forward(_c(x).reshape(-1, P), _c(bias).reshape(P), r, ctx.drop)
        ctx.bias_shape, ctx.has_residual = bias.shape, residual is not None
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        need = ctx.needs_input_grad
        dr = (g if need[2] else None,) if ctx.has_residual else ()
        if ctx.drop is None:  # dx = g: only the bias's sums run
            return (g if need[0] else None, bias_grad_of(ctx, 1, g, ctx.bias_shape)) + dr
        dx, db = bias_grad_of(ctx, 1, g, ctx.bias_shape, ctx.drop)  # one launch: dx and the bias's sums
        return (dx if need[0] else None, db) + dr


class FusedAttention(Function):
    """scaled_dot_product_attention on the float32 kernels, dropout drawn inside; float16 q, k, v
    are cast around them."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=True, scale=1.0, dropout_p=0.0):
        T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
        q3, k3, v3 = (_f32(a).reshape(-1, n, D) for a, n in ((q, T), (k, S), (v, S)))
        ctx.drop = Dropout.draw(dropout_p)  # the composite op's (.., T, S) mask: the next key
        o, lse = attention.forward(q3, k3, v3, scale, is_causal, ctx.drop)    # (BH, T, D), (BH, T)
        ctx.save_for_backward(q3, k3, v3, o, lse)
        ctx.shapes, ctx.scale, ctx.causal, ctx.dtype = (q.shape, k.shape, v.shape), scale, is_causal, q.dtype
        return o.reshape(q.shape).astype(q.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, o, lse = ctx.saved
        dq, dk, dv = attention.backward(q3, k3, v3, o, lse, _f32(g).reshape(o.shape), ctx.scale, ctx.causal, ctx.drop)
        return tuple(d.reshape(s).astype(ctx.dtype, copy=False) for d, s in zip((dq, dk, dv), ctx.shapes))


def _f32(a):
    """a as a contiguous float32 array (one copy at most: the cast and the layout in one pass)."""
    xp = backend.array_module(a)
    return xp.ascontiguousarray(a) if a.dtype == np.float32 else a.astype(np.float32, order="C")


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
