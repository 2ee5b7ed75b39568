"""gpt2.weights and gpt2.hf_format: finding, checking, loading and saving GPT-2 checkpoints."""
import functools
import importlib.util
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from safetensors.numpy import save_file

import gpt2
import minigrad as mg
from gpt2 import GPT2, GPT2Config, hf_format, weights
from gpt2.config import PRESETS
from gpt2.hf_format import HFCheckpointError
from gpt2.weights import from_pretrained, save_pretrained
from files import hub
from minigrad import nn

HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
TINY = GPT2Config(vocab_size=97, n_ctx=16, n_embd=32, n_layer=2, n_head=4)
# A stand-in for an official size: the real 124M is too big for unit tests.
TINY_PRESET = dict(n_layer=2, n_head=4, n_embd=32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, offline."""
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    return tmp_path / "cache"


def _state(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def _logits(model, idx):
    with mg.no_grad():
        return model(idx).data


IDX = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 10))


# ---------------------------------------------------------------- official names, offline
@pytest.mark.parametrize("name, hf_name", [("124M", "gpt2"), ("gpt2", "gpt2"), ("1558M", "gpt2-xl"),
                                           ("gpt2-medium", "gpt2-medium")])
def test_offline_missing_weights_name_url_and_path(cache, name, hf_name):
    url = f"https://huggingface.co/openai-community/{hf_name}/resolve/main/model.safetensors"
    path = cache / "weights" / hf_name / "model.safetensors"
    with pytest.raises(hub.MissingFileError) as info:
        gpt2.from_pretrained(name)
    message = str(info.value)
    assert url in message and str(path) in message
    assert info.value.url == url and info.value.path == path
    assert not (cache / "weights").exists()  # nothing half-made left behind


def test_unknown_name_is_a_clear_error(cache):
    with pytest.raises(FileNotFoundError, match="neither a GPT-2 size .*124M.*gpt2-xl"):
        from_pretrained("gpt3")


def _fake_official(cache, monkeypatch, hf_name="gpt2", key="124M"):
    """Shrink preset `key` and put a checkpoint of that shape where the download would go."""
    monkeypatch.setitem(PRESETS, key, TINY_PRESET)
    model = GPT2(GPT2Config.preset(key))
    save_pretrained(model, cache / "weights" / hf_name)
    return model


@pytest.mark.parametrize("name", ["124M", "gpt2"])
def test_named_weights_load_from_the_cache(cache, monkeypatch, name):
    original = _fake_official(cache, monkeypatch)
    model = from_pretrained(name)
    _assert_same_weights(model, original)
    assert model.config == GPT2Config.preset("124M") and not model.training
    tuned = from_pretrained(name, dropout=0.1)  # overrides that keep the shapes are fine
    assert tuned.config.dropout == 0.1


def test_named_weights_with_the_wrong_header_are_refused(cache, monkeypatch):
    monkeypatch.setitem(PRESETS, "124M", TINY_PRESET)
    other = GPT2(GPT2Config.preset("124M", n_ctx=512))  # wpe of the wrong length
    path = save_pretrained(other, cache / "weights" / "gpt2") / "model.safetensors"
    with pytest.raises(nn.StateDictError) as info:
        from_pretrained("124M")
    message = str(info.value)
    assert str(path) in message and "delete the file" in message
    assert "wpe.weight: checkpoint (512, 32) vs model (1024, 32)" in message


def test_named_weights_with_a_shape_changing_override(cache, monkeypatch):
    _fake_official(cache, monkeypatch)
    with pytest.raises(nn.StateDictError, match=r"wpe\.weight: checkpoint \(1024, 32\) vs model \(256, 32\)"):
        from_pretrained("124M", n_ctx=256)


def test_known_size_is_checked(cache, monkeypatch):
    _fake_official(cache, monkeypatch)
    monkeypatch.setitem(weights.KNOWN_FILES, "gpt2", {"sha256": None, "size": 123})
    with pytest.raises(hub.ChecksumError, match="123 are expected"):
        from_pretrained("124M")


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_named_weights_are_downloaded_into_the_cache(tmp_path, monkeypatch, http_server):
    root, base = http_server
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIGRAD_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "HF_URL", base + "/{hf_name}/model.safetensors")
    monkeypatch.setitem(PRESETS, "355M", TINY_PRESET)
    original = GPT2(GPT2Config.preset("355M"))
    save_pretrained(original, root / "gpt2-medium")
    model = from_pretrained("355M", progress=False)
    _assert_same_weights(model, original)
    assert (tmp_path / "cache" / "weights" / "gpt2-medium" / "model.safetensors").is_file()
    (root / "gpt2-medium" / "model.safetensors").unlink()  # the second load needs no server
    _assert_same_weights(from_pretrained("gpt2-medium"), original)


# ---------------------------------------------------------------- local files and folders
def test_save_pretrained_round_trip(tmp_path):
    model = GPT2(TINY)
    folder = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")} == \
        dict(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=97)
    assert config["model_type"] == "gpt2" and config["layer_norm_epsilon"] == 1e-5
    loaded = from_pretrained(folder)
    assert loaded.config == TINY and not loaded.training
    _assert_same_weights(loaded, model)
    np.testing.assert_array_equal(_logits(loaded, IDX), _logits(model.eval(), IDX))


def test_loading_reads_one_tensor_at_a_time(tmp_path):
    """The big models must not be held twice: loading costs about one tensor, not a whole copy."""
    import tracemalloc

    config = GPT2Config(vocab_size=2000, n_ctx=64, n_embd=64, n_layer=8, n_head=4)
    folder = save_pretrained(GPT2(config), tmp_path / "ckpt")
    model = GPT2(config, init=False)
    ckpt = hf_format.HFCheckpoint(folder / "model.safetensors")
    total = sum(p.data.nbytes for p in model.parameters())
    biggest = max(p.data.nbytes for p in model.parameters())
    tracemalloc.start()
    try:
        hf_format.load_weights(model, ckpt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert biggest < total / 3
    assert peak < biggest + total / 10, f"peak {peak} bytes while loading {total} bytes of weights"


def test_load_onto_a_device(tmp_path, backend):
    model = GPT2(TINY).eval()
    loaded = from_pretrained(save_pretrained(model, tmp_path / "ckpt"), device=backend)
    assert loaded.device == backend
    got = mg.backend.to_device(_logits(loaded, IDX), "cpu")
    np.testing.assert_allclose(got, _logits(model, IDX), atol=1e-5)


def test_save_pretrained_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import safetensors.numpy

    folder = save_pretrained(GPT2(TINY), tmp_path / "ckpt")
    before = (folder / "model.safetensors").read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(GPT2(TINY), folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_load_from_a_file_needs_n_head_unless_a_preset_tells(tmp_path, monkeypatch):
    model = GPT2(TINY)
    file = save_pretrained(model, tmp_path / "ckpt") / "model.safetensors"
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(HFCheckpointError, match=r"n_head=\.\.\."):
        from_pretrained(file)
    loaded = from_pretrained(str(file), n_head=4)
    assert loaded.config == TINY
    _assert_same_weights(loaded, model)
    # a folder without config.json works the same
    assert from_pretrained(tmp_path / "ckpt", n_head=4).config == TINY
    # an official size with the same n_layer and n_embd pins n_head down
    monkeypatch.setitem(PRESETS, "tiny", TINY_PRESET)
    assert from_pretrained(file).config == TINY


def test_config_json_is_read(tmp_path):
    model = GPT2(TINY.replace(layer_norm_eps=1e-6))
    folder = save_pretrained(model, tmp_path / "ckpt")
    loaded = from_pretrained(folder)
    assert loaded.config.layer_norm_eps == 1e-6 and loaded.config.n_head == 4
    config = json.loads((folder / "config.json").read_text())
    config["n_head"] = 2  # shapes cannot tell; config.json can
    (folder / "config.json").write_text(json.dumps(config))
    assert from_pretrained(folder).config.n_head == 2
    assert from_pretrained(folder, n_head=8).config.n_head == 8  # overrides win
    # a config.json next to some other file name does not belong to it
    (folder / "model.safetensors").rename(folder / "other.safetensors")
    with pytest.raises(HFCheckpointError, match="n_head"):
        from_pretrained(folder / "other.safetensors")


@pytest.mark.parametrize("option, value", [("activation_function", "relu"), ("scale_attn_weights", False),
                                           ("scale_attn_by_inverse_layer_idx", True)])
def test_config_json_options_that_change_the_maths_are_refused(tmp_path, option, value):
    folder = save_pretrained(GPT2(TINY), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config[option] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFCheckpointError, match=option if option != "activation_function" else "relu"):
        from_pretrained(folder)


def test_qkv_bias_is_inferred_from_the_tensors(tmp_path):
    model = GPT2(TINY.replace(qkv_bias=False))
    loaded = from_pretrained(save_pretrained(model, tmp_path / "ckpt"))
    assert loaded.config.qkv_bias is False
    _assert_same_weights(loaded, model)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a GPT-2 size"):
        from_pretrained(tmp_path / "nowhere.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safe_serialization=True"):
        from_pretrained(tmp_path / "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(HFCheckpointError, match="not a readable safetensors file"):
        from_pretrained(tmp_path / "junk.safetensors", n_head=4)


# ---------------------------------------------------------------- key mapping
def _write(path, tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def test_hf_lm_head_model_layout_loads(tmp_path):
    """GPT2LMHeadModel's names: transformer. prefix, a tied lm_head, causal-mask buffers."""
    model = GPT2(TINY)
    tensors = {"transformer." + k: v for k, v in _state(model).items()}
    tensors["lm_head.weight"] = _state(model)["wte.weight"]
    mask = np.tril(np.ones((TINY.n_ctx, TINY.n_ctx), dtype=np.uint8))[None, None]
    for i in range(TINY.n_layer):
        tensors[f"transformer.h.{i}.attn.bias"] = mask
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    loaded = from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4)
    _assert_same_weights(loaded, model)


