"""Instruction fine-tuning of GPT-2 on Alpaca-style records, as in chapter 7 of "Build a Large
Language Model (From Scratch)".

    python -m tasks.instruct train --init 355M --out runs/instruct [--lora-rank 16 --lora-alpha 16]
    python -m tasks.instruct respond --init runs/instruct [--split test | --data FILE]
    python -m tasks.instruct chat --init runs/instruct

Each record {instruction, input, output} becomes the Alpaca prompt followed by its output:

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.

    ### Instruction:
    {instruction}

    ### Input:            (only when the record has a non-empty input)
    {input}

    ### Response:
    {output}

The records are split as the book does: the first 85% train, the next 10% test, the rest
validation (1,100 records -> 935 train / 55 val / 110 test), in the file's order, which gives
exactly the book's test set; --split-seed N shuffles the records first.
"""
from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import minigrad as mg
from gpt2.tokenizer import EOT_ID, TextStream
from minigrad import nn

from .common.args import add_backend_arg, add_init_arg, add_model_args, add_train_args, parse
from .common.device import select_device
from .common.errors import Terminated, UsageError, note_output
from .common.guard import main_guard
from .common.signals import pause_point
from .common.jsonfiles import append_jsonl, read_jsonl, write_json
from .common.memory import check_inference_memory
from .common.paths import check_output_file, make_parent
from .common.progress import progress_bar
from .data.alpaca import (DEFAULT_DATA, InstructionDataError, InstructionLoader, encode_record, format_prompt,
                          load_records, resolve_data, split_records)
from .data.manifest import DATASETS, ensure_inputs
from .data.identity import check_same_data, file_identity
from .runs.checkpoint import run_dir_of
from .runs.folder import begin_run, check_model_config, start_run
from .runs.models import (ModelSpec, build_model, config_of, expected_config, load_language_model,
                          resolve_run_init, run_json_of)
from .training.config import TrainConfig
from .training.evaluation import lm_loss, loss_evaluation, plot_losses
from .training.memory import check_training_memory
from .training.trainer import Trainer


# ----------------------------------------------------------------------------- LoRA


def _lora_of(model) -> dict | None:
    """{"rank", "alpha"} of the model's LoRA adapters, or None if it has none."""
    for m in model.modules():
        if isinstance(m, nn.LoRALinear):
            return {"rank": m.rank, "alpha": m.alpha}
    return None


# ----------------------------------------------------------------------------- answering


