"""tasks.serve: the per-row KV cache under it, chat prompts, and the HTTP API end to end (plain
HTTP and the `openai` client) against a subprocess serving a tiny random model on 127.0.0.1.
The pieces on their own: tests/test_serving_{protocol,text,scheduler}.py; every request field
through the `openai` client: tests/test_serving_api.py; browser rules: tests/test_serving_http.py."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from serve_helpers import Served, save_tiny_run
from tasks.serving.chat import render_chat


# ---------------------------------------------------------------- the per-row KV cache
def test_per_row_cache_decodes_rows_of_different_lengths_as_each_alone():
    mg.manual_seed(0)
    model = GPT2(GPT2Config(n_ctx=32, n_embd=16, n_layer=2, n_head=2, vocab_size=50)).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    steps = [[[9], [10]], [[11], [12]], [[13], [14]]]   # the next token fed to each row
    cache = model.new_cache(3, per_row=True)             # a spare row stays unused
    batched = []
    with mg.no_grad():
        for row, p in enumerate(prompts):                # prefill each row through a view
            model(np.asarray([p]), cache=cache.rows(row, row + 1))
        assert cache.lengths.tolist() == [5, 2, 0]
        for ids in steps:
            batched.append(model(np.asarray(ids), cache=cache.rows(0, 2)).data[:, -1])
        assert cache.lengths.tolist() == [8, 5, 0]
        for row, p in enumerate(prompts):                # recompute each row alone, no cache
            for t, ids in enumerate(steps):
                seq = p + [s[row][0] for s in steps[:t + 1]]
                alone = model(np.asarray([seq])).data[0, -1]
                np.testing.assert_allclose(batched[t][row], alone, rtol=1e-4, atol=1e-5)


def test_per_row_cache_moves_a_row():
    model = GPT2(GPT2Config(n_ctx=16, n_embd=8, n_layer=1, n_head=2, vocab_size=20)).eval()
    cache = model.new_cache(2, per_row=True)
    with mg.no_grad():
        model(np.asarray([[1, 2, 3]]), cache=cache.rows(1, 2))
        want = model(np.asarray([[4]]), cache=cache.rows(1, 2)).data
        cache.lengths[1] -= 1                            # forget the step, move the row, redo it
        cache.copy_row(1, 0)
        got = model(np.asarray([[4]]), cache=cache.rows(0, 1)).data
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sample_next_with_a_generator_per_row_draws_what_each_row_draws_alone():
    from gpt2.sampling import sample_next
    logits = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    together = sample_next(logits, 0.9, 20, 0.95, [np.random.default_rng(s) for s in (1, 2, 3)])
    for row, seed in enumerate((1, 2, 3)):
        alone = sample_next(logits[row:row + 1], 0.9, 20, 0.95, np.random.default_rng(seed))
        assert together[row] == alone[0]
    gens = [np.random.default_rng(s) for s in (1, 2, 3)]
    draws = np.stack([sample_next(logits, 1.0, None, None, gens) for _ in range(30)])
    assert len(set(map(tuple, draws.T.tolist()))) == 3            # the rows do differ


# ---------------------------------------------------------------- chat prompts
def test_chat_rendering():
    from tasks.data.alpaca import format_prompt
    msgs = [("user", "Name a colour.")]
    assert render_chat(msgs, instruct=True) == format_prompt({"instruction": "Name a colour.", "input": ""})
    two = render_chat([("system", "Be brief."), ("user", "a"), ("assistant", "b"), ("user", "c")], True)
    assert two.startswith("Be brief.\n\n### Instruction:\na\n\n### Response:\nb\n\n### Instruction:\nc")
    assert two.endswith("### Response:\n")
    assert render_chat([("user", "Once upon"), ("assistant", "a time")], instruct=False) == "Once upon\n\na time"


# ---------------------------------------------------------------- over HTTP
# A request that must still be running when the test acts on it (leaves, or fills the queue):
# greedy, so it never ends early at a sampled <|endoftext|>, and long (the tiny model makes ~800
# tokens a second here), so it cannot finish before the server has looked for the client.
LONG = {"prompt": "x", "max_tokens": 4000, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory, needs_tokenizer):
    s = Served("--init", str(save_tiny_run(tmp_path_factory.mktemp("serve") / "run", n_ctx=4096)),
               "--max-batch", "4", "--max-queue", "4")
    yield s
    s.close()


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def sse(url: str, body: dict) -> list:
    """The JSON events of a streamed request, checking it ends with [DONE]."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [ln.decode().rstrip("\n") for ln in r]
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_models_and_completions(server):
    status, models = get(server.url + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "run"
    status, r = post(server.url + "/v1/completions",
                     {"model": "run", "prompt": "Every effort moves you", "max_tokens": 7, "temperature": 0})
    assert status == 200
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert isinstance(r["choices"][0]["text"], str) and r["choices"][0]["text"]
    # the library's greedy decoding of the same model gives the same text
    import gpt2.generate as G
    from gpt2.tokenizer import get_tokenizer
    from tasks.runs.models import load_run_model
    tok = get_tokenizer()
    model = load_run_model(_run_dir(server))
    ids = G.generate(model, tok.encode("Every effort moves you"), 7)
    assert r["choices"][0]["text"] == tok.decode(ids[4:].tolist())


def _run_dir(server):
    return server.proc.args[server.proc.args.index("--init") + 1]


def test_streaming_gives_the_same_text_and_ends_with_done(server):
    body = {"prompt": "Hello", "max_tokens": 12, "temperature": 1.0, "seed": 7}
    _, whole = post(server.url + "/v1/completions", body)
    events = sse(server.url + "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_sequences(server):
    body = {"prompt": "The cat", "max_tokens": 20, "temperature": 0}
    _, full = post(server.url + "/v1/completions", body)
    text = full["choices"][0]["text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    want = text[:text.find(stop)]
    _, cut = post(server.url + "/v1/completions", {**body, "stop": [stop, "never-there"]})
    assert cut["choices"][0]["text"] == want and cut["choices"][0]["finish_reason"] == "stop"
    events = sse(server.url + "/v1/completions", {**body, "stop": stop})
    assert "".join(e["choices"][0]["text"] for e in events) == want
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["run"]
    c = client.completions.create(model="run", prompt="Once upon a time", max_tokens=5, seed=1)
    assert c.usage.completion_tokens == 5 and c.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=6, seed=3, temperature=0.8, top_p=0.9)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, seed=3, temperature=0.8, top_p=0.9, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])