def test_head_only_checkpoint_uses_lm_head_as_wte(tmp_path):
    model = GPT2(TINY)
    tensors = _state(model)
    tensors["lm_head.weight"] = tensors.pop("wte.weight")
    _assert_same_weights(from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4), model)


def test_untied_lm_head_loads_as_an_untied_model(tmp_path):
    """A bare file whose lm_head differs from wte is an untied model (config tie_word_embeddings=False)."""
    model = GPT2(TINY.replace(tie_word_embeddings=False))
    loaded = from_pretrained(_write(tmp_path / "m.safetensors", _state(model)), n_head=4)
    assert not loaded.config.tie_word_embeddings
    _assert_same_weights(loaded, model)
    np.testing.assert_array_equal(_logits(loaded, IDX), _logits(model.eval(), IDX))


def test_untied_lm_head_is_refused_by_a_tied_model(tmp_path):
    tensors = _state(GPT2(TINY))
    tensors["lm_head.weight"] = tensors["wte.weight"] + 1.0
    with pytest.raises(HFCheckpointError, match="lm_head.weight differs from wte.weight"):
        from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4, tie_word_embeddings=True)
    tensors["lm_head.weight"] = tensors["wte.weight"][:5]
    with pytest.raises(HFCheckpointError, match=r"lm_head.weight has shape \(5, 32\)"):
        from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4, tie_word_embeddings=True)
    # left to infer, the odd-shaped head makes an untied model whose head does not fit
    with pytest.raises(nn.StateDictError, match=r"lm_head.weight: checkpoint \(5, 32\) vs model \(97, 32\)"):
        from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4)


