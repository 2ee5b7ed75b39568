"""gpt2.model: size, names, init, input checks, attention maps, KV cache, and parity with transformers.

The parity tests build a random GPT-2 in transformers, save it as a Hugging Face checkpoint, load
it with gpt2.weights.from_pretrained, and compare logits, loss, gradients and greedy tokens. They
skip when torch or transformers is not installed.
"""
import importlib.util
import math
import re

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from gpt2.hf_format import expected_shapes
from gpt2.weights import from_pretrained

HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="parity with Hugging Face needs torch and transformers "
                                                   "(pip install -e '.[parity]')")

TINY = GPT2Config(vocab_size=97, n_ctx=16, n_embd=32, n_layer=2, n_head=4)


def _shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# ---------------------------------------------------------------- size and names
def test_124m_parameter_count():
    model = GPT2(GPT2Config.preset("124M"), init=False)  # the count does not depend on the init
    assert model.num_parameters() == 124_439_808


def test_expected_shapes_match_the_model():
    config = GPT2Config(vocab_size=50, n_ctx=8, n_embd=12, n_layer=3, n_head=3)
    assert expected_shapes(config) == _shapes(GPT2(config))
    no_bias = config.replace(qkv_bias=False)
    assert expected_shapes(no_bias) == _shapes(GPT2(no_bias))
    assert "h.0.attn.c_attn.bias" not in expected_shapes(no_bias)


@needs_hf
@pytest.mark.parametrize("size", ["124M", "355M"])
def test_names_and_shapes_equal_hf_gpt2model(size):
    import torch
    import transformers

    preset = GPT2Config.preset(size)
    hf_config = transformers.GPT2Config(n_layer=preset.n_layer, n_head=preset.n_head, n_embd=preset.n_embd,
                                        n_positions=preset.n_ctx, vocab_size=preset.vocab_size)
    with torch.device("meta"):  # shapes only: no memory, no init
        hf = transformers.GPT2Model(hf_config)
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()
              if not re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", k)}
    ours = _shapes(GPT2(preset, init=False))
    assert list(ours) == list(theirs)  # same order too, so state dicts line up one to one
    assert ours == theirs


# ---------------------------------------------------------------- init
def test_init_statistics():
    config = GPT2Config(vocab_size=4000, n_ctx=256, n_embd=256, n_layer=4, n_head=4)
    model = GPT2(config)
    params = dict(model.named_parameters())
    resid = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in params.items():
        a = p.data
        if re.search(r"ln_\d\.weight$|ln_f\.weight$", name):
            assert np.all(a == 1.0), name
        elif name.endswith(".bias"):
            assert np.all(a == 0.0), name
        else:
            std = resid if name.endswith("c_proj.weight") else 0.02
            assert abs(a.mean()) < 0.05 * std, name
            assert a.std() == pytest.approx(std, rel=0.03), name
    # the two residual projections really are the smaller ones
    assert params["h.0.mlp.c_proj.weight"].data.std() < 0.6 * params["h.0.mlp.c_fc.weight"].data.std()


def test_untied_head_and_embedding_std():
    config = GPT2Config(vocab_size=4000, n_ctx=256, n_embd=256, n_layer=2, n_head=4, tie_word_embeddings=False)
    model = GPT2(config, embedding_std=1.0)
    params = dict(model.named_parameters())
    assert params["lm_head.weight"].shape == (4000, 256)                  # HF's (vocab, C) layout
    assert params["lm_head.weight"].data.std() == pytest.approx(0.02, rel=0.03)
    assert params["wte.weight"].data.std() == pytest.approx(1.0, rel=0.03)
    assert params["wpe.weight"].data.std() == pytest.approx(1.0, rel=0.03)
    assert params["h.0.mlp.c_fc.weight"].data.std() == pytest.approx(0.02, rel=0.03)
    assert model.num_parameters() == GPT2(config.replace(tie_word_embeddings=True)).num_parameters() + 4000 * 256
    assert expected_shapes(config) == _shapes(model)
    # the head, not wte, makes the logits
    idx = np.array([[1, 2, 3]])
    with mg.no_grad():
        h = model.hidden_states(idx).data
        np.testing.assert_allclose(model(idx).data, h @ model.lm_head.weight.data.T, rtol=1e-5, atol=1e-5)


def test_init_false_keeps_the_layers_own_init():
    config = GPT2Config(vocab_size=500, n_ctx=64, n_embd=64, n_layer=2, n_head=2)
    raw = GPT2(config, init=False)
    # nn.Linear's U(-1/sqrt(in), 1/sqrt(in)) and Embedding's N(0, 1): not GPT-2's N(0, 0.02)
    assert raw.wte.weight.data.std() > 0.5
    assert GPT2(config).wte.weight.data.std() < 0.03


