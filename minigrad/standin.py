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
import weakref
from typing import Any

import numpy as np

from . import launchcount as _lc
from .launchcount import tally as _tally

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed (standin behaves as CuPy). "
             "Use .get() or asnumpy() to copy it to the host explicitly.")

# numpy array that owns memory -> the stand-in array wrapping it, so that `a.base` is one object
# for all views of the same memory, as in CuPy (the autograd engine keys memory by that identity)
_owners: "weakref.WeakValueDictionary[int, ndarray]" = weakref.WeakValueDictionary()


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.base is None


class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class ndarray:  # noqa: N801 (CuPy's name)
    """An array on the stand-in "device": NumPy memory that refuses to be used as NumPy."""

    __slots__ = ("_a", "_base", "__weakref__")
    __array_priority__ = 100  # below Tensor's 1000, so `array * Tensor` defers to the Tensor

    def __init__(self, shape, dtype=float):
        self._a, self._base = np.empty(shape, dtype=dtype), None
        _owners[id(self._a)] = self

    # ------------------------------------------------------------ the NumPy boundary
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # np.exp(a) and friends dispatch here (as CuPy's NEP 13 support does); NumPy arrays mixed in
        # are refused, as cupy.exp refuses them
        if method not in ("__call__", "reduce", "accumulate"):
            return NotImplemented
        if ufunc is np.matmul and method == "__call__":
            _lc.matmul(*_unwrap(inputs[:2]), _unwrap(kwargs.get("out")))
        else:
            _tally("reduction" if method == "reduce" else "elementwise", f"{ufunc.__name__}")
        if method == "__call__":
            return _call(_np_matmul if ufunc is np.matmul else ufunc, inputs, kwargs)
        return _call(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        ours = globals().get(func.__name__)
        if ours is None or getattr(ours, "__module__", None) != __name__:
            raise TypeError(f"standin (as CuPy) has no {func.__name__}()")
        return ours(*args, **kwargs)

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        """The explicit device-to-host copy."""
        _tally("sync", "get")
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream=None) -> None:
        """The explicit host-to-device copy into this array."""
        _tally("h2d", "set")
        self._a[...] = arr

    def item(self):
        _tally("sync", "item")
        return self._a.item()

    def tolist(self):
        _tally("sync", "tolist")
        return self._a.tolist()

    def __float__(self):
        self._scalar_only("float")
        _tally("sync", "float")
        return float(self._a)

    def __int__(self):
        self._scalar_only("int")
        _tally("sync", "int")
        return int(self._a)

    def __complex__(self):
        self._scalar_only("complex")
        _tally("sync", "complex")
        return complex(self._a)

    def __bool__(self):
        _tally("sync", "bool")
        return bool(self._a)

    def _scalar_only(self, what: str) -> None:
        if self._a.ndim != 0:
            raise TypeError(f"{what}() of a standin array of shape {self._a.shape}: only 0-d arrays "
                            "convert to Python scalars (as CuPy); use .item() or .get()")

    # ------------------------------------------------------------ attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    base = property(lambda self: self._base)
    T = property(lambda self: _wrap(self._a.T))
    device = property(lambda self: "standin")
    data = property(lambda self: _Pointer(self._a.ctypes.data))  # CuPy's MemoryPointer: .ptr, the address

    @shape.setter
    def shape(self, value) -> None:
        self._a.shape = value

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    def __repr__(self) -> str:
        _tally("sync", "repr")
        return "standin." + repr(self._a)

    def __str__(self) -> str:
        _tally("sync", "str")
        return str(self._a)

    def __format__(self, spec: str) -> str:
        _tally("sync", "format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    # ------------------------------------------------------------ indexing
    def __getitem__(self, index):
        _index_cost(index, "gather")
        return _wrap(self._a[_index(index)])

    def __setitem__(self, index, value) -> None:
        if isinstance(value, np.ndarray) and (index == slice(None) or index is Ellipsis):
            _tally("h2d", "setitem")
            self._a[...] = value  # CuPy's one implicit copy in: `a[:] = host_array`
            return
        if not _index_cost(index, "scatter"):
            _tally("elementwise", "setitem")  # a copy or fill kernel over the selected part
        self._a[_index(index)] = _operand(value)

    # ------------------------------------------------------------ methods (NumPy's, wrapped)
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        out = self._a.reshape(shape, order=order)
        _tally("elementwise", "reshape (copy)", _lc.copies(out, self._a))
        return _wrap(out)

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        _tally("elementwise", "astype", int(copy or self._a.dtype != np.dtype(dtype)))
        return _wrap(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        _tally("elementwise", "copy")
        return _wrap(self._a.copy(order=order))

    def view(self, dtype=None):
        return _wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value) -> None:
        _tally("elementwise", "fill")
        self._a.fill(_operand(value))

    def ravel(self, order="C"):
        out = self._a.ravel(order=order)
        _tally("elementwise", "ravel (copy)", _lc.copies(out, self._a))
        return _wrap(out)

    def flatten(self, order="C"):
        _tally("elementwise", "flatten")
        return _wrap(self._a.flatten(order=order))

    def squeeze(self, axis=None):
        return _wrap(self._a.squeeze(axis=axis))

    def swapaxes(self, a: int, b: int):
        return _wrap(self._a.swapaxes(a, b))

    def nonzero(self):
        _lc.nonzero()
        return _wrap(self._a.nonzero())

    def argsort(self, axis=-1, kind=None):
        return argsort(self, axis, kind)

    def __getattr__(self, name: str):
        # reductions and the other array methods: NumPy's, with stand-in arrays in and out
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args, **kwargs):
                _lc.method_cost(name, self._a, _unwrap(args), _unwrap(kwargs))
                return _call(method, args, kwargs)
            return call
        raise AttributeError(f"standin.ndarray has no attribute {name!r}")

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (asarray, (self.get(),))

    __hash__ = None  # type: ignore[assignment]


