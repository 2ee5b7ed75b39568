"""tasks.evaluate: the judge client against fake Ollama/OpenAI servers, and MMLU scoring with
rigged models."""
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import gpt2
import minigrad as mg
from tasks import evaluate
from tasks.evals import judge, mmlu
from tasks.common.jsonfiles import write_json

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- fake judge servers


class _JudgeHandler(BaseHTTPRequestHandler):
    """Answers like Ollama's /api/chat or OpenAI's /v1/chat/completions.

    What it answers depends on the record: the server's script maps a marker found in the prompt
    (the record's model_response) to a list of actions, one per request; the last one repeats.
    An action is ("reply", text), ("status", code), ("slow", seconds, text), ("raw", bytes) or
    ("trickle", seconds, n): n bytes, one at a time.
    """

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        prompt = body["messages"][0]["content"]
        with srv.lock:
            srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            marker = next(m for m in srv.script if m in prompt)
            actions = srv.script[marker]
            action = actions.pop(0) if len(actions) > 1 else actions[0]
        kind = action[0]
        if kind == "status":
            return self._send(action[1], b'{"error": "server trouble"}')
        if kind == "raw":
            return self._send(200, action[1])
        if kind == "trickle":  # ("trickle", seconds between bytes, number of bytes)
            self.send_response(200)
            self.send_header("Content-Length", str(action[2]))
            self.end_headers()
            try:
                for _ in range(action[2]):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(action[1])
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if kind == "slow":
            time.sleep(action[1])
        text = action[-1]
        if srv.api == "ollama":
            reply = {"model": body["model"], "message": {"role": "assistant", "content": text},
                     "done": True}
        else:
            reply = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                      "content": text}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status, payload):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        pass  # a client that timed out is expected here, not worth a traceback


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never route test traffic via a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    started = []

    def start(api, script):
        srv = _Server(("127.0.0.1", 0), _JudgeHandler)
        srv.api, srv.script, srv.requests, srv.lock = api, script, [], threading.Lock()
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _records(n):
    return [{"instruction": f"Instruction {i}", "input": "some input" if i % 2 else "",
             "output": f"reference {i}", "model_response": f"resp-{i}"} for i in range(n)]


