"""Every file of a run folder damaged in every way, then resumed (issue 20): generated cases, not
a list.

Folders: a finished run of each training task (pretrain, classify, instruct) and a pretraining
run killed before its first checkpoint. Damage: each file deleted, truncated or with a byte
flipped; each key path of each JSON file (run.json, every state.json, every metrics.jsonl line)
deleted or replaced by a value of the wrong type, null, NaN, -1, a huge number or a string; a
foreign line added to metrics.jsonl; a stray checkpoint folder. Then `--resume`, or `--resume
--max-steps` past the end. Each case must end one of two ways:

- refused: exit 1 or 2, no traceback, one `error:` line that names the damaged file (and the key,
  for a key), and the folder byte for byte as it was;
- harmless: the resume finishes (exit 0) and metrics.jsonl logs each step exactly once, 1..N.

The whole product is thousands of resumes; every file-level case runs, and hypothesis chooses
among the key-level ones (MINIGRAD_FUZZ_EXAMPLES of them, default below). Each case runs the
command's main in a child forked from this process (tests/forkrun.py), which has imported
everything once: a process of its own for a fraction of a fresh interpreter's cost.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from forkrun import Child, run_main
from toydata import write_toy_inputs

pytestmark = pytest.mark.usefixtures("numpy_pass_only")  # conftest.py: skipped by CI's stand-in pass

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--no-progress", "--seed", "5", "--epochs", "2",
        "--max-steps", "4", "--eval-every", "2", "--eval-batches", "1", "--keep", "3"]
# each run has 4 batches an epoch: --max-steps 4 ends it, and its natural end (2 epochs) is near
PRE = [*TINY, "--tie-embeddings", "--context", "16", "--batch-size", "7", "--lr", "2e-3", "--sample-tokens", "0"]
CLS = ["--init", "random", *TINY, "--context", "32", "--trainable", "all", "--batch-size", "7"]
INS = ["--init", "random", *TINY, "--context", "64", "--batch-size", "5", "--sample-tokens", "0"]
KEY_EXAMPLES = int(os.environ.get("MINIGRAD_FUZZ_EXAMPLES", "450"))
RAN: dict[str, int] = {"refused": 0, "harmless": 0}


# ----------------------------------------------------------------------------- running a command

def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGRAD_OFFLINE": "1"}
    for name in ("MINIGRAD_TRACEBACK", "MINIGRAD_TEST_PAUSE_AT", "MINIGRAD_TEST_PAUSE_FILE"):
        e.pop(name, None)
    return e


@dataclass(frozen=True)
class Folder:
    name: str
    module: str
    sub: tuple[str, ...]     # ("train",) for classify and instruct
    steps: int               # the step the run reached

    def resume(self, run: Path, extend: bool) -> list[str]:
        return [*self.sub, "--out", str(run), "--resume", *(["--max-steps", str(self.steps + 2)] if extend else [])]



FOLDERS = {"pretrain": Folder("pretrain", "tasks.pretrain", (), 4),
           "classify": Folder("classify", "tasks.classify", ("train",), 4),
           "instruct": Folder("instruct", "tasks.instruct", ("train",), 4),
           "early": Folder("early", "tasks.pretrain", (), 2)}


def _kill_at_first_steps(out: Path, tmp: Path) -> None:
    """A pretraining run SIGKILLed at its third step, long before its first checkpoint."""
    marker = tmp / "paused"
    child = Child("tasks.pretrain", ["--out", str(out), "--text", str(tmp / "small.txt"), *PRE, "--save-every", "100",
                                     "--eval-every", "100"],
                  env={**env(), "MINIGRAD_TEST_PAUSE_AT": "step#3", "MINIGRAD_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, child.wait(1)
        time.sleep(0.01)
    child.kill(signal.SIGKILL)
    assert child.wait().code == -signal.SIGKILL
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def folders(tmp_path_factory, needs_tokenizer) -> dict[str, Path]:
    """The finished (and the killed) run folders every case starts from a copy of."""
    from files.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    d = tmp_path_factory.mktemp("fuzz")
    write_toy_inputs(d)
    runs = {name: d / name for name in FOLDERS}
    (d / "small.txt").write_text((cache_dir() / "the-verdict.txt").read_text()[:2000])
    for module, argv in [("tasks.pretrain", ["--out", runs["pretrain"], "--text", d / "small.txt", *PRE]),
                         ("tasks.classify", ["train", "--data", d / "toy.tsv", *CLS, "--out", runs["classify"]]),
                         ("tasks.instruct", ["train", "--data", d / "instr.json", *INS, "--out", runs["instruct"]])]:
        r = run_main(module, argv, env=env())
        assert r.code == 0, r.stderr[-3000:]
    _kill_at_first_steps(runs["early"], d)
    for run in runs.values():  # read-only from here: a case that wrote into a shared file would fail
        for p in run.rglob("*"):
            if p.is_file():
                p.chmod(0o444)
    return runs


# ----------------------------------------------------------------------------- the damage

JSON_FILES = re.compile(r"(run\.json|state\.json)$")
HUGE = 10 ** 30  # past any int64 (and 1e300 for a float: past any float32)


def key_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON value, the root () included: ("optimizer", "groups", 0, "lr"), ..."""
    out = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out += key_paths(v, (*prefix, k))
    return out


