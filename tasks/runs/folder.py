"""Starting or resuming a run folder, the one way every training task does it: first check
everything, writing nothing; then act.

    args = parse(parser, argv)                      # flags in range (common.numbers)
    run = start_run(vars(args), args.typed, "pretrain")   # checks; takes the lock; writes nothing
    args = argparse.Namespace(**run.args)           # on --resume: the run's own arguments
    ...                                             # build the model, the data, the trainer;
    trainer.load(run)                               # the checkpoint and metrics checked, loaded
    begin_run(run, model.config, "gpt2", ...)       # now write: the lock's PID, run.json or the
    trainer.run()                                   # extension in its history; then train

`--out R --resume` needs no other flag: the run's own arguments come back from `R/run.json`,
checked against the command's flags (runs.schema). A typed flag that would change the run (lr,
model, data, seed, batch, schedule, ...) is refused with both values named. Extending a run
(`--max-steps`, `--epochs`) is allowed where the schedule is defined past its end (constant
learning rate); each extension is appended to run.json's `history` once the run has started,
never written over `args`. One process per folder: `start_run` takes the folder's lock
(files.lock), refusing a second process with the holder's PID; `begin_run` claims it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

import minigrad.distributed as dist
from files.lock import FolderBusy, FolderLock
from files.schema import SchemaError

from ..common.args import recorded_args
from ..common.errors import TaskError, UsageError
from ..common.jsonfiles import read_json, write_json
from ..common.paths import check_out
from .schema import COMMANDS, check_args, read_run_json

# Flags that say how to run, not what the run is: free to differ on --resume.
HOW_TO_RUN = {"out", "resume", "no_progress", "backend", "keep", "eval_every", "eval_batches", "log_every",
              "save_every", "sample_tokens", "weights_only"}
# Flags that extend a run; allowed on --resume where the learning rate schedule permits.
EXTENSIONS = {"max_steps", "epochs"}


class FolderInUse(TaskError):
    """Another process holds the run folder's lock."""


def effective_args(run: dict[str, Any]) -> dict[str, Any]:
    """run.json's arguments with every recorded extension applied, oldest first."""
    args = dict(run["args"])
    for entry in run.get("history", []):
        args.update(entry.get("changed", {}))
    return args


def new_run_hint(task: str, run_dir: Path) -> str:
    """How to start over from a run, as its task can: from its weights (--init RUN: a language
    model) or, for a classifier (which --init does not take), afresh in another folder."""
    if task == "classify":
        return "start a new run: the same command with another --out"
    return f"start a new run from it: --init {run_dir} --out <another folder>"


def _extension_refused(saved: dict[str, Any], changes: dict[str, Any], run_dir: Path, task: str) -> str | None:
    if saved.get("schedule", "constant") != "constant" and changes:
        return (f"this run's {saved['schedule']} schedule is fixed by its length "
                f"(--max-steps {saved.get('max_steps')}, --epochs {saved.get('epochs')}); extending it would "
                f"change the learning rate of steps already taken; {new_run_hint(task, run_dir)}")
    return None


@dataclass
class RunSpec:
    """A run folder about to be started or resumed: checked, nothing written yet."""
    out: Path
    resuming: bool                 # an existing run is continued (its run.json is kept)
    args: dict[str, Any]           # the command line (on --resume merged with run.json's): what run.json records
    task: str = ""
    run: dict[str, Any] | None = None                           # run.json as read, when resuming
    changes: dict[str, Any] = field(default_factory=dict)       # the extension asked for
    lock: FolderLock | None = None

    @property
    def run_json(self) -> Path:
        return self.out / "run.json"

    @contextlib.contextmanager
    def recorded(self, *keys: str) -> Iterator[None]:
        """Around the use of recorded arguments (a data source, --init): on --resume, an error
        they cause names run.json and the keys, since the values came from there."""
        try:
            yield
        except (TaskError, FileNotFoundError, ValueError) as e:
            if not self.resuming or isinstance(e, SchemaError):
                raise
            shown = ", ".join(f"'args.{k}' ({self.args.get(k)!r})" for k in keys)
            raise SchemaError(str(self.run_json), "", f"{shown} cannot be used: {e}") from None


def _lock(out: Path) -> FolderLock | None:
    """The folder's lock, taken without writing (None when the folder does not exist yet). Under
    mpiexec rank 0 alone takes it, for the whole job (the other ranks never write the folder)."""
    if not out.is_dir() or dist.rank() != 0:
        return None
    try:
        return FolderLock(out).acquire()
    except FolderBusy as e:
        raise FolderInUse(str(e)) from None


