"""Tensor and the autograd machinery: Function, Context, backward, no_grad.

Every op is a `Function` subclass with `forward(ctx, *arrays)` and `backward(ctx, grad)` side by
side (see ops.py and functional.py). `Function.apply` runs the forward on raw arrays and, only when
grad mode is on and some input requires grad, records a `Context` on the output: that context is
the graph edge that `Tensor.backward` later walks.
"""
from __future__ import annotations

import contextlib
import os
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
        """Reverse mode: accumulate d(self)/d(leaf) into every leaf's `.grad` that requires grad.

        Walk the graph in topological order, from self back to the leaves: each op gets the sum of
        the gradients that flowed into its output and returns one per input. _GradLedger (read it
        next) decides where gradients may be added in place and where they land."""
        ledger = _GradLedger(self, self._seed_gradient(grad))
        order = _topological_order(self)
        for t in order:  # every tensor comes after all the ops that used it
            g = ledger.pop(t)
            if g is None:
                continue
            ctx = t._ctx
            if ctx is None:  # a leaf: keep what flowed here
                ledger.store_leaf(t, g)
                continue
            if ctx.fn is None:
                raise RuntimeError(_FREED_GRAPH)
            ctx.grad_out = ledger.offer(ctx)
            in_grads = ctx.fn.backward(ctx, g)
            in_grads = in_grads if isinstance(in_grads, tuple) else (in_grads,)
            if _debug:
                check_backward(ctx, in_grads)
            for parent, pg, need in zip(ctx.parents, in_grads, ctx.needs_input_grad):
                if pg is not None and need:
                    ledger.add(ctx.fn, parent, pg)
            if not retain_graph:
                ctx.release()  # free the saved activations now, not at the end
        if not retain_graph:
            _cut_graph(order)

    def _seed_gradient(self, grad: Any) -> Any:
        """The gradient backward() starts from: ones for a scalar, else the caller's array."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() needs a gradient argument for a non-scalar output of shape {self.shape}")
            return backend.array_module(self.data).ones_like(self.data)
        grad = _as_array(grad, dtype=self.data.dtype, device=self.device)
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient of shape {grad.shape} for a tensor of shape {self.shape}")
        return grad

    # operators and methods are attached in ops.py, next to the Functions they use


_FREED_GRAPH = ("backward() reached a tensor whose graph an earlier backward() already freed: "
                "pass retain_graph=True to the first call, or detach() tensors reused across steps")


def _owner(a: Any) -> Any:
    """The array that owns `a`'s memory (NumPy and CuPy point a view's .base at its owner)."""
    return a if getattr(a, "base", None) is None else a.base


class _GradLedger:
    """The pending gradients of one backward pass, and who may write into which memory.

    The rule every op keeps: a backward must return new arrays or views of its incoming grad,
    never an array that the graph keeps (a saved activation, an input). Given that, a pending
    gradient whose memory no other pending gradient sees is ours, and a second gradient for the
    same tensor is added into it in place (for a tied embedding that spares allocating and
    filling 154 MB every step). Memory is keyed by its owner: a view from reshape or transpose
    backward shares its owner's memory. Never written: the caller's seed, and every leaf's
    .grad once stored (optimizers update .grad in place, so one leaf's must not alias another's).

    A parameter in an optimizer's flat buffer (Tensor._grad_buf, see nn.FlatParameters) with no
    .grad yet gets its view of that buffer offered, once, to the first op that uses it
    (ctx.grad_out[i]), so that e.g. linear can write its weight gradient there (matmul out=)
    instead of into a fresh array the leaf would then copy. An op may ignore the offer.
    """

    def __init__(self, root: Tensor, seed: Any):
        self.pending: dict[int, Any] = {id(root): seed}
        self.seen: Counter[int] = Counter({id(_owner(seed)): 1})  # pending gradients per owner
        self.never_write: set[int] = {id(_owner(seed))}
        self.offered: dict[int, Any] = {}  # leaf id -> its flat-buffer view, handed to an op

    def pop(self, t: Tensor) -> Any:
        """The summed gradient of t, taken out of the ledger (None if nothing flowed to t)."""
        g = self.pending.pop(id(t), None)
        if g is not None:
            self.seen[id(_owner(g))] -= 1
        return g

    def offer(self, ctx: Context) -> list | None:
        """ctx.grad_out for this op: flat-buffer views for inputs that have no gradient yet."""
        dests = None
        for i, p in enumerate(ctx.parents):
            buf = p._grad_buf
            if buf is not None and p.grad is None and id(p) not in self.offered and ctx.needs_input_grad[i]:
                dests = dests or [None] * len(ctx.parents)
                dests[i] = self.offered[id(p)] = buf
        return dests

    def add(self, fn: type, parent: Tensor, pg: Any) -> None:
        """Add pg, the gradient op fn returned for its input `parent`, to parent's pending sum."""
        if pg.shape != parent.data.shape:
            raise RuntimeError(f"{fn.__name__}.backward returned a gradient of shape {pg.shape} "
                               f"for an input of shape {parent.data.shape}")
        key = id(parent)
        acc = self.pending.get(key)
        if acc is None:
            self.pending[key] = pg
            self.seen[id(_owner(pg))] += 1
        elif acc is self.offered.get(key) or self._owns(acc, pg):
            acc += pg  # the leaf's own slot of the flat buffer, or memory nothing else sees
        else:
            self.seen[id(_owner(acc))] -= 1
            self.pending[key] = acc = acc + pg
            self.seen[id(acc)] += 1

    def _owns(self, acc: Any, pg: Any) -> bool:
        """Whether acc may be added into: it owns its memory, and nothing else sees or keeps it."""
        return (acc.base is None and self.seen[id(acc)] == 1 and id(acc) not in self.never_write
                and acc.dtype == pg.dtype
                and getattr(acc.flags, "writeable", True))  # CuPy has no read-only arrays

    def store_leaf(self, t: Tensor, g: Any) -> None:
        """Accumulate g into leaf t's .grad (into its flat-buffer view when it has one)."""
        if isinstance(g, np.generic):
            g = np.asarray(g)
        if t.grad is not None:
            t.grad += g
            return
        buf = t._grad_buf
        if buf is not None and buf.shape == g.shape and buf.dtype == g.dtype:
            if g is not buf:  # an op wrote it there already, or copy it in now
                buf[...] = g
            t.grad = buf
        else:
            t.grad = g.copy() if id(_owner(g)) in self.never_write else g
        self.never_write.add(id(_owner(t.grad)))