def shown(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def wrong_type(v: Any) -> Any:
    if isinstance(v, dict):
        return ["fuzz"]
    if isinstance(v, (list, str)):
        return {"fuzz": 1}
    if isinstance(v, bool):
        return 1
    return [7]


VALUES = {"wrong-type": wrong_type, "null": lambda v: None, "nan": lambda v: math.nan, "-1": lambda v: -1,
          "huge": lambda v: 1e300 if isinstance(v, float) else HUGE, "string": lambda v: "fuzz"}


def mutate_value(doc: Any, path: tuple, how: str) -> Any:
    """doc with the value at `path` replaced (VALUES) or its key deleted ("delete-key")."""
    if not path:
        return VALUES[how](doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if how == "delete-key":
        del parent[path[-1]]
    else:
        parent[path[-1]] = VALUES[how](parent[path[-1]])
    return doc


FOREIGN_LINES = ['{"note": "my own remark"}', '[1, 2, 3]', 'not json at all', '{"type": "step"}',
                 '{"type": "step", "step": 3, "loss": 1.0}']


@dataclass(frozen=True)
class Damage:
    folder: str
    file: str                  # relative to the run folder
    how: str                   # delete, truncate, flip@N, a VALUES key, delete-key, foreign@N, stray
    key: tuple | None = None   # a key path (for metrics.jsonl: (line number, *path))
    extend: bool = False       # --resume --max-steps past the end

    @property
    def id(self) -> str:
        key = "" if self.key is None else "|" + shown(self.key)
        return f"{self.folder}|{self.file}{key}|{self.how}|{'extend' if self.extend else 'resume'}"

    def apply(self, run: Path) -> None:
        path = run / self.file
        if self.how == "stray":
            (run / "checkpoints" / "step_abc").mkdir(parents=True)
            return
        if self.how == "delete":
            path.unlink()
            return
        data = path.read_bytes()
        path.unlink()  # a file of our own from here (the copy shares the fixture's)
        if self.how == "truncate":
            path.write_bytes(data[:len(data) // 2])
        elif self.how.startswith("flip@"):
            at = int(self.how[5:]) % len(data)
            path.write_bytes(data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:])
        elif self.how.startswith("foreign@"):
            lines = data.decode().splitlines(keepends=True)
            at = int(self.how[8:]) % (len(lines) + 1)
            path.write_bytes("".join(lines[:at] + [FOREIGN_LINES[int(self.how[8:]) % len(FOREIGN_LINES)] + "\n"]
                                     + lines[at:]).encode())
        elif self.file == "metrics.jsonl":
            lines = data.decode().splitlines(keepends=True)
            line, *key = self.key
            lines[line - 1] = json.dumps(mutate_value(json.loads(lines[line - 1]), tuple(key), self.how)) + "\n"
            path.write_bytes("".join(lines).encode())
        else:
            doc = mutate_value(json.loads(data), self.key, self.how)
            path.write_text(json.dumps(doc, indent=2) + "\n")


def files_of(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def file_damage(name: str, run: Path) -> list[Damage]:
    """Each file deleted, truncated, a byte flipped (at its start, middle and end); a stray
    checkpoint folder; foreign lines in metrics.jsonl."""
    out = []
    for f in files_of(run):
        size = (run / f).stat().st_size
        hows = ["delete", "truncate"] + [f"flip@{at}" for at in sorted({0, size // 2, max(size - 2, 0)})]
        if f == "metrics.jsonl":
            hows += [f"foreign@{i}" for i in range(len(FOREIGN_LINES))]
        out += [Damage(name, f, how) for how in hows if size or how == "delete"]
    return out + [Damage(name, "checkpoints/step_abc", "stray")]


def key_damage(name: str, run: Path) -> list[Damage]:
    """Each key path of each JSON file (and of each metrics.jsonl line), each way."""
    out = []
    for f in files_of(run):
        if f == "metrics.jsonl":
            for i, line in enumerate((run / f).read_text().splitlines(), start=1):
                for path in key_paths(json.loads(line)):
                    out += [Damage(name, f, how, (i, *path)) for how in [*VALUES, "delete-key"]
                            if path or how != "delete-key"]
        elif JSON_FILES.search(f):
            for path in key_paths(json.loads((run / f).read_text())):
                out += [Damage(name, f, how, path) for how in [*VALUES, "delete-key"] if path or how != "delete-key"]
    return out


# ----------------------------------------------------------------------------- the verdict

def clone(src: Path, dst: Path) -> None:
    """A copy of a fixture folder: the large weight files hard-linked (they are only ever
    replaced by a rename, never written in place), the rest copied."""
    def link_or_copy(s, d):
        if s.endswith(".safetensors"):
            os.link(s, d)
        else:
            shutil.copy2(s, d)
            os.chmod(d, 0o644)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def snapshot(run: Path) -> dict[str, str]:
    """Each file's content, as a digest (a hard link to the read-only fixture as its inode)."""
    out = {}
    for p in sorted(run.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(run))] = f"inode {st.st_ino}" if st.st_nlink > 1 and not st.st_mode & 0o222 \
                else hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(run)) + "/"] = "folder"
    return out


def step_records(run: Path) -> list:
    """The step numbers metrics.jsonl logs, in order; a line that is not one of our records is
    there as itself, so that it fails the comparison."""
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    out = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if not isinstance(r, dict) or "type" not in r or (r["type"] == "step" and not isinstance(r.get("step"), int)):
            out.append(line)
        elif r["type"] == "step":
            out.append(r["step"])
    return out


def judge(d: Damage, run: Path, before: dict[str, str], r) -> str:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    if r.code == 0:
        steps = step_records(run)
        assert steps and steps == list(range(1, len(steps) + 1)), (steps, out[-2000:])
        assert steps[-1] >= FOLDERS[d.folder].steps + (2 if d.extend else 0), (steps, out[-2000:])
        assert not list(run.glob("checkpoints/.step_*"))
        return "harmless"
    assert r.code in (1, 2), (r.code, out[-3000:])
    said = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(said) == 1, out[-3000:]
    other = [line for line in r.stderr.splitlines() if line.strip() and line not in said and not line.startswith("note:")]
    assert not other, r.stderr[-3000:]
    named = Path(d.file).name if d.how != "stray" else "step_abc"
    assert named in said[0], (named, said[0])
    if d.key is not None:
        key = d.key[1:] if d.file == "metrics.jsonl" else d.key
        if d.file == "metrics.jsonl":
            assert f"line {d.key[0]}" in said[0], said[0]
        if key:
            k = shown(key)
            assert any(part and (part.startswith(k) or k.startswith(part)) for part in re.findall(r"'([^']*)'", said[0])) \
                or k in said[0], (k, said[0])
    assert snapshot(run) == before, f"{run} changed"
    return "refused"


def run_case(d: Damage, folders: dict[str, Path], tmp: Path) -> None:
    run = tmp / f"case{RAN['refused'] + RAN['harmless']}"
    clone(folders[d.folder], run)
    d.apply(run)
    before = snapshot(run)
    f = FOLDERS[d.folder]
    r = run_main(f.module, f.resume(run, d.extend), env=env(), timeout=120)
    try:
        RAN[judge(d, run, before, r)] += 1
    except AssertionError as e:
        raise AssertionError(f"case {d.id}: exit {r.code}\n{r.stderr[-1500:]}") from e
    finally:
        shutil.rmtree(run, ignore_errors=True)


# ----------------------------------------------------------------------------- the tests

def test_every_file_damaged_each_way(folders, tmp_path):
    cases = [d for name, run in folders.items() for d in file_damage(name, run)]
    for i, d in enumerate(cases):  # the two commands by turns
        run_case(Damage(d.folder, d.file, d.how, d.key, extend=bool(i % 2)), folders, tmp_path)


@pytest.fixture(scope="module")
def key_cases(folders) -> list[Damage]:
    return [d for name, run in folders.items() for d in key_damage(name, run)]


def test_every_key_path_damaged_each_way(folders, key_cases, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")

    @settings(max_examples=KEY_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(key_cases), st.booleans())
    def case(d: Damage, extend: bool):
        run_case(Damage(d.folder, d.file, d.how, d.key, extend), folders, tmp)

    case()


def test_enough_cases_ran(request, key_cases):
    total = RAN["refused"] + RAN["harmless"]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"folder fuzz: {total} cases ran ({RAN['refused']} refused, {RAN['harmless']} "
                            f"harmless) of {len(key_cases)} key cases and every file case")
    assert total >= 500
