"""Argument checks of the public functions, written once.

Each check raises a ValueError (a value out of range) or a TypeError (a value of the wrong kind)
whose message starts with the function's name and names the argument, e.g.
`sum: axis=4 is out of range for a tensor of 2 dims (-2 <= axis < 2)`, instead of an error from
deep inside NumPy. They read Python numbers, shapes and dtypes only, never an array's values, so
they cost no pass over memory and no device-to-host sync: the hot path pays a few comparisons.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Iterable, Sequence

Axis = int | Sequence[int] | None


def integer(fn: str, name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """value as a Python int in [lo, hi) (either bound may be None): ints and NumPy integers
    pass; floats, bools and anything else are a TypeError."""
    if type(value) is not int:
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)  # NumPy integers too; floats, even 2.0, are refused
        except TypeError:
            raise TypeError(f"{fn}: {name} must be an integer, got {_shown(value)}") from None
    if (lo is not None and value < lo) or (hi is not None and value >= hi):
        raise ValueError(f"{fn}: {name}={value} is out of range (expected {_interval(name, lo, hi)})")
    return value


def number(fn: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    """value as a finite Python float within the bounds given (closed unless said open)."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        x = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{fn}: {name} must be finite, got a number beyond float's range") from None
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a number, got {_shown(value)}") from None
    if not math.isfinite(x):
        raise ValueError(f"{fn}: {name} must be finite, got {x}")
    below = lo is not None and (x <= lo if lo_open else x < lo)
    above = hi is not None and (x >= hi if hi_open else x > hi)
    if below or above:
        left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ValueError(f"{fn}: {name}={x} is out of range (expected {left}{name}{right})")
    return x


def axis(fn: str, value: Any, ndim: int, name: str = "axis") -> int:
    """value as an axis of an ndim-dimensional tensor: -ndim <= value < ndim, returned in [0, ndim)."""
    if type(value) is not int:
        value = integer(fn, name, value)
    if not -ndim <= value < ndim:
        raise ValueError(f"{fn}: {name}={value} is out of range for a tensor of {ndim} dims "
                         f"({-ndim} <= {name} < {ndim})")
    return value + ndim if value < 0 else value


def axes(fn: str, value: Axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """None (every axis), an axis, or a tuple or list of distinct axes, as a tuple in [0, ndim)."""
    if value is None:
        return tuple(range(ndim))
    if isinstance(value, (tuple, list)):
        out = tuple(axis(fn, a, ndim, name) for a in value)
        if len(set(out)) != len(out):
            raise ValueError(f"{fn}: {name}={tuple(value)} names an axis twice")
        return out
    return (axis(fn, value, ndim, name),)


def permutation(fn: str, dims: Sequence[Any], ndim: int, name: str = "dims") -> tuple[int, ...]:
    """dims as a permutation of the ndim axes (each once; negative counts from the end)."""
    if len(dims) != ndim:
        raise ValueError(f"{fn}: {name}={tuple(dims)} must name each of the {ndim} axes once")
    return axes(fn, tuple(dims), ndim, name)


def int_dtype(fn: str, name: str, array: Any, kinds: str = "iu") -> None:
    """A TypeError unless array's dtype is of one of NumPy's `kinds` (i int, u unsigned, b bool)."""
    kind = array.dtype.kind
    if kind not in kinds:
        what = {"iu": "integers", "iub": "integers or booleans", "biu": "booleans or integers"}.get(kinds, kinds)
        raise TypeError(f"{fn}: {name} must hold {what}, got dtype {array.dtype}")


def tensor_list(fn: str, name: str, tensors: Any, tensor_type: type, allow_empty: bool = False) -> list:
    """A list of tensor_type from an iterable of them, non-empty unless allowed (a single tensor
    is a TypeError: iterating it would give its rows)."""
    if type(tensors) is not list and type(tensors) is not tuple and (  # the common case, fast
            isinstance(tensors, tensor_type) or not isinstance(tensors, Iterable) or isinstance(tensors, (str, bytes))):
        raise TypeError(f"{fn}: {name} must be a list of Tensors, got {_shown(tensors)}")
    out = list(tensors)
    if not out and not allow_empty:
        raise ValueError(f"{fn}: {name} is empty")
    for i, t in enumerate(out):
        if not isinstance(t, tensor_type):
            raise TypeError(f"{fn}: {name}[{i}] must be a Tensor, got {_shown(t)}")
    return out


SEED_BOUND = 1 << 64  # what NumPy's and CuPy's generators take: 0 <= seed < 2**64


def seed(fn: str, value: Any, name: str = "seed") -> int:
    return integer(fn, name, value, 0, SEED_BOUND)


def _interval(name: str, lo: int | None, hi: int | None) -> str:
    return (f"{lo} <= {name} < {hi}" if lo is not None and hi is not None
            else f"{name} >= {lo}" if lo is not None else f"{name} < {hi}")


def _shown(value: Any) -> str:
    """A short description of a bad value for a message: its type, and its repr when short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 40 else type(value).__name__
