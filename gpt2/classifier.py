"""GPT-2 as a classifier: the trunk of GPT2 with a Linear head on one position's hidden state.

Built by `tasks.classify`, and rebuilt from a run folder through `gpt2.registry`.
"""
from __future__ import annotations

import numpy as np

import minigrad as mg
from minigrad import backend, nn

from .tokenizer import EOT_ID

POOLS = ("last", "last-real")
PAD_ID = EOT_ID  # GPT-2 has no padding token: texts are padded with <|endoftext|>, as the book does


class GPT2Classifier(nn.Module):
    """GPT-2's trunk (`self.gpt`) with a Linear head on one position instead of the LM head.

    Parameters are `gpt.*` (the GPT-2 names under a prefix) and `head.weight`, `head.bias`.
    """

    def __init__(self, gpt, num_classes: int, pool: str = "last", pad_id: int = PAD_ID):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if gpt.lm_head is not None:
            # An untied LM head (a tasks.pretrain run with --no-tie-embeddings) is never read here:
            # dropped, it costs no memory, no optimizer state and no checkpoint space.
            gpt.lm_head = None
            gpt.config = gpt.config.replace(tie_word_embeddings=True)
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, num_classes)
        self.pool, self.pad_id, self.num_classes = pool, pad_id, num_classes

    @property
    def config(self):
        return self.gpt.config

    def pooled_positions(self, idx) -> np.ndarray:
        """For each row of `idx` (B, T), the position the head reads."""
        xp = backend.array_module(idx)
        B, T = idx.shape
        if self.pool == "last":
            return xp.full(B, T - 1)
        real = idx != self.pad_id
        # the last True of each row (0 if a row were all padding)
        last = T - 1 - xp.argmax(real[:, ::-1], axis=1)
        return xp.where(real.any(axis=1), last, 0)

    def forward(self, idx):
        """Class logits (B, num_classes) for token ids (B, T) (or (T,))."""
        xp = backend.array_module(self.head.weight.data)
        idx = xp.asarray(idx.data if isinstance(idx, mg.Tensor) else idx)
        if idx.ndim == 1:
            idx = idx[None]
        pos = self.pooled_positions(idx)
        if self.pool == "last-real":
            # attention is causal: positions after the read one cannot change it, so drop them
            idx = idx[:, :int(pos.max()) + 1]
        h = self.gpt.hidden_states(idx)                                  # (B, T, C)
        return self.head(h[xp.arange(idx.shape[0]), pos])                 # (B, num_classes)
