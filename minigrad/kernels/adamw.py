"""AdamW over flat float32 device arrays (adamw.cu): the update minigrad.optim.AdamW makes, in one
launch. `adamw_update` takes one flat array; `adamw_update_ranges` takes ranges of the optimizer's
flat arrays, each with its own weight decay (its parameter groups), all in one launch."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import backend
from ._loader import kernel

_THREADS = 256
_MAX_BLOCKS = 4096


def _scalars(lr: float, betas: tuple[float, float], step: int) -> tuple[float, float]:
    if step < 1:
        raise ValueError(f"AdamW step counts from 1, got {step}")
    b1, b2 = betas
    return lr / (1 - b1 ** step), 1.0 / math.sqrt(1 - b2 ** step)


def _grid(n: int) -> int:
    return max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))


def _check(arrays, n: int, what: str) -> None:
    for a in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != n:
            raise ValueError(f"{what} needs contiguous float32 arrays of one size")


def adamw_update(param, grad, exp_avg, exp_avg_sq, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, step: int) -> None:
    """One AdamW step in place on contiguous float32 arrays of one size (step counts from 1)."""
    _check((param, grad, exp_avg, exp_avg_sq), param.size, "adamw_update")
    step_size, inv_sqrt_bc2 = _scalars(lr, betas, step)
    n = param.size
    kernel("adamw.cu", "adamw_flat")((_grid(n),), (_THREADS,), (
        param, grad, exp_avg, exp_avg_sq, np.int64(n), np.float32(lr * weight_decay), np.float32(betas[0]),
        np.float32(betas[1]), np.float32(eps), np.float32(step_size), np.float32(inv_sqrt_bc2)))


_tables: dict[tuple, tuple] = {}


def _table(like, ranges: tuple[tuple[int, int, float], ...]):
    """The ranges as device arrays (offsets then starts; weight decays), copied in once and kept:
    a step whose ranges did not change copies nothing in."""
    xp = backend.array_module(like)
    key = (xp.__name__, str(getattr(like, "device", "")), ranges)
    if key not in _tables:
        if len(_tables) > 16:
            _tables.clear()
        lengths = [hi - lo for lo, hi, _ in ranges]
        table = np.concatenate([[0], np.cumsum(lengths), [lo for lo, _, _ in ranges]]).astype(np.int64)
        _tables[key] = (xp.asarray(table), xp.asarray(np.array([wd for _, _, wd in ranges], dtype=np.float32)))
    return _tables[key]


def adamw_update_ranges(param, grad, exp_avg, exp_avg_sq, ranges: Sequence[tuple[int, int, float]], lr: float,
                        betas: tuple[float, float], eps: float, step: int) -> None:
    """AdamW in place on the ranges [lo, hi) of flat float32 arrays, range by range with its
    weight decay wd ((lo, hi, wd) each), in one launch."""
    _check((param, grad, exp_avg, exp_avg_sq), param.size, "adamw_update_ranges")
    ranges = tuple((int(lo), int(hi), float(wd)) for lo, hi, wd in ranges if hi > lo)
    if not ranges:
        return
    if any(lo < 0 or hi > param.size for lo, hi, _ in ranges):
        raise ValueError(f"adamw_update_ranges: a range outside the {param.size} elements")
    step_size, inv_sqrt_bc2 = _scalars(lr, betas, step)
    table, wds = _table(param, ranges)
    kernel("adamw.cu", "adamw_multi")((_grid(sum(hi - lo for lo, hi, _ in ranges)),), (_THREADS,), (
        param, grad, exp_avg, exp_avg_sq, table, wds, np.int32(len(ranges)), np.float32(lr), np.float32(betas[0]),
        np.float32(betas[1]), np.float32(eps), np.float32(step_size), np.float32(inv_sqrt_bc2)))
