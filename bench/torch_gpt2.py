"""A minimal GPT-2 in PyTorch (nanoGPT style), the baseline the benchmarks time ours against.

Module and parameter names match gpt2/model.py, so weights copy over by name. PyTorch's Linear
keeps its weight as (out, in) while ours is (in, out) like OpenAI's Conv1D: the copy transposes
(into a contiguous array, as a PyTorch user's model would hold it). The head is tied to `wte`.
Imports only torch and numpy: a process timing PyTorch need not import minigrad.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """Takes the fields of gpt2.GPT2Config as keyword arguments (dropout is always 0 here)."""

    def __init__(self, vocab_size: int, n_ctx: int, n_embd: int, n_layer: int, n_head: int,
                 layer_norm_eps: float = 1e-5, **_ignored: Any):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_ctx, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, layer_norm_eps) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_eps)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)          # tied head
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def is_linear_weight(name: str, ndim: int) -> bool:
    """Our (in, out) Linear weights, which PyTorch holds as (out, in); embeddings are not."""
    return ndim == 2 and name.endswith(".weight") and not name.startswith(("wte", "wpe"))


@torch.no_grad()
def load_from(module: nn.Module, arrays: Iterable[tuple[str, Any]],
              to_numpy: Callable[[Any], np.ndarray] = np.asarray) -> None:
    """Copy (name, array) pairs with our names and layout into `module` (same names).

    One array at a time, so a caller streaming them from a file never holds two models at once.
    Every parameter of `module` must be covered exactly once.
    """
    own = dict(module.named_parameters())
    seen = set()
    for name, arr in arrays:
        if name not in own:
            raise KeyError(f"{name} has no counterpart in the PyTorch model")
        a = to_numpy(arr)
        if is_linear_weight(name, a.ndim):
            a = a.T
        p = own[name]
        if tuple(a.shape) != tuple(p.shape):
            raise ValueError(f"{name}: shape {tuple(a.shape)} does not fit {tuple(p.shape)}")
        p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
        seen.add(name)
    missing = set(own) - seen
    if missing:
        raise KeyError(f"no value for PyTorch parameters: {', '.join(sorted(missing))}")


def grad_in_our_layout(name: str, g: torch.Tensor) -> np.ndarray:
    """A PyTorch gradient as an array shaped like our parameter (transposed back for Linear)."""
    a = g.detach().cpu().numpy()
    return a.T if is_linear_weight(name, a.ndim) else a
