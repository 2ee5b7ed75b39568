"""The run folder's contract under concurrency and signals (issue 20): one process per folder,
a run stopped before its first checkpoint resumes with each step logged once, a stop is honoured
within one micro-batch (or one evaluation batch), and Ctrl-C or SIGTERM at any moment, the
heavy imports included, is one line and 130 / 143 in every command.

The commands run as forked children of this process (tests/forkrun.py) where they can, and as
`python -m` where the moment tested is the interpreter's start.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forkrun import Child, run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--no-progress", "--seed", "5", "--eval-batches", "1"]
PRE = [*TINY, "--context", "16", "--batch-size", "2", "--sample-tokens", "0", "--max-steps", "4", "--eval-every", "2"]
CLS = ["--init", "random", *TINY, "--context", "32", "--trainable", "all", "--batch-size", "4", "--max-steps", "4",
       "--eval-every", "2"]
MESSAGE = ("error:", "interrupted:", "interrupted again:")


def env(**extra) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGRAD_OFFLINE": "1", **extra}
    for name in ("MINIGRAD_TRACEBACK", "MINIGRAD_TEST_PAUSE_AT", "MINIGRAD_TEST_PAUSE_FILE"):
        if name not in extra:
            e.pop(name, None)
    return e


def one_line(out: str, *words: str) -> str:
    """The one message line of a command's output, holding `words`; no traceback."""
    assert "Traceback" not in out, out[-3000:]
    said = [line for line in out.splitlines() if line.startswith(MESSAGE)]
    assert len(said) == 1, out[-3000:]
    assert all(w in said[0] for w in words), said[0]
    return said[0]


def steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["type"] == "step"]


def paused(module: str, argv: list, at: str, tmp: Path) -> Child:
    """A command forked and paused at the named moment (common.signals.pause_point)."""
    marker = tmp / f"paused-{at.replace('#', '-')}"
    child = Child(module, [str(a) for a in argv], env=env(MINIGRAD_TEST_PAUSE_AT=at, MINIGRAD_TEST_PAUSE_FILE=str(marker)))
    deadline = time.monotonic() + 120
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            r = child.wait(1)
            raise AssertionError(f"never reached {at}: exit {r.code}\n{r.stderr[-3000:]}")
        time.sleep(0.01)
    child.marker = marker
    return child


def go_on(child: Child) -> None:
    child.marker.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory, needs_tokenizer) -> Path:
    from files.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    d = tmp_path_factory.mktemp("contract")
    rows = ["ham\thello there friend", "spam\twin money now", "ham\tsee you soon", "spam\tfree prize click"]
    (d / "toy.tsv").write_text("\n".join(rows * 10) + "\n")
    return d


# ----------------------------------------------------------------------------- one process per folder

def test_a_second_process_is_refused_naming_the_holder_and_the_lock_dies_with_it(data, tmp_path):
    run = tmp_path / "run"
    first = paused("tasks.pretrain", ["--out", run, *PRE], "step#2", tmp_path)
    from test_folder_fuzz import snapshot
    before = snapshot(run)
    second = run_main("tasks.pretrain", ["--out", str(run), "--resume"], env=env())
    assert second.code == 1
    one_line(second.stderr, f"process {first.pid}", str(run))
    assert snapshot(run) == before  # the refused one wrote nothing, not even the lock's PID
    first.kill(signal.SIGKILL)
    assert first.wait().code == -signal.SIGKILL
    third = run_main("tasks.pretrain", ["--out", str(run), "--resume"], env=env())
    assert third.code == 0, third.stderr[-3000:]  # the lock went with its holder
    assert steps_logged(run) == [1, 2, 3, 4]
    assert (run / ".lock").read_text() != f"{first.pid}\n"


def test_under_mpiexec_rank_0_alone_takes_the_lock(tmp_path, monkeypatch):
    import minigrad.distributed as dist
    from files.lock import FolderLock
    from tasks.runs.folder import FolderInUse, start_run
    run = tmp_path / "run"
    run.mkdir()
    flags = {"out": str(run), "resume": True, "weights_only": False}
    held = FolderLock(run).acquire()  # as rank 0 holds it for the job (another open file: flock refuses it)
    try:
        with pytest.raises(FolderInUse):  # rank 0 of another job, or one process
            start_run(flags, (), "pretrain")
        monkeypatch.setattr(dist, "rank", lambda: 1)
        assert start_run(flags, (), "pretrain").lock is None  # rank 1 of this job: no lock of its own
    finally:
        held.release()