def respond_batch(model, tokenizer, records: Sequence[dict], max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of records, each stopped at end-of-text."""
    from gpt2.generate import generate, left_pad

    prompts = [tokenizer.encode_ordinary(format_prompt(r)) for r in records]
    ids, mask = left_pad(prompts, EOT_ID)
    out = generate(model, ids, max_new_tokens, temperature=0.0, eos_id=EOT_ID, attn_mask=mask)
    return [response_text(tokenizer, row) for row in out[:, ids.shape[1]:]]


def response_text(tokenizer, new_ids: Sequence[int]) -> str:
    """The answer in the generated ids: up to the first end-of-text, without any "### Response:"
    header the model wrote again (as the book does), stripped."""
    new_ids = [int(t) for t in new_ids]
    if EOT_ID in new_ids:
        new_ids = new_ids[:new_ids.index(EOT_ID)]
    return tokenizer.decode(new_ids).replace("### Response:", "").strip()


# ----------------------------------------------------------------------------- train


def _prepare_items(tokenizer, records, max_length: int, mask_instructions: bool, name: str):
    items = [encode_record(tokenizer, r) for r in records]
    if mask_instructions:
        # a prompt longer than max_length leaves nothing to learn from once it is masked
        kept = [it for it in items if it[1] <= max_length]
        if len(kept) < len(items):
            print(f"note: {len(items) - len(kept)} {name} records have prompts longer than "
                  f"--max-length {max_length} and were left out (--mask-instructions)")
        items = kept
    return items


def _adapt(model, args: argparse.Namespace) -> None:
    """What trains: new LoRA adapters (--lora-rank), the adapters --init brought, or every weight."""
    if args.lora_rank is not None:
        if _lora_of(model) is not None:
            raise UsageError(f"--init {args.init} already has LoRA adapters; drop --lora-rank "
                                 "to go on training them")
        n = nn.apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
        print(f"LoRA: {n} linear layers wrapped (rank {args.lora_rank}, alpha {args.lora_alpha}); "
              "every other weight is frozen")
    elif _lora_of(model) is None:
        model.requires_grad_(True)  # a full fine-tune trains every weight


def _loaders(tokenizer, train_recs, val_recs, max_length: int, args) -> tuple[InstructionLoader, InstructionLoader]:
    mask = args.mask_instructions
    train_items = _prepare_items(tokenizer, train_recs, max_length, mask, "train")
    val_items = _prepare_items(tokenizer, val_recs, max_length, mask, "validation")
    if not val_items:
        raise InstructionDataError("no validation record fits --max-length with --mask-instructions")
    return (InstructionLoader(train_items, args.batch_size, shuffle=True, drop_last=True, seed=args.seed,
                              max_length=max_length, mask_instructions=mask),
            InstructionLoader(val_items, args.batch_size, max_length=max_length, mask_instructions=mask))


def _split(args: argparse.Namespace) -> tuple[Path, list[dict], tuple[list[dict], list[dict], list[dict]]]:
    """(the data file, its records, the train/val/test split), checked."""
    path = resolve_data(args.data)
    records = load_records(path)
    train_recs, val_recs, test_recs = split_records(records, args.split_seed)
    if not val_recs or not train_recs:
        raise InstructionDataError(f"{path} has {len(records)} records: too few for a train and "
                                   "a validation split")
    return path, records, (train_recs, val_recs, test_recs)


def _memory(args: argparse.Namespace, spec: ModelSpec, device: str, resuming: bool) -> None:
    """The memory a step needs, before the model is built (LoRA: only the adapters train)."""
    config = expected_config(spec)
    if config is not None:
        trained = None if args.lora_rank is None else config.n_layer * 4 * 2 * args.lora_rank * 4 * config.n_embd
        check_training_memory(config, args.batch_size, args.max_length or config.n_ctx, device, dtype=args.dtype,
                              trained_parameters=trained, resuming=resuming)


def cmd_train(args: argparse.Namespace) -> int:
    run = start_run(vars(args), args.typed, "instruct")  # checked: nothing written yet
    args = argparse.Namespace(**run.args)  # on --resume: the run's own arguments
    device = select_device(args.backend, args.dtype)
    from gpt2.tokenizer import get_tokenizer

    ensure_inputs([args.data or DEFAULT_DATA], args.init)  # every missing file in one message
    with run.recorded("data", "split_seed"):
        path, records, (train_recs, val_recs, test_recs) = _split(args)
    data = {"source": args.data if args.data in DATASETS else str(path.resolve()),  # respond recomputes the split
            "num_records": len(records), "split_seed": args.split_seed,
            "split": {"train": len(train_recs), "val": len(val_recs), "test": len(test_recs)}, **file_identity(path)}
    if run.resuming:
        check_same_data(run.run.get("data"), data, run.run_json)
    tokenizer = get_tokenizer()
    spec = ModelSpec.from_flags(run.args)
    with run.recorded("init", "size", "n_layer", "n_head", "n_embd", "context"):
        _memory(args, spec, device, run.resuming)
        model = build_model(spec)
    if args.max_length is not None and args.max_length > model.config.n_ctx:
        raise UsageError(f"--max-length {args.max_length} is longer than the model's context of "
                             f"{model.config.n_ctx}")
    max_length = args.max_length or model.config.n_ctx
    _adapt(model, args)
    check_model_config(run, model.config)
    model.to(device)
    mg.manual_seed(args.seed)  # dropout masks: the same stream whatever --init did
    train_loader, val_loader = _loaders(tokenizer, train_recs, val_recs, max_length, args)
    sample = (lambda m: respond_batch(m, tokenizer, val_recs[:1], args.sample_tokens)[0]) \
        if args.sample_tokens > 0 else None
    evaluate = loss_evaluation({"train": train_loader, "val": val_loader}, lm_loss, args.eval_batches)
    trainer = Trainer(model, train_loader, lm_loss, evaluate, run.out, TrainConfig.from_flags(run.args), sample=sample,
                      plot=plot_losses)
    if run.resuming and not trainer.load(run):  # checked and loaded; still nothing written
        return 0  # finished already: said so, nothing to do
    begin_run(run, model.config, "gpt2", max_length=max_length, lora=_lora_of(model), data=data)
    print(f"model: {model.num_parameters():,} parameters ({model.num_parameters(trainable_only=True):,} trainable) "
          f"on {device}; {len(train_recs)} train / {len(val_recs)} val / {len(test_recs)} test records; "
          f"{len(train_loader)} batches of {args.batch_size} per epoch")
    return trainer.exit_code if trainer.run() is None else 0


# ----------------------------------------------------------------------------- respond and chat


def _load(args: argparse.Namespace, rows: int = 1):
    """(model in eval mode on the chosen device, tokenizer, run.json) of --init; first, the memory
    of answering `rows` records at once (a KV cache each) checked."""
    from gpt2.tokenizer import get_tokenizer

    device = select_device(args.backend)
    init = resolve_run_init(args.init)
    check_inference_memory(config_of(init), rows, 1 << 30, device, f"answering {rows:,} records at once",
                           cache_rows=rows)
    run = run_json_of(init)
    model = load_language_model(init, device, purpose=" that can answer (a tasks.instruct or tasks.pretrain run)")
    return model, get_tokenizer(), run


def cmd_respond(args: argparse.Namespace) -> int:
    ckpt = Path(args.init)
    name = args.split if args.data is None else Path(args.data).stem
    out = Path(args.out) if args.out is not None else run_dir_of(ckpt) / f"responses_{name}.json"
    check_output_file(out)  # before any work: a bad --out must not cost the answers
    model, tokenizer, run = _load(args, args.batch_size)
    if args.data is not None:
        records = load_records(resolve_data(args.data), require_output=False)
    else:
        info = run.get("data")
        if not info:
            raise UsageError(f"{args.init} is not a tasks.instruct run: give --data FILE")
        all_records = load_records(resolve_data(info["source"]))
        if len(all_records) != info["num_records"]:
            raise InstructionDataError(
                f"{info['source']} now has {len(all_records)} records, but the run was trained on "
                f"{info['num_records']}: the split cannot be recomputed; give --data FILE")
        train, val, test = split_records(all_records, info["split_seed"])
        records = {"train": train, "val": val, "test": test}[args.split]
    if args.limit is not None:
        records = records[:args.limit]

    # each answer is appended to OUT.partial.jsonl as it comes; a rerun with the same --out skips
    # the records answered there, and OUT (the JSON list the judge reads) is written at the end
    partial = out.with_name(out.name + ".partial.jsonl")
    make_parent(out)
    note_output(out.parent, "run the same command again: it continues after the records answered")
    answered = read_jsonl(partial, cut_torn_tail=True)  # appended to below
    if [r["instruction"] for r in answered] != [r["instruction"] for r in records[:len(answered)]]:
        raise UsageError(f"{partial} holds answers to other records; delete it or choose another --out")
    if answered:
        print(f"{len(answered)} records already answered in {partial}; continuing")
    with progress_bar(total=len(records), initial=len(answered), desc="responding", unit="record",
              disable=args.no_progress) as bar:
        for start in range(len(answered), len(records), args.batch_size):
            batch = records[start:start + args.batch_size]
            for rec, answer in zip(batch, respond_batch(model, tokenizer, batch, args.max_new_tokens)):
                answered.append({**rec, "model_response": answer})
                append_jsonl(partial, answered[-1])
                pause_point("record")
            bar.update(len(batch))
    write_json(out, answered)
    partial.unlink()
    print(f"{len(answered)} responses written to {out}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from gpt2.generate import stream

    model, tokenizer, _ = _load(args)
    interactive = sys.stdin.isatty()
    out = sys.stdout
    try:
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            line = sys.stdin.readline()
            if not line:
                break  # end of input
            instruction = line.strip()
            if not instruction:
                continue
            ids = tokenizer.encode_ordinary(format_prompt({"instruction": instruction}))
            text = TextStream(tokenizer)  # a character split over two tokens is printed once both have come
            for step in stream(model, np.asarray([ids]), args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, eos_id=EOT_ID, seed=args.seed):
                token = int(step[0])
                if token == EOT_ID:
                    break
                out.write(text.push(token))
                out.flush()
            out.write(text.flush() + "\n")
            out.flush()
    except KeyboardInterrupt as e:  # Ctrl-C ends a chat; SIGTERM is 143, as in every task
        out.write("\n")
        if isinstance(e, Terminated):
            raise
    return 0


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tasks.instruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune GPT-2 on instruction records")
    t.add_argument("--data", default=DEFAULT_DATA,
                   help="a manifest dataset name or an Alpaca-style JSON file (default: %(default)s)")
    t.add_argument("--split-seed", type=int, default=None,
                   help="shuffle the records with this seed before splitting (default: file order, "
                        "the book's split)")
    t.add_argument("--max-length", type=int, default=None,
                   help="cut batches to this many tokens (default: the model's context, 1024 for GPT-2)")
    t.add_argument("--mask-instructions", action="store_true",
                   help="train on the response tokens only (the prompt's targets are ignored)")
    t.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank only")
    t.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling alpha (default: %(default)s)")
    t.add_argument("--sample-tokens", type=int, default=35,
                   help="tokens of the greedy answer to the first validation record printed at each "
                        "evaluation; 0 = none (default: %(default)s)")
    add_model_args(t, init_default="355M", dropout_default=0.0)
    add_train_args(t, epochs=2, batch_size=8, lr=5e-5, weight_decay=0.1, eval_every=5,
                       eval_batches=5, out="runs/instruct")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("respond", help="answer a split (or a file) of records, saved as JSON")
    add_init_arg(r, old_names=("--checkpoint",), help="run folder (or one checkpoint folder) of a train run")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--split", choices=("train", "val", "test"), default="test",
                     help="the run's own split to answer (default: %(default)s)")
    src.add_argument("--data", default=None, help="answer every record of this JSON file instead")
    r.add_argument("--out", default=None, help="output JSON (default: RUN/responses_<split>.json)")
    r.add_argument("--max-new-tokens", type=int, default=256, help="default: %(default)s")
    r.add_argument("--batch-size", type=int, default=8, help="records decoded together (default: %(default)s)")
    r.add_argument("--limit", type=int, default=None, help="answer only the first N records")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_respond)

    c = sub.add_parser("chat", help="answer instructions read from stdin, one per line")
    add_init_arg(c, old_names=("--checkpoint",), help="run folder (or one checkpoint folder) of a train run")
    c.add_argument("--max-new-tokens", type=int, default=256, help="default: %(default)s")
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    c.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    c.add_argument("--seed", type=int, default=123, help="sampling seed (default: %(default)s)")
    for q in (r, c):
        add_backend_arg(q)
    c.set_defaults(func=cmd_chat)
    return parse(p, argv)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
