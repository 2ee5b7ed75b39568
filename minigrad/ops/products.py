"""Matrix products: batched matmul, and linear (x @ w + b as one 2-D BLAS call)."""
from __future__ import annotations

from typing import Any

from ..backend import array_module
from ..tensor import Function, Tensor
from .elementwise import _binary
from .common import unbroadcast


class MatMulFn(Function):
    """a @ b, batched with broadcasting over leading axes (both at least 1-D)."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul shape mismatch: {tuple(a.shape)} @ {tuple(b.shape)}")
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None,
                              b if ctx.needs_input_grad[0] else None)
        ctx.shapes = a.shape, b.shape
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        sa, sb = ctx.shapes
        xp = array_module(g)
        ga = gb = None
        # promote 1-D operands to matrices as matmul itself does, then undo it (b's axis first:
        # for vector @ vector the gradient is 0-d and becomes (1, 1))
        g2 = g
        if len(sb) == 1:
            g2 = xp.expand_dims(g2, -1)
        if len(sa) == 1:
            g2 = xp.expand_dims(g2, -2)
        if ctx.needs_input_grad[0]:
            b2 = b.reshape(-1, 1) if b.ndim == 1 else b
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            if len(sa) == 1:
                ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
            ga = unbroadcast(ga, sa)
        if ctx.needs_input_grad[1]:
            a2 = a.reshape(1, -1) if a.ndim == 1 else a
            gb = xp.swapaxes(a2, -1, -2) @ g2
            if len(sb) == 1:
                gb = gb[..., 0]
            gb = unbroadcast(gb, sb)
        return ga, gb


def matmul(a: Any, b: Any) -> Tensor:
    return _binary(MatMulFn, a, b)


class LinearFn(Function):
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
        # an optimizer's flat gradient buffer may be offered for w and b (see autograd.GradLedger.offer)
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
        return LinearFn.apply(x, w, transposed=transposed)
    return LinearFn.apply(x, w, b, transposed=transposed)
