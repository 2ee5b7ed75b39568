"""What every task's command line shares: the model and training flags, building the model,
choosing the backend, and turning expected failures into one clear message."""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import minigrad as mg
import minigrad.distributed as dist
from gpt2.tokenizer import TokenizerUnavailableError
from files.hub import ChecksumError, MissingFileError

SIZES = ("124M", "355M", "774M", "1558M")
BACKENDS = ("numpy", "cupy", "standin")  # standin: see minigrad/standin.py


class TaskError(Exception):
    """An expected way for a task to fail (a missing or corrupt file, a server that cannot be
    reached, ...): printed as one line, exit status 1."""


class UsageError(TaskError):
    """A problem with what the user asked for (a flag out of range, a refused combination, a
    changed flag on --resume): printed as one line, exit status 2, as argparse's own errors."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `docker stop`, `kill`) outside the training loop: exit status 143."""


EXIT_USAGE, EXIT_FAILURE = 2, 1


def pause_point(name: str) -> None:
    """A named moment of a task where the misuse tests interrupt it (tests/test_misuse.py).

    Inert unless MINIGRAD_TEST_PAUSE_AT is NAME or NAME#K: then, the first (K-th) time NAME is
    reached, the file MINIGRAD_TEST_PAUSE_FILE is created and the process waits (at most 60 s)
    until the test has sent its signal and deleted that file."""
    at = os.environ.get("MINIGRAD_TEST_PAUSE_AT")
    if at is None or at.partition("#")[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != int(at.partition("#")[2] or 1):
        return
    import time
    marker = Path(os.environ["MINIGRAD_TEST_PAUSE_FILE"])
    marker.touch()
    deadline = time.monotonic() + 60
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


_passes: dict[str, int] = {}


def add_backend_arg(p) -> None:
    """--backend, the same for every job and benchmark."""
    p.add_argument("--backend", default="numpy", choices=BACKENDS,
                   help="numpy (CPU), cupy (NVIDIA GPU), or standin: NumPy behaving as CuPy, a "
                        "debugging aid that catches host/device mixing without a GPU (default: %(default)s)")


def add_model_args(p: argparse.ArgumentParser, *, init_default: str = "random", size_default: str = "124M",
                   context_default: int | None = None, dropout_default: float = 0.1,
                   tie_default: bool = True, embedding_std_default: float = 0.02) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--init", default=init_default,
                   help="random, an official size (124M, 355M, 774M, 1558M), a .safetensors file or "
                        "HF folder, or a run folder of tasks.* (default: %(default)s)")
    g.add_argument("--size", default=size_default, choices=SIZES,
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
    # what --init random uses when those two are not given (a task's own choice)
    p.set_defaults(tie_default=tie_default, embedding_std_default=embedding_std_default)
    add_backend_arg(g)
    g.add_argument("--seed", type=int, default=123, help="random seed (default: %(default)s)")


class _OldName(argparse.Action):
    """An older flag name that still works, with a one-line notice naming the new one."""

    quiet = False  # cli.parse parses twice; say it once

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
    g.add_argument("--dtype", default="float32", choices=("float32", "tf32", "float16"),
                   help="float32; tf32: float32 with TensorFloat-32 matmuls (cupy only); float16: "
                        "mixed precision, float16 forward/backward over float32 weights with dynamic "
                        "loss scaling, steps with inf/NaN gradients skipped and counted. bfloat16 is "
                        "not offered: neither NumPy nor CuPy has that dtype (default: %(default)s)")
    g.add_argument("--loss-scale", type=float, default=2.0 ** 16,
                   help="float16: the initial loss scale (default: %(default)s)")
    g.add_argument("--loss-scale-window", type=int, default=2000,
                   help="float16: steps without overflow before the loss scale doubles (default: %(default)s)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept (default: %(default)s)")
    g.add_argument("--out", default=out, help="run folder (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    g.add_argument("--weights-only", action="store_true",
                   help="with --resume, when the checkpoint's optimizer state is missing: continue from its "
                        "weights alone, AdamW's moments starting again from zero (not an exact "
                        "continuation; said when it happens and recorded in run.json's history)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def device_of(args: argparse.Namespace) -> str:
    """Check the backend now, so a missing GPU is one message before any work starts."""
    device = {"cupy": "cuda", "standin": "standin"}.get(args.backend, "cpu")
    if device == "cuda" and not mg.gpu_available():
        mg.backend.cupy()  # raises BackendError with the reason
    if device == "cuda":
        dist.select_gpu()  # under mpiexec: GPU local_rank, before anything is allocated
    if getattr(args, "dtype", "float32") == "tf32":
        if device != "cuda":
            raise UsageError(f"--dtype tf32 is the tensor cores' TensorFloat-32 matmul mode of NVIDIA "
                             f"GPUs (--backend cupy); --backend {args.backend} computes float32 "
                             "matmuls in float32. Use --dtype float32 here.")
        mg.backend.set_tf32(True)
    return device


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
    return args


def config_json(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func", "typed") and not callable(v)}


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what went wrong, where, and what helps."""
    import errno
    where = f": {e.filename}" if e.filename else ""
    hint = {errno.ENOSPC: "; free some space, then continue with --resume (the last complete checkpoint is intact)",
            errno.EROFS: "; choose an --out on a writable file system",
            errno.EACCES: "; check the permissions, or choose another --out",
            errno.ENOTDIR: "; a file stands where a folder is needed"}.get(e.errno, "")
    return f"{e.strerror or e}{where}{hint}"


def main_guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Run a task's main: expected failures become one `error: ...` line on stderr and an exit
    status: 2 for a usage error (UsageError; argparse's own are 2 as well), 1 for a failure (a
    missing or corrupt file, a full or read-only disk, an unreachable server, ...), 130 for
    Ctrl-C and 143 for SIGTERM (the training loop saves a checkpoint first; see tasks.train).
    MINIGRAD_TRACEBACK=1 shows the full traceback instead of the one line."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        def on_sigterm(signum, frame):
            raise Terminated
        try:
            old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            old_sigterm = None
        try:
            mg.backend.tune_allocator()  # glibc and NumPy tuned for a training step (see its docstring)
            dist.init()  # joins the MPI job under mpiexec; nothing otherwise
            return fn(argv)
        except KeyboardInterrupt as e:  # Terminated too
            if os.environ.get("MINIGRAD_TRACEBACK"):
                raise
            signame = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
            print(f"error: interrupted ({signame}); what was complete is kept", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        except Exception as e:
            code, message = _failure(e)
            if code is None:
                if dist.world_size() > 1:  # a bug on one rank: show it, then end the whole job
                    import traceback
                    traceback.print_exc()
                    dist.abort("failed with the traceback above")
                raise
            if os.environ.get("MINIGRAD_TRACEBACK"):
                raise  # a developer wants the traceback
            if dist.world_size() > 1 and not getattr(e, "on_every_rank", False):
                dist.abort(message, code)  # the other ranks would wait forever in their next collective
            if dist.rank() == 0:   # every rank has it: one says it
                print(f"error: {message}", file=sys.stderr)
            return code
        finally:
            if old_sigterm is not None:
                signal.signal(signal.SIGTERM, old_sigterm)
    return wrapper


def _failure(e: Exception) -> tuple[int | None, str]:
    """(exit status, one line) of an expected failure; (None, "") for a bug (shown in full)."""
    if isinstance(e, UsageError):
        return EXIT_USAGE, str(e)
    if isinstance(e, (TaskError, MissingFileError, ChecksumError, FileNotFoundError, IsADirectoryError,
                      mg.BackendError, mg.nn.StateDictError, json.JSONDecodeError, ValueError,
                      TokenizerUnavailableError, dist.DistributedError)):
        return EXIT_FAILURE, str(e)
    if isinstance(e, OSError):  # ENOSPC, EROFS, EACCES, ENOTDIR, ...
        return EXIT_FAILURE, describe_os_error(e)
    if type(e).__module__.startswith("safetensors") or "SafetensorError" in type(e).__name__:
        return EXIT_FAILURE, f"cannot read the weights: {e}"
    return None, ""