def _cut_graph(order: list[Tensor]) -> None:
    """Cut a spent graph so its arrays can be freed. The emptied context stays (not None) so that
    a second backward through these tensors raises instead of treating them as leaves."""
    for t in order:
        if t._ctx is not None:
            t._ctx.parents = ()
            t._ctx.fn = None


# ---------------------------------------------------------------- debug mode
# MINIGRAD_DEBUG=1 (read once, here) or set_debug(True): check every op's backward against the
# rules _GradLedger relies on. Off by default: the checks cost a pass over each op's arrays.
_debug = os.environ.get("MINIGRAD_DEBUG", "0") not in ("", "0")


def set_debug(enabled: bool) -> None:
    """Turn the backward checks of the debug mode on or off (see check_backward)."""
    global _debug
    _debug = bool(enabled)


def is_debug() -> bool:
    return _debug


class BackwardRuleError(RuntimeError):
    """An op's backward broke a rule of the engine (raised in debug mode)."""


def _shares_memory(a: Any, b: Any) -> bool:
    if _owner(a) is _owner(b):
        return True
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.may_share_memory(a, b)


def check_backward(ctx: Context, in_grads: tuple) -> None:
    """Raise BackwardRuleError unless each gradient returned by ctx.fn.backward has its input's
    shape and dtype and shares no memory with an array the op saved or an input's data."""
    name = f"{ctx.fn.__name__}.backward"
    kept = [a for a in ctx.saved if hasattr(a, "shape")] + [p.data for p in ctx.parents]
    if len(in_grads) < len(ctx.parents) or any(g is not None for g in in_grads[len(ctx.parents):]):
        raise BackwardRuleError(f"{name} returned {len(in_grads)} gradients for {len(ctx.parents)} inputs")
    for i, (parent, pg) in enumerate(zip(ctx.parents, in_grads)):
        if pg is None or not ctx.needs_input_grad[i]:
            continue
        if pg.shape != parent.data.shape or pg.dtype != parent.data.dtype:
            raise BackwardRuleError(
                f"{name} returned a gradient of shape {tuple(pg.shape)} and dtype {pg.dtype} for input {i} "
                f"of shape {tuple(parent.data.shape)} and dtype {parent.data.dtype}")
        if any(_shares_memory(pg, a) for a in kept):
            raise BackwardRuleError(
                f"{name} returned, for input {i}, an array sharing memory with one the graph keeps "
                "(a saved array or an input); return a new array or a view of the incoming grad")


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
