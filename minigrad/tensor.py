"""Tensor and the autograd machinery: Function, Context, backward, no_grad.

Every op is a `Function` subclass with `forward(ctx, *arrays)` and `backward(ctx, grad)` side by
side (see minigrad/ops/). `Function.apply` runs the forward on raw arrays and, only when
grad mode is on and some input requires grad, records a `Context` on the output: that context is
the graph edge that `Tensor.backward` later walks.
"""
from __future__ import annotations

import contextlib
import operator
import threading
from typing import Any, Callable

import numpy as np

from . import autograd, backend, checks
from .autograd import BackwardRuleError, is_debug, set_debug  # noqa: F401 (minigrad.tensor.set_debug)

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

    # _grad_buf: this tensor's view of an optimizer's flat gradient buffer (flat.FlatParameters)
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
        return _ops().cast(self, dtype)

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

        The version you may know, with grads = {self: 1} and the graph in reverse topological
        order (self first; a tensor comes after every op that used it):

            for t in order:
                for p, g in zip(t.parents, t.op.backward(grads[t])):
                    grads[p] = grads.get(p, 0) + g

        The loop below is that loop (a leaf's sum becomes its .grad). autograd.GradLedger plays
        the `grads` dict, and adds what a 124M-parameter model needs (read it next): a tensor's
        sum is popped when its op runs, so it is freed as soon as it is used; a second gradient
        is added in place into memory nothing else sees, instead of allocating `a + b`; a
        parameter in an optimizer's flat buffer has its slice of that buffer offered to the op
        (ctx.grad_out), which may write the gradient straight there; a leaf's .grad never
        shares memory with another's. Inputs whose ctx.needs_input_grad is False get nothing."""
        ledger = autograd.GradLedger(self, self._seed_gradient(grad))
        order = autograd.topological_order(self)
        for t in order:  # every tensor comes after all the ops that used it
            g = ledger.pop(t)
            if g is None:
                continue
            ctx = t._ctx
            if ctx is None:  # a leaf: keep what flowed here
                ledger.store_leaf(t, g)
                continue
            if ctx.fn is None:
                raise RuntimeError(autograd.FREED_GRAPH)
            ctx.grad_out = ledger.offer(ctx)
            in_grads = ctx.fn.backward(ctx, g)
            in_grads = in_grads if isinstance(in_grads, tuple) else (in_grads,)
            if autograd.debug:
                autograd.check_backward(ctx, in_grads)
            for parent, pg, need in zip(ctx.parents, in_grads, ctx.needs_input_grad):
                if pg is not None and need:
                    ledger.add(ctx.fn, parent, pg)
            if not retain_graph:
                ctx.release()  # free the saved activations now, not at the end
        if not retain_graph:
            autograd.cut_graph(order)

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

    # ------------------------------------------------------------ operators and methods
    # Each calls the op of minigrad/ops that computes it (its Function, forward and backward side
    # by side, is in the file named). Those modules import this one, so this one imports them
    # on first use (_ops()), never at its top: no import cycle.
    def __add__(self, other: Any) -> Tensor:  # elementwise.py
        return _ops().add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops().add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops().sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops().sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops().mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops().mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops().div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops().div(other, self)

    def __neg__(self) -> Tensor:
        return _ops().NegFn.apply(self)

    def __pow__(self, p: float) -> Tensor:
        return _ops().power(self, p)

    def exp(self) -> Tensor:
        return _ops().ExpFn.apply(self)

    def log(self) -> Tensor:
        return _ops().LogFn.apply(self)

    def tanh(self) -> Tensor:
        return _ops().TanhFn.apply(self)

    def sqrt(self) -> Tensor:
        return _ops().SqrtFn.apply(self)

    def relu(self) -> Tensor:
        return _ops().relu(self)

    def masked_fill(self, mask: Any, value: float) -> Tensor:
        """Where mask is True, `value`; elsewhere self (no gradient flows to filled places)."""
        return _ops().masked_fill(self, mask, value)

    def __matmul__(self, other: Any) -> Tensor:  # products.py
        return _ops().matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops().matmul(other, self)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:  # reduce.py
        return _ops().sum_(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return _ops().mean(self, axis, keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return _ops().max_(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:  # shape.py
        return _ops().reshape(self, *shape)

    view = reshape

    def flatten(self) -> Tensor:
        return _ops().reshape(self, -1)

    def unsqueeze(self, axis: int) -> Tensor:
        return _ops().unsqueeze(self, axis)

    def squeeze(self, axis: int | None = None) -> Tensor:
        return _ops().squeeze(self, axis)

    def permute(self, *dims: Any) -> Tensor:
        return _ops().permute(self, *dims)

    def transpose(self, axis0: int | None = None, axis1: int | None = None) -> Tensor:
        return _ops().transpose(self, axis0, axis1)

    @property
    def T(self) -> Tensor:  # noqa: N802 (NumPy's and PyTorch's name)
        return _ops().transpose(self)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops().getitem(self, index)

    def softmax(self, axis: int = -1) -> Tensor:  # softmax_family.py
        return _ops().softmax(self, axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return _ops().log_softmax(self, axis)

    # comparisons and argmax give constant tensors: no gradient flows through them
    def _compare(self, other: Any, op: Callable[[Any, Any], Any]) -> Tensor:
        return Tensor._wrap(op(self.data, _ops().on_device_of(other, self.data)))

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(other, operator.lt)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(other, operator.le)

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(other, operator.gt)

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(other, operator.ge)

    def eq(self, other: Any) -> Tensor:
        return self._compare(other, operator.eq)

    def ne(self, other: Any) -> Tensor:
        return self._compare(other, operator.ne)

    def argmax(self, axis: int | None = None) -> Tensor:
        if axis is not None:
            axis = checks.axis("argmax", axis, self.ndim)
        return Tensor._wrap(self.data.argmax(axis=axis))


def _ops():
    """The package minigrad.ops, imported on first use (see the comment above Tensor.__add__)."""
    from . import ops
    return ops
