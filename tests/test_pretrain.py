"""tasks.pretrain end to end on a tiny model: it learns, it writes its outputs, it resumes exactly."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from files.hub import cache_dir
from tasks.runs.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--context", "32", "--batch-size", "4",
        "--dropout", "0.1", "--sample-tokens", "0", "--no-progress", "--seed", "7"]

pytestmark = pytest.mark.skipif(not (cache_dir() / "the-verdict.txt").is_file(),
                                reason="the-verdict.txt is not in the data cache")
BACKEND = ["--backend", "numpy"]  # `pytest --backend standin` runs these jobs on the stand-in


@pytest.fixture(autouse=True)
def _task_backend(task_backend, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "BACKEND", ["--backend", task_backend])


def _cmd(out, *extra):
    # a --backend in `extra` comes last, so it wins
    return [sys.executable, "-m", "tasks.pretrain", *BACKEND, *TINY, "--out", str(out), *extra]


def run_pretrain(out, *extra, check=True):
    r = subprocess.run(_cmd(out, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def step_losses(run):
    recs = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in recs if r["type"] == "step"}


def signal_at_step(out, step, sig, *extra):
    """Start a run, send `sig` once metrics.jsonl shows `step`; (process, its output) when it ends."""
    log = out.parent / f"{out.name}.log"  # a file, not a pipe: nobody drains a pipe while we poll
    with open(log, "w") as f:
        proc = subprocess.Popen(_cmd(out, *extra), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and max(step_losses(out), default=0) >= step:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.002)
    proc.wait(timeout=300)
    return proc, log.read_text()


def test_tiny_run_learns_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    run_pretrain(out, "--max-steps", "30", "--eval-every", "10", "--lr", "3e-3")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] < 10.9  # ln(50257) = 10.8 at random
    for key in ("val_loss", "train_ppl", "val_ppl", "tokens_seen", "lr", "tokens_per_s", "epoch"):
        assert key in evals[-1]
    assert (out / "loss.png").stat().st_size > 1000
    config = json.loads((out / "run.json").read_text())["model_config"]
    assert config["n_embd"] == 32 and config["tie_word_embeddings"] is False  # the reference's model
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000020", "step_00000030"]  # --keep 2


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    steps, every = 14, 4
    ref = tmp_path / "ref"
    run_pretrain(ref, "--max-steps", str(steps), "--eval-every", str(every))
    expected = step_losses(ref)
    assert sorted(expected) == list(range(1, steps + 1))

    run = tmp_path / "killed"
    kill_at = random.Random().randint(every + 1, 2 * every - 1)
    proc, _ = signal_at_step(run, kill_at, signal.SIGKILL, "--max-steps", str(steps), "--eval-every", str(every))
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = max(step_losses(run))
    assert done_before < steps

    r = run_pretrain(run, "--max-steps", str(steps), "--eval-every", str(every), "--resume")
    assert "resumed from" in r.stdout + r.stderr
    got = step_losses(run)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == expected  # every loss, before and after the kill, bit for bit


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_then_resume_finishes_exactly(tmp_path, sig, code):
    """Ctrl-C, or SIGTERM as schedulers and `docker stop` send: finish the step, save, exit."""
    args = ("--max-steps", "60", "--eval-every", "100")  # no checkpoint but the one the signal writes
    ref = tmp_path / "ref"
    run_pretrain(ref, *args)

    run = tmp_path / "run"
    proc, output = signal_at_step(run, 3, sig, *args)
    assert proc.returncode == code, output
    assert "interrupted: saved" in output and "--resume" in output and "Traceback" not in output
    stopped = max(step_losses(run))
    assert stopped < 60, "the run ended before Ctrl-C reached it"
    assert [p.name for p in list_checkpoints(run)] == [f"step_{stopped:08d}"]

    run_pretrain(run, *args, "--resume")
    assert step_losses(run) == step_losses(ref)


def test_a_torn_metrics_line_does_not_block_resume(tmp_path):
    args = ("--max-steps", "6", "--eval-every", "3")
    ref = tmp_path / "ref"
    run_pretrain(ref, *args)
    run = tmp_path / "run"
    run_pretrain(run, "--max-steps", "3", "--eval-every", "3")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "step", "step": 4, "lo')  # what a kill in the middle of a write leaves
    run_pretrain(run, *args, "--resume")
    assert step_losses(run) == step_losses(ref)


def test_a_run_json_written_before_model_specs_still_resumes(tmp_path):
    """Runs started before the commands parsed their flags into a ModelSpec have two more keys in
    run.json's args (the defaults of --init random, stashed on the command line then); --resume
    takes no notice of them and continues the run exactly."""
    args = ("--max-steps", "4", "--eval-every", "2")
    ref = tmp_path / "ref"
    run_pretrain(ref, *args)
    run = tmp_path / "run"
    run_pretrain(run, "--max-steps", "2", "--eval-every", "2")
    meta = json.loads((run / "run.json").read_text())
    assert "tie_default" not in meta["args"]
    meta["args"].update(tie_default=False, embedding_std_default=1.0)
    (run / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    run_pretrain(run, *args, "--resume")
    assert step_losses(run) == step_losses(ref)


def test_existing_run_without_resume_is_refused(tmp_path):
    out = tmp_path / "run"
    run_pretrain(out, "--max-steps", "1", "--eval-every", "1")
    r = run_pretrain(out, "--max-steps", "1", check=False)
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("extra, message, code", [  # 2: a usage error; 1: a failure (file, GPU, data)
    (["--dataset", "nope"], "'nope' is unknown; known text datasets: the-verdict, tinyshakespeare", 2),
    (["--dataset", "sms-spam"], "'sms-spam' is not raw text", 2),
    (["--text", "/nonexistent/file.txt"], "/nonexistent/file.txt", 1),
    (["--backend", "cupy"], "GPU", 1),  # without CuPy, or with CuPy but no GPU or driver
    (["--context", "4096"], "context", 1),  # the text is too short for one batch of that context
    (["--dtype", "tf32"], "tf32 is the tensor cores'", 2),  # a CuPy-only mode, refused on the CPU
    (["--tie-embeddings", "--embedding-std", "1"], "scale the logits", 2),
    (["--embedding-std", "0"], "must be positive", 2),
    (["--init", "124M", "--no-tie-embeddings"], "brings its own weights", 2),
])
def test_bad_input_is_one_clear_error(tmp_path, extra, message, code):
    if extra[:2] == ["--backend", "cupy"]:
        import minigrad
        if minigrad.gpu_available():
            pytest.skip("a GPU is present: cupy is a valid backend here")
    if extra[:2] == ["--dtype", "tf32"] and BACKEND[1] == "cupy":
        pytest.skip("tf32 is valid on --backend cupy")
    r = subprocess.run(_cmd(tmp_path / "run", "--max-steps", "1", *extra), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == code, r.stderr
    assert message.lower() in r.stderr.lower()
    assert "Traceback" not in r.stderr


def test_empty_text_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = subprocess.run(_cmd(tmp_path / "run", "--text", str(empty)), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
