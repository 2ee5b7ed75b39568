"""tasks.data's manifest and loaders: dataset fetching, sliding windows and the resumable batch loader."""

import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from files import hub
from tasks.data import loaders, manifest
from tasks.data.text import make_pretrain_loaders, train_val_split_text


class CharTokenizer:
    """One token per character: enough to exercise the windowing without a real BPE."""

    def encode(self, text):
        return [ord(c) for c in text]


@pytest.fixture
def gpt2_encoding():
    tiktoken = pytest.importorskip("tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # offline without TIKTOKEN_CACHE_DIR pointing at the cached files
        pytest.skip(f"tiktoken cannot load the gpt2 encoding here: {err}")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(d))
    monkeypatch.delenv("MINIGRAD_OFFLINE", raising=False)
    return d


# ----------------------------------------------------------------------------- manifest


def test_manifest_matches_files_in_cache():
    present = [n for n in manifest.DATASETS if manifest.dataset_path(n).is_file()]
    if not present:
        pytest.skip(f"no dataset files in the cache at {hub.cache_dir()}")
    for name in present:
        entry = manifest.DATASETS[name]
        path = manifest.dataset_path(name)
        hub.verify_file(path, entry.sha256, entry.size, git_blob=entry.git_blob)


def test_manifest_entries_are_well_formed():
    for name, entry in manifest.DATASETS.items():
        assert entry.sha256 is not None or entry.git_blob is not None, name  # something to check
        if entry.sha256 is not None:
            assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0, name
        if entry.git_blob is not None:
            assert len(entry.git_blob) == 40 and int(entry.git_blob, 16) >= 0, name
        assert entry.url.startswith("https://"), name
        assert not os.path.isabs(entry.relpath) and ".." not in entry.relpath, name


def test_present_dataset_is_served_offline(monkeypatch):
    if not manifest.dataset_path("the-verdict").is_file():
        pytest.skip("the-verdict.txt is not in the cache")
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    assert manifest.ensure_dataset("the-verdict") == manifest.dataset_path("the-verdict")
    text = manifest.read_text("the-verdict")
    assert len(text) == manifest.DATASETS["the-verdict"].size  # the file is plain ASCII


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as info:
        manifest.dataset_path("the-verdikt")
    msg = str(info.value)
    assert "the-verdikt" in msg
    for name in manifest.DATASETS:
        assert name in msg


def test_missing_dataset_offline_names_url_and_path(empty_cache, monkeypatch):
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    with pytest.raises(hub.MissingFileError) as info:
        manifest.ensure_dataset("the-verdict", progress=False)
    msg = str(info.value)
    assert manifest.DATASETS["the-verdict"].url in msg
    assert str(empty_cache / "the-verdict.txt") in msg


def test_mmlu_offline_names_the_converted_file(empty_cache, monkeypatch):
    # the download and conversion online are tested in tests/test_mmlu_download.py
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    with pytest.raises(hub.MissingFileError) as info:
        manifest.ensure_dataset("mmlu", progress=False)
    assert str(empty_cache / "mmlu" / "mmlu.jsonl") in str(info.value)
    assert manifest.DATASETS["mmlu"].sha256 in str(info.value)
    assert not (empty_cache / "mmlu").exists()  # no attempt to download anything


def _sms_zip(tmp_path, content: bytes):
    served = tmp_path / "served"
    served.mkdir()
    zpath = served / "sms+spam+collection.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme", "not this one")
        zf.writestr("SMSSpamCollection", content)
    return zpath


