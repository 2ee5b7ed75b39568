"""Shape and indexing ops: reshape, permute/transpose, indexing (gather), concatenate/split.
Their backwards move the gradient back into the input's layout; reshape and permute return views
of the incoming gradient (allowed: see tensor._GradLedger's rule)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..autograd import offered
from ..backend import array_module
from ..tensor import Function, Tensor
from .common import scatter_add


class ReshapeFn(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {tuple(a.shape)} to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


def _dims(dims: tuple) -> tuple:
    """Axes given as f(x, 1, 0) or as f(x, (1, 0))."""
    return tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    return ReshapeFn.apply(x, shape=_dims(shape))


def unsqueeze(x: Tensor, axis: int) -> Tensor:
    axis = axis % (x.ndim + 1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x: Tensor, axis: int | None = None) -> Tensor:
    if axis is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    axis = axis % x.ndim
    if x.shape[axis] != 1:
        return x
    return reshape(x, x.shape[:axis] + x.shape[axis + 1:])


class PermuteFn(Function):
    @staticmethod
    def forward(ctx, a, dims):
        if sorted(d % a.ndim for d in dims) != list(range(a.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a permutation of the {a.ndim} axes of {tuple(a.shape)}")
        ctx.dims = tuple(d % a.ndim for d in dims)
        return a.transpose(ctx.dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(tuple(np.argsort(ctx.dims)))


def permute(x: Tensor, *dims: Any) -> Tensor:
    return PermuteFn.apply(x, dims=_dims(dims))


def transpose(x: Tensor, a: int | None = None, b: int | None = None) -> Tensor:
    """Swap axes a and b; with no axes, reverse them all (x.T)."""
    if a is None:
        return PermuteFn.apply(x, dims=tuple(reversed(range(x.ndim))))
    dims = list(range(x.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return PermuteFn.apply(x, dims=tuple(dims))


def _is_basic_index(index) -> bool:
    """Slices, ints, None and Ellipsis only: no position can repeat, so backward can assign."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class GetItemFn(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        basic = _is_basic_index(ctx.index)
        out = offered(ctx, 0, ctx.shape, g.dtype, "grad_sum")  # the input's gradient so far: add into it
        if out is not None:
            if basic:
                out[ctx.index] += g
            else:
                scatter_add(xp, out, ctx.index, g)
            return out
        out = offered(ctx, 0, ctx.shape, g.dtype)  # a parameter's slot in the optimizer's flat buffer
        if out is not None:
            out.fill(0)
        else:
            out = xp.zeros(ctx.shape, dtype=g.dtype)
        if basic:
            out[ctx.index] = g
        else:
            scatter_add(xp, out, ctx.index, g)
        return out


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index]: integers, slices, None, Ellipsis, and integer or boolean arrays (or Tensors)."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItemFn.apply(x, index=index)


class ConcatFn(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        cuts = np.cumsum(ctx.sizes)[:-1].tolist()  # host ints: a NumPy array is data to CuPy
        return tuple(xp.split(g, cuts, axis=ctx.axis))


def cat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Concatenate along an existing axis (torch.cat)."""
    return ConcatFn.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    return cat([unsqueeze(t, axis) for t in tensors], axis=axis)


def split(x: Tensor, size_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """torch.split: pieces of `size` along axis, or of the listed sizes."""
    n = x.shape[axis]
    if isinstance(size_or_sections, int):
        sizes = [min(size_or_sections, n - i) for i in range(0, n, size_or_sections)]
    else:
        sizes = list(size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split sizes {sizes} do not add up to {n} along axis {axis}")
    pieces, start = [], 0
    axis = axis % x.ndim
    for s in sizes:
        index = (slice(None),) * axis + (slice(start, start + s),)
        pieces.append(getitem(x, index))
        start += s
    return pieces


def chunk(x: Tensor, chunks: int, axis: int = 0) -> list[Tensor]:
    n = x.shape[axis]
    return split(x, -(-n // chunks), axis)
