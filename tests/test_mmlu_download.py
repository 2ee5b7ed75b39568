"""MMLU from the official data.tar: conversion to our JSON lines, the sha256 check of the result,
the dev split for 5-shot prompts, offline errors, and the per-subject plot."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest

from files import hub
from tasks import evaluate
from tasks.data import manifest, mmlu_archive
from tasks.evals import mmlu

# rows as the official CSVs hold them: question, 4 choices, answer; no header
TEST_ROWS = {
    "anatomy": [
        ["What is the\nlargest bone?", "Femur", "Tibia ", "None", "0.", "A"],
        ['Which "organ" pumps blood?', "Lung", "Heart", "Liver, mostly", "Skin", "B"],
    ],
    "abstract_algebra": [["Find the order of Z_4 \u2013 a group.", "1", "2", "3", "4", "D"]],
    "zoology_of_mars": [["Is there life on Mars?", "Yes", "No", "TRUE", "Unknown", "D"]],
}
DEV_ROWS = {s: [[f"{s} dev q{i}", "a", "b", "c", "d", "ABCD"[i % 4]] for i in range(5)]
            for s in TEST_ROWS}


def expected_jsonl(rows_by_subject, order):
    """The file we expect, written out by hand: one JSON object a line, keys in this order, the
    subject's name with spaces, json.dumps's defaults (ASCII escapes, ", " and ": ")."""
    lines = []
    for subject in order:
        for q, a, b, c, d, ans in rows_by_subject[subject]:
            lines.append(json.dumps({"question": q, "answer_a": a, "answer_b": b, "answer_c": c,
                                     "answer_d": d, "correct_answer": ans,
                                     "topic": subject.replace("_", " ")}) + "\n")
    return "".join(lines).encode()


def csv_bytes(rows):
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def make_tar(path, test_rows, dev_rows):
    """data.tar in the official layout: data/{dev,val,test}/SUBJECT_{split}.csv, plus a README."""
    members = {"data/README.txt": b"MMLU"}
    for split, rows_by_subject in (("test", test_rows), ("dev", dev_rows), ("val", dev_rows)):
        for subject in sorted(rows_by_subject, reverse=True):  # the order must not matter
            members[f"data/{split}/{subject}_{split}.csv"] = csv_bytes(rows_by_subject[subject])
    return write_tar(path, members)


# abstract_algebra comes before anatomy in the cached file's subject order; unknown ones come last
ORDER = ["abstract_algebra", "anatomy", "zoology_of_mars"]


def test_conversion_gives_the_expected_jsonl(tmp_path):
    test, dev = mmlu_archive.convert_mmlu_tar(make_tar(tmp_path / "data.tar", TEST_ROWS, DEV_ROWS))
    assert test.encode() == expected_jsonl(TEST_ROWS, ORDER)
    assert dev.encode() == expected_jsonl(DEV_ROWS, ORDER)
    assert '"question": "What is the\\nlargest bone?"' in test and "\\u2013" in test


def test_conversion_refuses_bad_archives(tmp_path):
    (tmp_path / "not.tar").write_bytes(b"hello")
    with pytest.raises(mmlu.MMLUDataError, match="not a readable tar"):
        mmlu_archive.convert_mmlu_tar(tmp_path / "not.tar")
    with pytest.raises(mmlu.MMLUDataError, match="6"):
        mmlu_archive.convert_mmlu_tar(make_tar(tmp_path / "short.tar", {"anatomy": [["q", "a", "b"]]}, {}))
    with pytest.raises(mmlu.MMLUDataError, match="no test/SUBJECT_test.csv"):
        mmlu_archive.convert_mmlu_tar(make_tar(tmp_path / "empty.tar", {}, DEV_ROWS))


def test_conversion_reproduces_the_cached_file(tmp_path):
    """The cached mmlu.jsonl, cut back into per-subject CSVs and packed as data.tar, converts to
    the same bytes, so its sha256 is the manifest's: the format (keys, their order, subject names,
    subject order, JSON formatting, the two stray header rows kept) is the one the manifest
    records. What this cannot show is that the real archive's CSVs parse to these same strings."""
    path = manifest.dataset_path("mmlu")
    if not path.is_file():
        pytest.skip(f"MMLU not in the data cache ({path})")
    rows: dict[str, list[list[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.setdefault(r["topic"].replace(" ", "_"), []).append(
            [r["question"], r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"],
             r["correct_answer"]])
    assert len(rows) == 57
    # alphabetical members: the cached file's subject order must come from the converter
    members = {f"data/test/{subject}_test.csv": csv_bytes(rows[subject]) for subject in sorted(rows)}
    converted = mmlu_archive.convert_mmlu_tar(write_tar(tmp_path / "data.tar", members))[0].encode()
    assert hashlib.sha256(converted).hexdigest() == manifest.DATASETS["mmlu"].sha256
    assert len(converted) == manifest.DATASETS["mmlu"].size


# ---------------------------------------------------------------- download


def _serve_mmlu(monkeypatch, served, sha256, size):
    root, url = served
    make_tar(root / "data.tar", TEST_ROWS, DEV_ROWS)
    entry = dataclasses.replace(manifest.DATASETS["mmlu"], url=f"{url}/data.tar", sha256=sha256,
                                size=size)
    monkeypatch.setitem(manifest.DATASETS, "mmlu", entry)
    return entry


def test_download_converts_and_verifies(served, cache, monkeypatch):
    expected = expected_jsonl(TEST_ROWS, ORDER)
    _serve_mmlu(monkeypatch, served, hashlib.sha256(expected).hexdigest(), len(expected))
    path = manifest.ensure_dataset("mmlu", progress=False)
    assert path == cache / "mmlu" / "mmlu.jsonl" and path.read_bytes() == expected
    assert mmlu.dev_path().read_bytes() == expected_jsonl(DEV_ROWS, ORDER)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mmlu.jsonl", "mmlu_dev.jsonl"]
    assert len(mmlu.load_mmlu()) == 4 and len(mmlu.load_mmlu(mmlu.ensure_dev())) == 15


def test_wrong_hash_is_refused_and_nothing_is_saved(served, cache, monkeypatch):
    expected = expected_jsonl(TEST_ROWS, ORDER)
    entry = _serve_mmlu(monkeypatch, served, "0" * 64, len(expected))
    with pytest.raises(hub.ChecksumError) as info:
        manifest.ensure_dataset("mmlu", progress=False)
    msg = str(info.value)
    assert "0" * 64 in msg and hashlib.sha256(expected).hexdigest() in msg and entry.url in msg
    assert list((cache / "mmlu").iterdir()) == []  # no test, no dev, no archive, no .tmp
    # the command line says it in one line
    assert evaluate.main(["mmlu", "--init", "124M", "--no-progress"]) == 1


def test_dev_split_is_converted_when_only_the_test_file_is_cached(served, cache, monkeypatch):
    expected = expected_jsonl(TEST_ROWS, ORDER)
    _serve_mmlu(monkeypatch, served, hashlib.sha256(expected).hexdigest(), len(expected))
    (cache / "mmlu").mkdir(parents=True)
    (cache / "mmlu" / "mmlu.jsonl").write_bytes(expected)  # as in today's offline cache
    assert mmlu.ensure_dev(progress=False).read_bytes() == expected_jsonl(DEV_ROWS, ORDER)


def test_offline_without_dev_split_says_what_is_missing(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    test_file = tmp_path / "mmlu.jsonl"
    test_file.write_bytes(expected_jsonl(TEST_ROWS, ORDER))
    assert evaluate.main(["mmlu", "--init", "124M", "--shots", "5", "--data", str(test_file),
                          "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(cache / "mmlu" / "mmlu_dev.jsonl") in err and "--shots-from test" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 5-shot from dev, plot


class WordTokenizer:
    """" A" .. " D" are tokens 0..3; every other word gets an id on first sight."""

    def __init__(self):
        self.vocab = {" A": 0, " B": 1, " C": 2, " D": 3}
        self.inverse = {i: t for t, i in self.vocab.items()}

    def encode(self, text):
        ids = []
        for t in re.findall(r" ?[^\s]+|\s", text):
            ids.append(self.vocab.setdefault(t, len(self.vocab)))
            self.inverse[self.vocab[t]] = t
        return ids

    def decode(self, ids):
        return "".join(self.inverse[i] for i in ids)


def test_five_shots_come_from_the_dev_split(tmp_path):
    test_file, dev_file = tmp_path / "test.jsonl", tmp_path / "dev.jsonl"
    test_file.write_bytes(expected_jsonl(TEST_ROWS, ORDER))
    dev_file.write_bytes(expected_jsonl(DEV_ROWS, ORDER))
    qs, dev = mmlu.load_mmlu(test_file), mmlu.load_mmlu(dev_file)
    tok, prompts = WordTokenizer(), []

    def always_d(ids):
        prompts.append(tok.decode(ids))
        logits = np.zeros(4, dtype=np.float32)
        logits[3] = 1.0
        return logits
    result = mmlu.evaluate_mmlu(qs, always_d, tok, shots=5, dev=dev, progress=False)
    # every test question is scored (none is used up as a shot), with its subject's 5 dev shots
    assert result.per_subject == {"abstract algebra": (1, 1), "anatomy": (0, 2),
                                  "zoology of mars": (1, 1)}
    by_subject = mmlu.group_by_subject(dev)
    for prompt, q in zip(prompts, [q for s in sorted(by_subject) for q in qs if q.subject == s]):
        assert prompt == mmlu.build_prompt(q, by_subject[q.subject])
    with pytest.raises(mmlu.MMLUDataError, match="fewer than the 5 shots"):
        mmlu.evaluate_mmlu(qs, always_d, tok, shots=5, dev=dev[:3], progress=False)


def test_command_five_shot_with_dev_file_table_and_plot(tmp_path, monkeypatch, capsys):
    test_file, dev_file = tmp_path / "test.jsonl", tmp_path / "dev.jsonl"
    test_file.write_bytes(expected_jsonl(TEST_ROWS, ORDER))
    dev_file.write_bytes(expected_jsonl(DEV_ROWS, ORDER))

    class AlwaysD:
        training = False

        def eval(self):
            return self

        def __call__(self, idx):
            import minigrad as mg
            logits = np.zeros((1, idx.shape[1], 4), dtype=np.float32)
            logits[0, -1, 3] = 1.0
            return mg.tensor(logits)
    monkeypatch.setattr(evaluate, "load_tokenizer", WordTokenizer)
    monkeypatch.setattr(evaluate, "ensure_inputs", lambda *a, **k: None)  # a fake tokenizer: nothing to fetch
    monkeypatch.setattr(evaluate, "load_model", lambda args: AlwaysD())
    out, png = tmp_path / "mmlu.json", tmp_path / "mmlu.png"
    assert evaluate.main(["mmlu", "--init", "124M", "--shots", "5", "--data", str(test_file),
                          "--dev", str(dev_file), "--out", str(out), "--plot", str(png),
                          "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "anatomy" in stdout and "overall" in stdout
    saved = json.loads(out.read_text())
    assert saved["shots"] == 5 and saved["shots_from"] == "dev" and saved["total"] == 4
    assert saved["correct"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
