"""The flags the commands share, and parsing them: the edge where a command line becomes values.

Each command declares its flags with these helpers, parses them with `parse` (which also
remembers which flags were typed, for --resume), and turns the result into typed values once
(tasks.runs.models.ModelSpec, tasks.training.config.TrainConfig, tasks.runs.folder.RunSpec).
`recorded_args` is what run.json keeps of a command line.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Mapping

from gpt2.config import PRESETS

from files.schema import Bool, Int, List, Maybe, Num, Spec, Str

from .errors import EXIT_USAGE
from .numbers import check_flags, spec_of

BACKENDS = ("numpy", "cupy", "standin")  # standin: see minigrad/standin.py


def add_backend_arg(p) -> None:
    """--backend, the same for every job and benchmark."""
    p.add_argument("--backend", default="numpy", choices=BACKENDS,
                   help="numpy (CPU), cupy (NVIDIA GPU), or standin: NumPy behaving as CuPy, a "
                        "debugging aid that catches host/device mixing without a GPU (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser, *, init_default: str = "random", size_default: str = "124M",
                   context_default: int | None = None, dropout_default: float = 0.1,
                   tie_default: bool = True, embedding_std_default: float = 0.02) -> None:
    """--init and the flags that shape a model. `tie_default` and `embedding_std_default` only
    word the help: what --init random does without those flags is the command's RandomInit."""
    g = p.add_argument_group("model")
    g.add_argument("--init", default=init_default,
                   help=f"random, an official size ({', '.join(PRESETS)}), a .safetensors file or "
                        "HF folder, or a run folder of tasks.* (default: %(default)s)")
    g.add_argument("--size", default=size_default, choices=tuple(PRESETS),
                   help="preset for --init random (default: %(default)s)")
    g.add_argument("--n-layer", type=int, help="override the preset's layer count")
    g.add_argument("--n-head", type=int, help="override the preset's head count")
    g.add_argument("--n-embd", type=int, help="override the preset's width")
    g.add_argument("--context", type=int, default=context_default,
                   help="context length in tokens (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=dropout_default, help="dropout rate (default: %(default)s)")
    g.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="for --init random: the output head is wte (GPT-2's way), or a matrix of its own "
                        f"with --no-tie-embeddings (default: {'tied' if tie_default else 'untied'})")
    g.add_argument("--embedding-std", type=float, default=None,
                   help="for --init random: std of wte and wpe at initialisation; GPT-2 uses 0.02, "
                        f"PyTorch's nn.Embedding 1.0 (default: {embedding_std_default}; 0.02 when tied)")
    add_backend_arg(g)
    g.add_argument("--seed", type=int, default=123, help="random seed (default: %(default)s)")


