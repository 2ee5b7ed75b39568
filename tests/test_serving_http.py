"""tasks.serve over plain HTTP: browser safety (JSON-only POSTs, CORS for named origins only,
Content-Encoding refused, Allow on 405), vLLM's tokenizer endpoints, and /health's finish
reasons counted apart."""
from __future__ import annotations

import gzip
import http.client
import json
from urllib.parse import urlparse

import pytest

from serve_helpers import Served, save_tiny_run

GOOD, EVIL = "http://good.example:3000", "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory, needs_tokenizer):
    run = save_tiny_run(tmp_path_factory.mktemp("http") / "run")
    s = Served("--init", str(run), "--cors-origin", GOOD, "--cors-origin", "http://other.example")
    yield s
    s.close()


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers as a lower-cased dict, parsed JSON body or None)."""
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        raw = r.read()
        data = json.loads(raw) if raw and r.headers.get("content-type", "").startswith("application/json") else None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


COMPLETION = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_post_that_is_not_declared_json_is_415(server, path, content_type):
    """What a page on another origin can send without a preflight is refused before it runs."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, _, body = call(server, "POST", path, COMPLETION, headers)
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert body["error"]["param"] == "Content-Type"
    before = call(server, "GET", "/health")[2]["tokens"]
    assert call(server, "GET", "/health")[2]["tokens"] == before   # nothing was generated


def test_json_with_a_charset_is_fine(server):
    status, _, body = call(server, "POST", "/v1/completions", COMPLETION,
                           {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_a_content_encoding_is_415_naming_it(server):
    status, _, body = call(server, "POST", "/v1/completions", gzip.compress(COMPLETION),
                           {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 415 and "gzip" in body["error"]["message"] and body["error"]["param"] == "Content-Encoding"


def preflight(server, origin: str, path: str = "/v1/chat/completions"):
    return call(server, "OPTIONS", path, None, {"Origin": origin, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type,authorization"})


def test_cors_answers_only_the_origins_named(server):
    status, headers, _ = preflight(server, GOOD)
    assert status == 204 and headers["access-control-allow-origin"] == GOOD
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()
    status, headers, _ = preflight(server, EVIL)
    assert status == 403 and not any(h.startswith("access-control-") for h in headers)
    # a request that needs no preflight: the browser would hide the answer from EVIL
    _, headers, _ = call(server, "GET", "/v1/models", None, {"Origin": GOOD})
    assert headers["access-control-allow-origin"] == GOOD
    _, headers, _ = call(server, "GET", "/v1/models", None, {"Origin": EVIL})
    assert "access-control-allow-origin" not in headers


def test_no_cors_by_default_and_405_says_what_is_allowed(tmp_path, needs_tokenizer):
    s = Served("--init", str(save_tiny_run(tmp_path / "run")))
    try:
        status, headers, _ = preflight(s, GOOD)
        assert status == 405 and not any(h.startswith("access-control-") for h in headers)
        status, headers, body = call(s, "GET", "/v1/completions")
        assert status == 405 and headers["allow"] == "POST" and "error" in body
        status, headers, _ = call(s, "DELETE", "/v1/models")
        assert status == 405 and set(headers["allow"].split(", ")) == {"GET", "HEAD"}
    finally:
        s.close()


def test_tokenizer_endpoints(server, tok):
    status, _, info = call(server, "GET", "/tokenizer_info")
    assert status == 200 and info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 1024
    status, _, r = call(server, "POST", "/tokenize", json.dumps({"prompt": "Hello world<|endoftext|>",
                                                                 "add_special_tokens": False}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200 and r["tokens"] == tok.encode("Hello world") + [50256] and r["count"] == 3
    status, _, r = call(server, "POST", "/detokenize", json.dumps({"tokens": r["tokens"]}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200 and r["prompt"] == "Hello world<|endoftext|>"
    status, _, r = call(server, "POST", "/detokenize", json.dumps({"tokens": [50257]}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 400 and r["error"]["param"] == "tokens"


def test_the_chat_template_renders_as_the_server_does():
    jinja2 = pytest.importorskip("jinja2")
    from tasks.serving.chat import chat_template, render_chat
    env = jinja2.sandbox.ImmutableSandboxedEnvironment() if hasattr(jinja2, "sandbox") else jinja2.Environment()
    conversations = [[("user", "Name a colour.")],
                     [("system", "Be brief."), ("user", "a"), ("assistant", "b's \\ \"c\""), ("user", "c")],
                     [("system", "s1"), ("system", "s2"), ("user", "u")]]
    for instruct in (False, True):
        template = env.from_string(chat_template(instruct))
        for conv in conversations:
            messages = [{"role": r, "content": c} for r, c in conv]
            assert template.render(messages=messages) == render_chat(conv, instruct)


def test_health_counts_each_finish_reason_apart(server):
    def reasons():
        return call(server, "GET", "/health")[2]["finish_reasons"]

    def complete(**body):
        return call(server, "POST", "/v1/completions", json.dumps({"prompt": "The cat", **body}).encode(),
                    {"Content-Type": "application/json"})[2]

    before = reasons()
    full = complete(max_tokens=12, temperature=0, ignore_eos=True)["choices"][0]["text"]
    cut = complete(max_tokens=12, temperature=0, ignore_eos=True, stop=[full[3:5]])
    assert cut["choices"][0]["finish_reason"] == "stop"
    complete(max_tokens=3, logit_bias={"50256": 100})                       # ends at end-of-text
    after = reasons()
    assert after["length"] == before["length"] + 1
    assert after["stop"] == before["stop"] + 2 and after["cancelled"] == before["cancelled"]


def test_echo_scores_a_whole_context_and_no_more(server):
    def score(n):
        return call(server, "POST", "/v1/completions", json.dumps(
            {"prompt": [11] * n, "max_tokens": 0, "echo": True, "logprobs": 0}).encode(),
            {"Content-Type": "application/json"})
    status, _, body = score(1024)                                   # the tiny run's context
    assert status == 200 and len(body["choices"][0]["logprobs"]["token_logprobs"]) == 1024
    status, _, body = score(1025)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    status, _, body = call(server, "POST", "/v1/chat/completions", json.dumps(
        {"messages": [{"role": "user", "content": " x" * 1024}]}).encode(), {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"   # no room to answer
