"""gpt2/sampling.py: each transform against its formula written out, rows independent of their
neighbours, the checks of every setting, and the log-probability helpers against float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2.sampling import (SamplingError, SamplingParams, apply_logit_bias, apply_penalties, choose_next,
                           forbid, log_softmax, sample_next, seeded_rng, top_logprobs)

V = 40


def _logits(seed: int, rows: int = 3, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, V)) * scale).astype(np.float32)


token_lists = st.lists(st.integers(0, V - 1), max_size=12)
penalty = st.floats(-2.0, 2.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 1000), generated=st.lists(token_lists, min_size=3, max_size=3),
       presence=st.lists(penalty, min_size=3, max_size=3), frequency=st.lists(penalty, min_size=3, max_size=3))
def test_penalties_follow_openais_formula(seed, generated, presence, frequency):
    logits = _logits(seed)
    got = apply_penalties(logits, generated, presence, frequency)
    for b in range(3):
        for j in range(V):
            c = generated[b].count(j)
            want = logits[b, j] - c * frequency[b] - (1.0 if c > 0 else 0.0) * presence[b]
            assert got[b, j] == pytest.approx(want, abs=1e-5)
    assert got.dtype == np.float32 and not np.shares_memory(got, logits)


def test_logit_bias_adds_and_plus_100_forces_a_token_minus_100_bans_it():
    logits = _logits(1)
    got = apply_logit_bias(logits, [{3: 1.5, 7: -2.0}, None, {}])
    want = logits.copy()
    want[0, 3] += 1.5
    want[0, 7] -= 2.0
    np.testing.assert_array_equal(got, want)
    forced = SamplingParams(temperature=1.0, logit_bias={5: 100.0})
    draws = [choose_next(logits[:1], [forced], [[]], [np.random.default_rng(s)], None)[0] for s in range(50)]
    assert set(draws) == {5}
    top = int(np.argmax(logits[0]))
    banned = SamplingParams(temperature=0.0, logit_bias={top: -100.0})
    assert choose_next(logits[:1], [banned], [[]], [None], None)[0] != top


def test_forbid_and_min_tokens_keep_the_end_token_out_until_enough_tokens():
    logits = _logits(2)
    eos = 9
    out = forbid(logits, eos, [True, False, True])
    assert np.isneginf(out[[0, 2], eos]).all() and out[1, eos] == logits[1, eos]
    sure_eos = SamplingParams(temperature=0.0, logit_bias={eos: 100.0}, min_tokens=3)
    rows = [sure_eos, sure_eos]
    got = choose_next(logits[:2], rows, [[1, 2], [1, 2, 3]], [None, None], eos)
    assert got[0] != eos and got[1] == eos      # two tokens so far: not yet; three: free


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000),
       params=st.lists(st.builds(SamplingParams, temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
                                 top_k=st.sampled_from([None, 1, 5]), top_p=st.sampled_from([None, 0.5, 0.9]),
                                 presence_penalty=penalty, frequency_penalty=penalty,
                                 logit_bias=st.dictionaries(st.integers(0, V - 1), st.floats(-100, 100), max_size=3),
                                 min_tokens=st.integers(0, 3)),
                       min_size=1, max_size=5),
       generated=st.lists(token_lists, min_size=5, max_size=5))
def test_choose_next_gives_each_row_what_it_gets_alone(seed, params, generated):
    logits = _logits(seed, rows=len(params))
    generated = generated[:len(params)]
    together = choose_next(logits, params, generated, [np.random.default_rng(seed + r) for r in range(len(params))], 0)
    for r, p in enumerate(params):
        alone = choose_next(logits[r:r + 1], [p], [generated[r]], [np.random.default_rng(seed + r)], 0)
        assert together[r] == alone[0]


def test_greedy_with_penalties_is_the_argmax_of_the_formula():
    logits = _logits(3, rows=1)
    generated = [int(np.argmax(logits[0]))] * 2
    p = SamplingParams(temperature=0.0, frequency_penalty=2.0)
    adjusted = logits[0].copy()
    adjusted[generated[0]] -= 2 * 2.0
    assert choose_next(logits, [p], [generated], [None], None)[0] == np.argmax(adjusted)


def test_sampling_with_a_penalty_draws_from_the_penalised_distribution():
    """Frequencies of 20,000 draws against softmax(logits - formula): the penalty changes the
    counts as the formula says (a chi-square-like bound, 5 sigma per token)."""
    logits = np.zeros((1, 4), dtype=np.float32)
    p = SamplingParams(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.25)
    generated = [0, 0, 1]
    want = np.exp(-np.array([2 * 0.25 + 0.5, 0.25 + 0.5, 0.0, 0.0]))
    want /= want.sum()
    rng = np.random.default_rng(0)
    n = 20_000
    draws = np.array([choose_next(logits, [p], [generated], [rng], None)[0] for _ in range(n)])
    counts = np.bincount(draws, minlength=4)
    assert np.all(np.abs(counts - n * want) < 5 * np.sqrt(n * want * (1 - want)))


@pytest.mark.parametrize("field,kwargs", [
    ("temperature", {"temperature": -0.1}), ("temperature", {"temperature": float("inf")}),
    ("top_k", {"top_k": 0}), ("top_k", {"top_k": 1.5}), ("top_p", {"top_p": 0.0}), ("top_p", {"top_p": 1.01}),
    ("presence_penalty", {"presence_penalty": 2.01}), ("frequency_penalty", {"frequency_penalty": -2.5}),
    ("logit_bias", {"logit_bias": {1: 100.5}}), ("logit_bias", {"logit_bias": {-1: 1.0}}),
    ("min_tokens", {"min_tokens": -1}),
])
def test_each_setting_out_of_range_is_refused_by_name(field, kwargs):
    with pytest.raises(SamplingError) as e:
        SamplingParams(**kwargs)
    assert e.value.field == field and field in str(e.value)


def test_seeded_streams_are_reproducible_distinct_and_stream_0_is_default_rng():
    draw = lambda g: g.random(4).tolist()                       # noqa: E731
    assert draw(seeded_rng(7)) == draw(np.random.default_rng(7))
    streams = [draw(seeded_rng(7, j)) for j in range(4)]
    assert streams == [draw(seeded_rng(7, j)) for j in range(4)]
    assert len({tuple(s) for s in streams}) == 4
    assert draw(seeded_rng(None, 1)) != draw(seeded_rng(None, 1))


def test_sample_next_greedy_is_the_argmax_lowest_id_on_ties():
    logits = np.array([[0.0, 3.0, 3.0, 1.0]], dtype=np.float32)
    assert sample_next(logits, 0.0)[0] == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), scale=st.sampled_from([0.01, 1.0, 30.0]))
def test_log_softmax_is_float32_and_matches_float64(seed, scale):
    logits = _logits(seed, rows=4, scale=scale)
    got = log_softmax(logits)
    x = logits.astype(np.float64)
    want = x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.lists(st.sampled_from([-3.0, -1.0, -0.5, 0.0]), min_size=V, max_size=V),
                       min_size=1, max_size=3),
       k=st.integers(0, V))
def test_top_logprobs_is_a_sort_by_value_then_id(values, k):
    """Few distinct values, so ties are everywhere, at the k-th place too."""
    lp = np.asarray(values, dtype=np.float32)
    ids, vals = top_logprobs(lp, k)
    assert ids.shape == vals.shape == (len(values), k)
    for row in range(len(values)):
        want = sorted(range(V), key=lambda j: (-lp[row, j], j))[:k]
        assert ids[row].tolist() == want
        np.testing.assert_array_equal(vals[row], lp[row, want])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), top_p=st.floats(0.01, 0.999), scale=st.sampled_from([0.1, 3.0, 12.0]),
       vocab=st.sampled_from([50, 1000, 3000]), ties=st.booleans())
def test_top_p_is_the_nucleus_of_a_full_sort(seed, top_p, scale, vocab, ties):
    """The nucleus, found among the most likely few hundred first, is the one a full stable sort
    gives: the tokens whose more likely tokens (lower id first among equals) sum below top_p."""
    from gpt2.sampling import filter_logits
    x = np.random.default_rng(seed).standard_normal((2, vocab)) * scale
    if ties:
        x = np.round(x)                      # many equal logits, at the cut too
    order = np.argsort(-x, axis=-1, kind="stable")
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ps = np.take_along_axis(p, order, -1)
    keep_sorted = np.cumsum(ps, -1) - ps < top_p
    want = np.zeros_like(keep_sorted)
    np.put_along_axis(want, order, keep_sorted, -1)
    got = np.isfinite(filter_logits(x, top_p=top_p))
    # a token whose "before" sum sits within rounding of top_p may fall either way
    margin = np.abs(np.take_along_axis(np.cumsum(ps, -1) - ps, np.argsort(order, -1), -1) - top_p) < 1e-9
    assert np.all((got == want) | margin)


def test_top_p_cut_inside_a_tie_keeps_the_lowest_ids():
    """200 likely tokens at scattered places, then 800 tied ones: a top_p that cuts 20 tokens into
    the tie keeps the tied tokens of lowest id, even though the first candidates sorted are fewer
    than the tie."""
    from gpt2.sampling import filter_logits
    rng = np.random.default_rng(0)
    x = np.zeros(1000)
    likely = rng.choice(1000, 200, replace=False)
    x[likely] = 5.0
    p_likely, p_tied = np.exp(5.0) / (200 * np.exp(5.0) + 800), 1 / (200 * np.exp(5.0) + 800)
    kept = np.flatnonzero(np.isfinite(filter_logits(x[None], top_p=200 * p_likely + 19.5 * p_tied)[0]))
    tied = np.setdiff1d(np.arange(1000), likely)
    assert set(kept) == set(likely) | set(tied[:20])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.sampled_from([1, 5, 127, 128, 129, 1000, 50257]),
       zeros=st.floats(0.0, 0.9))
def test_inverse_cdf_is_a_full_float64_cumulative_sum(seed, vocab, zeros):
    """Blocked sums pick what one float64 cumulative sum picks (but where u * total sits within
    rounding of a boundary), never a token of probability 0, and the ends of [0, 1) work."""
    from gpt2.sampling import inverse_cdf
    rng = np.random.default_rng(seed)
    p = rng.random(vocab).astype(np.float32)
    p[rng.random(vocab) < zeros] = 0.0
    p[rng.integers(vocab)] = 0.5                 # at least one possible token
    cdf = np.cumsum(p, dtype=np.float64)
    for u in list(rng.random(50)) + [0.0, np.nextafter(1.0, 0.0)]:
        got = inverse_cdf(p, u)
        assert p[got] > 0
        target = u * cdf[-1]
        want = min(int(np.searchsorted(cdf, target, side="right")), int(np.flatnonzero(p)[-1]))
        assert got == want or np.min(np.abs(cdf - target)) < 1e-9 * cdf[-1]
