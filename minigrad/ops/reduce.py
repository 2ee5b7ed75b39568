"""Reductions over axes: sum, mean, max. Backward spreads the reduced gradient back over the
reduced axes (shared equally among ties for max)."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..backend import array_module
from ..tensor import Function, Tensor

Axis = int | tuple[int, ...] | None


def _expand_reduced(g, shape, axes, keepdims):
    """Reshape a reduced gradient so that it broadcasts back over the input's shape."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return g


class SumFn(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, checks.axes("sum", axis, a.ndim), keepdims
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims)
        return array_module(g).broadcast_to(g, ctx.shape).copy()


class MeanFn(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, checks.axes("mean", axis, a.ndim), keepdims
        return a.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        n = int(np.prod([ctx.shape[i] for i in ctx.axes]))
        return SumFn.backward(ctx, g / g.dtype.type(max(n, 1)))  # the mean is the sum over n


class MaxFn(Function):
    """Gradient shared equally among ties (as torch.amax)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = checks.axes("max", axis, a.ndim)
        out = a.max(axis=axes, keepdims=True)
        ctx.save_for_backward(a == out)
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in axes])

    @staticmethod
    def backward(ctx, g):
        (hit,) = ctx.saved
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims)
        count = hit.sum(axis=ctx.axes, keepdims=True).astype(g.dtype)
        return hit * (g / count)


def sum_(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """x.sum(axis, keepdims) (named with an underscore so as not to hide Python's sum)."""
    return SumFn.apply(x, axis=axis, keepdims=keepdims)


def mean(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return MeanFn.apply(x, axis=axis, keepdims=keepdims)


def max_(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """x.max(axis, keepdims) (named with an underscore so as not to hide Python's max)."""
    return MaxFn.apply(x, axis=axis, keepdims=keepdims)