_METHODS = {"sum", "mean", "max", "min", "argmax", "argmin", "all", "any", "prod", "cumsum",
            "std", "var", "clip", "dot", "repeat", "take", "round", "conj", "sort"}


def _binary(ufunc, reflected: bool = False, inplace: bool = False):
    def op(self, other):
        if not isinstance(other, (ndarray, np.ndarray, np.generic, int, float, complex, bool)):
            if hasattr(other, "__array_priority__"):
                return NotImplemented  # e.g. a Tensor: let its reflected operator answer
            raise TypeError(f"Unsupported type {type(other)}")
        other = _operand(other)
        if ufunc is np.matmul:
            a, b = (other, self._a) if reflected else (self._a, other)
            _lc.matmul(a, b, self._a if inplace else None)
        else:
            _tally("elementwise", ufunc.__name__)
        fn = _np_matmul if ufunc is np.matmul else ufunc
        if inplace:
            fn(self._a, other, out=self._a)
            return self
        return _wrap(fn(other, self._a) if reflected else fn(self._a, other))
    return op


for _name, _uf in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                   ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power),
                   ("matmul", np.matmul), ("and", np.bitwise_and), ("or", np.bitwise_or),
                   ("xor", np.bitwise_xor), ("lshift", np.left_shift), ("rshift", np.right_shift)]:
    setattr(ndarray, f"__{_name}__", _binary(_uf))
    setattr(ndarray, f"__r{_name}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(_uf, inplace=True))
for _name, _uf in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal)]:
    setattr(ndarray, f"__{_name}__", _binary(_uf))
def _unary(ufunc):
    def op(self):
        _tally("elementwise", ufunc.__name__)
        return _wrap(ufunc(self._a))
    return op


ndarray.__neg__ = _unary(np.negative)
ndarray.__pos__ = _unary(np.positive)
ndarray.__abs__ = _unary(np.abs)
ndarray.__invert__ = _unary(np.invert)


# ---------------------------------------------------------------- wrapping and unwrapping
def _wrap(x: Any) -> Any:
    """NumPy results -> stand-in arrays (0-d for scalars, as CuPy returns), recursively."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        owner = x.base if isinstance(x.base, np.ndarray) else None
        if owner is None:
            w = _owners.get(id(x))
            if w is not None and w._a is x:
                return w
        w = ndarray.__new__(ndarray)
        w._a = x
        w._base = None
        if owner is None:
            _owners[id(x)] = w
        else:
            base = _owners.get(id(owner))
            if base is None or base._a is not owner:
                base = ndarray.__new__(ndarray)
                base._a, base._base = owner, None
                _owners[id(owner)] = base
            w._base = base
        return w
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _operand(x: Any) -> Any:
    """A stand-in array, or a scalar, as NumPy sees it; a NumPy array is refused (as CuPy)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}: a NumPy array mixed with standin arrays "
                        "(as CuPy refuses); move it with standin.asarray() first")
    return x


