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

import numpy as np

from .. import launchcount, standin
from . import dropout, twins, twins_flash
from .dropout import Dropout

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


def _xhat(x, mean, rstd, N, C):
    return (_rows(x, N, C) - mean[:, None]) * rstd[:, None]


def _layernorm_backward_dx(dout, x, w, mean, rstd, dx, N, C, accumulate):
    g, xhat = _rows(dout, N, C) * w.astype(f32), _xhat(x, mean, rstd, N, C)
    d = (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True)) * rstd[:, None]
    _put(dx, d + dx.astype(f32).reshape(N, C) if accumulate else d)


def _layernorm_backward_dwdb(dout, x, mean, rstd, part, dw, db, done, N, C, rows_per_chunk):
    g = _rows(dout, N, C)
    _put(dw, _chunked_column_sums(g * _xhat(x, mean, rstd, N, C), rows_per_chunk))
    _put(db, _chunked_column_sums(g, rows_per_chunk))


def _chunked_column_sums(a, rows_per_chunk):
    """Column sums as the kernels add them: chunks of rows, then the chunks in order."""
    parts = [a[i:i + rows_per_chunk].sum(axis=0) for i in range(0, len(a), rows_per_chunk)]
    return np.sum(parts, axis=0) if parts else np.zeros(a.shape[1], f32)


# ---------------------------------------------------------------- gelu.cu, bias_residual.cu
def _gelu_input(x, bias, C):
    u = x.astype(f32)
    return (u.reshape(-1, C) + bias.astype(f32)).reshape(x.shape) if C > 0 else u


def _gelu_forward(x, bias, C, out, n):
    _put(out, twins.gelu_forward(_gelu_input(x, bias, C)))


def _gelu_backward(x, bias, C, dout, dx, n):
    _put(dx, twins.gelu_backward(_gelu_input(x, bias, C), dout.astype(f32)))


def _weights(drop, n: int):
    """The kernels' dropout weights of n elements: keep_scale where kept, 0 where dropped (1 without dropout)."""
    if drop is None:
        return f32(1)
    return np.where(dropout.keep_mask(drop, n), f32(1.0 / (1.0 - drop.p)), f32(0))


def _bias_residual_forward(x, bias, residual, out, n, P, key, threshold, keep_scale):
    y = (_rows(x, -1, P) + bias.astype(f32)).reshape(-1) * _weights(_drop(key, threshold, keep_scale), x.size)
    _put(out, y if residual is None else y + residual.astype(f32).reshape(-1))


def _bias_grad(dout, part, db, done, N, C, rows_per_chunk):
    _put(db, _chunked_column_sums(_rows(dout, N, C), rows_per_chunk))


def _dropout_bias_grad(dout, dx, part, db, done, N, C, rows_per_chunk, key, threshold, keep_scale):
    d = (_rows(dout, N, C).reshape(-1) * _weights(_drop(key, threshold, keep_scale), N * C)).reshape(N, C)
    _put(dx, d)
    _put(db, _chunked_column_sums(d, rows_per_chunk))


def _drop(key, threshold, keep_scale):
    """The Dropout a launch's (key, threshold, keep scale) stand for, or None for (0, 0, 1)."""
    if int(threshold) == 0 and float(keep_scale) == 1.0:
        return None
    return Dropout(int(key), int(threshold), 1.0 - 1.0 / float(keep_scale))  # 1 / (1 - p) is keep_scale again


# ---------------------------------------------------------------- attention.cu (float32)
def _heads(q, k, v, bias, T, S, H, packed):
    """q (BH, T, D), k, v (BH, S, D) float32 as the kernels see them (packed: the slices of qkv
    plus the bias)."""
    if not packed:
        return q, k, v
    D = q.shape[-1]
    x = q.reshape(-1, T, 3, H, D) + (0 if bias is None else bias.reshape(3, H, D))
    return tuple(np.ascontiguousarray(x[:, :, i].transpose(0, 2, 1, 3)).reshape(-1, T, D) for i in range(3))


def _rows_bhtd(a, T, H, packed):
    """o or dout as (BH, T, D) (packed: from (B, T, H, D))."""
    return a.reshape(-1, T, H, a.shape[-1]).transpose(0, 2, 1, 3).reshape(-1, T, a.shape[-1]) if packed else a


