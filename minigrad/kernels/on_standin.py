"""The CUDA kernels on the stand-in device (minigrad/standin.py), where no GPU runs them.

`launch(name, defines, grid, block, args)` is what `_loader.Kernel` does for stand-in arrays: it
checks the arguments as the real launch would need them (contiguous arrays of the kernel's
dtypes), counts one launch (minigrad/launchcount.py), and does the kernel's work in NumPy on the
arrays' memory, writing the kernel's outputs in place. So CI runs the fused ops' own launchers and
Functions, their shapes, dtypes, scratch buffers and syncs, with results equal to the kernels'
to float32 rounding. The arithmetic of each kernel (its tiles, its order of summation) is checked
elsewhere: twins.py and the CUDA emulator of the tests.
"""
from __future__ import annotations

import math

import numpy as np

from .. import launchcount, standin
from . import twins

f32 = np.float32


def launch(name: str, defines: dict[str, int], grid, block, args) -> None:
    arrays = []
    for a in args:
        if isinstance(a, standin.ndarray):
            a = a._a
            if not a.flags.c_contiguous:
                raise ValueError(f"kernel {name}: an argument of shape {a.shape} is not contiguous "
                                 "(kernels index raw memory: pass contiguous arrays)")
        elif isinstance(a, np.ndarray):
            raise TypeError(f"kernel {name}: a NumPy array argument (a kernel takes device arrays)")
        arrays.append(a)
    launchcount.tally("kernel", name)
    _IMPL[name](*arrays)


def _rows(a, N: int, C: int):
    return a.reshape(N, C).astype(f32)


def _put(out, value) -> None:
    """Store into a kernel's output (float32 math rounded to its dtype, as the kernels store)."""
    out[...] = np.asarray(value).reshape(out.shape).astype(out.dtype)


# ---------------------------------------------------------------- layernorm.cu
def _layernorm_forward(x, w, b, out, mean, rstd, N, C, eps):
    y, mu, r = twins.layernorm_forward(_rows(x, N, C), w.astype(f32), b.astype(f32), float(eps))
    _put(out, y)
    _put(mean, mu)
    _put(rstd, r)


def _layernorm_backward_dx(dout, x, w, mean, rstd, dx, N, C):
    g, x2, w = _rows(dout, N, C), _rows(x, N, C), w.astype(f32)
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    gx = g * w
    _put(dx, (gx - gx.mean(axis=1, keepdims=True) - xhat * (gx * xhat).mean(axis=1, keepdims=True))
         * rstd[:, None])


def _layernorm_backward_dwdb(dout, x, mean, rstd, pdw, pdb, N, C, rows_per_chunk):
    g, x2 = _rows(dout, N, C), _rows(x, N, C)
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    for k in range(pdw.shape[0]):
        rows = slice(k * rows_per_chunk, min(N, (k + 1) * rows_per_chunk))
        pdw[k] = (g[rows] * xhat[rows]).sum(axis=0)
        pdb[k] = g[rows].sum(axis=0)


def _sum_partials(part, out, n_parts, C):
    _put(out, part.reshape(n_parts, C).sum(axis=0))


# ---------------------------------------------------------------- gelu.cu, bias_residual.cu
def _gelu_forward(x, out, n):
    _put(out, twins.gelu_forward(x.astype(f32)))


def _gelu_backward(x, dout, dx, n):
    _put(dx, twins.gelu_backward(x.astype(f32), dout.astype(f32)))


def _bias_residual_forward(x, bias, residual, out, n, C):
    _put(out, x.astype(f32).reshape(-1, C) + bias.astype(f32) + residual.astype(f32).reshape(-1, C))


def _bias_grad_partial(dout, part, N, C, rows_per_chunk):
    g = _rows(dout, N, C)
    for k in range(part.shape[0]):
        part[k] = g[k * rows_per_chunk:(k + 1) * rows_per_chunk].sum(axis=0)


