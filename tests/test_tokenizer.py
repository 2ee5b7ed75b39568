"""GPT-2 tokenization: tiktoken's encoding, our fallback built from GPT-2's files, and the
from-scratch BPE in gpt2/bpe.py, which must give exactly tiktoken's ids."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2 import tokenizer as tokmod
from gpt2.bpe import BPETokenizer, bytes_to_unicode, gpt2_split_pattern, pre_split
from gpt2.tokenizer import (TextStream, TiktokenTokenizer, TokenizerUnavailableError,
                            encoding_from_gpt2_files, get_tokenizer, load_gpt2_encoding)
from files.hub import cache_dir

pytestmark = pytest.mark.usefixtures("numpy_pass_only")  # conftest.py: skipped by CI's stand-in pass

REPO = Path(__file__).resolve().parent.parent

KNOWN = [
    ("Hello, world! It's a test.", [15496, 11, 995, 0, 632, 338, 257, 1332, 13]),
    ("Hello, world. Is this-- a test?", [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]),
]


def cached(relpath: str) -> Path:
    """A file from the data cache, or skip the test when it is not there."""
    path = cache_dir() / relpath
    if not path.is_file():
        pytest.skip(f"{relpath} is not in the data cache (expected at {path})")
    return path


def read_text(relpath: str) -> str:
    return cached(relpath).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2_paths() -> tuple[Path, Path]:
    return cached("gpt2/encoder.json"), cached("gpt2/vocab.bpe")


@pytest.fixture(scope="module")
def real_tiktoken() -> tiktoken.Encoding:
    """tiktoken's own "gpt2" encoding (from its cache or the network), not our fallback."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:
        pytest.skip(f"tiktoken cannot load 'gpt2' ({type(err).__name__}); "
                    f"set TIKTOKEN_CACHE_DIR to a folder holding its cached files")


@pytest.fixture(scope="module")
def tik() -> TiktokenTokenizer:
    try:
        return get_tokenizer("tiktoken")
    except TokenizerUnavailableError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def bpe(gpt2_paths) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(*gpt2_paths)


@pytest.fixture(params=["tiktoken", "bpe"])
def any_tok(request, tik, bpe):
    return tik if request.param == "tiktoken" else bpe


# -- known ids and basic interface ------------------------------------------------------------

@pytest.mark.parametrize("text,ids", KNOWN)
def test_known_ids(any_tok, text, ids):
    assert any_tok.encode(text) == ids
    assert any_tok.decode(ids) == text


def test_vocab_size_and_end_of_text(any_tok):
    assert any_tok.n_vocab == 50257
    assert any_tok.eot_id == 50256
    assert any_tok.encode("<|endoftext|>") == [50256]
    assert any_tok.encode("Hi.<|endoftext|> Bye") == (
        any_tok.encode("Hi.") + [50256] + any_tok.encode(" Bye"))
    assert any_tok.decode([50256]) == "<|endoftext|>"


def test_disallowed_special_token(any_tok):
    with pytest.raises(ValueError):
        any_tok.encode("a <|endoftext|>", allowed_special=set())
    plain = any_tok.encode_ordinary("<|endoftext|>")
    assert 50256 not in plain and any_tok.decode(plain) == "<|endoftext|>"
    assert any_tok.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_decode_bytes_keeps_partial_characters(any_tok):
    ids = any_tok.encode("é")  # U+00E9 is two UTF-8 bytes
    raw = b"".join(any_tok.decode_bytes([i]) for i in ids)
    assert raw == "é".encode("utf-8")
    assert any_tok.decode_bytes(ids) == raw


