"""Starting tasks.serve for the tests: a tiny random GPT-2 saved as a run folder, served by a
subprocess on a free 127.0.0.1 port."""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def save_tiny_run(run_dir: Path, task: str = "pretrain", n_ctx: int = 1024) -> Path:
    """A run folder of `task` holding a random 2-layer, 32-wide GPT-2 with GPT-2's vocabulary."""
    import minigrad as mg
    from gpt2 import GPT2, GPT2Config
    from tasks.runs.checkpoint import save_checkpoint

    mg.manual_seed(0)
    model = GPT2(GPT2Config(n_ctx=n_ctx, n_embd=32, n_layer=2, n_head=2))
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"task": task, "model_config": model.config.to_dict()}))
    save_checkpoint(run_dir, 1, model)
    return run_dir


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / "data" / "tiktoken_cache"))
    return e


class Served:
    """A tasks.serve subprocess; `url` is http://127.0.0.1:PORT."""

    def __init__(self, *args: str, extra_env: dict | None = None, wait: float = 120.0):
        pytest.importorskip("starlette", reason="tasks.serve needs the [serve] extra (starlette)")
        pytest.importorskip("uvicorn", reason="tasks.serve needs the [serve] extra (uvicorn)")
        self.log = tempfile.TemporaryFile(mode="w+")   # a file, not a pipe nobody drains
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.serve", "--port", "0", *args],
                                     cwd=REPO, env={**env(), **(extra_env or {})},
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + wait
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                break
        if "http://" not in line:
            self.close()
            raise RuntimeError(f"tasks.serve did not start: {line!r} {self.stderr()[-2000:]}")
        self.url = re.search(r"http://\S+", line).group()
        self.banner = line

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
