"""Every numeric flag of every command in one table: its range, and the relations between flags
(`--min-lr` <= `--lr`, `--warmup` < `--max-steps`, ...).

A command line is checked against it as it is parsed (common.args.parse), before anything is
read or written: a usage error (exit 2) naming the flag. The arguments run.json recorded are
checked against the same table when a run is resumed (runs.schema): a failure (exit 1) naming
the file and the key. A flag means one thing in every command, so one range serves them all;
where a command needs a narrower one, NARROWER says so and why.

Integers stop at what an int64 holds (files.schema.INT64_MAX); sizes that memory limits
(batch, width, context, serving batch, shard tokens) are left to the memory check
(common.memory), which says what they would cost.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from files.schema import Int, Num, SchemaError, Spec

from .errors import UsageError

F32 = 3.4028234663852886e38           # the largest float32: weights, rates and scales are float32
COUNT = Int(min=1)                    # how many: steps, rows, layers, tokens, ...
SOME = Int(min=0)                     # how many, none allowed
RATE = Num(min=0, above=True, max=F32)
SIZE = Num(min=0, max=F32)            # a non-negative float32

NUMBERS: dict[str, Spec] = {
    # the model
    "n_layer": COUNT, "n_head": COUNT, "n_embd": COUNT, "context": COUNT,
    "dropout": Num(min=0, max=1, below=True),
    "embedding_std": Num(min=0, above=True, max=100),
    "seed": SOME, "split_seed": SOME,
    # training
    "epochs": COUNT, "max_steps": COUNT, "batch_size": COUNT, "grad_accum": COUNT,
    "lr": RATE, "min_lr": SIZE, "weight_decay": SIZE, "warmup": SOME,
    "grad_clip": SIZE, "eval_every": COUNT, "eval_batches": COUNT, "save_every": COUNT,
    "log_every": COUNT, "keep": COUNT, "loss_scale": Num(min=0, above=True, max=2.0 ** 32),
    "loss_scale_window": COUNT,
    # data
    "stride": COUNT, "train_frac": Num(min=0, max=1, above=True, below=True), "max_length": COUNT,
    "shard_tokens": COUNT, "shards": COUNT, "workers": COUNT,
    # fine-tuning
    "lora_rank": COUNT, "lora_alpha": RATE, "report_batches": COUNT,
    # sampling, evaluation
    "sample_tokens": SOME, "max_new_tokens": SOME, "temperature": SIZE, "top_k": COUNT,
    "top_p": Num(min=0, max=1, above=True), "top": COUNT, "layer": SOME, "head": SOME,
    "limit": COUNT, "max_context": COUNT, "shots": SOME, "hellaswag_every": SOME, "hellaswag_limit": COUNT,
    "timeout": Num(min=0, above=True, max=1e9), "retries": SOME, "backoff": Num(min=0, max=1e9),
    # serving
    "port": Int(min=0, max=65535), "max_batch": COUNT, "max_queue": SOME, "max_tokens": COUNT,
    "max_body": COUNT,
}
# command (its parser's prog) -> flags whose range is narrower there
NARROWER: dict[str, dict[str, Spec]] = {
    # a sequence of one token has no next token to learn
    "python -m tasks.instruct train": {"max_length": Int(min=2)},
    # a chat or a response of no token says nothing
    "python -m tasks.instruct respond": {"max_new_tokens": COUNT},
    "python -m tasks.instruct chat": {"max_new_tokens": COUNT},
}


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# ----------------------------------------------------------------------------- relations
# Each takes the values by name (all present, none None) and says what is wrong, or None.
# `say` names a value: "--lr" on a command line, "'args.lr'" in run.json.

def _min_lr(v: Mapping[str, Any], say: Callable[[str], str]) -> str | None:
    if v["min_lr"] > v["lr"]:
        return (f"{say('min_lr')} {v['min_lr']:g} is above {say('lr')} {v['lr']:g}: the cosine schedule would "
                "climb instead of decay")
    return None


def _warmup(v: Mapping[str, Any], say: Callable[[str], str]) -> str | None:
    if v["warmup"] >= v["max_steps"]:
        return (f"{say('warmup')} {v['warmup']} must be below {say('max_steps')} {v['max_steps']}: the run "
                "would end before its learning rate reached its peak")
    return None


RELATIONS: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any], Callable[[str], str]], str | None]]] = [
    (("min_lr", "lr"), _min_lr),
    (("warmup", "max_steps"), _warmup),
]


def spec_of(dest: str, command: str = "") -> Spec | None:
    return NARROWER.get(command, {}).get(dest) or NUMBERS.get(dest)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_problems(values: Mapping[str, Any], command: str = "") -> list[tuple[str, str]]:
    """(dest, what is wrong) for every numeric value out of its range, then (dests joined by
    ',', why) for every relation that does not hold (checked only where its values are in range)."""
    out = []
    for dest, value in values.items():
        spec = spec_of(dest, command)
        if spec is not None and value is not None:
            problem = spec.problem(value)
            if problem is not None:
                out.append((dest, problem))
    return out


def relation_problems(values: Mapping[str, Any], say: Callable[[str], str]) -> list[tuple[str, str]]:
    out = []
    for names, check in RELATIONS:
        got = {n: values.get(n) for n in names}
        if all(_is_number(x) and math.isfinite(x) for x in got.values()):
            why = check(got, say)
            if why is not None:
                out.append((names[0], why))
    return out


def check_flags(values: Mapping[str, Any], command: str = "") -> None:
    """A command line's numbers (`vars(args)`): the first value out of range or relation that does
    not hold is a UsageError naming the flag."""
    for dest, problem in number_problems(values, command):
        raise UsageError(f"{flag(dest)} {problem}")
    for _, why in relation_problems(values, flag):
        raise UsageError(why)


def check_recorded(values: Mapping[str, Any], file: str, command: str = "", key: str = "args") -> None:
    """run.json's recorded arguments against the same table: a SchemaError naming the file and the
    key ('args.lr') of the first value out of range or relation that does not hold."""
    for dest, problem in number_problems(values, command):
        raise SchemaError(file, f"{key}.{dest}", problem)
    for dest, why in relation_problems(values, lambda d: f"'{key}.{d}'"):
        raise SchemaError(file, "", why)