def test_get_tokenizer(tik, bpe):
    assert isinstance(get_tokenizer("bpe"), BPETokenizer)
    assert get_tokenizer("tiktoken") is get_tokenizer("tiktoken")  # loaded once, then reused
    assert isinstance(tik, TiktokenTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("sentencepiece")


def test_bpe_module_does_not_need_tiktoken():
    # Load gpt2/bpe.py on its own (not through the package's __init__, which may import more).
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('bpe', 'gpt2/bpe.py')\n"
            "bpe = importlib.util.module_from_spec(spec); spec.loader.exec_module(bpe)\n"
            "tok = bpe.BPETokenizer.train('low lower lowest', vocab_size=260)\n"
            "assert tok.decode(tok.encode('lowest')) == 'lowest'\n"
            "assert 'tiktoken' not in sys.modules, 'gpt2/bpe.py imported tiktoken'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- whole texts -------------------------------------------------------------------------------

def test_the_verdict(tik, bpe):
    text = read_text("the-verdict.txt")
    ids = tik.encode(text)
    assert len(ids) == 5145
    assert bpe.encode(text) == ids
    assert bpe.decode(ids) == text == tik.decode(ids)


def test_tiny_shakespeare(tik, bpe, capsys):
    text = read_text("tinyshakespeare/input.txt")
    start = time.perf_counter()
    ids = BPETokenizer(bpe.ranks, bpe.special_tokens).encode(text)  # a fresh, empty cache
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[tokenizer] from-scratch BPE: Tiny Shakespeare ({len(text):,} chars) -> "
              f"{len(ids):,} tokens in {seconds:.2f} s")
    assert ids == tik.encode(text)
    assert bpe.decode(ids) == text


# -- any text ----------------------------------------------------------------------------------

# Pieces that exercise each branch of GPT-2's pre-split regex and the spots where its character
# classes are easy to get wrong (Unicode whitespace, \x1c-\x1f, marks, new scripts, digits).
FRAGMENTS = [
    " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\x0b", "\x0c", "\x85", "\xa0", "\u2009",
    "\u3000", "\u2028", "\x1c", "\x1f", "\u200b", "\ufeff",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "' s", "''", "it's", "don't",
    "0", "42", "2024", " 7", "3.14", "١٢٣", "Ⅻ", "½", "²", "𝟙𝟚",
    "Hello", " world", "ÉCOLE", " naïve", "e\u0301", "\u0301", "a\u0308\u0304", "ß", "ﬁ",
    "中文", " 日本語", "한국어", "ไทย", "עברית", "عربي", "Ελληνικά", "кириллица",
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "—", "...", "!!", "?!", "--", "<|endoftext", "|>",
    "\U0001e4d0", "\U00031350", "\U0001d2c0", "\U000e0041", "\U0010ffff", "\ud7ff", "\x00",
]

texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)),
                 max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_bpe_equals_tiktoken_on_any_text(tik, bpe, text):
    ids = tik.encode_ordinary(text)
    assert bpe.encode_ordinary(text) == ids
    assert bpe.decode(ids) == text
    assert tik.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_any_unicode(tik, bpe, text):
    assert "".join(pre_split(text)) == text
    assert bpe.decode(bpe.encode_ordinary(text)) == text
    assert tik.decode(tik.encode_ordinary(text)) == text


@pytest.mark.slow
def test_pre_split_classes_match_tiktoken_on_every_code_point(real_tiktoken):
    """For every code point c and a letter, a digit and a tab before it, our regex and
    tiktoken's must agree on whether the two characters form one pre-token.

    tiktoken does not expose its splitter, so we ask it indirectly: an encoding whose vocabulary
    holds every probe string as one token returns a single id exactly when the probe is a
    single pre-token. Probes are separated by "<|endoftext|>", which tiktoken splits on first.
    """
    eot = "<|endoftext|>"
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    pattern = gpt2_split_pattern()
    for prefix in ("a", "1", "\t"):  # letter, number, whitespace
        probes = [prefix + chr(c) for c in code_points]
        ranks = {bytes([b]): b for b in range(256)}
        for p in probes:
            ranks.setdefault(p.encode("utf-8"), len(ranks))
        probe_enc = tiktoken.Encoding(f"probe-{ord(prefix)}", pat_str=real_tiktoken._pat_str,
                                      mergeable_ranks=ranks, special_tokens={eot: len(ranks)})
        ids = probe_enc.encode(eot.join(probes), allowed_special="all")
        counts, n = [], 0
        for i in ids + [len(ranks)]:
            if i == len(ranks):
                counts.append(n)
                n = 0
            else:
                n += 1
        assert len(counts) == len(probes)
        theirs = [n == 1 for n in counts]
        ours = [pattern.match(p).end() == len(p) for p in probes]
        wrong = [f"U+{code_points[k]:04X}" for k in range(len(probes)) if theirs[k] != ours[k]]
        assert not wrong, f"after {prefix!r}: {len(wrong)} code points split differently, " \
                          f"e.g. {wrong[:10]}"


# -- the offline fallback ---------------------------------------------------------------------

