"""The tasks' command lines misused, and faults, as a new user and an unlucky machine bring them
(issue 11). Every case runs the real CLI in a subprocess and asserts:

- the exit status: 2 for a usage error, 1 for a failure, 130 / 143 for SIGINT / SIGTERM;
- no traceback, and one message line (`error: ...`, or the training loop's `interrupted: ...`);
- the folder afterwards: byte for byte as before, not created at all, or still resumable (checked
  by resuming it for real).

CASES is the table of what fails at once; SIGNALS interrupts a task in each of its phases
(start-up, a training step, a checkpoint being written, classify's pre-scoring, evaluation
writing its records, tasks.prepare), paused there by tasks.common.signals.pause_point, which is inert unless
MINIGRAD_TEST_PAUSE_AT is set.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from toydata import write_toy_inputs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--no-progress"]
# a pretraining run whose every flag differs from the defaults: `--out R --resume` must read them back
LM = [*TINY, "--context", "16", "--batch-size", "2", "--lr", "2e-3", "--seed", "5", "--eval-batches", "1",
      "--sample-tokens", "0", "--max-steps", "4", "--eval-every", "2", "--keep", "3"]
CLS = ["--init", "random", *TINY, "--context", "32", "--trainable", "all", "--max-steps", "2",
       "--eval-every", "2", "--eval-batches", "1", "--batch-size", "4"]
INS = ["--init", "random", *TINY, "--context", "64", "--batch-size", "2", "--max-steps", "1",
       "--eval-every", "1", "--eval-batches", "1", "--sample-tokens", "0"]
PROGRESS = re.compile(r"^[\w ]+: +\d+/\d+")  # a plain progress line (stderr is not a terminal)


# ----------------------------------------------------------------------------- running a CLI

def env_for(**extra) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGRAD_OFFLINE": "1", **extra}
    env.pop("MINIGRAD_TRACEBACK", None)  # that one shows tracebacks on purpose
    return env


def cli(module: str, *args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"tasks.{module}", *map(str, args)], cwd=ROOT,
                          env=env or env_for(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def message(returncode: int | None, stdout: str, stderr: str, code: int, fragment: str | tuple) -> str:
    """Assert the exit status, no traceback and exactly one message line holding `fragment` (each
    of them, for a tuple)."""
    fragments = fragment if isinstance(fragment, tuple) else (fragment,)
    assert returncode == code, f"exit {returncode}, not {code}\n{stdout[-1500:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    if code == 0:
        assert all(f in stdout + stderr for f in fragments), stdout[-1500:] + stderr[-1500:]
        return ""
    said = [line for line in (stdout + "\n" + stderr).splitlines()
            if line.startswith(("error:", "interrupted:", "interrupted again:"))]
    assert len(said) == 1, stdout[-1500:] + stderr[-3000:]
    # nothing else on stderr but notes and progress lines
    other = [line for line in stderr.splitlines() if line.strip() and line not in said
             and not line.startswith("note:") and not PROGRESS.match(line)]
    assert not other, stderr[-3000:]
    assert all(f in said[0] for f in fragments), said[0]
    return said[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` ({} when it does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def step_records(run: Path) -> list[int]:
    from tasks.common.jsonfiles import read_jsonl
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "step"]


def assert_resumes(run: Path, to_step: int | None = None) -> None:
    """`--out RUN --resume` (no other flag but an extension) finishes, each step logged once."""
    extra = ["--max-steps", str(to_step)] if to_step else []
    r = cli("pretrain", "--out", run, "--resume", "--no-progress", *extra)
    message(r.returncode, r.stdout, r.stderr, 0, "done: step")
    steps = step_records(run)
    assert steps == list(range(1, max(steps) + 1)), steps
    assert not list((run / "checkpoints").glob(".step_*"))


# ----------------------------------------------------------------------------- prepared runs

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, needs_tokenizer):
    """Small inputs and finished runs shared by every case (cases that change one copy it first)."""
    from files.hub import cache_dir
    from tasks import classify, instruct, pretrain
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    d = tmp_path_factory.mktemp("prepared")
    records = write_toy_inputs(d)
    (d / "responses.json").write_text(json.dumps([{**r, "model_response": r["output"]} for r in records[:4]]))
    questions = [{"question": f"What is {i} + {i}?", "answer_a": str(2 * i), "answer_b": str(i),
                  "answer_c": "0", "answer_d": "7", "correct_answer": "A", "topic": topic}
                 for topic in ("anatomy", "astronomy") for i in range(1, 4)]
    (d / "mmlu.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (d / "text.txt").write_text((cache_dir() / "the-verdict.txt").read_text())
    (d / "a_file").write_text("not a folder\n")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (d / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (d / "bad.json").write_text("{not json")
    assert pretrain.main(["--out", str(d / "lm"), *LM]) == 0
    assert pretrain.main(["--out", str(d / "cos"), *LM, "--schedule", "cosine"]) == 0
    assert classify.main(["train", "--data", str(d / "toy.tsv"), *CLS, "--out", str(d / "cls")]) == 0
    assert instruct.main(["train", "--data", str(d / "instr.json"), *INS, "--out", str(d / "ins")]) == 0
    return d


# ----------------------------------------------------------------------------- the table

def copy_lm(c: dict) -> None:
    shutil.copytree(c["data"] / "lm", c["run"])


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def flip_byte(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def then(*fns: Callable[[dict], None]) -> Callable[[dict], None]:
    def setup(c: dict) -> None:
        for fn in fns:
            fn(c)
    return setup


@dataclass
class Case:
    id: str
    cmd: list[str]               # module and arguments; {run} {tmp} {data} {judge} are filled in
    code: int
    fragment: str | tuple
    watch: str = "{run}"         # the folder (or file) the post-check looks at
    post: str | Callable = "same"  # same: byte-identical; absent: not created; resumes: resumable;
    #                                or a check(c, result)
    setup: Callable[[dict], None] | None = None
    env: dict | None = None
    seconds: float | None = None  # the whole command must take less


PRE = ["pretrain", "--out", "{run}", *LM]
BAD_NUMBERS = [("epochs", "0", "at least 1"), ("max-steps", "0", "at least 1"), ("batch-size", "-2", "at least 1"),
               ("lr", "0", "positive"), ("lr", "nan", "positive"), ("dropout", "1.5", "in [0, 1)"),
               ("keep", "0", "at least 1"), ("warmup", "-1", "at least 0"), ("grad-clip", "-1", "at least 0"),
               ("n-layer", "0", "at least 1"), ("context", "0", "at least 1"), ("eval-every", "0", "at least 1"),
               ("grad-accum", "0", "at least 1"), ("save-every", "0", "at least 1"), ("log-every", "0", "at least 1")]
CHANGED = [("lr", "1e-3"), ("n-embd", "32"), ("seed", "6"), ("batch-size", "3"), ("schedule", "cosine"),
           ("dropout", "0.2"), ("context", "8"), ("dataset", "tinyshakespeare"), ("grad-accum", "2"),
           ("weight-decay", "0"), ("init", "124M")]

CASES = [
    # --- numbers out of range: refused before anything is created (issue: --epochs 0 left run.json)
    *[Case(f"pretrain-{flag}-{value}", ["pretrain", "--out", "{run}", f"--{flag}", value], 2,
           f"--{flag} must be {msg}", post="absent") for flag, value, msg in BAD_NUMBERS],
    # --- the command line itself
    Case("unknown-flag", ["pretrain", "--out", "{run}", "--no-such-flag", "3"], 2, "unrecognized arguments",
         post="absent"),
    Case("bad-choice", ["pretrain", "--out", "{run}", "--schedule", "linear"], 2, "invalid choice", post="absent"),
    Case("not-a-number", ["pretrain", "--out", "{run}", "--lr", "fast"], 2, "invalid float value", post="absent"),
    Case("classify-no-subcommand", ["classify"], 2, "required"),
    Case("tf32-on-cpu", ["pretrain", "--out", "{run}", "--dtype", "tf32"], 2, "--dtype tf32", post="absent"),
    # --- --out where no run folder can be
    Case("out-is-a-file", ["pretrain", "--out", "{data}/a_file"], 2, "is a file", watch="{data}/a_file"),
    Case("out-under-a-file", ["pretrain", "--out", "{data}/a_file/run"], 2, "is a file", watch="{data}/a_file"),
    Case("out-holds-a-run", [*PRE], 2, "already holds a run", setup=copy_lm),
    # --- resuming: from the folder alone, a changed flag refused naming both values, run.json untouched
    *[Case(f"resume-changed-{flag}", ["pretrain", "--out", "{run}", "--resume", f"--{flag}", value], 2,
           f"--{flag} {value}" if flag != "lr" else "--lr 0.001", setup=copy_lm) for flag, value in CHANGED],
    Case("resume-cosine-extended", ["pretrain", "--out", "{run}", "--resume", "--max-steps", "6"], 2,
         "cosine schedule", setup=lambda c: shutil.copytree(c["data"] / "cos", c["run"])),
    Case("classify-resume-changed-lr", ["classify", "train", "--out", "{run}", "--resume", "--lr", "1e-3"], 2,
         "--lr 0.001 differs", setup=lambda c: shutil.copytree(c["data"] / "cls", c["run"])),
    Case("instruct-resume-changed-data", ["instruct", "train", "--out", "{run}", "--resume",
                                          "--data", "{data}/bad.json"], 2, "--data",
         setup=lambda c: shutil.copytree(c["data"] / "ins", c["run"])),
    Case("run-json-without-args", ["pretrain", "--out", "{run}", "--resume"], 2, "has no 'args'",
         setup=then(copy_lm, lambda c: edit_json(c["run"] / "run.json", lambda r: r.pop("args")))),
    Case("run-json-not-json", ["pretrain", "--out", "{run}", "--resume"], 1, "not valid JSON",
         setup=then(copy_lm, lambda c: (c["run"] / "run.json").write_text('{"args": '))),
    Case("run-json-without-model-config", ["generate", "--init", "{run}", "--prompt", "hi"], 1,
         "lacks 'model_config'",
         setup=then(copy_lm, lambda c: edit_json(c["run"] / "run.json", lambda r: r.pop("model_config")))),
    Case("classify-run-json-without-classifier", ["classify", "predict", "--init", "{run}", "hello"], 1,
         "has no 'classifier'", setup=then(lambda c: shutil.copytree(c["data"] / "cls", c["run"]),
                                           lambda c: edit_json(c["run"] / "run.json", lambda r: r.pop("classifier")))),
    Case("run-json-args-of-another-type", ["pretrain", "--out", "{run}", "--resume"], 1, "'args' holds text",
         setup=then(copy_lm, lambda c: edit_json(c["run"] / "run.json", lambda r: r["args"].update(lr="fast")))),
    Case("state-json-not-an-object", ["pretrain", "--out", "{run}", "--resume"], 1, "is not a checkpoint's state",
         setup=then(copy_lm, lambda c: (newest(c["run"]) / "state.json").write_text("[1, 2]"))),
    Case("state-json-without-optimizer", ["pretrain", "--out", "{run}", "--resume"], 1, "lacks 'optimizer'",
         setup=then(copy_lm, lambda c: edit_json(newest(c["run"]) / "state.json", lambda s: s.pop("optimizer")))),
    Case("state-json-without-loader", ["pretrain", "--out", "{run}", "--resume"], 1, "lacks 'loader'",
         setup=then(copy_lm, lambda c: edit_json(newest(c["run"]) / "state.json", lambda s: s.pop("loader")))),
    # --- checkpoints that cannot be trusted
    Case("corrupt-weights", ["pretrain", "--out", "{run}", "--resume"], 1, "model.safetensors is corrupt",
         setup=then(copy_lm, lambda c: flip_byte(newest(c["run"]) / "model.safetensors"))),
    Case("corrupt-optimizer", ["pretrain", "--out", "{run}", "--resume"], 1, "optimizer.safetensors is corrupt",
         setup=then(copy_lm, lambda c: flip_byte(newest(c["run"]) / "optimizer.safetensors", 200))),
    Case("missing-weights", ["pretrain", "--out", "{run}", "--resume"], 1, "model.safetensors is missing",
         setup=then(copy_lm, lambda c: (newest(c["run"]) / "model.safetensors").unlink())),
    Case("missing-optimizer-state", ["pretrain", "--out", "{run}", "--resume"], 1,
         ("optimizer.safetensors is missing", "--weights-only"),
         setup=then(copy_lm, lambda c: (newest(c["run"]) / "optimizer.safetensors").unlink())),
    # ... unless asked to go on from the weights alone: said out loud, and kept in run.json's history
    Case("missing-optimizer-state-weights-only", ["pretrain", "--out", "{run}", "--resume", "--weights-only",
                                                  "--max-steps", "5"], 0, "continuing from the weights alone",
         setup=then(copy_lm, lambda c: (newest(c["run"]) / "optimizer.safetensors").unlink()),
         post=lambda c, r: (json.loads((c["run"] / "run.json").read_text())["history"][-1]["weights_only"]
                            == "step_00000004" and step_records(c["run"]) == [1, 2, 3, 4, 5])),
    Case("weights-only-without-resume", [*PRE, "--weights-only"], 2, "add --resume", post="absent"),
    Case("corrupt-weights-as-init", ["generate", "--init", "{run}", "--prompt", "hi"], 1, "is corrupt",
         setup=then(copy_lm, lambda c: flip_byte(newest(c["run"]) / "model.safetensors"))),
    Case("garbage-safetensors-init", ["generate", "--init", "{data}/garbage.safetensors", "--prompt", "hi"], 1,
         "garbage.safetensors", watch="{data}/garbage.safetensors"),
    # --- faults tolerated: the run goes on
    Case("torn-metrics-line", ["pretrain", "--out", "{run}", "--resume", "--max-steps", "5"], 0, "resumed from",
         post="resumes",
         setup=then(copy_lm, lambda c: open(c["run"] / "metrics.jsonl", "a").write('{"type": "step", "st'))),
    Case("stale-temporary-checkpoint", ["pretrain", "--out", "{run}", "--resume", "--max-steps", "5"], 0,
         "removed", post="resumes",
         setup=then(copy_lm, lambda c: (c["run"] / "checkpoints" / ".step_00000005.abc").mkdir())),
    Case("resume-on-an-empty-folder", ["pretrain", "--out", "{run}", "--resume", *LM], 0, "holds no run yet",
         post="resumes", setup=lambda c: c["run"].mkdir()),
    # the weights after step 2 are finite but give NaN: not saved, and step 1 is named the last good
    # (--warmup 3, not 1000000: a warmup longer than the run is refused since issue 20)
    Case("lr-explodes", [*PRE, "--lr", "1e38", "--warmup", "3", "--eval-every", "1"], 1,
         ("loss evaluated at step 2 is nan", "last good checkpoint is {run}/checkpoints/step_00000001"),
         post=lambda c, r: [p.name for p in (c["run"] / "checkpoints").iterdir()] == ["step_00000001"]),
    # --- disk full, read-only disk
    Case("disk-full-mid-checkpoint", [*PRE, "--eval-every", "2"], 1, "No space left on device", post="resumes",
         setup=lambda c: c.update(run=c["tmpfs"]("30m") / "run")),
    Case("read-only-file-system", [*PRE], 2, "not writable", post="absent",
         setup=lambda c: c.update(run=c["tmpfs"]("1m", read_only=True) / "run")),
    # --- weights from where they cannot come
    Case("init-missing", [*PRE, "--init", "/no/such/weights"], 2, "not 'random'", post="absent"),
    Case("init-arch-disagrees", ["pretrain", "--out", "{tmp}/new", "--init", "{data}/lm", "--n-layer", "2"], 2,
         "--n-layer 2 disagrees", watch="{tmp}/new", post="absent"),
    Case("classify-init-a-classifier", ["classify", "train", "--data", "{data}/toy.tsv", "--init", "{data}/cls",
                                        "--out", "{run}", "--max-steps", "1"], 2, "not a GPT-2 language model",
         post="absent"),
    Case("respond-on-a-classifier", ["instruct", "respond", "--init", "{data}/cls", "--data", "{data}/instr.json",
                                     "--out", "{tmp}/r.json"], 2,
         "GPT2Classifier", watch="{tmp}/r.json", post="absent"),
    Case("chat-on-a-classifier", ["instruct", "chat", "--init", "{data}/cls"], 2, "GPT2Classifier", watch="{data}/cls"),
    Case("generate-from-a-classifier", ["generate", "--init", "{data}/cls", "--prompt", "hi"], 2, "GPT2Classifier",
         watch="{data}/cls"),
    Case("predict-on-a-pretrain-run", ["classify", "predict", "--init", "{data}/lm", "hello"], 2,
         "not a tasks.classify run", watch="{data}/lm"),
    Case("unknown-model-kind", ["generate", "--init", "{run}", "--prompt", "hi"], 1, "resnet",
         setup=then(copy_lm, lambda c: edit_json(c["run"] / "run.json", lambda r: r.update(model_kind="resnet")))),
    Case("model-builder-is-never-imported", ["generate", "--init", "{run}", "--prompt", "hi"], 1, "evil_mod",
         setup=then(copy_lm, lambda c: edit_json(c["run"] / "run.json", lambda r: (
             r.pop("model_kind"), r.update(model_builder="evil_mod.build"))))),
    Case("old-flag-name", ["generate", "--weights", "/no/such.safetensors", "--prompt", "hi"], 2,
         "--init '/no/such.safetensors'", watch="{tmp}/none",
         post=lambda c, r: r.stderr.count("note: --weights is deprecated; use --init") == 1),
    # --- data that cannot be read
    Case("text-missing", [*PRE, "--text", "/no/such.txt"], 1, "/no/such.txt", post="absent"),
    Case("data-empty-folder", [*PRE, "--data", "{data}/empty"], 1, "{data}/empty", post="absent",
         setup=lambda c: (c["data"] / "empty").mkdir(exist_ok=True)),
    Case("classify-data-missing", ["classify", "train", "--data", "/no/such.tsv", *CLS, "--out", "{run}"], 1,
         "/no/such.tsv", post="absent"),
    Case("classify-duplicate-labels", ["classify", "train", "--data", "{data}/toy.tsv", "--labels", "ham,ham",
                                       *CLS, "--out", "{run}"], 2, "ham", post="absent"),
    Case("instruct-data-not-json", ["instruct", "train", "--data", "{data}/bad.json", *INS, "--out", "{run}"], 1,
         "not a JSON file", post="absent"),
    Case("instruct-max-length-1", ["instruct", "train", "--data", "{data}/instr.json", *INS, "--max-length", "1",
                                   "--out", "{run}"], 2, "--max-length must be at least 2", post="absent"),
    # --- evaluation: --out and the numbers checked before any work
    Case("respond-limit-negative", ["instruct", "respond", "--init", "{data}/ins", "--limit", "-1",
                                    "--out", "{tmp}/r.json"], 2, "--limit", watch="{data}/ins"),
    Case("respond-out-under-a-file", ["instruct", "respond", "--init", "{data}/ins", "--out", "{data}/a_file/r.json"],
         2, "is a file", watch="{data}/ins"),
    Case("mmlu-max-context-5000", ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "{data}/mmlu.jsonl",
                                   "--max-context", "5000", "--out", "{tmp}/m.json"], 2, "--max-context 5000",
         watch="{tmp}/m.json", post="absent"),
    Case("mmlu-limit-negative", ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "{data}/mmlu.jsonl",
                                 "--limit", "-1"], 2, "--limit must be at least 1", watch="{data}/lm"),
    Case("mmlu-out-a-folder", ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "{data}/mmlu.jsonl",
                               "--out", "{data}"], 2, "is a folder", watch="{data}/lm"),
    Case("mmlu-data-missing", ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "/no/mmlu.jsonl"], 1,
         "/no/mmlu.jsonl", watch="{data}/lm"),
    Case("mmlu-unknown-subject", ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "{data}/mmlu.jsonl",
                                  "--subjects", "alchemy", "--out", "{tmp}/m.json"], 2, "alchemy",
         watch="{tmp}/m.json", post="absent"),
    Case("judge-unreachable", ["evaluate", "judge", "--responses", "{data}/responses.json", "--url",
                               "http://127.0.0.1:1", "--model", "m", "--out", "{tmp}/s.json", "--no-progress"], 1,
         "cannot reach", watch="{tmp}/s.json", post="absent", seconds=15),
    Case("judge-out-a-folder", ["evaluate", "judge", "--responses", "{data}/responses.json", "--url", "{judge}",
                                "--model", "m", "--out", "{data}"], 2, "is a folder", watch="{data}/responses.json"),
    Case("judge-url-not-http", ["evaluate", "judge", "--responses", "{data}/responses.json", "--url", "ftp://x",
                                "--model", "m", "--out", "{tmp}/s.json"], 2, "http://", watch="{tmp}/s.json",
         post="absent"),
    Case("judge-responses-missing", ["evaluate", "judge", "--responses", "/no/r.json", "--url", "{judge}",
                                     "--model", "m", "--out", "{tmp}/s.json"], 1, "/no/r.json", watch="{tmp}/s.json",
         post="absent"),
    # --- tasks.prepare
    Case("prepare-input-missing", ["prepare", "--input", "/no/such.txt", "--out", "{tmp}/sh"], 1, "no such file",
         watch="{tmp}/sh", post="absent"),
    Case("prepare-shard-tokens-0", ["prepare", "--input", "{data}/text.txt", "--out", "{tmp}/sh",
                                    "--shard-tokens", "0"], 2, "--shard-tokens", watch="{tmp}/sh", post="absent"),
    Case("prepare-binary-input", ["prepare", "--input", "{data}/binary.txt", "--out", "{tmp}/sh",
                                  "--no-progress", "--workers", "1"], 1, "binary.txt", watch="{tmp}/sh"),
    Case("prepare-out-a-file", ["prepare", "--input", "{data}/text.txt", "--out", "{data}/a_file"], 2,
         "not a folder", watch="{data}/a_file"),
    # --- a fresh machine offline with an empty cache
    Case("offline-empty-cache", ["pretrain", "--out", "{run}"], 1, ("encoder.json", "{tmp}/cache"), post="absent",
         env={"MINIGRAD_DATA_DIR": "{tmp}/cache", "TIKTOKEN_CACHE_DIR": "{tmp}/tiktoken"}),
]


def _fill(text: str, c: dict) -> str:
    return text.format(**{k: v for k, v in c.items() if isinstance(v, (str, Path))})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_misuse(case: Case, prepared, judge_url, tmp_path, tmpfs):
    c = {"data": prepared, "tmp": tmp_path, "run": tmp_path / "run", "judge": judge_url, "tmpfs": tmpfs}
    if case.setup:
        case.setup(c)
    watched = Path(_fill(case.watch, c))
    before = snapshot(watched)
    env = env_for(**{k: _fill(v, c) for k, v in (case.env or {}).items()})
    t0 = time.perf_counter()
    r = cli(*[_fill(a, c) for a in case.cmd], env=env)
    if case.seconds:
        assert time.perf_counter() - t0 < case.seconds
    fragment = tuple(_fill(f, c) for f in case.fragment) if isinstance(case.fragment, tuple) else \
        _fill(case.fragment, c)
    message(r.returncode, r.stdout, r.stderr, case.code, fragment)
    if callable(case.post):
        assert case.post(c, r)
    elif case.post == "same":
        assert snapshot(watched) == before, f"{watched} changed"
    elif case.post == "absent":
        assert not watched.exists(), f"{watched} was created"
    elif case.post == "resumes":
        if watched.stat().st_dev != tmp_path.stat().st_dev:  # off the full disk, to a roomy one
            shutil.copytree(watched, tmp_path / "moved")
            watched = tmp_path / "moved"
        assert_resumes(watched, to_step=max(step_records(watched), default=0) + 1)


def test_the_table_is_big_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 60


# ----------------------------------------------------------------------------- signals in each phase

@dataclass
class Interrupt:
    id: str
    cmd: list[str]
    phase: str                   # tasks.common.signals.pause_point's name (NAME#K: the K-th time)
    signals: tuple[int, ...]
    code: int
    fragment: str
    after: Callable[[dict], None]  # checks the folder, reruns the command


def _rerun_finishes(cmd_key: str, fragment: str) -> Callable[[dict], None]:
    def check(c: dict) -> None:
        r = cli(*c[cmd_key])
        message(r.returncode, r.stdout, r.stderr, 0, fragment)
    return check


def _nothing_created_and_rerun(c: dict) -> None:
    assert not c["run"].exists()
    r = cli(*c["cmd"])  # the same command is not refused ("already holds a run")
    message(r.returncode, r.stdout, r.stderr, 0, "done: step")


def _resumes(c: dict) -> None:
    assert_resumes(c["run"])
    assert max(step_records(c["run"])) == 4


def _stale_removed_on_resume(c: dict) -> None:
    assert list((c["run"] / "checkpoints").glob(".step_*")), "the kill came after the checkpoint"
    r = cli("pretrain", "--out", c["run"], "--resume", "--no-progress")
    message(r.returncode, r.stdout, r.stderr, 0, "removed")
    assert "resumed from" in r.stdout and "step_00000002" in r.stdout
    assert not list((c["run"] / "checkpoints").glob(".step_*"))
    assert max(step_records(c["run"])) == 4


def _partial_kept(name: str) -> Callable[[dict], None]:
    def check(c: dict) -> None:
        from tasks.common.jsonfiles import read_jsonl
        partial = c["tmp"] / f"{name}.partial.jsonl"
        assert len(read_jsonl(partial)) >= 1  # what was done before the signal is kept
        r = cli(*c["cmd"])
        message(r.returncode, r.stdout, r.stderr, 0, "already")  # "... already answered/scored"
        assert (c["tmp"] / name).is_file() and not partial.exists()
    return check


def _classify_resumes(c: dict) -> None:
    r = cli(*c["cmd"], "--resume")
    message(r.returncode, r.stdout, r.stderr, 0, "training took")


def _prepare_continues(c: dict) -> None:
    r = cli(*c["cmd"])
    message(r.returncode, r.stdout, r.stderr, 0, "continuing after")
    assert (c["tmp"] / "sh" / "index.json").is_file()


PRETRAIN = ["pretrain", "--out", "{run}", *LM]
RESPOND = ["instruct", "respond", "--init", "{data}/ins", "--limit", "4", "--batch-size", "1",
           "--max-new-tokens", "2", "--out", "{tmp}/r.json", "--no-progress"]
MMLU = ["evaluate", "mmlu", "--init", "{data}/lm", "--data", "{data}/mmlu.jsonl", "--out", "{tmp}/m.json",
        "--no-progress"]
JUDGE = ["evaluate", "judge", "--responses", "{data}/responses.json", "--url", "{judge}", "--model", "m",
         "--out", "{tmp}/s.json", "--no-progress"]
PREPARE = ["prepare", "--input", "{data}/text.txt", "--out", "{tmp}/sh", "--shard-tokens", "500",
           "--workers", "1", "--no-progress"]
INT, TERM, KILL = signal.SIGINT, signal.SIGTERM, signal.SIGKILL

SIGNALS = [
    Interrupt("startup-sigint", PRETRAIN, "startup", (INT,), 130, "interrupted (Ctrl-C)", _nothing_created_and_rerun),
    Interrupt("startup-sigterm", PRETRAIN, "startup", (TERM,), 143, "interrupted (SIGTERM)",
              _nothing_created_and_rerun),
    Interrupt("step-sigint", PRETRAIN, "step#3", (INT,), 130, "saved", _resumes),
    Interrupt("step-sigterm", PRETRAIN, "step#3", (TERM,), 143, "on SIGTERM", _resumes),
    Interrupt("step-sigint-twice", PRETRAIN, "step#3", (INT, INT), 130, "stopped at once", _resumes),
    Interrupt("checkpoint-sigint", PRETRAIN, "checkpoint", (INT,), 130, "saved", _resumes),
    Interrupt("checkpoint-sigterm-twice", PRETRAIN, "checkpoint#2", (TERM, TERM), 143, "stopped at once", _resumes),
    Interrupt("checkpoint-sigkill", PRETRAIN, "checkpoint#2", (KILL,), -KILL, "", _stale_removed_on_resume),
    Interrupt("classify-scoring-sigint", ["classify", "train", "--data", "{data}/toy.tsv", *CLS, "--out", "{run}"],
              "scoring", (INT,), 130, "interrupted (Ctrl-C)", _classify_resumes),
    Interrupt("respond-sigint", RESPOND, "record", (INT,), 130, "interrupted", _partial_kept("r.json")),
    Interrupt("mmlu-sigint", MMLU, "record#2", (INT,), 130, "interrupted", _partial_kept("m.json")),
    Interrupt("judge-sigterm", JUDGE, "record", (TERM,), 143, "interrupted", _partial_kept("s.json")),
    Interrupt("prepare-sigint", PREPARE, "shard#2", (INT,), 130, "interrupted: the complete shards",
              _prepare_continues),
    Interrupt("prepare-sigterm", PREPARE, "shard", (TERM,), 143, "interrupted: the complete shards",
              _prepare_continues),
]


@pytest.mark.parametrize("case", SIGNALS, ids=[s.id for s in SIGNALS])
def test_signal_in_each_phase(case: Interrupt, prepared, judge_url, tmp_path):
    c = {"data": prepared, "tmp": tmp_path, "run": tmp_path / "run", "judge": judge_url}
    c["cmd"] = [_fill(a, c) for a in case.cmd]
    marker = tmp_path / "paused"
    env = env_for(MINIGRAD_TEST_PAUSE_AT=case.phase, MINIGRAD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{c['cmd'][0]}", *c["cmd"][1:]], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, f"never reached {case.phase}: {proc.communicate()}"
        time.sleep(0.01)
    for sig in case.signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    marker.unlink(missing_ok=True)  # the paused step goes on
    out, err = proc.communicate(timeout=120)
    if case.code == -KILL:
        assert proc.returncode == -KILL
    else:
        message(proc.returncode, out, err, case.code, case.fragment)
    case.after(c)


def test_signals_cover_every_phase():
    assert {s.phase.partition("#")[0] for s in SIGNALS} == {"startup", "step", "checkpoint", "scoring", "record",
                                                             "shard"}


# ----------------------------------------------------------------------------- exact resume

def _losses(run):
    from tasks.common.jsonfiles import read_jsonl
    return {r["step"]: r["loss"] for r in read_jsonl(Path(run) / "metrics.jsonl") if r["type"] == "step"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_from_the_folder_alone_is_bit_identical(prepared, tmp_path, sig):
    """Killed after its third step (SIGTERM saves first; SIGKILL leaves the step-2 checkpoint),
    `--out R --resume` alone continues to the very losses of the undisturbed run."""
    out, marker = tmp_path / "run", tmp_path / "paused"
    env = env_for(MINIGRAD_TEST_PAUSE_AT="step#3", MINIGRAD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain", "--out", str(out), *LM], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    marker.unlink()
    proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    before = (out / "run.json").read_bytes()
    r = cli("pretrain", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert _losses(out) == _losses(prepared / "lm")
    assert (out / "run.json").read_bytes() == before


def test_extending_a_constant_run_is_recorded_in_history(prepared, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(prepared / "lm", out)
    r = cli("pretrain", "--out", out, "--resume", "--max-steps", "6", "--no-progress")
    message(r.returncode, r.stdout, r.stderr, 0, "extending the run: --max-steps 4 -> 6")
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["max_steps"] == 4  # the original stays as it was
    assert run["history"][-1]["changed"] == {"max_steps": 6}
    assert max(_losses(out)) == 6


def test_disk_full_run_moved_to_a_roomy_disk_finishes_like_an_undisturbed_one(prepared, tmp_path, tmpfs):
    full = tmpfs("30m") / "run"  # room for one checkpoint of the tiny model (about 20 MB), not two
    r = cli("pretrain", "--out", full, *LM)
    message(r.returncode, r.stdout, r.stderr, 1, "No space left on device")
    assert [p.name for p in (full / "checkpoints").iterdir()] == ["step_00000002"]  # whole; no temporary
    moved = tmp_path / "run"
    shutil.copytree(full, moved)
    r = cli("pretrain", "--out", moved, "--resume")
    assert r.returncode == 0, r.stderr
    assert _losses(moved) == _losses(prepared / "lm")


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, prepared):
    args = [a for a in LM if a != "--no-progress"]
    r = cli("pretrain", "--out", tmp_path / "run", *args)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr + r.stdout  # no carriage returns in a log file
    assert "train: 4/4 (100%)" in r.stderr and "loss" in r.stderr