def _write(tmp_path, obj, name="responses.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return path


def _run_judge(capsys, *args):
    code = evaluate.main(["judge", "--no-progress", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- score parsing


@pytest.mark.parametrize("reply, score", [
    ("85", 85), ("85/100", 85), ("Score: 0", 0), ("100", 100), (" 7\n", 7),
    ("42. The answer is mostly right; 99", 42), ("85.0", 85),
])
def test_parse_score_reads_first_integer(reply, score):
    assert judge.parse_score(reply) == score


@pytest.mark.parametrize("reply", ["great job", "", "150", "-5", "85.5", "one hundred"])
def test_parse_score_rejects(reply):
    with pytest.raises(judge.ScoreParseError):
        judge.parse_score(reply)


def test_prompt_holds_alpaca_prompt_output_and_response():
    with_input, without = _records(2)[1], _records(1)[0]
    p = judge.judge_prompt(with_input)
    alpaca = ("Below is an instruction that describes a task. Write a response that "
              "appropriately completes the request.\n\n### Instruction:\nInstruction 1"
              "\n\n### Input:\nsome input")
    assert p == (f"Given the input `{alpaca}` and correct output `reference 1`, score the model "
                 "response `resp-1` on a scale from 0 to 100, where 100 is the best score. "
                 "Respond with the integer number only.")
    assert "### Input" not in judge.judge_prompt(without)  # empty input: no Input section


# ----------------------------------------------------------------------------- judge end to end


def test_ollama_scores_and_malformed_replies(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {
        "resp-0": [("reply", "90")], "resp-1": [("reply", "great job")],
        "resp-2": [("reply", "85/100")], "resp-3": [("reply", "150")]})
    records = _records(4)
    responses, out = _write(tmp_path, records), tmp_path / "scores.json"
    code, stdout, _ = _run_judge(capsys, "--responses", responses, "--url", url + "/",
                                 "--model", "judge-m", "--out", out)
    assert code == 0
    saved = json.loads(out.read_text())
    assert [s["score"] for s in saved["scores"]] == [90, None, 85, None]
    assert [s["index"] for s in saved["scores"]] == [0, 1, 2, 3]
    assert saved["scores"][0]["error"] is None and saved["scores"][2]["error"] is None
    assert "no number" in saved["scores"][1]["error"]
    assert "outside 0..100" in saved["scores"][3]["error"]
    assert (saved["mean_score"], saved["scored"], saved["failed"]) == (87.5, 2, 2)
    assert "mean score: 87.50" in stdout and "scored: 2" in stdout and "failed: 2" in stdout
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob("*.tmp"))

    assert len(srv.requests) == 4
    for req, rec in zip(srv.requests, records):
        assert req["path"] == "/api/chat"
        body = req["body"]
        assert body["model"] == "judge-m" and body["stream"] is False
        assert body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
        assert body["messages"] == [{"role": "user", "content": judge.judge_prompt(rec)}]


def test_openai_api_sends_key_but_never_saves_or_prints_it(judge_server, tmp_path, capsys,
                                                          monkeypatch):
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    srv, url = judge_server("openai", {"resp-0": [("reply", "77")],
                                       "resp-1": [("status", 500), ("reply", "x")]})
    responses, out = _write(tmp_path, _records(2)), tmp_path / "scores.json"
    code, stdout, stderr = _run_judge(capsys, "--responses", responses, "--url", url,
                                      "--model", "gpt-judge", "--api", "openai", "--out", out,
                                      "--api-key-env", "MY_JUDGE_KEY", "--retries", "0")
    assert code == 0
    saved = out.read_text()
    assert [s["score"] for s in json.loads(saved)["scores"]] == [77, None]
    assert "HTTP 500" in json.loads(saved)["scores"][1]["error"]
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {secret}"
    assert req["body"]["temperature"] == 0 and req["body"]["model"] == "gpt-judge"
    for text in (saved, stdout, stderr):
        assert secret not in text


def test_openai_without_key_sends_no_authorization(judge_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    srv, url = judge_server("openai", {"resp-0": [("reply", "60")]})
    code, _, stderr = _run_judge(capsys, "--responses", _write(tmp_path, _records(1)),
                                 "--url", url, "--model", "m", "--api", "openai",
                                 "--api-key-env", "NO_SUCH_KEY_VAR")
    assert code == 0 and "NO_SUCH_KEY_VAR is not set" in stderr
    assert "Authorization" not in srv.requests[0]["headers"]
    # default output path: beside the responses file
    saved = json.loads((tmp_path / "responses-judge-scores.json").read_text())
    assert saved["scores"][0]["score"] == 60


def test_http_500_is_retried_then_succeeds(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {"resp-0": [("status", 500), ("status", 503),
                                                  ("reply", "70")]})
    out = tmp_path / "s.json"
    code, stdout, _ = _run_judge(capsys, "--responses", _write(tmp_path, _records(1)), "--url", url,
                                 "--model", "m", "--out", out, "--retries", "2",
                                 "--backoff", "0.01")
    assert code == 0 and len(srv.requests) == 3
    assert json.loads(out.read_text())["scores"][0] == {"index": 0, "score": 70, "error": None}


def test_client_error_is_not_retried(judge_server):
    srv, url = judge_server("ollama", {"resp-0": [("status", 404)]})
    client = judge.JudgeClient(url, "m", retries=3, backoff=0.0)
    with pytest.raises(judge.JudgeRequestError, match="HTTP 404"):
        client.ask("resp-0")
    assert len(srv.requests) == 1


def test_backoff_doubles_and_gives_up(judge_server):
    srv, url = judge_server("ollama", {"resp-0": [("status", 502)]})
    delays = []
    client = judge.JudgeClient(url, "m", retries=3, backoff=0.5, sleep=delays.append)
    with pytest.raises(judge.JudgeRequestError, match="after 4 attempts"):
        client.ask("resp-0")
    assert delays == [0.5, 1.0, 2.0] and len(srv.requests) == 4


def test_slow_reply_times_out_and_counts_as_failed(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {"resp-0": [("slow", 10.0, "99")], "resp-1": [("reply", "50")]})
    out = tmp_path / "s.json"
    start = time.monotonic()
    code, stdout, _ = _run_judge(capsys, "--responses", _write(tmp_path, _records(2)), "--url", url,
                                 "--model", "m", "--out", out, "--timeout", "0.1",
                                 "--retries", "1", "--backoff", "0.01")
    assert time.monotonic() - start < 5.0  # gave up long before the slow replies came
    assert code == 0
    scores = json.loads(out.read_text())["scores"]
    assert scores[0]["score"] is None and "within 0.1 s" in scores[0]["error"]
    assert scores[1]["score"] == 50
    assert sum("resp-0" in r["body"]["messages"][0]["content"] for r in srv.requests) == 2
    assert "failed: 1" in stdout


def test_unreachable_server_stops_at_once_with_one_clear_error(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {"resp-0": [("reply", "1")]})
    srv.shutdown()
    srv.server_close()  # nothing listens on that port any more
    out = tmp_path / "s.json"
    start = time.monotonic()
    code, stdout, stderr = _run_judge(capsys, "--responses", _write(tmp_path, _records(5)), "--url", url,
                                      "--model", "m", "--out", out, "--retries", "3", "--backoff", "5")
    assert time.monotonic() - start < 3.0  # no backoff: refused is not worth another try
    assert code == 1 and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach" in lines[0] and "refused" in lines[0].lower(), stderr
    assert not out.exists()


def test_scores_are_kept_as_they_come_and_a_rerun_continues(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {f"resp-{i}": [("reply", str(10 * i))] for i in range(4)})
    out = tmp_path / "s.json"
    partial = tmp_path / "s.json.partial.jsonl"
    # what an interrupted run leaves: two scores, the second line torn
    partial.write_text(json.dumps({"index": 0, "score": 77, "error": None}) + "\n" + '{"index": 1, "sc')
    code, stdout, _ = _run_judge(capsys, "--responses", _write(tmp_path, _records(4)), "--url", url,
                                 "--model", "m", "--out", out)
    assert code == 0 and "1 records already scored" in stdout
    saved = json.loads(out.read_text())
    assert [s["score"] for s in saved["scores"]] == [77, 10, 20, 30]
    assert len(srv.requests) == 3 and not partial.exists()


def test_an_unwritable_out_is_refused_before_any_request(judge_server, tmp_path, capsys):
    srv, url = judge_server("ollama", {"resp-0": [("reply", "1")]})
    (tmp_path / "afile").write_text("")
    code, _, stderr = _run_judge(capsys, "--responses", _write(tmp_path, _records(1)), "--url", url,
                                 "--model", "m", "--out", tmp_path / "afile" / "s.json")
    assert code == 2 and "is a file" in stderr and not srv.requests


def test_timeout_bounds_the_whole_request(judge_server):
    srv, url = judge_server("ollama", {"resp-0": [("trickle", 0.2, 40)]})  # 40 bytes, one every 0.2 s
    client = judge.JudgeClient(url, "m", timeout=1.0, retries=0)
    start = time.monotonic()
    with pytest.raises(judge.JudgeRequestError, match="within 1 s"):
        client.ask("resp-0")
    assert time.monotonic() - start < 3.0


def test_reply_that_is_not_json_counts_as_failed(judge_server):
    srv, url = judge_server("ollama", {"resp-0": [("raw", b"<html>oops</html>")]})
    result = judge.judge_records(_records(1), judge.JudgeClient(url, "m", retries=0), progress=False)
    assert result.scored == 0 and "not JSON" in result.scores[0]["error"]


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ({"instruction": "x"}, "non-empty JSON list"),
    ([], "non-empty JSON list"),
    ([{"instruction": "i", "output": "o"}], "no 'model_response' field"),
    ([{"instruction": "i", "output": "o", "model_response": 5}], "must be a string"),
])
def test_bad_responses_file_exits_1_with_one_message(tmp_path, capsys, content, message):
    path = tmp_path / "missing.json" if content is None else _write(tmp_path, content)
    code, stdout, stderr = _run_judge(capsys, "--responses", path, "--url", "http://127.0.0.1:9",
                                      "--model", "m")
    assert code == 1 and message in stderr
    assert stderr.startswith("error:") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not list(tmp_path.glob("*scores*"))  # nothing written


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    bad = _write(tmp_path, [{"instruction": "i", "output": "o"}])
    proc = subprocess.run([sys.executable, "-m", "tasks.evaluate", "judge", "--responses", str(bad),
                           "--url", "http://127.0.0.1:9", "--model", "m"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "model_response" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- MMLU


def _row(q, answer, topic, letters="abcd"):
    return {"question": q, **{f"answer_{x}": f"{q}-{x}" for x in letters},
            "correct_answer": answer, "topic": topic}


def _mmlu_file(tmp_path, answers_by_topic, strays=True):
    rows = []
    if strays:  # like the real file's two leftover header rows
        rows.append({"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
                     "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer",
                     "topic": "topic"})
    for topic, answers in answers_by_topic.items():
        rows += [_row(f"{topic} q{i}", a, topic) for i, a in enumerate(answers)]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


class FakeTokenizer:
    """Whitespace-aware word tokenizer: " A" is one token, ids handed out on first sight."""

    def __init__(self):
        self.vocab = {" A": 0, " B": 1, " C": 2, " D": 3}
        self.inverse = dict((i, t) for t, i in self.vocab.items())

    def encode(self, text):
        ids = []
        for tok in re.findall(r" ?[^\s]+|\s", text):
            if tok not in self.vocab:
                self.vocab[tok] = len(self.vocab)
                self.inverse[self.vocab[tok]] = tok
            ids.append(self.vocab[tok])
        return ids

    def decode(self, ids):
        return "".join(self.inverse[i] for i in ids)


def _prefers(letter, seen=None):
    def next_token_logits(ids):
        if seen is not None:
            seen.append(list(ids))
        logits = np.zeros(8, dtype=np.float32)
        logits["ABCD".index(letter)] = 5.0
        return logits
    return next_token_logits


ANSWERS = {"anatomy": "CABCDCCBAD", "high school physics": "ABCDCAC"}


def test_load_drops_stray_rows_and_blank_lines(tmp_path):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, ANSWERS))
    assert len(qs) == 17
    assert qs[0] == mmlu.Question("anatomy q0", ("anatomy q0-a", "anatomy q0-b", "anatomy q0-c",
                                                 "anatomy q0-d"), "C", "anatomy")
    assert {q.answer for q in qs} <= set("ABCD")


def test_load_reports_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row("q", "A", "t")) + "\n{oops\n")
    with pytest.raises(mmlu.MMLUDataError, match="line 2"):
        mmlu.load_mmlu(path)
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(mmlu.MMLUDataError, match="line 1"):
        mmlu.load_mmlu(path)


