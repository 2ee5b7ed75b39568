"""Elementwise ops: arithmetic (broadcasting, undone in backward), exp/log/tanh/sqrt/relu, casts,
where. Arrays in, arrays out: `xp` is NumPy or CuPy, whichever owns the input, so the same code
runs on both backends."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import checks
from ..backend import array_module
from ..tensor import Function, Tensor
from .common import lift, on_device_of, unbroadcast


class AddFn(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(g, sb) if ctx.needs_input_grad[1] else None)


class SubFn(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(-g, sb) if ctx.needs_input_grad[1] else None)


class MulFn(Function):
    @staticmethod
    def forward(ctx, a, b):
        # keep only what the other side's gradient needs
        ctx.save_for_backward(b if ctx.needs_input_grad[0] else None,
                              a if ctx.needs_input_grad[1] else None)
        ctx.shapes = a.shape, b.shape
        return a * b

    @staticmethod
    def backward(ctx, g):
        b, a = ctx.saved
        sa, sb = ctx.shapes
        return (unbroadcast(g * b, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(g * a, sb) if ctx.needs_input_grad[1] else None)


class DivFn(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.save_for_backward(b, out if ctx.needs_input_grad[1] else None)
        ctx.shapes = a.shape, b.shape
        return out

    @staticmethod
    def backward(ctx, g):
        b, out = ctx.saved
        sa, sb = ctx.shapes
        ga = g / b
        # d(a/b)/db = -a/b^2 = -(a/b)/b
        return (unbroadcast(ga, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(-ga * out, sb) if ctx.needs_input_grad[1] else None)


def _binary(fn: type[Function], a: Any, b: Any) -> Tensor:
    """fn on two operands, at least one a Tensor; a number or array becomes a constant beside it."""
    like = a if isinstance(a, Tensor) else b
    return fn.apply(lift(a, like), lift(b, like))


def add(a: Any, b: Any) -> Tensor:
    return _binary(AddFn, a, b)


def sub(a: Any, b: Any) -> Tensor:
    return _binary(SubFn, a, b)


def mul(a: Any, b: Any) -> Tensor:
    return _binary(MulFn, a, b)


def div(a: Any, b: Any) -> Tensor:
    return _binary(DivFn, a, b)


class NegFn(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class PowFn(Function):
    """a ** p for a constant exponent p."""

    @staticmethod
    def forward(ctx, a, p: float):
        ctx.save_for_backward(a)
        ctx.p = p
        return a ** a.dtype.type(p)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        p = a.dtype.type(ctx.p)
        return g * p * a ** (p - 1)


def power(x: Tensor, p: Any) -> Tensor:
    if isinstance(p, Tensor):
        raise TypeError("tensor ** tensor is not supported; use exp(b * log(a))")
    return PowFn.apply(x, p=float(p))


class ExpFn(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * out


class LogFn(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g / a


class TanhFn(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * (1 - out * out)


class SqrtFn(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g / (2 * out)


class ReluFn(Function):
    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save_for_backward(mask)
        return a * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        return g * mask


def relu(x: Tensor) -> Tensor:
    return ReluFn.apply(x)


class CastFn(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype, copy=False)


def cast(x: Tensor, dtype: Any) -> Tensor:
    return CastFn.apply(x, dtype=np.dtype(dtype))


class WhereFn(Function):
    """cond ? a : b, with cond a constant boolean array."""

    @staticmethod
    def forward(ctx, a, b, cond):
        ctx.save_for_backward(cond)
        ctx.shapes = a.shape, b.shape
        return array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved
        sa, sb = ctx.shapes
        zero = g.dtype.type(0)
        xp = array_module(g)
        return (unbroadcast(xp.where(cond, g, zero), sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(xp.where(cond, zero, g), sb) if ctx.needs_input_grad[1] else None)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise cond ? a : b; gradients flow to a and b, not to the condition."""
    like = a if isinstance(a, Tensor) else b
    return WhereFn.apply(lift(a, like), lift(b, like), cond=_mask("where", "cond", cond, like))


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """Where mask is True, `value`; elsewhere x (no gradient flows to filled places)."""
    fill = Tensor._wrap(array_module(x.data).asarray(value, dtype=x.dtype))
    return WhereFn.apply(fill, x, cond=_mask("masked_fill", "mask", mask, x))


def _mask(fn: str, name: str, mask: Any, like: Tensor) -> Any:
    """A condition on like's device: booleans or integers (nonzero = True), never floats."""
    mask = on_device_of(mask, like.data)
    if hasattr(mask, "dtype"):
        checks.int_dtype(fn, name, mask, "biu")
    elif isinstance(mask, float):
        raise TypeError(f"{fn}: {name} must be booleans, got float {mask!r}")
    return mask
