"""Helpers the op families share: undoing broadcasting, adding into repeated indices, and turning
Python numbers and arrays into constant tensors beside a given one."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend, checks, standin
from ..backend import array_module
from ..tensor import Tensor


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
    for i in index if isinstance(index, tuple) else (index,):
        if hasattr(i, "dtype"):
            checks.int_dtype("scatter_add", "index", i, "iub")
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
    checks.int_dtype("segment_sum", "ids", ids)
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


def raw(x: Any) -> Any:
    """The array inside a Tensor; anything else as it is."""
    return x.data if isinstance(x, Tensor) else x


def lift(x: Any, like: Tensor) -> Tensor:
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


def on_device_of(x: Any, like: Any) -> Any:
    """x as an array on the device of array `like` (an explicit copy when it is elsewhere);
    scalars as they are. CuPy refuses a NumPy condition or operand outright, so a mask built with
    NumPy (as most callers build theirs) must be moved first."""
    x = raw(x)
    if isinstance(x, (int, float, bool, np.generic)):
        return x
    xp = array_module(like)
    return x if array_module(x) is xp else xp.asarray(backend.to_device(x, "cpu"))
