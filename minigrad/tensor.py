"""Tensor and the autograd machinery: Function, Context, backward, no_grad.

Every op is a `Function` subclass with `forward(ctx, *arrays)` and `backward(ctx, grad)` side by
side (see ops.py and functional.py). `Function.apply` runs the forward on raw arrays and, only when
grad mode is on and some input requires grad, records a `Context` on the output: that context is
the graph edge that `Tensor.backward` later walks.
"""
from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from . import backend

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    prev = is_grad_enabled()
    _state.grad_enabled = enabled
    try:
        yield
    finally:
        _state.grad_enabled = prev


def no_grad():
    """Context manager (and decorator) that records no graph, as torch.no_grad()."""
    return _grad_mode(False)


def enable_grad():
    return _grad_mode(True)


class Context:
    """What one op remembers for its backward: saved arrays, which inputs need a gradient."""

    __slots__ = ("fn", "parents", "needs_input_grad", "saved", "grad_out", "__dict__")

    def __init__(self, fn: type, parents: tuple[Tensor, ...], track: bool):
        self.fn = fn
        self.parents = parents if track else ()
        # forward reads this to skip saving what no backward will need
        self.needs_input_grad = tuple(track and p.requires_grad for p in parents)
        self.saved: tuple = ()
        self.grad_out: list | None = None  # set by backward(): where an input's gradient may go

    def save_for_backward(self, *arrays) -> None:
        self.saved = arrays

    def release(self) -> None:
        """Drop what the forward kept, so activations are freed as soon as backward used them."""
        self.saved = ()
        self.grad_out = None
        self.__dict__.clear()


class Function:
    """Base class of every op. Subclasses define forward(ctx, *arrays, **kw) -> array and
    backward(ctx, grad) -> one gradient (or None) per tensor input."""

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any):
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: Any):
        raise NotImplementedError

    @classmethod
    def apply(cls, *tensors: Tensor, **kwargs: Any) -> Tensor:
        track = is_grad_enabled() and any(t.requires_grad for t in tensors)
        ctx = Context(cls, tensors, track)
        out = cls.forward(ctx, *(t.data for t in tensors), **kwargs)
        if isinstance(out, np.generic):  # NumPy reductions return scalars; keep arrays throughout
            out = np.asarray(out)
        result = Tensor._wrap(out, requires_grad=track)
        if track:
            result._ctx = ctx
        return result


