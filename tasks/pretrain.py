"""Pretrain GPT-2 on raw text: `python -m tasks.pretrain [--backend cupy] ...`.

The defaults are the reference run of "Build a Large Language Model (From Scratch)", chapter 5:
GPT-2 124M's shape from random weights on the-verdict.txt, context 256, batch 2, AdamW lr 4e-4
and weight decay 0.1, 10 epochs, and the book's model: an output head of its own and token and
position embeddings drawn from N(0, 1) (162M parameters). It memorises the text (train loss
below 1) while the validation loss stays near 6. `--tie-embeddings` builds
GPT-2's own tied, N(0, 0.02) model instead, which on these 90 steps stays near the unigram loss
(~6): see bench/results/pretrain_cpu.md.

`--data DIR` trains on token shards from `python -m tasks.prepare` (or llm.c), memory-mapped and
served by tasks.data.shards.ShardLoader; `--text`/`--dataset` are tokenized once into shards in the
cache (tasks.data.text.text_shards) and served by the same loader, with the same batches as before.
"""
from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import hashlib
import os
import socket
import sys
from pathlib import Path

import minigrad as mg
import minigrad.distributed as dist
from files.schema import SchemaError

from .common.args import add_model_args, add_train_args, parse
from .common.device import select_device
from .common.guard import main_guard
from .common.signals import pause_point
from .common.plots import plot_loss_and_accuracy
from .data.identity import check_same_data, shard_identity
from .data.manifest import DATASETS, ensure_inputs, read_text
from .data.shards import ShardLoader, find_shards
from .data.text import text_shards
from .runs.folder import begin_run, check_model_config, start_run
from .runs.models import ModelSpec, RandomInit, build_model, expected_config
from .training.config import TrainConfig
from .training.evaluation import Periodic, lm_loss, loss_evaluation, plot_losses, read_metrics
from .training.memory import check_training_memory
from .training.parallel import check_world_size
from .training.trainer import Trainer

SAMPLE_PROMPT = "Every effort moves you"
# the manifest's raw-text entries (the others are labelled rows, JSON records or questions)
TEXT_DATASETS = ("the-verdict", "tinyshakespeare")
# --init random builds the book's model: an output head of its own, embeddings drawn from N(0, 1)
RANDOM_INIT = RandomInit(tie=False, embedding_std=1.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tasks.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, help=f"a dataset of the manifest (default: the-verdict); "
                                                      f"known: {', '.join(TEXT_DATASETS)}")
    src.add_argument("--text", default=None, help="a UTF-8 text file to train on instead")
    src.add_argument("--data", default=None, metavar="DIR",
                     help="a folder of token shards from tasks.prepare (or llm.c's format); "
                          "evaluation reads the first --eval-batches batches of its validation shard")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="permute the shard order and the window order every epoch, from --seed; "
                        "--no-shuffle reads in order, as llm.c (default: shuffle)")
    p.add_argument("--stride", type=int, default=None, help="window stride in tokens (default: the context)")
    p.add_argument("--train-frac", type=float, default=0.9, help="train share of the text (default: %(default)s)")
    p.add_argument("--sample-tokens", type=int, default=25, help="tokens of the greedy sample printed at each eval; 0 = none (default: %(default)s)")
    p.add_argument("--hellaswag-every", type=int, default=0,
                   help="score HellaSwag every N steps and plot it beside the loss; 0 = never "
                        "(default: %(default)s)")
    p.add_argument("--hellaswag-limit", type=int, default=None,
                   help="score only its first M items (default: all 10,042)")
    add_model_args(p, context_default=256, tie_default=RANDOM_INIT.tie,
                   embedding_std_default=RANDOM_INIT.embedding_std)
    add_train_args(p, epochs=10, batch_size=2, lr=4e-4, eval_every=5, eval_batches=5, out="runs/pretrain")
    args = parse(p, argv)
    if args.dataset is None and args.text is None and args.data is None:
        args.dataset = "the-verdict"
    if args.dataset is not None and args.dataset not in TEXT_DATASETS:
        what = "not raw text" if args.dataset in DATASETS else "unknown"
        p.error(f"--dataset {args.dataset!r} is {what}; known text datasets: {', '.join(TEXT_DATASETS)}")
    if args.hellaswag_every < 0 or (args.hellaswag_limit is not None and args.hellaswag_limit < 1):
        p.error("--hellaswag-every must be >= 0 and --hellaswag-limit >= 1")
    return args


