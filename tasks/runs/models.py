"""--init, the one flag every command starts from weights with, and the model it gives.

    init = resolve_init(args.init)       # cheap: what --init names, or one UsageError
    model = load_language_model(init, device, purpose=", so it cannot generate text")
    model = build_model(spec)            # the training commands and tasks.serve: random or loaded,
                                         # then the model flags applied (ModelSpec)

--init is one of:
    random                 a new model of --size (and --n-layer, --n-head, --n-embd), seeded by --seed
    124M 355M 774M 1558M   the official weights (gpt2.config's names; gpt2, gpt2-medium, ... too)
    a run folder           a run of tasks.* (run.json, checkpoints/): its newest checkpoint
    a checkpoint folder    RUN/checkpoints/step_N (state.json), or the model.safetensors in it
    a weights file/folder  a .safetensors file, or a Hugging Face folder (model.safetensors, config.json)

A run folder's model is built from run.json by gpt2.registry, never by a module path it names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import minigrad as mg
import gpt2
from gpt2 import GPT2, GPT2Config
from gpt2.config import HF_NAMES, PRESETS
from minigrad import nn

from ..common.errors import UsageError
from ..common.jsonfiles import read_json
from .checkpoint import CHECKPOINTS, CheckpointError, latest_checkpoint, run_dir_of, verify_checkpoint

PRESET_NAMES = (*PRESETS, *HF_NAMES.values())
KINDS = ("random", "preset", "run", "weights")


def is_run_folder(path: str | os.PathLike) -> bool:
    """A run folder of tasks.* (run.json or checkpoints/ in it) or one of its checkpoint
    folders (state.json in it)."""
    path = Path(path)
    return path.is_dir() and ((path / "run.json").is_file() or (path / CHECKPOINTS).is_dir()
                              or (path / "state.json").is_file())


@dataclass(frozen=True)
class Init:
    """What an --init names: its kind (one of KINDS) and, for a folder or file, where it is."""
    name: str
    kind: str
    path: Path | None = None


def resolve_init(init: str, *, random_ok: bool = True) -> Init:
    """What --init names, checked without reading any weights; a UsageError when it names
    nothing. `random_ok`: the command can start from random weights."""
    if init == "random" and random_ok:
        return Init(init, "random")
    if init in PRESET_NAMES:
        return Init(init, "preset")
    path = _checkpoint_folder_of(Path(init))
    if is_run_folder(path):
        return Init(init, "run", path)
    if path.exists():
        return Init(init, "weights", path)
    accepted = "'random', an official size" if random_ok else "an official size"
    raise UsageError(f"--init {init!r}: not {accepted} ({', '.join(PRESETS)}) nor an existing file or folder")


def resolve_run_init(init: str) -> Init:
    """resolve_init for a command that needs a run of tasks.* (a run folder or one of its
    checkpoints): anything else is a missing file (exit 1), as it always was for these commands."""
    try:
        found = resolve_init(init, random_ok=False)
    except UsageError:
        found = None
    if found is None or found.kind != "run":
        raise FileNotFoundError(f"--init {init}: no such run folder or checkpoint")
    return found


def _checkpoint_folder_of(path: Path) -> Path:
    """A checkpoint's model.safetensors stands for its folder, which knows the model's config."""
    if path.is_file() and path.name == "model.safetensors" and (path.parent / "state.json").is_file():
        return path.parent
    return path


def run_json_of(init: Init) -> dict[str, Any]:
    """run.json of the run (or checkpoint) folder an --init names."""
    return read_json(run_dir_of(init.path) / "run.json")


def load_run_model(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """The model of a run folder (its newest checkpoint) or of one checkpoint folder, in eval mode.

    Works for every task: run.json names the model kind, its config and, for a classifier, its head.
    """
    from gpt2.registry import build_model as build_from_run

    path = Path(path)
    run_dir = run_dir_of(path)
    ckpt = path if run_dir != path else latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path} holds no checkpoint (looked in {path / CHECKPOINTS})")
    run = read_json(run_dir / "run.json")
    verify_checkpoint(ckpt)
    try:
        model = build_from_run(run)  # the kind run.json names, from gpt2's registry: never a module path
    except (KeyError, TypeError) as e:  # a run.json without model_config, or one of another shape
        raise CheckpointError(f"{run_dir / 'run.json'} lacks {e} or holds it in another shape: the model "
                              "cannot be built from it") from None
    model.load_state_dict(mg.load(ckpt / "model.safetensors"))
    return model.to(device).eval()


def load_language_model(init: Init | str, device: str = "cpu", *, purpose: str = "") -> GPT2:
    """The GPT-2 language model --init names (not random), on `device`, in eval mode; a run
    holding another kind of model is a UsageError ending in `purpose` (what it is wanted for)."""
    init = init if isinstance(init, Init) else resolve_init(init, random_ok=False)
    if init.kind == "random":
        raise ValueError("load_language_model loads weights; build_model makes random ones")
    model = load_run_model(init.path, device) if init.kind == "run" else gpt2.from_pretrained(init.name, device=device)
    if not isinstance(model, GPT2):
        raise UsageError(f"--init {init.name}: holds a {type(model).__name__}, not a GPT-2 language model{purpose}")
    return model


# ----------------------------------------------------------------------------- the training commands' model

@dataclass(frozen=True)
class RandomInit:
    """What --init random does when --tie-embeddings and --embedding-std are not given: each
    command's own choice (tasks.pretrain follows the book: an untied head, embeddings N(0, 1))."""
    tie: bool = True
    embedding_std: float = 0.02


