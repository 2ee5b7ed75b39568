"""A fresh machine offline with an empty cache: the main job says what is missing, in one line."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_offline_with_an_empty_cache_is_one_clear_error(tmp_path):
    env = {**os.environ, "MINIGRAD_OFFLINE": "1", "MINIGRAD_DATA_DIR": str(tmp_path / "cache"),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"), "PYTHONPATH": str(ROOT)}
    env.pop("MINIGRAD_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "tasks.pretrain", "--out", str(tmp_path / "run")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    # it names what to fetch and where to put it
    assert "encoder.json" in lines[0] and str(tmp_path / "cache") in lines[0]
    assert not (tmp_path / "run").exists()  # nothing created before the check
