"""Primitive ops: each Function's backward sits right under its forward.

Arrays in, arrays out: `xp` is NumPy or CuPy, whichever owns the input, so the same code runs on
both backends. The bottom of the file attaches these ops to Tensor as operators and methods.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import backend, standin
from .backend import array_module
from .tensor import Context, Function, Tensor


def unbroadcast(grad, shape: tuple[int, ...]):
    """Undo broadcasting: sum `grad` over the axes along which an input of `shape` was stretched."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def scatter_add(xp, target, index, values) -> None:
    """target[index] += values, adding (not overwriting) where an index repeats.

    On CuPy this is cupyx.scatter_add, whose float atomics add repeats in no fixed order: fine for
    indexing's backward, but the embedding's gradient uses segment_sum (deterministic) instead."""
    if xp is np:
        np.add.at(target, index, values)
    elif xp is standin:
        standin.scatter_add(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)


def segment_sum(xp, rows, ids):
    """Sum the rows (N, C) that share an id: (unique ids (U,), sums (U, C)), ids ascending.

    Deterministic on every backend (no atomics): sort the ids, then reduce each run of equal ids.
    NumPy has that reduction (add.reduceat); elsewhere a segmented inclusive scan does it in
    ceil(log2 N) whole-array passes (Hillis-Steele: after the pass with offset d, row i holds the
    sum of the up to 2d rows of its segment ending at i), and the last row of each run is its sum.
    """
    n = ids.shape[0]
    # CuPy's argsort is always stable and takes no `kind`
    order = xp.argsort(ids, kind="stable") if xp is np else xp.argsort(ids)
    ids = ids[order]
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), ids[1:] != ids[:-1]]))
    if xp is np:
        return ids[starts], np.add.reduceat(rows[order], starts, axis=0)
    acc = rows[order]
    seg_start = xp.searchsorted(ids, ids, side="left")          # (N,) where each row's run begins
    pos = xp.arange(n)
    zero = acc.dtype.type(0)
    d = 1
    while d < n:
        same = (pos[d:] - d) >= seg_start[d:]                   # row i - d is in row i's run
        nxt = acc.copy()                                        # read old values only: no overlap
        nxt[d:] += xp.where(same[:, None], acc[:-d], zero)
        acc = nxt
        d *= 2
    ends = xp.concatenate([starts[1:], xp.full(1, n, dtype=starts.dtype)]) - 1
    return ids[starts], acc[ends]


# ---------------------------------------------------------------- elementwise arithmetic
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(g, sb) if ctx.needs_input_grad[1] else None)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(-g, sb) if ctx.needs_input_grad[1] else None)


class Mul(Function):
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


class Div(Function):
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


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
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


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g / a


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * (1 - out * out)


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g / (2 * out)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save_for_backward(mask)
        return a * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        return g * mask


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype, copy=False)


class Where(Function):
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


# ---------------------------------------------------------------- reductions
def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axis)


def _expand_reduced(g, shape, axes, keepdims):
    """Reshape a reduced gradient so that it broadcasts back over the input's shape."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _axes(axis, a.ndim), keepdims
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims)
        return array_module(g).broadcast_to(g, ctx.shape).copy()


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _axes(axis, a.ndim), keepdims
        return a.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        n = int(np.prod([ctx.shape[i] for i in ctx.axes]))
        g = _expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims) / g.dtype.type(max(n, 1))
        return array_module(g).broadcast_to(g, ctx.shape).copy()


class Max(Function):
    """Gradient shared equally among ties (as torch.amax)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _axes(axis, a.ndim)
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


# ---------------------------------------------------------------- matrix multiply
class MatMul(Function):
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


# ---------------------------------------------------------------- shape and indexing
class Reshape(Function):
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


