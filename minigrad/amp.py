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

Given the optimizer's flat buffers (`flat=optimizer.flat`), the float16 copies are views of one
persistent flat float16 array, refreshed by one cast a step, and the float16 gradients land in
a flat float16 array beside it (backward writes each parameter's into its view), which one pass
unscales into the optimizer's float32 gradient buffer while noting any inf or NaN (on the GPU, one
kernel: kernels/unscale.cu). Parameters outside the flat buffers (frozen ones) are cast one by one.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import backend, checks
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
    back and turns the scaled float16 gradients into float32 ones (see the module docstring).
    `flat`: the optimizer's FlatParameters, whose parameters then get views of flat float16 arrays."""

    def __init__(self, params: Iterable[Tensor], scaler: LossScaler | None = None, dtype=np.float16,
                 flat: Any = None):
        self.params = checks.tensor_list("MixedPrecision", "params", params, Tensor)
        self.scaler = scaler or LossScaler()
        self.dtype = np.dtype(dtype)
        self.flat = flat
        in_flat = {id(p) for p in flat.params} if flat is not None else set()
        self._loose = [p for p in self.params if id(p) not in in_flat]  # cast one by one
        self._masters: list | None = None
        self._half = None  # (data16, grad16, [(param, data16 view, grad16 view)]), made on first use
        self._bufs32: list = []  # the flat parameters' float32 gradient views, while lent out
        self._unscaler = None    # kernels.Unscaler, on the GPU
        self._flag_pending = False

    def half(self) -> None:
        """Swap each parameter's float32 array for a float16 copy (the masters are kept aside)."""
        if self._masters is not None:
            return  # already lent out (a further micro-batch of the same step)
        self._masters = [p.data for p in self.params]
        if self.flat is not None:
            data16, _, views = self._flat_half()
            data16[...] = self.flat.data                # one cast for every parameter
            self._bufs32 = [p._grad_buf for p, _, _ in views]
            for p, d16, g16 in views:
                p.data, p._grad_buf = d16, g16          # backward writes float16 gradients there
        for p in self._loose:
            p.data = p.data.astype(self.dtype)

    def _flat_half(self):
        if self._half is None:
            xp, f = backend.array_module(self.flat.data), self.flat
            data16, grad16 = xp.empty(len(f), dtype=self.dtype), xp.empty(len(f), dtype=self.dtype)
            views = [(p, data16[lo:hi].reshape(p.shape), grad16[lo:hi].reshape(p.shape))
                     for p, lo, hi in zip(f.params, f.offsets, f.offsets[1:])]
            self._half = (data16, grad16, views)
        return self._half

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
        bad = self._unscale_flat(inv) if self.flat is not None else []
        for p in self._loose:
            if p.grad is None:
                continue
            g = p.grad.astype(np.float32)
            g *= np.float32(inv)
            p.grad = g
            bad.append(~backend.array_module(g).isfinite(g).all())  # stays on the device
        finite = self._finite(bad)
        if not finite:
            for p in self.params:
                p.grad = None
        self.scaler.update(finite)
        return finite

    def _unscale_flat(self, inv: float) -> list:
        """The float16 gradients of the flat parameters unscaled into the optimizer's float32
        buffer, one pass per run of parameters that have one (one run when all do); their float32
        views become the gradients. Returns the overflow checks still on the device (the kernel's
        go to its flag instead)."""
        from . import kernels
        _, grad16, views = self._flat_half()
        f, runs, bad = self.flat, [], []
        for (p, _, _), buf, lo, hi in zip(views, self._bufs32, f.offsets, f.offsets[1:]):
            p._grad_buf = buf
            if p.grad is None:
                continue
            p.grad = buf
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((lo, hi))
        for lo, hi in runs:
            g16, g32 = grad16[lo:hi], f.grad[lo:hi]
            if kernels.use_fused(g16):
                self._unscaler = self._unscaler or kernels.Unscaler()
                self._unscaler.unscale(g16, g32, inv)
                self._flag_pending = True
            else:
                xp = backend.array_module(g16)
                xp.multiply(g16, np.float32(inv), out=g32, dtype=np.float32)
                bad.append(~xp.isfinite(g16).all())
        return bad

    def _finite(self, bad: list) -> bool:
        """Reads the overflow checks back: the unscaling kernel's flag, and the device booleans
        of the other paths, or-ed together first (each read is a host sync)."""
        finite = True
        if self._flag_pending:
            self._flag_pending = False
            finite = self._unscaler.finite()
        if bad:
            total = bad[0]
            for b in bad[1:]:
                total = total | b
            finite = finite and not bool(total)
        return finite


def loss_for_backward(loss: Tensor, scale: float) -> Tensor:
    """loss * scale, computed in float32 whatever the loss's dtype (a float16 loss times 2**16
    would overflow before backward begins)."""
    scale = checks.number("loss_for_backward", "scale", scale, lo=0, lo_open=True)
    if loss.dtype != np.float32:
        loss = loss.astype(np.float32)
    return loss * float(scale) if scale != 1.0 else loss

