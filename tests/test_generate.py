"""Generation: the KV cache against recomputation, the sampling filters, seeds, end-of-text,
left-padded batches, and the tasks.generate command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from gpt2.generate import generate, left_pad, position_ids_from_mask, stream
from gpt2.sampling import filter_logits
from minigrad import nn
from minigrad.tensor import Tensor

REPO = Path(__file__).resolve().parents[1]


def tiny_model(n_ctx: int = 32, vocab_size: int = 97, seed: int = 0, device: str = "cpu") -> GPT2:
    """A small random GPT-2 whose weights are scaled up: at GPT-2's init scale the tied head makes
    a random model repeat its last token forever, which would let a broken cache pass."""
    mg.manual_seed(seed)
    model = GPT2(GPT2Config(vocab_size=vocab_size, n_ctx=n_ctx, n_embd=32, n_layer=2, n_head=4))
    for p in model.parameters():
        if p.data.ndim == 2:
            p.data *= np.float32(16.0)
    return model.to(device)


def varied(tokens: np.ndarray) -> bool:
    return len(set(tokens.ravel().tolist())) > 3


class FixedLogits(nn.Module):
    """A stand-in model that returns the same next-token logits at every position."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = np.asarray(logits, dtype=np.float32)
        self.config = GPT2Config(vocab_size=len(self.logits), n_ctx=1024, n_embd=4, n_layer=1, n_head=1)

    def forward(self, idx, attn_mask=None, position_ids=None, cache=None):
        B, T = np.shape(idx)
        return Tensor._wrap(np.broadcast_to(self.logits, (B, T, len(self.logits))).copy())


class Scripted(nn.Module):
    """A stand-in model whose row r emits script[r][k] as its k-th new token (greedy)."""

    def __init__(self, script: list[list[int]], prompt_len: int, vocab_size: int = 10):
        super().__init__()
        self.script, self.prompt_len, self.V = script, prompt_len, vocab_size
        self.config = GPT2Config(vocab_size=vocab_size, n_ctx=1024, n_embd=4, n_layer=1, n_head=1)

    def forward(self, idx, attn_mask=None, position_ids=None, cache=None):
        B, T = np.shape(idx)
        k = T - self.prompt_len
        logits = np.zeros((B, T, self.V), dtype=np.float32)
        for r in range(B):
            logits[r, -1, self.script[r][k]] = 1.0
        return Tensor._wrap(logits)


# ---------------------------------------------------------------- KV cache == recomputation
def test_cache_matches_recompute_greedy(backend):
    model = tiny_model(device=backend)
    prompt = [[3, 14, 15, 92, 65]]
    cached = generate(model, prompt, 20, use_cache=True)
    full = generate(model, prompt, 20, use_cache=False)
    assert cached.shape == (1, 25)
    assert varied(full[:, 5:])
    np.testing.assert_array_equal(cached, full)


def test_cache_matches_recompute_sampling(backend):
    model = tiny_model(device=backend)
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    cached = generate(model, [[1, 2, 3]], 24, use_cache=True, **kw)
    full = generate(model, [[1, 2, 3]], 24, use_cache=False, **kw)
    assert varied(full[:, 3:])
    np.testing.assert_array_equal(cached, full)


def test_cache_matches_recompute_left_padded_batch(backend):
    model = tiny_model(device=backend)
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [42], [11, 12, 13]], pad_id=0)
    cached = generate(model, ids, 15, attn_mask=mask, use_cache=True)
    full = generate(model, ids, 15, attn_mask=mask, use_cache=False)
    np.testing.assert_array_equal(cached, full)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_matches_recompute_past_the_context(backend, temperature):
    # n_ctx 8 and 20 new tokens: the window slides 15 times; both paths must crop alike
    model = tiny_model(n_ctx=8, device=backend)
    kw = dict(temperature=temperature, seed=3)
    cached = generate(model, [[1, 5, 9]], 20, use_cache=True, **kw)
    full = generate(model, [[1, 5, 9]], 20, use_cache=False, **kw)
    assert cached.shape == (1, 23)
    assert varied(full[:, 3:])
    np.testing.assert_array_equal(cached, full)