def greedy_sample(model, tokenizer, prompt: str, n: int) -> str:
    from gpt2.generate import generate
    ids = tokenizer.encode(prompt)
    out = generate(model, [ids], max_new_tokens=n, temperature=0.0)
    return tokenizer.decode(list(out[0]))


def shard_folder(args: argparse.Namespace, tokenizer, world: int) -> tuple[Path, str]:
    """The folder of shards to train on, and how to name its splits in messages: --data as it
    is, or raw text tokenized once into the cache and then served like any prepared corpus."""
    if args.data:
        return Path(args.data), f"the {{}} shards of {args.data}"
    text = read_text(args.text or args.dataset)
    if world > 1:
        dist.check_same("the training text (sha256)", hashlib.sha256(text.encode()).hexdigest()[:16])
    return text_shards(text, tokenizer, args.train_frac), "{} split"


def hellaswag_every(args: argparse.Namespace, tokenizer) -> list[Periodic]:
    """HellaSwag every --hellaswag-every steps; its items are loaded now, so that a missing file
    fails before any training."""
    if not args.hellaswag_every:
        return []
    from .evals.hellaswag import hellaswag_metrics, load_hellaswag
    items = load_hellaswag(limit=args.hellaswag_limit)
    return [Periodic("hellaswag", args.hellaswag_every, lambda m: hellaswag_metrics(m, items, tokenizer))]


def shard_loaders(args: argparse.Namespace, shards: tuple[list[Path], list[Path]], what: str, context: int,
                  world: int) -> tuple[ShardLoader, ShardLoader]:
    """Training and validation loaders of GLOBAL batches (--batch-size rows for each rank); the
    Trainer gives rank r its rows, so the sequences of a step do not depend on how they are split."""
    val_paths, train_paths = shards
    stride = args.stride or context
    train = ShardLoader.from_files(train_paths, context, args.batch_size * world, stride=stride,
                                   shuffle=args.shuffle, drop_last=True, seed=args.seed, name=what.format("training"))
    val = ShardLoader.from_files(val_paths, context, args.batch_size * world, stride=stride,
                                 shuffle=False, drop_last=False, seed=args.seed, name=what.format("validation"))
    return train, val


def say_ranks(world: int) -> None:
    """Under mpiexec: which PID each rank is (if a rank dies, mpiexec names its PID)."""
    pids = dist.allgather((os.getpid(), socket.gethostname()))
    if dist.is_main():
        print(f"{world} ranks: " + ", ".join(f"rank {r} = pid {pid} on {host}"
                                             for r, (pid, host) in enumerate(pids)), flush=True)


def plot_pretrain(run_dir: str | Path) -> None:
    """loss.png, and loss_hellaswag.png once HellaSwag has been scored."""
    plot_losses(run_dir)
    records = read_metrics(run_dir)
    evals = [r for r in records if r["type"] == "eval"]
    plot_loss_and_accuracy(evals, ["train_loss", "val_loss"], [r for r in records if r["type"] == "hellaswag"],
                           ["hellaswag_acc", "hellaswag_acc_norm"], Path(run_dir) / "loss_hellaswag.png",
                           "HellaSwag accuracy", chance=0.25)