# ---------------------------------------------------------------- input checks
def test_too_long_sequence_is_an_error():
    model = GPT2(TINY).eval()
    with pytest.raises(ValueError, match="longer than the context of 16"):
        model(np.zeros((1, 17), dtype=np.int64))
    cache = model.new_cache(1)
    model(np.zeros((1, 10), dtype=np.int64), cache=cache)
    with pytest.raises(ValueError, match="17 positions"):
        model(np.zeros((1, 7), dtype=np.int64), cache=cache)
    model(np.zeros((1, 16), dtype=np.int64))  # exactly the context is fine


@pytest.mark.parametrize("bad", [-1, 97, 10_000])
def test_out_of_range_token_ids_are_an_error(bad):
    model = GPT2(TINY).eval()
    idx = np.array([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        model(idx)


# ---------------------------------------------------------------- attention maps
def test_attention_maps_are_causal_distributions():
    model = GPT2(TINY).eval()
    idx = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 9))
    maps = model.attention_maps(idx)
    assert len(maps) == TINY.n_layer
    T = idx.shape[1]
    for w in maps:
        assert isinstance(w, np.ndarray) and w.shape == (2, TINY.n_head, T, T)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert np.all(w[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0.0)
        assert np.all(w[..., 0, 0] == pytest.approx(1.0))  # the first token can only see itself
        assert np.all(w[..., T - 1, :] > 0)                  # the last sees every position
    # asked for by an argument, not recorded on the modules: nothing is left behind on them
    assert not any(hasattr(b.attn, "last_weights") or hasattr(b.attn, "record_weights") for b in model.h)


def test_attention_maps_match_the_forward_pass():
    """Row i of layer 0's map, applied to layer 0's values, gives what attention computed."""
    model = GPT2(TINY).eval()
    idx = np.random.default_rng(1).integers(0, TINY.vocab_size, (1, 6))
    w = model.attention_maps(idx)[0]                                       # (1, H, T, T)
    with mg.no_grad():
        x = model.wte(idx) + model.wpe(np.arange(6))
        qkv = model.h[0].attn.c_attn(model.h[0].ln_1(x)).data              # (1, T, 3C)
    C, H = TINY.n_embd, TINY.n_head
    v = qkv[..., 2 * C:].reshape(1, 6, H, C // H).transpose(0, 2, 1, 3)    # (1, H, T, D)
    q = qkv[..., :C].reshape(1, 6, H, C // H).transpose(0, 2, 1, 3)
    k = qkv[..., C:2 * C].reshape(1, 6, H, C // H).transpose(0, 2, 1, 3)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(C // H)
    s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(w, ref, atol=1e-6)
    assert (w @ v).shape == v.shape


# ---------------------------------------------------------------- KV cache and dropout
def test_kv_cache_matches_full_forward():
    model = GPT2(TINY).eval()
    idx = np.random.default_rng(2).integers(0, TINY.vocab_size, (2, 12))
    with mg.no_grad():
        full = model(idx).data
        cache = model.new_cache(2)
        steps = [model(idx[:, :5], cache=cache).data]
        for t in range(5, 12):
            steps.append(model(idx[:, t:t + 1], cache=cache).data)
    assert cache.pos == 12
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_dropout_is_off_in_eval_mode():
    model = GPT2(TINY.replace(dropout=0.5))
    reference = GPT2(TINY)
    reference.load_state_dict(model.state_dict())
    idx = np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 10))
    with mg.no_grad():
        model.train()
        a, b = model(idx).data, model(idx).data
        assert not np.allclose(a, b)  # dropout is really on in training mode
        model.eval()
        c, d = model(idx).data, model(idx).data
        np.testing.assert_array_equal(c, d)
        np.testing.assert_allclose(c, reference.eval()(idx).data, atol=1e-6)


# ---------------------------------------------------------------- parity with transformers
def _hf_tiny(seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_positions=128,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(the transformers model, ours loaded from its save_pretrained folder)."""
    if not HAVE_HF:
        pytest.skip("needs torch and transformers")
    hf = _hf_tiny(seed=1234)
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf.save_pretrained(folder, safe_serialization=True)
    return hf, from_pretrained(folder)


@pytest.fixture
def tokens():
    return np.random.default_rng(4).integers(0, 50257, (2, 24))


@needs_hf
def test_parity_config_inferred_from_the_folder(tiny_pair):
    _, ours = tiny_pair
    assert ours.config == GPT2Config(vocab_size=50257, n_ctx=128, n_embd=64, n_layer=2, n_head=4)
    assert not ours.training


@needs_hf
def test_parity_logits(tiny_pair, tokens):
    import torch

    hf, ours = tiny_pair
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    with mg.no_grad():
        got = ours(tokens).data
    assert np.abs(got - ref).max() <= 1e-5


@needs_hf
def test_parity_loss_and_gradients(tiny_pair, tokens):
    import torch

    hf, ours = tiny_pair
    hf.zero_grad()
    ours.zero_grad()
    # transformers shifts labels inside (position t predicts token t+1); we pass the shifted
    # targets ourselves, and ignore_index drops the last position that has no next token.
    out = hf(torch.tensor(tokens), labels=torch.tensor(tokens))
    out.loss.backward()
    targets = np.concatenate([tokens[:, 1:], np.full((2, 1), -100)], axis=1)
    _, loss = ours(tokens, targets)
    loss.backward()
    assert abs(loss.item() - out.loss.item()) <= 1e-6 * abs(out.loss.item())

    # a manual cross-entropy in torch agrees too (no reliance on transformers' own loss)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).double()
    manual = torch.nn.functional.cross_entropy(logits, torch.tensor(tokens[:, 1:]).reshape(-1))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)

    hf_grads = {name.removeprefix("transformer."): p.grad.numpy() for name, p in hf.named_parameters()}
    # lm_head shares its Parameter with wte, so its gradient is already inside wte's
    assert "lm_head.weight" not in hf_grads
    ours_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert set(ours_grads) == set(hf_grads)
    for name, g in ours_grads.items():
        ref = hf_grads[name]
        rel = np.linalg.norm(g - ref) / np.linalg.norm(ref)
        assert rel <= 1e-4, f"{name}: relative gradient error {rel:.2e}"


@needs_hf
def test_parity_untied_head_logits_and_gradients(tmp_path, tokens):
    """tie_word_embeddings=False in transformers: lm_head.weight is a parameter of its own."""
    import torch
    import transformers

    torch.manual_seed(7)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(tmp_path)
    assert not ours.config.tie_word_embeddings
    out = hf(torch.tensor(tokens), labels=torch.tensor(tokens))
    out.loss.backward()
    targets = np.concatenate([tokens[:, 1:], np.full((2, 1), -100)], axis=1)
    logits, loss = ours(tokens, targets)
    loss.backward()
    assert np.abs(logits.data - out.logits.detach().numpy()).max() <= 1e-5
    assert abs(loss.item() - out.loss.item()) <= 1e-6 * abs(out.loss.item())
    hf_grads = {name.removeprefix("transformer."): p.grad.numpy() for name, p in hf.named_parameters()}
    ours_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert set(ours_grads) == set(hf_grads) and "lm_head.weight" in ours_grads
    for name in ("lm_head.weight", "wte.weight", "h.0.attn.c_attn.weight"):
        ref = hf_grads[name]
        assert np.linalg.norm(ours_grads[name] - ref) / np.linalg.norm(ref) <= 1e-4, name


@needs_hf
def test_parity_greedy_generation(tiny_pair):
    import torch

    hf, ours = tiny_pair
    prompt = np.array([[464, 3290, 318, 257]])
    with torch.no_grad():
        ref = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                          do_sample=False, max_new_tokens=30, pad_token_id=50256)[0, prompt.shape[1]:].tolist()
    seq = prompt
    with mg.no_grad():
        for _ in range(30):  # greedy with full recomputation: the simplest reference there is
            nxt = int(ours(seq).data[0, -1].argmax())
            seq = np.concatenate([seq, [[nxt]]], axis=1)
    assert seq[0, prompt.shape[1]:].tolist() == ref


@needs_hf
@pytest.mark.slow
def test_parity_124m_architecture_logits(tmp_path):
    """The full 124M shape (random weights): logits within 1e-5 (measured: 3e-6)."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0,
                                                              attn_pdrop=0.0)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(tmp_path)
    assert ours.config == GPT2Config.preset("124M")
    idx = np.random.default_rng(5).integers(0, 50257, (1, 16))
    with torch.no_grad():
        ref = hf(torch.tensor(idx)).logits.numpy()
    del hf
    with mg.no_grad():
        got = ours(idx).data
    err = np.abs(got - ref).max()
    assert err <= 1e-5, f"max |delta| {err:.2e}, max |logit| {np.abs(ref).max():.2f}"
