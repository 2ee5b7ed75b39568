"""tasks/serving/scheduler.py in process: choices give the same tokens and log-probabilities alone
and batched, those log-probabilities are a direct forward pass's, the n choices of a prompt share
one prefill, stop strings end a job as "stop", and every finish reason is counted apart."""
from __future__ import annotations

import time

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from gpt2 import GPT2, GPT2Config
from gpt2.sampling import SamplingParams, seeded_rng
from tasks.serving.scheduler import Job, QueueFull, Scheduler
from tasks.serving.text import ChoiceText, echo_prompt

V, EOS = 60, 0


class Chars:
    """Token t is the character chr(64 + t) ('@' for the end-of-text token 0)."""

    def push(self, t: int) -> str:
        return chr(64 + t)

    def flush(self) -> str:
        return ""


@pytest.fixture(scope="module")
def model():
    mg.manual_seed(0)
    m = GPT2(GPT2Config(n_ctx=64, n_embd=16, n_layer=2, n_head=2, vocab_size=V))
    for p in m.parameters():             # sharper than at initialisation: fewer near-ties
        if p.data.ndim == 2:
            p.data *= np.float32(6.0)
    return m.eval()


def make_job(prompt, max_tokens=10, params=None, seed=None, stream=0, logprobs=None, echo=False,
             stops=(), ignore_eos=False):
    events = []
    params = params or SamplingParams(temperature=0.0)
    prompt_text, prompt_tokens = echo_prompt(Chars(), prompt) if echo else ("", None)
    text = ChoiceText(Chars(), list(stops), EOS, params.min_tokens, prompt_text, prompt_tokens)
    job = Job(list(prompt), max_tokens, events.append, params,
              seeded_rng(seed, stream) if params.temperature > 0 else None, text, logprobs, echo,
              stop_at_eos=not ignore_eos)
    return job, events


def run(model, jobs, max_batch=4, max_queue=16):
    sched = Scheduler(model, max_batch=max_batch, max_queue=max_queue, eos_id=EOS)
    sched.submit(jobs)
    for _ in range(500):
        sched.step()
        if not sched.running and not sched.waiting:
            return sched
    raise AssertionError("jobs did not finish")


def outcome(job, events):
    """(text, tokens with their log-probabilities, finish reason) from a job's events."""
    text, tokens = "", []
    for e in events:
        text += e[-2]
        tokens += e[-1]
    assert events[-1][0] == "finish" and all(e[0] == "text" for e in events[:-1])
    return text, [(t.id, t.logprob, t.top) for t in tokens], events[-1][1]


PARAMS = [
    dict(params=SamplingParams(temperature=0.0), logprobs=3),
    dict(params=SamplingParams(temperature=1.0, top_k=10), seed=5, logprobs=0),
    dict(params=SamplingParams(temperature=0.8, top_p=0.9, presence_penalty=1.0, frequency_penalty=0.5), seed=6),
    dict(params=SamplingParams(temperature=1.2, logit_bias={7: 3.0, 9: -100.0}, min_tokens=4), seed=7, logprobs=2),
    dict(params=SamplingParams(temperature=0.0), echo=True, logprobs=1, max_tokens=3),
    dict(params=SamplingParams(temperature=1.0), seed=8, stream=2, stops=["C", "DE"]),
    dict(params=SamplingParams(temperature=0.0), echo=True, logprobs=2, max_tokens=0),
    dict(params=SamplingParams(temperature=1.0), seed=9, ignore_eos=True, max_tokens=20),
]
PROMPTS = [[1, 2, 3, 4, 5], [7], [3, 3, 9, 12], [5, 1], [2, 4, 6, 8, 10, 12], [9, 8, 7], [4, 5, 6], [11, 12]]


def test_each_choice_gets_alone_what_it_gets_in_a_batch_of_8(model):
    alone = []
    for p, kw in zip(PROMPTS, PARAMS):
        job, events = make_job(p, **kw)
        run(model, [job], max_batch=1)
        alone.append(outcome(job, events))
    pairs = [make_job(p, **kw) for p, kw in zip(PROMPTS, PARAMS)]
    sched = run(model, [j for j, _ in pairs], max_batch=8)
    together = [outcome(j, e) for j, e in pairs]
    assert sched.stats["max_batch_seen"] == 8 or sched.stats["steps_batched"] > 0
    for (t1, toks1, f1), (t2, toks2, f2) in zip(alone, together):
        assert (t1, f1) == (t2, f2)
        assert [t[0] for t in toks1] == [t[0] for t in toks2]
        for a, b in zip(toks1, toks2):
            if a[1] is not None:
                assert b[1] == pytest.approx(a[1], abs=1e-5)
                assert [i for i, _ in a[2]] == [i for i, _ in b[2]]


def direct_logprobs(model, ids):
    with mg.no_grad():
        return F.log_softmax(model(np.asarray([ids])), axis=-1).data[0]       # (T, V)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_logprobs_are_a_direct_forward_pass(model, k):
    """The prompt's (echo) and the generated tokens' log-probabilities and top-k alternatives
    are the float32 log-softmax of one forward pass over prompt + completion."""
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    job, events = make_job(prompt, max_tokens=6, params=SamplingParams(temperature=1.0), seed=1,
                           logprobs=k, echo=True, ignore_eos=True)
    run(model, [job])
    _, tokens, _ = outcome(job, events)
    ids = [t[0] for t in tokens]
    assert ids[:len(prompt)] == prompt and len(ids) == len(prompt) + 6
    lp = direct_logprobs(model, ids)
    assert tokens[0][1] is None and tokens[0][2] is None
    for pos in range(1, len(ids)):
        _, got, top = tokens[pos]
        assert got == pytest.approx(float(lp[pos - 1, ids[pos]]), abs=1e-5)
        want = sorted(range(V), key=lambda j: (-lp[pos - 1, j], j))[:k]
        assert [i for i, _ in top] == want
        np.testing.assert_allclose([v for _, v in top], lp[pos - 1, want], atol=1e-5)


