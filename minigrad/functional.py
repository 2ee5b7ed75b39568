"""Fused ops with hand-derived backward, where composing primitives would be slow or memory-hungry.

Import as `import minigrad.functional as F`. Each op writes its forward in few passes over memory
(in-place updates, no float64 temporaries) and keeps only what its backward needs.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, kernels
from .backend import array_module
from .ops import segment_sum
from .tensor import Function, Tensor


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


# ---------------------------------------------------------------- linear
class Linear(Function):
    """y = x @ w + b with w of shape (in, out); leading axes flattened into one 2-D BLAS call.

    With transposed=True, w is (out, in) and y = x @ w.T: a tied output head reads the
    embedding table this way, and its gradient then comes out in the table's own layout.
    """

    @staticmethod
    def forward(ctx, x, w, b=None, transposed=False):
        n_in = w.shape[1] if transposed else w.shape[0]
        if x.shape[-1] != n_in:
            raise ValueError(f"linear: input of shape {tuple(x.shape)} does not fit a weight of shape "
                             f"{tuple(w.shape)}{' (transposed)' if transposed else ''} "
                             f"(last axis {x.shape[-1]} != {n_in})")
        x2 = x.reshape(-1, x.shape[-1])
        out = x2 @ (w.T if transposed else w)
        if b is not None:
            out += b
        ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None,
                              w if ctx.needs_input_grad[0] else None)
        ctx.x_shape, ctx.transposed = x.shape, transposed
        return out.reshape(x.shape[:-1] + (out.shape[1],))

    @staticmethod
    def backward(ctx, g):
        x2, w = ctx.saved
        g2 = g.reshape(-1, g.shape[-1])
        need = ctx.needs_input_grad
        gx = gw = None
        if need[0]:
            gx = (g2 @ (w if ctx.transposed else w.T)).reshape(ctx.x_shape)
        # an optimizer's flat gradient buffer may be offered for w and b (see Tensor.backward)
        dest = ctx.grad_out or (None, None, None)
        xp = array_module(g2)
        if need[1]:
            a, c = (g2.T, x2) if ctx.transposed else (x2.T, g2)
            gw = xp.matmul(a, c, out=dest[1]) if _fits(dest[1], a.shape[0], c.shape[1], g2.dtype) else a @ c
        gb = None
        if len(need) > 2 and need[2]:
            gb = g2.sum(axis=0, out=dest[2]) if _fits(dest[2], g2.shape[1], None, g2.dtype) else g2.sum(axis=0)
        return gx, gw, gb


def _fits(dest, rows: int, cols: int | None, dtype) -> bool:
    """Whether an offered output array has the result's shape and dtype."""
    shape = (rows,) if cols is None else (rows, cols)
    return dest is not None and dest.shape == shape and dest.dtype == dtype


def linear(x: Tensor, w: Tensor, b: Tensor | None = None, transposed: bool = False) -> Tensor:
    """x @ w + b for w of shape (in, out); with transposed=True, w is (out, in)."""
    if b is None:
        return Linear.apply(x, w, transposed=transposed)
    return Linear.apply(x, w, b, transposed=transposed)


# ---------------------------------------------------------------- embedding
class Embedding(Function):
    @staticmethod
    def forward(ctx, w, idx):
        ctx.save_for_backward(idx)
        ctx.w_shape = w.shape
        return w[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved
        if kernels.use_fused(g):  # CUDA: sorted segment sums, deterministic (minigrad/kernels)
            return kernels.embedding_backward(idx, g, ctx.w_shape)
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


def embedding(idx, w: Tensor) -> Tensor:
    """Rows of `w` picked by integer ids `idx` (any shape): output idx.shape + (dim,)."""
    idx = _raw(idx)
    xp = array_module(w.data)
    idx = xp.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding ids must be integers, got {idx.dtype}")
    n = w.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"embedding ids must be in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")
    return Embedding.apply(w, idx=idx)


# ---------------------------------------------------------------- layer norm
class LayerNorm(Function):
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
    if kernels.use_fused(x.data, w.data, b.data):
        return kernels.FusedLayerNorm.apply(x, w, b, eps=eps)
    return LayerNorm.apply(x, w, b, eps=eps)


# ---------------------------------------------------------------- GELU (tanh form, as GPT-2)
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class Gelu(Function):
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


def gelu(x: Tensor) -> Tensor:
    if kernels.use_fused(x.data):
        return kernels.FusedGelu.apply(x)
    return Gelu.apply(x)


