"""Numbers, memory, paths and streams (issue 20): what a command is given is checked before it
writes anything.

- every numeric flag of every command is in one table (tasks/common/numbers.py) and a value out
  of its range, NaN or a broken relation is a usage error (2) naming the flag, generated from the
  commands' own parsers;
- sizes the machine cannot hold are refused with the estimate and the flag to lower, before any
  file is written (and before any allocation);
- an empty --out is refused, an output file's missing folders are made, a name the terminal
  cannot encode is printed escaped, a closed stdout or a reader that went away ends quietly,
  and each failure's hint fits the command (no --resume for a command without one, the data
  cache named when it is the cache that cannot be written).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkrun import run_main
from tasks.common.errors import UsageError
from tasks.common.numbers import NUMBERS, spec_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--no-progress", "--seed", "5", "--eval-batches", "1",
        "--sample-tokens", "0"]
HUGE = 10 ** 9
MESSAGE = ("error:", "interrupted:")


def env(**extra) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGRAD_OFFLINE": "1", **extra}
    for name in ("MINIGRAD_TRACEBACK", "MINIGRAD_TEST_PAUSE_AT", "MINIGRAD_TEST_PAUSE_FILE"):
        e.pop(name, None)
    return e


def one_line(r, code: int, *words: str) -> str:
    out = r.stdout + r.stderr
    assert r.code == code, f"exit {r.code}, not {code}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    said = [line for line in out.splitlines() if line.startswith(MESSAGE)]
    assert len(said) == 1, out[-3000:]
    assert all(w in said[0] for w in words), said[0]
    return said[0]


# ----------------------------------------------------------------------------- the commands' parsers

class _Captured(Exception):
    pass


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser (and each subcommand's), by prog, as the command builds it."""
    found: dict[str, argparse.ArgumentParser] = {}
    for name in ("pretrain", "classify", "instruct", "evaluate", "generate", "serve", "prepare"):
        module = importlib.import_module(f"tasks.{name}")

        def capture(parser, argv):
            found[parser.prog] = parser
            raise _Captured

        real = module.parse
        module.parse = capture
        try:
            (module.parse_args if hasattr(module, "parse_args") else lambda a: capture(module.build_parser(), a))([])
        except _Captured:
            pass
        finally:
            module.parse = real
    for parser in list(found.values()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update({p.prog: p for p in action.choices.values()})
    return found


# what each parser needs besides the flag tested
REQUIRED = {"python -m tasks.classify": ["train"], "python -m tasks.instruct": ["train"],
            "python -m tasks.evaluate": ["mmlu"], "python -m tasks.classify predict": ["--init", "x"],
            "python -m tasks.instruct respond": ["--init", "x"], "python -m tasks.instruct chat": ["--init", "x"],
            "python -m tasks.evaluate judge": ["--responses", "r", "--url", "http://x", "--model", "m"],
            "python -m tasks.evaluate hellaswag": ["--init", "x"], "python -m tasks.evaluate mmlu": ["--init", "x"],
            "python -m tasks.prepare": ["--input", "x.txt", "--out", "sh"]}


def numeric_flags() -> list[tuple[str, str, str, type]]:
    """(prog, flag, dest, type) of every numeric flag of every command."""
    out = []
    for prog, parser in sorted(parsers().items()):
        for a in parser._actions:
            if a.type in (int, float) and a.option_strings and a.choices is None:  # choices: argparse's own
                out.append((prog, a.option_strings[0], a.dest, a.type))
    return out


def _top(prog: str) -> str:
    return " ".join(prog.split()[:3])


def _argv(prog: str, *flag_and_value: str) -> list[str]:
    sub = prog.split()[3:]
    return [*(REQUIRED.get(_top(prog), []) if not sub else [*sub, *REQUIRED.get(prog, [])]), *flag_and_value]


NUMERIC = numeric_flags()


def test_every_numeric_flag_of_every_command_is_in_the_table():
    assert len(NUMERIC) > 50
    missing = [f"{prog} {flag}" for prog, flag, dest, _ in NUMERIC if spec_of(dest, prog) is None]
    assert not missing, missing
    assert {dest for _, _, dest, _ in NUMERIC} <= set(NUMBERS)


def _bad_values(dest: str, prog: str, kind: type) -> list[str]:
    """Values of the flag's own type outside its range: below its least, past its most, NaN."""
    spec = spec_of(dest, prog)
    bad = []
    if spec.min is not None:
        below = spec.min - 1 if kind is int else (spec.min if getattr(spec, "above", False) else spec.min - 1)
        bad.append(str(below))
    if spec.max is not None:
        bad.append(str(spec.max + 1) if kind is int else str(spec.max * 10 if spec.max > 0 else 1))
    if kind is float:
        bad += ["nan", "inf"] if spec.finite else ["nan"]
    return bad


CASES = [(prog, flag, value) for prog, flag, dest, kind in NUMERIC for value in _bad_values(dest, prog, kind)]


@pytest.mark.parametrize("prog,flag,value", CASES, ids=[f"{p.split()[-1]}{f}={v}" for p, f, v in CASES])
def test_a_number_out_of_range_is_a_usage_error_naming_the_flag(prog, flag, value):
    from tasks.common.args import parse
    parser = parsers()[_top(prog)]
    with pytest.raises(UsageError) as err:
        parse(parser, _argv(prog, flag, value))
    assert str(err.value).startswith(flag + " ") or f" {flag} " in str(err.value), str(err.value)


RELATIONS = [(["--min-lr", "0.01", "--lr", "0.001"], "--min-lr 0.01 is above --lr 0.001"),
             (["--warmup", "4", "--max-steps", "4"], "--warmup 4 must be below --max-steps 4")]


@pytest.mark.parametrize("argv,words", RELATIONS, ids=["min-lr-above-lr", "warmup-not-below-max-steps"])
def test_flags_that_contradict_each_other_are_refused_before_anything_is_written(argv, words, tmp_path):
    r = run_main("tasks.pretrain", ["--out", str(tmp_path / "run"), *argv], env=env())
    one_line(r, 2, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,flag", [(["--seed", "-1"], "--seed"), (["--loss-scale", "nan"], "--loss-scale"),
                                       (["--loss-scale", "inf"], "--loss-scale"),
                                       (["--embedding-std", "nan"], "--embedding-std"),
                                       (["--train-frac", "1.5"], "--train-frac"), (["--train-frac", "nan"], "--train-frac")])