def test_n_choices_share_one_prefill_and_draw_distinct_reproducible_streams(model):
    prompt = [2, 7, 1, 8]
    params = SamplingParams(temperature=1.0)
    jobs = [make_job(prompt, 12, params, seed=3, stream=j, logprobs=1) for j in range(4)]
    sched = run(model, [j for j, _ in jobs])
    assert sched.stats["prompt_tokens"] == len(prompt)          # prefilled once for the four
    texts = [outcome(j, e)[0] for j, e in jobs]
    assert len(set(texts)) == 4
    for stream, want in enumerate(texts):                       # each alone: the same stream
        job, events = make_job(prompt, 12, params, seed=3, stream=stream, logprobs=1)
        run(model, [job])
        assert outcome(job, events)[0] == want


def test_stop_strings_end_a_job_as_stop_and_reasons_are_counted_apart(model):
    greedy, events = make_job([1, 2, 3], max_tokens=20)
    run(model, [greedy])
    text = outcome(greedy, events)[0]
    assert len(text) >= 4
    stop = text[2:4]
    cut, ev_cut = make_job([1, 2, 3], max_tokens=20, stops=[stop])
    long_, _ = make_job([1, 2, 3], max_tokens=20, ignore_eos=True)
    sched = run(model, [cut, long_])
    t, _, reason = outcome(cut, ev_cut)
    assert t == text[:text.find(stop)] and reason == "stop"
    assert len(cut.generated) <= text.find(stop) + 2            # it ended at the stop, not at 20
    reasons = sched.status()["finish_reasons"]
    assert reasons["stop"] == 1 and reasons["length"] == 1 and reasons["cancelled"] == 0

    late = Scheduler(model, max_batch=1, max_queue=2, eos_id=EOS)
    a, ev_a = make_job([1], 30, ignore_eos=True)
    b, ev_b = make_job([1], 30, ignore_eos=True)
    late.submit([a, b])
    late.step()                                                  # a runs, b waits
    a.cancelled = True
    b.deadline = time.monotonic() - 1
    late.step()
    assert ev_a[-1][1] == "cancelled" and ev_b[-1][1] == "timeout"
    assert late.status()["finish_reasons"] == {"stop": 0, "length": 0, "cancelled": 1, "timeout": 1, "failed": 0}


def test_a_failing_step_fails_its_jobs_and_counts_them(model):
    job, events = make_job([1, 2], 5)
    sched = Scheduler(model, max_batch=2, eos_id=EOS)
    sched.submit([job])
    sched.model = None                                           # the next forward raises
    sched.step()
    assert events[-1][1].startswith("failed: ") and sched.status()["finish_reasons"]["failed"] == 1


def test_the_queue_takes_a_request_whole_or_not_at_all(model):
    sched = Scheduler(model, max_batch=1, max_queue=2, eos_id=EOS)
    sched.submit([make_job([1], 1)[0] for _ in range(3)])        # one free row + two waiting
    with pytest.raises(QueueFull):
        sched.submit([make_job([1], 1)[0]])
    assert len(sched.waiting) == 3


def test_a_row_given_up_during_admission_is_not_copied_for_the_same_prompt(model):
    """A scores P and leaves at once; B's prompt takes its row; C (P again) must prefill anew."""
    kw = dict(echo=True, logprobs=1)
    a, _ = make_job([1, 2, 3], max_tokens=0, **kw)
    b, _ = make_job([9, 9, 9, 9], max_tokens=5)
    c, ev_c = make_job([1, 2, 3], max_tokens=5, **kw)
    run(model, [a, b, c])
    alone, ev_alone = make_job([1, 2, 3], max_tokens=5, **kw)
    run(model, [alone])
    (text_c, toks_c, _), (text_a, toks_a, _) = outcome(c, ev_c), outcome(alone, ev_alone)
    assert text_c == text_a and [t[0] for t in toks_c] == [t[0] for t in toks_a]
    np.testing.assert_allclose([t[1] for t in toks_c[1:]], [t[1] for t in toks_a[1:]], atol=1e-5)


def test_on_each_backend_the_scheduler_gives_what_the_cpu_gives(model, backend):
    """The GPU path (no head copy, logits moved to the host once per step) on CuPy or its strict
    stand-in: the same tokens and log-probabilities as on the CPU."""
    import copy
    moved = copy.deepcopy(model).to(backend)
    outs = []
    for m in (model, moved):
        pairs = [make_job(p, **kw) for p, kw in zip(PROMPTS[:4], PARAMS[:4] + PARAMS[4:5])]
        pairs.append(make_job([3, 1, 4, 1, 5], max_tokens=4, echo=True, logprobs=2))
        run(m, [j for j, _ in pairs], max_batch=8)
        outs.append([outcome(j, e) for j, e in pairs])
    for (t1, toks1, f1), (t2, toks2, f2) in zip(*outs):
        assert (t1, f1, [t[0] for t in toks1]) == (t2, f2, [t[0] for t in toks2])
        np.testing.assert_allclose([t[1] for t in toks1 if t[1] is not None],
                                   [t[1] for t in toks2 if t[1] is not None], atol=1e-5)