def test_past_the_context_each_token_reads_the_last_n_ctx():
    # the reference both paths are held to: greedy on the last n_ctx tokens at positions 0..n_ctx-1
    model = tiny_model(n_ctx=8)
    out = generate(model, [[1, 5, 9]], 20)[0]
    for t in range(3, len(out)):
        window = out[max(0, t - 8):t][None]
        with mg.no_grad():
            expected = int(np.argmax(model(window).data[0, -1]))
        assert out[t] == expected, f"token {t}"


def test_prompt_longer_than_the_context():
    model = tiny_model(n_ctx=8)
    prompt = [list(range(1, 13))]   # 12 tokens > 8
    np.testing.assert_array_equal(generate(model, prompt, 6), generate(model, prompt, 6, use_cache=False))


def test_cache_feeds_one_token_per_step():
    model = tiny_model(n_ctx=16)
    seen = []
    inner = model.forward

    def spy(idx, *args, **kwargs):
        seen.append(np.shape(idx)[1])
        return inner(idx, *args, **kwargs)

    model.forward = spy
    generate(model, [[1, 2, 3, 4]], 5)
    assert seen == [4, 1, 1, 1, 1]
    seen.clear()
    generate(model, [[1, 2, 3, 4]], 5, use_cache=False)
    assert seen == [4, 5, 6, 7, 8]


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9, 10], [42], [11, 12, 13]]
    ids, mask = left_pad(prompts, pad_id=0)
    batch = generate(model, ids, 12, attn_mask=mask)
    for row, p in enumerate(prompts):
        alone = generate(model, [p], 12)
        np.testing.assert_array_equal(batch[row, ids.shape[1]:], alone[0, len(p):], err_msg=f"row {row}")
    assert varied(batch[:, ids.shape[1]:])


def test_left_pad_and_positions():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [9, 9, 4]])
    np.testing.assert_array_equal(mask, [[True, True, True], [False, False, True]])
    np.testing.assert_array_equal(position_ids_from_mask(mask), [[0, 1, 2], [0, 0, 0]])
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], pad_id=0)


# ---------------------------------------------------------------- sampling filters
def test_filter_logits_top_k_and_top_p():
    logits = np.log(np.array([[0.05, 0.5, 0.1, 0.3, 0.05]]))
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_k=2)), [[0, 1, 0, 1, 0]])
    # nucleus of 0.75: 0.5 alone is short of it, 0.5 + 0.3 reaches it
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.75)), [[0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.4)), [[0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.85)), [[0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_k=3, top_p=0.75)), [[0, 1, 0, 1, 0]])


def sample_many(model, n_rows: int = 100, steps: int = 50, **kw) -> np.ndarray:
    out = generate(model, np.zeros((n_rows, 1), dtype=np.int64), steps, temperature=1.0, use_cache=False, **kw)
    return out[:, 1:].ravel()


def test_top_k_samples_only_the_k_largest():
    logits = np.random.default_rng(0).normal(size=50) * 2
    samples = sample_many(FixedLogits(logits), top_k=5, seed=1)
    top5 = set(np.argsort(logits)[-5:].tolist())
    assert set(samples.tolist()) == top5            # only those, and every one of them
    # renormalised over the five: the frequencies follow softmax(logits[top5])
    p = np.exp(logits[sorted(top5)] - logits.max())
    p /= p.sum()
    freq = np.array([(samples == t).mean() for t in sorted(top5)])
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_top_p_samples_only_the_nucleus():
    probs = np.array([0.02, 0.4, 0.03, 0.25, 0.2, 0.1])
    samples = sample_many(FixedLogits(np.log(probs)), top_p=0.8, seed=2)
    assert set(samples.tolist()) == {1, 3, 4}       # 0.4 + 0.25 < 0.8 <= 0.4 + 0.25 + 0.2
    freq = np.array([(samples == t).mean() for t in (1, 3, 4)])
    np.testing.assert_allclose(freq, np.array([0.4, 0.25, 0.2]) / 0.85, atol=0.03)


