"""NumPy twin of flash_attention.cu: the tiled tensor-core FlashAttention-2, step for step.

The same tiles (read from the .cu source), the same recurrences, vectorised over what the kernel
runs in parallel (batch, heads, the rows of a block). Numbers are float16 where the kernel holds
float16 (inputs, the probabilities and dS fed to the second product of each pair, the outputs)
and float32 everywhere else: a tensor-core product takes float16 operands and sums their exact
products in float32, which is `_mm` here. Natural-log lse, base-2 softmax inside, as the kernel.
README.md draws the tiles; tests/test_flash_attention_emulated.py runs the kernel itself on the CPU
and compares it with this twin and with minigrad's composite attention.
"""
from __future__ import annotations

import numpy as np

from . import dropout
from .dropout import Dropout
from .flash_attention import tiles

f32 = np.float32
LOG2E = f32(1.4426950408889634)
LN2 = f32(0.6931471805599453)


def _h(x: np.ndarray) -> np.ndarray:
    """Round to float16 and back (the kernel's pack_half2 before a product)."""
    return x.astype(np.float16).astype(f32)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mma.sync: float16 operands (already rounded), float32 sums."""
    return np.matmul(a, b, dtype=f32)


def _heads(x: np.ndarray) -> np.ndarray:
    """(B, T, H, D) float16 -> (B, H, T, D) float32."""
    return x.transpose(0, 2, 1, 3).astype(f32)


def keep_mask(drop: Dropout | None, B: int, H: int, T: int) -> np.ndarray:
    """(B, H, T, T) bool: the dropout mask the kernels draw (all True without dropout)."""
    return dropout.keep_mask(drop, B * H * T * T).reshape(B, H, T, T)


def _visible(rows: np.ndarray, cols: np.ndarray, T: int, causal: bool) -> np.ndarray:
    """(len(rows), len(cols)): key col is visible to query row (both < T, and col <= row if causal)."""
    vis = (rows[:, None] < T) & (cols[None, :] < T)
    return vis & (cols[None, :] <= rows[:, None]) if causal else vis


def forward(qkv: np.ndarray, scale: float, causal: bool, drop: Dropout | None = None):
    """flash_forward: qkv (B, T, 3, H, D) float16 -> (o (B, T, H, D) float16, lse (B, H, T))."""
    B, T, _, H, D = qkv.shape
    t = tiles(D)
    q, k, v = (_heads(qkv[:, :, i]) for i in range(3))
    keep = keep_mask(drop, B, H, T)
    keep_scale = f32(1.0 / (1.0 - drop.p)) if drop else f32(1.0)
    sl2 = f32(scale) * LOG2E
    o = np.empty((B, H, T, D), f32)
    lse = np.empty((B, H, T), f32)
    for q0 in range(0, T, t["BM"]):                       # a block per BM queries (16 a warp)
        rows = np.arange(q0, min(T, q0 + t["BM"]))
        m = np.full((B, H, rows.size), -np.inf, f32)      # running max of the base-2 scores
        l = np.zeros((B, H, rows.size), f32)              # running sum of exp2(s - m)
        acc = np.zeros((B, H, rows.size, D), f32)         # running sum of exp2(s - m) v, dropped zeroed
        for k0 in range(0, min(T, q0 + t["BM"]) if causal else T, t["BN"]):
            cols = np.arange(k0, min(T, k0 + t["BN"]))
            s = _mm(q[:, :, rows], k[:, :, cols].swapaxes(-1, -2))          # S = Q K^T
            s = np.where(_visible(rows, cols, T, causal), s * sl2, f32(-np.inf))
            m_new = np.maximum(m, s.max(axis=-1))         # finite: every row sees key 0 in the first tile
            corr = np.exp2(m - m_new)
            p = np.exp2(s - m_new[..., None])
            l = l * corr + p.sum(axis=-1)                 # every probability, kept or dropped
            p_kept = np.where(keep[:, :, rows][:, :, :, cols], p, f32(0))
            acc = acc * corr[..., None] + _mm(_h(p_kept), v[:, :, cols])    # O += P V
            m = m_new
        o[:, :, rows] = acc * (keep_scale / l)[..., None]
        lse[:, :, rows] = (m + np.log2(l)) * LN2
    return o.transpose(0, 2, 1, 3).astype(np.float16), lse


def backward(qkv: np.ndarray, o: np.ndarray | None, lse: np.ndarray, dout: np.ndarray, scale: float, causal: bool,
             drop: Dropout | None = None, delta: np.ndarray | None = None) -> np.ndarray:
    """flash_backward_{preprocess, dkdv, dq}: dqkv (B, T, 3, H, D) float16 (given the preprocess's
    delta (B, H, T), o is not read)."""
    B, T, _, H, D = qkv.shape
    q, k, v = (_heads(qkv[:, :, i]) for i in range(3))
    do = _heads(dout)
    if delta is None:
        delta = (do * _heads(o)).sum(axis=-1)           # rowsum(dO * O)
    keep = keep_mask(drop, B, H, T)
    keep_scale = f32(1.0 / (1.0 - drop.p)) if drop else f32(1.0)
    args = (q, k, v, do, lse * LOG2E, delta, keep, f32(scale) * LOG2E, keep_scale, causal)
    dk, dv = _dkdv(*args)
    dq = _dq(*args)
    dqkv = np.stack([dq * f32(scale), dk * f32(scale), dv * keep_scale], axis=2)  # (B, H, 3, T, D)
    return dqkv.transpose(0, 3, 2, 1, 4).astype(np.float16)


def _dkdv(q, k, v, do, lse2, delta, keep, sl2, keep_scale, causal):
    """flash_backward_dkdv: a block per BKV keys (16 a warp), queries in tiles of BQB; dk, dv unscaled."""
    T, D = q.shape[2], q.shape[3]
    t = tiles(D)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for k0 in range(0, T, t["BKV"]):
        keys = np.arange(k0, min(T, k0 + t["BKV"]))
        for i0 in range(k0 if causal else 0, T, t["BQB"]):
            qi = np.arange(i0, min(T, i0 + t["BQB"]))
            st = _mm(k[:, :, keys], q[:, :, qi].swapaxes(-1, -2))            # S^T = K Q^T
            vis = _visible(qi, keys, T, causal).T
            pt = np.where(vis, np.exp2(st * sl2 - lse2[:, :, None, qi]), f32(0))  # P^T
            kt = keep[:, :, qi][:, :, :, keys].swapaxes(-1, -2)
            dv[:, :, keys] += _mm(_h(np.where(kt, pt, f32(0))), do[:, :, qi])     # dV += (P keep)^T dO
            dpt = _mm(v[:, :, keys], do[:, :, qi].swapaxes(-1, -2))          # dP^T = V dO^T
            dst = pt * (np.where(kt, dpt * keep_scale, f32(0)) - delta[:, :, None, qi])
            dk[:, :, keys] += _mm(_h(dst), q[:, :, qi])                      # dK += dS^T Q
    return dk, dv


def _dq(q, k, v, do, lse2, delta, keep, sl2, keep_scale, causal):
    """flash_backward_dq: a block per BM queries (16 a warp), keys in tiles of BKQ; dq unscaled."""
    T, D = q.shape[2], q.shape[3]
    t = tiles(D)
    dq = np.zeros_like(q)
    for q0 in range(0, T, t["BM"]):
        rows = np.arange(q0, min(T, q0 + t["BM"]))
        for k0 in range(0, min(T, q0 + t["BM"]) if causal else T, t["BKQ"]):
            cols = np.arange(k0, min(T, k0 + t["BKQ"]))
            s = _mm(q[:, :, rows], k[:, :, cols].swapaxes(-1, -2))          # S = Q K^T
            dp = _mm(do[:, :, rows], v[:, :, cols].swapaxes(-1, -2))        # dP = dO V^T
            p = np.where(_visible(rows, cols, T, causal), np.exp2(s * sl2 - lse2[:, :, rows, None]), f32(0))
            kr = keep[:, :, rows][:, :, :, cols]
            ds = p * (np.where(kr, dp * keep_scale, f32(0)) - delta[:, :, rows, None])
            dq[:, :, rows] += _mm(_h(ds), k[:, :, cols])                    # dQ += dS K
    return dq
