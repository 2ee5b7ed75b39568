"""The headline command, run as a user runs it, and what its run folder says about its speed.

    python -m bench.headline [--out FILE] [--run DIR] -- PRETRAIN_ARGS ...

Runs `python -m tasks.pretrain PRETRAIN_ARGS --out DIR` (DIR a temporary folder unless --run
is given) and writes a short markdown report from DIR/metrics.jsonl: the tokens/s of each
evaluation record (tasks.training's Trainer measures them between evaluations, evaluation and saving left
out), the steady rate (the records after the first, which holds the warm-up: kernel compilation,
the first allocations), the losses, the wall time. Exit status: the command's, or 1 when it left
no evaluation record.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import main_guard, markdown_table, write_atomic

REPO = Path(__file__).resolve().parents[1]


def summarize(command: list[str], run: Path, rc: int, seconds: float) -> tuple[str, bool]:
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    evals = [r for r in records if r.get("type") == "eval"]
    steps = [r for r in records if r.get("type") == "step"]
    unit = next((k for r in evals for k in r if k.endswith("_per_s")), "tokens_per_s")
    lines = ["# The headline command", "", f"`{shlex.join(command)}`", "",
             f"Exit status {rc} after {seconds:.0f} s (start-up, data, evaluations and the last checkpoint included)."]
    if not evals:
        return "\n".join(lines + ["", "No evaluation record in metrics.jsonl: no speed to report.", ""]), False
    rows = [[r["step"], f"{r[unit]:.0f}", f"{r.get('train_loss', float('nan')):.3f}", f"{r.get('val_loss', float('nan')):.3f}"]
            for r in evals]
    steady = [r[unit] for r in evals[1:]] or [evals[0][unit]]
    lines += ["", f"**{sum(steady) / len(steady):.0f} {unit.replace('_per_s', '')}/s** steady "
                  f"({'mean of the evaluations after the first, which holds the warm-up' if len(evals) > 1 else 'one evaluation only: warm-up included'}).",
              "", "Each evaluation's rate covers the steps since the one before (evaluation and saving left out):", "",
              markdown_table(["step", f"{unit.replace('_per_s', '')}/s", "train loss", "val loss"], rows)]
    if steps:
        first, last = steps[0], steps[-1]
        skipped = last.get("skipped_steps")
        lines += ["", f"Training loss {first['loss']:.3f} at step {first['step']}, {last['loss']:.3f} at step "
                      f"{last['step']}" + ("" if skipped is None else f"; {skipped} step(s) skipped for float16 overflow, "
                                           f"loss scale {last.get('loss_scale')}") + "."]
    return "\n".join(lines + [""]), rc == 0


@main_guard
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m bench.headline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="markdown file (default: print only)")
    p.add_argument("--run", help="the run folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv[:split])
    pretrain = argv[split + 1:]
    with tempfile.TemporaryDirectory(prefix="headline-") as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        command = [sys.executable, "-m", "tasks.pretrain", *pretrain, "--out", str(run)]
        t0 = time.perf_counter()
        rc = subprocess.run(command, cwd=REPO, env=os.environ.copy()).returncode
        shown = ["python", "-m", "tasks.pretrain", *pretrain]
        text, ok = summarize(shown, run, rc, time.perf_counter() - t0)
    if args.out:
        write_atomic(args.out, text)
    print(text)
    return rc if rc else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
