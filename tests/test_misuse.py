"""The tasks' command lines misused as a new user would: each case is one clear `error:` line,
a non-zero exit, no traceback, and nothing created or changed that should not be (issue 11)."""
import pytest

from tasks import classify, generate, instruct

TINY = ["--init", "random", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "32",
        "--no-progress"]


def _toy_tsv(path):
    rows = ["ham\thello there friend", "spam\twin money now", "ham\tsee you soon", "spam\tfree prize click"]
    path.write_text("\n".join(rows * 10) + "\n")
    return path


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, needs_tokenizer):
    tmp = tmp_path_factory.mktemp("cls")
    out = tmp / "run"
    assert classify.main(["train", "--data", str(_toy_tsv(tmp / "toy.tsv")), *TINY, "--trainable", "all",
                          "--max-steps", "2", "--eval-every", "2", "--out", str(out)]) == 0
    return out


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("MMLU", "score"))]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def test_classify_init_from_a_classifier_run_is_refused(classify_run, tmp_path, capsys):
    out = tmp_path / "new"
    rc = classify.main(["train", "--data", str(_toy_tsv(tmp_path / "toy.tsv")), "--init", str(classify_run),
                        "--max-steps", "1", "--out", str(out), "--no-progress"])
    assert rc == 2
    _one_error_line(capsys, "GPT2Classifier", "not a GPT-2 language model")
    assert not out.exists()


def test_respond_on_a_classifier_run_is_refused(classify_run, tmp_path, capsys):
    rc = instruct.main(["respond", "--init", str(classify_run), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    _one_error_line(capsys, str(classify_run))
    assert not (tmp_path / "r.json").exists()


def test_generate_from_a_classifier_run_is_refused(classify_run, capsys):
    rc = generate.main(["--init", str(classify_run), "--prompt", "hi", "--max-new-tokens", "2"])
    assert rc == 2
    _one_error_line(capsys, "GPT2Classifier")


# ----------------------------------------------------------------------------- pretrain's run folder

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from tasks import pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# a run whose every flag differs from pretrain's defaults, so `--out R --resume` alone must read them back
RUN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "16", "--batch-size", "3",
       "--lr", "2e-3", "--seed", "5", "--dropout", "0.1", "--eval-batches", "1", "--sample-tokens", "0",
       "--max-steps", "12", "--eval-every", "4"]


def _verdict_cached():
    from minigrad.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")


def _losses(run):
    recs = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in recs if r["type"] == "step"}


def _pretrain_proc(out, *args, log):
    f = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "tasks.pretrain", "--no-progress", "--out", str(out), *args],
                            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, needs_tokenizer):
    _verdict_cached()
    out = tmp_path_factory.mktemp("ref") / "run"
    assert pretrain.main(["--out", str(out), "--no-progress", *RUN]) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_from_the_folder_alone_is_bit_identical(reference_run, tmp_path, sig):
    out = tmp_path / "run"
    proc = _pretrain_proc(out, *RUN, log=tmp_path / "log")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and max(_losses(out), default=0) >= 5:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.002)
    assert proc.wait(timeout=120) in (143, -signal.SIGKILL), (tmp_path / "log").read_text()
    before = (out / "run.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "tasks.pretrain", "--out", str(out), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _losses(out) == _losses(reference_run)
    assert (out / "run.json").read_bytes() == before


def test_resume_with_a_changed_flag_is_refused_and_run_json_untouched(reference_run, capsys):
    before = (reference_run / "run.json").read_bytes()
    for flag, value, name in (("--lr", "1e-3", "--lr 0.001"), ("--n-embd", "32", "--n-embd 32"),
                              ("--seed", "6", "--seed 6"), ("--dataset", "tinyshakespeare", "--dataset")):
        rc = pretrain.main(["--out", str(reference_run), "--resume", flag, value])
        assert rc == 2
        line = _one_error_line(capsys, name)
        assert "differs from this run's" in line
    assert (reference_run / "run.json").read_bytes() == before


def test_extending_a_constant_run_is_recorded_in_history(reference_run, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    assert pretrain.main(["--out", str(out), "--resume", "--max-steps", "14", "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["max_steps"] == 12  # the original stays as it was
    assert run["history"][-1]["changed"] == {"max_steps": 14}
    assert max(_losses(out)) == 14


def test_extending_a_finished_cosine_run_is_refused(tmp_path, capsys, needs_tokenizer):
    _verdict_cached()
    out = tmp_path / "run"
    args = [a for a in RUN]
    args[args.index("--max-steps") + 1] = "2"
    assert pretrain.main(["--out", str(out), "--no-progress", *args, "--schedule", "cosine",
                          "--eval-every", "2"]) == 0
    capsys.readouterr()
    before = (out / "run.json").read_bytes()
    assert pretrain.main(["--out", str(out), "--resume", "--max-steps", "4"]) == 2
    _one_error_line(capsys, "cosine", f"--init {out}")
    assert (out / "run.json").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--batch-size", "-2"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be positive"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--keep", "0"], "--keep must be at least 1"),
])
def test_bad_numbers_are_refused_before_anything_is_created(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert pretrain.main(["--out", str(out), *extra]) == 2
    _one_error_line(capsys, message)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert pretrain.main(["--out", str(f)]) == 2
    _one_error_line(capsys, "is a file")
    assert pretrain.main(["--out", str(f / "run")]) == 2
    _one_error_line(capsys, "is a file")


def test_out_on_a_read_only_file_system_is_refused(tmpfs, capsys):
    mnt = tmpfs("1m", read_only=True)
    assert pretrain.main(["--out", str(mnt / "run")]) == 2
    _one_error_line(capsys, "not writable")


def test_run_json_without_args_and_state_json_without_a_key(reference_run, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({k: v for k, v in run.items() if k != "args"}))
    assert pretrain.main(["--out", str(out), "--resume"]) == 2
    _one_error_line(capsys, "has no 'args'")

    (out / "run.json").write_text(json.dumps(run))
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    state = json.loads((ckpt / "state.json").read_text())
    del state["loader"]
    (ckpt / "state.json").write_text(json.dumps(state))
    assert pretrain.main(["--out", str(out), "--resume", "--max-steps", "12"]) == 1
    _one_error_line(capsys, "state.json lacks 'loader'")


def test_corrupted_weights_are_refused_on_resume(reference_run, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0x55
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    assert pretrain.main(["--out", str(out), "--resume"]) == 1
    _one_error_line(capsys, "model.safetensors is corrupt")


def test_missing_optimizer_state_is_refused_on_resume(reference_run, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    (ckpt / "optimizer.safetensors").unlink()
    assert pretrain.main(["--out", str(out), "--resume"]) == 1
    _one_error_line(capsys, "optimizer.safetensors is missing")


@pytest.mark.usefixtures("needs_tokenizer")
@pytest.mark.parametrize("argv", [["--weights", "/no/such/file.safetensors"]])
def test_old_flag_names_still_work_with_one_notice(argv, capsys):
    assert generate.main([*argv, "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("note: --weights is deprecated; use --init") == 1
    assert "error: --init '/no/such/file.safetensors'" in err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, needs_tokenizer):
    _verdict_cached()
    args = [a for a in RUN if a != "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "tasks.pretrain", "--out", str(tmp_path / "run"), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr + r.stdout  # no carriage returns in a log file
    assert "train: 12/12 (100%)" in r.stderr and "loss" in r.stderr
