"""What each file of a run folder holds, written as data (files.schema specs), and the readers
that check it on load: every error names the file and the key (or the line).

    RUN/run.json                     RUN_JSON, its `args` against the command's own flags
    RUN/metrics.jsonl                a record a line: STEP, EVAL or a periodic extra (OTHER)
    RUN/checkpoints/                 folders step_NNNNNNNN only (and .step_* being written)
    RUN/checkpoints/step_N/          manifest.json (MANIFEST: every other file's sha256),
                                     state.json (STATE), model.safetensors, optimizer.safetensors
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from files.schema import SHA256, Bool, Int, List, Map, Maybe, Num, Obj, SchemaError, Spec, Str, check
from gpt2.classifier import POOLS
from gpt2.registry import MODEL_KINDS

from ..common.jsonfiles import JsonLines, read_json
from ..common.numbers import COUNT, RATE, SIZE, SOME, check_recorded

TASKS = {"pretrain": "gpt2", "classify": "gpt2-classifier", "instruct": "gpt2"}  # task -> its model kind
COMMANDS = {"pretrain": "python -m tasks.pretrain", "classify": "python -m tasks.classify train",
            "instruct": "python -m tasks.instruct train"}
STEP_NAME = re.compile(r"step_(\d{8})")
FILE_NAME = r"[\w][\w.-]*"
TRAINABLE = ("last-block", "all", "lora")

MODEL_CONFIG = Obj({"vocab_size": COUNT, "n_ctx": COUNT, "n_embd": COUNT, "n_layer": COUNT, "n_head": COUNT,
                    "dropout": Num(min=0, max=1, below=True), "qkv_bias": Bool(),
                    "layer_norm_eps": Num(min=0, above=True, max=1), "tie_word_embeddings": Bool()})
SHARD = Obj({"file": Str(pattern=FILE_NAME), "bytes": SOME, "sha256": Maybe(Str(pattern=SHA256))})
DATA = {  # what a run was trained on (run.json `data`), per task
    "pretrain": Obj({"folder": Str(), "shards": List(SHARD)}),
    "classify": Obj({"source": Str(), "bytes": SOME, "sha256": Str(pattern=SHA256)}),
    "instruct": Obj({"source": Str(), "num_records": SOME, "split_seed": Maybe(SOME),
                     "split": Obj({"train": SOME, "val": SOME, "test": SOME}),
                     "bytes": SOME, "sha256": Str(pattern=SHA256)}, optional=frozenset({"bytes", "sha256"})),
}
HISTORY_ENTRY = Obj({"time": Str(), "changed": Obj({"max_steps": COUNT, "epochs": COUNT}, extra=False,
                                                   optional=frozenset({"max_steps", "epochs"})),
                     "weights_only": Str(pattern=STEP_NAME.pattern), "why": Str()},
                    optional=frozenset({"changed", "weights_only", "why"}))
RUN_JSON = Obj({
    "task": Str(choices=tuple(TASKS)), "args": Obj(), "model_config": MODEL_CONFIG,
    "model_kind": Str(choices=MODEL_KINDS), "world_size": COUNT, "history": List(HISTORY_ENTRY),
    "data": Obj(), "lora": Maybe(Obj({"rank": COUNT, "alpha": RATE})),
    "classifier": Obj({"labels": List(Str()), "pool": Str(choices=POOLS), "trainable": Str(choices=TRAINABLE),
                       "max_length": COUNT, "pad_id": SOME}),
    "max_length": COUNT,
}, optional=frozenset({"world_size", "history", "data", "lora", "classifier", "max_length"}))
REQUIRED = {"classify": ("classifier",), "instruct": ("max_length",)}  # what each task's run.json must add

LOADER = Obj({"epoch": SOME, "position": SOME, "seed": SOME, "num_samples": SOME, "batch_size": COUNT,
              "shuffle": Bool(), "drop_last": Bool(), "num_tokens": SOME, "num_shards": COUNT, "context": COUNT,
              "stride": COUNT},
             optional=frozenset({"num_samples", "batch_size", "shuffle", "drop_last", "num_tokens", "num_shards",
                                 "context", "stride"}))
SCHEDULER = Obj({"peak_lr": RATE, "warmup_steps": SOME, "total_steps": SOME, "min_lr": SIZE,
                 "warmup_start_lr": SIZE, "last_step": SOME})
U128 = Int(min=0, max=2 ** 128 - 1)
RNG = Obj({"seed": SOME, "dropout_calls": SOME,
           "cpu": Obj({"bit_generator": Str(choices=("PCG64",)), "state": Obj({"state": U128, "inc": U128}),
                       "has_uint32": Int(min=0, max=1), "uinteger": Int(min=0, max=2 ** 32 - 1)})},
          optional=frozenset({"dropout_calls"}))
OPTIMIZER = Obj({"step_count": SOME,
                 "groups": List(Obj({"lr": RATE, "betas": List(Num(min=0, max=1, below=True), length=2),
                                     "eps": Num(min=0, above=True, max=1), "weight_decay": SIZE}))})
_LOOP = {"tokens_seen": SOME, "epoch": Num(min=0), "loader": LOADER, "scheduler": SCHEDULER, "rng": RNG}
STATE = Obj({"step": SOME, **_LOOP, "optimizer": OPTIMIZER, "files": Map(Str(pattern=SHA256), keys=FILE_NAME),
             "loss_scaler": Obj({"scale": RATE, "good_steps": SOME, "skipped": SOME,
                                 "growth_interval": COUNT}), "format": COUNT},
            optional=frozenset({*_LOOP, "optimizer", "files", "loss_scaler", "format"}))
LOOP_STATE = Obj(_LOOP)  # what the training loop adds to a checkpoint's state, and needs to resume
MANIFEST = Obj({"files": Map(Str(pattern=SHA256), keys=FILE_NAME), "state": Map(Str(pattern=SHA256))},
               optional=frozenset({"state"}), extra=False)

_RECORD = {"type": Str(), "step": COUNT, "epoch": Num(min=0), "tokens_seen": SOME, "lr": SIZE}
METRIC = Num(finite=False)   # an evaluation may be NaN or inf (the run stops after logging it)
STEP = Obj({**{k: _RECORD[k] for k in ("type", "step", "tokens_seen", "lr")}, "loss": Num(),
            "loss_scale": RATE, "skipped_steps": SOME},
           optional=frozenset({"loss_scale", "skipped_steps"}), extra=False)
EVAL = Obj(_RECORD, others=METRIC)
RECORD_TYPE = Str(choices=("step", "eval", "hellaswag"))  # hellaswag: pretrain's --hellaswag-every
OTHER = Obj({k: _RECORD[k] for k in ("type", "step", "epoch", "tokens_seen")}, others=METRIC)


# ----------------------------------------------------------------------------- run.json

def wrong_task(run_dir: Path, found: str, task: str) -> str:
    return (f"{run_dir} holds a {found} run, not a {task} run; continue it with "
            f"`{COMMANDS.get(found, 'its own command')} --out {run_dir} --resume`")


def read_run_json(run_dir: Path, task: str) -> dict[str, Any]:
    """run.json of a run folder about to be resumed by `task`, checked: its shape, its task and
    model kind, its history. (Its `args` are checked against the command's flags by check_args.)"""
    path = run_dir / "run.json"
    run = read_json(path)
    if not isinstance(run, dict) or not isinstance(run.get("args"), dict):
        from ..common.errors import UsageError
        raise UsageError(f"{path} has no 'args': not a run folder of these tasks")
    check(run, RUN_JSON, str(path))
    if run["task"] != task:
        from ..common.errors import UsageError
        raise UsageError(wrong_task(run_dir, run["task"], task))
    for key in REQUIRED.get(task, ()):
        if key not in run:
            raise SchemaError(str(path), key, None)
    if run["model_kind"] != TASKS[task]:
        raise SchemaError(str(path), "model_kind", f"must be {TASKS[task]!r} for a {task} run, got {run['model_kind']!r}")
    if "data" in run:
        check(run["data"], DATA[task], str(path), "data")
    try:
        from gpt2 import GPT2Config
        GPT2Config.from_dict(run["model_config"])
    except ValueError as e:
        raise SchemaError(str(path), "model_config", str(e)) from None
    return run


def check_args(run: Mapping[str, Any], specs: Mapping[str, Spec], path: Path, command: str,
               free: set[str]) -> None:
    """run.json's `args` against the command's flags (common.args.flag_specs): each flag there, of
    its type and range (common.numbers), and the extensions in `history` too. `free`: the flags
    that say how to run (taken from this command line, so they may be missing)."""
    args = run["args"]
    for dest, spec in specs.items():
        if dest in args:
            if isinstance(args[dest], str) and isinstance(spec, (Int, Num)) or \
                    isinstance(spec, Maybe) and isinstance(spec.spec, (Int, Num)) and isinstance(args[dest], str):
                raise SchemaError(str(path), "", f"'args' holds text where numbers belong ('args.{dest}' is "
                                                 f"{args[dest]!r}); the run cannot be resumed from it")
            check(args[dest], spec, str(path), f"args.{dest}")
        elif dest not in free:
            raise SchemaError(str(path), f"args.{dest}", None)
    check_recorded({k: v for k, v in args.items() if k in specs}, str(path), command)
    effective = dict(args)
    for i, entry in enumerate(run.get("history", [])):
        for dest, value in entry.get("changed", {}).items():
            spec = specs.get(dest)
            if spec is not None:
                check(value, spec, str(path), f"history[{i}].changed.{dest}")
            effective[dest] = value
    check_recorded({k: v for k, v in effective.items() if k in specs}, str(path), command)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint, oldest first; anything else in checkpoints/ but the
    temporaries of a checkpoint being written (.step_*) is refused, named."""
    folder = run_dir / "checkpoints"
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise SchemaError(str(folder), "", "is a file; a run folder keeps its checkpoints in a folder of that name")
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".step_"):
            continue  # a write cut short: removed when the run starts writing
        m = STEP_NAME.fullmatch(p.name)
        if m is None or not p.is_dir():
            raise SchemaError(str(p), "", "is not a checkpoint (checkpoints/ holds folders named step_NNNNNNNN); "
                                          "move it out of the run folder")
        found.append((int(m[1]), p))
    return found


def check_state(state: Any, path: Path, step: int | None) -> dict[str, Any]:
    """state.json of the checkpoint of `step` (its folder's name): its shape and ranges."""
    check(state, STATE, str(path))
    if step is None:
        return state
    if state["step"] != step:
        raise SchemaError(str(path), "step", f"is {state['step']}, but its folder is {path.parent.name}")
    if "scheduler" in state and state["scheduler"]["last_step"] != step:
        raise SchemaError(str(path), "scheduler.last_step", f"is {state['scheduler']['last_step']}, not the "
                                                            f"checkpoint's step {step}")
    return state


def check_loader_state(state: Mapping[str, Any], mine: Mapping[str, Any], path: Path, batches: int) -> None:
    """The data-loader position of a checkpoint against the loader this run builds now."""
    loader = state["loader"]
    for key, value in mine.items():
        if key in loader and loader[key] != value and key not in ("epoch", "position", "seed"):
            raise SchemaError(str(path), f"loader.{key}", f"is {loader[key]!r}, but the data gives {value!r}: "
                                                          "the checkpoint does not fit this data")
    if loader["position"] >= batches:
        raise SchemaError(str(path), "loader.position", f"is {loader['position']}, past the {batches} batches "
                                                        "of an epoch")


# ----------------------------------------------------------------------------- metrics.jsonl

def read_metrics(path: Path, last_step: int | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, each checked ([] when there is none): a line that is not
    one of our records is refused with its line number; steps only go forward; no step past
    `last_step` (the run's end). A torn last line (a write cut short) is skipped."""
    if not path.exists():
        return []
    records, last_step_record, previous = [], 0, 0
    for number, record in JsonLines(path, appended=True):  # a line not JSON: JsonLinesError, named
        where = f"{path}, line {number}"
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise SchemaError(where, "", "is not a record of these tasks (a JSON object with a 'type'); "
                                         "remove that line")
        check(record["type"], RECORD_TYPE, where, "type")
        check(record, {"step": STEP, "eval": EVAL}.get(record["type"], OTHER), where)
        step = record["step"]
        if step < previous or (record["type"] == "step" and step <= last_step_record):
            raise SchemaError(where, "step", f"is {step}, after a record of step "
                                             f"{max(previous, last_step_record)}: the records are out of order")
        if last_step is not None and step > last_step:
            raise SchemaError(where, "step", f"is {step}, past the run's last step {last_step}")
        previous = step
        if record["type"] == "step":
            last_step_record = step
        records.append(record)
    return records