# ---------------------------------------------------------------- attention.cu (float32)
def _attention_forward(q, k, v, o, lse, T, S, scale, causal):
    out, l = twins.attention_forward(q, k, v, float(scale), bool(causal))
    _put(o, out)
    _put(lse, l)


def _attention_backward_preprocess(o, dout, delta, rows):
    _put(delta, (o * dout).sum(axis=-1))


def _attention_backward_dkdv(q, k, v, dout, lse, delta, dk, dv, T, S, scale, causal):
    _, gk, gv = twins.attention_backward_with_delta(q, k, v, dout, lse, delta, float(scale), bool(causal))
    _put(dk, gk)
    _put(dv, gv)


def _attention_backward_dq(q, k, v, dout, lse, delta, dq, T, S, scale, causal):
    gq, _, _ = twins.attention_backward_with_delta(q, k, v, dout, lse, delta, float(scale), bool(causal))
    _put(dq, gq)


# ---------------------------------------------------------------- crossentropy.cu
def _crossentropy_forward(logits, targets, losses, lse, bad, N, V, ignore_index):
    x = _rows(logits, N, V)
    m = x.max(axis=1, keepdims=True)
    l = (np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m)[:, 0]
    _put(lse, l)
    ignored = targets == ignore_index
    out_of_range = ~ignored & ((targets < 0) | (targets >= V))
    if out_of_range.any():
        bad[0] = 1
    t = np.where(ignored | out_of_range, 0, targets)
    _put(losses, np.where(ignored | out_of_range, f32(0), l - x[np.arange(N), t]))


def _crossentropy_backward(logits, targets, lse, scale, scale_stride, dlogits, N, V, ignore_index):
    x = _rows(logits, N, V)
    p = np.exp(x - lse[:, None])
    rows = np.flatnonzero((targets != ignore_index) & (targets >= 0) & (targets < V))
    p[rows, targets[rows]] -= 1
    sc = scale.astype(f32)[np.arange(N) * int(scale_stride)]
    _put(dlogits, p * np.where(targets == ignore_index, f32(0), sc)[:, None])


# ---------------------------------------------------------------- embedding_backward.cu
def _embedding_backward(rows, sorted_keys, gw, N, C):
    ids, pos = np.divmod(sorted_keys, N)
    g = np.zeros(gw.shape, f32)
    np.add.at(g, ids, rows.astype(f32)[pos])  # in key order, as the kernel adds
    touched = np.unique(ids)
    gw[touched] = g[touched].astype(gw.dtype)


# ---------------------------------------------------------------- adamw.cu
def _adamw_flat(p, g, m, v, n, decay, b1, b2, eps, step_size, inv_sqrt_bc2):
    pf = p * (f32(1) - decay)
    m[...] = b1 * m + (f32(1) - b1) * g
    v[...] = b2 * v + (f32(1) - b2) * (g * g)
    p[...] = pf - step_size * (m / (np.sqrt(v) * inv_sqrt_bc2 + eps))


_IMPL = {
    "layernorm_forward": _layernorm_forward, "layernorm_backward_dx": _layernorm_backward_dx,
    "layernorm_backward_dwdb": _layernorm_backward_dwdb, "layernorm_sum_partials": _sum_partials,
    "gelu_forward": _gelu_forward, "gelu_backward": _gelu_backward,
    "bias_residual_forward": _bias_residual_forward, "bias_grad_partial": _bias_grad_partial,
    "bias_grad_sum": _sum_partials,
    "attention_forward": _attention_forward, "attention_backward_preprocess": _attention_backward_preprocess,
    "attention_backward_dkdv": _attention_backward_dkdv, "attention_backward_dq": _attention_backward_dq,
    "crossentropy_forward": _crossentropy_forward, "crossentropy_backward": _crossentropy_backward,
    "embedding_backward": _embedding_backward, "adamw_flat": _adamw_flat,
}
