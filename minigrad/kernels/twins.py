"""NumPy twins of the CUDA kernels: the same algorithms, step for step where it matters.

A twin walks the same tiles as its kernel (the tile sizes are read from the `.cu` sources, so they
cannot drift), runs the same recurrences (online softmax over key tiles, lse per row, FA2's
backward with delta = rowsum(dO * O), the vocabulary pass split over CE_THREADS threads merged
warp by warp, sorted-key segment sums) in float32, vectorised over what the kernel does in
parallel. Tests compare each twin with the plain op on the CPU, so the math is checked before
any GPU runs it; on a GPU the tests compare each kernel with the plain op too.
"""
from __future__ import annotations

import math

import numpy as np

from . import layernorm as _ln_launch
from .attention import tiles
from .crossentropy import threads as ce_threads

f32 = np.float32
NEG_INF = f32(-np.inf)


# ---------------------------------------------------------------- attention (attention.cu)
def _visible(rows: np.ndarray, keys: np.ndarray, off: int, causal: bool) -> np.ndarray:
    """(len(rows), len(keys)) bool: query i sees key j when j <= i + off (causal) or always."""
    if not causal:
        return np.ones((rows.size, keys.size), dtype=bool)
    return keys[None, :] <= rows[:, None] + off


def attention_forward(q, k, v, scale: float, causal: bool, keep=None, keep_scale: float = 1.0):
    """attention_forward: q (BH, T, D), k, v (BH, S, D) -> (o (BH, T, D), lse (BH, T)); with
    dropout, `keep` (BH, T, S) bool is the mask and kept probabilities weigh keep_scale."""
    t = tiles()
    BQ, BK = t["BQ"], t["BK"]
    BH, T, D = q.shape
    S = k.shape[1]
    off = S - T
    o = np.empty_like(q)
    lse = np.empty((BH, T), f32)
    for q0 in range(0, T, BQ):                       # one CUDA block per query tile
        q1 = min(T, q0 + BQ)
        rows = np.arange(q0, q1)
        qs = q[:, q0:q1] * f32(scale)                # (BH, R, D)
        key_end = min(S, q0 + BQ + off) if causal else S
        m = np.full((BH, q1 - q0), NEG_INF, f32)     # running max
        l = np.zeros((BH, q1 - q0), f32)             # running sum of exp(s - m)
        acc = np.zeros((BH, q1 - q0, D), f32)        # running sum of exp(s - m) v
        for k0 in range(0, key_end, BK):
            k1 = min(S, k0 + BK)
            s = qs @ k[:, k0:k1].transpose(0, 2, 1)  # (BH, R, nk)
            s = np.where(_visible(rows, np.arange(k0, k1), off, causal), s, NEG_INF)
            m_new = np.maximum(m, s.max(axis=-1))
            with np.errstate(invalid="ignore"):      # rows that saw no key yet: -inf - -inf
                corr = np.where(m_new == NEG_INF, f32(0), np.exp(m - m_new))
                p = np.where(m_new[..., None] == NEG_INF, f32(0), np.exp(s - m_new[..., None]))
            l = l * corr + p.sum(axis=-1)                # every probability, kept or dropped
            if keep is not None:
                p = np.where(keep[:, q0:q1, k0:k1], p, f32(0))
            acc = acc * corr[..., None] + p @ v[:, k0:k1]
            m = np.where(m_new == NEG_INF, m, m_new)
        o[:, q0:q1] = acc * (f32(keep_scale) / l)[..., None]
        lse[:, q0:q1] = m + np.log(l)
    return o, lse


def attention_backward(q, k, v, o, lse, dout, scale: float, causal: bool, keep=None, keep_scale: float = 1.0):
    """attention_backward_{preprocess, dkdv, dq}: (dq, dk, dv) with the scores recomputed per tile."""
    delta = (dout * o).sum(axis=-1)                  # (BH, T): rowsum(dO * O)
    return attention_backward_with_delta(q, k, v, dout, lse, delta, scale, causal, keep, keep_scale)


