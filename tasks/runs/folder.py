"""Starting or resuming a run folder, the one way every training task does it.

    args = parse(parser, argv)                      # remembers which flags were typed
    run = start_run(vars(args), args.typed)         # checks everything; creates nothing
    args = argparse.Namespace(**run.args)           # on --resume: the run's own arguments
    ...                                             # build the model, the data
    record_run(run, "pretrain", model.config, ...)  # run.json, once, before the first step

`--out R --resume` needs no other flag: the run's own arguments come back from `R/run.json`.
A typed flag that would change the run (lr, model, data, seed, batch, schedule, ...) is refused
with both values named, and run.json is left byte for byte as it was. Extending a run
(`--max-steps`, `--epochs`) is allowed where the schedule is defined past its end (constant
learning rate); each extension is appended to run.json's `history`, never written over `args`.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Mapping

from ..common.args import recorded_args
from ..common.errors import TaskError, UsageError
from ..common.jsonfiles import read_json, write_json

# Flags that say how to run, not what the run is: free to differ on --resume.
HOW_TO_RUN = {"out", "resume", "no_progress", "backend", "keep", "eval_every", "eval_batches", "log_every",
              "save_every", "sample_tokens", "weights_only"}
# Flags that extend a run; allowed on --resume where the learning rate schedule permits.
EXTENSIONS = {"max_steps", "epochs"}


def check_numbers(flags: Mapping[str, Any]) -> None:
    """Every numeric flag of a command line (`vars(args)`) in range, before anything is read or written."""
    at_least_1 = ("epochs", "batch_size", "grad_accum", "eval_every", "eval_batches", "max_steps",
                  "n_layer", "n_head", "n_embd", "context", "keep", "max_length", "report_batches",
                  "lora_rank", "stride", "save_every", "log_every", "loss_scale_window")
    for name in at_least_1:
        value = flags.get(name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("weight_decay", "warmup", "min_lr", "grad_clip", "sample_tokens"):
        value = flags.get(name)
        if value is not None and (value < 0 or not math.isfinite(value)):
            raise UsageError(f"--{name.replace('_', '-')} must be at least 0, got {value}")
    lr = flags.get("lr")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"--lr must be positive, got {lr}")
    dropout = flags.get("dropout")
    if dropout is not None and not 0 <= dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {dropout}")


def check_out(out: Path, resume: bool) -> None:
    """--out can be created and written, and holds no other run unless --resume."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable (read-only or no permission)")


def check_output_file(path: Path) -> None:
    """An output file can be written: not a folder, and its folder exists or can be created."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name")
    check_out(path.parent, resume=True)


def effective_args(run: dict[str, Any]) -> dict[str, Any]:
    """run.json's arguments with every recorded extension applied, oldest first."""
    args = dict(run["args"])
    for entry in run.get("history", []):
        args.update(entry.get("changed", {}))
    return args


def _extension_refused(saved: dict[str, Any], changes: dict[str, Any], run_dir: Path) -> str | None:
    if saved.get("schedule", "constant") != "constant" and changes:
        return (f"this run's {saved['schedule']} schedule is fixed by its length "
                f"(--max-steps {saved.get('max_steps')}, --epochs {saved.get('epochs')}); extending it would "
                f"change the learning rate of steps already taken. Start a new run from it with "
                f"--init {run_dir} instead")
    return None


@dataclass(frozen=True)
class RunSpec:
    """A run folder about to be started or resumed: checked, nothing created yet."""
    out: Path
    resuming: bool           # an existing run is continued (its run.json is kept)
    args: dict[str, Any]     # the command line (on --resume merged with run.json's): what run.json records


def start_run(flags: Mapping[str, Any], typed: Collection[str] = ()) -> RunSpec:
    """Validate a training task's command line (`vars(args)`; `typed`: the flags the user typed)
    and, for --resume, merge it with the run's own. Creates nothing."""
    args = recorded_args(flags)
    out = Path(args["out"])
    check_numbers(args)
    if args.get("weights_only") and not args["resume"]:
        raise UsageError("--weights-only says how to --resume a run whose optimizer state is missing; "
                         "add --resume")
    check_out(out, args["resume"])
    run_json = out / "run.json"
    if not (args["resume"] and run_json.is_file()):
        if args["resume"]:
            print(f"note: {out} holds no run yet; starting a new one")
        return RunSpec(out, False, args)
    run = read_json(run_json)
    if not isinstance(run, dict) or not isinstance(run.get("args"), dict):
        raise UsageError(f"{run_json} has no 'args': not a run folder of these tasks")
    saved = effective_args(run)
    changes = _changes(args, saved, set(typed), out)
    merged = _merged(args, saved, changes, set(typed), run_json)
    if changes:
        append_history(out, {"changed": changes}, run)
        print("extending the run: " + ", ".join(f"--{k.replace('_', '-')} {saved.get(k)} -> {v}"
                                                for k, v in changes.items()))
    return RunSpec(out, True, merged)


def _changes(given: dict[str, Any], saved: dict[str, Any], typed: set[str], out: Path) -> dict[str, Any]:
    """The typed flags that differ from the run's own: extensions, or a UsageError naming both values."""
    changes: dict[str, Any] = {}
    for name in sorted(typed - HOW_TO_RUN):
        new, old = given.get(name), saved.get(name)
        if new == old:
            continue
        if name not in EXTENSIONS:
            raise UsageError(f"--{name.replace('_', '-')} {new} differs from this run's {old}; --resume "
                             f"continues the run as it was (drop the flag, or start a new run with --init {out})")
        changes[name] = new
    refused = _extension_refused(saved, changes, out)
    if refused:
        raise UsageError(refused)
    return changes


def _merged(given: dict[str, Any], saved: dict[str, Any], changes: dict[str, Any], typed: set[str],
            run_json: Path) -> dict[str, Any]:
    """The command line with the run's own values, except the folder's place, the extensions and
    the typed flags that say how to run."""
    merged = dict(given)
    for name, value in saved.items():
        if name in ("out", "resume") or name in changes or (name in HOW_TO_RUN and name in typed):
            continue  # the folder is where it is now, whatever its old path was
        merged[name] = value
    try:
        check_numbers(merged)
    except TypeError:  # a number that is not one: run.json was edited or damaged
        bad = sorted(k for k, v in saved.items() if isinstance(v, str) and isinstance(given.get(k), (int, float)))
        raise TaskError(f"{run_json}: 'args' holds text where numbers belong ({', '.join(bad) or 'a value'}); "
                        "the run cannot be resumed from it") from None
    return merged


def append_history(run_dir: Path, entry: dict[str, Any], run: dict[str, Any] | None = None) -> None:
    """Add a dated entry to run.json's `history` (an extension, a resume from the weights alone):
    what the run was asked for at its start (`args`) is never written over."""
    run_json = run_dir / "run.json"
    run = read_json(run_json) if run is None else run
    history = run.get("history", []) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}]
    write_json(run_json, {**run, "history": history})


def record_run(run: RunSpec, task: str, model_config, model_kind: str, **extra: Any) -> None:
    """Create the run folder and write run.json, once, before the first step: the task, its
    arguments, the model's config and kind (a name of gpt2.registry, never a module path) and the
    task's own `extra` fields. A resumed run keeps the run.json it has."""
    run.out.mkdir(parents=True, exist_ok=True)
    if not run.resuming:
        write_json(run.out / "run.json", {"task": task, "args": run.args, "model_config": model_config.to_dict(),
                                          "model_kind": model_kind, **extra})
