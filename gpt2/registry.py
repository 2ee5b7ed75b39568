"""The kinds of model a run folder can name, and how each is built from plain data.

A run folder's `run.json` says what its model is with a name from this registry and a few
fields of data (`model_kind`, `model_config`, and for a classifier or adapters `classifier`
and `lora`), never with a module path: opening someone else's run folder must not run code of
their choosing. An unknown kind is an error.
"""
from __future__ import annotations

from typing import Any

from minigrad import nn

from .classifier import PAD_ID, GPT2Classifier
from .config import GPT2Config
from .model import GPT2

MODEL_KINDS = ("gpt2", "gpt2-classifier")

# run.json files written before the registry named a Python function; these two were ours.
_LEGACY_BUILDERS = {"tasks.classify.build_from_run": "gpt2-classifier",
                    "tasks.instruct.with_lora": "gpt2"}


class UnknownModelKindError(ValueError):
    """A run.json naming a model kind this version does not know."""


def model_kind(run: dict[str, Any]) -> str:
    """The registry name of a run's model (older run.json files are read too)."""
    if "model_kind" in run:
        kind = run["model_kind"]
    elif run.get("model_builder"):
        kind = _LEGACY_BUILDERS.get(run["model_builder"])
        if kind is None:
            raise UnknownModelKindError(
                f"run.json names the model builder {run['model_builder']!r}; only the model kinds "
                f"{', '.join(MODEL_KINDS)} are built (a run folder never makes us import code)")
    else:
        kind = "gpt2"
    if kind not in MODEL_KINDS:
        raise UnknownModelKindError(f"run.json names the model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    return kind


def lora_of(run: dict[str, Any]) -> dict[str, Any] | None:
    """{"rank", "alpha"} of the adapters a run trained, or None."""
    if run.get("lora"):
        return run["lora"]
    c = run.get("classifier") or {}
    if c.get("trainable") == "lora":  # how classify runs recorded it before `lora` existed
        return {"rank": c["lora_rank"], "alpha": c["lora_alpha"]}
    return None


def build_model(run: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the shape `run` describes, ready for its checkpoint."""
    gpt = GPT2(GPT2Config.from_dict(run["model_config"]))
    model: nn.Module = gpt
    if model_kind(run) == "gpt2-classifier":
        c = run["classifier"]
        model = GPT2Classifier(gpt, len(c["labels"]), c["pool"], c.get("pad_id", PAD_ID))
    lora = lora_of(run)
    if lora is not None:
        nn.apply_lora(gpt, rank=lora["rank"], alpha=lora["alpha"])
    return model