def start_run(flags: Mapping[str, Any], typed: Collection[str] = (), task: str = "") -> RunSpec:
    """Validate a training task's command line (`vars(args)` of common.args.parse; `typed`: the
    flags the user typed) and, for --resume, merge it with the run's own, checked. Takes the
    folder's lock; creates and writes nothing."""
    args = recorded_args(flags)
    out = Path(args["out"])
    if args.get("weights_only") and not args["resume"]:
        raise UsageError("--weights-only says how to --resume a run whose optimizer state is missing; "
                         "add --resume")
    check_out(out, args["resume"])
    lock = _lock(out)
    try:
        if not (args["resume"] and (out / "run.json").exists()):
            if args["resume"]:
                _check_no_run_left(out)
                print(f"note: {out} holds no run yet; starting a new one")
            return RunSpec(out, False, args, task, lock=lock)
        run = read_run_json(out, task)
        check_args(run, flags.get("specs", {}), out / "run.json", COMMANDS.get(task, ""), HOW_TO_RUN)
        saved = effective_args(run)
        changes = _changes(args, saved, set(typed), out, task)
        return RunSpec(out, True, _merged(args, saved, changes, set(typed)), task, run, changes, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _check_no_run_left(out: Path) -> None:
    """--resume of a folder without run.json: fine when empty; a folder with checkpoints or
    metrics but no run.json lost it, and starting afresh there would mix two runs."""
    if out.is_dir():
        left = [p.name for p in sorted(out.iterdir()) if p.name in ("checkpoints", "metrics.jsonl")]
        if left:
            raise SchemaError(str(out / "run.json"), "", f"is missing, but the folder holds {' and '.join(left)}: "
                                                         "without it the run cannot be resumed; restore it, or "
                                                         "start a new run in another folder")


def _changes(given: dict[str, Any], saved: dict[str, Any], typed: set[str], out: Path, task: str) -> dict[str, Any]:
    """The typed flags that differ from the run's own: extensions, or a UsageError naming both values."""
    changes: dict[str, Any] = {}
    for name in sorted(typed - HOW_TO_RUN):
        new, old = given.get(name), saved.get(name)
        if new == old:
            continue
        if name not in EXTENSIONS:
            raise UsageError(f"--{name.replace('_', '-')} {new} differs from this run's {old}; --resume "
                             f"continues the run as it was (drop the flag, or {new_run_hint(task, out)})")
        changes[name] = new
    refused = _extension_refused(saved, changes, out, task)
    if refused:
        raise UsageError(refused)
    return changes


def _merged(given: dict[str, Any], saved: dict[str, Any], changes: dict[str, Any], typed: set[str]) -> dict[str, Any]:
    """The command line with the run's own values, except the folder's place, the extensions and
    the typed flags that say how to run."""
    merged = dict(given)
    for name, value in saved.items():
        if name in ("out", "resume") or name in changes or (name in HOW_TO_RUN and name in typed):
            continue  # the folder is where it is now, whatever its old path was
        if name in given or name in EXTENSIONS:
            merged[name] = value  # (keys of older versions that are no flag now stay behind)
    return merged


def check_model_config(run: RunSpec, config) -> None:
    """On --resume: the model the run's arguments build is the one run.json describes."""
    if not run.resuming:
        return
    recorded = run.run["model_config"]
    for key, value in config.to_dict().items():
        if key in recorded and recorded[key] != value and key != "dropout":
            flag = {"n_ctx": "context", "tie_word_embeddings": "tie_embeddings"}.get(key, key)
            raise SchemaError(str(run.run_json), "", f"'args.{flag}' ({run.args.get(flag)!r}) builds a model with "
                                                     f"{key} {value!r}, but 'model_config.{key}' is {recorded[key]!r}")


def append_history(run_dir: Path, entry: dict[str, Any], run: dict[str, Any] | None = None) -> None:
    """Add a dated entry to run.json's `history` (an extension, a resume from the weights alone):
    what the run was asked for at its start (`args`) is never written over."""
    import time
    run_json = run_dir / "run.json"
    run = read_json(run_json) if run is None else run
    history = run.get("history", []) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}]
    write_json(run_json, {**run, "history": history})
    run["history"] = history


def begin_run(run: RunSpec, model_config, model_kind: str, **extra: Any) -> None:
    """Everything is checked: start writing. Create the folder, claim its lock (the PID goes
    into .lock), then write run.json, once, before the first step (the task, its arguments, the
    model's config and kind, a name of gpt2.registry, never a module path, and the task's own
    `extra` fields), or, for a resumed run, append the extension asked for to its history."""
    run.out.mkdir(parents=True, exist_ok=True)
    try:
        run.lock = run.lock or FolderLock(run.out)
        run.lock.claim()
    except FolderBusy as e:
        raise FolderInUse(str(e)) from None
    if not run.resuming:
        if run.run_json.exists():  # another process started a run here between our check and now
            raise UsageError(f"{run.out} already holds a run; pass --resume to continue it or choose another --out")
        write_json(run.run_json, {"task": run.task, "args": run.args, "model_config": model_config.to_dict(),
                                  "model_kind": model_kind, **extra})
    elif run.changes:
        append_history(run.out, {"changed": run.changes}, run.run)
        saved = effective_args({**run.run, "history": run.run["history"][:-1]})
        print("extending the run: " + ", ".join(f"--{k.replace('_', '-')} {saved.get(k)} -> {v}"
                                                for k, v in run.changes.items()))
