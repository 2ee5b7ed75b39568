"""Optimizers (AdamW, SGD), gradient clipping and a warmup-then-cosine schedule.

Updates are in place on each parameter's array with reused scratch buffers: a training step
allocates nothing here, which matters as much as the arithmetic on a CPU.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


from . import backend, checks
from .flat import FlatParameters
from .tensor import Tensor


def _unique(params: Iterable[Tensor]) -> list[Tensor]:
    out, seen = [], set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Optimizer:
    """Holds the parameter groups and, for the parameters it trains, one FlatParameters: all
    their arrays back to back in `flat.data`, their gradients in `flat.grad` (the Parameters
    become views), so that an update, a clip or an all-reduce is one pass over one array.
    Groups are contiguous ranges of the flat arrays (`group_ranges`)."""

    def __init__(self, params: Iterable[Tensor], defaults: dict[str, Any]):
        name = type(self).__name__
        params = checks.tensor_list(name, "params", params, (Tensor, dict), allow_empty=True)
        if params and isinstance(params[0], dict):  # parameter groups, as in PyTorch
            groups = [dict(defaults, **g) for g in params]
            for i, g in enumerate(groups):
                g["params"] = checks.tensor_list(name, f"params[{i}]['params']", g.get("params", ()), Tensor,
                                                 allow_empty=True)
                self.check_group(g, f"params[{i}] ")
        else:
            groups = [dict(defaults, params=checks.tensor_list(name, "params", params, Tensor, allow_empty=True))]
            self.check_group(groups[0], "")
        seen: set[int] = set()
        for g in groups:  # a parameter belongs to one group (its first)
            g["params"] = [p for p in _unique(g["params"]) if id(p) not in seen]
            seen.update(id(p) for p in g["params"])
        if not any(g["params"] for g in groups):
            raise ValueError(f"{name}: params is an empty parameter list")
        self.param_groups = groups
        self.state: dict[int, dict[str, Any]] = {}
        self.step_count = 0
        self.flat = FlatParameters(self.params)
        self.group_ranges, i = [], 0
        for g in groups:
            self.group_ranges.append((self.flat.offsets[i], self.flat.offsets[i + len(g["params"])]))
            i += len(g["params"])
        self._flat_state: dict[str, Any] = {}

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = checks.number(type(self).__name__, "lr", value, lo=0)  # a schedule's value, checked too
        for g in self.param_groups:
            g["lr"] = value

    def check_group(self, group: dict[str, Any], where: str) -> None:
        """Raise ValueError or TypeError, naming the optimizer and the key, unless the group's
        hyperparameters are in range (`where` prefixes the key: "params[1] " for a group). The
        optimizers below define it; their update trusts what it let through."""

    def zero_grad(self) -> None:
        """Forget the gradients (the flat buffer is not cleared: the next backward overwrites
        each parameter's view, so zeroing costs nothing)."""
        for p in self.params:
            p.grad = None

    def flat_state(self, name: str):
        """A per-parameter state (exp_avg, ...) as one flat array, zeros at first; self.state
        holds each parameter's view of it, as PyTorch's per-parameter state."""
        if name not in self._flat_state:
            xp = backend.array_module(self.flat.data)
            arr = xp.zeros_like(self.flat.data)
            for p, lo, hi in zip(self.flat.params, self.flat.offsets, self.flat.offsets[1:]):
                st = self.state.setdefault(id(p), {})
                view = arr[lo:hi].reshape(p.shape)
                if name in st:  # loaded from a checkpoint before the flat array existed
                    view[...] = st[name]
                st[name] = view
            self._flat_state[name] = arr
        return self._flat_state[name]

    def _segments(self) -> list[tuple[dict[str, Any], int, int]]:
        """(group, lo, hi): the flat ranges to update, one per group when every parameter has
        a gradient; parameters without one are skipped, as PyTorch does."""
        self.flat.check_intact()
        runs = self.flat.gather_grads()
        out = []
        for g, (glo, ghi) in zip(self.param_groups, self.group_ranges):
            for lo, hi in runs:
                lo, hi = max(lo, glo), min(hi, ghi)
                if lo < hi:
                    out.append((g, lo, hi))
        return out

    # ------------------------------------------------------------ state for exact resume
    def state_dict(self) -> dict[str, Any]:
        """{'arrays': {name: ndarray}, 'meta': JSON-able dict}; arrays keyed by parameter index."""
        arrays = {}
        for i, p in enumerate(self.params):
            for k, v in self.state.get(id(p), {}).items():
                if k.startswith("_"):
                    continue  # scratch space
                arrays[f"{i}.{k}"] = backend.to_device(v, "cpu")
        meta = {"step_count": self.step_count,
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]}
        return {"arrays": arrays, "meta": meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self.params
        meta, arrays = state["meta"], state["arrays"]
        if len(meta["groups"]) != len(self.param_groups):
            raise ValueError("optimizer state has a different number of parameter groups")
        loaded: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            i, name = key.split(".", 1)
            i = int(i)
            if i >= len(params):
                raise ValueError(f"optimizer state for parameter {i}, but only {len(params)} parameters")
            p = params[i]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"optimizer state {key} has shape {tuple(value.shape)}, parameter has {p.shape}")
            loaded.setdefault(id(p), {})[name] = backend.to_device(value, p.device).astype(p.dtype)
        restored = [{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()} for saved in meta["groups"]]
        for i, (g, saved) in enumerate(zip(self.param_groups, restored)):
            self.check_group(dict(g, **saved), f"state['meta']['groups'][{i}] ")  # before anything changes
        for g, saved in zip(self.param_groups, restored):
            g.update(saved)
        self.step_count = int(meta["step_count"])
        self.state, self._flat_state = loaded, {}
        for name in sorted({n for st in loaded.values() for n in st}):
            self.flat_state(name)  # back into flat arrays (zeros where a parameter had none)


