"""The softmax family: softmax, log_softmax, cross_entropy (and attention, in attention.py, uses
the same two helpers). The arithmetic is written once here:

- softmax_into: subtract the maximum (so exp cannot overflow), exp, divide by the sum; in place.
- logsumexp: max + log(sum(exp(x - max))), the same shift; logsumexp_rows does it in row blocks.
- softmax_backward: p * (g - sum(g * p)), the gradient through a softmax.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import checks, kernels
from ..backend import array_module
from ..tensor import Function, Tensor
from .common import raw


def softmax_into(s, axis: int = -1):
    """Softmax of `s` along `axis`, computed in place (s is overwritten and returned)."""
    checks.axis("softmax_into", axis, s.ndim)
    xp = array_module(s)
    s -= s.max(axis=axis, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=axis, keepdims=True)
    return s


def logsumexp(x, axis: int = -1):
    """log(sum(exp(x))) along `axis` (kept, size 1), shifted by the maximum as softmax_into is."""
    checks.axis("logsumexp", axis, x.ndim)
    xp = array_module(x)
    m = x.max(axis=axis, keepdims=True)
    e = x - m
    xp.exp(e, out=e)
    out = xp.log(e.sum(axis=axis, keepdims=True))
    out += m
    return out


def softmax_backward(p, g, axis: int = -1, out=None):
    """Gradient through p = softmax(s): p * (g - sum(g * p)). With out=g it overwrites g, for a
    caller whose g is its own temporary."""
    checks.axis("softmax_backward", axis, g.ndim)
    xp = array_module(g)
    row = (g * p).sum(axis=axis, keepdims=True)
    out = xp.subtract(g, row, out=out)
    out *= p
    return out


class SoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        out = softmax_into(x.copy(), axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved
        return softmax_backward(p, g, ctx.axis)


class LogSoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        out = x - logsumexp(x, axis)
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
    return SoftmaxFn.apply(x, axis=checks.axis("softmax", axis, x.ndim))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return LogSoftmaxFn.apply(x, axis=checks.axis("log_softmax", axis, x.ndim))


_CE_ROWS = 64  # rows per block: a (64, 50257) float32 block stays in cache while it is reduced


def logsumexp_rows(x2):
    """logsumexp of each row of a 2-D array, in blocks of rows to bound the temporary."""
    xp = array_module(x2)
    n = x2.shape[0]
    lse = xp.empty(n, dtype=x2.dtype)
    for i in range(0, n, _CE_ROWS):
        lse[i:i + _CE_ROWS] = logsumexp(x2[i:i + _CE_ROWS], axis=1)[:, 0]
    return lse


class CrossEntropyFn(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean", n_valid=None):
        """n_valid: the rows not ignored, when the caller counted them (and checked the targets)
        on the host; else both are done here, reading the device (host syncs)."""
        xp = array_module(logits)
        V = logits.shape[-1]
        x2 = logits.reshape(-1, V)
        t = targets.reshape(-1)
        valid = t != ignore_index
        t_safe = xp.where(valid, t, 0)
        if n_valid is None:
            if t.size and (int(t_safe.min()) < 0 or int(t_safe.max()) >= V):
                raise IndexError(_bad_targets(V, ignore_index))
            n_valid = int(valid.sum())
        rows = xp.arange(x2.shape[0])
        lse = logsumexp_rows(x2)
        losses = lse - x2[rows, t_safe]
        losses *= valid
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


def _bad_targets(V: int, ignore_index: int) -> str:
    return f"cross_entropy targets must be in [0, {V}) or equal ignore_index={ignore_index}"


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Cross-entropy over the last axis of `logits` with integer class `targets`.

    Rows whose target is `ignore_index` add nothing, and the mean is over the other rows, as in
    PyTorch. The log-softmax is computed once and no probability tensor is kept: backward
    recomputes softmax - onehot directly into the gradient. float16 logits: the log-sum-exp and
    the loss in float32 (as autocast does), the loss float32.

    Targets on the host are checked there (IndexError), and counted, before they are copied to
    the device. Targets already on the device are not read back on the GPU (that would be a host
    sync every step): there a target out of range makes its row's loss NaN instead, which a
    training loop's check of the loss reports.
    """
    targets = raw(targets)
    host = array_module(targets) is np
    targets = np.asarray(targets) if host else targets
    checks.int_dtype("cross_entropy", "targets", targets)
    ignore_index = checks.integer("cross_entropy", "ignore_index", ignore_index)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction={reduction!r} is not one of 'mean', 'sum', 'none'")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {tuple(targets.shape)} do not match "
                         f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    V, n_valid = logits.shape[-1], None
    if host:  # check and count here: no device read needed
        valid = targets != ignore_index
        if targets.size and np.any(valid & ((targets < 0) | (targets >= V))):
            raise IndexError(_bad_targets(V, ignore_index))
        n_valid = int(valid.sum())
    targets = array_module(logits.data).asarray(targets)
    if kernels.use_fused(logits.data) and reduction in ("mean", "sum", "none"):
        return kernels.FusedCrossEntropy.apply(logits, targets=targets, ignore_index=ignore_index, reduction=reduction,
                                               n_valid=n_valid)
    if logits.dtype == np.float16:  # the gradient goes back to float16 through the cast
        logits = logits.astype(np.float32)
    return CrossEntropyFn.apply(logits, targets=targets, ignore_index=ignore_index, reduction=reduction,
                                n_valid=n_valid)
