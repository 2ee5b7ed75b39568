"""GPT-2 on minigrad: the model, tokenizers, generation and the official weights."""
from .config import GPT2Config, PRESETS
from .model import GPT2, KVCache

__all__ = ["GPT2", "GPT2Config", "KVCache", "PRESETS", "from_pretrained"]


def from_pretrained(name_or_path: str, device: str = "cpu", **overrides):
    """The official weights ("124M", "355M", "774M", "1558M") or a local checkpoint path."""
    from .weights import from_pretrained as _load
    return _load(name_or_path, device=device, **overrides)