def _unwrap(x: Any) -> Any:
    if isinstance(x, (ndarray, np.ndarray)):
        return _operand(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _index(index: Any) -> Any:
    # CuPy copies NumPy index arrays in (host to device); only stand-in data is unwrapped here
    if isinstance(index, tuple):
        return tuple(i._a if isinstance(i, ndarray) else i for i in index)
    return index._a if isinstance(index, ndarray) else index


def _call(fn, args, kwargs):
    out = kwargs.get("out")
    result = _wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    if isinstance(out, ndarray) or (isinstance(out, tuple) and out and builtins.all(isinstance(o, ndarray) for o in out)):
        return out  # CuPy returns the `out` array itself, never a new one over the same memory
    return result


def _np_matmul(a, b, out=None, **kwargs):
    """np.matmul, but float16 operands multiplied in float32 and rounded once at the
    end, as cuBLAS's float16 GEMM accumulates (NumPy's own float16 matmul has no BLAS: slow)."""
    if a.dtype == np.float16 and b.dtype == np.float16:
        r = np.matmul(a.astype(np.float32), b.astype(np.float32), **kwargs).astype(np.float16)
        if out is None:
            return r
        out[...] = r
        return out
    return np.matmul(a, b, out=out, **kwargs)


def _function(name: str):
    fn = _np_matmul if name == "matmul" else getattr(np, name)

    def wrapper(*args, **kwargs):
        result = _call(fn, args, kwargs)
        if _lc.active is not None:
            _lc.function_cost(name, _unwrap(args), _unwrap(kwargs), _unwrap(result))
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
        return _call(self._uf, args, kwargs)

    def reduce(self, *args, **kwargs):
        _tally("reduction", f"{self.__name__}.reduce")
        return _call(self._uf.reduce, args, kwargs)

    def accumulate(self, *args, **kwargs):
        _tally("elementwise", f"{self.__name__}.accumulate")
        return _call(self._uf.accumulate, args, kwargs)


def _index_cost(index, kind: str) -> bool:
    """launchcount.index_cost of an index's arrays: (whether already on the device, dtype) each."""
    items = index if isinstance(index, tuple) else (index,)
    arrays = [(isinstance(i, ndarray), np.asarray(i._a if isinstance(i, ndarray) else i).dtype)
              for i in items if isinstance(i, (ndarray, np.ndarray, list))]
    return _lc.index_cost(arrays, kind)


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
del _name, _uf


class _Linalg:
    @staticmethod
    def norm(*args, **kwargs):
        _tally("reduction", "norm")
        _tally("elementwise", "norm")
        return _call(np.linalg.norm, args, kwargs)


linalg = _Linalg()


def argsort(a, axis=-1, kind=None):
    """cupy.argsort: always stable, and no other `kind` accepted."""
    if kind is not None:
        raise NotImplementedError(f"argsort(kind={kind!r}): CuPy's argsort takes only kind=None (it is stable)")
    _lc.sort(_operand(a), "argsort")
    _tally("elementwise", "argsort")  # the index array sorted along with the keys
    return _call(np.argsort, (a,), {"axis": axis, "kind": "stable"})


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    """A new stand-in array from a NumPy array, a list or a scalar (the explicit host-to-device copy)."""
    if isinstance(obj, ndarray):
        _tally("elementwise", "array", int(copy or obj.dtype != np.dtype(dtype or obj.dtype)))
        obj = obj._a
    else:
        _tally("h2d", "array")
    return _wrap(np.array(obj, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def asarray(obj, dtype=None, order=None):
    """obj itself when it is already a stand-in array of that dtype; else an explicit copy in."""
    if isinstance(obj, ndarray):
        return obj if dtype is None or obj.dtype == np.dtype(dtype) else obj.astype(dtype)
    _tally("h2d", "asarray")
    return _wrap(np.array(obj, dtype=dtype, order=order))  # a copy: "device" memory is our own


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    if a._a.flags.c_contiguous:
        return a
    _tally("elementwise", "ascontiguousarray")
    return _wrap(np.ascontiguousarray(a._a))


def asnumpy(a, stream=None, order="C", out=None) -> np.ndarray:
    """The explicit device-to-host copy (cupy.asnumpy); NumPy arrays pass through."""
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)


def scatter_add(a: ndarray, slices, value) -> None:
    """cupyx.scatter_add: a[slices] += value, repeated indices adding up.

    CuPy adds with atomics, so repeats are summed in whatever order the threads run and float
    results vary in their last bits from run to run. For an integer array over the first axis
    (the embedding's case) the stand-in adds in a fresh random order each call to show the same."""
    _tally("elementwise", "scatter_add")
    slices, value = _index(slices), _operand(value)
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
        return _wrap(self._g.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        _tally("elementwise", "standard_normal")
        return _wrap(self._g.standard_normal(size, dtype=dtype))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        _tally("elementwise", "uniform")
        return _wrap(self._g.uniform(low, high, size).astype(dtype, copy=False))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        _tally("elementwise", "integers")
        return _wrap(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint))


class _Random:
    Generator = _Generator

    @staticmethod
    def default_rng(seed=None) -> _Generator:
        return _Generator(seed)


random = _Random()
