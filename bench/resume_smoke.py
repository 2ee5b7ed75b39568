"""CLI smoke test: a pretrain run stopped by SIGTERM and resumed ends with the losses of a run
that was never stopped.

    python -m bench.resume_smoke [--backend numpy|cupy] [--steps 12] [--out FILE]

Runs `python -m tasks.pretrain` three times on a tiny model (the-verdict, data cache): a reference
run, a run sent SIGTERM once it has logged a step after its first checkpoint, and `--resume` of
that run. Writes a short markdown verdict; exit status 0 when every step's loss matches bit for
bit, 1 when not, 2 when it could not run (no data, no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import BenchError, main_guard, write_atomic
from tasks.common.args import add_backend_arg

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--context", "64", "--batch-size", "4",
        "--sample-tokens", "0", "--no-progress", "--seed", "7"]


def _losses(run: Path) -> dict[int, float]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in recs if r.get("type") == "step"}


@main_guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resume_smoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_arg(p)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out", help="markdown file for the verdict")
    args = p.parse_args(argv)
    every = max(2, args.steps // 3)
    base = [sys.executable, "-m", "tasks.pretrain", *TINY, "--backend", args.backend, "--dropout", str(args.dropout),
            "--max-steps", str(args.steps), "--eval-every", str(every)]
    tmp = Path(tempfile.mkdtemp(prefix="resume-smoke-"))
    ref, cut = tmp / "ref", tmp / "cut"
    r = subprocess.run(base + ["--out", str(ref)], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"the reference run failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    with open(tmp / "cut.log", "w") as log:
        proc = subprocess.Popen(base + ["--out", str(cut)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline, sent_at = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        done = max(_losses(cut), default=0)
        if done > every:  # a checkpoint exists (written at step `every`), and some steps after it
            os.kill(proc.pid, signal.SIGTERM)
            sent_at = done
            break
        time.sleep(0.01)
    proc.wait(timeout=600)
    # 143: the trainer finished its step, saved and exited, as it does on SIGTERM
    if sent_at is None or proc.returncode not in (143, -signal.SIGTERM):
        raise BenchError(f"the run ended (exit {proc.returncode}) before SIGTERM reached it; try more --steps")
    r = subprocess.run(base + ["--out", str(cut), "--resume"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"--resume failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    want, got = _losses(ref), _losses(cut)
    same = want == got and sorted(got) == list(range(1, args.steps + 1))
    text = "\n".join([
        f"# Resume after SIGTERM ({args.backend})", "",
        f"Tiny model, {args.steps} steps, checkpoint every {every}, dropout {args.dropout:g}. SIGTERM after "
        f"step {sent_at} was logged (exit {proc.returncode}); `--resume` then finished the run.", "",
        f"Every step's loss equal to the uninterrupted run's, bit for bit: **{'PASS' if same else 'FAIL'}**"
        + ("" if same else f" (reference {want}, resumed {got})"), ""])
    print(text)
    if args.out:
        write_atomic(args.out, text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
