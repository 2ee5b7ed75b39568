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
def _make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return backend.rng("cpu")  # minigrad's generator: mg.manual_seed makes runs repeatable
    return np.random.default_rng(seed)


def filter_logits(logits: np.ndarray, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """Set to -inf every logit outside the top_k largest and outside the top_p nucleus, per row.

    `logits` is (B, V), already divided by the temperature. The nucleus is the smallest set of
    most likely tokens whose probability sum reaches top_p; the most likely token always stays.
    Ties at the k-th value are all kept (the k-th value is the threshold).
    """
    out = np.array(logits, dtype=np.float64)
    V = out.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(out, V - top_k, axis=-1)[:, V - top_k][:, None]
        out[out < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-out, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(out, order, axis=-1)
        probs = _softmax(sorted_logits)
        # a token stays when the tokens more likely than it sum to less than top_p
        before = np.cumsum(probs, axis=-1) - probs
        drop_sorted = before >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        out[drop] = -np.inf
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None,
                rng: np.random.Generator | Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """The next token id per row of `logits` (B, V): argmax when temperature is 0, else a draw.

    `rng` may be a list of B generators, one per row (a server's requests each have their own
    seed): row b then draws exactly what it would draw alone."""
    if temperature == 0.0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    rng = rng if rng is not None else backend.rng("cpu")
    # float64 here is cheap (B rows of V) and keeps the cumulative sums clean
    probs = _softmax(filter_logits(np.asarray(logits, dtype=np.float64) / temperature, top_k, top_p))
    cdf = np.cumsum(probs, axis=-1)
    draws = np.array([g.random() for g in rng]) if isinstance(rng, (list, tuple)) else rng.random(len(probs))
    u = draws[:, None] * cdf[:, -1:]
    # inverse CDF: the first token whose cumulative probability passes u (a filtered token adds
    # nothing to the sum, so it is never the first). Rounding can make u == cdf[-1]: then take
    # the last token that has any probability.
    ids = (cdf <= u).sum(axis=-1)
    last_possible = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(ids, last_possible).astype(np.int64)


# ---------------------------------------------------------------- the decoding loop
def _check_args(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0.0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


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
