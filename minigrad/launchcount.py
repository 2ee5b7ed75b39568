"""What CuPy would launch, counted on the stand-in (minigrad/standin.py), behind an opt-in switch:

    with launchcount.counting() as c:
        ...                       # code running on "standin" arrays
    c.launches, c.syncs, c.h2d    # and c.by_name: where the launches come from

A GPU training step is fast when it enqueues little work and never waits for the device, so CI
pins both (tests/test_launches.py, `python -m bench.launches`) without a GPU. The stand-in calls
`tally` at each operation, with the cost CuPy 14 has for it:

- an elementwise operation (a ufunc, `a + b`, a broadcast, a strided view as input or output,
  `astype`, `copy`, `where`, `x[...] = y`) is one kernel; a reduction along any axes is one;
- `matmul`/`dot`/`vdot` is one cuBLAS call, plus one copy for each matrix operand that is neither
  C- nor F-contiguous in its last two axes (CuPy copies those first), plus one when an `out=`
  it cannot write to directly is given;
- `zeros`/`zeros_like` is one memset, `empty` nothing, `ones`/`full`/`arange` one kernel;
- integer-array indexing (gather) and scatter are one kernel each; basic slicing, reshape of
  what can be viewed, transpose: nothing;
- a sort is CUB's radix sort: 2 + one pass per 8 bits of the key;
- a RawKernel launch (minigrad/kernels) is one;
- a sync is any read of device data by the host (`float(a)`, `.item()`, `.get()`, `bool(a)`,
  printing, `nonzero`'s output size); `h2d` counts copies in from the host (`asarray(numpy)`,
  NumPy index arrays, `a[:] = numpy`), which are asynchronous in CuPy (pinned staging).

Launch counts depend on the sequence of operations, not on array sizes (kernels loop over any size),
so a count taken on a small batch holds for a large one of the same model.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

import numpy as np

LAUNCH_KINDS = ("elementwise", "reduction", "blas", "kernel", "memset", "sort")
OTHER_KINDS = ("sync", "h2d")


class LaunchCount:
    """Counts by kind ("elementwise", "reduction", "blas", "kernel", "memset", "sort", "sync",
    "h2d") and by operation name (launches only)."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.by_name: Counter[str] = Counter()

    @property
    def launches(self) -> int:
        return sum(self.by_kind[k] for k in LAUNCH_KINDS)

    @property
    def syncs(self) -> int:
        return self.by_kind["sync"]

    @property
    def h2d(self) -> int:
        return self.by_kind["h2d"]

    def __repr__(self) -> str:
        return f"LaunchCount(launches={self.launches}, syncs={self.syncs}, h2d={self.h2d}, {dict(self.by_kind)})"


active: LaunchCount | None = None  # the stand-in tallies here while counting() is on


@contextlib.contextmanager
def counting() -> Iterator[LaunchCount]:
    """Count what the stand-in's operations would launch on CuPy inside the block."""
    global active
    prev, active = active, LaunchCount()
    try:
        yield active
    finally:
        active = prev


def tally(kind: str, name: str, n: int = 1) -> None:
    if active is None or n <= 0:
        return
    active.by_kind[kind] += n
    if kind in LAUNCH_KINDS:
        active.by_name[name] += n


# ---------------------------------------------------------------- costs of particular operations
def matrix_ok(a: np.ndarray) -> bool:
    """Whether cuBLAS takes this operand as it is: each matrix (last two axes) C- or F-contiguous
    and, for a stack of matrices, one stride between them (CuPy copies anything else first)."""
    if a.ndim < 2:
        return True
    rows, cols = a.shape[-2:]
    s_r, s_c = a.strides[-2:]
    item = a.itemsize
    if not ((s_c == item or cols == 1) and (s_r == cols * item or rows == 1)
            or (s_r == item or rows == 1) and (s_c == rows * item or cols == 1)):
        return False
    lead = [(n, s) for n, s in zip(a.shape[:-2], a.strides[:-2]) if n != 1]
    return all(s_outer == n_inner * s_inner for (_, s_outer), (n_inner, s_inner) in zip(lead, lead[1:]))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> None:
    tally("blas", "matmul (cuBLAS)")
    tally("elementwise", "copy for cuBLAS", int(not matrix_ok(a)) + int(not matrix_ok(b)))
    if out is not None and not out.flags.c_contiguous:
        tally("elementwise", "copy for cuBLAS")