def shard_data(args: argparse.Namespace, run, tokenizer, world: int):
    """The shards to train on, checked (and on --resume, the very data the run recorded):
    (validation and training paths, how to name them, what run.json records of them)."""
    if not (args.dataset or args.text or args.data):
        raise SchemaError(str(run.run_json), "args", "names no data ('dataset', 'text' and 'data' are all null)")
    with run.recorded("dataset", "text", "data"):
        folder, what = shard_folder(args, tokenizer, world)
        shards = find_shards(folder)  # (validation, training), checked before the model is built
    identity = shard_identity(folder, shards[0] + shards[1])
    if run.resuming:
        check_same_data(run.run.get("data"), identity, run.run_json)
    return shards, what, identity


def default_context(flags: dict) -> int | None:
    """--context's default (256) unless --init brings a model of a shorter context (a small run
    of our own): then that model's, so that `--init RUN` alone starts a run from RUN."""
    context = flags.get("context")
    if flags.get("init") in (None, "random") or context is None:
        return context
    base = expected_config(ModelSpec.from_flags({**flags, "context": None}, RANDOM_INIT))
    return context if base is None else min(context, base.n_ctx)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = start_run(vars(args), args.typed, "pretrain")  # checked: nothing written yet
    if not run.resuming and "context" not in args.typed:
        run.args["context"] = default_context(run.args)
    args = argparse.Namespace(**run.args)  # on --resume: the run's own arguments
    device = select_device(args.backend, args.dtype)
    pause_point("startup")
    from gpt2.tokenizer import get_tokenizer

    # every missing file in one message: tokenizer, text, HellaSwag, official weights
    ensure_inputs([args.dataset, "hellaswag" if args.hellaswag_every else None], args.init)
    tokenizer = get_tokenizer()
    world = dist.world_size()
    if world > 1:
        dist.check_same("the command line", run.args)
    shards, what, identity = shard_data(args, run, tokenizer, world)
    periodic = hellaswag_every(args, tokenizer)
    spec = ModelSpec.from_flags(run.args, RANDOM_INIT)
    with run.recorded("init", "size", "n_layer", "n_head", "n_embd", "context"):
        config = expected_config(spec)
        if config is not None:
            check_training_memory(config, args.batch_size, args.context or config.n_ctx, device, dtype=args.dtype,
                                  resuming=run.resuming)
        model = build_model(spec)
    check_model_config(run, model.config)
    context = args.context or model.config.n_ctx
    train_loader, val_loader = shard_loaders(args, shards, what, context, world)
    model.to(device)
    mg.manual_seed(args.seed)  # dropout masks: the same stream whatever --init did
    if run.resuming:
        check_world_size(run.run, world, args.batch_size, args.grad_accum)
    evaluate = loss_evaluation({"train": train_loader, "val": val_loader}, lm_loss, args.eval_batches)
    sample = (lambda m: greedy_sample(m, tokenizer, SAMPLE_PROMPT, args.sample_tokens)) if args.sample_tokens > 0 \
        else None
    trainer = Trainer(model, train_loader, lm_loss, evaluate, run.out, TrainConfig.from_flags(run.args),
                      sample=sample, periodic=periodic, plot=plot_pretrain, data_parallel=True)
    if run.resuming and not trainer.load(run):  # checked and loaded; still nothing written
        return 0  # finished already: said so, nothing to do
    dist.barrier()  # every rank has looked at the folder before rank 0 writes into it
    if dist.is_main():
        begin_run(run, model.config, "gpt2", world_size=world, data=identity)
        print(f"model: {model.num_parameters():,} parameters on {device}; "
              f"{len(train_loader)} train / {len(val_loader)} val batches of {args.batch_size * world}x{context} "
              f"tokens" + (f" ({world} ranks x {args.batch_size})" if world > 1 else "")
              + f" ({train_loader.num_tokens:,} / {val_loader.num_tokens:,} tokens in {identity['folder']})")
    if world > 1:
        say_ranks(world)
    return trainer.exit_code if trainer.run() is None else 0


if __name__ == "__main__":
    sys.exit(main())