class _OldName(argparse.Action):
    """An older flag name that still works, with a one-line notice naming the new one."""

    quiet = False  # parse() parses twice; say it once

    def __call__(self, parser, namespace, values, option_string=None):
        if not _OldName.quiet:
            print(f"note: {option_string} is deprecated; use --init", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_init_arg(p: argparse.ArgumentParser, *, help: str, default: str | None = None,
                 old_names: tuple[str, ...] = ()) -> None:
    """--init, the one flag every job uses to say which weights to start from (a preset, a run
    folder, a checkpoint folder, a .safetensors file); `old_names` keep working for now."""
    g = p.add_mutually_exclusive_group(required=default is None)
    g.add_argument("--init", default=default, help=help + ("" if default is None else " (default: %(default)s)"))
    for name in old_names:
        g.add_argument(name, dest="init", action=_OldName, help=argparse.SUPPRESS)


def add_train_args(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
                   weight_decay: float = 0.1, eval_every: int = 5, eval_batches: int = 5,
                   out: str = "runs/run") -> None:
    """The flags of tasks.training.config.TrainConfig (same names), --batch-size and the run folder's."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help="default: %(default)s")
    g.add_argument("--batch-size", type=int, default=batch_size, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW's (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=0, help="linear warmup steps (default: %(default)s)")
    g.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="learning rate after warmup (default: %(default)s)")
    g.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine decay (default: %(default)s)")
    g.add_argument("--grad-clip", type=float, default=0.0,
                   help="clip the global gradient norm to this; 0 = off (default: %(default)s)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many updates")
    g.add_argument("--eval-every", type=int, default=eval_every, help="default: %(default)s")
    g.add_argument("--eval-batches", type=int, default=eval_batches, help="default: %(default)s")
    g.add_argument("--save-every", type=int, default=None,
                   help="steps between checkpoints (default: at each evaluation; every 1000 steps "
                        "for models of 100M parameters and more); always at the end and on Ctrl-C")
    g.add_argument("--log-every", type=int, default=1,
                   help="steps between training-loss records: the loss stays on the device between "
                        "them (each fetch waits for the GPU), and a non-finite loss is noticed there "
                        "(default: %(default)s)")
    _add_precision_args(g)
    _add_run_folder_args(g, out)


def _add_precision_args(g) -> None:
    g.add_argument("--dtype", default="float32", choices=("float32", "tf32", "float16"),
                   help="float32; tf32: float32 with TensorFloat-32 matmuls (cupy only); float16: "
                        "mixed precision, float16 forward/backward over float32 weights with dynamic "
                        "loss scaling, steps with inf/NaN gradients skipped and counted. bfloat16 is "
                        "not offered: neither NumPy nor CuPy has that dtype (default: %(default)s)")
    g.add_argument("--loss-scale", type=float, default=2.0 ** 16,
                   help="float16: the initial loss scale (default: %(default)s)")
    g.add_argument("--loss-scale-window", type=int, default=2000,
                   help="float16: steps without overflow before the loss scale doubles (default: %(default)s)")


def _add_run_folder_args(g, out: str) -> None:
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept (default: %(default)s)")
    g.add_argument("--out", default=out, help="run folder (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    g.add_argument("--weights-only", action="store_true",
                   help="with --resume, when the checkpoint's optimizer state is missing: continue from its "
                        "weights alone, AdamW's moments starting again from zero (not an exact "
                        "continuation; said when it happens and recorded in run.json's history)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    parser.exit(EXIT_USAGE, f"error: {message} (see {parser.prog} --help)\n")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args(argv), plus `args.typed`: the flags the user typed (not defaulted), which
    --resume compares with the run's own (a flag typed with its default value counts as typed).
    A command line argparse refuses is one `error:` line and exit status 2, as every usage error."""
    parsers = [parser]
    for action in parser._actions:  # and the subcommands' parsers
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    for p in parsers:
        p.error = functools.partial(_one_line_error, p)
    args = parser.parse_args(argv)
    saved = [(a, a.default) for p in parsers for a in p._actions if a.dest != "help"]
    try:
        _OldName.quiet = True
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        typed_only = parser.parse_args(argv)
    finally:
        _OldName.quiet = False
        for a, default in saved:
            a.default = default
    dests = {a.dest for a, _ in saved}
    args.typed = {k for k in vars(typed_only) if k in dests}
    values = vars(args)
    chosen = _chosen_parser(parser, values)
    check_flags({k: v for k, v in values.items() if k in dests}, chosen.prog)
    args.specs = flag_specs(parser, chosen)
    return args


def _chosen_parser(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> argparse.ArgumentParser:
    """The subcommand's parser when the command has subcommands, else the parser itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(values.get(action.dest), parser)
    return parser


def flag_specs(parser: argparse.ArgumentParser, chosen: argparse.ArgumentParser | None = None) -> dict[str, Spec]:
    """What each flag's value may be, as files.schema specs (the numbers from common.numbers'
    table): what run.json's `args` are checked against when a run is resumed."""
    specs: dict[str, Spec] = {}
    for a in parser._actions + (chosen._actions if chosen is not None and chosen is not parser else []):
        if a.dest in ("help", argparse.SUPPRESS):
            continue
        if isinstance(a, argparse._SubParsersAction):
            specs[a.dest] = Str(choices=tuple(a.choices))
            continue
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            spec: Spec = Bool()
        elif isinstance(a, argparse.BooleanOptionalAction):
            spec = Maybe(Bool())
        elif a.type in (int, float):
            spec = spec_of(a.dest, (chosen or parser).prog) or (Int() if a.type is int else Num())
        elif a.choices is not None:
            spec = Str(choices=tuple(str(c) for c in a.choices))
        else:
            spec = Str()
        if a.nargs in ("*", "+"):
            spec = List(spec)
        specs[a.dest] = Maybe(spec) if a.default is None and not isinstance(spec, Maybe) else spec
    return specs


def recorded_args(flags: Mapping[str, Any]) -> dict[str, Any]:
    """What run.json records of a command line (`vars(args)`): every flag's value, without the
    bookkeeping `parse` and subcommands add (`typed`, `specs`, `func`)."""
    return {k: v for k, v in flags.items() if k not in ("func", "typed", "specs") and not callable(v)}