def test_untied_model_needs_its_head(tmp_path):
    tensors = _state(GPT2(TINY))
    with pytest.raises(nn.StateDictError, match="missing keys: lm_head.weight"):
        from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4, tie_word_embeddings=False)


def test_save_pretrained_round_trip_untied(tmp_path):
    model = GPT2(TINY.replace(tie_word_embeddings=False))
    folder = save_pretrained(model, tmp_path / "ckpt")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = from_pretrained(folder)
    assert loaded.config == model.config
    _assert_same_weights(loaded, model)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    tensors = _state(GPT2(TINY))
    tensors["h.0.attn.c_attn.lora_A"] = np.zeros((32, 2), np.float32)
    del tensors["h.1.mlp.c_fc.bias"]
    with pytest.raises(nn.StateDictError) as info:
        from_pretrained(_write(tmp_path / "m.safetensors", tensors), n_head=4)
    message = str(info.value)
    assert "missing keys: h.1.mlp.c_fc.bias" in message
    assert "unexpected keys: h.0.attn.c_attn.lora_A" in message
    assert "m.safetensors" in message


def test_wrong_shapes_are_listed_before_anything_is_copied(tmp_path, monkeypatch):
    tensors = _state(GPT2(TINY))
    tensors["h.1.mlp.c_fc.weight"] = np.zeros((32, 100), np.float32)
    file = _write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(nn.StateDictError, match=r"h\.1\.mlp\.c_fc\.weight: checkpoint \(32, 100\) vs model \(32, 128\)"):
        from_pretrained(file, n_head=4)
    # config.json that disagrees with the tensors: the message shows the config it built
    good = save_pretrained(GPT2(TINY), tmp_path / "ckpt")
    config = json.loads((good / "config.json").read_text())
    config["n_embd"] = 64
    (good / "config.json").write_text(json.dumps(config))
    with pytest.raises(nn.StateDictError, match=r"n_embd=64.*wte\.weight: checkpoint \(97, 32\) vs model \(97, 64\)"):
        from_pretrained(good)