def test_the_numbers_the_issue_found_are_usage_errors_before_anything_is_written(argv, flag, tmp_path):
    r = run_main("tasks.pretrain", ["--out", str(tmp_path / "run"), *argv], env=env())
    one_line(r, 2, flag)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- runs to use

@pytest.fixture(scope="module")
def made(tmp_path_factory, needs_tokenizer, judge_url) -> dict:
    from files.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    d = tmp_path_factory.mktemp("limits")
    rows = ["ham\thello there friend", "spam\twin money now", "ham\tsee you soon", "spam\tfree prize click"]
    (d / "toy.tsv").write_text("\n".join(rows * 10) + "\n")
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(24)]
    (d / "instr.json").write_text(json.dumps(records))
    (d / "responses.json").write_text(json.dumps([{**r, "model_response": r["output"]} for r in records[:2]]))
    questions = [{"question": f"What is {i} + {i}?", "answer_a": str(2 * i), "answer_b": str(i), "answer_c": "0",
                  "answer_d": "7", "correct_answer": "A", "topic": "anatomy"} for i in range(1, 3)]
    (d / "mmlu.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (d / "text.txt").write_text((cache_dir() / "the-verdict.txt").read_text()[:3000])
    lm = ["--context", "16", "--batch-size", "2", "--max-steps", "1"]
    assert run_main("tasks.pretrain", ["--out", str(d / "lm"), "--text", str(d / "text.txt"), *TINY, *lm],
                    env=env()).code == 0
    assert run_main("tasks.classify", ["train", "--data", str(d / "toy.tsv"), "--init", "random", *TINY[:-2],
                                       "--context", "32", "--batch-size", "4", "--max-steps", "1",
                                       "--out", str(d / "cls")], env=env()).code == 0
    return {"d": d, "judge": judge_url}


# ----------------------------------------------------------------------------- memory

def _memory_cases(d: Path, tmp: Path) -> list[tuple[str, list[str], str, Path]]:
    """(module, argv, the flag to lower, what must not be created)."""
    run = tmp / "run"
    return [
        ("tasks.pretrain", ["--out", run, "--batch-size", HUGE], "--batch-size", run),
        ("tasks.pretrain", ["--out", run, "--n-embd", 10 ** 7, "--n-head", "1"], "--n-embd", run),
        ("tasks.pretrain", ["--out", run, "--context", HUGE], "--context", run),
        ("tasks.classify", ["train", "--data", d / "toy.tsv", "--init", "random", "--batch-size", HUGE,
                            "--out", run], "--batch-size", run),
        ("tasks.instruct", ["train", "--data", d / "instr.json", "--init", "random", "--batch-size", HUGE,
                            "--out", run], "--batch-size", run),
        ("tasks.instruct", ["respond", "--init", d / "lm", "--data", d / "instr.json", "--batch-size", HUGE,
                            "--out", tmp / "r.json"], "--batch-size", tmp / "r.json"),
        ("tasks.classify", ["predict", "--init", d / "cls", "--batch-size", HUGE, "hello"], "--batch-size",
         tmp / "none"),
        ("tasks.serve", ["--init", d / "lm", "--max-batch", HUGE, "--port", "0"], "--max-batch", tmp / "none"),
        ("tasks.prepare", ["--input", d / "text.txt", "--out", tmp / "sh", "--shard-tokens", 10 ** 13],
         "--shard-tokens", tmp / "sh"),
    ]


def test_sizes_the_machine_cannot_hold_are_refused_with_the_estimate_before_anything_is_written(made, tmp_path):
    pytest.importorskip("starlette")
    for module, argv, flag, unwritten in _memory_cases(made["d"], tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        r = run_main(module, [str(a) for a in argv], env=env(), timeout=120)
        line = one_line(r, 2, "needs about", "available", flag)
        assert " GB" in line or " TB" in line or " PB" in line, line
        assert not unwritten.exists() and sorted(p.name for p in tmp_path.iterdir()) == before, (module, argv)


def test_a_memory_error_left_is_one_line():
    from tasks.common.errors import failure
    code, line = failure(MemoryError("Unable to allocate 7.3 TiB"))
    assert code == 1 and line.startswith("out of memory (Unable to allocate 7.3 TiB)")


# ----------------------------------------------------------------------------- paths

EMPTY_OUT = [("tasks.pretrain", []), ("tasks.classify", ["train"]), ("tasks.instruct", ["train"]),
             ("tasks.prepare", ["--input", "x.txt"]), ("tasks.evaluate", ["hellaswag", "--init", "{d}/lm"]),
             ("tasks.evaluate", ["mmlu", "--data", "{d}/mmlu.jsonl", "--init", "{d}/lm"]),
             ("tasks.instruct", ["respond", "--init", "{d}/lm", "--data", "{d}/instr.json"]),
             ("tasks.evaluate", ["judge", "--responses", "{d}/responses.json", "--url", "{judge}", "--model", "m"])]


@pytest.mark.parametrize("module,argv", EMPTY_OUT, ids=[f"{m.split('.')[1]}-{(a or ['-'])[0]}" for m, a in EMPTY_OUT])
def test_an_empty_out_is_refused(made, module, argv, tmp_path):
    argv = [a.format(d=made["d"], judge=made["judge"]) for a in argv]
    r = run_main(module, [*argv, "--out", ""], env=env(), cwd=str(tmp_path))
    one_line(r, 2, "--out is empty")
    assert not list(tmp_path.iterdir())  # the current folder is not taken for it


OUTPUT_FILES = [("tasks.instruct", ["respond", "--init", "{d}/lm", "--data", "{d}/instr.json", "--limit", "1",
                                    "--max-new-tokens", "2", "--no-progress"]),
                ("tasks.evaluate", ["mmlu", "--init", "{d}/lm", "--data", "{d}/mmlu.jsonl", "--no-progress"]),
                ("tasks.evaluate", ["judge", "--responses", "{d}/responses.json", "--url", "{judge}", "--model", "m",
                                    "--no-progress"])]


@pytest.mark.parametrize("module,argv", OUTPUT_FILES, ids=["respond", "mmlu", "judge"])
def test_an_output_file_under_folders_not_made_yet_gets_them(made, module, argv, tmp_path):
    out = tmp_path / "not" / "yet" / "out.json"
    r = run_main(module, [*(a.format(d=made["d"], judge=made["judge"]) for a in argv), "--out", str(out)],
                 env=env())
    assert r.code == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())


def test_an_output_file_under_a_file_is_refused_before_the_model_runs(made, tmp_path):
    (tmp_path / "a_file").write_text("x")
    r = run_main("tasks.generate", ["--init", str(made["d"] / "lm"), "--attention-map",
                                    str(tmp_path / "a_file" / "map.png")], env=env())
    one_line(r, 2, "--attention-map", "is a file")


# ----------------------------------------------------------------------------- streams

def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


def test_a_name_the_terminal_cannot_encode_does_not_fail_a_finished_run(made, tmp_path):
    out = tmp_path / "r\u00fcn-\u4e00"
    r = _cli("tasks.pretrain", "--out", out, "--text", made["d"] / "text.txt", *TINY, "--context", "16",
             "--batch-size", "2", "--max-steps", "1", env=env(PYTHONIOENCODING="ascii"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "r\\xfcn-\\u4e00" in r.stdout  # escaped, not a UnicodeEncodeError
    assert (out / "run.json").is_file()


def test_generating_with_stdout_closed_ends_quietly(made):
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m tasks.generate --init "{made["d"] / "lm"}" '
                                      "--max-new-tokens 3 >&-"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_a_reader_that_goes_away_ends_generation_quietly(made):
    proc = subprocess.Popen([sys.executable, "-m", "tasks.generate", "--init", str(made["d"] / "lm"),
                             "--max-new-tokens", "400", "--ignore-eos", "--prompt", "a"], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1) == b"a"
    proc.stdout.close()  # `| head -c 1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert err == "", err


# ----------------------------------------------------------------------------- hints

def test_a_full_disk_under_a_command_without_resume_does_not_hint_resume(made, tmpfs):
    from files.hub import cache_dir
    full = tmpfs("512k")
    big = made["d"] / "big.txt"  # about 500,000 tokens: 1 MB of uint16 shards
    if not big.exists():
        big.write_text((cache_dir() / "the-verdict.txt").read_text() * 100)
    r = run_main("tasks.prepare", ["--input", str(big), "--out", str(full / "sh"),
                                   "--shard-tokens", "200000", "--workers", "1", "--no-progress"], env=env(),
                 timeout=300)
    if r.code == 0:
        pytest.skip("the shards fit in 512 kB")
    line = one_line(r, 1, "No space left on device", "run the same command again")
    assert "--resume" not in line


def test_a_read_only_data_cache_is_named_as_such_not_blamed_on_out(made, tmpfs, tmp_path):
    cache = tmpfs("1m", read_only=True)
    r = run_main("tasks.pretrain", ["--out", str(tmp_path / "run"), "--text", str(made["d"] / "text.txt"), *TINY,
                                    "--context", "16", "--batch-size", "2", "--max-steps", "1"],
                 env=env(MINIGRAD_DATA_DIR=str(cache)))
    line = one_line(r, 1, "MINIGRAD_DATA_DIR", str(cache))
    assert "--out" not in line
    assert not (tmp_path / "run").exists()

