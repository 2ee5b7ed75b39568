"""Fused CUDA kernels for the hot ops, and their NumPy twins.

One `.cu` file per layer (llm.c's layout), compiled by CuPy on first use (`_loader.py`), with a
small launcher module each (layernorm.py, gelu.py, bias_residual.py, attention.py,
crossentropy.py, embedding.py, adamw.py) and autograd Functions over them (fused.py).
The ops themselves dispatch, each in its public function in minigrad/ops/ (minigrad.functional
only re-exports those): layers.layer_norm and layers.gelu, attention.scaled_dot_product_attention
(where `attention_fits`), softmax_family.cross_entropy and EmbeddingFn.backward ask `use_fused`
and, on CuPy float32 arrays, apply the Fused Functions of fused.py instead of their own;
`MINIGRAD_FUSED=0` keeps the composite array code everywhere.
NumPy never comes here. `twins.py` runs the same algorithms (tiles, online softmax, FA2's
backward) in NumPy, so the tests check the math on a CPU; `python -m minigrad.kernels`
compiles every source with NVRTC without a GPU.
"""
from __future__ import annotations

import os

from .. import backend
from .adamw import adamw_update, adamw_update_multi
from .fused import (FusedAttention, FusedCrossEntropy, FusedGelu, FusedLayerNorm, bias_residual,
                    embedding_backward)

__all__ = ["enabled", "use_fused", "FusedLayerNorm", "FusedGelu", "FusedAttention", "FusedCrossEntropy",
           "embedding_backward", "bias_residual", "adamw_update", "adamw_update_multi", "attention_fits"]


def enabled() -> bool:
    """MINIGRAD_FUSED (read on each call, so a test can switch it): anything but "0" means on."""
    return os.environ.get("MINIGRAD_FUSED", "1") != "0"


def use_fused(*arrays) -> bool:
    """True when every array is a non-empty float32 CuPy array and the kernels are enabled."""
    cp = backend._cupy  # None until something asked for "cuda": then nothing here is CuPy
    if cp is None or not enabled():
        return False
    return all(isinstance(a, cp.ndarray) and a.dtype == "float32" and a.size > 0 for a in arrays)


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