class AdamW(Optimizer):
    """Adam with decoupled weight decay, exactly PyTorch's torch.optim.AdamW update:

        p -= lr * wd * p
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    over the flat arrays, one pass per parameter group (see adamw_flat); on the GPU, one kernel
    for all the groups that share lr, betas and eps (kernels/adamw.cu), `MINIGRAD_FUSED=0` aside.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._scratch = None

    def check_group(self, group: dict[str, Any], where: str) -> None:
        """lr, eps, weight_decay finite and >= 0; betas two numbers in [0, 1) (as PyTorch's)."""
        for key in ("lr", "eps", "weight_decay"):
            group[key] = checks.number("AdamW", where + key, group[key], lo=0)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"AdamW: {where}betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(checks.number("AdamW", f"{where}betas[{i}]", b, 0.0, 1.0, hi_open=True)
                               for i, b in enumerate(betas))

    def step(self) -> None:
        segments = self._segments()
        self.step_count += 1
        t = self.step_count
        m, v = self.flat_state("exp_avg"), self.flat_state("exp_avg_sq")
        from . import kernels
        if self.flat.data.dtype == np.float32 and kernels.use_fused(self.flat.data):  # the kernel's one form
            self._fused_step(segments, m, v, t)
            return
        if self._scratch is None:
            xp = backend.array_module(self.flat.data)
            # NumPy: a chunk that stays in L2 cache; CuPy: big chunks (bandwidth is plentiful)
            self._scratch = xp.empty(min(len(self.flat), _CHUNK if xp is np else 1 << 24), self.flat.data.dtype)
        for group, lo, hi in segments:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            adamw_flat(self.flat.data[lo:hi], self.flat.grad[lo:hi], m[lo:hi], v[lo:hi], self._scratch,
                       lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, step=t)

    def _fused_step(self, segments, m, v, t: int) -> None:
        """The update on the GPU: one launch per set of groups sharing lr, betas and eps (one in
        all for GPT-2's two groups), each range with its own weight decay."""
        from .kernels import adamw_update_ranges
        launches: dict[tuple, list] = {}
        for group, lo, hi in segments:
            key = (group["lr"], tuple(group["betas"]), group["eps"])
            launches.setdefault(key, []).append((lo, hi, group["weight_decay"]))
        for (lr, betas, eps), ranges in launches.items():
            adamw_update_ranges(self.flat.data, self.flat.grad, m, v, ranges, lr, betas, eps, t)


# A chunk of 64K floats and its scratch stay in the CPU's L2 cache, so the dozen passes of the
# update run from cache and main memory sees each array about once (~3x faster than whole-array
# passes at GPT-2 124M).
_CHUNK = 1 << 16


def adamw_flat(p, g, m, v, scratch, *, lr: float, b1: float, b2: float, eps: float,
               weight_decay: float, step: int) -> None:
    """AdamW on flat 1-D arrays in place, `scratch.size` elements at a time (NumPy or CuPy).

    The one place the update's arithmetic lives; a fused GPU kernel can replace the loop.
    """
    for name, x, lo, hi in (("lr", lr, 0, None), ("b1", b1, 0, 1), ("b2", b2, 0, 1), ("eps", eps, 0, None),
                            ("weight_decay", weight_decay, 0, None)):
        checks.number("adamw_flat", name, x, lo, hi, hi_open=True)
    step = checks.integer("adamw_flat", "step", step, 1)
    xp = backend.array_module(p)
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    step_size = lr / bc1
    inv_sqrt_bc2 = 1.0 / math.sqrt(bc2)
    decay = lr * weight_decay
    n = scratch.size
    for i in range(0, p.size, n):
        sl = slice(i, i + n)
        pc, gc, mc, vc = p[sl], g[sl], m[sl], v[sl]
        _adamw_update(xp, pc, gc, mc, vc, scratch[:pc.size], decay, b1, b2, eps, step_size, inv_sqrt_bc2)


