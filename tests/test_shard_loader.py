"""tasks.data.shards.ShardLoader and `tasks.pretrain --data`: the same batches as the in-memory loader
on the-verdict, every window once per epoch, exact resume, training on prepared shards with a
bit-identical resume after SIGKILL, and damaged shards refused with one clear message."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tasks import pretrain
from tasks.data import loaders, manifest
from tasks.data.shards import ShardLoader, find_shards, write_shard
from tasks.data.text import text_shards, train_val_split_text
from test_pretrain import ROOT, run_pretrain, signal_at_step, step_losses

VERDICT = manifest.dataset_path("the-verdict")
needs_verdict = pytest.mark.skipif(not VERDICT.is_file(), reason="the-verdict.txt is not in the data cache")


@pytest.fixture(scope="module")
def tokenizer():
    from gpt2.tokenizer import get_tokenizer
    return get_tokenizer()


@needs_verdict
@pytest.mark.parametrize("context, batch_size, seed", [(256, 2, 123), (32, 4, 7)])
def test_the_verdict_batches_are_those_of_the_in_memory_loader(tmp_path, monkeypatch, tokenizer,
                                                               context, batch_size, seed):
    """What tasks.pretrain served before shards (TextWindows + BatchLoader over the whole token
    list, split 90/10 by characters) against the cached shards + ShardLoader it uses now."""
    text = VERDICT.read_text(encoding="utf-8")
    train_text, val_text = train_val_split_text(text, 0.9)
    old_train = loaders.BatchLoader(loaders.TextWindows(tokenizer.encode(train_text), context, context),
                                 batch_size, shuffle=True, drop_last=True, seed=seed)
    old_val = loaders.BatchLoader(loaders.TextWindows(tokenizer.encode(val_text), context, context), batch_size)

    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path))
    folder = text_shards(text, tokenizer, 0.9)
    assert folder.parent == tmp_path / "shards"
    assert text_shards(text, tokenizer, 0.9) == folder  # prepared once, then reused
    val_paths, train_paths = find_shards(folder)
    new_train = ShardLoader.from_files(train_paths, context, batch_size, shuffle=True, drop_last=True, seed=seed)
    new_val = ShardLoader.from_files(val_paths, context, batch_size)

    assert (len(new_train), len(new_val)) == (len(old_train), len(old_val))
    for _ in range(3):  # three epochs: a new permutation each
        for (x0, y0), (x1, y1) in zip(old_train, new_train, strict=True):
            assert x1.dtype == np.int32 and x1.shape == (batch_size, context)
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(y0, y1)
    for (x0, y0), (x1, y1) in zip(old_val.peek(), new_val.peek(), strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def _shards(lengths, offset=0):
    """Shards whose tokens are their global positions (so a window's first token says where it is)."""
    out, pos = [], offset
    for n in lengths:
        out.append(np.arange(pos, pos + n, dtype=np.uint16))
        pos += n
    return out


def test_in_order_batches_are_contiguous_spans_as_llmc():
    shard = _shards([1000])[0]
    loader = ShardLoader([shard], context=8, batch_size=4)
    for p in range(3):
        x, y = loader.next_batch()
        span = shard[p * 32:p * 32 + 33].astype(np.int32)  # B*T+1 tokens
        np.testing.assert_array_equal(x.reshape(-1), span[:-1])
        np.testing.assert_array_equal(y.reshape(-1), span[1:])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=5), context=st.integers(1, 6),
       stride=st.integers(1, 7), batch_size=st.integers(1, 5), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**32), stop=st.integers(0, 60))