def attention_backward_with_delta(q, k, v, dout, lse, delta, scale: float, causal: bool, keep=None,
                                  keep_scale: float = 1.0):
    """attention_backward_{dkdv, dq}, given attention_backward_preprocess's delta; with dropout,
    w = keep * keep_scale weighs dP and (in dV) P."""
    t = tiles()
    BH, T, D = q.shape
    S = k.shape[1]
    off = S - T
    sc = f32(scale)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    w = np.full((1, 1, 1), f32(1)) if keep is None else np.where(keep, f32(keep_scale), f32(0))  # (BH, T, S)
    # dk, dv: a block per BKB keys, queries in tiles of BQB
    for k0 in range(0, S, t["BKB"]):
        k1 = min(S, k0 + t["BKB"])
        keys = np.arange(k0, k1)
        kb, vb = k[:, k0:k1], v[:, k0:k1]
        dka = np.zeros((BH, k1 - k0, D), f32)
        dva = np.zeros((BH, k1 - k0, D), f32)
        for i0 in range(max(0, k0 - off) if causal else 0, T, t["BQB"]):
            i1 = min(T, i0 + t["BQB"])
            qt, dot = q[:, i0:i1] * sc, dout[:, i0:i1]
            s = qt @ kb.transpose(0, 2, 1)                                   # (BH, nq, nk)
            p = np.where(_visible(np.arange(i0, i1), keys, off, causal), np.exp(s - lse[:, i0:i1, None]), f32(0))
            wt = w[:, i0:i1, k0:k1] if keep is not None else w
            dva += (p * wt).transpose(0, 2, 1) @ dot
            ds = p * ((dot @ vb.transpose(0, 2, 1)) * wt - delta[:, i0:i1, None])
            dka += ds.transpose(0, 2, 1) @ qt
        dk[:, k0:k1], dv[:, k0:k1] = dka, dva
    # dq: a block per BQD queries, keys in tiles of BKD
    for q0 in range(0, T, t["BQD"]):
        q1 = min(T, q0 + t["BQD"])
        rows = np.arange(q0, q1)
        qs, do = q[:, q0:q1] * sc, dout[:, q0:q1]
        dqa = np.zeros((BH, q1 - q0, D), f32)
        for k0 in range(0, min(S, q0 + t["BQD"] + off) if causal else S, t["BKD"]):
            k1 = min(S, k0 + t["BKD"])
            kt, vt = k[:, k0:k1], v[:, k0:k1]
            s = qs @ kt.transpose(0, 2, 1)
            p = np.where(_visible(rows, np.arange(k0, k1), off, causal), np.exp(s - lse[:, q0:q1, None]), f32(0))
            wt = w[:, q0:q1, k0:k1] if keep is not None else w
            ds = p * ((do @ vt.transpose(0, 2, 1)) * wt - delta[:, q0:q1, None])
            dqa += ds @ kt
        dq[:, q0:q1] = dqa * sc
    return dq, dk, dv


# ---------------------------------------------------------------- cross-entropy (crossentropy.cu)
def _merge(am, as_, bm, bs):
    """crossentropy.cu's merge of two (max, sum of exp(x - max)) pairs; (-inf, 0) is empty."""
    m = np.maximum(am, bm)
    with np.errstate(invalid="ignore"):
        s = as_ * np.exp(am - m) + bs * np.exp(bm - m)
    s = np.where(am == NEG_INF, bs, np.where(bm == NEG_INF, as_, s))
    return m, s


def crossentropy_forward(logits, targets, ignore_index: int = -100):
    """crossentropy_forward: logits (N, V) float32, targets (N,) -> (losses (N,), lse (N,)).
    Thread j of a row's block reads columns j, j + TH, ... keeping an online (max, sum); then the
    pairs merge across each warp (xor shuffles), then warp by warp."""
    TH = ce_threads()
    N, V = logits.shape
    m = np.full((N, TH), NEG_INF, f32)
    s = np.zeros((N, TH), f32)
    for j0 in range(0, V, TH):                       # one loop iteration of every thread
        x = np.full((N, TH), NEG_INF, f32)
        x[:, :min(TH, V - j0)] = logits[:, j0:j0 + TH]
        bigger = x > m
        with np.errstate(invalid="ignore", over="ignore"):
            s = np.where(bigger, s * np.exp(m - x) + f32(1),
                         np.where(m != NEG_INF, s + np.exp(x - m), s))
        m = np.where(bigger, x, m)
    m, s = m.reshape(N, TH // 32, 32), s.reshape(N, TH // 32, 32)
    lanes = np.arange(32)
    for off in (16, 8, 4, 2, 1):
        m, s = _merge(m, s, m[..., lanes ^ off], s[..., lanes ^ off])
    rm, rs = m[:, 0, 0], s[:, 0, 0]
    for w in range(1, TH // 32):
        rm, rs = _merge(rm, rs, m[:, w, 0], s[:, w, 0])
    lse = rm + np.log(rs)
    t = np.asarray(targets).reshape(-1)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= V))               # never read: the row's loss is NaN instead
    picked = logits[np.arange(N), np.where(valid & ~bad, t, 0)]
    losses = np.where(valid, np.where(bad, f32(np.nan), lse - picked), f32(0)).astype(f32)
    return losses, lse.astype(f32)


