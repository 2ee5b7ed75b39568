"""float16 mixed precision: half-precision forward and backward over float32 master weights,
with dynamic loss scaling (as torch.cuda.amp.GradScaler does it).

    mp = MixedPrecision(model.parameters())
    mp.half()                          # parameters now hold float16 copies
    (loss * mp.scaler.scale).backward()
    if mp.restore():                   # float32 weights back, gradients unscaled to float32
        optimizer.step()               # ... unless some gradient overflowed: then skip the step
    mp.scaler.update(...)              # restore() already did: halve on overflow, grow when calm

The optimizer, clipping and checkpoints never see float16: the parameters' own arrays are the
float32 masters, lent out as float16 copies only between half() and restore().
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from . import checks
from .tensor import Tensor


class LossScaler:
    """The loss scale: float16 gradients of a small loss underflow to zero, so the loss is
    multiplied by `scale` before backward and the gradients divided by it after. A step whose
    gradients overflowed (inf/NaN) is skipped and the scale halved; after `growth_interval`
    good steps in a row it doubles again."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        init_scale = checks.number("LossScaler", "init_scale", init_scale, lo=0, lo_open=True)
        growth_factor = checks.number("LossScaler", "growth_factor", growth_factor, lo=1, lo_open=True)
        backoff_factor = checks.number("LossScaler", "backoff_factor", backoff_factor, 0, 1, True, True)
        growth_interval = checks.integer("LossScaler", "growth_interval", growth_interval, 1)
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = int(growth_interval)
        self.good_steps = 0   # finite steps since the scale last changed
        self.skipped = 0      # steps skipped for inf/NaN gradients, in all

    def update(self, finite: bool) -> None:
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0
        else:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped += 1

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped,
                "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fn = "LossScaler.load_state_dict"  # every value checked before any is set
        scale = checks.number(fn, "state['scale']", state["scale"], lo=0, lo_open=True)
        good, skipped = (checks.integer(fn, f"state[{k!r}]", state[k], 0) for k in ("good_steps", "skipped"))
        interval = checks.integer(fn, "state['growth_interval']", state.get("growth_interval", self.growth_interval), 1)
        self.scale, self.good_steps, self.skipped, self.growth_interval = scale, good, skipped, interval


class MixedPrecision:
    """Lends the parameters out as float16 for a forward/backward, then takes the float32 masters
    back and turns the scaled float16 gradients into float32 ones (see the module docstring)."""

    def __init__(self, params: Iterable[Tensor], scaler: LossScaler | None = None, dtype=np.float16):
        self.params = checks.tensor_list("MixedPrecision", "params", params, Tensor)
        self.scaler = scaler or LossScaler()
        self.dtype = np.dtype(dtype)
        self._masters: list | None = None

    def half(self) -> None:
        """Swap each parameter's float32 array for a float16 copy (the masters are kept aside)."""
        if self._masters is not None:
            return  # already lent out (a further micro-batch of the same step)
        self._masters = [p.data for p in self.params]
        for p in self.params:
            p.data = p.data.astype(self.dtype)

    def restore(self) -> bool:
        """The masters back in place; gradients unscaled into float32. Returns whether every
        gradient is finite: when not, the gradients are dropped and the step must be skipped.
        The check is one device-to-host sync a step (as GradScaler's)."""
        if self._masters is None:
            raise RuntimeError("restore() without half()")
        for p, master in zip(self.params, self._masters):
            p.data = master
        self._masters = None
        inv = 1.0 / self.scaler.scale
        total = None
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad.astype(np.float32)
            g *= np.float32(inv)
            p.grad = g
            s = g.sum()  # inf or NaN anywhere makes the sum inf or NaN; stays on the device
            total = s if total is None else total + s
        finite = total is None or math.isfinite(float(total))
        if not finite:
            for p in self.params:
                p.grad = None
        self.scaler.update(finite)
        return finite


def loss_for_backward(loss: Tensor, scale: float) -> Tensor:
    """loss * scale, computed in float32 whatever the loss's dtype (a float16 loss times 2**16
    would overflow before backward begins)."""
    scale = checks.number("loss_for_backward", "scale", scale, lo=0, lo_open=True)
    if loss.dtype != np.float32:
        loss = loss.astype(np.float32)
    return loss * float(scale) if scale != 1.0 else loss