def test_temperature_sharpens_and_flattens():
    model = FixedLogits(np.log(np.array([0.6, 0.3, 0.1])))
    x = np.zeros((200, 1), dtype=np.int64)
    share0 = {t: (generate(model, x, 20, temperature=t, seed=4, use_cache=False)[:, 1:] == 0).mean()
              for t in (0.3, 1.0, 5.0)}
    assert share0[0.3] > 0.85 and abs(share0[1.0] - 0.6) < 0.04 and share0[5.0] < 0.45


def test_greedy_is_argmax_and_ignores_seed():
    logits = np.random.default_rng(5).normal(size=30)
    out = generate(FixedLogits(logits), [[0]], 4, seed=1, use_cache=False)
    assert out.tolist() == [[0] + [int(np.argmax(logits))] * 4]


# ---------------------------------------------------------------- seeds, end-of-text, streaming
def test_same_seed_same_tokens():
    model = tiny_model()
    kw = dict(temperature=1.0, top_k=30)
    a = generate(model, [[1, 2, 3]], 15, seed=11, **kw)
    b = generate(model, [[1, 2, 3]], 15, seed=11, **kw)
    c = generate(model, [[1, 2, 3]], 15, seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # seed=None draws from minigrad's generator, so mg.manual_seed makes it repeatable
    mg.manual_seed(5)
    d = generate(model, [[1, 2, 3]], 15, **kw)
    mg.manual_seed(5)
    np.testing.assert_array_equal(d, generate(model, [[1, 2, 3]], 15, **kw))


def test_stops_at_eos_per_row():
    eos = 9
    model = Scripted([[1, 2, eos, 3, 4, 5], [4, 5, 6, 7, eos, 1]], prompt_len=1)
    steps = list(stream(model, [[0], [0]], 10, eos_id=eos, use_cache=False))
    assert [s.tolist() for s in steps] == [[1, 4], [2, 5], [eos, 6], [eos, 7], [eos, eos]]
    out = generate(model, [[0], [0]], 10, eos_id=eos, pad_id=0, use_cache=False)
    assert out.tolist() == [[0, 1, 2, eos, 0, 0], [0, 4, 5, 6, 7, eos]]
    # without eos_id, all 10 steps run
    model = Scripted([[1] * 10, [2] * 10], prompt_len=1)
    assert generate(model, [[0], [0]], 10, use_cache=False).shape == (2, 11)


def test_stream_yields_what_generate_returns():
    model = tiny_model()
    steps = list(stream(model, [[7, 8]], 6))
    assert all(s.shape == (1,) for s in steps)
    np.testing.assert_array_equal(np.concatenate(steps), generate(model, [7, 8], 6)[2:])


def test_eval_mode_and_no_grad_inside_only():
    model = tiny_model()
    model.train()
    during = []
    inner = model.forward

    def spy(*args, **kwargs):
        during.append((model.training, mg.is_grad_enabled()))
        return inner(*args, **kwargs)

    model.forward = spy
    gen = stream(model, [[1, 2]], 3)
    next(gen)
    assert model.training and mg.is_grad_enabled()   # nothing leaks out between steps
    list(gen)
    assert model.training
    assert during == [(False, False)] * 3


def test_bad_arguments():
    model = tiny_model()
    for kw in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            generate(model, [[1]], 2, **kw)
    with pytest.raises(ValueError, match="left-pad"):
        generate(model, [[1, 2], [3]], 2)
    with pytest.raises(ValueError, match="attn_mask"):
        generate(model, [[1, 2]], 2, attn_mask=[[True, True, True]])
    with pytest.raises(ValueError, match="pad on the left"):
        generate(model, [[1, 2]], 2, attn_mask=[[True, False]])
    with pytest.raises(ValueError):
        stream(model, [[1]], 2, top_k=-3)          # raised at the call, not at the first next()


# ---------------------------------------------------------------- the command line
def save_tiny_run(run_dir: Path) -> None:
    """A tasks.pretrain-style run folder holding a tiny model with GPT-2's vocabulary (and, as
    tasks.pretrain's default makes it, an untied head)."""
    checkpoint = pytest.importorskip("tasks.runs.checkpoint")
    mg.manual_seed(0)
    model = GPT2(GPT2Config(n_ctx=32, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False), embedding_std=1.0)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"task": "pretrain", "model_config": model.config.to_dict()}))
    checkpoint.save_checkpoint(run_dir, 1, model)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / "data" / "tiktoken_cache"))
    return subprocess.run([sys.executable, "-m", "tasks.generate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.usefixtures("needs_tokenizer")
def test_cli_streams_text_from_a_run_folder(tmp_path):
    save_tiny_run(tmp_path / "run")
    png = tmp_path / "attn.png"
    r = run_cli("--init", str(tmp_path / "run"), "--prompt", "Every effort moves you",
                "--max-new-tokens", "8", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.95",
                "--attention-map", str(png), "--layer", "0", "--head", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Every effort moves you") and len(r.stdout) > len("Every effort moves you\n")
    assert "Traceback" not in r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.usefixtures("needs_tokenizer")
def test_cli_reads_a_saved_weights_folder(tmp_path):
    weights = pytest.importorskip("gpt2.weights")
    if not hasattr(weights, "save_pretrained"):
        pytest.skip("gpt2.weights has no save_pretrained")
    mg.manual_seed(0)
    weights.save_pretrained(GPT2(GPT2Config(n_ctx=32, n_embd=16, n_layer=1, n_head=2)), tmp_path / "tiny")
    r = run_cli("--init", str(tmp_path / "tiny"), "--prompt", "Hello", "--max-new-tokens", "5",
                "--no-cache")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello") and len(r.stdout) > len("Hello\n")


@pytest.mark.usefixtures("needs_tokenizer")
@pytest.mark.parametrize("extra", [[], ["--no-cache"]])
def test_cli_matches_the_library(tmp_path, capsys, monkeypatch, extra):
    # in-process, with the loader replaced: the printed text is the greedy continuation
    from gpt2.tokenizer import get_tokenizer
    import gpt2
    from tasks import generate as cli_generate

    mg.manual_seed(0)
    model = GPT2(GPT2Config(n_ctx=64, n_embd=16, n_layer=1, n_head=2))
    monkeypatch.setattr(gpt2, "from_pretrained", lambda name, device="cpu", **kw: model)
    code = cli_generate.main(["--init", "124M", "--prompt", "Hello there", "--max-new-tokens", "6",
                              "--ignore-eos", *extra])
    assert code == 0
    tok = get_tokenizer()
    ids = tok.encode("Hello there")
    expected = tok.decode(generate(model, [ids], 6)[0].tolist())
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("args", [
    ["--temperature", "-1"],
    ["--top-p", "1.5"],
    ["--top-k", "0"],
    ["--backend", "tpu"],
    ["--init", "/no/such/weights.safetensors"],
    ["--attention-map", "out.txt"],
])
def test_cli_bad_arguments_exit_2(args):
    r = run_cli(*args, "--max-new-tokens", "1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip()


@pytest.mark.usefixtures("needs_tokenizer")
def test_cli_bad_layer_exits_2(tmp_path):
    save_tiny_run(tmp_path / "run")
    r = run_cli("--init", str(tmp_path / "run"), "--attention-map", str(tmp_path / "a.png"),
                "--layer", "3")
    assert r.returncode == 2 and "layers 0..0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a.png").exists()
