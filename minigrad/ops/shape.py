"""Shape and indexing ops: reshape, permute/transpose, indexing (gather), concatenate/split.
Their backwards move the gradient back into the input's layout; reshape and permute return views
of the incoming gradient (allowed: see the rule in autograd.GradLedger's docstring)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import checks
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
    axis = checks.axis("unsqueeze", axis, x.ndim + 1)  # a new axis may go after the last
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x: Tensor, axis: int | None = None) -> Tensor:
    if axis is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    axis = checks.axis("squeeze", axis, x.ndim)
    if x.shape[axis] != 1:
        return x
    return reshape(x, x.shape[:axis] + x.shape[axis + 1:])


class PermuteFn(Function):
    @staticmethod
    def forward(ctx, a, dims):
        ctx.dims = dims  # checked by permute() or built by transpose(): in [0, ndim), each once
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(tuple(np.argsort(ctx.dims)))


def permute(x: Tensor, *dims: Any) -> Tensor:
    return PermuteFn.apply(x, dims=checks.permutation("permute", _dims(dims), x.ndim))


def transpose(x: Tensor, axis0: int | None = None, axis1: int | None = None) -> Tensor:
    """Swap axes axis0 and axis1; with neither given, reverse them all (x.T)."""
    if axis0 is None and axis1 is None:
        return PermuteFn.apply(x, dims=tuple(reversed(range(x.ndim))))
    a = checks.axis("transpose", axis0, x.ndim, "axis0")
    b = checks.axis("transpose", axis1, x.ndim, "axis1")
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
    if isinstance(index, tuple):
        index = tuple(_index_item(i) for i in index)
    else:
        index = _index_item(index)
    return GetItemFn.apply(x, index=index)


def _index_item(i: Any) -> Any:
    """One item of an index, its dtype checked (a float array or number is a TypeError: NumPy
    would say IndexError, which Python keeps for an index out of range)."""
    if isinstance(i, Tensor):
        i = i.data
    if hasattr(i, "dtype"):
        checks.int_dtype("getitem", "index", i, "iub")
    elif isinstance(i, list) and i:  # NumPy turns a list into an array: a list of floats would be a float index
        checks.int_dtype("getitem", "index", np.asarray(i), "iub")
    elif isinstance(i, float):
        raise TypeError(f"getitem: index must hold integers, slices or booleans, got float {i!r}")
    return i


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
    tensors = checks.tensor_list("cat", "tensors", tensors, Tensor)
    first = tensors[0]
    if first.ndim == 0:
        raise ValueError("cat: tensors[0] is 0-d, and a 0-d tensor has no axis to join along (stack() adds one)")
    axis = checks.axis("cat", axis, first.ndim)
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != first.dtype:  # NumPy would upcast silently, and backward hand back the wider dtype
            raise TypeError(f"cat: tensors[{i}] is {t.dtype}, tensors[0] is {first.dtype}: cast one first")
        if t.ndim != first.ndim or t.shape[:axis] + t.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:]:
            raise ValueError(f"cat: tensors[{i}] of shape {t.shape} does not fit tensors[0] of shape "
                             f"{first.shape} (only axis {axis} may differ)")
    return ConcatFn.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors of one shape along a new axis (torch.stack)."""
    tensors = checks.tensor_list("stack", "tensors", tensors, Tensor)
    axis = checks.axis("stack", axis, tensors[0].ndim + 1)
    for i, t in enumerate(tensors[1:], 1):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensors[{i}] of shape {t.shape} differs from tensors[0] of shape "
                             f"{tensors[0].shape}")
    return cat([unsqueeze(t, axis) for t in tensors], axis=axis)


def split(x: Tensor, size_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """torch.split: pieces of `size` along axis, or of the listed sizes."""
    axis = checks.axis("split", axis, x.ndim)
    n = x.shape[axis]
    if isinstance(size_or_sections, (list, tuple)):
        sizes = [checks.integer("split", "size_or_sections", s, 0) for s in size_or_sections]
        if sum(sizes) != n:
            raise ValueError(f"split: size_or_sections {sizes} do not add up to {n} along axis {axis}")
    else:
        size = checks.integer("split", "size_or_sections", size_or_sections, 1)
        sizes = [min(size, n - i) for i in range(0, n, size)]
    pieces, start = [], 0
    for s in sizes:
        index = (slice(None),) * axis + (slice(start, start + s),)
        pieces.append(getitem(x, index))
        start += s
    return pieces


def chunk(x: Tensor, chunks: int, axis: int = 0) -> list[Tensor]:
    """At most `chunks` pieces of equal size along axis, the last one smaller (torch.chunk)."""
    chunks = checks.integer("chunk", "chunks", chunks, 1)
    axis = checks.axis("chunk", axis, x.ndim)
    return split(x, max(-(-x.shape[axis] // chunks), 1), axis)