def test_a_new_run_in_a_folder_another_process_is_starting_is_refused(data, tmp_path):
    run = tmp_path / "run"
    first = paused("tasks.pretrain", ["--out", run, *PRE], "startup", tmp_path)  # checked, nothing written yet
    run.mkdir()
    go_on(first)
    second = run_main("tasks.pretrain", ["--out", str(run), *PRE], env=env())
    r = first.wait()
    # one of them runs, the other is refused: by the lock, or by the run the other has begun
    assert sorted([r.code, second.code]) == [0, 2] or sorted([r.code, second.code]) == [0, 1], (r, second)
    loser = second if second.code else r
    one_line(loser.stderr, str(run))
    assert steps_logged(run) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- stopped before the first checkpoint

@pytest.mark.parametrize("task", ["pretrain", "classify"])
def test_stopped_before_the_first_checkpoint_then_resumed_logs_each_step_once(data, tmp_path, task):
    run = tmp_path / "run"
    module, argv = (("tasks.pretrain", ["--out", run, *PRE]) if task == "pretrain" else
                    ("tasks.classify", ["train", "--data", data / "toy.tsv", *CLS, "--out", run]))
    child = paused(module, [*argv, "--save-every", "100", "--eval-every", "100"], "step#3", tmp_path)
    child.kill(signal.SIGKILL)  # steps 1 and 2 logged, no checkpoint
    assert child.wait().code == -signal.SIGKILL
    assert steps_logged(run) == [1, 2] and not list(run.glob("checkpoints/step_*"))
    resume = [*(["train"] if task == "classify" else []), "--out", str(run), "--resume"]
    r = run_main(module, resume, env=env())
    assert r.code == 0, r.stderr[-3000:]
    assert "no checkpoint" in r.stdout
    assert steps_logged(run) == [1, 2, 3, 4]  # was 1, 2, 1, 2, 3, 4


# ----------------------------------------------------------------------------- a finished run, and the hints

def _task(task: str, data: Path, run: Path) -> tuple[str, list]:
    return (("tasks.pretrain", ["--out", run, *PRE]) if task == "pretrain" else
            ("tasks.classify", ["train", "--data", data / "toy.tsv", *CLS, "--out", run]))


@pytest.mark.parametrize("task", ["pretrain", "classify"])
def test_resuming_a_finished_run_says_so_writes_nothing_and_its_hint_extends_it(data, tmp_path, task):
    from test_folder_fuzz import snapshot
    run = tmp_path / "run"
    module, argv = _task(task, data, run)
    assert run_main(module, [str(a) for a in argv], env=env()).code == 0
    before = snapshot(run)
    sub = ["train"] if task == "classify" else []
    r = run_main(module, [*sub, "--out", str(run), "--resume"], env=env())
    assert r.code == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{run} is finished: it reached step 4" in r.stdout, r.stdout
    assert f"--out {run} --resume --max-steps N (N above 4)" in r.stdout, r.stdout
    assert snapshot(run) == before  # no step, no history entry, not even the lock's PID
    r = run_main(module, [*sub, "--out", str(run), "--resume", "--max-steps", "6"], env=env())  # the hint, followed
    assert r.code == 0, r.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("task", ["pretrain", "classify"])
def test_each_hint_after_already_holds_a_run_leads_to_a_command_that_works(data, tmp_path, task):
    run = tmp_path / "run"
    module, argv = _task(task, data, run)
    argv = [str(a) for a in argv]
    assert run_main(module, argv, env=env()).code == 0
    changed = [*argv, "--lr", "0.003"]
    r = run_main(module, changed, env=env())  # the same folder again, with another --lr
    assert r.code == 2 and "pass --resume" in one_line(r.stderr, f"{run} already holds a run"), r.stderr
    r = run_main(module, [*changed, "--resume"], env=env())  # the hint, followed
    line = one_line(r.stderr, "--lr 0.003 differs from this run's")
    assert r.code == 2 and "another" in line, line
    other = tmp_path / "other"
    hint = line.split("(drop the flag, or ")[1]
    if "--init" in hint:  # "start a new run from it: --init RUN --out <another folder>"
        assert f"--init {run} --out <another folder>" in hint, hint
        # (no --context: that of the model --init brings, 16, not the default 256)
        start = ["--init", str(run), "--out", str(other), "--lr", "0.003", "--max-steps", "2", "--no-progress",
                 "--eval-batches", "1", "--sample-tokens", "0"]
    else:  # a classifier: "the same command with another --out"
        start = [a if a != str(run) else str(other) for a in changed]
    r = run_main(module, start, env=env())  # the second hint, followed
    assert r.code == 0, r.stderr[-3000:]
    assert steps_logged(other)


