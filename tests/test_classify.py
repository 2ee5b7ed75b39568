"""tasks.classify: the book's split of the SMS data, which token the head reads, what training
may change (frozen, last block, LoRA), a tiny run that learns and predicts, and bad input."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from tasks import classify
from gpt2.classifier import GPT2Classifier
from gpt2.registry import build_model
from tasks.classify import classify_loss, set_trainable
from tasks.data.labelled import (PAD_ID, balance, class_names, confusion_matrix, longest,
                                 per_class_scores, read_labelled_file, split_rows)
from tasks.data.loaders import BatchLoader
from tasks.data.manifest import dataset_path
from tasks.training.config import TrainConfig
from tasks.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--init", "random", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--context", "32",
        "--no-progress"]


def tiny_gpt(**kw) -> GPT2:
    return GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=16, **kw))


def toy_tsv(path: Path, n: int = 400, seed: int = 1) -> Path:
    """Separable toy data: spam rows, and only they, contain the word "prize"."""
    r = random.Random(seed)
    words = "the a meeting lunch call today tomorrow home work see you later ok thanks friday dinner".split()
    lines = []
    for i in range(n):
        w = [r.choice(words) for _ in range(r.randint(3, 12))]
        if i % 2:
            w.insert(r.randint(0, len(w)), "prize")
        lines.append(f"{'spam' if i % 2 else 'ham'}\t{' '.join(w)}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- data

@pytest.mark.skipif(not dataset_path("sms-spam").is_file(), reason="SMS Spam Collection not in the data cache")
def test_sms_split_counts_and_padding_length_match_the_book():
    from gpt2.tokenizer import get_tokenizer
    data = read_labelled_file(dataset_path("sms-spam"))
    assert len(data.rows) == 5574 and not data.problems
    classes = class_names(data.rows)
    assert classes == ["ham", "spam"]
    rows = balance(data.rows, classes, seed=123)
    assert [sum(r[0] == c for r in rows) for c in classes] == [747, 747]
    splits = split_rows(rows, seed=123)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [1045, 149, 300]
    assert sorted(sum(splits.values(), [])) == sorted(rows)  # a partition of the balanced rows
    assert longest(splits["train"], get_tokenizer()) == 120
    sizes = [len(BatchLoader(splits["train"], 8, drop_last=True)), len(BatchLoader(splits["validation"], 8)),
             len(BatchLoader(splits["test"], 8))]
    assert sizes == [130, 19, 38]


def test_malformed_rows_are_reported_with_line_numbers(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("ham\thello\nno tab\nspam\t \n\tno label\n\nspam\twin\neggs\tx\n")
    data = read_labelled_file(f, labels=["ham", "spam"])
    assert data.rows == [("ham", "hello"), ("spam", "win")]
    assert [n for n, _ in data.problems] == [2, 3, 4, 7]
    assert "line 7: unknown label 'eggs'" in data.problem_summary()
    assert "and 2 more" in data.problem_summary(limit=2)


def test_confusion_matrix_and_per_class_scores():
    m = confusion_matrix(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 1, 1, 1]), 2)
    assert m.tolist() == [[1, 2], [0, 2]]
    s = per_class_scores(m, ["ham", "spam"])["spam"]
    assert (s["precision"], s["recall"], s["support"]) == (0.5, 1.0, 2)
    assert s["f1"] == pytest.approx(2 / 3)
    assert per_class_scores(np.zeros((2, 2), dtype=int), ["a", "b"])["a"]["f1"] == 0.0  # no 0/0


# ----------------------------------------------------------------------------- the model

def test_head_reads_the_right_token_for_both_pools():
    ids = np.array([[5, 6, 7, PAD_ID, PAD_ID], [8, 9, 10, 11, 12]])
    for pool, positions in (("last", [4, 4]), ("last-real", [2, 4])):
        mg.manual_seed(0)
        model = GPT2Classifier(tiny_gpt(), 3, pool).eval()
        with mg.no_grad():
            got = model(ids).data
            h = model.gpt.hidden_states(ids).data
        expected = h[[0, 1], positions] @ model.head.weight.data + model.head.bias.data
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        with mg.no_grad():
            alone = model(ids[0, :3]).data[0]  # the same text without padding
        same = np.allclose(alone, got[0], rtol=1e-5, atol=1e-6)
        assert same == (pool == "last-real"), pool  # padding matters only to "last"


def test_an_untied_lm_head_is_dropped():
    """A pretrain run with its own LM head: the classifier never reads it, so it is not kept."""
    model = GPT2Classifier(tiny_gpt(tie_word_embeddings=False), 2)
    assert model.gpt.lm_head is None and model.config.tie_word_embeddings
    assert not any(n.startswith("gpt.lm_head") for n, _ in model.named_parameters())
    rebuilt = GPT2Classifier(GPT2(model.config), 2)  # what a run.json's model_config builds back
    rebuilt.load_state_dict(model.state_dict())


def _snapshot(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


def _one_step(model, tmp_path):
    x = np.random.default_rng(0).integers(0, 1000, size=(8, 6))
    loader = BatchLoader(list(zip(x, np.arange(8) % 2)), 4, shuffle=True, drop_last=True)
    cfg = TrainConfig(epochs=1, lr=1e-2, max_steps=1, progress=False)
    Trainer(model, loader, classify_loss, lambda m: {}, tmp_path, cfg).fit()


def test_frozen_layers_get_no_gradients_and_do_not_change(tmp_path):
    model = GPT2Classifier(tiny_gpt(), 2)
    set_trainable(model, "last-block")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("gpt.h.1.", "gpt.ln_f.", "head."))}
    loss = classify_loss(model, (np.array([[1, 2, 3], [4, 5, 6]]), np.array([0, 1])))
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    model.zero_grad()

    before = _snapshot(model)
    _one_step(model, tmp_path)
    for n, p in model.named_parameters():
        changed = not np.array_equal(p.data, before[n])
        assert changed == (n in trainable), n


def test_lora_trains_only_adapters_and_head_and_reloads(tmp_path):
    model = GPT2Classifier(tiny_gpt(), 2, pool="last-real")
    set_trainable(model, "lora", lora_rank=4, lora_alpha=8)
    names = {n for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if "lora_" in n or n.startswith("head.")}
    assert len([n for n in trainable if n.endswith("lora_A")]) == 2 * 4  # 4 Linear layers a block
    before = _snapshot(model)
    _one_step(model, tmp_path)
    changed = {n for n, p in model.named_parameters() if not np.array_equal(p.data, before[n])}
    assert changed <= trainable
    assert {"head.weight", "gpt.h.0.attn.c_attn.lora_B"} <= changed

    # what load_run_model does with run.json: the registry's kind, adapters as data
    run = {"model_kind": "gpt2-classifier", "model_config": model.config.to_dict(),
           "classifier": {"labels": ["a", "b"], "pool": "last-real", "trainable": "lora"},
           "lora": {"rank": 4, "alpha": 8}}
    rebuilt = build_model(run)
    rebuilt.load_state_dict(model.state_dict())  # strict: every name matches
    ids = np.array([[1, 2, 3, PAD_ID]])
    with mg.no_grad():
        np.testing.assert_allclose(rebuilt.eval()(ids).data, model.eval()(ids).data, rtol=1e-6)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.usefixtures("needs_tokenizer")
def test_tiny_run_learns_a_toy_task_and_predicts(tmp_path, capsys):
    out = tmp_path / "run"
    rc = classify.main(["train", "--data", str(toy_tsv(tmp_path / "toy.tsv")), *TINY, "--trainable", "all",
                        "--pool", "last-real", "--lr", "2e-3", "--epochs", "3", "--eval-every", "20",
                        "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == {"train": 280, "validation": 40, "test": 80}
    assert results["before"]["validation"]["accuracy"] < 0.8
    assert results["after"]["validation"]["accuracy"] >= 0.9
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [20, 40, 60, 80, 100, 105]  # 35 steps an epoch
    assert {"train_acc", "val_acc", "train_loss", "val_loss"} <= set(evals[-1])
    assert evals[-1]["tokens_seen"] == 105 * 8  # examples seen
    for name in ("train.csv", "validation.csv", "test.csv", "loss.png", "accuracy.png", "confusion_test.png"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "test.csv").read_text().splitlines()) == 81
    run = json.loads((out / "run.json").read_text())
    assert run["model_kind"] == "gpt2-classifier" and "model_builder" not in run
    table = capsys.readouterr().out
    assert "acc after" in table and "precision" in table

    # predict on the saved checkpoint gives the test accuracy that training reported
    test_rows = [line.split(",", 1) for line in (out / "test.csv").read_text().splitlines()[1:]]
    (tmp_path / "texts.txt").write_text("\n".join(text for _, text in test_rows) + "\n")
    assert classify.main(["predict", "--init", str(out), "--file", str(tmp_path / "texts.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 80
    labels = [line.split("\t")[0] for line in lines]
    probs = [float(line.split("\t")[1]) for line in lines]
    assert all(0.5 <= p <= 1.0 for p in probs)
    accuracy = np.mean([got == want for got, (want, _) in zip(labels, test_rows)])
    assert accuracy == pytest.approx(results["after"]["test"]["accuracy"])

    assert classify.main(["predict", "--init", str(out), "ok see you at lunch prize",
                          "thanks see you tomorrow"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["spam", "ham"]


# ----------------------------------------------------------------------------- bad input

def _fails(capsys, argv, code=1):
    rc = classify.main(argv)
    err = capsys.readouterr().err
    assert rc == code
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.usefixtures("needs_tokenizer")
def test_bad_input_is_one_clear_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    assert "no such file" in _fails(capsys, ["train", "--data", str(tmp_path / "nope.tsv"), *TINY, *out])
    (tmp_path / "empty.tsv").write_text("\n\n")
    assert "is empty" in _fails(capsys, ["train", "--data", str(tmp_path / "empty.tsv"), *TINY, *out])
    (tmp_path / "junk.tsv").write_text("just words\nmore words\n")
    assert "no valid" in _fails(capsys, ["train", "--data", str(tmp_path / "junk.tsv"), *TINY, *out])
    (tmp_path / "one.tsv").write_text("ham\ta\nham\tb\n")
    assert "only one label" in _fails(capsys, ["train", "--data", str(tmp_path / "one.tsv"), *TINY, *out])

    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n" + toy_tsv(tmp_path / "t.tsv", n=100).read_text() + "spam\t\n")
    err = _fails(capsys, ["train", "--data", str(bad), "--strict", *TINY, *out])
    assert "line 1: no tab" in err and "line 102: empty text" in err
    assert not (tmp_path / "out").exists()  # nothing written

    # without --strict the rows are skipped with a warning, and training goes on
    assert classify.main(["train", "--data", str(bad), *TINY, "--max-steps", "1", *out]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "2 malformed" in err and "line 1" in err and "line 102" in err
    # the run folder is taken now
    assert "already holds a run" in _fails(capsys, ["train", "--data", str(bad), *TINY, *out], code=2)
    assert "no such run folder" in _fails(capsys, ["predict", "--init", str(tmp_path / "nope"), "hi"])


def test_unknown_option_exits_2_without_traceback():
    r = subprocess.run([sys.executable, "-m", "tasks.classify", "train", "--no-such-flag"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--no-such-flag" in r.stderr
    assert "Traceback" not in r.stderr
