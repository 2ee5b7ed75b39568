"""Choosing the next token from a model's logits, and the log-probabilities a server reports.

Every function here is pure (arrays in, new arrays out) and works on rows of logits, (B, V): one
row per sequence, each with its own settings. A generator applies them in this order, as
Hugging Face and vLLM do:

    x = apply_penalties(logits, generated, presence, frequency)   # OpenAI's formula
    x = apply_logit_bias(x, biases)                               # token id -> added to its logit
    x = forbid(x, eos_id, rows)                                   # min_tokens not reached yet
    ids = sample_next(x, temperature, top_k, top_p, rngs)         # / T, top-k, top-p, a draw

`choose_next` does all of it for a batch whose rows differ in their `SamplingParams`.

The log-probabilities reported to a client are the model's own: `log_softmax` of the raw
logits in float32, before any transform above (so temperature, top-k/p, penalties and bias do
not change them), as vLLM reports them by default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import minigrad as mg
import minigrad.functional as F
from minigrad import backend
from minigrad.tensor import Tensor


# ---------------------------------------------------------------- what one sequence asks for
class SamplingError(ValueError):
    """A setting out of its range; `field` names it (OpenAI's name for it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens. Temperature 0 is greedy (the transforms before the
    temperature still apply: a +100 bias wins an argmax too).

    presence_penalty, frequency_penalty: OpenAI's, in [-2, 2]: token j's logit is lowered by
        frequency_penalty * c[j] + presence_penalty * (c[j] > 0), c[j] being how many times
        this sequence has generated j so far (the prompt does not count).
    logit_bias: token id -> a value in [-100, 100] added to its logit.
    min_tokens: the end-of-text token cannot be chosen before this many tokens.
    """
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    min_tokens: int = 0

    def __post_init__(self) -> None:
        check_params(self)

    @property
    def draw_key(self) -> tuple:
        """Rows with equal keys are drawn in one call of sample_next."""
        return self.temperature, self.top_k, self.top_p


def check_params(p: SamplingParams, vocab_size: int | None = None) -> None:
    """Raise SamplingError naming the first setting out of range."""
    if not (np.isfinite(p.temperature) and p.temperature >= 0):
        raise SamplingError("temperature", f"temperature must be a finite number >= 0, got {p.temperature}")
    if p.top_k is not None and (int(p.top_k) != p.top_k or p.top_k < 1):
        raise SamplingError("top_k", f"top_k must be a positive integer, got {p.top_k}")
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
        raise SamplingError("top_p", f"top_p must be in (0, 1], got {p.top_p}")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        if not -2.0 <= value <= 2.0:
            raise SamplingError(name, f"{name} must be in [-2, 2], got {value}")
    for token, bias in p.logit_bias.items():
        if int(token) != token or token < 0 or (vocab_size is not None and token >= vocab_size):
            raise SamplingError("logit_bias", f"logit_bias: {token!r} is not a token id")
        if not -100.0 <= bias <= 100.0:
            raise SamplingError("logit_bias", f"logit_bias[{token}] must be in [-100, 100], got {bias}")
    if int(p.min_tokens) != p.min_tokens or p.min_tokens < 0:
        raise SamplingError("min_tokens", f"min_tokens must be an integer >= 0, got {p.min_tokens}")


# ---------------------------------------------------------------- the transforms
def apply_penalties(logits: np.ndarray, generated: Sequence[Sequence[int]],
                    presence: Sequence[float], frequency: Sequence[float]) -> np.ndarray:
    """OpenAI's penalties, row by row: logit[j] - c[j] * frequency - (c[j] > 0) * presence,
    where c[j] counts token j in that row's `generated` tokens."""
    out = np.array(logits, dtype=np.float32)
    for row, (tokens, pres, freq) in enumerate(zip(generated, presence, frequency)):
        if len(tokens) == 0 or (pres == 0 and freq == 0):
            continue
        ids, counts = np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)
        out[row, ids] -= (counts * freq + pres).astype(np.float32)
    return out