def _put_rows(out, value, T, H, packed, which=None):
    """(BH, T, D) into a kernel output: plain, or packed (B, T, H, D), or slice `which` of (B, T, 3, H, D)."""
    if not packed:
        _put(out, value)
        return
    D = value.shape[-1]
    heads = value.reshape(-1, H, T, D).transpose(0, 2, 1, 3)
    if which is None:
        _put(out, heads)
    else:
        out.reshape(-1, T, 3, H, D)[:, :, which] = heads.astype(out.dtype)


def _attention_keep(drop, BH, T, S):
    return None if drop is None else dropout.keep_mask(drop, BH * T * S).reshape(BH, T, S)


def _attention_forward(q, k, v, bias, o, lse, T, S, H, packed, scale, causal, key, threshold, keep_scale):
    q3, k3, v3 = _heads(q, k, v, bias, T, S, H, packed)
    drop = _drop(key, threshold, keep_scale)
    out, l = twins.attention_forward(q3, k3, v3, float(scale), bool(causal), _attention_keep(drop, len(q3), T, S),
                                     float(keep_scale))
    _put_rows(o, out, T, H, packed)
    _put(lse, l)


def _attention_backward_preprocess(o, dout, delta, T, H, packed, rows):
    _put(delta, (_rows_bhtd(o, T, H, packed) * _rows_bhtd(dout, T, H, packed)).sum(axis=-1))


def _attention_grads(q, k, v, bias, dout, lse, delta, T, S, H, packed, scale, causal, key, threshold, keep_scale):
    q3, k3, v3 = _heads(q, k, v, bias, T, S, H, packed)
    drop = _drop(key, threshold, keep_scale)
    return twins.attention_backward_with_delta(q3, k3, v3, _rows_bhtd(dout, T, H, packed), lse, delta, float(scale),
                                               bool(causal), _attention_keep(drop, len(q3), T, S), float(keep_scale))


def _attention_backward_dkdv(q, k, v, bias, dout, lse, delta, dk, dv, T, S, H, packed, *rest):
    _, gk, gv = _attention_grads(q, k, v, bias, dout, lse, delta, T, S, H, packed, *rest)
    _put_rows(dk, gk, T, H, packed, 1 if packed else None)
    _put_rows(dv, gv, T, H, packed, 2 if packed else None)


def _attention_backward_dq(q, k, v, bias, dout, lse, delta, dq, T, S, H, packed, *rest):
    gq, _, _ = _attention_grads(q, k, v, bias, dout, lse, delta, T, S, H, packed, *rest)
    _put_rows(dq, gq, T, H, packed, 0 if packed else None)


# ---------------------------------------------------------------- flash_attention.cu (float16, tensor cores)
def _flash_input(qkv, bias):
    """qkv (B, T, 3, H, D) float16 as the kernels read it: plus the bias, each sum rounded to float16."""
    if bias is None:
        return qkv
    return (qkv.astype(f32) + bias.astype(f32).reshape(3, -1, qkv.shape[-1])).astype(np.float16)


def _flash_forward(qkv, bias, o, lse, T, H, scale, causal, key, threshold, keep_scale):
    out, l = twins_flash.forward(_flash_input(qkv, bias), float(scale), bool(causal), _drop(key, threshold, keep_scale))
    _put(o, out)
    _put(lse, l)


def _flash_backward_preprocess(o, dout, delta, T, H, rows):
    _put(delta, (o.astype(f32) * dout.astype(f32)).sum(axis=-1).reshape(-1, T, H).transpose(0, 2, 1))


def _flash_grads(qkv, bias, dout, lse, delta, scale, causal, key, threshold, keep_scale):
    """dqkv (B, T, 3, H, D) float16 from the twin, given the preprocess's delta."""
    return twins_flash.backward(_flash_input(qkv, bias), None, lse, dout, float(scale), bool(causal),
                                _drop(key, threshold, keep_scale), delta=delta)


def _flash_backward_dkdv(qkv, bias, dout, lse, delta, dqkv, T, H, *rest):
    dqkv[:, :, 1:] = _flash_grads(qkv, bias, dout, lse, delta, *rest)[:, :, 1:]


def _flash_backward_dq(qkv, bias, dout, lse, delta, dqkv, T, H, *rest):
    dqkv[:, :, 0] = _flash_grads(qkv, bias, dout, lse, delta, *rest)[:, :, 0]


