"""tasks/serving/protocol.py: every field of a request checked, refused by name when unknown or
unsupported, and the log-probability objects in OpenAI's two shapes."""
from __future__ import annotations

import pytest

from tasks.serving.protocol import (FIELDS, MAX_STOPS, ApiError, chat_logprobs, completion_prompts,
                                    legacy_logprobs, parse_chat, parse_completion, parse_detokenize,
                                    parse_tokenize)
from tasks.serving.text import TokenOut

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
COMPLETION = {"prompt": "Hi"}


def refused(parse, body) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse(body)
    assert e.value.status == 400
    return e.value


@pytest.mark.parametrize("parse,base", [(parse_completion, COMPLETION), (parse_chat, CHAT)])
def test_an_unknown_field_is_refused_by_name(parse, base):
    e = refused(parse, {**base, "repetition_penalty": 1.1})
    assert e.code == "unknown_parameter" and e.param == "repetition_penalty"


UNSUPPORTED = [(f, endpoint) for f in FIELDS if not f.supported for endpoint in f.where]


@pytest.mark.parametrize("f,endpoint", UNSUPPORTED, ids=[f"{e}.{f.name}" for f, e in UNSUPPORTED])
def test_an_unsupported_field_is_refused_by_name_unless_null_or_neutral(f, endpoint):
    parse, base = (parse_chat, CHAT) if endpoint == "chat" else (parse_completion, COMPLETION)
    e = refused(parse, {**base, f.name: {"type": "json_object"} if f.name == "response_format" else "x"})
    assert e.code == "unsupported_parameter" and e.param == f.name
    parse({**base, f.name: None})
    for value in f.neutral:
        parse({**base, f.name: value})


@pytest.mark.parametrize("field,value", [
    ("max_tokens", -1), ("max_tokens", 1.5), ("max_tokens", "9"), ("temperature", "hot"), ("temperature", 2.5),
    ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5), ("top_k", -2), ("top_k", 2.0), ("seed", "x"),
    ("seed", -1), ("stop", 5), ("stop", [""]), ("stop", ["x"] * (MAX_STOPS + 1)), ("stream", "yes"),
    ("n", 0), ("n", 17), ("presence_penalty", 2.5), ("presence_penalty", -3), ("frequency_penalty", 2.01),
    ("frequency_penalty", "1"), ("logit_bias", {"5": 101}), ("logit_bias", {"5": -100.5}), ("logit_bias", {"x": 1}),
    ("logit_bias", [1]), ("min_tokens", -1), ("ignore_eos", 1), ("user", 5),
])
@pytest.mark.parametrize("parse,base", [(parse_completion, COMPLETION), (parse_chat, CHAT)])
def test_a_value_out_of_range_is_400_naming_the_field(parse, base, field, value):
    e = refused(parse, {**base, field: value})
    assert e.param == field and e.code == "invalid_value"


@pytest.mark.parametrize("field,value", [("logprobs", -1), ("logprobs", 21), ("logprobs", True), ("echo", "yes"),
                                         ("best_of", 0), ("max_tokens", 0)])
def test_completion_only_fields_out_of_range(field, value):
    assert refused(parse_completion, {**COMPLETION, field: value}).param == field


def test_best_of_above_n_is_unsupported_and_equal_is_fine():
    assert refused(parse_completion, {**COMPLETION, "best_of": 3, "n": 2}).code == "unsupported_parameter"
    assert parse_completion({**COMPLETION, "best_of": 2, "n": 2}).n == 2


@pytest.mark.parametrize("body,param", [
    ({"logprobs": "yes"}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options"),
])
def test_chat_fields_out_of_range(body, param):
    assert refused(parse_chat, {**CHAT, **body}).param == param


def test_supported_fields_are_read():
    r = parse_completion({"prompt": [[1, 2], [3]], "n": 2, "echo": True, "logprobs": 3, "max_tokens": 0,
                          "stop": ["a"] * MAX_STOPS, "seed": 5, "temperature": 0.5, "top_k": 7, "top_p": 0.9,
                          "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"50256": -100},
                          "min_tokens": 1, "ignore_eos": True, "user": "u", "suffix": "", "model": "m",
                          "stream": True, "stream_options": {"include_usage": True}})
    assert r.prompts == [[1, 2], [3]] and r.n == 2 and r.echo and r.logprobs == 3 and r.max_tokens == 0
    assert len(r.stops) == MAX_STOPS and r.seed == 5 and r.ignore_eos and r.stream and r.include_usage
    p = r.params
    assert (p.temperature, p.top_k, p.top_p, p.presence_penalty, p.frequency_penalty, p.min_tokens) == \
        (0.5, 7, 0.9, 0.5, -0.5, 1)
    assert p.logit_bias == {50256: -100.0}
    c = parse_chat({**CHAT, "logprobs": True, "top_logprobs": 2, "max_completion_tokens": 5,
                    "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert c.logprobs == 2 and c.max_tokens == 5 and c.messages == [("system", "ab")] and c.chat
    assert parse_chat(CHAT).logprobs is None and parse_chat({**CHAT, "logprobs": True}).logprobs == 0
    assert parse_completion(COMPLETION).max_tokens == 16 and parse_chat(CHAT).max_tokens is None


def test_prompt_forms():
    assert completion_prompts("a") == ["a"]
    assert completion_prompts(["a", "b"]) == ["a", "b"]
    assert completion_prompts([1, 2]) == [[1, 2]]
    assert completion_prompts([[1], [2, 3]]) == [[1], [2, 3]]
    for bad in (None, 5, [], [[]], ["a", 1], [[1], "a"], [1.5], [True]):
        with pytest.raises(ApiError):
            completion_prompts(bad)


def test_tokenizer_endpoint_bodies():
    assert parse_tokenize({"prompt": "x", "add_special_tokens": False, "model": "m"}) == "x"
    assert parse_detokenize({"tokens": [1, 2]}) == [1, 2]
    for parse, body in [(parse_tokenize, {"prompt": 5}), (parse_tokenize, {"prompt": "x", "messages": []}),
                        (parse_detokenize, {"tokens": ["a"]}), (parse_detokenize, {"tokens": [1], "x": 1})]:
        with pytest.raises(ApiError):
            parse(body)


def test_logprob_objects(tok):
    tokens = [TokenOut(15496, None, None, 0), TokenOut(11, -1.5, [(0, -0.25), (11, -1.5)], 5),
              TokenOut(995, -3.0, [(0, -0.25), (13, -1.0)], 6)]
    legacy = legacy_logprobs(tokens, tok, 1)
    assert legacy == {"tokens": ["Hello", ",", " world"], "token_logprobs": [None, -1.5, -3.0],
                      "top_logprobs": [None, {"!": -0.25, ",": -1.5}, {"!": -0.25, " world": -3.0}],
                      "text_offset": [0, 5, 6]}
    chat = chat_logprobs(tokens[1:], tok, 2)
    assert chat["content"][1] == {"token": " world", "logprob": -3.0, "bytes": list(b" world"),
                                  "top_logprobs": [{"token": "!", "logprob": -0.25, "bytes": [33]},
                                                   {"token": ".", "logprob": -1.0, "bytes": [46]}]}


def test_the_readme_lists_every_field_as_the_server_checks_it():
    from pathlib import Path
    from tasks.serving.protocol import fields_table
    readme = (Path(__file__).resolve().parents[1] / "tasks" / "serving" / "README.md").read_text()
    table = fields_table()
    assert table in readme, "tasks/serving/README.md's field table is stale; paste this:\n" + table
