"""HellaSwag: scores against a hand computation from the model's log-probabilities, resume after an
interruption, the download with its git blob id check, and the pretraining hook."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import sharp_tiny_gpt2

import minigrad as mg
from files import hub
from tasks import evaluate
from tasks.data import manifest
from tasks.evals import hellaswag

ITEMS = [
    {"ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ctx": "The cat sat", "label": 0,
     "endings": ["on the mat.", "quietly, watching the long grey rain fall over the garden",
                 "up", "down and slept for a very long time"]},
    {"ctx": "She opened the oven and", "label": 2,
     "endings": ["took out the bread.", "sang.", "closed it again without looking inside",
                 "the"]},
    {"ctx": "Every effort moves you", "label": 1,
     "endings": [" forward.", "closer to the goal, one step at a time", "back", "nowhere at all."]},
    {"ctx": "In the kitchen, the chef", "label": 0,
     "endings": ["chops onions.", "is", "walks to the window and looks out at the street",
                 "x"]},
]


def write_items(path, items=ITEMS):
    path.write_text("".join(json.dumps({"ind": i, **it, "split": "val"}) + "\n"
                            for i, it in enumerate(items)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A sharp tiny GPT-2 saved as a weights folder, so that the 4 endings get clearly different scores."""
    return sharp_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "weights", n_ctx=64)


def hand_scores(model, items, tok):
    """Each ending scored on its own (no batch, no padding): log_softmax over the whole row, the
    log-probabilities of the ending's tokens added up; then acc and acc_norm by argmax."""
    sums, counts = [], []
    for it in items:
        ctx = tok.encode(it["ctx"])
        row_sums, row_counts = [], []
        for e in it["endings"]:
            end = tok.encode(" " + e)
            ids = np.array([ctx + end])
            with mg.no_grad():
                logp = mg.functional.log_softmax(model(ids), axis=-1).numpy()[0]   # (T, V)
            row_sums.append(sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(end)))
            row_counts.append(len(end))
        sums.append(row_sums)
        counts.append(row_counts)
    sums, counts = np.array(sums), np.array(counts)
    labels = np.array([it["label"] for it in items])
    acc = float(np.mean(sums.argmax(1) == labels))
    acc_norm = float(np.mean((sums / counts).argmax(1) == labels))
    return sums, counts, acc, acc_norm


def run_cli(*args):
    return evaluate.main(["hellaswag", *args, "--no-progress"])