class Permute(Function):
    @staticmethod
    def forward(ctx, a, dims):
        if sorted(d % a.ndim for d in dims) != list(range(a.ndim)):
            raise ValueError(f"permute{tuple(dims)} is not a permutation of the {a.ndim} axes of {tuple(a.shape)}")
        ctx.dims = tuple(d % a.ndim for d in dims)
        return a.transpose(ctx.dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(tuple(np.argsort(ctx.dims)))


def _is_basic_index(index) -> bool:
    """Slices, ints, None and Ellipsis only: no position can repeat, so backward can assign."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        out = xp.zeros(ctx.shape, dtype=g.dtype)
        if _is_basic_index(ctx.index):
            out[ctx.index] = g
        else:
            scatter_add(xp, out, ctx.index, g)
        return out


class Concat(Function):
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


# ---------------------------------------------------------------- public helpers
def _lift(x: Any, like: Tensor) -> Tensor:
    """Turn a Python number or array into a constant tensor with `like`'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    xp = array_module(like.data)
    if isinstance(x, (int, float, bool)) and like.dtype.kind == "f":
        return Tensor._wrap(xp.asarray(x, dtype=like.dtype))
    arr = xp.asarray(x)
    if arr.dtype == np.float64 and like.dtype.kind in "iub" and not hasattr(x, "dtype"):
        arr = arr.astype(np.float32)
    return Tensor._wrap(arr)


def _binary(fn, a, b) -> Tensor:
    a_t = a if isinstance(a, Tensor) else None
    b_t = b if isinstance(b, Tensor) else None
    like = a_t if a_t is not None else b_t
    return fn.apply(_lift(a, like), _lift(b, like))


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def cat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Concatenate along an existing axis (torch.cat)."""
    return Concat.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    return cat([t.unsqueeze(axis) for t in tensors], axis=axis)


def split(x: Tensor, size_or_sections, axis: int = 0) -> list[Tensor]:
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
        pieces.append(x[index])
        start += s
    return pieces


def chunk(x: Tensor, chunks: int, axis: int = 0) -> list[Tensor]:
    n = x.shape[axis]
    return split(x, -(-n // chunks), axis)


def _on_device_of(x, like):
    """x as an array on `like`'s device (an explicit copy when it is elsewhere); scalars as they
    are. CuPy refuses a NumPy condition or operand outright, so a mask built with NumPy (as most
    callers build theirs) must be moved first."""
    x = _raw(x)
    if isinstance(x, (int, float, bool, np.generic)):
        return x
    xp = array_module(like)
    return x if array_module(x) is xp else xp.asarray(backend.to_device(x, "cpu"))


def where(cond, a, b) -> Tensor:
    """Elementwise cond ? a : b; gradients flow to a and b, not to the condition."""
    like = a if isinstance(a, Tensor) else b
    return Where.apply(_lift(a, like), _lift(b, like), cond=_on_device_of(cond, like.data))


# ---------------------------------------------------------------- Tensor methods
def _compare(op):
    def method(self, other):
        return Tensor._wrap(op(self.data, _on_device_of(other, self.data)))
    return method


def _transpose(self, a: int | None = None, b: int | None = None) -> Tensor:
    if a is None:
        return Permute.apply(self, dims=tuple(reversed(range(self.ndim))))
    dims = list(range(self.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return Permute.apply(self, dims=tuple(dims))


def _reshape(self, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(self, shape=tuple(shape))


def _getitem(self, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(self, index=index)


def _pow(self, p):
    if isinstance(p, Tensor):
        raise TypeError("tensor ** tensor is not supported; use exp(b * log(a))")
    return Pow.apply(self, p=float(p))


def _unsqueeze(self, axis: int) -> Tensor:
    axis = axis % (self.ndim + 1)
    return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])


def _squeeze(self, axis: int | None = None) -> Tensor:
    if axis is None:
        return self.reshape(tuple(n for n in self.shape if n != 1))
    axis = axis % self.ndim
    if self.shape[axis] != 1:
        return self
    return self.reshape(self.shape[:axis] + self.shape[axis + 1:])


def _masked_fill(self, mask, value: float) -> Tensor:
    """Where mask is True, `value`; elsewhere self (no gradient flows to filled places)."""
    fill = Tensor._wrap(array_module(self.data).asarray(value, dtype=self.dtype))
    return Where.apply(fill, self, cond=_on_device_of(mask, self.data))


Tensor.__add__ = lambda a, b: _binary(Add, a, b)
Tensor.__radd__ = lambda a, b: _binary(Add, b, a)
Tensor.__sub__ = lambda a, b: _binary(Sub, a, b)
Tensor.__rsub__ = lambda a, b: _binary(Sub, b, a)
Tensor.__mul__ = lambda a, b: _binary(Mul, a, b)
Tensor.__rmul__ = lambda a, b: _binary(Mul, b, a)
Tensor.__truediv__ = lambda a, b: _binary(Div, a, b)
Tensor.__rtruediv__ = lambda a, b: _binary(Div, b, a)
Tensor.__matmul__ = lambda a, b: _binary(MatMul, a, b)
Tensor.__rmatmul__ = lambda a, b: _binary(MatMul, b, a)
Tensor.__neg__ = lambda a: Neg.apply(a)
Tensor.__pow__ = _pow
Tensor.__getitem__ = _getitem
Tensor.__lt__ = _compare(lambda a, b: a < b)
Tensor.__le__ = _compare(lambda a, b: a <= b)
Tensor.__gt__ = _compare(lambda a, b: a > b)
Tensor.__ge__ = _compare(lambda a, b: a >= b)
Tensor.eq = _compare(lambda a, b: a == b)
Tensor.ne = _compare(lambda a, b: a != b)
Tensor.exp = lambda a: Exp.apply(a)
Tensor.log = lambda a: Log.apply(a)
Tensor.tanh = lambda a: Tanh.apply(a)
Tensor.sqrt = lambda a: Sqrt.apply(a)
Tensor.relu = lambda a: Relu.apply(a)
Tensor.sum = lambda a, axis=None, keepdims=False: Sum.apply(a, axis=axis, keepdims=keepdims)
Tensor.mean = lambda a, axis=None, keepdims=False: Mean.apply(a, axis=axis, keepdims=keepdims)
Tensor.max = lambda a, axis=None, keepdims=False: Max.apply(a, axis=axis, keepdims=keepdims)
Tensor.reshape = _reshape
Tensor.view = _reshape
Tensor.transpose = _transpose
Tensor.permute = lambda a, *dims: Permute.apply(
    a, dims=tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)
Tensor.T = property(lambda a: _transpose(a))
Tensor.unsqueeze = _unsqueeze
Tensor.squeeze = _squeeze
Tensor.flatten = lambda a: a.reshape(-1)
Tensor.masked_fill = _masked_fill
Tensor.argmax = lambda a, axis=None: Tensor._wrap(a.data.argmax(axis=axis))
