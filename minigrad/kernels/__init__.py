"""Fused CUDA kernels for the hot ops, and their NumPy twins.

One `.cu` file per layer (llm.c's layout), compiled by CuPy on first use (`_loader.py`), with a
small launcher module each (layernorm.py, gelu.py, bias_residual.py, attention.py,
crossentropy.py, embedding.py, adamw.py) and autograd Functions over them (fused.py).
minigrad.functional sends LayerNorm, GELU, attention, cross-entropy and the embedding backward
here on CuPy float32 arrays; `MINIGRAD_FUSED=0` keeps the composite array code everywhere.
NumPy never comes here. `twins.py` runs the same algorithms (tiles, online softmax, FA2's
backward) in NumPy, so the tests check the math on a CPU; `python -m minigrad.kernels`
compiles every source with NVRTC without a GPU.
"""
from __future__ import annotations

import os

from .. import backend, standin
from .adamw import adamw_update, adamw_update_multi
from .fused import (FusedAttention, FusedCrossEntropy, FusedGelu, FusedLayerNorm, bias_residual,
                    embedding_backward)

__all__ = ["enabled", "use_fused", "FusedLayerNorm", "FusedGelu", "FusedAttention", "FusedCrossEntropy",
           "embedding_backward", "bias_residual", "adamw_update", "adamw_update_multi", "attention_fits"]


def enabled() -> bool:
    """MINIGRAD_FUSED (read on each call, so a test can switch it): anything but "0" means on."""
    return os.environ.get("MINIGRAD_FUSED", "1") != "0"


def on_device(a) -> bool:
    """Whether `a` is a CuPy array, or the stand-in's (whose kernels NumPy runs: on_standin.py)."""
    if isinstance(a, standin.ndarray):
        return True
    cp = backend._cupy  # None until something asked for "cuda": then nothing here is CuPy
    return cp is not None and isinstance(a, cp.ndarray)


def use_fused(*arrays) -> bool:
    """True when every array is a non-empty float32 device array and the kernels are enabled."""
    if not enabled():
        return False
    return all(on_device(a) and a.dtype == "float32" and a.size > 0 for a in arrays)


def attention_fits(q, k, v, is_causal: bool, attn_mask, dropout_p: float) -> bool:
    """Whether the attention kernels cover this call: no mask array, no dropout, equal leading axes,
    head size <= 64, and with causal at least as many keys as queries."""
    from .attention import MAX_HEAD_DIM
    if attn_mask is not None or dropout_p > 0.0 or q.ndim < 3:
        return False
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    return (q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and k.shape[-1] == D and v.shape[-1] == D
            and v.shape[-2] == S and D <= MAX_HEAD_DIM and (S >= T or not is_causal) and T > 0 and S > 0
            and (q.size // (T * D)) < 65536 and use_fused(q, k, v))
