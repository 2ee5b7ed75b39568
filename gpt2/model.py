"""The GPT-2 model in one file, with the parameter names of the official checkpoints.

    wte, wpe            token and position embeddings
    h.{i}.ln_1          LayerNorm before attention
    h.{i}.attn.c_attn   one Linear producing q, k, v      weight (C, 3C)
    h.{i}.attn.c_proj   attention output projection       weight (C, C)
    h.{i}.ln_2          LayerNorm before the MLP
    h.{i}.mlp.c_fc      MLP up-projection                 weight (C, 4C)
    h.{i}.mlp.c_proj    MLP down-projection               weight (4C, C)
    ln_f                final LayerNorm
The output head is `wte` itself (weight tying), so it has no parameter of its own; with
`tie_word_embeddings=False` it is `lm_head.weight` (vocab, C), Hugging Face's name and layout.
Weights are (in, out) as in OpenAI's Conv1D, so `model.safetensors` loads without transposes.
"""
from __future__ import annotations

import math
import numpy as np

import minigrad as mg
import minigrad.functional as F
from minigrad import backend, nn
from minigrad.tensor import Tensor

from .config import GPT2Config


class KVCache:
    """Keys and values of the positions seen so far, one (B, H, n_ctx, D) buffer pair per layer.

    `pos` counts the positions filled. A forward pass with a cache appends its new keys and
    values and attends over everything before them, so decoding costs one position per token.

    With `per_row=True` each row has its own fill count, `lengths` (B,), instead of the shared
    `pos`: rows of different lengths decode together without padding their prompts (a server's
    continuous batch). A forward pass then places row b's tokens at positions lengths[b]..., and
    each row attends only to its own filled positions; what lies beyond a row's length (a longer
    neighbour's keys, or stale ones of a finished request) is masked out.
    """

    def __init__(self, config: GPT2Config, batch_size: int, device: str = "cpu", dtype=np.float32,
                 per_row: bool = False):
        xp = backend.xp_for(device)
        shape = (batch_size, config.n_head, config.n_ctx, config.head_dim)
        self.k = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0
        self.lengths = np.zeros(batch_size, dtype=np.int64) if per_row else None
        self.capacity = config.n_ctx

    def reset(self) -> None:
        self.pos = 0
        if self.lengths is not None:
            self.lengths[:] = 0

    def update(self, layer: int, k, v):
        """Store the new keys and values (B, H, T, D) of `layer` after the filled positions;
        return all (B, H, S, D) to attend to. The fill counts move only in advance()."""
        T = k.shape[2]
        if self.lengths is None:
            start, S = self.pos, self.pos + T
            self.k[layer][:, :, start:S] = k
            self.v[layer][:, :, start:S] = v
        else:
            S = int(self.lengths.max()) + T
            for b, start in enumerate(self.lengths.tolist()):   # B is a handful of requests
                self.k[layer][b, :, start:start + T] = k[b]
                self.v[layer][b, :, start:start + T] = v[b]
        return self.k[layer][:, :, :S], self.v[layer][:, :, :S]

    def advance(self, T: int) -> None:
        """Count T more positions as filled, once every layer has stored them (update)."""
        if self.lengths is None:
            self.pos += T
        else:
            self.lengths += T

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache over rows [start, stop) sharing this one's buffers (and per-row lengths):
        a server runs its batch's filled rows, or prefills one row, through such a view."""
        view = object.__new__(KVCache)
        view.k = [k[start:stop] for k in self.k]
        view.v = [v[start:stop] for v in self.v]
        view.pos, view.capacity = 0, self.capacity
        view.lengths = None if self.lengths is None else self.lengths[start:stop]
        return view

    def copy_row(self, src: int, dst: int) -> None:
        """Row src's keys, values and length into row dst (to keep a batch's rows contiguous)."""
        n = self.capacity if self.lengths is None else int(self.lengths[src])
        for k, v in zip(self.k, self.v):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        if self.lengths is not None:
            self.lengths[dst] = self.lengths[src]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: Tensor, attn_mask=None, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, residual: Tensor | None = None):
        """(B, T, C) -> (B, T, C), plus `residual` when given; with need_weights, (output,
        attention weights (B, H, T, S))."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        p = self.dropout if self.training else 0.0
        if cache is None and attn_mask is None and not need_weights:
            # training, and any plain forward: the bias add, the split into heads, the dropout and
            # the merge happen inside one op (on the GPU, kernels that read q, k, v in place)
            qkv, bias = _unbiased(self.c_attn, x)                   # (B, T, 3C), bias to come
            y = F.causal_self_attention(qkv, H, dropout_p=p, bias=bias)  # (B, T, C)
            return _project(self.c_proj, y, p, residual)
        qkv = self.c_attn(x)                                        # (B, T, 3C)
        # (B, T, 3, H, D) -> (3, B, H, T, D): one permute gives q, k and v with heads split out
        qkv = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                            # (B, H, T, D) each
        if cache is not None:
            k, v = (Tensor._wrap(a) for a in cache.update(layer, k.data, v.data))  # (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)                      # heads side by side again
        y = _project(self.c_proj, y, p, residual)
        return (y, _attention_weights(q.data, k.data, attn_mask)) if need_weights else y


def _unbiased(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(x @ weight, bias) of a plain Linear layer, so that the op after it adds the bias in its
    own pass; (layer(x), None) of any other (a LoRA adapter adds a path of its own)."""
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight), layer.bias
    return layer(x), None