def _as_array(data: Any, dtype=None, device: str | None = None):
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp_for(device) if device is not None else backend.array_module(data)
    from_python = not hasattr(data, "dtype")  # asked before to_device turns lists into arrays
    if device is not None:
        data = backend.to_device(data, device)
    arr = xp.asarray(data, dtype=dtype)
    # Python floats become float64 in NumPy; the project's default is float32.
    if dtype is None and arr.dtype == np.float64 and from_python:
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array with an optional gradient, on NumPy ("cpu") or CuPy ("cuda"), or on
    the strict CuPy stand-in ("standin", a debugging aid: see minigrad/standin.py)."""

    # _grad_buf: this tensor's view of an optimizer's flat gradient buffer (nn.FlatParameters)
    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_grad_buf", "__weakref__")
    __array_priority__ = 1000  # so `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data: Any, requires_grad: bool = False, device: str | None = None, dtype=None):
        self.data = _as_array(data, dtype, device)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Context | None = None
        self._grad_buf = None
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require grad, got {self.data.dtype}")

    @classmethod
    def _wrap(cls, array: Any, requires_grad: bool = False) -> Tensor:
        t = cls.__new__(cls)
        t.data, t.grad, t.requires_grad, t._ctx, t._grad_buf = array, None, requires_grad, None, None
        return t

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = f", device={self.device!r}" if self.device != "cpu" else ""
        return f"tensor({self.numpy()!r}{dev}{grad})"

    # ------------------------------------------------------------ conversions
    def numpy(self) -> np.ndarray:
        return backend.to_device(self.data, "cpu")

    def item(self) -> float:
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device: str) -> Tensor:
        """A copy on `device` (the same tensor if it is there already); keeps requires_grad."""
        if backend.normalize_device(device) == self.device:
            return self
        return Tensor._wrap(backend.to_device(self.data, device), self.requires_grad)

    def astype(self, dtype) -> Tensor:
        from .ops import Cast
        return Cast.apply(self, dtype=np.dtype(dtype))

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def detach(self) -> Tensor:
        return Tensor._wrap(self.data, requires_grad=False)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require grad, got {self.data.dtype}")
        self.requires_grad = requires_grad
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------ autograd
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` that requires grad.

        The graph is walked in reverse topological order, built with an explicit stack (no
        recursion, so a 2,000-op chain is fine). Intermediate gradients live only in a dict
        and are dropped as soon as they have been passed on. A tensor used twice gets its
        gradients summed, in place when no other gradient shares that memory; so an op's
        backward must return new arrays or views of `grad`, never an array it keeps elsewhere.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() needs a gradient argument for a non-scalar output of shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad, dtype=self.data.dtype, device=self.device)
            if grad.shape != self.data.shape:
                raise ValueError(f"gradient of shape {grad.shape} for a tensor of shape {self.shape}")

        order = _topological_order(self)
        grads: dict[int, Any] = {id(self): grad}
        # How many pending gradients see each block of memory (keyed by the array that owns it; a
        # view from reshape or transpose backward shares its owner's memory), and the memory that
        # is never ours to write: the caller's array and every leaf's .grad (optimizers update
        # .grad in place, so a leaf's gradient must not alias another's either).
        seen: Counter[int] = Counter({id(_owner(grad)): 1})
        never_write: set[int] = {id(_owner(grad))}
        offered: dict[int, Any] = {}  # leaf id -> its flat-buffer gradient view, handed to an op
        for t in order:  # every tensor comes after all the ops that used it
            g = grads.pop(id(t), None)
            ctx = t._ctx
            if g is None:
                continue
            seen[id(_owner(g))] -= 1
            if ctx is None:  # a leaf: keep what flowed here
                if isinstance(g, np.generic):
                    g = np.asarray(g)
                if t.grad is None:
                    buf = getattr(t, "_grad_buf", None)  # a parameter in a flat buffer: fill its view
                    if buf is not None and buf.shape == g.shape and buf.dtype == g.dtype:
                        if g is not buf:  # an op wrote it there already, or copy it in now
                            buf[...] = g
                        t.grad = buf
                    else:
                        owner = id(_owner(g))
                        t.grad = g.copy() if owner in never_write else g
                    never_write.add(id(_owner(t.grad)))
                else:
                    t.grad += g
                continue
            if ctx.fn is None:
                raise RuntimeError(
                    "backward() reached a tensor whose graph an earlier backward() already freed: "
                    "pass retain_graph=True to the first call, or detach() tensors reused across steps")
            # A Parameter in an optimizer's flat buffer, with no gradient yet: offer its view of
            # the flat gradient array to this op (ctx.grad_out[i]), once per backward, so an op
            # like linear can write its weight gradient there (matmul out=) instead of into a
            # fresh array that the leaf would then copy. An op may ignore the offer.
            dests = None
            for i, p in enumerate(ctx.parents):
                buf = getattr(p, "_grad_buf", None)
                if buf is not None and p.grad is None and id(p) not in offered and ctx.needs_input_grad[i]:
                    dests = dests or [None] * len(ctx.parents)
                    dests[i] = buf
                    offered[id(p)] = buf
            ctx.grad_out = dests
            in_grads = ctx.fn.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for parent, pg, need in zip(ctx.parents, in_grads, ctx.needs_input_grad):
                if pg is None or not need:
                    continue
                if pg.shape != parent.data.shape:
                    raise RuntimeError(
                        f"{ctx.fn.__name__}.backward returned a gradient of shape {pg.shape} "
                        f"for an input of shape {parent.data.shape}")
                key = id(parent)
                if key not in grads:
                    grads[key] = pg
                    seen[id(_owner(pg))] += 1
                    continue
                acc = grads[key]
                if acc is offered.get(key):
                    acc += pg  # the leaf's own slot of the flat gradient buffer: ours to add into
                elif (acc.base is None and seen[id(acc)] == 1 and id(acc) not in never_write
                        and acc.dtype == pg.dtype
                        and getattr(acc.flags, "writeable", True)):  # CuPy has no read-only arrays
                    # nothing else sees acc's memory: add in place, sparing a fresh array (for a
                    # tied embedding, 154 MB to allocate and fill every step)
                    acc += pg
                else:
                    seen[id(_owner(acc))] -= 1
                    grads[key] = acc = acc + pg
                    seen[id(acc)] += 1
            if not retain_graph:
                ctx.release()
        if not retain_graph:  # the graph is spent: cut it so its arrays can be freed
            for t in order:
                if t._ctx is not None:
                    # keep the emptied context (not None) so that a second backward through
                    # these tensors raises instead of silently treating them as leaves
                    t._ctx.parents = ()
                    t._ctx.fn = None

    # operators and methods are attached in ops.py, next to the Functions they use


def _owner(a: Any) -> Any:
    """The array that owns `a`'s memory (NumPy and CuPy point a view's .base at its owner)."""
    return a if getattr(a, "base", None) is None else a.base


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from root through recorded ops, each after all the ops that use it."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            for p in t._ctx.parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
    order.reverse()
    return order


# ---------------------------------------------------------------- creation functions
def tensor(data: Any, requires_grad: bool = False, device: str | None = None, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)


def _shape(shape: Sequence) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def zeros(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.zeros(_shape(shape), dtype=dtype), requires_grad)


def ones(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.ones(_shape(shape), dtype=dtype), requires_grad)


def full(shape: Sequence[int], value: float, dtype=np.float32, device: str | None = None) -> Tensor:
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.full(tuple(shape), value, dtype=dtype))


def randn(*shape, dtype=np.float32, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the backend's seeded generator (see manual_seed)."""
    g = backend.rng(device)
    data = g.standard_normal(_shape(shape), dtype=np.float32 if dtype == np.float32 else np.float64)
    return Tensor._wrap(data.astype(dtype, copy=False), requires_grad)


def rand(*shape, dtype=np.float32, device: str | None = None) -> Tensor:
    g = backend.rng(device)
    return Tensor._wrap(g.random(_shape(shape), dtype=np.float32 if dtype == np.float32 else np.float64))


def arange(start: int, stop: int | None = None, step: int = 1, dtype=np.int64,
           device: str | None = None) -> Tensor:
    if stop is None:
        start, stop = 0, start
    xp = backend.xp_for(device)
    return Tensor._wrap(xp.arange(start, stop, step, dtype=dtype))


def as_tensor_list(xs: Iterable[Tensor]) -> list[Tensor]:
    return [x if isinstance(x, Tensor) else Tensor(x) for x in xs]