def test_real_mmlu_file_keeps_14042_of_14044_rows():
    from tasks.data.manifest import dataset_path
    path = dataset_path("mmlu")
    if not path.is_file():
        pytest.skip(f"MMLU not in the data cache ({path})")
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    qs = mmlu.load_mmlu(path)
    # MMLU's test set has 14,042 questions; the file adds two stray rows answered "answer".
    assert (len(rows), len(qs)) == (14_044, 14_042)
    assert len(mmlu.group_by_subject(qs)) == 57


def test_prompt_format_exact():
    q = mmlu.Question("What is 2+2?", ("3", "4", "5", "22"), "B", "elementary mathematics")
    shot = mmlu.Question("What is 1+1?", ("2", "1", "0", "11"), "A", "elementary mathematics")
    assert mmlu.build_prompt(q) == (
        "The following are multiple choice questions (with answers) about elementary "
        "mathematics.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert mmlu.build_prompt(q, [shot]) == (
        "The following are multiple choice questions (with answers) about elementary "
        "mathematics.\n\nWhat is 1+1?\nA. 2\nB. 1\nC. 0\nD. 11\nAnswer: A\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")


@pytest.mark.parametrize("shots", [0, 5])
def test_always_c_scores_the_fraction_of_c_answers(tmp_path, shots):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, ANSWERS))
    result = mmlu.evaluate_mmlu(qs, _prefers("C"), FakeTokenizer(), shots=shots, progress=False)
    for topic, answers in ANSWERS.items():
        scored = answers[shots:]
        assert result.per_subject[topic] == (scored.count("C"), len(scored))
    all_scored = "".join(a[shots:] for a in ANSWERS.values())
    assert result.accuracy == pytest.approx(all_scored.count("C") / len(all_scored))
    assert "overall" in result.table()