def test_overlapping_streams_get_the_tokens_they_get_alone(server):
    url = server.url + "/v1/completions"
    bodies = [{"prompt": "Every effort moves you", "max_tokens": 150, "temperature": 1.0, "seed": 11},
              {"prompt": "A", "max_tokens": 120, "temperature": 0.7, "top_k": 50, "seed": 12}]
    alone = ["".join(e["choices"][0]["text"] for e in sse(url, b)) for b in bodies]
    _, before = get(server.url + "/health")
    together = [None, None]

    def run(i):
        together[i] = "".join(e["choices"][0]["text"] for e in sse(url, bodies[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    _, after = get(server.url + "/health")
    assert together == alone
    assert after["steps_batched"] > before["steps_batched"]   # they really shared decode steps


@pytest.mark.parametrize("raw,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (json.dumps({"prompt": 5}).encode(), 400, "invalid_value"),
    (json.dumps({"prompt": "x", "max_tokens": -3}).encode(), 400, "invalid_value"),
    (json.dumps({"prompt": "x", "max_tokens": 10 ** 9}).encode(), 400, "context_length_exceeded"),
    (json.dumps({"prompt": "x", "temperature": "warm"}).encode(), 400, "invalid_value"),
    (json.dumps({"prompt": "x", "model": "gpt-5"}).encode(), 404, "model_not_found"),
    (json.dumps({"prompt": [1, 99999999]}).encode(), 400, "invalid_value"),
])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, raw, status, code):
    got, body = post(server.url + "/v1/completions", None, raw=raw)
    assert got == status and body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}
    got, body = post(server.url + "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert got == 200 and body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_gets_413(server, chunked):
    """Refused by its Content-Length before it is sent, or, chunked, as soon as it passes 1 MiB."""
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        part = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(part), part))
    else:
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()                                  # the body never comes
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    conn.close()
    assert post(server.url + "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200


def test_unknown_paths_and_chat_type_errors(server):
    status, body = get(server.url + "/v1/nothing")
    assert status == 404 and "error" in body
    status, body = post(server.url + "/v1/chat/completions", {"messages": "hello"})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = post(server.url + "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server, stream):
    _, before = get(server.url + "/health")
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({**LONG, "stream": stream}),
                 {"Content-Type": "application/json"})
    if stream:
        r = conn.getresponse()
        assert r.status == 200 and r.readline().startswith(b"data: ")
    else:                                                  # wait until it runs, then leave
        for _ in range(100):
            if get(server.url + "/health")[1]["running"]:
                break
            time.sleep(0.05)
    conn.sock.shutdown(2)
    conn.close()
    for _ in range(200):                                   # bounded wait: 20 s at most
        _, now = get(server.url + "/health")
        if now["running"] == 0 and now["finish_reasons"]["cancelled"] > before["finish_reasons"]["cancelled"]:
            break
        time.sleep(0.1)
    assert now["running"] == 0 and now["finish_reasons"]["cancelled"] == before["finish_reasons"]["cancelled"] + 1
    assert now["tokens"] - before["tokens"] < LONG["max_tokens"]   # it did not run to the end


def test_api_key_and_queue_full(tmp_path, needs_tokenizer):
    run = save_tiny_run(tmp_path / "run", n_ctx=4096)
    s = Served("--init", str(run), "--api-key-env", "MY_KEY", "--max-batch", "1", "--max-queue", "0",
               extra_env={"MY_KEY": "s3cret"})
    try:
        body = {"prompt": "x", "max_tokens": 2}
        assert post(s.url + "/v1/completions", body)[0] == 401
        assert post(s.url + "/v1/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(s.url + "/v1/models")[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert post(s.url + "/v1/completions", body, auth)[0] == 200
        with urllib.request.urlopen(s.url + "/", timeout=60) as r:   # the page itself is public
            assert b"<html" in r.read()
        # one running request and no queue: a second request at the same time gets 503
        u = urlparse(s.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({**LONG, "stream": True}),
                     {"Content-Type": "application/json", **auth})
        r = conn.getresponse()
        assert r.readline().startswith(b"data: ")
        status, err = post(s.url + "/v1/completions", body, auth)
        assert status == 503 and err["error"]["code"] == "queue_full"
        conn.close()
    finally:
        s.close()


# ---------------------------------------------------------------- the judge against our server
def test_judge_scores_through_our_server(tmp_path, needs_tokenizer):
    """tasks.evaluate judge --api openai against tasks.serve: every record gets what parse_score
    makes of the server's greedy reply (a tiny random model rarely answers with a number, and a
    reply without one is recorded as a failure, as for any judge)."""
    import subprocess
    import sys

    from serve_helpers import REPO, env
    from tasks.evals.judge import ScoreParseError, judge_prompt, parse_score

    run = save_tiny_run(tmp_path / "judge-run", task="instruct")
    s = Served("--init", str(run), "--model-name", "tiny-judge", "--api-key-env", "JUDGE_KEY",
               "--max-tokens", "8", extra_env={"JUDGE_KEY": "k3y"})
    try:
        records = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "model_response": "5"},
                   {"instruction": "Name a colour.", "input": "", "output": "Red", "model_response": "Blue"}]
        responses = tmp_path / "responses.json"
        responses.write_text(json.dumps(records))
        out = tmp_path / "scores.json"
        r = subprocess.run([sys.executable, "-m", "tasks.evaluate", "judge", "--api", "openai",
                            "--url", s.url, "--model", "tiny-judge", "--responses", str(responses),
                            "--out", str(out), "--retries", "0", "--no-progress"],
                           cwd=REPO, env={**env(), "OPENAI_API_KEY": "k3y"}, capture_output=True,
                           text=True, timeout=300)
        scores = json.loads(out.read_text())["scores"]
        assert len(scores) == 2 and "mean score" in r.stdout
        for rec, got in zip(records, scores):
            # the same request the judge sends (temperature 0: greedy, so the reply is fixed)
            status, reply = post(s.url + "/v1/chat/completions",
                                 {"model": "tiny-judge", "temperature": 0,
                                  "messages": [{"role": "user", "content": judge_prompt(rec)}]},
                                 {"Authorization": "Bearer k3y"})
            assert status == 200
            try:
                want = (parse_score(reply["choices"][0]["message"]["content"]), None)
            except ScoreParseError as e:
                want = (None, str(e))
            assert (got["score"], got["error"]) == want
        assert r.returncode == (0 if any(g["score"] is not None for g in scores) else 1), r.stderr
    finally:
        s.close()


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_the_server_logs_each_request_and_a_stop_is_said_as_one(tmp_path, needs_tokenizer, signame, code):
    """One line per answered request (method, path, status, seconds), and SIGTERM or Ctrl-C is a
    normal stop: said as one, not as an interruption or an error, with 143 or 130."""
    import re
    import signal
    s = Served("--init", str(save_tiny_run(tmp_path / "run")))
    try:
        post(s.url + "/v1/completions", {"prompt": "x", "max_tokens": 2})
        get(s.url + "/v1/nothing")
        s.proc.send_signal(getattr(signal, signame))
        assert s.proc.wait(timeout=60) == code
        err = s.stderr()
    finally:
        s.close()
    assert re.search(r"^\d\d:\d\d:\d\d POST /v1/completions 200 \d+\.\d{3} s$", err, re.M), err
    assert re.search(r"^\d\d:\d\d:\d\d GET /v1/nothing 404 ", err, re.M), err
    name = "SIGTERM" if signame == "SIGTERM" else "Ctrl-C"
    assert f"stopped ({name}); choices answered: 1 length" in err
    assert "error" not in err and "interrupted" not in err and "Traceback" not in err
