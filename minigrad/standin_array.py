"""The stand-in's array type, `standin.ndarray` (minigrad/standin.py is the namespace around it):
NumPy underneath, CuPy's manners on top (see standin.py's docstring for the rules it keeps).

`wrap` turns NumPy results into stand-in arrays (one wrapper per owner of memory, so `a.base` is
one object for all views, as in CuPy), `operand`/`unwrap` take them apart again and refuse NumPy
arrays mixed in, `call_numpy` runs a NumPy function across that boundary. Every operation tallies
what CuPy would launch for it (minigrad/launchcount.py).
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
            _lc.matmul(*unwrap(inputs[:2]), unwrap(kwargs.get("out")))
        else:
            _tally("reduction" if method == "reduce" else "elementwise", f"{ufunc.__name__}")
        if method == "__call__":
            return call_numpy(matmul_as_cublas if ufunc is np.matmul else ufunc, inputs, kwargs)
        return call_numpy(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import standin  # the namespace, which imports this module: looked up when called
        ours = getattr(standin, func.__name__, None)
        if ours is None or getattr(ours, "__module__", None) not in (standin.__name__, __name__):
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
    T = property(lambda self: wrap(self._a.T))
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
        index_cost(index, "gather")
        return wrap(self._a[unwrap_index(index)])

    def __setitem__(self, index, value) -> None:
        if isinstance(value, np.ndarray) and (index == slice(None) or index is Ellipsis):
            _tally("h2d", "setitem")
            self._a[...] = value  # CuPy's one implicit copy in: `a[:] = host_array`
            return
        if not index_cost(index, "scatter"):
            _tally("elementwise", "setitem")  # a copy or fill kernel over the selected part
        self._a[unwrap_index(index)] = operand(value)

    # ------------------------------------------------------------ methods (NumPy's, wrapped)
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        out = self._a.reshape(shape, order=order)
        _tally("elementwise", "reshape (copy)", _lc.copies(out, self._a))
        return wrap(out)

    def transpose(self, *axes):
        return wrap(self._a.transpose(*axes))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        _tally("elementwise", "astype", int(copy or self._a.dtype != np.dtype(dtype)))
        return wrap(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        _tally("elementwise", "copy")
        return wrap(self._a.copy(order=order))

    def view(self, dtype=None):
        return wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value) -> None:
        _tally("elementwise", "fill")
        self._a.fill(operand(value))

    def ravel(self, order="C"):
        out = self._a.ravel(order=order)
        _tally("elementwise", "ravel (copy)", _lc.copies(out, self._a))
        return wrap(out)

    def flatten(self, order="C"):
        _tally("elementwise", "flatten")
        return wrap(self._a.flatten(order=order))

    def squeeze(self, axis=None):
        return wrap(self._a.squeeze(axis=axis))

    def swapaxes(self, a: int, b: int):
        return wrap(self._a.swapaxes(a, b))

    def nonzero(self):
        _lc.nonzero()
        return wrap(self._a.nonzero())

    def argsort(self, axis=-1, kind=None):
        return argsort(self, axis, kind)

    def __getattr__(self, name: str):
        # reductions and the other array methods: NumPy's, with stand-in arrays in and out
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args, **kwargs):
                _lc.method_cost(name, self._a, unwrap(args), unwrap(kwargs))
                return call_numpy(method, args, kwargs)
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
        other = operand(other)
        if ufunc is np.matmul:
            a, b = (other, self._a) if reflected else (self._a, other)
            _lc.matmul(a, b, self._a if inplace else None)
        else:
            _tally("elementwise", ufunc.__name__)
        fn = matmul_as_cublas if ufunc is np.matmul else ufunc
        if inplace:
            fn(self._a, other, out=self._a)
            return self
        return wrap(fn(other, self._a) if reflected else fn(self._a, other))
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
del _name, _uf


def _unary(ufunc):
    def op(self):
        _tally("elementwise", ufunc.__name__)
        return wrap(ufunc(self._a))
    return op


ndarray.__neg__ = _unary(np.negative)
ndarray.__pos__ = _unary(np.positive)
ndarray.__abs__ = _unary(np.abs)
ndarray.__invert__ = _unary(np.invert)


# ---------------------------------------------------------------- wrapping and unwrapping
def wrap(x: Any) -> Any:
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
        return tuple(wrap(v) for v in x)
    if isinstance(x, list):
        return [wrap(v) for v in x]
    return x


def operand(x: Any) -> Any:
    """A stand-in array, or a scalar, as NumPy sees it; a NumPy array is refused (as CuPy)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}: a NumPy array mixed with standin arrays "
                        "(as CuPy refuses); move it with standin.asarray() first")
    return x


def unwrap(x: Any) -> Any:
    if isinstance(x, (ndarray, np.ndarray)):
        return operand(x)
    if isinstance(x, (list, tuple)):
        return type(x)(unwrap(v) for v in x)
    return x


def unwrap_index(index: Any) -> Any:
    # CuPy copies NumPy index arrays in (host to device); only stand-in data is unwrapped here
    if isinstance(index, tuple):
        return tuple(i._a if isinstance(i, ndarray) else i for i in index)
    return index._a if isinstance(index, ndarray) else index


def call_numpy(fn, args, kwargs):
    out = kwargs.get("out")
    result = wrap(fn(*unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()}))
    if isinstance(out, ndarray) or (isinstance(out, tuple) and out and builtins.all(isinstance(o, ndarray) for o in out)):
        return out  # CuPy returns the `out` array itself, never a new one over the same memory
    return result


def matmul_as_cublas(a, b, out=None, **kwargs):
    """np.matmul, but float16 operands multiplied in float32 and rounded once at the
    end, as cuBLAS's float16 GEMM accumulates (NumPy's own float16 matmul has no BLAS: slow)."""
    if a.dtype == np.float16 and b.dtype == np.float16:
        r = np.matmul(a.astype(np.float32), b.astype(np.float32), **kwargs).astype(np.float16)
        if out is None:
            return r
        out[...] = r
        return out
    return np.matmul(a, b, out=out, **kwargs)


def index_cost(index, kind: str) -> bool:
    """launchcount.index_cost of an index's arrays: (whether already on the device, dtype) each."""
    items = index if isinstance(index, tuple) else (index,)
    arrays = [(isinstance(i, ndarray), np.asarray(i._a if isinstance(i, ndarray) else i).dtype)
              for i in items if isinstance(i, (ndarray, np.ndarray, list))]
    return _lc.index_cost(arrays, kind)


def argsort(a, axis=-1, kind=None):
    """cupy.argsort: always stable, and no other `kind` accepted."""
    if kind is not None:
        raise NotImplementedError(f"argsort(kind={kind!r}): CuPy's argsort takes only kind=None (it is stable)")
    _lc.sort(operand(a), "argsort")
    _tally("elementwise", "argsort")  # the index array sorted along with the keys
    return call_numpy(np.argsort, (a,), {"axis": axis, "kind": "stable"})


def asarray(obj, dtype=None, order=None):
    """obj itself when it is already a stand-in array of that dtype; else an explicit copy in."""
    if isinstance(obj, ndarray):
        return obj if dtype is None or obj.dtype == np.dtype(dtype) else obj.astype(dtype)
    _tally("h2d", "asarray")
    return wrap(np.array(obj, dtype=dtype, order=order))  # a copy: "device" memory is our own