def apply_logit_bias(logits: np.ndarray, biases: Sequence[Mapping[int, float] | None]) -> np.ndarray:
    """Each row's bias (token id -> value) added to its logits."""
    out = np.array(logits, dtype=np.float32)
    for row, bias in enumerate(biases):
        if bias:
            ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
            out[row, ids] += np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return out


def forbid(logits: np.ndarray, token_id: int, rows: Sequence[bool]) -> np.ndarray:
    """`token_id` made impossible (-inf) in the rows where `rows` is True."""
    out = np.array(logits, dtype=np.float32)
    out[np.asarray(rows, dtype=bool), token_id] = -np.inf
    return out


def filter_logits(logits: np.ndarray, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """Set to -inf every logit outside the top_k largest and outside the top_p nucleus, per row.

    `logits` is (B, V), already divided by the temperature. The nucleus is the smallest set of
    most likely tokens whose probability sum reaches top_p; the most likely token always stays.
    Ties at the k-th value are all kept (the k-th value is the threshold). Returns float64.
    """
    return _filter(np.array(logits, dtype=np.float64), top_k, top_p)


def _filter(out: np.ndarray, top_k: int | None, top_p: float | None) -> np.ndarray:
    """filter_logits in place on a float64 array of our own."""
    V = out.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(out, V - top_k, axis=-1)[:, V - top_k][:, None]
        out[out < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        for row in out:
            row[~_nucleus(row, top_p)] = -np.inf
    return out


def _nucleus(logits: np.ndarray, top_p: float) -> np.ndarray:
    """The tokens of one row (V,) whose more likely tokens (ties: lower ids first) sum to less
    than top_p, as a boolean mask.

    Sorting all 50,257 tokens costs milliseconds per row; the nucleus usually lies among the few
    hundred most likely, so sort those first (argpartition), and more only when their mass is
    short of top_p. Exact: tokens outside the sorted set are no more likely than every token in it.
    """
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    V, m = len(probs), 256
    while True:
        if m >= V:
            cand = np.arange(V)
        else:
            cand = np.sort(np.argpartition(-probs, m - 1)[:m])
            p = probs[cand]
            # every token left out is at most as likely as the least likely candidate: the
            # candidates above that value must already reach top_p for the cut to be exact
            if p[p > p.min()].sum() < top_p:
                m *= 4
                continue
        cand = cand[np.argsort(-probs[cand], kind="stable")]     # most likely first, then by id
        p = probs[cand]
        keep = np.zeros(V, dtype=bool)
        keep[cand[np.cumsum(p) - p < top_p]] = True
        return keep


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None,
                rng: np.random.Generator | Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """The next token id per row of `logits` (B, V): argmax when temperature is 0, else a draw.

    `rng` may be a list of B generators, one per row (a server's requests each have their own
    seed): row b then draws exactly what it would draw alone."""
    if temperature == 0.0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    rng = rng if rng is not None else backend.rng("cpu")
    if top_k is None and top_p is None:     # the common case: no sort; float32 exponentials
        x = np.array(logits, dtype=np.float32)
        if temperature != 1.0:
            x /= np.float32(temperature)
    else:
        x = _filter(np.array(logits, dtype=np.float64) / temperature, top_k, top_p)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)                        # unnormalised probabilities in [0, 1] (filtered: 0)
    draws = np.array([g.random() for g in rng]) if isinstance(rng, (list, tuple)) else rng.random(len(x))
    return np.array([inverse_cdf(row, u) for row, u in zip(x, draws)], dtype=np.int64)


CDF_BLOCK = 128


def inverse_cdf(p: np.ndarray, u: float) -> int:
    """The first token whose cumulative probability passes u * total, for one row of
    unnormalised probabilities p (V,) and u in [0, 1): a token of probability 0 is never chosen.

    Sums are float64, taken a block of 128 tokens at a time (the block sums, then the one block
    the draw falls in): a full cumulative sum over 50,257 tokens cost more than all the rest of
    sampling a batch of rows."""
    n = len(p) // CDF_BLOCK * CDF_BLOCK
    blocks = np.append(p[:n].reshape(-1, CDF_BLOCK).sum(axis=1, dtype=np.float64), p[n:].sum(dtype=np.float64))
    cum = np.cumsum(blocks)
    target = u * cum[-1]
    b = int(np.searchsorted(cum, target, side="right"))
    if b == len(blocks):                    # rounding made the target the whole sum
        b = int(np.flatnonzero(blocks)[-1])
    seg = p[b * CDF_BLOCK:(b + 1) * CDF_BLOCK]
    i = int(np.searchsorted(np.cumsum(seg, dtype=np.float64) + (cum[b - 1] if b else 0.0), target, side="right"))
    if i == len(seg):                       # rounding again: the block's last possible token
        i = int(np.flatnonzero(seg)[-1])
    return b * CDF_BLOCK + i


def choose_next(logits: np.ndarray, params: Sequence[SamplingParams], generated: Sequence[Sequence[int]],
                rngs: Sequence[np.random.Generator | None], eos_id: int | None) -> np.ndarray:
    """The next token of each row of `logits` (B, V), row b with its own params[b], the tokens
    it generated so far (for penalties and min_tokens) and its own generator rngs[b] (None for
    greedy rows). Row b gets what it would get alone."""
    x = np.asarray(logits, dtype=np.float32)
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        x = apply_penalties(x, generated, [p.presence_penalty for p in params],
                            [p.frequency_penalty for p in params])
    if any(p.logit_bias for p in params):
        x = apply_logit_bias(x, [p.logit_bias for p in params])
    early = [len(g) < p.min_tokens for p, g in zip(params, generated)]
    if eos_id is not None and any(early):
        x = forbid(x, eos_id, early)
    groups: dict[tuple, list[int]] = {}
    for row, p in enumerate(params):
        groups.setdefault(p.draw_key, []).append(row)
    out = np.empty(len(params), dtype=np.int64)
    for (temperature, top_k, top_p), rows in groups.items():
        out[rows] = sample_next(x[rows], temperature, top_k, top_p,
                                None if temperature == 0 else [rngs[r] for r in rows])
    return out


def seeded_rng(seed: int | None, stream: int = 0) -> np.random.Generator:
    """The generator of sample `stream` (0, 1, ... for a request's n choices) drawn from `seed`:
    stream 0 is numpy's default_rng(seed) (what gpt2.generate draws with that seed), the others
    are independent children of the same seed. No seed: fresh entropy, a different stream each
    call."""
    if seed is None or stream == 0:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


# ---------------------------------------------------------------- log-probabilities
def log_softmax(logits: Any) -> Any:
    """The model's log-probabilities over the last axis, float32, on the logits' own device
    (minigrad's log_softmax: what a direct forward pass gives)."""
    x = logits if isinstance(logits, Tensor) else mg.tensor(logits)
    with mg.no_grad():
        return F.log_softmax(x, axis=-1).data


def top_logprobs(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens of each row of `logprobs` (B, V): (ids (B, k), values (B, k)),
    most likely first; equal values in increasing id order."""
    logprobs = np.asarray(logprobs)
    B, V = logprobs.shape
    k = min(k, V)
    if k == 0:
        return np.zeros((B, 0), dtype=np.int64), np.zeros((B, 0), dtype=logprobs.dtype)
    part = np.argpartition(-logprobs, k - 1, axis=-1)[:, :k] if k < V else np.tile(np.arange(V), (B, 1))
    kth = np.take_along_axis(logprobs, part, axis=-1).min(axis=-1)
    # argpartition picks any of the tokens tied at the k-th value; keep the lowest ids (rare)
    crowded = (logprobs == kth[:, None]).sum(-1) > (np.take_along_axis(logprobs, part, -1) == kth[:, None]).sum(-1)
    for row in np.flatnonzero(crowded):
        above = np.flatnonzero(logprobs[row] > kth[row])
        part[row] = np.concatenate([above, np.flatnonzero(logprobs[row] == kth[row])[:k - len(above)]])
    vals = np.take_along_axis(logprobs, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)        # by value descending, then by id
    return np.take_along_axis(part, order, axis=-1).astype(np.int64), np.take_along_axis(vals, order, axis=-1)