def _adamw_update(xp, p, g, m, v, t, decay, b1, b2, eps, step_size, inv_sqrt_bc2) -> None:
    """One AdamW update of p in place, PyTorch's formula; t is scratch of p's size."""
    if decay:
        p *= 1 - decay
    m *= b1
    xp.multiply(g, 1 - b1, out=t)
    m += t                                  # m = b1 m + (1 - b1) g
    v *= b2
    xp.multiply(g, g, out=t)
    t *= 1 - b2
    v += t                                  # v = b2 v + (1 - b2) g^2
    xp.sqrt(v, out=t)
    t *= inv_sqrt_bc2
    t += eps
    xp.divide(m, t, out=t)
    t *= -step_size
    p += t                                  # p -= lr / bc1 * m / (sqrt(v / bc2) + eps)


class SGD(Optimizer):
    """SGD with optional momentum and (coupled, L2) weight decay, as torch.optim.SGD."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def check_group(self, group: dict[str, Any], where: str) -> None:
        """lr, momentum and weight_decay finite and >= 0."""
        for key in ("lr", "momentum", "weight_decay"):
            group[key] = checks.number("SGD", where + key, group[key], lo=0)

    def step(self) -> None:
        self.step_count += 1
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad + wd * p.data if wd else p.grad
                if mom:
                    st = self.state.setdefault(id(p), {})
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d.copy()
                    else:
                        st["momentum_buffer"] *= mom
                        st["momentum_buffer"] += d
                    d = st["momentum_buffer"]
                p.data -= lr * d


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; returns the
    norm before clipping (as torch.nn.utils.clip_grad_norm_).

    Gradients that together fill an optimizer's flat gradient buffer are handled as that one
    array: one BLAS dot product and one scaling pass.
    """
    params = [params] if isinstance(params, Tensor) else params  # as PyTorch: one tensor, or many
    params = checks.tensor_list("clip_grad_norm_", "params", params, Tensor, allow_empty=True)
    max_norm = checks.number("clip_grad_norm_", "max_norm", max_norm, lo=0, lo_open=True)
    grads = [p.grad for p in _unique(params) if p.grad is not None]
    if not grads:
        return 0.0
    arrays = []  # whole flat buffers where the gradients cover one, else the gradients themselves
    by_owner: dict[int, list] = {}
    for g in grads:
        by_owner.setdefault(id(g.base) if g.base is not None else id(g), []).append(g)
    for gs in by_owner.values():
        owner = gs[0].base
        if owner is not None and owner.ndim == 1 and sum(g.size for g in gs) == owner.size:
            arrays.append(owner)  # disjoint views (de-duplicated parameters) covering all of it
        else:
            arrays.extend(gs)
    # vdot runs in BLAS over the flat array: one pass, no squared temporary
    total = math.sqrt(sum(float(backend.array_module(a).vdot(a.ravel(), a.ravel())) for a in arrays))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for a in arrays:
            a *= a.dtype.type(coef)
    return total


class CosineWithWarmup:
    """Linear warmup from `warmup_start_lr` to the optimizer's peak lr over `warmup_steps`, then
    cosine decay to `min_lr` at `total_steps` (held there after). Call step() once per update."""

    KEYS = ("peak_lr", "warmup_steps", "total_steps", "min_lr", "warmup_start_lr", "last_step")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 min_lr: float = 0.0, warmup_start_lr: float = 0.0):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"CosineWithWarmup: optimizer must be an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._set(dict(peak_lr=optimizer.lr, warmup_steps=warmup_steps, total_steps=total_steps,
                       min_lr=min_lr, warmup_start_lr=warmup_start_lr, last_step=0), "")
        self.optimizer.lr = self.lr_at(0)

    def _set(self, values: dict[str, Any], where: str) -> None:
        """Check every value (steps integers >= 0, rates finite, 0 <= min_lr <= peak_lr), then
        set them all: a bad one raises ValueError or TypeError naming it, and changes nothing."""
        fn = "CosineWithWarmup"
        peak = checks.number(fn, where + "peak_lr", values["peak_lr"], lo=0)
        out = {k: checks.integer(fn, where + k, values[k], 0) for k in ("warmup_steps", "total_steps", "last_step")}
        out["warmup_start_lr"] = checks.number(fn, where + "warmup_start_lr", values["warmup_start_lr"], lo=0)
        out["min_lr"] = checks.number(fn, where + "min_lr", values["min_lr"], lo=0)
        if out["min_lr"] > peak:  # the cosine would climb from the peak instead of decaying
            raise ValueError(f"{fn}: {where}min_lr={out['min_lr']} is above the peak lr {peak} (the optimizer's)")
        for k, v in dict(out, peak_lr=peak).items():
            setattr(self, k, v)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * step / self.warmup_steps
        decay = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay, 1.0)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self) -> float:
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"CosineWithWarmup: state must be a dict from state_dict(), got {type(state).__name__}")
        if set(state) != set(self.KEYS):
            raise ValueError(f"CosineWithWarmup: state has keys {list(state)}, expected {', '.join(self.KEYS)}")
        self._set(state, "state: ")
        self.optimizer.lr = self.lr_at(self.last_step)


