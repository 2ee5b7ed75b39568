"""gpt2/memory.py's arithmetic against what minigrad really allocates at small sizes.

tracemalloc counts NumPy's array allocations (NumPy reports them to it), so each figure of the
estimate is held against a measured one: the parameters exactly, the activations one
micro-batch's graph keeps after its forward, and the peak of a whole training step (model,
AdamW, forward, backward, update), of a classifier's step and of generation with a KV cache.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from gpt2 import GPT2, GPT2Config
from gpt2.memory import (MemoryEstimate, activation_bytes, inference_memory, kv_cache_bytes, size_text,
                         parameter_count, training_memory)
from minigrad.autograd import is_debug, set_debug
from minigrad.optim import AdamW

# (batch, context, width, layers, heads, vocab, dropout): each axis of the formula moved alone
SHAPES = [(2, 64, 64, 1, 4, 512, 0.0), (2, 64, 64, 2, 4, 512, 0.0), (2, 64, 128, 2, 4, 512, 0.0),
          (2, 128, 64, 2, 4, 512, 0.0), (2, 64, 64, 2, 8, 512, 0.0), (2, 64, 64, 2, 4, 2048, 0.0),
          (4, 64, 64, 2, 4, 512, 0.0), (2, 64, 64, 2, 4, 512, 0.1), (2, 128, 128, 3, 4, 2048, 0.1),
          (1, 32, 32, 1, 2, 50257, 0.0)]


@pytest.fixture(autouse=True)
def traced():
    """tracemalloc on, and the engine's debug checks (which keep extra arrays) off."""
    debug = is_debug()
    set_debug(False)
    tracemalloc.start()
    yield
    tracemalloc.stop()
    set_debug(debug)


def config_of(C, L, H, V, T, dropout=0.0, tie=True) -> GPT2Config:
    return GPT2Config(vocab_size=V, n_ctx=T, n_embd=C, n_layer=L, n_head=H, dropout=dropout,
                      tie_word_embeddings=tie)


def now() -> int:
    return tracemalloc.get_traced_memory()[0]


def peak_since_reset() -> int:
    return tracemalloc.get_traced_memory()[1]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_parameter_count_is_the_models(tie, qkv_bias):
    cfg = config_of(48, 3, 4, 300, 40, tie=tie).replace(qkv_bias=qkv_bias)
    assert parameter_count(cfg) == sum(p.size for p in GPT2(cfg).parameters())
    assert parameter_count(GPT2Config.preset("124M")) == 124_439_808


@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{s[0]}T{s[1]}C{s[2]}L{s[3]}H{s[4]}V{s[5]}d{s[6]}" for s in SHAPES])
def test_activations_are_what_the_graph_keeps(shape):
    B, T, C, L, H, V, p = shape
    model = GPT2(config_of(C, L, H, V, T, p))
    model.train()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    before = now()
    loss = F.cross_entropy(model(x), y)
    kept = now() - before
    estimate = activation_bytes(model.config, B, T)
    assert 0.95 * kept <= estimate <= 1.08 * kept, (kept, estimate)
    loss.backward()


def _training_step_peak(model, params, batch, loss_fn) -> int:
    """Peak bytes of a training step with AdamW, the second one (AdamW's moments exist from the
    first update on), counting everything: weights, gradients, moments, the step's own arrays."""
    held = sum(p.data.nbytes for p in model.parameters())  # the weights (they move into opt.flat)
    start = now()
    opt = AdamW(params, lr=1e-3)
    for step in range(2):
        if step == 1:
            tracemalloc.reset_peak()
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        del loss
    return peak_since_reset() - start + held


STEPS = [(*s, True) for s in SHAPES[1:]] + [(*SHAPES[-2], False), (*SHAPES[-1], False)]  # untied heads too


@pytest.mark.parametrize("shape", STEPS, ids=[f"B{s[0]}T{s[1]}C{s[2]}L{s[3]}H{s[4]}V{s[5]}d{s[6]}{'' if s[7] else 'untied'}"
                                              for s in STEPS])
def test_a_training_step_stays_within_the_estimate(shape):
    B, T, C, L, H, V, p, tie = shape
    model = GPT2(config_of(C, L, H, V, T, p, tie))
    model.train()
    rng = np.random.default_rng(1)
    batch = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    peak = _training_step_peak(model, model.parameters(), batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    estimate = training_memory(model.config, B, T, interpreter=False).total
    # an estimate that refuses a run must not be far above what it needs, nor below it
    assert 1.0 * peak <= estimate <= 1.3 * peak, (peak, estimate, estimate / peak)


def test_a_classifier_step_with_the_last_block_trained():
    from gpt2.classifier import GPT2Classifier
    B, T = 4, 64
    gpt = GPT2(config_of(64, 3, 4, 2048, T, 0.1))
    model = GPT2Classifier(gpt, 2)
    for prm in model.parameters():
        prm.requires_grad = False
    trained = [*gpt.h[-1].parameters(), *gpt.ln_f.parameters(), *model.head.parameters()]
    for prm in trained:
        prm.requires_grad = True
    model.train()
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 2048, (B, T)), rng.integers(0, 2, B)
    peak = _training_step_peak(model, trained, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    estimate = training_memory(model.config, B, T, trained_parameters=sum(q.size for q in trained),
                               layers_with_grad=1, vocab_logits=False, interpreter=False).total
    assert 1.0 * peak <= estimate <= 1.3 * peak, (peak, estimate, estimate / peak)


def test_kv_cache_bytes_are_the_caches():
    from gpt2.model import KVCache
    cfg = config_of(48, 3, 4, 300, 40)
    cache = KVCache(cfg, batch_size=5)
    assert kv_cache_bytes(cfg, 5) == sum(a.nbytes for a in cache.k + cache.v)


def test_generation_with_a_cache_stays_within_the_estimate():
    from gpt2.generate import generate
    B, T, V = 4, 128, 2048
    model = GPT2(config_of(64, 2, 4, V, T)).eval()
    prompt = np.random.default_rng(3).integers(0, V, (B, 96))
    tracemalloc.reset_peak()
    start = now() - sum(p.data.nbytes for p in model.parameters())
    generate(model, prompt, max_new_tokens=8)
    peak = peak_since_reset() - start
    estimate = inference_memory(model.config, B, 96, interpreter=False).total
    assert 1.0 * peak <= estimate <= 1.3 * peak, (peak, estimate, estimate / peak)


def test_the_largest_part_names_what_to_lower():
    cfg = GPT2Config.preset("124M")
    assert training_memory(cfg, 5000, 256).largest == "activations"
    assert training_memory(cfg.replace(n_embd=1_000_000, n_head=1), 1, 16).largest == "optimizer"
    assert inference_memory(cfg, 1_000_000_000, 16).largest == "kv_cache"
    # the main job: 162M parameters (untied head), B=2, T=256: measured 3.62 GB peak (issue 19)
    main = training_memory(cfg.replace(n_ctx=256, dropout=0.1, tie_word_embeddings=False), 2, 256)
    assert 3.3e9 < main.total < 4.3e9, main.describe()


def test_describe_and_add():
    a = MemoryEstimate(parameters=2 * 10 ** 9, activations=5 * 10 ** 6)
    assert (a + a).parameters == 4 * 10 ** 9
    assert a.describe() == "2 GB (parameters 2 GB, activations 5 MB)"
    assert size_text(123_456_789) == "0.123 GB"
    assert size_text(2 * 10 ** 16) == "20 PB" and size_text(3 * 10 ** 13) == "30 TB" and size_text(40_000_000) == "40 MB"
