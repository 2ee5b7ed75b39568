"""lm-evaluation-harness against tasks.serve, as a user runs it: `lm_eval` in a subprocess, offline,
scoring a tiny model through the server with the two tasks in tests/lm_eval_tasks/.

Four ways lm-eval talks to an OpenAI-compatible server, each checked against what the project
computes itself from the same weights:
- local-completions, default tokenizer mode: no tokenizer on the client; lm-eval finds the
  server's (/tokenizer_info, /tokenize, /detokenize) and sends token-id prompts one at a time;
- the same with --batch_size 4: lists of token-id prompts in one request;
- tokenized_requests=False: the prompts sent as text (a list of strings), batched too;
- local-chat-completions (generation only: chat has no prompt log-probabilities).
Multiple choice: every log-likelihood lm-eval received is within 1e-5 of a direct forward pass,
and its accuracy is the one those direct sums give. Generation: the greedy text cut at the first
stop string, as the library's own generate gives it.
Needs the [evalharness] extra (lm-eval[api]); skips without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import sharp_tiny_gpt2
from serve_helpers import REPO, Served, env

pytestmark = pytest.mark.usefixtures("numpy_pass_only")  # conftest.py: skipped by CI's stand-in pass

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -e '.[evalharness]'")
pytest.importorskip("aiohttp", reason="lm-eval's API models need its [api] extra: pip install -e '.[evalharness]'")

TASKS = REPO / "tests" / "lm_eval_tasks"
MODEL = "tiny"
MAX_GEN = 12                                 # tiny_gen.yaml's max_gen_toks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, needs_tokenizer):
    """(model, tokenizer, server): the sharp tiny GPT-2 and tasks.serve serving it."""
    model, folder = sharp_tiny_gpt2(tmp_path_factory.mktemp("lm-eval") / "weights", n_ctx=1024)
    server = Served("--init", str(folder), "--model-name", MODEL, "--max-batch", "4")
    yield model, needs_tokenizer, server
    server.close()


def run_lm_eval(server, tmp_path, model_type: str, tasks: str, *extra: str, **model_args) -> dict:
    """Run lm_eval; {task: [logged samples]} of its --log_samples output."""
    path = "/v1/chat/completions" if "chat" in model_type else "/v1/completions"
    args = ",".join(f"{k}={v}" for k, v in {"model": MODEL, "base_url": server.url + path,
                                             "max_retries": 1, **model_args}.items())
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", model_type, "--model_args", args, "--tasks", tasks,
           "--include_path", str(TASKS.relative_to(REPO)), "--output_path", str(out), "--log_samples", *extra]
    # offline as a user without a Hugging Face cache: a tokenizer lm-eval fetched would fail here
    e = {**env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
         "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": ""}
    r = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"lm_eval failed:\n{r.stderr[-4000:]}\nserver:\n{server.stderr()[-2000:]}"
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in f.read_text().splitlines()]
    assert samples, f"lm_eval wrote no samples: {r.stdout[-2000:]}"
    (results,) = out.rglob("results_*.json")
    samples["results"] = json.loads(results.read_text())["results"]
    return samples


# ---------------------------------------------------------------- what the project computes itself
def direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Sum of the continuation tokens' log-probabilities in one forward pass of context +
    continuation (tokenized together, as lm-eval does), float32 log-softmax as the server's."""
    import minigrad as mg
    import minigrad.functional as F
    whole = tok.encode(context + continuation)
    n_ctx = len(tok.encode(context))
    with mg.no_grad():
        logp = F.log_softmax(model(np.asarray([whole])), axis=-1).data[0]      # (T, V)
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def direct_generation(model, tok, prompt: str, stops: list[str]) -> str:
    """Greedy tokens until end-of-text or MAX_GEN, the text cut before the first stop string
    found as the tokens come (as a server streams it)."""
    from gpt2.generate import generate
    ids = generate(model, tok.encode(prompt), MAX_GEN, eos_id=tok.eot_id).tolist()[len(tok.encode(prompt)):]
    new = []
    for t in ids:
        if t == tok.eot_id:
            break
        new.append(t)
        text = tok.decode(new)
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            return text[:min(hits)]
    return tok.decode(new)


def check_multiple_choice(model, tok, samples: list[dict], results: dict) -> None:
    """Every log-likelihood lm-eval received is a direct forward pass's (1e-5), and its accuracy
    (per question and over the task) is the one the direct sums give."""
    correct = []
    for s in samples:
        got = [float(r[0][0]) for r in s["resps"]]
        want = [direct_loglikelihood(model, tok, a["arg_0"], a["arg_1"]) for a in s["arguments"].values()]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        correct.append(float(np.argmax(want) == s["doc"]["answer"]))
        assert s["acc"] == correct[-1]
    assert len(correct) == 8
    assert results["acc,none"] == pytest.approx(np.mean(correct), abs=1e-12)


def check_generation(model, tok, samples: list[dict], stops_kept: int | None = None) -> None:
    """Each answer is the direct greedy text cut at the stops; some were cut, and not to nothing
    (the test could not tell a server that ignores stops, or returns nothing, otherwise)."""
    cut = 0
    for s in samples:
        a = s["arguments"]["gen_args_0"]
        stops = a["arg_1"]["until"][:stops_kept]
        if stops_kept is None:
            stops = stops + ["<|endoftext|>"]
        prompt = a["arg_0"]
        if isinstance(prompt, list):        # chat: lm-eval's JsonChatStr, the messages as JSON
            messages = json.loads(prompt[0])
            assert [m["role"] for m in messages] == ["user"]
            prompt = messages[0]["content"]
        want = direct_generation(model, tok, prompt, stops)
        assert s["resps"][0][0] == want
        cut += want != direct_generation(model, tok, prompt, [])
    assert len(samples) == 8 and cut >= 3 and sum(bool(s["resps"][0][0]) for s in samples) >= 3


# ---------------------------------------------------------------- the four ways in
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "token-ids-batched", "text-prompts-batched"])
def test_local_completions(tiny, tmp_path, mode):
    model, tok, server = tiny
    extra, model_args = {"default": ((), {}),
                         "token-ids-batched": (("--batch_size", "4"), {}),
                         "text-prompts-batched": (("--batch_size", "3"), {"tokenized_requests": False}),
                         }[mode]
    samples = run_lm_eval(server, tmp_path, "local-completions", "minigrad_tiny_mc,minigrad_tiny_gen",
                          *extra, **model_args)
    check_multiple_choice(model, tok, samples["minigrad_tiny_mc"], samples["results"]["minigrad_tiny_mc"])
    check_generation(model, tok, samples["minigrad_tiny_gen"])


@pytest.mark.slow
def test_local_chat_completions(tiny, tmp_path):
    model, tok, server = tiny
    samples = run_lm_eval(server, tmp_path, "local-chat-completions", "minigrad_tiny_gen",
                          "--apply_chat_template")
    check_generation(model, tok, samples["minigrad_tiny_gen"], stops_kept=4)   # lm-eval sends 4
