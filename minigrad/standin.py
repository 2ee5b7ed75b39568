"""A strict stand-in for CuPy, so a machine without a GPU can run the CuPy code paths (device
"standin", `--backend standin`). A debugging aid, not a backend for real work.

NumPy computes underneath, but the array type behaves as `cupy.ndarray` does where that matters
for code written against both libraries:

- implicit conversion to NumPy raises TypeError: `np.asarray(a)`, `a.__array__()`, mixing a NumPy
  array into an op (`a + np_arr`, `xp.where(np_mask, a, b)`, `a[idx] = np_arr` but for CuPy's one
  exception `a[:] = np_arr`), and float()/int() of an array that is not 0-d (NumPy index arrays
  are accepted, as CuPy copies them in);
- explicit transfers work: `a.get()`, `standin.asnumpy(a)`, `a.item()`, `a.tolist()`, and
  `standin.asarray(np_arr)` (host to "device", as `cupy.asarray`);
- reductions and scalar indexing return 0-d arrays, not NumPy scalars;
- this module is the array namespace (`xp`): the subset of CuPy's that the project uses, each name
  one that CuPy has (tests/test_standin.py checks them against the real CuPy when it is installed),
  including `random.default_rng` with CuPy's Generator methods.

Code that runs here without TypeError does no hidden host/device traffic on CuPy either.

Inside `launchcount.counting()` each operation also tallies what CuPy would launch for it
(kernels, reductions, cuBLAS calls, memsets), every host read of device data (a sync) and every
copy in from the host: minigrad/launchcount.py holds that model. As in CuPy, an operation given
`out=` returns that very array.
"""
from __future__ import annotations

import builtins

import numpy as np

from . import launchcount as _lc
from .launchcount import tally as _tally
from .standin_array import (argsort, asarray, call_numpy, matmul_as_cublas, ndarray, operand, unwrap, unwrap_index,
                            wrap)

# ndarray, and argsort and asarray (which its methods call) live in standin_array.py; imported here,
# they are this namespace's, as cupy.ndarray, cupy.argsort and cupy.asarray are CuPy's


def _function(name: str):
    fn = matmul_as_cublas if name == "matmul" else getattr(np, name)

    def wrapper(*args, **kwargs):
        result = call_numpy(fn, args, kwargs)
        if _lc.active is not None:
            _lc.function_cost(name, unwrap(args), unwrap(kwargs), unwrap(result))
        return result
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f"standin.{name}: numpy.{name} on stand-in arrays (NumPy arrays refused)."
    return wrapper


class _Ufunc:
    """A NumPy ufunc that takes and returns stand-in arrays (CuPy's ufuncs offer reduce too)."""

    def __init__(self, name: str):
        self._uf = getattr(np, name)
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        _tally("elementwise", self.__name__)
        return call_numpy(self._uf, args, kwargs)

    def reduce(self, *args, **kwargs):
        _tally("reduction", f"{self.__name__}.reduce")
        return call_numpy(self._uf.reduce, args, kwargs)

    def accumulate(self, *args, **kwargs):
        _tally("elementwise", f"{self.__name__}.accumulate")
        return call_numpy(self._uf.accumulate, args, kwargs)


# ---------------------------------------------------------------- the namespace (CuPy's subset)
UFUNCS = ("add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "negative", "power",
          "remainder", "exp", "expm1", "log", "log1p", "log2", "tanh", "sqrt", "square", "abs", "absolute",
          "sign", "maximum", "minimum", "fmax", "fmin", "isfinite", "isnan", "isinf", "equal",
          "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
          "logical_not", "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift",
          "invert", "cos", "sin", "floor", "ceil", "reciprocal")
FUNCTIONS = ("where", "clip", "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin",
             "sort", "cumsum", "prod", "all", "any", "count_nonzero", "concatenate", "stack", "split",
             "array_split", "broadcast_to", "expand_dims", "squeeze", "swapaxes", "moveaxis", "transpose",
             "reshape", "ravel", "tril", "triu", "copyto", "flatnonzero", "nonzero", "searchsorted",
             "take", "take_along_axis", "matmul", "dot", "vdot", "einsum", "outer", "zeros_like",
             "ones_like", "empty_like", "full_like", "isclose", "allclose", "array_equal", "unique",
             "bincount", "diff", "repeat", "tile", "pad", "var", "std", "round")
CREATION = ("zeros", "ones", "empty", "full", "arange", "linspace", "eye")  # no array inputs
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool_", "intp", "dtype", "finfo", "iinfo", "promote_types", "inf", "nan",
          "pi", "e", "newaxis")

for _name in UFUNCS:
    globals()[_name] = _Ufunc(_name)
for _name in FUNCTIONS + CREATION:
    globals()[_name] = _function(_name)
for _name in DTYPES:
    globals()[_name] = getattr(np, _name)
del _name


class _Linalg:
    @staticmethod
    def norm(*args, **kwargs):
        _tally("reduction", "norm")
        _tally("elementwise", "norm")
        return call_numpy(np.linalg.norm, args, kwargs)


linalg = _Linalg()


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    """A new stand-in array from a NumPy array, a list or a scalar (the explicit host-to-device copy)."""
    if isinstance(obj, ndarray):
        _tally("elementwise", "array", int(copy or obj.dtype != np.dtype(dtype or obj.dtype)))
        obj = obj._a
    else:
        _tally("h2d", "array")
    return wrap(np.array(obj, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    if a._a.flags.c_contiguous:
        return a
    _tally("elementwise", "ascontiguousarray")
    return wrap(np.ascontiguousarray(a._a))


def asnumpy(a, stream=None, order="C", out=None) -> np.ndarray:
    """The explicit device-to-host copy (cupy.asnumpy); NumPy arrays pass through."""
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)


def scatter_add(a: ndarray, slices, value) -> None:
    """cupyx.scatter_add: a[slices] += value, repeated indices adding up.

    CuPy adds with atomics, so repeats are summed in whatever order the threads run and float
    results vary in their last bits from run to run. For an integer array over the first axis
    (the embedding's case) the stand-in adds in a fresh random order each call to show the same."""
    _tally("elementwise", "scatter_add")
    slices, value = unwrap_index(slices), operand(value)
    if isinstance(slices, np.ndarray) and slices.dtype.kind in "iu":
        value = np.broadcast_to(value, slices.shape + a._a.shape[1:])
        order = np.random.default_rng().permutation(slices.size)  # unseeded, as thread timing
        rows = value.reshape((slices.size,) + a._a.shape[1:])
        np.add.at(a._a, slices.reshape(-1)[order], rows[order])
    else:
        np.add.at(a._a, slices, value)


def get_array_module(*arrays):
    import sys
    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in arrays) else np


# ---------------------------------------------------------------- random (cupy.random's API)
class _Generator:
    """cupy.random.Generator's methods over NumPy's PCG64, returning stand-in arrays."""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64, out=None):
        _tally("elementwise", "random")
        return wrap(self._g.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        _tally("elementwise", "standard_normal")
        return wrap(self._g.standard_normal(size, dtype=dtype))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        _tally("elementwise", "uniform")
        return wrap(self._g.uniform(low, high, size).astype(dtype, copy=False))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        _tally("elementwise", "integers")
        return wrap(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint))


class _Random:
    Generator = _Generator

    @staticmethod
    def default_rng(seed=None) -> _Generator:
        return _Generator(seed)


random = _Random()