# ---------------------------------------------------------------- softmax family
def _softmax_into(s, axis):
    """Softmax of `s` computed in place (s is overwritten)."""
    xp = array_module(s)
    s -= s.max(axis=axis, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=axis, keepdims=True)
    return s


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        out = _softmax_into(x.copy(), axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved
        gx = g * p
        gx -= p * gx.sum(axis=ctx.axis, keepdims=True)
        return gx


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        out = x - x.max(axis=axis, keepdims=True)
        out -= xp.log(xp.exp(out).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (logp,) = ctx.saved
        xp = array_module(g)
        gx = xp.exp(logp)
        gx *= g.sum(axis=ctx.axis, keepdims=True)
        return g - gx


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Softmax.apply(x, axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return LogSoftmax.apply(x, axis=axis)


# ---------------------------------------------------------------- cross-entropy
_CE_ROWS = 64  # rows per block: a (64, 50257) float32 block stays in cache while it is reduced


def _logsumexp_rows(x2):
    """log(sum(exp(row))) for each row of a 2-D array, in row blocks to bound the temporary."""
    xp = array_module(x2)
    n = x2.shape[0]
    lse = xp.empty(n, dtype=x2.dtype)
    for i in range(0, n, _CE_ROWS):
        blk = x2[i:i + _CE_ROWS]
        m = blk.max(axis=1, keepdims=True)
        e = blk - m
        xp.exp(e, out=e)
        lse[i:i + _CE_ROWS] = xp.log(e.sum(axis=1)) + m[:, 0]
    return lse


class CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        xp = array_module(logits)
        V = logits.shape[-1]
        x2 = logits.reshape(-1, V)
        t = targets.reshape(-1)
        valid = t != ignore_index
        t_safe = xp.where(valid, t, 0)
        if t.size and (int(t_safe.min()) < 0 or int(t_safe.max()) >= V):
            raise IndexError(f"cross_entropy targets must be in [0, {V}) or equal ignore_index={ignore_index}")
        rows = xp.arange(x2.shape[0])
        lse = _logsumexp_rows(x2)
        losses = lse - x2[rows, t_safe]
        losses *= valid
        n_valid = int(valid.sum())
        ctx.save_for_backward(x2, lse, t_safe, valid)
        ctx.reduction, ctx.n_valid, ctx.shape = reduction, n_valid, logits.shape
        if reduction == "mean":
            return (losses.sum() / x2.dtype.type(n_valid)) if n_valid else xp.asarray(np.nan, x2.dtype)
        if reduction == "sum":
            return losses.sum()
        if reduction == "none":
            return losses.reshape(targets.shape)
        raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")

    @staticmethod
    def backward(ctx, g):
        x2, lse, t, valid = ctx.saved
        xp = array_module(x2)
        # d loss / d logits = softmax - onehot, computed straight into the gradient array
        grad = x2 - lse[:, None]
        xp.exp(grad, out=grad)
        grad[xp.arange(grad.shape[0]), t] -= 1
        if ctx.reduction == "none":
            scale = g.reshape(-1, 1) * valid[:, None]
        else:
            scale = valid[:, None] * (g / max(ctx.n_valid, 1) if ctx.reduction == "mean" else g)
        grad *= scale.astype(grad.dtype, copy=False)
        return grad.reshape(ctx.shape)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Cross-entropy over the last axis of `logits` with integer class `targets`.

    Rows whose target is `ignore_index` add nothing, and the mean is over the other rows, as in
    PyTorch. The log-softmax is computed once and no probability tensor is kept: backward
    recomputes softmax - onehot directly into the gradient.
    """
    targets = array_module(logits.data).asarray(_raw(targets))
    if logits.dtype == np.float16:
        # float16 mixed precision: the log-sum-exp over the vocabulary and the loss in float32
        # (as autocast does); the gradient goes back to float16 through the cast
        logits = logits.astype(np.float32)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {tuple(targets.shape)} do not match "
                         f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    if kernels.use_fused(logits.data) and reduction in ("mean", "sum", "none"):
        return kernels.FusedCrossEntropy.apply(logits, targets=targets, ignore_index=ignore_index, reduction=reduction)
    return CrossEntropy.apply(logits, targets=targets, ignore_index=ignore_index, reduction=reduction)


# ---------------------------------------------------------------- attention
def _keep_mask(xp, T: int, S: int, is_causal: bool, attn_mask):
    """Boolean (.., T, S) mask of the positions a query may attend to, or None for all."""
    keep = None
    if is_causal:
        # with a KV cache the T queries are the last T of S positions
        keep = xp.tril(xp.ones((T, S), dtype=bool), k=S - T)
    if attn_mask is not None:
        keep = attn_mask if keep is None else (keep & attn_mask)
    return keep


class ScaledDotProductAttention(Function):
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
        keep = _keep_mask(xp, T, S, is_causal, attn_mask)
        if keep is not None:
            # a large finite value rather than -inf: a row with nothing to attend to (a left
            # padding query) then gets uniform weights instead of NaN
            xp.copyto(s, xp.finfo(s.dtype).min, where=~keep)  # in place: no second (B, H, T, S)
        p = _softmax_into(s, -1)
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
        # softmax backward: ds = p * (dp - sum(dp * p))
        row = (gp * p).sum(axis=-1, keepdims=True)
        gp -= row
        gp *= p
        if keep is not None:
            gp *= keep  # a fully masked row has uniform p, but its scores were constants
        gq = (gp @ k) * ctx.scale if need[0] else None
        gk = xp.swapaxes(gp, -1, -2) @ qs if need[1] else None
        return gq, gk, gv


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 attn_mask=None, dropout_p: float = 0.0,
                                 scale: float | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) v on (B, H, T, D) inputs.

    `attn_mask` is boolean and broadcastable to (B, H, T, S): True where a query may attend
    (PyTorch's convention). With `is_causal`, query i sees keys up to i + S - T, which is what
    decoding with a KV cache needs.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape}")
    mask = _raw(attn_mask)
    if mask is not None:
        mask = array_module(q.data).asarray(mask).astype(bool, copy=False)
    if kernels.attention_fits(q.data, k.data, v.data, is_causal, mask, float(dropout_p)):
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return kernels.FusedAttention.apply(q, k, v, is_causal=is_causal, scale=s)
    return ScaledDotProductAttention.apply(q, k, v, is_causal=is_causal, attn_mask=mask,
                                           dropout_p=float(dropout_p), scale=scale)


# ---------------------------------------------------------------- dropout
class Dropout(Function):
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
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)


def relu(x: Tensor) -> Tensor:
    return x.relu()


Tensor.softmax = lambda x, axis=-1: softmax(x, axis)
Tensor.log_softmax = lambda x, axis=-1: log_softmax(x, axis)