# ---------------------------------------------------------------- saving other models
def test_save_pretrained_merges_lora(tmp_path):
    model = GPT2(TINY).eval()
    nn.apply_lora(model, rank=2, alpha=4.0)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data[...] = np.random.default_rng(1).normal(0, 0.1, p.shape)
    expected = _logits(model, IDX)
    loaded = from_pretrained(save_pretrained(model, tmp_path / "ckpt"))
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    np.testing.assert_allclose(_logits(loaded, IDX), expected, atol=1e-5)


def test_save_pretrained_refuses_foreign_parameters(tmp_path):
    model = GPT2(TINY)
    model.out_head = nn.Linear(32, 2)
    with pytest.raises(ValueError, match="out_head.weight"):
        save_pretrained(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.skipif(not HAVE_HF, reason="needs torch and transformers")
def test_transformers_loads_what_we_save(tmp_path):
    import torch
    import transformers

    model = GPT2(TINY).eval()
    folder = save_pretrained(model, tmp_path / "ckpt")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(IDX)).logits.numpy()
    assert np.abs(_logits(model, IDX) - ref).max() <= 1e-5


@pytest.mark.skipif(not HAVE_HF, reason="needs torch and transformers")
def test_transformers_loads_an_untied_model_we_save(tmp_path):
    import torch
    import transformers

    model = GPT2(TINY.replace(tie_word_embeddings=False), embedding_std=1.0).eval()
    folder = save_pretrained(model, tmp_path / "ckpt")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert not hf.config.tie_word_embeddings
    np.testing.assert_array_equal(hf.lm_head.weight.detach().numpy(), model.lm_head.weight.data)
    with torch.no_grad():
        ref = hf(torch.tensor(IDX)).logits.numpy()
    assert np.abs(_logits(model, IDX) - ref).max() <= 1e-4


# ---------------------------------------------------------------- the real 124M weights
@pytest.mark.slow
def test_official_124m_greedy_continuation():
    path = hub.cache_dir() / "weights" / "gpt2" / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"the official 124M weights are not cached at {path} "
                    f"(run gpt2.from_pretrained('124M') once online to fetch them)")
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    model = from_pretrained("124M")
    seq = np.array([enc.encode("Every effort moves you")])
    with mg.no_grad():
        for _ in range(25):
            seq = np.concatenate([seq, [[int(model(seq).data[0, -1].argmax())]]], axis=1)
    text = enc.decode(seq[0, len(enc.encode("Every effort moves you")):].tolist())
    assert text.startswith(" forward.\n\nThe first step is to understand the importance of your work"), repr(text)