def test_five_shot_prompts_exclude_the_shots_from_scoring(tmp_path):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, {"anatomy": ANSWERS["anatomy"]}, strays=False))
    tok, seen = FakeTokenizer(), []
    result = mmlu.evaluate_mmlu(qs, _prefers("A", seen), tok, shots=5, progress=False)
    assert result.per_subject["anatomy"][1] == 5 and len(seen) == 5
    for i, ids in zip(range(5, 10), seen):
        prompt = tok.decode(ids)
        assert prompt == mmlu.build_prompt(qs[i], qs[:5])
        assert prompt.count("Answer:") == 6 and prompt.endswith(f"anatomy q{i}-d\nAnswer:")
        for j in range(5):  # each shot shown once, with its answer
            assert f"anatomy q{j}-d\nAnswer: {qs[j].answer}\n\n" in prompt


def test_limit_subjects_and_truncation(tmp_path):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, ANSWERS))
    tok, seen = FakeTokenizer(), []
    result = mmlu.evaluate_mmlu(qs, _prefers("A", seen), tok, limit=2, max_context=7,
                                subjects=["high_school_physics"], progress=False)
    assert list(result.per_subject) == ["high school physics"]
    assert result.per_subject["high school physics"] == (1, 2)  # answers "AB": A is right once
    full = tok.encode(mmlu.build_prompt(qs[10]))
    assert seen[0] == full[-7:] and len(full) > 7
    with pytest.raises(mmlu.MMLUDataError, match="unknown MMLU subject"):
        mmlu.evaluate_mmlu(qs, _prefers("A"), tok, subjects=["astrology"], progress=False)