def test_fallback_encoding_equals_tiktoken(real_tiktoken, gpt2_paths):
    ours = encoding_from_gpt2_files(*gpt2_paths)
    assert ours.n_vocab == real_tiktoken.n_vocab == 50257
    assert ours.eot_token == 50256
    assert all(ours.decode_single_token_bytes(i) == real_tiktoken.decode_single_token_bytes(i)
               for i in range(50257))
    text = read_text("the-verdict.txt") + "<|endoftext|>  Über 12,345 tests 😀\n\n"
    assert ours.encode(text, allowed_special="all") == real_tiktoken.encode(
        text, allowed_special="all")


def test_load_falls_back_to_data_cache(monkeypatch, real_tiktoken, gpt2_paths):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", offline)
    enc = load_gpt2_encoding()
    text = "Offline, the same ids: 3 + 4 = 7.\n"
    assert enc.encode(text) == real_tiktoken.encode(text)


def test_clear_error_when_nothing_available(monkeypatch, tmp_path):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", offline)
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    with pytest.raises(TokenizerUnavailableError) as info:
        load_gpt2_encoding()
    message = str(info.value)
    assert "TIKTOKEN_CACHE_DIR" in message
    assert str(tmp_path / "gpt2" / "encoder.json") in message
    assert "vocab.bpe" in message
    assert not (tmp_path / "gpt2" / "encoder.json").exists()
    get_tokenizer.cache_clear()  # "bpe" may be cached from the real data folder
    try:
        with pytest.raises(TokenizerUnavailableError, match="vocab.bpe"):
            get_tokenizer("bpe")
    finally:
        get_tokenizer.cache_clear()


def test_corrupt_gpt2_files_are_rejected(tmp_path, gpt2_paths):
    encoder_json, vocab_bpe = gpt2_paths
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # two merges out of order
    bad = tmp_path / "vocab.bpe"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="merge 1"):
        BPETokenizer.from_gpt2_files(encoder_json, bad)


# -- training, saving, loading ----------------------------------------------------------------

def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("A")] == "A"


def test_train_first_merge_by_hand():
    # One pre-token "aaabdaaabac": pair counts aa=4, ab=2, others 1 -> the first merge is "aa",
    # applied left to right without overlap: aa a b d aa a b a c.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=258)
    assert tok.ranks[b"aa"] == 256
    assert tok.n_vocab == 258 and tok.eot_id == 257
    a, b, c, d = b"abcd"
    assert tok.encode("aaabdaaabac") == [256, a, b, d, 256, a, b, a, c]


def small_corpus() -> str:
    import random
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "and", "then", "there", "was", "another",
             "one", "it's", "we're", "42", "1999", "naïve", "café", "日本", "!", "?", "--"]
    lines = (" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400))
    return "\n".join(lines) + "<|endoftext|>the end\n"


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    return BPETokenizer.train(small_corpus(), vocab_size=300)


def test_train_vocab_size_and_compression(trained):
    text = small_corpus()
    assert trained.n_vocab == 300
    assert len(trained.ranks) == 299 and trained.eot_id == 299
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert ids.count(299) == 1
    assert len(ids) < len(text.encode("utf-8")) / 2.5  # merges really shorten the text
    assert trained.encode(" the") == [trained.ranks[b" the"]]


@settings(max_examples=100, deadline=None)
@given(text=texts)
def test_trained_round_trips_any_text(trained, text):
    assert trained.decode(trained.encode_ordinary(text)) == text


def test_train_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("hello", vocab_size=200)


def test_save_load(trained, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    trained.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left
    loaded = BPETokenizer.load(path)
    text = small_corpus() + " unseen wörds 🙂"
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.special_tokens == trained.special_tokens
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][ord("A")] == "A"


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer saved"):
        BPETokenizer.load(path)


@pytest.mark.parametrize("name", ["tiktoken", "bpe"])
def test_text_stream_gives_a_split_character_once_whole(name, tik, bpe):
    """🦜 is three GPT-2 tokens (its four UTF-8 bytes split 2 + 1 + 1): the stream gives nothing for
    the first two and the whole character with the third, never a broken half."""
    tok = {"tiktoken": tik, "bpe": bpe}[name]
    ids = tok.encode("a🦜b")
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces == ["a", "", "", "🦜", "b"] and stream.flush() == ""
    cut = TextStream(tok)  # the stream ends inside the character: what is left is one U+FFFD
    assert [cut.push(i) for i in ids[:2]] == ["a", ""] and cut.flush() == "\ufffd"