# ----------------------------------------------------------------------------- a refused resume writes nothing

@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> dict[str, Path]:
    """A finished pretrain run on a text file of its own, and a classify run on a copy of toy.tsv."""
    from files.hub import cache_dir
    d = tmp_path_factory.mktemp("finished")
    (d / "text.txt").write_text((cache_dir() / "the-verdict.txt").read_text()[:3000])
    (d / "rows.tsv").write_text((data / "toy.tsv").read_text())
    r = run_main("tasks.pretrain", ["--out", str(d / "pre"), "--text", str(d / "text.txt"), *PRE], env=env())
    assert r.code == 0, r.stderr[-3000:]
    r = run_main("tasks.classify", ["train", "--data", str(d / "rows.tsv"), *map(str, CLS), "--out", str(d / "cls")],
                 env=env())
    assert r.code == 0, r.stderr[-3000:]
    return {"d": d, "pre": d / "pre", "cls": d / "cls"}


def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


# (the run to copy, what to do to it (its copy, the data folder), module, argv after --out RUN --resume, words)
REFUSALS = [
    ("cls", lambda run, d: None, "tasks.pretrain", [], ("holds a classify run, not a pretrain run",
                                                        "python -m tasks.classify train --out")),
    ("pre", lambda run, d: None, "tasks.classify", ["train"], ("holds a pretrain run, not a classify run",)),
    ("pre", lambda run, d: _edit_json(run / "run.json", world_size=2), "tasks.pretrain", [],
     ("trained on 2 rank(s)", "mpiexec -n 2")),
    ("pre", lambda run, d: (d / "text.txt").write_text((d / "text.txt").read_text() + " more"), "tasks.pretrain", [],
     ("run.json", "data.shards", "the data changed since the run started")),
    ("cls", lambda run, d: (d / "rows.tsv").rename(d / "moved.tsv"), "tasks.classify", ["train"],
     ("run.json", "'args.data'", "rows.tsv")),
    ("cls", lambda run, d: (d / "rows.tsv").write_text((d / "rows.tsv").read_text() + "ham\tone more row\n"),
     "tasks.classify", ["train"], ("run.json", "'data.bytes'", "the data changed since the run started")),
    ("cls", lambda run, d: _edit_json(run / "run.json", args={**json.loads((run / "run.json").read_text())["args"],
                                                             "data": None}),
     "tasks.classify", ["train"], ("run.json", "'args.data'")),  # (the default data, where it is cached)
    ("pre", lambda run, d: None, "tasks.pretrain", ["--max-steps", "3"], ("--max-steps 3", "at step 4 already")),
    ("pre", lambda run, d: _flip(run / "checkpoints" / "step_00000004" / "model.safetensors"), "tasks.pretrain", [],
     ("model.safetensors",)),
]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("source,damage,module,argv,words", REFUSALS,
                         ids=["pretrain-resumes-classify", "classify-resumes-pretrain", "world-size-2",
                              "text-changed", "data-moved", "rows-changed", "data-null", "max-steps-below", "corrupt-weights"])
def test_a_refused_resume_changes_nothing_in_the_run_folder(finished, tmp_path, source, damage, module, argv, words):
    from test_folder_fuzz import snapshot
    import shutil
    run = tmp_path / source  # a copy; its run.json names the data files by their place, shared: put back after
    shutil.copytree(finished[source], run)
    saved = {n: (finished["d"] / n).read_bytes() for n in ("text.txt", "rows.tsv")}
    try:
        damage(run, finished["d"])
        before = snapshot(run)
        sub = argv[:1] if argv[:1] == ["train"] else []
        r = run_main(module, [*sub, "--out", str(run), "--resume", *argv[len(sub):]], env=env())
        assert r.code in (1, 2), (r.code, r.stdout[-2000:], r.stderr[-2000:])
        one_line(r.stderr, *words)
        assert snapshot(run) == before
    finally:  # the shared data files as they were
        (finished["d"] / "moved.tsv").unlink(missing_ok=True)
        for n, content in saved.items():
            (finished["d"] / n).write_bytes(content)