def test_letter_ids_must_be_single_tokens():
    class CharTokenizer:
        def encode(self, text):
            return [ord(c) for c in text]
    with pytest.raises(ValueError, match="not one"):
        mmlu.letter_token_ids(CharTokenizer())


@pytest.mark.usefixtures("needs_tokenizer")
def test_gpt2_letter_tokens_are_single_tokens():
    from gpt2.tokenizer import get_tokenizer
    tok = get_tokenizer()
    ids = mmlu.letter_token_ids(tok)
    assert len(set(ids)) == 4
    assert [tok.decode([i]) for i in ids] == [" A", " B", " C", " D"]


class RiggedModel(mg.nn.Module):
    """Knows every prompt's answer and puts the highest last-position logit on its letter."""

    def __init__(self, answers_by_prompt, letter_ids, vocab=16):
        super().__init__()
        self.answers, self.letter_ids, self.vocab = answers_by_prompt, letter_ids, vocab
        self.grad_enabled_seen = []

    def forward(self, idx):
        assert isinstance(idx, mg.Tensor) and idx.dtype == np.int64 and idx.shape[0] == 1
        self.grad_enabled_seen.append(mg.is_grad_enabled())
        T = idx.shape[1]
        logits = np.random.default_rng(T).standard_normal((1, T, self.vocab)).astype(np.float32)
        answer = self.answers[tuple(idx.numpy()[0].tolist())]
        logits[0, -1, self.letter_ids["ABCD".index(answer)]] = 100.0
        return mg.tensor(logits)


def _rigged(qs, tok, shots):
    answers = {}
    for items in mmlu.group_by_subject(qs).values():
        for q in items[shots:]:
            answers[tuple(tok.encode(mmlu.build_prompt(q, items[:shots])))] = q.answer
    return RiggedModel(answers, mmlu.letter_token_ids(tok))


def test_rigged_model_scores_100_percent(tmp_path):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, ANSWERS))
    tok = FakeTokenizer()
    model = _rigged(qs, tok, shots=5)
    result = mmlu.evaluate_mmlu(qs, mmlu.model_next_token_logits(model), tok, shots=5,
                                progress=False)
    assert result.accuracy == 1.0 and result.total == 5 + 2
    assert model.grad_enabled_seen == [False] * 7 and not model.training