def _project(proj: nn.Module, y: Tensor, p: float, residual: Tensor | None) -> Tensor:
    """dropout(proj(y), p), plus `residual` when given (p: 0 outside training). The projection's
    bias, the dropout and the residual add are one op (one kernel on the GPU: F.bias_residual)."""
    out, bias = _unbiased(proj, y)
    if bias is None:
        out = F.dropout(out, p)
        return out if residual is None else residual + out
    return F.bias_residual(out, bias, residual, dropout_p=p)


def _attention_weights(q, k, attn_mask):
    """softmax(q k^T / sqrt(D)) with the causal (and padding) mask: what attention weighs the
    values with, computed again (the fused attention never keeps its (T, S) weights)."""
    xp = backend.array_module(q)
    T, S = q.shape[-2], k.shape[-2]
    s = (q @ xp.swapaxes(k, -1, -2)) / np.float32(math.sqrt(q.shape[-1]))
    keep = F.keep_mask(xp, T, S, True, attn_mask)
    return F.softmax(Tensor._wrap(xp.where(keep, s, -xp.inf)), axis=-1).data


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """(B, T, C) -> (B, T, C), plus `residual` when given."""
        h, bias = _unbiased(self.c_fc, x)                           # (B, T, 4C), bias to come
        p = self.dropout if self.training else 0.0
        return _project(self.c_proj, F.gelu(h, bias=bias), p, residual)


class Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, attn_mask=None, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False):
        """(B, T, C) -> (B, T, C); with need_weights, (output, this layer's attention weights)."""
        x = self.attn(self.ln_1(x), attn_mask, cache, layer, need_weights, residual=x)   # x + attn(ln_1(x))
        x, weights = x if need_weights else (x, None)
        x = self.mlp(self.ln_2(x), residual=x)                                          # x + mlp(ln_2(x))
        return (x, weights) if need_weights else x


