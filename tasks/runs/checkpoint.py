"""Run folders and checkpoints: everything needed to resume a run exactly, written atomically.

    RUN/run.json                      the task, its arguments and the model config
    RUN/metrics.jsonl                 one JSON record per step and per evaluation
    RUN/checkpoints/step_00000045/    model.safetensors, optimizer.safetensors, state.json, and
                                      manifest.json: the sha256 of each of the other three

A checkpoint folder is written under a temporary name and renamed into place, so a crash (or
SIGKILL) leaves either the whole checkpoint or none of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import minigrad as mg
from files.hub import sha256_of
from files.atomic import umask_mode
from files.schema import SchemaError, check

from ..common.errors import TaskError
from ..common.signals import pause_point
from ..common.jsonfiles import read_json, write_json

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"   # every other file of a checkpoint with its sha256
FORMAT = 2                   # state.json's format: 2 has a manifest.json beside it


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of a run, oldest first (anything else in checkpoints/ but a
    temporary being written is refused, named: runs.schema.checkpoint_folders)."""
    from .schema import checkpoint_folders
    return [p for _, p in checkpoint_folders(Path(run_dir))]


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
        full_state = dict(state or {}, step=step, format=FORMAT)
        if optimizer is not None:
            opt = optimizer.state_dict()
            mg.save(opt["arrays"], tmp / "optimizer.safetensors")
            full_state["optimizer"] = opt["meta"]
        write_json(tmp / "state.json", full_state)
        write_json(tmp / MANIFEST, {"files": {p.name: sha256_of(p) for p in sorted(tmp.iterdir())},
                                    "state": {k: _digest(v) for k, v in full_state.items()}})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _digest(value: Any) -> str:
    """sha256 of a JSON value's content (not its layout)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def verify_checkpoint(ckpt: str | os.PathLike) -> dict[str, Any]:
    """state.json of `ckpt`, checked: its shape (runs.schema.STATE), then its content and every
    other file against the sha256 in manifest.json (state.json's key by key, so that a change
    names its key); in a checkpoint written before there was a manifest, the files state.json
    lists. A missing optimizer state is left to load_checkpoint (the weights alone serve
    generate, --init and --resume --weights-only)."""
    from .schema import MANIFEST as MANIFEST_SPEC, STEP_NAME, check_state
    ckpt = Path(ckpt)
    manifest_path, state_path = ckpt / MANIFEST, ckpt / "state.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    if manifest is not None:
        check(manifest, MANIFEST_SPEC, str(manifest_path))
        for name in ("state.json", "model.safetensors"):
            if name not in manifest["files"]:
                raise SchemaError(str(manifest_path), f"files.{name}", "is missing: the manifest must list it")
    state = read_json(state_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} is not a checkpoint's state (a JSON object with the run's position "
                              "and its files' sha256); the checkpoint cannot be used")
    m = STEP_NAME.fullmatch(ckpt.name)
    check_state(state, state_path, int(m[1]) if m else None)
    if manifest is None:
        if state.get("format", 1) >= FORMAT:
            raise CheckpointError(f"{manifest_path} is missing; the checkpoint cannot be trusted (restore it, or "
                                  "delete this checkpoint folder to resume from the one before)")
        _verify_files(ckpt, state.get("files", {}), "state.json")  # checkpoints before manifests list none
        return state
    _verify_state(state, manifest, state_path)
    _verify_files(ckpt, {k: v for k, v in manifest["files"].items() if k != "state.json"}, MANIFEST)
    return state


def _verify_state(state: dict[str, Any], manifest: dict[str, Any], path: Path) -> None:
    """state.json's content against the manifest: each key's digest, or the file's own."""
    written = manifest.get("state")
    if written is None:
        if sha256_of(path) != manifest["files"]["state.json"]:
            raise CheckpointError(f"{path} is corrupt (its sha256 differs from the one in {MANIFEST})")
        return
    for key in sorted(set(written) | set(state)):
        if key not in state:
            raise SchemaError(str(path), key, None)
        if key not in written or _digest(state[key]) != written[key]:
            raise SchemaError(str(path), key, f"is not what was written (its sha256 differs from the one in "
                                              f"{MANIFEST}): the checkpoint was changed or damaged")


def _verify_files(ckpt: Path, listed: dict[str, str], manifest: str) -> None:
    for name, digest in listed.items():
        path = ckpt / name
        if name == "optimizer.safetensors" and not path.is_file():
            continue
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint cannot be used")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path} is corrupt (its sha256 differs from the one in {manifest})")


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
    try:
        model.load_state_dict(mg.load(ckpt / "model.safetensors"))
    except mg.nn.StateDictError as e:
        raise CheckpointError(f"{ckpt / 'model.safetensors'} does not fit the model run.json describes: {e}") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict({"arrays": mg.load(ckpt / "optimizer.safetensors"),
                                       "meta": state["optimizer"]})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt / 'optimizer.safetensors'} (with 'optimizer' of state.json) does not fit "
                                  f"the model's trained parameters: {e}") from None
    return state


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of one of its checkpoint folders."""
    path = Path(path)
    if (path / "state.json").is_file() and path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return path
