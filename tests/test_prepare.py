"""tasks.prepare: shards read back by a reader written from the format spec equal tiktoken's tokens,
byte-identical for any worker count, resumable after a crash, named corpora downloaded and verified
against a local HTTP server, and every kind of bad input one clear error with no shard left behind."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from files import hub
from tasks import prepare
from tasks.data import corpora, documents, encoding, sharding
from test_hub import server  # noqa: F401  (the local HTTP server fixture)

# tasks.prepare tokenizes with GPT-2's encoding: without its files (offline, empty cache) these skip
pytestmark = pytest.mark.usefixtures("needs_tokenizer")

ROOT = Path(__file__).resolve().parents[1]
EOT = 50256


@pytest.fixture(scope="module")
def enc():
    from gpt2.tokenizer import get_tokenizer
    return get_tokenizer().encoding


def read_llmc_shard(path):
    """A reader written from the format alone, as llm.c's: 256 int32 header, then uint16 tokens."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1
    tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
    assert len(tokens) == header[2]
    return tokens


def read_folder(out):
    files = sorted(Path(out).glob("*.bin"))
    names = [f.name for f in files]
    val = [n for n in names if "_val_" in n]
    assert len(val) == 1 and val[0].endswith("_val_000000.bin")
    train = sorted(n for n in names if "_train_" in n)
    assert train == [val[0].replace("_val_000000", f"_train_{i:06d}") for i in range(1, len(train) + 1)]
    return np.concatenate([read_llmc_shard(Path(out) / n) for n in val + train]).tolist()


def expected_tokens(enc, docs):
    out = []
    for d in docs:
        out += [EOT] + enc.encode_ordinary(d)
    return out


