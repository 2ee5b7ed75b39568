"""Offline with an empty cache, a command names EVERY file it needs in one error (the tokenizer,
its data, the official weights), instead of one per run; it exits 1 and writes nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a command, and a piece of each file's path its one error must name
CASES = {
    "pretrain": (["tasks.pretrain", "--out", "run"], ["gpt2/encoder.json", "the-verdict.txt"]),
    "pretrain --init 124M": (["tasks.pretrain", "--init", "124M", "--out", "run"],
                             ["gpt2/encoder.json", "the-verdict.txt", "weights/gpt2/model.safetensors"]),
    "classify train": (["tasks.classify", "train", "--out", "run"],
                       ["gpt2/encoder.json", "sms", "weights/gpt2/model.safetensors"]),
    "instruct train": (["tasks.instruct", "train", "--out", "run"],
                       ["gpt2/encoder.json", "instruction-data.json", "weights/gpt2-medium/model.safetensors"]),
    "evaluate mmlu": (["tasks.evaluate", "mmlu", "--init", "124M"],
                      ["gpt2/encoder.json", "mmlu/mmlu.jsonl", "weights/gpt2/model.safetensors"]),
    "generate": (["tasks.generate", "--init", "124M"], ["gpt2/encoder.json", "weights/gpt2/model.safetensors"]),
    "prepare": (["tasks.prepare", "--corpus", "tinyshakespeare"], ["gpt2/encoder.json", "tinyshakespeare/input.txt"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_error_names_every_missing_file(case, tmp_path):
    argv, files = CASES[case]
    env = {**os.environ, "MINIGRAD_OFFLINE": "1", "MINIGRAD_DATA_DIR": str(tmp_path / "cache"),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"), "PYTHONPATH": str(ROOT)}
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", *argv], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert f"{len(files)} inputs of this command are missing" in r.stderr, r.stderr
    for f in files:
        assert f in r.stderr, (f, r.stderr)
    assert list(work.iterdir()) == []          # no run folder, no output
    assert not (tmp_path / "cache").exists()   # nothing half-downloaded either