@dataclass(frozen=True)
class ModelSpec:
    """The model a command is asked for: --init and the flags of common.args.add_model_args."""
    init: str = "random"
    size: str = "124M"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    context: int | None = None
    dropout: float = 0.1
    tie_embeddings: bool | None = None
    embedding_std: float | None = None
    seed: int = 123
    random: RandomInit = field(default_factory=RandomInit)

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], random: RandomInit = RandomInit()) -> ModelSpec:
        """The spec of a parsed command line (`vars(args)`, or run.json's args), flags by name."""
        names = {f.name for f in fields(cls)} - {"random"}
        return cls(**{k: flags[k] for k in names if k in flags}, random=random)

    def config(self, base: GPT2Config | None = None) -> GPT2Config:
        """The GPT2Config asked for by --size and the override flags."""
        base = base or GPT2Config.preset(self.size)
        changes = {k: v for k, v in dict(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                                         n_ctx=self.context).items() if v is not None}
        try:
            return base.replace(**changes, dropout=self.dropout)
        except ValueError as e:
            raise UsageError(str(e)) from None


def config_of(init: Init) -> GPT2Config | None:
    """The config of the weights an --init names, read without loading them (a preset's, a run's
    run.json, a Hugging Face folder's config.json): for a memory estimate before any weight is
    allocated. None where only the weights would tell, or a run.json that load_run_model will
    refuse with its own message."""
    if init.kind == "preset":
        return GPT2Config.preset(init.name)
    if init.kind == "run":
        try:
            return GPT2Config.from_dict(run_json_of(init)["model_config"])
        except (KeyError, TypeError, ValueError, FileNotFoundError, AttributeError):
            return None
    return None


def expected_config(spec: ModelSpec) -> GPT2Config | None:
    """The config of the model build_model(spec) will make, read without making it (config_of)."""
    if spec.init == "random":
        tie = spec.random.tie if spec.tie_embeddings is None else spec.tie_embeddings
        return spec.config().replace(tie_word_embeddings=tie)
    base = config_of(resolve_init(spec.init))
    return None if base is None else base.replace(dropout=spec.dropout)


def build_model(spec: ModelSpec) -> GPT2:
    """A GPT2 on the CPU as --init and the model flags say (moved to the device by the caller)."""
    if spec.init == "random":
        return _random_model(spec)
    if spec.tie_embeddings is not None or spec.embedding_std is not None:
        raise UsageError(f"--tie-embeddings and --embedding-std choose how --init random builds a model; "
                         f"--init {spec.init} brings its own weights")
    model = load_language_model(resolve_init(spec.init), purpose=" to start from")
    for flag in ("n_layer", "n_head", "n_embd"):  # the weights fix the architecture
        given, own = getattr(spec, flag), getattr(model.config, flag)
        if given is not None and given != own:
            raise UsageError(f"--{flag.replace('_', '-')} {given} disagrees with --init {spec.init}, whose "
                             f"weights have {own}; drop the flag")
    # dropout is a training choice, not part of the weights
    model.config = model.config.replace(dropout=spec.dropout)
    for m in model.modules():
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = spec.dropout
    if spec.context is not None and spec.context > model.config.n_ctx:
        raise UsageError(f"--context {spec.context} is longer than the model's context of {model.config.n_ctx}")
    return model


def _random_model(spec: ModelSpec) -> GPT2:
    mg.manual_seed(spec.seed)
    tie = spec.random.tie if spec.tie_embeddings is None else spec.tie_embeddings
    # a tied head keeps GPT-2's 0.02 unless told otherwise (and then refuses, below)
    std = spec.embedding_std if spec.embedding_std is not None else \
        0.02 if tie else spec.random.embedding_std
    if std <= 0:
        raise UsageError(f"--embedding-std must be positive, got {std}")
    if tie and std != 0.02:
        raise UsageError(f"--embedding-std {std} with a tied head would scale the logits with it; "
                         "add --no-tie-embeddings")
    return GPT2(spec.config().replace(tie_word_embeddings=tie), embedding_std=std)