def test_sms_spam_is_extracted_from_its_zip(tmp_path, empty_cache, monkeypatch):
    content = b"ham\tsee you at 5\nspam\tWIN a prize now\n"
    zpath = _sms_zip(tmp_path, content)
    entry = dataclasses.replace(manifest.DATASETS["sms-spam"], url=zpath.as_uri(), size=len(content),
                                sha256=hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(manifest.DATASETS, "sms-spam", entry)
    path = manifest.ensure_dataset("sms-spam", progress=False)
    assert path == empty_cache / "sms_spam_collection" / "SMSSpamCollection"
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["SMSSpamCollection"]


def test_sms_spam_with_wrong_digest_saves_nothing(tmp_path, empty_cache, monkeypatch):
    content = b"ham\thello\n"
    zpath = _sms_zip(tmp_path, content)
    entry = dataclasses.replace(manifest.DATASETS["sms-spam"], url=zpath.as_uri(), size=len(content))
    monkeypatch.setitem(manifest.DATASETS, "sms-spam", entry)  # keeps the real (other) sha256
    with pytest.raises(hub.ChecksumError) as info:
        manifest.ensure_dataset("sms-spam", progress=False)
    assert entry.sha256 in str(info.value)
    assert hashlib.sha256(content).hexdigest() in str(info.value)
    assert list((empty_cache / "sms_spam_collection").iterdir()) == []


def test_sms_spam_from_an_archive_of_no_use_saves_nothing(tmp_path, empty_cache, monkeypatch):
    """A download that is not a zip: one clear error, and the archive is deleted with everything
    else (files.derived), so the next run downloads it afresh."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "sms.zip").write_bytes(b"<html>not a zip</html>")
    entry = dataclasses.replace(manifest.DATASETS["sms-spam"], url=(served / "sms.zip").as_uri())
    monkeypatch.setitem(manifest.DATASETS, "sms-spam", entry)
    with pytest.raises(ValueError, match="is not a valid zip"):
        manifest.ensure_dataset("sms-spam", progress=False)
    assert list((empty_cache / "sms_spam_collection").iterdir()) == []


def test_sms_spam_offline_names_the_final_path(empty_cache, monkeypatch):
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    with pytest.raises(hub.MissingFileError) as info:
        manifest.ensure_dataset("sms-spam", progress=False)
    msg = str(info.value)
    assert str(empty_cache / "sms_spam_collection" / "SMSSpamCollection") in msg
    assert manifest.DATASETS["sms-spam"].url in msg


def test_read_text_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        manifest.read_text(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        manifest.read_text(str(tmp_path / "empty.txt"))
    with pytest.raises(IsADirectoryError):
        manifest.read_text(tmp_path)
    (tmp_path / "t.txt").write_text("héllo", encoding="utf-8")
    assert manifest.read_text(tmp_path / "t.txt") == "héllo"


# ----------------------------------------------------------------------------- pretraining


def test_train_val_split_is_by_characters():
    text = "abcdefghij" * 3
    train, val = train_val_split_text(text, 0.9)
    assert (train, val) == (text[:27], text[27:])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="train_frac"):
            train_val_split_text(text, bad)


def test_windows_and_shifted_targets():
    ids = list(range(100, 120))  # 20 tokens
    ds = loaders.TextWindows(ids, context=4, stride=3)
    starts = [0, 3, 6, 9, 12, 15]  # the last start must leave room for the shifted target
    assert len(ds) == len(starts)
    for k, s in enumerate(starts):
        x, y = ds[k]
        assert x.tolist() == ids[s:s + 4]
        assert y.tolist() == ids[s + 1:s + 5]
        assert x.dtype == np.int64
    with pytest.raises(IndexError):
        ds[len(starts)]


def test_exactly_one_window_fits():
    ds = loaders.TextWindows([1, 2, 3, 4, 5], context=4, stride=10)
    assert len(ds) == 1
    assert ds[0][1].tolist() == [2, 3, 4, 5]


def test_short_text_error_says_counts():
    with pytest.raises(ValueError) as info:
        loaders.TextWindows([1, 2, 3, 4], context=4, stride=1)
    assert "4 tokens" in str(info.value) and "at least 5" in str(info.value)
    with pytest.raises(ValueError, match="validation split"):
        make_pretrain_loaders("x" * 200, CharTokenizer(), context=32, stride=32,
                                   batch_size=1)


def test_the_verdict_counts_match_the_book(gpt2_encoding):
    if not manifest.dataset_path("the-verdict").is_file():
        pytest.skip("the-verdict.txt is not in the cache")
    text = manifest.read_text("the-verdict")
    assert len(gpt2_encoding.encode(text)) == 5145
    train, val = make_pretrain_loaders(text, gpt2_encoding, context=256, stride=256,
                                            batch_size=2, seed=123, train_frac=0.9)
    # The book reports 9 training batches and 1 validation batch of shape (2, 256):
    # 4,608 training tokens and 512 validation tokens.
    assert (len(train), len(val)) == (9, 1)
    train_batches, val_batches = list(train), list(val)
    assert all(x.shape == y.shape == (2, 256) for x, y in train_batches + val_batches)
    assert sum(x.size for x, _ in train_batches) == 4608
    assert sum(x.size for x, _ in val_batches) == 512


def _loader(n=23, batch_size=4, shuffle=True, drop_last=False, seed=7):
    ds = loaders.TextWindows(np.arange(n + 3), context=3, stride=1)  # n windows
    return loaders.BatchLoader(ds, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)


def test_loader_shapes_lengths_and_coverage():
    loader = _loader(n=23, batch_size=4, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    assert [x.shape for x, _ in batches] == [(4, 3)] * 5 + [(3, 3)]
    firsts = np.concatenate([x[:, 0] for x, _ in batches])
    assert sorted(firsts.tolist()) == list(range(23))  # every window exactly once
    for x, y in batches:
        assert x.dtype == y.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)
    assert len(_loader(n=23, batch_size=4, drop_last=True)) == 5


def test_loader_shuffles_per_epoch_reproducibly():
    a, b = _loader(seed=1), _loader(seed=1)
    ep0, ep1 = [x.tolist() for x, _ in a], [x.tolist() for x, _ in a]
    assert ep0 == [x.tolist() for x, _ in b]  # same seed, same order
    assert ep0 != ep1  # a new permutation each epoch
    assert ep0 != [x.tolist() for x, _ in _loader(seed=2)]
    plain = [x[:, 0].tolist() for x, _ in _loader(shuffle=False)]
    assert sum(plain, []) == list(range(23))


def test_too_few_samples_for_one_batch():
    with pytest.raises(ValueError, match="no batches"):
        _loader(n=3, batch_size=4, drop_last=True)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), batch_size=st.integers(1, 8), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**32), stop=st.integers(0, 80))
def test_loader_resumes_exactly(n, batch_size, shuffle, drop_last, seed, stop):
    if drop_last and n < batch_size:
        return
    # Reference: three epochs straight through.
    ref = _loader(n, batch_size, shuffle, drop_last, seed)
    expected = [x.tolist() for _ in range(3) for x, _ in ref]
    stop = min(stop, len(expected))
    # Consume `stop` batches (breaking out of an epoch midway), save, restore into a new loader.
    first = _loader(n, batch_size, shuffle, drop_last, seed)
    got = []
    while len(got) < stop:
        for x, _ in first:
            got.append(x.tolist())
            if len(got) == stop:
                break
    state = json.loads(json.dumps(first.state_dict()))
    second = _loader(n, batch_size, shuffle, drop_last, seed=0)  # the state carries the seed
    second.load_state_dict(state)
    while len(got) < len(expected):
        got.extend(x.tolist() for x, _ in second)
    assert got == expected


def test_load_state_dict_rejects_a_different_loader():
    state = _loader(n=23, batch_size=4).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        _loader(n=23, batch_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        _loader(n=24, batch_size=4).load_state_dict(state)