def test_mmlu_command_with_rigged_model(tmp_path, capsys, monkeypatch):
    data = _mmlu_file(tmp_path, ANSWERS)
    tok = FakeTokenizer()
    model = _rigged(mmlu.load_mmlu(data), tok, shots=0)
    monkeypatch.setattr(evaluate, "load_tokenizer", lambda: tok)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    monkeypatch.setattr(evaluate, "load_model", lambda args: model)
    out = tmp_path / "mmlu.json"
    code = evaluate.main(["mmlu", "--init", "124M", "--data", str(data), "--limit", "3",
                          "--out", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0 and "overall" in stdout and "100.00%" in stdout
    saved = json.loads(out.read_text())
    assert saved["accuracy"] == 1.0 and saved["total"] == 6 and saved["shots"] == 0
    assert saved["subjects"]["anatomy"] == {"correct": 3, "total": 3, "accuracy": 1.0}


def test_mmlu_answers_are_kept_as_they_come_and_a_rerun_continues(tmp_path, capsys, monkeypatch):
    data = _mmlu_file(tmp_path, ANSWERS)
    tok = FakeTokenizer()
    model = _rigged(mmlu.load_mmlu(data), tok, shots=0)
    monkeypatch.setattr(evaluate, "load_tokenizer", lambda: tok)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    monkeypatch.setattr(evaluate, "load_model", lambda args: model)
    out = tmp_path / "mmlu.json"
    partial = tmp_path / "mmlu.json.partial.jsonl"
    # an interrupted run's answers: the first anatomy question recorded as wrong, then a torn line
    partial.write_text(json.dumps({"subject": "anatomy", "index": 0, "correct": False}) + "\n" + '{"subj')
    code = evaluate.main(["mmlu", "--init", "124M", "--data", str(data), "--limit", "3",
                          "--out", str(out), "--no-progress"])
    assert code == 0 and "1 questions already answered" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["subjects"]["anatomy"] == {"correct": 2, "total": 3, "accuracy": 2 / 3}
    assert len(model.grad_enabled_seen) == 5 and not partial.exists()  # 6 questions, 1 kept


def test_mmlu_max_context_longer_than_the_model_is_refused(tmp_path, capsys, monkeypatch):
    data = _mmlu_file(tmp_path, ANSWERS)
    monkeypatch.setattr(evaluate, "load_tokenizer", FakeTokenizer)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    monkeypatch.setattr(evaluate, "load_model", lambda args: gpt2.GPT2(gpt2.GPT2Config(
        vocab_size=16, n_ctx=32, n_embd=8, n_layer=1, n_head=2)))
    assert evaluate.main(["mmlu", "--init", "124M", "--data", str(data), "--max-context", "5000"]) == 2
    err = capsys.readouterr().err
    assert "--max-context 5000 is longer than the model's context of 32" in err and "Traceback" not in err


def test_mmlu_command_failures_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "empty-cache"))
    assert evaluate.main(["mmlu", "--init", "124M"]) == 1  # MMLU not in the cache
    assert "mmlu.jsonl" in capsys.readouterr().err

    # a folder with no model in it: one clear line, not a traceback
    monkeypatch.setattr(evaluate, "load_tokenizer", FakeTokenizer)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    data = _mmlu_file(tmp_path, ANSWERS)
    assert evaluate.main(["mmlu", "--init", str(tmp_path), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "Traceback" not in err


@pytest.mark.usefixtures("needs_tokenizer")
def test_mmlu_command_on_a_tiny_gpt2_checkpoint(tmp_path, capsys):
    """The real pieces together: a run folder from tasks.runs.checkpoint, GPT-2's tokenizer, a model
    whose context (32) is shorter than the prompts, so they must be cut from the left."""
    checkpoint = pytest.importorskip("tasks.runs.checkpoint")
    from gpt2 import GPT2, GPT2Config
    from gpt2.tokenizer import get_tokenizer

    config = GPT2Config(n_ctx=32, n_embd=16, n_layer=1, n_head=2)
    model = GPT2(config)
    run = tmp_path / "run"
    checkpoint.save_checkpoint(run, 1, model)
    write_json(run / "run.json", {"model_config": config.to_dict()})
    data = _mmlu_file(tmp_path, ANSWERS)
    out = tmp_path / "mmlu.json"
    code = evaluate.main(["mmlu", "--init", str(run), "--data", str(data), "--limit", "2",
                          "--subjects", "anatomy", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err

    # The same choices worked out by hand from the model's logits.
    tok, qs = get_tokenizer(), mmlu.load_mmlu(data)
    letter_ids = mmlu.letter_token_ids(tok)
    correct = 0
    for q in qs[:2]:
        ids = tok.encode(mmlu.build_prompt(q))
        assert len(ids) > config.n_ctx
        with mg.no_grad():
            logits = model.eval()(mg.tensor(np.array([ids[-config.n_ctx:]]))).numpy()[0, -1]
        correct += "ABCD"[int(np.argmax(logits[letter_ids]))] == q.answer
    saved = json.loads(out.read_text())
    assert saved["subjects"] == {"anatomy": {"correct": correct, "total": 2,
                                             "accuracy": correct / 2}}
    assert saved["max_context"] == 32 and saved["init"] == str(run)


def test_mmlu_command_without_a_checkpoint_exits_2(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tasks.runs.checkpoint")
    monkeypatch.setattr(evaluate, "load_tokenizer", FakeTokenizer)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    data = _mmlu_file(tmp_path, ANSWERS)
    assert evaluate.main(["mmlu", "--init", str(tmp_path / "nothing"),
                          "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "nor an existing file or folder" in err and "Traceback" not in err


def test_classifier_like_output_is_a_clear_error(tmp_path):
    qs = mmlu.load_mmlu(_mmlu_file(tmp_path, ANSWERS))
    with pytest.raises(mmlu.MMLUDataError, match="language model"):
        mmlu.evaluate_mmlu(qs, lambda ids: np.zeros(2), FakeTokenizer(), progress=False)
