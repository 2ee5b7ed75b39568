"""Text generation: greedy or sampled decoding with a KV cache, for one prompt or a batch.

    ids, mask = encode_batch(tok, ["Every effort moves you", "Hello"])
    out = generate(model, ids, 20, temperature=0.8, top_k=40, attn_mask=mask, seed=123)
    for step in stream(model, ids, 20, attn_mask=mask): ...      # (B,) new ids per step

How the next token is chosen, in this order (as Hugging Face does): logits / temperature, keep
the top_k largest, keep the smallest set whose probability reaches top_p, sample. Temperature 0
means greedy (argmax); the filters then change nothing.

The KV cache is an optimisation only: `use_cache=True` gives the same tokens as recomputing the
whole sequence every step. Past the context length both paths crop to the last n_ctx tokens.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import minigrad as mg
from minigrad import backend
from minigrad.tensor import Tensor

from .sampling import SamplingParams, sample_next


# ---------------------------------------------------------------- batches of prompts
def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists of different lengths -> (ids, attn_mask), both (B, T_max).

    Padding goes on the left so every row's last real token sits in the last column, which is
    where the next token is read from. attn_mask is True for real tokens.
    """
    if len(prompts) == 0:
        raise ValueError("left_pad needs at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty; give every prompt at least one token "
                         "(for example <|endoftext|>)")
    T = max(lengths)
    ids = np.full((len(prompts), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), T), dtype=bool)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = np.asarray(p, dtype=np.int64)
        mask[row, T - len(p):] = True
    return ids, mask


def encode_batch(tokenizer: Any, texts: Sequence[str], pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode texts and left-pad them (with the end-of-text id unless pad_id is given)."""
    if isinstance(texts, str):
        texts = [texts]
    pad = tokenizer.eot_id if pad_id is None else pad_id
    return left_pad([tokenizer.encode(t) for t in texts], pad)


def position_ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """Positions counted from each row's first real token (padding gets 0), as Hugging Face does."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


# ---------------------------------------------------------------- choosing the next token
# (the transforms themselves, temperature, top-k, top-p and the draw, are in gpt2/sampling.py)
def _make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return backend.rng("cpu")  # minigrad's generator: mg.manual_seed makes runs repeatable
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- the decoding loop
def _check_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    SamplingParams(temperature, top_k, top_p)   # raises a ValueError naming a setting out of range


def _as_batch(idx: Any) -> np.ndarray:
    if isinstance(idx, Tensor):
        idx = idx.data
    try:
        ids = np.asarray(idx) if isinstance(idx, (list, tuple)) else backend.to_device(idx, "cpu")
    except ValueError as e:  # a ragged list of lists
        raise ValueError(f"prompts of different lengths: left-pad them first (gpt2.generate.left_pad): {e}") from None
    if ids.dtype == object:
        raise ValueError("prompts of different lengths: left-pad them first (gpt2.generate.left_pad)")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"idx must be (B, T) token ids with B, T >= 1, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64)


def _last_logits(model, ids: np.ndarray, mask: np.ndarray | None, positions: np.ndarray | None,
                 cache) -> np.ndarray:
    """The model's logits at the last position, (B, V) on the CPU, in eval mode without a graph.

    Eval mode and no_grad are set around this one call only: `stream` is a generator, and the
    caller's code between two steps should run in whatever mode the caller chose.
    """
    modes = [(m, m.training) for m in model.modules()]   # per module: a caller may mix modes
    model.eval()
    try:
        with mg.no_grad():
            logits = model(ids, attn_mask=mask, position_ids=positions, cache=cache)
    finally:
        for m, training in modes:
            m.training = training
    data = logits.data if isinstance(logits, Tensor) else logits
    return backend.to_device(data[:, -1, :], "cpu")


def stream(model, idx: Any, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
           seed: int | np.random.Generator | None = None, attn_mask: Any = None,
           pad_id: int | None = None) -> Iterator[np.ndarray]:
    """Yield the next token ids, an array of B ids per step, for up to max_new_tokens steps.

    idx: (B, T) or (T,) prompt ids; a left-padded batch needs its attn_mask (B, T), True for
        real tokens (see left_pad).
    eos_id: a row that produced it is finished and then yields pad_id (default eos_id); the
        stream ends once every row is finished.
    seed: an int or a numpy Generator for sampling; None uses minigrad's CPU generator.
    """
    _check_args(max_new_tokens, temperature, top_k, top_p)
    ids = _as_batch(idx)
    B = ids.shape[0]
    mask = None
    if attn_mask is not None:
        mask = np.asarray(backend.to_device(attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask,
                                            "cpu")).astype(bool)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"attn_mask must have the shape of the prompt ids {ids.shape}, got {mask.shape}")
        if not mask[:, -1].all():
            raise ValueError("every row's last prompt token must be real (attn_mask True): pad on the left")
    rng = _make_rng(seed) if temperature > 0 else None
    cache = model.new_cache(B) if use_cache else None
    # checked above, run below: a generator body would only raise at the first next()
    return _decode(model, ids, mask, cache, max_new_tokens, temperature, top_k, top_p, rng,
                   eos_id, eos_id if pad_id is None else pad_id)


