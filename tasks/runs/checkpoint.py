"""Run folders and checkpoints: everything needed to resume a run exactly, written atomically.

    RUN/run.json                      the task, its arguments and the model config
    RUN/metrics.jsonl                 one JSON record per step and per evaluation
    RUN/checkpoints/step_00000045/    model.safetensors, optimizer.safetensors, state.json

A checkpoint folder is written under a temporary name and renamed into place, so a crash (or
SIGKILL) leaves either the whole checkpoint or none of it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import minigrad as mg
from files.hub import sha256_of
from files.atomic import umask_mode

from ..common.errors import TaskError
from ..common.guard import pause_point
from ..common.jsonfiles import read_json, write_json

CHECKPOINTS = "checkpoints"


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


class CheckpointError(TaskError):
    """A checkpoint that cannot be written or trusted: non-finite weights, a file whose sha256
    disagrees with its manifest, missing optimizer state."""


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete `.step_*` folders a killed writer left behind (one run has one writer, so any
    temporary folder found before we write is stale). Returns what was removed."""
    folder = Path(run_dir) / CHECKPOINTS
    stale = [p for p in folder.glob(".step_*") if p.is_dir()] if folder.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _all_finite(arrays: dict[str, Any]) -> str | None:
    """The name of the first array holding NaN or inf, or None."""
    for name, a in arrays.items():
        a = a.data if isinstance(a, mg.Tensor) else a
        if a.dtype.kind == "f" and not bool(mg.backend.array_module(a).isfinite(a).all()):
            return name
    return None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer=None,
                    state: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write model (+ optimizer) weights and a JSON state; keep only the newest `keep`.

    state.json lists each file's sha256 (checked by load_checkpoint). Weights holding NaN or inf
    are refused, so the newest checkpoint is always one worth resuming from."""
    weights = model.state_dict()
    bad = _all_finite(weights)
    if bad is not None:
        raise CheckpointError(f"{bad} holds NaN or inf at step {step}: not saved; the last good checkpoint "
                              f"is {latest_checkpoint(run_dir) or '(none yet)'}")
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    final = folder / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=folder))
    try:
        os.chmod(tmp, umask_mode(0o777))
        mg.save(weights, tmp / "model.safetensors")
        pause_point("checkpoint")
        full_state = dict(state or {}, step=step)
        if optimizer is not None:
            opt = optimizer.state_dict()
            mg.save(opt["arrays"], tmp / "optimizer.safetensors")
            full_state["optimizer"] = opt["meta"]
        full_state["files"] = {p.name: sha256_of(p) for p in sorted(tmp.glob("*.safetensors"))}
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


def verify_checkpoint(ckpt: str | os.PathLike) -> dict[str, Any]:
    """state.json of `ckpt`, after checking every file it lists against its sha256. A missing
    optimizer state is left to load_checkpoint (the weights alone serve generate, --init and
    --resume --weights-only)."""
    ckpt = Path(ckpt)
    state = read_json(ckpt / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("files", {}), dict):
        raise CheckpointError(f"{ckpt / 'state.json'} is not a checkpoint's state (a JSON object with its "
                              "files' sha256); the checkpoint cannot be used")
    for name, digest in state.get("files", {}).items():  # checkpoints before manifests list none
        path = ckpt / name
        if name == "optimizer.safetensors" and not path.is_file():
            continue
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint cannot be used")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path} is corrupt (its sha256 differs from the one in state.json)")
    return state


def load_checkpoint(ckpt: str | os.PathLike, model, optimizer=None) -> dict[str, Any]:
    """Load weights (and optimizer state) from a checkpoint folder; returns its state dict.

    With an optimizer, its state must be there: resuming without it would not be exact."""
    ckpt = Path(ckpt)
    state = verify_checkpoint(ckpt)
    if optimizer is not None and not (ckpt / "optimizer.safetensors").is_file():
        raise CheckpointError(f"{ckpt / 'optimizer.safetensors'} is missing: resuming without the optimizer's "
                              "state would not continue the run exactly; add --weights-only to continue "
                              f"from the weights alone, or start a new run from them with --init {ckpt}")
    if optimizer is not None and "optimizer" not in state:
        raise CheckpointError(f"{ckpt / 'state.json'} lacks 'optimizer' (the optimizer's step and settings); "
                              "add --weights-only to continue from the weights alone")
    model.load_state_dict(mg.load(ckpt / "model.safetensors"))
    if optimizer is not None:
        optimizer.load_state_dict({"arrays": mg.load(ckpt / "optimizer.safetensors"),
                                   "meta": state["optimizer"]})
    return state


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of one of its checkpoint folders."""
    path = Path(path)
    if (path / "state.json").is_file() and path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return path