# ---------------------------------------------------------------- crossentropy.cu
def _crossentropy_forward(logits, targets, losses, lse, total, done, N, V, ignore_index, weight):
    x = _rows(logits, N, V)
    m = x.max(axis=1, keepdims=True)
    l = (np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m)[:, 0]
    _put(lse, l)
    ignored = targets == ignore_index
    bad = ~ignored & ((targets < 0) | (targets >= V))
    picked = x[np.arange(N), np.where(ignored | bad, 0, targets)]
    loss = np.where(ignored, f32(0), np.where(bad, f32(np.nan), l - picked))
    _put(losses, loss)
    _put(total, loss.astype(f32).sum() * f32(weight))


def _crossentropy_backward(logits, targets, lse, scale, scale_stride, mult, dlogits, N, V, ignore_index):
    x = _rows(logits, N, V)
    p = np.exp(x - lse[:, None])
    rows = np.flatnonzero((targets != ignore_index) & (targets >= 0) & (targets < V))
    p[rows, targets[rows]] -= 1
    sc = scale.astype(f32)[np.arange(N) * int(scale_stride)] * f32(mult)
    _put(dlogits, p * np.where(targets == ignore_index, f32(0), sc)[:, None])


# ---------------------------------------------------------------- embedding_backward.cu
def _embedding_keys(ids, keys, N):
    keys[...] = ids.astype(keys.dtype) * keys.dtype.type(N) + np.arange(N, dtype=keys.dtype)


def _embedding_backward(rows, sorted_keys, gw, N, C, accumulate):
    ids, pos = np.divmod(sorted_keys.astype(np.int64), N)
    g = np.zeros(gw.shape, f32)
    np.add.at(g, ids, rows.astype(f32)[pos])  # in key order, as the kernel adds
    touched = np.unique(ids)
    gw[touched] = (g[touched] + gw[touched].astype(f32) if accumulate else g[touched]).astype(gw.dtype)


# ---------------------------------------------------------------- adamw.cu, unscale.cu
def _adamw_one(p, g, m, v, decay, b1, b2, eps, step_size, inv_sqrt_bc2):
    pf = p * (f32(1) - f32(decay))
    m[...] = b1 * m + (f32(1) - b1) * g
    v[...] = b2 * v + (f32(1) - b2) * (g * g)
    p[...] = pf - step_size * (m / (np.sqrt(v) * inv_sqrt_bc2 + eps))


def _adamw_flat(p, g, m, v, n, decay, b1, b2, eps, step_size, inv_sqrt_bc2):
    _adamw_one(p, g, m, v, decay, b1, b2, eps, step_size, inv_sqrt_bc2)


def _adamw_multi(p, g, m, v, table, wds, n_ranges, lr, b1, b2, eps, step_size, inv_sqrt_bc2):
    offsets, starts = table[:n_ranges + 1], table[n_ranges + 1:]
    for r in range(n_ranges):
        sl = slice(starts[r], starts[r] + offsets[r + 1] - offsets[r])
        _adamw_one(p[sl], g[sl], m[sl], v[sl], f32(lr) * wds[r], b1, b2, eps, step_size, inv_sqrt_bc2)


def _unscale_grads(g16, g32, n, inv_scale, flag, stamp):
    g32[...] = g16.astype(f32) * f32(inv_scale)
    if not np.isfinite(g16).all():
        flag[0] = stamp


_IMPL = {
    "layernorm_forward": _layernorm_forward, "layernorm_backward_dx": _layernorm_backward_dx,
    "layernorm_backward_dwdb": _layernorm_backward_dwdb,
    "gelu_forward": _gelu_forward, "gelu_backward": _gelu_backward,
    "bias_residual_forward": _bias_residual_forward, "bias_grad": _bias_grad, "dropout_bias_grad": _dropout_bias_grad,
    "attention_forward": _attention_forward, "attention_backward_preprocess": _attention_backward_preprocess,
    "attention_backward_dkdv": _attention_backward_dkdv, "attention_backward_dq": _attention_backward_dq,
    "flash_forward": _flash_forward, "flash_backward_preprocess": _flash_backward_preprocess,
    "flash_backward_dkdv": _flash_backward_dkdv, "flash_backward_dq": _flash_backward_dq,
    "crossentropy_forward": _crossentropy_forward, "crossentropy_backward": _crossentropy_backward,
    "embedding_keys": _embedding_keys, "embedding_backward": _embedding_backward,
    "adamw_flat": _adamw_flat, "adamw_multi": _adamw_multi, "unscale_grads": _unscale_grads,
}
