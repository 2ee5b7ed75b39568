"""Building the model --init and the model flags ask for (moving to tasks.runs next)."""
from __future__ import annotations

import argparse
from pathlib import Path

import minigrad as mg
from gpt2.config import PRESETS

from .common.errors import UsageError

SIZES = tuple(PRESETS)


def model_config(args: argparse.Namespace, base=None):
    """The GPT2Config asked for by --size and the override flags."""
    from gpt2 import GPT2Config
    base = base or GPT2Config.preset(args.size)
    changes = {k: v for k, v in dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                     n_ctx=args.context).items() if v is not None}
    changes["dropout"] = args.dropout
    try:
        return base.replace(**changes)
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_model(args: argparse.Namespace):
    """A GPT2 on the CPU as --init says (moved to the device by the caller)."""
    import gpt2
    from gpt2 import GPT2

    init = args.init
    if init == "random":
        mg.manual_seed(args.seed)
        tie = args.tie_default if args.tie_embeddings is None else args.tie_embeddings
        # a tied head keeps GPT-2's 0.02 unless told otherwise (and then refuses, below)
        std = args.embedding_std if args.embedding_std is not None else \
            0.02 if tie else args.embedding_std_default
        if std <= 0:
            raise UsageError(f"--embedding-std must be positive, got {std}")
        if tie and std != 0.02:
            raise UsageError(f"--embedding-std {std} with a tied head would scale the logits with it; "
                             "add --no-tie-embeddings")
        return GPT2(model_config(args).replace(tie_word_embeddings=tie), embedding_std=std)
    if args.tie_embeddings is not None or args.embedding_std is not None:
        raise UsageError(f"--tie-embeddings and --embedding-std choose how --init random builds a model; "
                         f"--init {init} brings its own weights")
    path = Path(init)
    if path.is_file() and path.name == "model.safetensors" and (path.parent / "state.json").is_file():
        path = path.parent  # a checkpoint's weights: its folder knows the model's config
    if init not in SIZES and path.is_dir() and ((path / "run.json").is_file() or (path / "state.json").is_file()):
        from .checkpoint import load_model_from_run
        model = load_model_from_run(path)
        if not isinstance(model, GPT2):
            raise UsageError(f"--init {init}: holds a {type(model).__name__}, not a GPT-2 language model "
                             "to start from")
    else:
        if init not in SIZES and not path.exists() and init not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            raise UsageError(f"--init {init!r}: not 'random', an official size ({', '.join(SIZES)}) "
                             "or an existing file or folder")
        model = gpt2.from_pretrained(init)
    for flag in ("n_layer", "n_head", "n_embd"):  # the weights fix the architecture
        given, own = getattr(args, flag, None), getattr(model.config, flag)
        if given is not None and given != own:
            raise UsageError(f"--{flag.replace('_', '-')} {given} disagrees with --init {init}, whose "
                             f"weights have {own}; drop the flag")
    # dropout is a training choice, not part of the weights
    model.config = model.config.replace(dropout=args.dropout)
    for m in model.modules():
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = args.dropout
    if args.context is not None and args.context > model.config.n_ctx:
        raise UsageError(f"--context {args.context} is longer than the model's context of {model.config.n_ctx}")
    return model
