"""GPT-2 hyper-parameters and the four official sizes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
    "355M": dict(n_layer=24, n_head=16, n_embd=1024),
    "774M": dict(n_layer=36, n_head=20, n_embd=1280),
    "1558M": dict(n_layer=48, n_head=25, n_embd=1600),
}
# Hugging Face's names for the same checkpoints
HF_NAMES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_ctx: int = 1024          # context length: the most positions the model can see
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.0       # embedding, attention and residual dropout
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    # GPT-2 ties its output head to wte; False gives the head its own (vocab, n_embd) matrix,
    # `lm_head.weight`, as Hugging Face's config flag of the same name does
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_ctx", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPT2Config.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPT2Config:
        """One of "124M", "355M", "774M", "1558M" (also "gpt2", "gpt2-medium", ...)."""
        by_hf = {v: k for k, v in HF_NAMES.items()}
        key = by_hf.get(name, name)
        if key not in PRESETS:
            raise ValueError(f"unknown GPT-2 size {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Config:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> GPT2Config:
        return replace(self, **changes)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
