"""Checkpoints a run can trust: sha256 manifest checked on load, no NaN ever saved, stale
temporary folders cleaned, missing optimizer state refused (issue 11, point 3). The same faults
met through the command line (a full disk included) are in tests/test_misuse.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from minigrad.optim import AdamW
from tasks.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = GPT2Config(vocab_size=64, n_ctx=16, n_embd=16, n_layer=1, n_head=2)


def _model_and_opt():
    mg.manual_seed(0)
    model = GPT2(CONFIG)
    return model, AdamW(model.parameters(), lr=1e-3)


def test_manifest_lists_every_file_and_a_corrupt_one_is_named(tmp_path):
    model, opt = _model_and_opt()
    ckpt = save_checkpoint(tmp_path, 3, model, opt)
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "optimizer.safetensors", "state.json"}
    load_checkpoint(ckpt, *_model_and_opt())  # intact: loads
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(ckpt, *_model_and_opt())


def test_missing_optimizer_state_is_refused(tmp_path):
    model, opt = _model_and_opt()
    ckpt = save_checkpoint(tmp_path, 1, model, opt)
    (ckpt / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="optimizer.safetensors is missing"):
        load_checkpoint(ckpt, *_model_and_opt())


def test_non_finite_weights_are_never_saved(tmp_path):
    model, opt = _model_and_opt()
    good = save_checkpoint(tmp_path, 1, model, opt)
    model.wte.weight.data[0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN or inf at step 2.*step_00000001"):
        save_checkpoint(tmp_path, 2, model, opt)
    assert latest_checkpoint(tmp_path) == good


def test_stale_temporary_folders_are_removed_by_the_next_save(tmp_path):
    model, opt = _model_and_opt()
    stale = tmp_path / "checkpoints" / ".step_00000005.abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 1000)  # what SIGKILL mid-write leaves
    save_checkpoint(tmp_path, 6, model, opt)
    assert not stale.exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000006"]


TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "16", "--batch-size", "2",
        "--sample-tokens", "0", "--no-progress", "--eval-batches", "1"]


def _pretrain(out, *extra):
    return subprocess.run([sys.executable, "-m", "tasks.pretrain", *TINY, "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.usefixtures("needs_tokenizer")
def test_init_accepts_a_checkpoint_folder_and_its_weights_file(tmp_path):
    from files.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    run = tmp_path / "run"
    assert _pretrain(run, "--max-steps", "1", "--eval-every", "1").returncode == 0
    ckpt = latest_checkpoint(run)
    for init in (ckpt, ckpt / "model.safetensors"):
        out = tmp_path / f"from_{Path(init).name}"
        r = _pretrain(out, "--init", str(init), "--max-steps", "1", "--eval-every", "1")
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "run.json").read_text())["model_config"]["n_embd"] == 16