def _corpus(tmp_path):
    """Three inputs and the documents they hold, in order."""
    single = "Ünïcödé text, one document.\n\nIt has  two   spaces, tabs\tand separator-free lines.\n"
    docs_b = ["First story.\nThe end.", "\nSecond story, after a newline.", "  ", "", "Last one, no newline"]
    records = [{"text": "a jsonl document with <|endoftext|> inside, read as plain text"},
               {"text": "   "}, {"text": "another\n\n  record ", "id": 3}]
    (tmp_path / "a.txt").write_text(single, encoding="utf-8")
    (tmp_path / "b.txt").write_text("<|endoftext|>".join(docs_b), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n"
                                      + json.dumps(records[2]) + "\n", encoding="utf-8")
    docs = [single] + [d for d in docs_b if d.strip()] + [r["text"] for r in records if r["text"].strip()]
    return [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.jsonl")], docs


def _main(*args):
    return prepare.main([*map(str, args), "--no-progress"])


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_equal_tiktoken_with_eot_before_each_document(tmp_path, enc, workers):
    inputs, docs = _corpus(tmp_path)
    out = tmp_path / "out"
    assert _main("--input", *inputs, "--out", out, "--shard-tokens", 16, "--workers", workers) == 0
    expected = expected_tokens(enc, docs)
    assert read_folder(out) == expected
    index = json.loads((out / "index.json").read_text())
    assert index["tokens"] == len(expected) and index["documents"] == len(docs)
    assert [s["sha256"] for s in index["sources"]] == [hub.sha256_of(p) for p in inputs]
    assert all(s["tokens"] == 16 for s in index["shards"][:-1])
    assert not list(out.glob("*.tmp")) and not (out / sharding.STATE_FILE).exists()


def test_byte_identical_for_any_worker_count(tmp_path, monkeypatch):
    # small work items so that two workers really share the work
    monkeypatch.setattr(encoding, "WORK_CHARS", 200)
    inputs, _ = _corpus(tmp_path)
    big = tmp_path / "big.txt"
    big.write_text("<|endoftext|>".join(f"Document {i}: " + "words and more words. " * (i % 7 + 1)
                                        for i in range(300)))
    outs = []
    for workers in (1, 2):
        outs.append(tmp_path / f"w{workers}")
        _main("--input", *inputs, big, "--out", outs[-1], "--shard-tokens", 1000, "--workers", workers)
    files = sorted(p.name for p in outs[0].glob("*.bin"))
    assert len(files) > 3 and files == sorted(p.name for p in outs[1].glob("*.bin"))
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_long_documents_are_tokenized_in_pieces_with_the_same_tokens(tmp_path, monkeypatch, enc):
    monkeypatch.setattr(documents, "PIECE_CHARS", 300)
    monkeypatch.setattr(documents, "BLOCK_BYTES", 256)  # separators and UTF-8 split across reads
    rng = np.random.default_rng(0)
    words = ["the", "Ünïcödé", "cat's", "  ", "\n", "\n\n", "42", "!!", "\t", " x", "don't", "é"]
    doc1 = "".join(rng.choice(words, 3000))
    doc2 = "Line one.\nLine two.\r\nLine three\n" * 80
    (tmp_path / "long.txt").write_text(doc1 + "<|endoftext|>" + doc2, encoding="utf-8")
    (tmp_path / "long.jsonl").write_text(json.dumps({"body": doc2 + doc1}) + "\n")
    out = tmp_path / "out"
    _main("--input", tmp_path / "long.txt", tmp_path / "long.jsonl", "--out", out,
          "--shard-tokens", 500, "--text-field", "body", "--workers", 2)
    assert read_folder(out) == expected_tokens(enc, [doc1, doc2, doc2 + doc1])


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab1.,'s \n\t\r\u00e9\u3000\u2028_-")), max_size=80))
def test_safe_cut_never_changes_the_tokens(enc, text):
    hi = len(text)
    while (cut := documents.safe_cut(text, hi)) > 0:
        assert enc.encode_ordinary(text[:cut]) + enc.encode_ordinary(text[cut:]) == enc.encode_ordinary(text)
        hi = cut - 1


def _synthetic(path, n_words, seed=0):
    rng = np.random.default_rng(seed)
    vocab = np.array(["alpha", "beta", "gamma", "delta", "the", "a", "of", "tokens", "shard", "x1"])
    words = vocab[rng.integers(0, len(vocab), n_words)]
    words[rng.integers(0, n_words, n_words // 50)] = ".\n<|endoftext|>"
    path.write_text(" ".join(words))


def test_crash_mid_prepare_then_rerun_gives_the_same_shards(tmp_path):
    corpus = tmp_path / "corpus.txt"
    _synthetic(corpus, 600_000)
    args = ["--input", str(corpus), "--shard-tokens", "20000", "--workers", "1", "--no-progress"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "tasks.prepare", *args, "--out", str(ref)], cwd=ROOT, check=True,
                   capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tasks.prepare", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "corpus_train_000004.bin").exists():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare ended before it could be killed"
    assert not (out / "index.json").exists()
    for shard in out.glob("*.bin"):  # what is there under a shard's name is a whole shard
        read_llmc_shard(shard)
    (out / "corpus_train_000099.bin.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    r = subprocess.run([sys.executable, "-m", "tasks.prepare", *args, "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "continuing after" in r.stdout
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        if name != "index.json":
            assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    a, b = (json.loads((d / "index.json").read_text()) for d in (ref, out))
    assert a == b


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_pool_workers_start_with_plain_signal_handlers(enc):
    """Forked workers must not run the parent's SIGTERM handler (main_guard raises from it), nor
    lose a SIGTERM: either could leave a worker waiting on its queue after Pool.terminate and the
    parent waiting for it forever (seen as a hang of this suite). Each worker has plain handlers
    and blocks nothing; the parent's signal mask comes back."""
    import multiprocessing

    def raising(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raising)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        with encoding.start_pool(multiprocessing.get_context("fork"), 1) as pool:
            term, intr, blocked = pool.apply(_signal_state)
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
    finally:
        signal.signal(signal.SIGTERM, old)
    assert term == signal.SIG_DFL and intr == signal.SIG_IGN
    assert not blocked & {signal.SIGTERM, signal.SIGINT}


def _signal_state():
    return (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
            signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_rerun_of_a_finished_preparation_does_nothing(tmp_path, capsys):
    inputs, _ = _corpus(tmp_path)
    out = tmp_path / "out"
    _main("--input", *inputs, "--out", out, "--shard-tokens", 16, "--workers", 1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _main("--input", *inputs, "--out", out, "--shard-tokens", 16, "--workers", 2) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path, case):
    """(argv, expected words) for each kind of bad input."""
    t = tmp_path
    ok = t / "ok.txt"
    ok.write_text("Some text. " * 200)
    out = ["--out", str(t / "out")]
    if case == "missing":
        return ["--input", str(t / "nope.txt"), *out], ["nope.txt", "no such file"]
    if case == "folder":
        return ["--input", str(t), *out], ["not a file"]
    if case == "glob":
        return ["--input", str(t / "*.none"), *out], ["matches no file"]
    if case == "binary":
        (t / "bin.txt").write_bytes(b"text\x00\x01\x02")
        return ["--input", str(t / "bin.txt"), *out], ["binary", "byte 4"]
    if case == "utf8":
        (t / "bad.txt").write_bytes(b"hello\nw\xffrld")
        return ["--input", str(ok), str(t / "bad.txt"), *out, "--shard-tokens", "10"], \
            ["bad.txt", "invalid utf-8", "byte 7", "line 2"]
    if case == "not-json":
        (t / "c.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
        return ["--input", str(t / "c.jsonl"), *out], ["c.jsonl, line 2", "not valid json"]
    if case == "no-field":
        (t / "c.jsonl").write_text('{"text": "fine"}\n\n{"body": "no text"}\n')
        return ["--input", str(t / "c.jsonl"), *out], ["c.jsonl, line 3", "'text'"]
    if case == "empty":
        (t / "e.txt").write_text(" \n<|endoftext|>\n")
        return ["--input", str(t / "e.txt"), *out], ["empty"]
    if case == "shard-tokens":
        return ["--input", str(ok), *out, "--shard-tokens", "0"], ["--shard-tokens", "at least 1"]
    if case == "too-small":
        return ["--input", str(ok), *out, "--shard-tokens", "100000"], ["too small", "validation"]
    if case == "other-shards":
        (t / "out").mkdir()
        (t / "out" / "other_train_000001.bin").write_bytes(b"x")
        return ["--input", str(ok), *out, "--shard-tokens", "100"], ["--out", "not from this preparation"]
    if case == "other-preparation":
        assert prepare.main(["--input", str(ok), *out, "--shard-tokens", "100", "--no-progress"]) == 0
        return ["--input", str(ok), *out, "--shard-tokens", "50"], ["another preparation"]
    raise AssertionError(case)


BAD = ["missing", "folder", "glob", "binary", "utf8", "not-json", "no-field", "empty", "shard-tokens",
       "too-small", "other-shards", "other-preparation"]
USAGE = {"shard-tokens", "other-shards", "other-preparation"}  # exit 2; the others are failures (1)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_error_and_no_shard(tmp_path, capsys, case):
    argv, words = _bad(tmp_path, case)
    before = {p.name for p in (tmp_path / "out").glob("*")} if (tmp_path / "out").exists() else set()
    capsys.readouterr()
    assert prepare.main(argv + ["--no-progress"]) == (2 if case in USAGE else 1)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w.lower() in err.lower(), err
    after = {p.name for p in (tmp_path / "out").glob("*")} if (tmp_path / "out").exists() else set()
    assert after == before  # nothing written, nothing half-written


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tasks.prepare", "--input", str(tmp_path / "nope.txt"),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- named corpora


def _add_corpus(monkeypatch, name, corpus):
    monkeypatch.setitem(corpora.CORPORA, name, corpus)


def test_named_corpus_is_downloaded_verified_and_prepared(server, cache, tmp_path, monkeypatch, enc):  # noqa: F811
    text = "A small corpus.<|endoftext|>Served by a local HTTP server.\n" * 20
    (server.root / "small.txt").write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    _add_corpus(monkeypatch, "small", corpora.Corpus("text", (
        corpora.CorpusFile("small/small.txt", f"{server.url}/small.txt", sha, len(text)),), "test"))
    out = tmp_path / "out"
    assert _main("--corpus", "small", "--out", out, "--shard-tokens", 50) == 0
    assert (cache / "small" / "small.txt").read_text() == text
    docs = [d for d in text.split("<|endoftext|>") if d.strip()]
    assert read_folder(out) == expected_tokens(enc, docs)
    # the default --out is the cache's shards/NAME
    assert _main("--corpus", "small", "--shard-tokens", 50) == 0
    assert read_folder(cache / "shards" / "small") == expected_tokens(enc, docs)


def test_named_corpus_with_a_wrong_checksum_is_refused(server, cache, tmp_path, monkeypatch, capsys):  # noqa: F811
    (server.root / "small.txt").write_text("not what the manifest says")
    _add_corpus(monkeypatch, "small", corpora.Corpus("text", (
        corpora.CorpusFile("small/small.txt", f"{server.url}/small.txt", "0" * 64),), "test"))
    assert _main("--corpus", "small", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not the expected" in err and "Traceback" not in err
    assert not (cache / "small").exists() or not any((cache / "small").iterdir())
    assert not (tmp_path / "out").exists()


def _shard_bytes(tokens, magic=20240520):
    h = np.zeros(256, np.int32)
    h[:3] = magic, 1, len(tokens)
    return h.tobytes() + np.asarray(tokens, np.uint16).tobytes()


def test_pretokenized_corpus_is_fetched_as_is_and_checked(server, cache, tmp_path, monkeypatch, capsys):  # noqa: F811
    val, train = _shard_bytes(range(100)), _shard_bytes(range(5, 205))
    (server.root / "f_val_000000.bin").write_bytes(val)
    (server.root / "f_train_000001.bin").write_bytes(train)
    (server.root / "f_train_000002.bin").write_bytes(_shard_bytes(range(3)))
    files = tuple(corpora.CorpusFile(f"f/{n}", f"{server.url}/{n}") for n in
                  ("f_val_000000.bin", "f_train_000001.bin", "f_train_000002.bin"))
    _add_corpus(monkeypatch, "f", corpora.Corpus("shards", files, "test", limit_first=1))
    out = tmp_path / "out"
    assert _main("--corpus", "f", "--out", out, "--shards", 1) == 0  # --shards 1: val + one train file
    assert sorted(p.name for p in out.glob("*.bin")) == ["f_train_000001.bin", "f_val_000000.bin"]
    assert (out / "f_train_000001.bin").read_bytes() == train
    index = json.loads((out / "index.json").read_text())
    assert index["tokens"] == 300
    # no digest in the manifest: the one computed on first download is recorded
    assert index["shards"][0]["sha256"] == hashlib.sha256(val).hexdigest()
    assert index["shards"][0]["sha256_source"] == "computed on download"

    # a download that is not a shard (wrong magic) is refused and not kept
    (server.root / "g_val_000000.bin").write_bytes(_shard_bytes(range(10), magic=1234))
    _add_corpus(monkeypatch, "g", corpora.Corpus("shards", (
        corpora.CorpusFile("g/g_val_000000.bin", f"{server.url}/g_val_000000.bin"),), "test"))
    capsys.readouterr()
    assert _main("--corpus", "g", "--out", tmp_path / "g") == 1
    assert "magic number 1234" in capsys.readouterr().err
    assert not (cache / "g" / "g_val_000000.bin").exists()


def test_offline_names_every_missing_file(cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    assert _main("--corpus", "fineweb10B", "--shards", 2, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "3 of 3 files" in err and "Traceback" not in err
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"):
        assert str(cache / "fineweb10B" / name) in err
        assert f"kjj0/fineweb10B-gpt2/resolve/main/{name}" in err


def test_parquet_input(tmp_path, enc):
    pa = pytest.importorskip("pyarrow", reason="pyarrow (the [parquet] extra) is not installed")
    import pyarrow.parquet as pq
    texts = ["first parquet row", "", "second row\nwith a newline", None, "third " * 50]
    pq.write_table(pa.table({"id": list(range(5)), "content": texts}), tmp_path / "t.parquet",
                   row_group_size=2)
    out = tmp_path / "out"
    assert _main("--input", tmp_path / "t.parquet", "--out", out, "--text-field", "content",
                 "--shard-tokens", 20) == 0
    assert read_folder(out) == expected_tokens(enc, [t for t in texts if t and t.strip()])
    assert _main("--input", tmp_path / "t.parquet", "--out", tmp_path / "o2") == 1  # no column 'text'
