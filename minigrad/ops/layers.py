"""The transformer's per-layer ops with hand-derived backward: embedding, layer_norm, gelu,
dropout. Each forward works in few passes over memory (in-place updates, no float64 temporaries)
and keeps only what its backward needs. On the GPU (float32 or float16), layer_norm and gelu
(and the embedding's backward) run fused kernels from minigrad/kernels instead."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend, checks, kernels
from ..autograd import offered
from ..backend import array_module
from ..tensor import Function, Tensor
from .common import raw, segment_sum


class EmbeddingFn(Function):
    @staticmethod
    def forward(ctx, w, idx):
        ctx.save_for_backward(idx)
        ctx.w_shape = w.shape
        return w[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved
        if kernels.use_fused(g):  # CUDA: sorted segment sums, deterministic (minigrad/kernels)
            # added into the table's gradient so far (a tied head's) or written into its slot of
            # the optimizer's flat buffer, when the engine offers either
            into = offered(ctx, 0, ctx.w_shape, g.dtype, "grad_sum")
            if into is None:
                into = offered(ctx, 0, ctx.w_shape, g.dtype)
                if into is not None:
                    into.fill(0)
            return kernels.embedding_backward(idx, g, ctx.w_shape, into=into)
        xp = array_module(g)
        gw = xp.zeros(ctx.w_shape, dtype=g.dtype)
        flat = idx.reshape(-1)
        if flat.size == 0:
            return gw  # no rows picked (and a segment sum cannot take an empty array)
        # repeated ids must add up: sum the rows of each id first, in a fixed order (no atomics,
        # so the gradient is the same bits every run), then write each row of gw at most once
        ids, sums = segment_sum(xp, g.reshape(-1, ctx.w_shape[1]), flat)
        gw[ids] = sums
        return gw


def embedding(idx: Any, w: Tensor) -> Tensor:
    """Rows of `w` picked by integer ids `idx` (any shape): output idx.shape + (dim,).

    Ids on the host are checked there, before they are copied to the device; ids already on the
    device are checked there, which reads the result back (a host sync)."""
    idx = raw(idx)
    xp = array_module(w.data)
    host = array_module(idx) is np
    idx = np.asarray(idx) if host else idx
    checks.int_dtype("embedding", "idx", idx)
    n = w.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"embedding ids must be in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")
    return EmbeddingFn.apply(w, idx=xp.asarray(idx) if host else idx)


class LayerNormFn(Function):
    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        xp = array_module(x)
        mu = x.mean(axis=-1, keepdims=True)
        xhat = x - mu
        var = xp.mean(xhat * xhat, axis=-1, keepdims=True)
        var += x.dtype.type(eps)
        rstd = 1.0 / xp.sqrt(var)
        xhat *= rstd
        out = xhat * w
        out += b
        ctx.save_for_backward(xhat, rstd, w)
        return out

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved
        need = ctx.needs_input_grad
        lead = tuple(range(g.ndim - 1))
        gw = (g * xhat).sum(axis=lead) if need[1] else None
        gb = g.sum(axis=lead) if need[2] else None
        gx = None
        if need[0]:
            gxhat = g * w
            # d xhat / d x projects out the mean and the xhat direction: that is the whole formula
            m1 = gxhat.mean(axis=-1, keepdims=True)
            m2 = (gxhat * xhat).mean(axis=-1, keepdims=True)
            gxhat -= m1
            gxhat -= xhat * m2
            gxhat *= rstd
            gx = gxhat
        return gx, gw, gb


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise over the last axis, then scale by w and shift by b."""
    width = x.shape[-1:]
    if w.shape != width or b.shape != width:
        bad = "w" if w.shape != width else "b"
        raise ValueError(f"layer_norm: {bad} of shape {(w if bad == 'w' else b).shape} does not fit x of "
                         f"shape {x.shape} (expected {width}: one per element of x's last axis)")
    eps = checks.number("layer_norm", "eps", eps, lo=0)
    if kernels.use_fused(x.data, w.data, b.data):
        return kernels.FusedLayerNorm.apply(x, w, b, eps=eps)
    return LayerNormFn.apply(x, w, b, eps=eps)


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class GeluFn(Function):
    """GELU in its tanh form, as GPT-2: 0.5 x (1 + tanh(k (x + c x^3)))."""

    @staticmethod
    def forward(ctx, x):
        xp = array_module(x)
        t = x * x
        t *= _GELU_C * _GELU_K
        t += _GELU_K
        t *= x                      # k * (x + c x^3)
        xp.tanh(t, out=t)
        out = t + 1.0
        out *= x
        out *= 0.5
        ctx.save_for_backward(x, t)
        return out

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved
        # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)
        inner = x * x
        inner *= 3 * _GELU_C * _GELU_K
        inner += _GELU_K
        inner *= x
        sech2 = 1.0 - t * t
        inner *= sech2
        inner += t
        inner += 1.0
        inner *= 0.5
        inner *= g
        return inner


def gelu(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """GELU (tanh form) of x, or of x + bias (bias over the last axis): a linear layer's bias
    given here is added in the same pass on the GPU."""
    if bias is None:
        return kernels.FusedGelu.apply(x) if kernels.use_fused(x.data) else GeluFn.apply(x)
    if kernels.use_fused(x.data, bias.data) and bias.shape == x.shape[-1:]:
        return kernels.FusedGelu.apply(x, bias)
    return GeluFn.apply(x + bias)


class DropoutFn(Function):
    @staticmethod
    def forward(ctx, x, p=0.5):
        # from (seed, call counter), not a generator: exact resume on every backend
        keep = backend.dropout_keep(array_module(x), x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = x.dtype.type(1.0 / (1.0 - p))
        out = x * keep
        out *= ctx.scale
        return out

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved
        out = g * keep
        out *= ctx.scale
        return out


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training."""
    p = checks.number("dropout", "p", p, 0.0, 1.0, hi_open=True)
    if not training or p == 0.0:
        return x
    return DropoutFn.apply(x, p=p)


def bias_residual(x: Tensor, bias: Tensor, residual: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """residual + dropout(x + bias), how a transformer sub-block ends (its output projection's
    bias, dropout, the residual stream); without a residual, dropout(x + bias) (GPT-2's token
    plus position embeddings). `bias` broadcasts over x's leading axes: a Linear's bias (C,), or
    positions (T, C). dropout_p applies as given (0 outside training).

    On a GPU one kernel each way (kernels.FusedBiasResidual), the dropout mask drawn inside: the
    bits F.dropout would draw, and the same step of the dropout counter; the composite ops elsewhere."""
    p = checks.number("bias_residual", "dropout_p", dropout_p, 0.0, 1.0, hi_open=True)
    fits = bias.ndim <= x.ndim and x.shape[x.ndim - bias.ndim:] == bias.shape and \
        (residual is None or residual.shape == x.shape)
    tensors = (x, bias) if residual is None else (x, bias, residual)
    if fits and kernels.use_fused(*(t.data for t in tensors)):
        return kernels.FusedBiasResidual.apply(*tensors, dropout_p=p)
    out = dropout(x + bias, p)
    return out if residual is None else residual + out