def test_scores_equal_a_hand_computation(tmp_path, tiny, tok, capsys):
    model, folder = tiny
    path = write_items(tmp_path / "val.jsonl")
    out = tmp_path / "out"
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(out)) == 0
    sums, counts, acc, acc_norm = hand_scores(model, ITEMS, tok)
    # the items are chosen so that the two rules disagree somewhere: both are really checked
    assert not np.array_equal(sums.argmax(1), (sums / counts).argmax(1))
    records = [json.loads(line) for line in (out / "hellaswag.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(ITEMS)))
    np.testing.assert_allclose([r["sum_logprob"] for r in records], sums, rtol=1e-5, atol=1e-4)
    assert [r["num_tokens"] for r in records] == counts.tolist()
    summary = json.loads((out / "hellaswag_results.json").read_text())
    assert summary["n"] == len(ITEMS)
    assert summary["acc"] == pytest.approx(acc) and summary["acc_norm"] == pytest.approx(acc_norm)
    assert f"acc {acc:.4f}  acc_norm {acc_norm:.4f}" in capsys.readouterr().out


def test_scores_match_transformers_gpt2(tmp_path, tiny, tok):
    """The same weights in Hugging Face's GPT2LMHeadModel, scored the way llm.c does it (padded
    batch of 4, masked per-token cross-entropy, sum and mean): same losses, same predictions."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, folder = tiny
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    items = hellaswag.load_hellaswag(write_items(tmp_path / "val.jsonl"))
    ours = hellaswag.evaluate_hellaswag(hellaswag_model(folder), items, tok, progress=False)
    for item, record in zip(items, ours.records):
        ctx = tok.encode(item.ctx)
        rows = [ctx + tok.encode(" " + e) for e in item.endings]
        T = max(len(r) for r in rows)
        tokens = torch.zeros((4, T), dtype=torch.long)
        mask = torch.zeros((4, T))
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r)
            mask[i, len(ctx):len(r)] = 1
        with torch.no_grad():
            logits = ref(tokens).logits.double()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   tokens[:, 1:].reshape(-1), reduction="none")
        losses = (losses.view(4, -1) * mask[:, 1:]).sum(1)
        np.testing.assert_allclose(record["sum_logprob"], -losses.numpy(), rtol=1e-4, atol=1e-4)
        assert record["pred"] == int(losses.argmin())
        assert record["pred_norm"] == int((losses / mask[:, 1:].sum(1)).argmin())


def hellaswag_model(folder):
    from tasks.runs.models import load_language_model
    return load_language_model(str(folder))


def test_long_context_is_cut_from_the_left(tok):
    item = hellaswag.Item(0, "word " * 100, ("a b c", "d", "e f", "g"), 0)
    tokens, ctx_len, lens = hellaswag.render(item, tok, n_ctx=16)
    assert tokens.shape == (4, 16) and ctx_len + max(lens) == 16
    assert tokens[0, ctx_len:].tolist() == tok.encode(" a b c")
    with pytest.raises(hellaswag.HellaSwagDataError, match="no room"):
        hellaswag.render(item, tok, n_ctx=3)


def test_resume_after_interruption_gives_the_same_result(tmp_path, tiny, tok, monkeypatch):
    model, folder = tiny
    path = write_items(tmp_path / "val.jsonl")
    full = tmp_path / "full"
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(full)) == 0
    expected = (full / "hellaswag.jsonl").read_text()

    # 1) a run stopped after 2 items, then the whole set: only the 3 others are scored
    part = tmp_path / "part"
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(part), "--limit", "2") == 0
    assert len((part / "hellaswag.jsonl").read_text().splitlines()) == 2
    scored = []
    real = hellaswag.score_item
    monkeypatch.setattr(hellaswag, "score_item",
                        lambda m, item, t: scored.append(item.index) or real(m, item, t))
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(part)) == 0
    assert scored == [2, 3, 4]
    assert (part / "hellaswag.jsonl").read_text() == expected
    assert (json.loads((part / "hellaswag_results.json").read_text())
            == json.loads((full / "hellaswag_results.json").read_text()))

    # 2) a crash in the middle of writing item 3's line: the torn line is dropped and redone
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "hellaswag_config.json").write_text((full / "hellaswag_config.json").read_text())
    lines = expected.splitlines(keepends=True)
    (torn / "hellaswag.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    scored.clear()
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(torn)) == 0
    assert scored == [3, 4]
    assert (torn / "hellaswag.jsonl").read_text() == expected

    # 3) Ctrl-C in the middle: the finished items are on disk, the rerun completes the set
    ctrl_c = tmp_path / "ctrl_c"

    def interrupt(m, item, t):
        if item.index == 2:
            raise KeyboardInterrupt
        return real(m, item, t)
    monkeypatch.setattr(hellaswag, "score_item", interrupt)
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(ctrl_c)) == 130
    assert (ctrl_c / "hellaswag.jsonl").read_text() == "".join(lines[:2])
    monkeypatch.setattr(hellaswag, "score_item", real)
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(ctrl_c)) == 0
    assert (ctrl_c / "hellaswag.jsonl").read_text() == expected


@pytest.mark.usefixtures("needs_tokenizer")
def test_rerun_with_another_model_is_refused(tmp_path, tiny, capsys):
    _, folder = tiny
    path = write_items(tmp_path / "val.jsonl")
    out = tmp_path / "out"
    assert run_cli("--init", str(folder), "--data", str(path), "--out", str(out), "--limit", "1") == 0
    capsys.readouterr()
    assert run_cli("--init", "124M", "--data", str(path), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "choose another --out" in err and "Traceback" not in err


@pytest.mark.usefixtures("needs_tokenizer")  # the command looks for the tokenizer before it reads the data
@pytest.mark.parametrize("content, message", [
    ('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n', "4 string endings"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 7}\n', "label in 0..3"),
    ("not json\n", "line 1"),
    ("", "no HellaSwag item"),
])
def test_bad_data_is_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert run_cli("--init", "124M", "--data", str(path), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing done before the data is known to be good


# ---------------------------------------------------------------- download


def test_git_blob_id_is_gits():
    import hashlib
    content = b"hello\n"
    assert hashlib.sha1(b"blob 6\0" + content).hexdigest() == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_download_checks_the_git_blob_id(served, cache, monkeypatch, tmp_path):
    root, url = served
    content = write_items(root / "hellaswag_val.jsonl").read_bytes()
    blob = hub.git_blob_id_of(root / "hellaswag_val.jsonl")
    entry = manifest.DATASETS["hellaswag"]
    assert entry.git_blob == "0f5ee25d72216f12317d5d8a7b92deafa423d81e" and entry.sha256 is None

    # a wrong id: refused, nothing kept in the cache
    monkeypatch.setitem(manifest.DATASETS, "hellaswag",
                        dataclasses.replace(entry, url=f"{url}/hellaswag_val.jsonl"))
    with pytest.raises(hub.ChecksumError) as info:
        hellaswag.load_hellaswag()
    assert entry.git_blob in str(info.value) and blob in str(info.value)
    assert not list((cache / "hellaswag").glob("*"))

    # the right id: downloaded, verified, cached, then read
    monkeypatch.setitem(manifest.DATASETS, "hellaswag",
                        dataclasses.replace(entry, url=f"{url}/hellaswag_val.jsonl", git_blob=blob))
    items = hellaswag.load_hellaswag(limit=3)
    assert (cache / "hellaswag" / "hellaswag_val.jsonl").read_bytes() == content
    assert [it.label for it in items] == [3, 0, 2] and items[1].ctx == "The cat sat"

    # offline, with the cache filled: no request needed; with it empty: one clear error
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    assert len(hellaswag.load_hellaswag()) == len(ITEMS)
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(hub.MissingFileError) as info:
        hellaswag.load_hellaswag()
    assert str(tmp_path / "empty" / "hellaswag" / "hellaswag_val.jsonl") in str(info.value)


def test_real_validation_set_when_cached():
    path = manifest.dataset_path("hellaswag")
    if not path.is_file():
        pytest.skip(f"HellaSwag's validation set is not in the data cache ({path})")
    assert hub.git_blob_id_of(path) == manifest.DATASETS["hellaswag"].git_blob
    assert len(hellaswag.load_hellaswag(path)) == 10_042


# ---------------------------------------------------------------- during pretraining


def test_pretrain_scores_hellaswag_every_n_steps(tmp_path, cache, monkeypatch, tok):
    from tasks import pretrain
    from tasks.runs.models import load_run_model
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    (cache / "hellaswag").mkdir(parents=True)
    write_items(cache / "hellaswag" / "hellaswag_val.jsonl")  # the cached validation set
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat and looked at the rain. " * 40)
    out = tmp_path / "run"
    assert pretrain.main(["--text", str(text), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                          "--context", "32", "--batch-size", "2", "--max-steps", "4",
                          "--eval-every", "4", "--sample-tokens", "0", "--no-progress",
                          "--hellaswag-every", "2", "--hellaswag-limit", "4",
                          "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    hs = [r for r in records if r["type"] == "hellaswag"]
    assert [r["step"] for r in hs] == [2, 4] and all(r["hellaswag_n"] == 4 for r in hs)
    # the last one is the final model's score, worked out by hand
    model = load_run_model(out)
    _, _, acc, acc_norm = hand_scores(model, ITEMS[:4], tok)
    assert hs[-1]["hellaswag_acc"] == pytest.approx(acc)
    assert hs[-1]["hellaswag_acc_norm"] == pytest.approx(acc_norm)
    assert (out / "loss_hellaswag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("needs_tokenizer")
def test_pretrain_without_hellaswag_file_fails_before_training(tmp_path, cache, monkeypatch, capsys):
    from tasks import pretrain
    monkeypatch.setenv("MINIGRAD_OFFLINE", "1")
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat. " * 40)
    out = tmp_path / "run"
    assert pretrain.main(["--text", str(text), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                          "--context", "16", "--hellaswag-every", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "hellaswag_val.jsonl" in err and "Traceback" not in err
    assert not out.exists()