def test_every_window_once_per_epoch_and_exact_resume(lengths, context, stride, batch_size, shuffle,
                                                      drop_last, seed, stop):
    shards = _shards(lengths)
    windows = sum(len(range(0, max(n - context, 0), stride)) for n in lengths)
    if windows == 0 or (drop_last and windows < batch_size):
        with pytest.raises(ValueError):
            ShardLoader(shards, context, batch_size, stride, shuffle, drop_last, seed)
        return
    ref = ShardLoader(shards, context, batch_size, stride, shuffle, drop_last, seed)
    epochs = [[(x.tolist(), y.tolist()) for x, y in ref] for _ in range(3)]
    for batches in epochs:
        firsts = sorted(r[0] for x, _ in batches for r in x)
        assert len(firsts) == len(set(firsts)) == (windows // batch_size * batch_size if drop_last else windows)
        for x, y in batches:
            for rx, ry in zip(x, y):
                assert rx == list(range(rx[0], rx[0] + context)) and ry == [t + 1 for t in rx]
    if shuffle and windows > 3:
        assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    expected = sum(epochs, [])
    # stop after `stop` batches, save as JSON, restore into a new loader with another seed
    stop = min(stop, len(expected))
    first = ShardLoader(shards, context, batch_size, stride, shuffle, drop_last, seed)
    got = [(x.tolist(), y.tolist()) for x, y in (first.next_batch() for _ in range(stop))]
    second = ShardLoader(shards, context, batch_size, stride, shuffle, drop_last, seed=0)
    list(second.peek(2))  # an evaluation peek before the restore changes nothing
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    while len(got) < len(expected):
        got.append(tuple(a.tolist() for a in second.next_batch()))
        list(second.peek())  # nor does one in the middle of an epoch
    assert got == expected


def test_shuffle_permutes_shard_order_per_epoch():
    loader = ShardLoader(_shards([40] * 6), context=4, batch_size=9, shuffle=True, seed=3)
    orders = []
    for _ in range(4):
        firsts = [int(r[0]) for x, _ in loader for r in x]
        orders.append(tuple(dict.fromkeys(f // 40 for f in firsts)))  # shards in the order served
        assert sorted(orders[-1]) == list(range(6))
    assert len(set(orders)) > 1


def test_state_of_another_dataset_is_refused():
    state = ShardLoader(_shards([100, 50]), context=4, batch_size=2).state_dict()
    with pytest.raises(ValueError, match="num_tokens|num_samples"):
        ShardLoader(_shards([100, 60]), context=4, batch_size=2).load_state_dict(state)


# ----------------------------------------------------------------------------- tasks.pretrain --data


@pytest.fixture(scope="module")
def verdict_shards(tmp_path_factory):
    if not VERDICT.is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    out = tmp_path_factory.mktemp("shards") / "verdict"
    r = subprocess.run([sys.executable, "-m", "tasks.prepare", "--input", str(VERDICT), "--out", str(out),
                        "--shard-tokens", "1200", "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_pretrain_on_prepared_shards_learns(tmp_path, verdict_shards):
    out = tmp_path / "run"
    run_pretrain(out, "--data", str(verdict_shards), "--max-steps", "30", "--eval-every", "10", "--lr", "3e-3",
         "--eval-batches", "3")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] < 10.9
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["tokens_seen"] == 30 * 4 * 32 and evals[-1]["tokens_per_s"] > 0


def test_pretrain_on_shards_resumes_bit_identically_after_sigkill(tmp_path, verdict_shards):
    args = ("--data", str(verdict_shards), "--max-steps", "14", "--eval-every", "4", "--eval-batches", "2")
    ref = tmp_path / "ref"
    run_pretrain(ref, *args)
    expected = step_losses(ref)
    assert sorted(expected) == list(range(1, 15))
    run = tmp_path / "killed"
    proc, _ = signal_at_step(run, 6, signal.SIGKILL, *args)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert max(step_losses(run)) < 14
    r = run_pretrain(run, *args, "--resume")
    assert "resumed from" in r.stdout + r.stderr
    assert step_losses(run) == expected


def _damaged(tmp_path, case):
    d = tmp_path / "shards"
    d.mkdir()
    if case == "empty folder":
        return d, "holds no"
    if case == "no train shard":
        write_shard(d / "x_val_000000.bin", np.arange(100))
        return d, "training shards"
    write_shard(d / "x_val_000000.bin", np.arange(100))
    write_shard(d / "x_train_000001.bin", np.arange(100))
    raw = bytearray((d / "x_train_000001.bin").read_bytes())
    if case == "wrong magic":
        raw[0:4] = np.int32(7).tobytes()
        message = "magic number 7"
    else:  # a token count that disagrees with the size
        raw = raw[:-10]
        message = "header says 100 tokens"
    (d / "x_train_000001.bin").write_bytes(bytes(raw))
    return d, message


@pytest.mark.usefixtures("needs_tokenizer")
@pytest.mark.parametrize("case", ["empty folder", "no train shard", "wrong magic", "truncated"])
def test_damaged_or_missing_shards_are_one_clear_error(tmp_path, capsys, case):
    folder, message = _damaged(tmp_path, case)
    code = pretrain.main(["--data", str(folder), "--out", str(tmp_path / "run"), "--n-layer", "1",
                          "--n-head", "1", "--n-embd", "8", "--context", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("needs_tokenizer")
def test_missing_data_folder_is_one_clear_error(tmp_path, capsys):
    assert pretrain.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 1
    assert "no such folder" in capsys.readouterr().err