class LMHead(nn.Module):
    """An output head of its own (untied): `weight` (vocab, C) as in HF, laid out as wte's so
    that GPT2.logits applies either the same way."""

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(np.zeros((vocab_size, n_embd), dtype=np.float32))


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config | None = None, init: bool = True, embedding_std: float = 0.02):
        """`init=False` skips initialisation (a checkpoint will overwrite every weight);
        `embedding_std` is the std of wte and wpe at initialisation (see _init_weights)."""
        super().__init__()
        self.config = config = config or GPT2Config()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_ctx, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else LMHead(config.n_embd, config.vocab_size)
        if init:
            self._init_weights(embedding_std)

    def _init_weights(self, embedding_std: float = 0.02) -> None:
        """GPT-2's scheme: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 n_layer)
        so the residual stream's variance does not grow with depth; biases 0, LayerNorm 1/0.

        embedding_std other than 0.02 only makes sense with an untied head (a tied head would
        scale the logits with it): 1.0 is PyTorch's nn.Embedding default, which the book's
        model uses, and lets token identity dominate the residual stream from the first step."""
        g = backend.rng("cpu")
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                p.data[...] = 1.0
            elif name.endswith(".bias"):
                p.data[...] = 0.0
            else:
                std = (resid_std if name.endswith("c_proj.weight") else
                       embedding_std if name in ("wte.weight", "wpe.weight") else 0.02)
                p.data[...] = g.standard_normal(p.shape, dtype=np.float32) * np.float32(std)

    @property
    def device(self) -> str:
        return self.wte.weight.device

    def forward(self, idx, targets=None, attn_mask=None, position_ids=None,
                cache: KVCache | None = None, ignore_index: int = -100):
        """Logits (B, T, vocab) for token ids `idx` (B, T); with `targets`, (logits, loss).

        attn_mask: optional boolean (B, S) array, True for real tokens (False for padding), over
            all S positions the attention sees (the cache's plus the new ones).
        position_ids: optional (B, T) positions (left-padded batches count from their first token).
        cache: a KVCache to read earlier positions from and append these ones to.
        """
        x = self.hidden_states(idx, attn_mask, position_ids, cache)
        logits = self.logits(x)                                       # (B, T, vocab)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets, ignore_index=ignore_index)

    def logits(self, x: Tensor) -> Tensor:
        """The LM head applied to hidden states (B, T, C): wte itself unless the head is untied."""
        head = self.wte if self.lm_head is None else self.lm_head
        return F.linear(x, head.weight, transposed=True)                # x @ (vocab, C).T

    def hidden_states(self, idx, attn_mask=None, position_ids=None, cache: KVCache | None = None,
                      need_weights: bool = False):
        """The final LayerNorm's output (B, T, C): what the LM head (or a classifier) reads.
        With need_weights, (that output, every layer's attention weights (B, H, T, S))."""
        xp = backend.array_module(self.wte.weight.data)
        idx = idx.data if isinstance(idx, Tensor) else idx
        host = backend.array_module(idx) is np  # ids from the host are checked there: no device read
        idx = np.asarray(idx) if host else idx
        if idx.ndim == 1:
            idx = idx[None]
        B, T = idx.shape
        ragged = cache is not None and cache.lengths is not None
        if ragged:
            lengths = xp.asarray(cache.lengths)                        # (B,) each row's own start
            end = int(cache.lengths.max()) + T if B else T
            if attn_mask is not None:
                raise ValueError("a per-row KV cache masks by its lengths; give no attn_mask")
        else:
            start = cache.pos if cache is not None else 0
            end = start + T
        cfg = self.config
        if end > cfg.n_ctx:
            raise ValueError(f"sequence of {end} positions is longer than the context of {cfg.n_ctx}; "
                             f"crop the input to its last {cfg.n_ctx} tokens")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}); got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        if position_ids is not None:
            position_ids = xp.asarray(position_ids.data if isinstance(position_ids, Tensor) else position_ids)
        elif ragged:
            position_ids = lengths[:, None] + xp.arange(T)             # (B, T)
        mask = self._blocks_mask(xp, B, T, end, attn_mask, lengths if ragged else None)

        # positions start..end of every row are rows of the table: a slice, whose gradient is a
        # copy (a lookup's would be a sort and a segment sum)
        pos = self.wpe.weight[start:end] if position_ids is None else self.wpe(position_ids)  # (T, C) or (B, T, C)
        p = cfg.dropout if self.training else 0.0
        x = F.bias_residual(self.wte(idx), pos, dropout_p=p)         # dropout(tokens + positions) (B, T, C)
        weights = []
        for i, block in enumerate(self.h):
            x = block(x, mask, cache, i, need_weights)
            if need_weights:
                x, w = x
                weights.append(w)
        if cache is not None:
            cache.advance(T)
        return (self.ln_f(x), weights) if need_weights else self.ln_f(x)

    @staticmethod
    def _blocks_mask(xp, B: int, T: int, end: int, attn_mask=None, lengths=None):
        """The mask every block applies on top of causality, over keys 0..end: from a per-row
        cache's `lengths` (B,), or from a padding `attn_mask` (B, S), or None without either."""
        if lengths is not None:
            # row b's query at position p sees keys 0..p of its own row, nothing past its length
            queries = lengths[:, None] + xp.arange(T)                  # (B, T) each query's position
            return (xp.arange(end)[None, None, :] <= queries[:, :, None])[:, None]  # (B, 1, T, S)
        if attn_mask is None:
            return None
        m = xp.asarray(attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask).astype(bool)
        if m.shape != (B, end):
            raise ValueError(f"attn_mask must have shape (B, S) = {(B, end)}, got {m.shape}")
        return m[:, None, None, :]                                    # (B, 1, 1, S)

    def attention_maps(self, idx) -> list[np.ndarray]:
        """Per layer, the attention weights (B, H, T, T) for `idx`, as NumPy arrays."""
        with mg.no_grad():
            _, weights = self.hidden_states(idx, need_weights=True)
        return [backend.to_device(w, "cpu") for w in weights]

    def new_cache(self, batch_size: int, per_row: bool = False) -> KVCache:
        return KVCache(self.config, batch_size, self.device, self.wte.weight.dtype, per_row)