def sort(a: np.ndarray, name: str) -> None:
    tally("sort", name, 2 + (8 * a.dtype.itemsize + 7) // 8)


def copies(result: np.ndarray, source: np.ndarray) -> int:
    """1 when `result` (of a reshape or ravel) is a new array rather than a view of `source`."""
    return int(result.size > 0 and not np.may_share_memory(result, source))


def nonzero() -> None:
    """nonzero, flatnonzero, a boolean mask: count, read the count to size the output, scatter."""
    tally("reduction", "nonzero")
    tally("sync", "nonzero")
    tally("elementwise", "nonzero", 2)  # a scan and a scatter


def index_cost(arrays: list[tuple[bool, np.dtype]], kind: str) -> bool:
    """An index's arrays, (already on the device?, dtype) each: host ones are copied in, a boolean
    one reads its count back (nonzero), and the gather or scatter itself is one kernel. Returns
    whether there was any (else the index is basic: a view, or one copy kernel for a setitem)."""
    if not arrays:
        return False
    tally("h2d", "index array", sum(not on_device for on_device, _ in arrays))
    if any(dtype == bool for _, dtype in arrays):
        nonzero()
    tally("elementwise", kind)
    return True


_REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "all", "any",
               "count_nonzero"}
_ELEMENTWISE = {"where", "clip", "copyto", "take", "take_along_axis", "isclose", "diff", "repeat", "tile", "round",
                "ones_like", "full_like", "ones", "full", "arange", "linspace", "outer", "searchsorted", "cumsum"}
_VIEWS = {"split", "array_split", "broadcast_to", "expand_dims", "squeeze", "swapaxes", "moveaxis", "transpose",
          "empty_like", "empty"}


def function_cost(name: str, args: tuple, kwargs: dict, result) -> None:
    """What CuPy launches for the namespace function `name` (NumPy arrays in and out)."""
    if name in _REDUCTIONS:
        tally("reduction", name)
    elif name in _ELEMENTWISE:
        tally("elementwise", name)
    elif name in _VIEWS:
        pass
    elif name in ("reshape", "ravel"):
        tally("elementwise", f"{name} (copy)", copies(result, args[0]))
    elif name in ("concatenate", "stack"):
        tally("elementwise", name, len(args[0]))  # a copy of each array into the result
    elif name in ("tril", "triu", "pad", "eye"):
        tally("elementwise", name, 2)
    elif name in ("zeros", "zeros_like"):
        tally("memset", name, int(result.size > 0))
    elif name in ("matmul", "dot"):
        matmul(args[0], args[1], kwargs.get("out"))
    elif name in ("vdot", "einsum"):
        tally("blas", name)
    elif name in ("sort", "unique"):
        sort(args[0], name)
        if name == "unique":
            nonzero()
    elif name in ("flatnonzero", "nonzero"):
        nonzero()
    elif name == "bincount":
        tally("reduction", name)  # the largest value, read back to size the output
        tally("sync", name)
        tally("memset", name)
        tally("elementwise", name)
    elif name in ("var", "std", "allclose", "array_equal"):
        tally("reduction", name, 2 if name in ("var", "std") else 1)
        tally("elementwise", name)
    else:
        raise KeyError(f"launchcount has no cost for {name}(): add it")


def method_cost(name: str, a: np.ndarray, args: tuple, kwargs: dict) -> None:
    """What CuPy launches for the array method `name` of `a` (NumPy arrays)."""
    if name in _REDUCTIONS:
        tally("reduction", name)
    elif name in ("std", "var"):
        tally("reduction", name, 2)
        tally("elementwise", name)
    elif name == "dot":
        matmul(a, args[0], kwargs.get("out"))
    elif name == "sort":
        sort(a, "sort")
    elif name != "conj" or a.dtype.kind == "c":
        tally("elementwise", name)  # clip, repeat, take, round, cumsum (a scan)