def crossentropy_backward(logits, targets, lse, scale, ignore_index: int = -100):
    """crossentropy_backward: (exp(x - lse) - onehot) * scale per row, zero on ignored rows."""
    N, V = logits.shape
    t = np.asarray(targets).reshape(-1)
    sc = np.where(t == ignore_index, f32(0), np.broadcast_to(np.asarray(scale, f32).reshape(-1), (N,)))
    d = np.exp(logits - lse[:, None])
    onehot = np.arange(V)[None, :] == t[:, None]
    return ((d - onehot) * sc[:, None].astype(f32)).astype(f32)


# ---------------------------------------------------------------- LayerNorm (layernorm.cu)
def layernorm_forward(x, w, b, eps: float):
    """layernorm_forward on (N, C): (out, mean, rstd); two passes over the row as the kernel."""
    C = x.shape[1]
    mean = x.sum(axis=1) / f32(C)
    d = x - mean[:, None]
    rstd = f32(1) / np.sqrt((d * d).sum(axis=1) / f32(C) + f32(eps))
    return (d * rstd[:, None]) * w + b, mean, rstd


def layernorm_backward(dout, x, w, mean, rstd):
    """layernorm_backward_{dx, dwdb}: dw, db summed in chunks of rows, then the chunks in order."""
    N, C = x.shape
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dout * w
    m1 = g.sum(axis=1, keepdims=True) / f32(C)
    m2 = (g * xhat).sum(axis=1, keepdims=True) / f32(C)
    dx = (g - m1 - xhat * m2) * rstd[:, None]
    R = _ln_launch._ROWS_PER_CHUNK
    pdw = np.stack([(dout[i:i + R] * xhat[i:i + R]).sum(axis=0) for i in range(0, N, R)])
    pdb = np.stack([dout[i:i + R].sum(axis=0) for i in range(0, N, R)])
    return dx, pdw.sum(axis=0), pdb.sum(axis=0)


# ---------------------------------------------------------------- GELU (gelu.cu)
_K, _C = f32(math.sqrt(2.0 / math.pi)), f32(0.044715)


def gelu_forward(x):
    return f32(0.5) * x * (f32(1) + np.tanh(_K * (x + _C * x * x * x)))


def gelu_backward(x, dout):
    t = np.tanh(_K * (x + _C * x * x * x))
    return dout * (f32(0.5) * (f32(1) + t) + f32(0.5) * x * (f32(1) - t * t) * _K * (f32(1) + f32(3) * _C * x * x))


# ---------------------------------------------------------------- embedding backward
def embedding_backward(ids, rows, n: int):
    """embedding_backward: sort keys id * N + position, then each id's rows summed in that order."""
    N, C = rows.shape
    gw = np.zeros((n, C), f32)
    keys = np.sort(np.asarray(ids, np.int64).reshape(-1) * N + np.arange(N))
    ids_sorted, pos = keys // N, keys % N
    k = 0
    while k < N:                                     # the blocks whose key starts a segment
        acc = np.zeros(C, f32)
        k2 = k
        while k2 < N and ids_sorted[k2] == ids_sorted[k]:
            acc += rows[pos[k2]]
            k2 += 1
        gw[ids_sorted[k]] = acc
        k = k2
    return gw


# ---------------------------------------------------------------- AdamW (adamw.cu)
def adamw_update(p, g, m, v, lr, betas, eps, weight_decay, step) -> None:
    """adamw_flat in place on float32 NumPy arrays."""
    b1, b2 = f32(betas[0]), f32(betas[1])
    step_size = f32(lr / (1 - betas[0] ** step))
    inv_sqrt_bc2 = f32(1.0 / math.sqrt(1 - betas[1] ** step))
    p *= f32(1) - f32(lr * weight_decay)
    m[...] = b1 * m + (f32(1) - b1) * g
    v[...] = b2 * v + (f32(1) - b2) * (g * g)
    p -= step_size * (m / (np.sqrt(v) * inv_sqrt_bc2 + f32(eps)))
