"""tasks.instruct: the split, the prompt, the collate masks, bad input, and tiny end-to-end runs
of train / respond / chat (random 2-layer models, a few steps each)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from files.hub import cache_dir
from gpt2.tokenizer import EOT_ID
from tasks.data.alpaca import (InstructionDataError, InstructionLoader, collate, format_alpaca_prompt, format_example,
                               format_prompt, load_records, split_records)
from tasks.instruct import parse_args, response_text
from tasks.runs.models import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--init", "random", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--context", "128",
        "--batch-size", "4", "--seed", "7", "--sample-tokens", "3", "--no-progress"]
HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.")


def _records(n=40):
    words = ["apple", "river", "green", "seven", "cloud", "stone", "quick", "light"]
    return [{"instruction": f"Repeat the word {words[i % 8]}.",
             "input": "" if i % 3 else f"case {i}",
             "output": f"{words[i % 8]} {words[i % 8]}"} for i in range(n)]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records()))
    return path


def _run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tasks.instruct", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, input=stdin)


def _ok(*args, stdin=None):
    r = _run(*args, stdin=stdin)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _metrics(run, kind):
    recs = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in recs if r["type"] == kind]


# ----------------------------------------------------------------------------- split and prompt


@pytest.mark.skipif(not (cache_dir() / "instruction-data.json").is_file(),
                    reason="instruction-data.json is not in the data cache")
def test_split_of_the_real_data_is_the_books():
    records = load_records(cache_dir() / "instruction-data.json")
    train, val, test = split_records(records)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert test == records[935:1045] and val == records[1045:]  # train, test, then val
    # the book's 110 test records, as shipped with its model responses
    book = json.loads((cache_dir() / "instruction-data-with-response.json").read_text())
    assert [r["instruction"] for r in test] == [r["instruction"] for r in book]
    shuffled = split_records(records, seed=123)
    assert [len(s) for s in shuffled] == [935, 55, 110]
    assert shuffled[2] != test and shuffled == split_records(records, seed=123)


def test_split_counts_of_small_sets():
    assert [len(s) for s in split_records(_records(40))] == [34, 2, 4]
    assert [len(s) for s in split_records(_records(10))] == [8, 1, 1]


def test_prompt_text_with_and_without_input():
    rec = {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "It sat."}
    assert format_example(rec) == (HEADER + "\n\n### Instruction:\nRewrite the sentence."
                                   "\n\n### Input:\nThe cat sat.\n\n### Response:\nIt sat.")
    for no_input in ({"instruction": "Say hi.", "input": "", "output": "Hi."},
                     {"instruction": "Say hi.", "output": "Hi."}):
        assert format_example(no_input) == HEADER + "\n\n### Instruction:\nSay hi.\n\n### Response:\nHi."
        assert format_prompt(no_input) == HEADER + "\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    # one prompt for training and for the judge
    assert format_prompt(rec).startswith(format_alpaca_prompt(rec))


@pytest.mark.usefixtures("needs_tokenizer")
def test_response_text_stops_at_eos_and_drops_the_header():
    from gpt2.tokenizer import get_tokenizer
    tok = get_tokenizer()
    ids = tok.encode_ordinary("### Response:\n  Paris is the capital. ") + [EOT_ID] + tok.encode_ordinary("junk")
    assert response_text(tok, ids) == "Paris is the capital."
    assert response_text(tok, tok.encode_ordinary(" no end")) == "no end"
    assert response_text(tok, [EOT_ID]) == ""


# ----------------------------------------------------------------------------- collate


def test_collate_pads_keeps_first_eos_and_ignores_the_rest():
    items = [([1, 2, 3, 4, 5], 2), ([6, 7], 1)]
    x, y = collate(items)
    E, I = EOT_ID, -100
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E]]
    assert y.tolist() == [[2, 3, 4, 5, E], [7, E, I, I, I]]
    assert x.dtype == y.dtype == np.int64


def test_collate_masks_instructions_and_caps_length():
    items = [([10, 11, 12, 13, 14, 15], 3), ([20, 21, 22], 2)]
    E, I = EOT_ID, -100
    x, y = collate(items, mask_instructions=True)
    # prompt tokens 11, 12 (targets 0, 1) are ignored; the first response token 13 is kept
    assert y.tolist() == [[I, I, 13, 14, 15, E], [I, 22, E, I, I, I]]
    assert x.tolist() == [[10, 11, 12, 13, 14, 15], [20, 21, 22, E, E, E]]
    x, y = collate(items, max_length=4)
    assert x.shape == y.shape == (2, 4)
    assert y.tolist() == [[11, 12, 13, 14], [21, 22, E, I]]


def test_loader_batches_vary_in_width_and_resume_exactly():
    items = [(list(range(1, n + 1)), 1) for n in (3, 9, 4, 6, 2, 8, 5, 7)]
    a = InstructionLoader(items, 2, shuffle=True, drop_last=True, seed=3)
    widths = {a.next_batch()[0].shape[1] for _ in range(4)}
    assert len(widths) > 1
    a.next_batch()
    b = InstructionLoader(items, 2, shuffle=True, drop_last=True, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, message", [
    ("[{\"instruction\": \"a\", \"output\": \"b\"}, 7]", "record 1 of"),
    ("[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"c\"}]", "record 1 of .* 'output'"),
    ("[{\"output\": \"b\"}]", "record 0 of .* 'instruction'"),
    ("[{\"instruction\": \"a\", \"output\": 3}]", "record 0 of .* 'output' must be a string"),
    ("{\"instruction\": \"a\"}", "non-empty JSON list"),
    ("not json at all", "not a JSON file"),
])
def test_bad_records_are_reported(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InstructionDataError, match=message):
        load_records(path)


@pytest.mark.usefixtures("needs_tokenizer")  # the command looks for the tokenizer before it reads the data
def test_bad_input_exits_1_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, {"input": "x", "output": "y"}]')
    notjson = tmp_path / "notjson.json"
    notjson.write_text("instruction, output\n")
    for args in (["train", *TINY, "--data", bad, "--out", tmp_path / "r1"],
                 ["train", *TINY, "--data", notjson, "--out", tmp_path / "r2"],
                 ["train", *TINY, "--data", tmp_path / "missing.json", "--out", tmp_path / "r3"],
                 ["respond", "--init", tmp_path / "nothing"]):
        r = _run(*args)
        assert r.returncode == 1, r.stderr  # a failure (the data, the run folder), not a usage error
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "record 1" in _run("train", *TINY, "--data", bad, "--out", tmp_path / "r4").stderr
    assert not (tmp_path / "r1").exists()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.usefixtures("needs_tokenizer")
def test_train_respond_and_chat(tmp_path, data_file):
    run = tmp_path / "run"
    r = _ok("train", *TINY, "--data", data_file, "--out", run, "--max-steps", "6", "--eval-every", "3",
            "--lr", "3e-3")
    assert "sample:" in r.stdout
    evals = _metrics(run, "eval")
    assert [e["step"] for e in evals] == [3, 6]
    assert all(np.isfinite(e["train_loss"]) and np.isfinite(e["val_loss"]) for e in evals)
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]
    assert (run / "loss.png").stat().st_size > 1000
    info = json.loads((run / "run.json").read_text())["data"]
    assert info["split"] == {"train": 34, "val": 2, "test": 4} and info["split_seed"] is None

    out = tmp_path / "responses.json"
    _ok("respond", "--init", run, "--out", out, "--max-new-tokens", "4", "--no-progress")
    answered = json.loads(out.read_text())
    assert [a["instruction"] for a in answered] == [r["instruction"] for r in split_records(_records())[2]]
    assert all(isinstance(a["model_response"], str) for a in answered)
    # interrupted after one answer (and mid-way through writing a second): the rerun keeps the first
    partial = tmp_path / "again.json.partial.jsonl"
    partial.write_text(json.dumps({**answered[0], "model_response": "KEPT"}) + "\n" + '{"instruction": "Na')
    r = _ok("respond", "--init", run, "--out", tmp_path / "again.json", "--max-new-tokens", "4",
            "--no-progress")
    assert "1 records already answered" in r.stdout
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == [{**answered[0], "model_response": "KEPT"}] + answered[1:]
    assert not partial.exists()
    # a --out that cannot be written is refused before any answer is computed
    (tmp_path / "afile").write_text("")
    r = _run("respond", "--init", run, "--out", tmp_path / "afile" / "r.json")
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr

    # chat prints, for each line, exactly the greedy tokens generate() gives (then a newline)
    from gpt2.generate import generate
    from gpt2.tokenizer import get_tokenizer
    from tasks.runs.models import load_run_model
    tok, model = get_tokenizer(), load_run_model(run)
    lines = ["Repeat the word apple.", "Name a color."]
    expected = ""
    for line in lines:
        ids = tok.encode_ordinary(format_prompt({"instruction": line}))
        new = [int(t) for t in generate(model, [ids], 5, eos_id=EOT_ID)[0, len(ids):]]
        expected += tok.decode(new[:new.index(EOT_ID)] if EOT_ID in new else new) + "\n"
    r = _ok("chat", "--init", run, "--max-new-tokens", "5", stdin="\n".join(lines) + "\n")
    assert r.stdout == expected and r.stdout.count("\n") >= 2


@pytest.mark.usefixtures("needs_tokenizer")
def test_resume_continues_exactly(tmp_path, data_file):
    common = ["train", *TINY, "--data", data_file, "--eval-every", "2", "--sample-tokens", "0"]
    _ok(*common, "--out", tmp_path / "ref", "--max-steps", "6")
    run = tmp_path / "run"
    _ok(*common, "--out", run, "--max-steps", "4")
    r = _ok(*common, "--out", run, "--max-steps", "6", "--resume")
    assert "(step 4)" in r.stdout + r.stderr
    ref = {m["step"]: m["loss"] for m in _metrics(tmp_path / "ref", "step")}
    got = {m["step"]: m["loss"] for m in _metrics(run, "step")}
    assert sorted(got) == list(range(1, 7)) and got == ref
    # without --resume an existing run is refused
    assert _run(*common, "--out", run, "--max-steps", "6").returncode == 2


@pytest.mark.usefixtures("needs_tokenizer")
def test_lora_trains_only_the_adapters(tmp_path, data_file):
    run = tmp_path / "lora"
    argv = ["train", *TINY, "--data", data_file, "--out", run, "--max-steps", "3", "--eval-every", "3",
            "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "8"]
    r = _ok(*argv)
    assert "LoRA: 8 linear layers" in r.stdout
    meta = json.loads((run / "run.json").read_text())
    assert meta["lora"] == {"rank": 4, "alpha": 8.0} and meta["model_kind"] == "gpt2"

    ckpt = next((run / "checkpoints").iterdir())
    trained = mg.load(ckpt / "model.safetensors")
    base = build_model(ModelSpec.from_flags(vars(parse_args([str(a) for a in argv]))))  # the same random start
    start = base.state_dict()
    adapters = [k for k in trained if "lora_" in k]
    assert len(adapters) == 16
    for k, v in start.items():
        assert np.array_equal(np.asarray(trained[k]), np.asarray(v)), f"{k} changed"
    assert any(np.abs(np.asarray(trained[k])).max() > 0 for k in adapters if k.endswith("lora_B"))

    # the run loads back (the registry's kind, adapters from run.json) and answers
    from tasks.runs.models import load_run_model
    model = load_run_model(run)
    assert sum(isinstance(m, nn.LoRALinear) for m in model.modules()) == 8
    out = tmp_path / "r.json"
    _ok("respond", "--init", run, "--split", "val", "--out", out, "--max-new-tokens", "2",
        "--no-progress")
    assert len(json.loads(out.read_text())) == 2
