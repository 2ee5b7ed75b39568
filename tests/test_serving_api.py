"""tasks.serve through the `openai` client, field by field: log-probabilities equal to a direct
forward pass (alone or in a batch of 8), batched prompts and n, every sampling control's effect
and its 400 out of range, and OpenAI fields we do not implement refused by name.

The server runs a sharp tiny GPT-2 (tests/conftest.py) in a subprocess; the test holds the same
weights in process and computes what each answer must be."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from conftest import sharp_tiny_gpt2
from serve_helpers import Served

openai = pytest.importorskip("openai")

EOT = 50256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, needs_tokenizer):
    model, folder = sharp_tiny_gpt2(tmp_path_factory.mktemp("api") / "weights", n_ctx=256)
    server = Served("--init", str(folder), "--model-name", "tiny", "--max-batch", "8", "--max-queue", "16")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield model, needs_tokenizer, client
    server.close()


def direct_logprobs(model, ids: list[int]) -> np.ndarray:
    """(T, V) float32 log-softmax of one forward pass over `ids`."""
    with mg.no_grad():
        return F.log_softmax(model(np.asarray([ids])), axis=-1).data[0]


def greedy(model, ids: list[int], n: int, presence: float = 0.0, frequency: float = 0.0,
           bias: dict | None = None) -> list[int]:
    """Greedy tokens from full forward passes, penalties and bias applied as OpenAI writes them."""
    out = []
    for _ in range(n):
        with mg.no_grad():
            logits = model(np.asarray([ids + out])).data[0, -1].astype(np.float64)
        counts = np.bincount(np.asarray(out, dtype=np.int64), minlength=logits.size)
        logits -= counts * frequency + (counts > 0) * presence
        for t, b in (bias or {}).items():
            logits[t] += b
        out.append(int(np.argmax(logits)))
        if out[-1] == EOT:
            break
    return out


# ---------------------------------------------------------------- log-probabilities
@pytest.mark.parametrize("k", [0, 3])
def test_completion_logprobs_with_echo_are_a_direct_forward_pass(tiny, k):
    model, tok, client = tiny
    prompt = "The quick brown fox"
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=1.0, seed=4,
                                  logprobs=k, echo=True, extra_body={"ignore_eos": True})
    ch = c.choices[0]
    lp = ch.logprobs
    ids = tok.encode(prompt)
    assert ch.text.startswith(prompt) and len(lp.tokens) == len(ids) + 5 == c.usage.total_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    whole = ids + [tok.encode(t)[0] if not t.startswith("bytes:") else None for t in lp.tokens[len(ids):]]
    assert None not in whole, "a token string that is not whole text: the test needs other seeds"
    direct = direct_logprobs(model, whole)
    want = [float(direct[i - 1, whole[i]]) for i in range(1, len(whole))]
    np.testing.assert_allclose(lp.token_logprobs[1:], want, rtol=0, atol=1e-5)
    for i in range(1, len(whole)):
        top = lp.top_logprobs[i]
        best = np.argsort(-direct[i - 1], kind="stable")[:k]
        assert {tok.decode([b]) for b in best} <= set(top) and len(top) <= k + 1
        for b in best:
            assert top[tok.decode([b])] == pytest.approx(float(direct[i - 1, b]), abs=1e-5)
    assert lp.text_offset == [len(tok.decode(whole[:i])) for i in range(len(whole))]


def test_echo_with_max_tokens_0_scores_a_text_without_generating(tiny):
    model, tok, client = tiny
    text = "Every effort moves you"
    c = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1)
    ids = tok.encode(text)
    direct = direct_logprobs(model, ids)
    assert c.choices[0].text == text and c.usage.completion_tokens == 0
    assert c.choices[0].finish_reason == "length"
    np.testing.assert_allclose(c.choices[0].logprobs.token_logprobs[1:],
                               [direct[i - 1, ids[i]] for i in range(1, len(ids))], atol=1e-5)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=text, max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


def test_chat_logprobs_in_openais_chat_shape(tiny):
    model, tok, client = tiny
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi there"}],
                                       max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    ids = tok.encode("Hi there") + [tok.encode(c.token)[0] for c in content]
    direct = direct_logprobs(model, ids)
    base = len(tok.encode("Hi there"))
    for i, c in enumerate(content):
        row = direct[base + i - 1]
        assert c.logprob == pytest.approx(float(row[ids[base + i]]), abs=1e-5)
        assert bytes(c.bytes).decode() == c.token and len(c.top_logprobs) == 2
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(sorted(row, reverse=True)[:2], abs=1e-5)
        assert c.top_logprobs[0].token == c.token            # greedy: the best is the one chosen
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_batch_of_8_gives_each_prompt_what_it_gets_alone(tiny, temperature):
    """Eight prompts in one request (all in the continuous batch together), and eight requests
    at once, against each prompt alone: the same tokens and log-probabilities (1e-5)."""
    model, tok, client = tiny
    prompts = ["A", "The cat", "Once upon a time there", "1 2 3", "Hello, world", "x" * 9, "Q: why?\nA:", "Then"]
    kw = dict(model="tiny", max_tokens=8, temperature=temperature, seed=21, logprobs=2)
    alone = [client.completions.create(prompt=p, **kw).choices[0] for p in prompts]
    batch = client.completions.create(prompt=prompts, **kw).choices
    together: list = [None] * 8

    def one(i):
        together[i] = client.completions.create(prompt=prompts[i], **kw).choices[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.index for c in batch] == list(range(8))
    for a, b, c in zip(alone, batch, together):
        assert a.text == b.text == c.text and a.logprobs.tokens == b.logprobs.tokens == c.logprobs.tokens
        np.testing.assert_allclose(b.logprobs.token_logprobs, a.logprobs.token_logprobs, atol=1e-5)
        np.testing.assert_allclose(c.logprobs.token_logprobs, a.logprobs.token_logprobs, atol=1e-5)


def test_prompt_forms_and_n(tiny):
    model, tok, client = tiny
    ids = [tok.encode("The cat"), tok.encode("A dog")]
    kw = dict(model="tiny", max_tokens=6, temperature=0)
    by_text = client.completions.create(prompt=["The cat", "A dog"], **kw)
    by_ids = client.completions.create(prompt=ids, **kw)
    one_ids = client.completions.create(prompt=ids[0], **kw)
    assert [c.text for c in by_text.choices] == [c.text for c in by_ids.choices]
    assert one_ids.choices[0].text == by_text.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    sampled = client.completions.create(prompt=["The cat", "A dog"], n=3, seed=9, model="tiny", max_tokens=8,
                                        temperature=1.0, extra_body={"ignore_eos": True})
    assert [c.index for c in sampled.choices] == list(range(6))
    texts = [c.text for c in sampled.choices]
    assert len(set(texts[:3])) == 3 and len(set(texts[3:])) == 3        # distinct streams
    again = client.completions.create(prompt=["The cat", "A dog"], n=3, seed=9, model="tiny", max_tokens=8,
                                      temperature=1.0, extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == texts                     # reproducible from seed
    assert sampled.usage.completion_tokens == 6 * 8
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=2,
                                          seed=1, temperature=1.0, max_tokens=5)
    assert [c.index for c in chat.choices] == [0, 1] and chat.choices[0].message.content != chat.choices[1].message.content


# ---------------------------------------------------------------- sampling controls
@pytest.mark.parametrize("presence,frequency", [(0.0, 2.0), (2.0, 0.0), (-2.0, 0.0), (1.0, -1.0)])
def test_penalties_change_the_tokens_as_the_formula_says(tiny, presence, frequency):
    model, tok, client = tiny
    prompt = "Once upon a time"
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0,
                                  presence_penalty=presence, frequency_penalty=frequency)
    want = greedy(model, tok.encode(prompt), 24, presence, frequency)
    assert c.choices[0].text == tok.decode([t for t in want if t != EOT])
    if presence + frequency > 0:   # the plain greedy text repeats one token: a first repeat penalised changes it
        plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
        assert plain.choices[0].text != c.choices[0].text


def test_logit_bias_forces_and_bans_tokens(tiny):
    model, tok, client = tiny
    forced = tok.encode(" banana")[0]
    c = client.completions.create(model="tiny", prompt="I like", max_tokens=5, temperature=1.0, seed=3,
                                  logit_bias={str(forced): 100})
    assert c.choices[0].text == " banana" * 5
    first = greedy(model, tok.encode("I like"), 1)[0]
    c = client.completions.create(model="tiny", prompt="I like", max_tokens=1, temperature=0,
                                  logit_bias={str(first): -100}, logprobs=0)
    assert c.choices[0].logprobs.tokens[0] != tok.decode([first])
    assert c.choices[0].text == tok.decode(greedy(model, tok.encode("I like"), 1, bias={first: -100}))


def test_ignore_eos_and_min_tokens(tiny):
    model, tok, client = tiny
    eot_forced = {str(EOT): 100}
    kw = dict(model="tiny", prompt="Hi", temperature=0, max_tokens=6, logit_bias=eot_forced)
    c = client.completions.create(**kw)
    assert c.choices[0].finish_reason == "stop" and c.usage.completion_tokens == 1 and c.choices[0].text == ""
    c = client.completions.create(**kw, extra_body={"ignore_eos": True})
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 6
    c = client.completions.create(**kw, extra_body={"min_tokens": 3}, logprobs=0)
    assert c.choices[0].finish_reason == "stop" and c.usage.completion_tokens == 4
    assert c.choices[0].logprobs.tokens[-1] == "<|endoftext|>" and "<|endoftext|>" not in c.choices[0].text


def test_up_to_16_stop_strings(tiny):
    model, tok, client = tiny
    text = client.completions.create(model="tiny", prompt="The cat", max_tokens=20, temperature=0).choices[0].text
    stop = text[5:7]
    stops = [f"never{i}" for i in range(15)] + [stop]
    c = client.completions.create(model="tiny", prompt="The cat", max_tokens=20, temperature=0, stop=stops)
    assert c.choices[0].text == text[:text.find(stop)] and c.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="The cat", stop=stops + ["one more"])
    assert e.value.body["param"] == "stop" and "16" in e.value.body["message"]


@pytest.mark.parametrize("field,value", [
    ("presence_penalty", 2.5), ("presence_penalty", -2.01), ("frequency_penalty", 3), ("frequency_penalty", -2.5),
    ("logit_bias", {"50256": 101}), ("logit_bias", {"50257": 1}), ("logit_bias", {"x": 1}), ("temperature", 2.1),
    ("top_p", 0), ("n", 0), ("n", 17), ("logprobs", 21), ("seed", -1), ("max_tokens", -1),
])
def test_out_of_range_is_400_naming_the_field(tiny, field, value):
    _, _, client = tiny
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={field: value})
    assert e.value.body["param"] == field


@pytest.mark.parametrize("field,value", [("min_tokens", -1), ("ignore_eos", "yes"), ("top_k", -5)])
def test_vllm_fields_out_of_range(tiny, field, value):
    _, _, client = tiny
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       extra_body={field: value})
    assert e.value.body["param"] == field


# ---------------------------------------------------------------- nothing silently ignored
@pytest.mark.parametrize("kwargs,param", [
    (dict(suffix="!"), "suffix"), (dict(best_of=3, n=1), "best_of"),
    (dict(extra_body={"repetition_penalty": 1.2}), "repetition_penalty"),
])
def test_completions_refuse_what_they_do_not_do(tiny, kwargs, param):
    _, _, client = tiny
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, **kwargs)
    assert e.value.body["param"] == param
    assert e.value.body["code"] in ("unsupported_parameter", "unknown_parameter")


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("kwargs,param", [
    (dict(response_format={"type": "json_object"}), "response_format"), (dict(tools=[TOOL]), "tools"),
    (dict(tool_choice="auto"), "tool_choice"), (dict(functions=[TOOL["function"]]), "functions"),
    (dict(audio={"voice": "alloy", "format": "wav"}), "audio"), (dict(modalities=["text", "audio"]), "modalities"),
    (dict(reasoning_effort="low"), "reasoning_effort"), (dict(extra_body={"foo": 1}), "foo"),
])
def test_chat_refuses_what_it_does_not_do(tiny, kwargs, param):
    _, _, client = tiny
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], **kwargs)
    assert e.value.body["param"] == param


def test_neutral_values_of_unsupported_fields_are_accepted(tiny):
    _, _, client = tiny
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       response_format={"type": "text"}, store=False, user="me", n=1)
    assert r.usage.completion_tokens <= 2


def test_models_by_id(tiny):
    _, _, client = tiny
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