# ----------------------------------------------------------------------------- a stop honoured within one micro-batch

def test_a_stop_is_honoured_within_one_micro_batch_of_an_update_longer_than_an_epoch(data, tmp_path):
    """--grad-accum 1000 on an epoch of 144 batches: one update reads the text seven times over.
    SIGTERM after its third micro-batch stops after (at most) the fourth: no step completes,
    nothing is saved, and the resumed run is the run never stopped."""
    run = tmp_path / "run"
    argv = ["--out", run, *TINY, "--context", "16", "--batch-size", "2", "--sample-tokens", "0", "--grad-accum",
            "1000", "--max-steps", "1"]
    child = paused("tasks.pretrain", argv, "step#3", tmp_path)
    child.kill(signal.SIGTERM)
    go_on(child)
    r = child.wait(60)
    assert r.code == 143
    one_line(r.stdout + r.stderr, "interrupted: no step was complete", "SIGTERM", "--resume")
    assert steps_logged(run) == [] and not list(run.glob("checkpoints/step_*"))


def test_a_stop_during_an_evaluation_waits_for_one_batch(data, tmp_path):
    run = tmp_path / "run"
    argv = ["--out", run, *PRE[:-4], "--eval-batches", "100", "--max-steps", "4", "--eval-every", "2"]
    child = paused("tasks.pretrain", argv, "evaluation#3", tmp_path)  # the first evaluation, at step 2
    child.kill(signal.SIGTERM)
    go_on(child)
    r = child.wait(60)
    assert r.code == 143
    one_line(r.stdout + r.stderr, "saved", "step_00000002", "SIGTERM")
    assert "evaluation of step 2 was cut short" in r.stdout
    assert steps_logged(run) == [1, 2]
    r = run_main("tasks.pretrain", ["--out", str(run), "--resume"], env=env())
    assert r.code == 0, r.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- signals at any moment

COMMANDS = [["pretrain"], ["classify", "train"], ["instruct", "train"], ["evaluate", "mmlu", "--init", "124M"],
            ["generate"], ["serve"], ["prepare", "--input", "x.txt", "--out", "sh"]]


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_signal_while_a_command_imports_is_one_line(cmd, sig, code, name, tmp_path):
    marker = tmp_path / "importing"
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{cmd[0]}", *cmd[1:]], cwd=tmp_path, text=True,
                            env=env(MINIGRAD_TEST_PAUSE_AT="imports", MINIGRAD_TEST_PAUSE_FILE=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    one_line(out + err, f"interrupted ({name}) while starting")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["importing"]  # nothing else written


def test_sigterm_while_generating_is_143(data, tmp_path):
    run = tmp_path / "run"
    assert run_main("tasks.pretrain", ["--out", str(run), *PRE, "--max-steps", "1"], env=env()).code == 0
    child = paused("tasks.generate", ["--init", run, "--max-new-tokens", "50", "--ignore-eos"], "token#3", tmp_path)
    child.kill(signal.SIGTERM)
    go_on(child)
    r = child.wait(60)
    assert r.code == 143  # was 130
    one_line(r.stderr, "interrupted (SIGTERM)")


def test_a_second_signal_during_the_stop_ends_it_at_once_and_the_run_resumes(data, tmp_path):
    run = tmp_path / "run"
    child = paused("tasks.pretrain", ["--out", run, *PRE], "checkpoint#2", tmp_path)  # writing step 4's
    child.kill(signal.SIGTERM)
    time.sleep(0.2)
    child.kill(signal.SIGTERM)
    go_on(child)
    r = child.wait(60)
    assert r.code == 143
    one_line(r.stdout + r.stderr, "stopped at once")
    r = run_main("tasks.pretrain", ["--out", str(run), "--resume"], env=env())
    assert r.code == 0, r.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3, 4]