def _decode(model, ids: np.ndarray, mask: np.ndarray | None, cache, max_new_tokens: int,
            temperature: float, top_k: int | None, top_p: float | None, rng, eos_id: int | None,
            filler: int | None) -> Iterator[np.ndarray]:
    B = ids.shape[0]
    n_ctx = model.config.n_ctx
    cache_start = 0                 # the cache holds ids[:, cache_start:cache_start + cache.pos]
    finished = np.zeros(B, dtype=bool)
    for _ in range(max_new_tokens):
        L = ids.shape[1]
        lo = max(0, L - n_ctx)      # the window the model sees: the last n_ctx tokens
        window_mask = None if mask is None else mask[:, lo:]
        if cache is not None and cache.pos > 0 and cache_start == lo and cache.pos == L - 1 - lo:
            # the cache holds every position but the newest: feed that one alone
            positions = None if mask is None else position_ids_from_mask(window_mask)[:, -1:]
            logits = _last_logits(model, ids[:, -1:], window_mask, positions, cache)
        else:
            # the first step, no cache, or a slid window: once the window slides, every position
            # (and so every key and value) changes, so cropping exactly as the recompute path
            # does means prefilling the whole window again
            positions = None if mask is None else position_ids_from_mask(window_mask)
            if cache is not None:
                cache.reset()
                cache_start = lo
            logits = _last_logits(model, ids[:, lo:], window_mask, positions, cache)

        nxt = sample_next(logits, temperature, top_k, top_p, rng)
        if eos_id is not None:
            nxt = np.where(finished, filler, nxt)
            finished |= nxt == eos_id
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if mask is not None:
            mask = np.concatenate([mask, np.ones((B, 1), dtype=bool)], axis=1)
        yield nxt
        if eos_id is not None and finished.all():
            return


def generate(model, idx: Any, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
             seed: int | np.random.Generator | None = None, attn_mask: Any = None,
             pad_id: int | None = None) -> np.ndarray:
    """The prompt followed by the new tokens: (B, T + n) int64, n <= max_new_tokens ((T + n,) for
    a 1-D prompt). Stops early once every row has produced eos_id. Arguments as for `stream`."""
    prompt = _as_batch(idx)
    steps = list(stream(model, prompt, max_new_tokens, temperature, top_k, top_p, eos_id,
                        use_cache, seed, attn_mask, pad_id))
    out = np.concatenate([prompt] + [s[:, None] for s in steps], axis=1)
    return out[0] if np.ndim(idx.data if isinstance(idx, Tensor) else idx) == 1 else out
