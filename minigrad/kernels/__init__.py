"""Fused CUDA kernels for the hot ops, and their NumPy twins.

One `.cu` file per layer (llm.c's layout), compiled by CuPy on first use (`_loader.py`), with a
small launcher module each (layernorm.py, gelu.py, bias_residual.py, attention.py,
crossentropy.py, embedding.py, adamw.py, unscale.py) and autograd Functions over them (fused.py;
self_attention.py for attention straight from the QKV projection).
The ops send LayerNorm, GELU, attention, cross-entropy and the embedding backward here on device
arrays, float32 or float16 (the kernels' two forms, common.cuh), each from its public function in
minigrad/ops/ (minigrad.functional only re-exports those); the optimizer and mixed precision call
adamw.py and unscale.py; `MINIGRAD_FUSED=0` keeps the composite array code everywhere.
flash_attention.cu is the tensor-core attention (mma.sync through inline PTX; README.md explains
it), reached through self_attention.py. Dropout masks are drawn inside the kernels that need them
(dropout.cuh, dropout.py: the bits of backend.dropout_keep), so dropout keeps the fused path. NumPy never comes here; the stand-in device does
(on_standin.py: NumPy does each kernel's work, and the launch is counted). `twins.py` and
`twins_flash.py` run the same algorithms (tiles, online softmax, FA2's backward) in NumPy, so the
tests check the math on a CPU; `python -m minigrad.kernels` compiles every source with NVRTC
without a GPU.
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend, standin

from .adamw import adamw_update, adamw_update_ranges
from .fused import FusedAttention, FusedBiasResidual, FusedCrossEntropy, FusedGelu, FusedLayerNorm, embedding_backward
from .unscale import Unscaler

__all__ = ["enabled", "use_fused", "on_device", "FusedLayerNorm", "FusedGelu", "FusedAttention", "FusedSelfAttention",
           "FusedBiasResidual", "FusedCrossEntropy", "embedding_backward", "adamw_update", "adamw_update_ranges",
           "Unscaler", "attention_fits", "self_attention_fits"]


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
    """True when the kernels are enabled and every array is a non-empty device array, all of them
    float32 or all float16 (the kernels' two forms)."""
    if not enabled() or not arrays:
        return False
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float16) and all(on_device(a) and a.dtype == dtype and a.size > 0
                                                      for a in arrays)


def attention_fits(q, k, v, is_causal: bool, attn_mask) -> bool:
    """Whether the attention kernels cover this call: no mask array, equal leading axes, head
    size <= 64, and with causal at least as many keys as queries (dropout is drawn inside)."""
    from .attention import MAX_HEAD_DIM
    if attn_mask is not None or q.ndim < 3:
        return False
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    return (q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and k.shape[-1] == D and v.shape[-1] == D
            and v.shape[-2] == S and D <= MAX_HEAD_DIM and (S >= T or not is_causal) and T > 0 and S > 0
            and (q.size // (T * D)) < 65536 and use_fused(q, k, v))


# after use_fused, which it imports
from .self_attention import FusedSelfAttention, fits as self_attention_fits  # noqa: E402
