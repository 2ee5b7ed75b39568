"""The optimizer side of the parameters: FlatParameters, which optim.Optimizer builds over the
parameters it trains (read optim.py first). A parameter's `_grad_buf` is its view of the flat
gradient array; autograd.GradLedger offers that view to the op computing the gradient.
"""
from __future__ import annotations

from typing import Iterable

from . import backend, checks
from .tensor import Tensor


class FlatParameters:
    """The parameters' arrays as views of one contiguous array, their gradients of another.

    Built by an optimizer over the parameters it trains, so that clipping, the all-reduce of
    data-parallel training and the optimizer's update are each one pass over one array instead
    of one small pass per parameter (148 for GPT-2 124M). Parameters keep their shapes and names
    (state_dict is unchanged); frozen ones are not handed in and cost nothing.

        data  (N,)  every parameter, in order, back to back
        grad  (N,)  their gradients; backward() copies a parameter's gradient into its view
    """

    def __init__(self, params: Iterable[Tensor]):
        params = checks.tensor_list("FlatParameters", "params", params, Tensor)
        first = params[0].data
        xp, dtype = backend.array_module(first), first.dtype
        for p in params:
            if backend.array_module(p.data) is not xp or p.dtype != dtype:
                raise ValueError(f"one flat buffer needs one device and dtype; got {p.dtype} on {p.device} "
                                 f"beside {dtype} on {params[0].device}")
        self.params = params
        self.offsets = [0]
        for p in params:
            self.offsets.append(self.offsets[-1] + p.size)
        self.data = xp.empty(self.offsets[-1], dtype=dtype)
        self.grad = xp.zeros(self.offsets[-1], dtype=dtype)
        for p, lo, hi in zip(params, self.offsets, self.offsets[1:]):
            self.data[lo:hi] = p.data.reshape(-1)
            p.data = self.data[lo:hi].reshape(p.shape)
            p._grad_buf = self.grad[lo:hi].reshape(p.shape)
            if p.grad is not None:
                p._grad_buf[...] = p.grad
                p.grad = p._grad_buf

    def __len__(self) -> int:
        return self.offsets[-1]

    def check_intact(self) -> None:
        """Raise if a parameter's array was replaced (model.to() or astype() after the optimizer)."""
        for p in self.params:
            if p._grad_buf is None or p.data.base is not self.data:
                raise RuntimeError(
                    "a parameter no longer lives in its optimizer's flat buffer (the model was moved or "
                    "cast after the optimizer was built): build the optimizer after model.to()/astype()")

    def gather_grads(self) -> list[tuple[int, int]]:
        """Make every gradient the optimizer sees live in `grad`, and return the element ranges
        [lo, hi) of the runs of parameters that have one (one range when all do).

        A gradient assigned by hand (p.grad = array) is copied into the parameter's view.
        """
        runs: list[tuple[int, int]] = []
        for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
            if p.grad is None:
                continue
            if p.grad is not p._grad_buf:
                p._grad_buf[...] = p.grad
                p.grad = p._grad_buf
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((lo, hi))
        return runs

    def fill_missing_grads(self) -> None:
        """Give every parameter without a gradient a zero one (data-parallel ranks must all
        reduce the same array, even where a rank's batch did not reach a parameter)."""
        for p in self.params:
            if p.grad is None:
                p._grad_buf[...] = 0
                p.grad = p._grad_buf
