"""AdamW over flat float32 CuPy arrays (adamw.cu): the update minigrad.optim.AdamW makes, in one
launch. `adamw_update` takes one flat buffer; `adamw_update_multi` takes lists of tensors' arrays
(per-tensor weight decay) and updates them all in one launch through tables of pointers."""
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


def adamw_update(param, grad, exp_avg, exp_avg_sq, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, step: int) -> None:
    """One AdamW step in place on contiguous float32 arrays of one size (step counts from 1)."""
    for a in (param, grad, exp_avg, exp_avg_sq):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != param.size:
            raise ValueError("adamw_update needs contiguous float32 arrays of one size")
    step_size, inv_sqrt_bc2 = _scalars(lr, betas, step)
    n = param.size
    grid = max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))
    kernel("adamw.cu", "adamw_flat")((grid,), (_THREADS,), (
        param, grad, exp_avg, exp_avg_sq, np.int64(n), np.float32(lr * weight_decay), np.float32(betas[0]),
        np.float32(betas[1]), np.float32(eps), np.float32(step_size), np.float32(inv_sqrt_bc2)))


def adamw_update_multi(params: Sequence, grads: Sequence, exp_avgs: Sequence, exp_avg_sqs: Sequence,
                       lr: float, betas: tuple[float, float], eps: float,
                       weight_decays: Sequence[float] | float, step: int) -> None:
    """adamw_update over many tensors in one launch; weight_decays is one value or one per tensor."""
    cp = backend.cupy()
    if isinstance(weight_decays, (int, float)):
        weight_decays = [weight_decays] * len(params)
    if not len(params) == len(grads) == len(exp_avgs) == len(exp_avg_sqs) == len(weight_decays):
        raise ValueError("adamw_update_multi: lists of different lengths")
    keep = [i for i, p in enumerate(params) if p.size]
    if not keep:
        return
    for arrs in (params, grads, exp_avgs, exp_avg_sqs):
        for i in keep:
            a = arrs[i]
            if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != params[i].size:
                raise ValueError("adamw_update_multi needs contiguous float32 arrays, matching in size")
    step_size, inv_sqrt_bc2 = _scalars(lr, betas, step)

    def ptrs(arrs):
        return cp.asarray(np.array([arrs[i].data.ptr for i in keep], dtype=np.uint64))

    offsets = cp.asarray(np.concatenate([[0], np.cumsum([params[i].size for i in keep])]).astype(np.int64))
    decays = cp.asarray(np.array([lr * weight_decays[i] for i in keep], dtype=np.float32))
    total = int(sum(params[i].size for i in keep))
    grid = max(1, min((total + _THREADS - 1) // _THREADS, _MAX_BLOCKS))
    kernel("adamw.cu", "adamw_multi")((grid,), (_THREADS,), (
        ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs), offsets, decays, np.int32(len(keep)),
        np.float32(betas[0]), np.float32(betas[1]), np.float32(eps), np.float32(step_size), np.float32(inv_sqrt_bc2)))
