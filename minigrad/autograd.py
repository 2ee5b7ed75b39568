"""The bookkeeping of Tensor.backward (read tensor.py's Tensor.backward first): the topological
order, GradLedger (where gradients may be added in place, and where they land), and the debug
mode that checks every op's backward against the rule the ledger relies on."""
from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # for annotations only: tensor.py imports this module
    from .tensor import Context, Tensor

FREED_GRAPH = ("backward() reached a tensor whose graph an earlier backward() already freed: "
               "pass retain_graph=True to the first call, or detach() tensors reused across steps")


def _owner(a: Any) -> Any:
    """The array that owns `a`'s memory (NumPy and CuPy point a view's .base at its owner)."""
    return a if getattr(a, "base", None) is None else a.base


class GradLedger:
    """The pending gradients of one backward pass, and who may write into which memory.

    The rule every op keeps: a backward must return new arrays or views of its incoming grad,
    never an array that the graph keeps (a saved activation, an input). Given that, a pending
    gradient whose memory no other pending gradient sees is ours, and a second gradient for the
    same tensor is added into it in place (for a tied embedding that spares allocating and
    filling 154 MB every step). Memory is keyed by its owner: a view from reshape or transpose
    backward shares its owner's memory. Never written: the caller's seed, and every leaf's
    .grad once stored (optimizers update .grad in place, so one leaf's must not alias another's).

    A parameter in an optimizer's flat buffer (Tensor._grad_buf, see flat.FlatParameters) with no
    .grad yet gets its view of that buffer offered, once, to the first op that uses it
    (ctx.grad_out[i]), so that e.g. linear can write its weight gradient there (matmul out=)
    instead of into a fresh array the leaf would then copy. An op may ignore the offer.

    Likewise an input whose gradient so far is memory the ledger may add into is offered that
    sum (ctx.grad_sum[i]): an op that adds its own gradient into it in place returns that very
    array, and the sum of the two branches costs no pass of its own (a fused LayerNorm's backward
    adds into the residual stream's gradient). An op may ignore this offer too.
    """

    def __init__(self, root: Tensor, seed: Any):
        self.pending: dict[int, Any] = {id(root): seed}
        self.seen: Counter[int] = Counter({id(_owner(seed)): 1})  # pending gradients per owner
        self.never_write: set[int] = {id(_owner(seed))}
        self.offered: dict[int, Any] = {}  # leaf id -> its flat-buffer view, handed to an op
        self.popped: int | None = None     # the owner of the gradient pop() handed out last
        self.sums_offered: dict[int, Any] = {}  # parent id -> the pending sum offered to the op now running

    def pop(self, t: Tensor) -> Any:
        """The summed gradient of t, taken out of the ledger (None if nothing flowed to t)."""
        g = self.pending.pop(id(t), None)
        if g is not None:
            self.seen[id(_owner(g))] -= 1
            self.popped = id(_owner(g))  # the op about to run reads it: never offered for adding into
        return g

    def offer(self, ctx: Context) -> list | None:
        """ctx.grad_out for this op: flat-buffer views for inputs that have no gradient yet. Sets
        ctx.grad_sum too: the pending sums this op may add into (see the class docstring)."""
        dests = sums = None
        for i, p in enumerate(ctx.parents):
            if not ctx.needs_input_grad[i]:
                continue
            buf = getattr(p, "_grad_buf", None)
            if buf is not None and p.grad is None and id(p) not in self.offered:
                dests = dests or [None] * len(ctx.parents)
                dests[i] = self.offered[id(p)] = buf
            acc = self.pending.get(id(p))
            once = sum(q is p for q in ctx.parents) == 1
            if acc is not None and once and id(_owner(acc)) != self.popped \
                    and (acc is self.offered.get(id(p)) or self._owns(acc, acc)):
                sums = sums or [None] * len(ctx.parents)
                sums[i] = acc
        ctx.grad_sum = sums
        self.sums_offered = {id(p): a for p, a in zip(ctx.parents, sums or ()) if a is not None}
        return dests

    def add(self, fn: type, parent: Tensor, pg: Any) -> None:
        """Add pg, the gradient op fn returned for its input `parent`, to parent's pending sum."""
        if pg.shape != parent.data.shape:
            raise RuntimeError(f"{fn.__name__}.backward returned a gradient of shape {pg.shape} "
                               f"for an input of shape {parent.data.shape}")
        key = id(parent)
        acc = self.pending.get(key)
        if pg is acc and self.sums_offered.get(key) is pg:
            return  # the op added its gradient into the sum it was offered (grad_sum)
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
        buf = getattr(t, "_grad_buf", None)  # a parameter in a flat buffer: fill its view
        if buf is not None and buf.shape == g.shape and buf.dtype == g.dtype:
            if g is not buf:  # an op wrote it there already, or copy it in now
                buf[...] = g
            t.grad = buf
        else:
            t.grad = g.copy() if id(_owner(g)) in self.never_write else g
        self.never_write.add(id(_owner(t.grad)))


def offered(ctx: Context, i: int, shape: tuple, dtype, kind: str = "grad_out") -> Any:
    """The array the ledger offered for input i's gradient (kind "grad_out": to write it into;
    "grad_sum": to add it into), or None when it offered none or one a kernel cannot take (another
    shape or dtype, or not contiguous)."""
    offers = getattr(ctx, kind, None)
    a = offers[i] if offers else None
    ok = a is not None and tuple(a.shape) == tuple(shape) and a.dtype == dtype and a.flags.c_contiguous
    return a if ok else None


def cut_graph(order: list[Tensor]) -> None:
    """Cut a spent graph so its arrays can be freed. The emptied context stays (not None) so that
    a second backward through these tensors raises instead of treating them as leaves."""
    for t in order:
        if t._ctx is not None:
            t._ctx.parents = ()
            t._ctx.fn = None


# ---------------------------------------------------------------- debug mode
# MINIGRAD_DEBUG=1 (read once, here) or set_debug(True): check every op's backward against the
# rules GradLedger relies on. Off by default: the checks cost a pass over each op's arrays.
debug = os.environ.get("MINIGRAD_DEBUG", "0") not in ("", "0")


def set_debug(enabled: bool) -> None:
    """Turn the backward checks of the debug mode on or off (see check_backward)."""
    global debug
    debug = bool(enabled)


def is_debug() -> bool:
    return debug


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


def topological_order(root: Tensor) -> list[Tensor]:
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
