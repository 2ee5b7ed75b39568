"""Finite-difference gradient checking: does an op's backward agree with its forward?"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import backend, checks
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-5, seed: int = 0) -> bool:
    """Compare backward's gradients with central differences, in float64.

    `fn(*inputs)` may return any shape: the check differentiates sum(out * r) for a fixed random
    r, which exercises every output element. Inputs that require grad are checked; each must be
    float64 (a float32 check would measure rounding, not the derivative). Raises GradcheckError
    naming the input and the worst element; returns True otherwise.
    """
    eps = checks.number("gradcheck", "eps", eps, lo=0, lo_open=True)
    atol = checks.number("gradcheck", "atol", atol, lo=0)
    rtol = checks.number("gradcheck", "rtol", rtol, lo=0)
    seed = checks.seed("gradcheck", seed)
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"gradcheck input {i} is {x.dtype}; use float64 (tensor.double())")
    out = fn(*inputs)
    xp = backend.array_module(out.data)
    r = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))

    def objective() -> float:
        with no_grad():
            return float((fn(*inputs).data * r).sum())

    for x in inputs:
        if isinstance(x, Tensor):
            x.grad = None
    (out * Tensor._wrap(r)).sum().backward()

    for i, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        analytic = backend.to_device(x.grad, "cpu") if x.grad is not None else np.zeros(x.shape)
        numeric = _central_differences(objective, x, eps)
        bad = np.abs(analytic - numeric) > atol + rtol * np.abs(numeric)
        if bad.any():
            j = int(np.argmax(np.abs(analytic - numeric)))
            idx = np.unravel_index(j, x.shape) if x.shape else ()
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) is wrong at {idx}: backward gives "
                f"{analytic.reshape(-1)[j]:.8g}, finite differences give {numeric.reshape(-1)[j]:.8g} "
                f"({int(bad.sum())} of {bad.size} elements outside atol={atol}, rtol={rtol})")
    return True


def _central_differences(objective: Callable[[], float], x: Tensor, eps: float) -> np.ndarray:
    """d objective / d x by central differences: each element of x nudged by +-eps in place,
    then restored."""
    numeric = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):  # indexing, not a flat view: works for strided inputs
        orig = float(x.data[idx])
        x.data[idx] = orig + eps
        up = objective()
        x.data[idx] = orig - eps
        down = objective()
        x.data[idx] = orig
        numeric[idx] = (up - down) / (2 * eps)
    return numeric
