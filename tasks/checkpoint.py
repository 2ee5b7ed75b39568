"""Run folders and checkpoints: everything needed to resume a run exactly, written atomically.

    RUN/run.json                      the task, its arguments and the model config
    RUN/metrics.jsonl                 one JSON record per step and per evaluation
    RUN/checkpoints/step_00000045/    model.safetensors, optimizer.safetensors, state.json

A checkpoint folder is written under a temporary name and renamed into place, so a crash (or
SIGKILL) leaves either the whole checkpoint or none of it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import minigrad as mg
from minigrad.io import atomic_write_text, umask_mode

CHECKPOINTS = "checkpoints"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_")
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer=None,
                    state: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write model (+ optimizer) weights and a JSON state; keep only the newest `keep`."""
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=folder))
    try:
        os.chmod(tmp, umask_mode(0o777))
        mg.save(model.state_dict(), tmp / "model.safetensors")
        full_state = dict(state or {}, step=step)
        if optimizer is not None:
            opt = optimizer.state_dict()
            mg.save(opt["arrays"], tmp / "optimizer.safetensors")
            full_state["optimizer"] = opt["meta"]
        write_json(tmp / "state.json", full_state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: str | os.PathLike, model, optimizer=None) -> dict[str, Any]:
    """Load weights (and optimizer state) from a checkpoint folder; returns its state dict."""
    ckpt = Path(ckpt)
    state = read_json(ckpt / "state.json")
    model.load_state_dict(mg.load(ckpt / "model.safetensors"))
    if optimizer is not None and (ckpt / "optimizer.safetensors").is_file():
        optimizer.load_state_dict({"arrays": mg.load(ckpt / "optimizer.safetensors"),
                                   "meta": state["optimizer"]})
    return state


def load_model_from_run(path: str | os.PathLike, device: str = "cpu"):
    """The model of a run folder (its newest checkpoint) or of one checkpoint folder, in eval mode.

    Works for every task: run.json names the model kind, its config and, for a classifier, its head.
    """
    from gpt2.registry import build_model

    path = Path(path)
    if (path / "state.json").is_file() and path.parent.name == CHECKPOINTS:
        ckpt, run_dir = path, path.parent.parent
    else:
        run_dir, ckpt = path, latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{path} holds no checkpoint (looked in {path / CHECKPOINTS})")
    run = read_json(run_dir / "run.json")
    model = build_model(run)  # the kind run.json names, from gpt2's registry: never a module path
    state = mg.load(ckpt / "model.safetensors")
    model.load_state_dict(state)
    return model.to(device).eval()
