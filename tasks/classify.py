"""GPT-2 as a text classifier (spam or not): `python -m tasks.classify train|predict ...`.

    python -m tasks.classify train --init 124M                 # the book's chapter 6 run
    python -m tasks.classify train --data my.tsv --trainable lora --out runs/mine
    python -m tasks.classify predict --init runs/classify "You won a free cruise, reply now!"

train: the SMS Spam Collection (or any label<TAB>text file), balanced by sampling every class
down to the smallest, split 70/10/20 and padded with <|endoftext|> to the longest training text.
GPT-2's LM head is replaced by a Linear layer on one position's hidden state. The defaults are
the reference run of "Build a Large Language Model (From Scratch)", chapter 6: the official 124M
weights, the last block, final LayerNorm and head trainable, AdamW lr 5e-5 and weight decay 0.1,
5 epochs of batches of 8. Outputs in --out: the split CSVs, metrics.jsonl, checkpoints,
loss.png, accuracy.png, confusion_test.png and results.json (loss, accuracy before and after
training, precision/recall/F1).

predict: label and probability of each text, one tab-separated line per text.
"""
from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minigrad as mg
import minigrad.functional as F
from gpt2.classifier import POOLS, GPT2Classifier
from minigrad import backend, nn

from .common.args import add_backend_arg, add_init_arg, add_model_args, add_train_args, parse
from .common.device import select_device
from .common.errors import TaskError, UsageError
from .common.guard import main_guard
from .common.jsonfiles import write_json
from .common.memory import check_inference_memory
from .common.plots import plot_confusion, plot_curves
from .data.identity import check_same_data, file_identity
from .data.labelled import (PAD_ID, SPLIT_NAMES, LabelledTokens, confusion_matrix, encode_texts, labelled_source,
                            load_splits, longest, pad_ids, parse_labels, per_class_scores, write_split_csvs)
from .data.loaders import BatchLoader
from .evals.classifier import results_table, saved_before, score, scores_dict
from .data.manifest import ensure_inputs
from .runs.checkpoint import CheckpointError, run_dir_of
from .runs.folder import begin_run, check_model_config, start_run
from .runs.models import (ModelSpec, build_model, config_of, expected_config, load_run_model, resolve_run_init,
                          run_json_of)
from .training.config import TrainConfig
from .training.evaluation import read_metrics
from .training.memory import check_training_memory
from .training.trainer import Trainer

TRAINABLE = ("last-block", "all", "lora")

POOL_HELP = """which position's hidden state the head reads. "last" (the book's choice): position -1
whatever it holds; with right padding that is usually a padding token, which still sees the whole
text through causal attention, so the model learns to read the text from there; predict pads
every text to the training length so that position means the same. "last-real": the last real
token of each text (found from the padding); padding then changes nothing, so batches are cut to
their longest text, which is faster. (default: %(default)s)"""


# ----------------------------------------------------------------------------- the model

def set_trainable(model: GPT2Classifier, mode: str, lora_rank: int = 16, lora_alpha: float = 16.0) -> None:
    """Freeze what `mode` leaves alone. Frozen weights cost no gradient work: minigrad records no
    graph for an op whose inputs all have requires_grad False."""
    if mode == "all":
        model.requires_grad_(True)
    elif mode == "last-block":  # the book's choice: last block, final LayerNorm, head
        model.requires_grad_(False)
        for part in (model.gpt.h[-1], model.gpt.ln_f, model.head):
            part.requires_grad_(True)
    elif mode == "lora":  # adapters on every Linear of the trunk; trunk frozen, head trained
        nn.apply_lora(model.gpt, rank=lora_rank, alpha=lora_alpha)
        model.head.requires_grad_(True)
    else:
        raise ValueError(f"--trainable must be one of {', '.join(TRAINABLE)}, got {mode!r}")


# ----------------------------------------------------------------------------- loss and metrics

def classify_loss(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, backend.array_module(logits.data).asarray(y))


# ----------------------------------------------------------------------------- train

def _tokenizer():
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer
    try:
        return get_tokenizer()
    except TokenizerUnavailableError as e:
        raise TaskError(str(e)) from None


@dataclass
class ClassifyData:
    """The splits tokenized and padded to one length, and their loaders."""
    splits: dict
    classes: list[str]
    length: int
    loaders: dict        # train (shuffled, whole batches), validation, test
    evals: dict          # train (every row), validation, test: the before/after report

    @classmethod
    def build(cls, args: argparse.Namespace, splits: dict, classes: list[str], tokenizer, n_ctx: int):
        length = args.max_length or longest(splits["train"], tokenizer)
        if length > n_ctx:
            if args.max_length:
                raise UsageError(f"--max-length {length} is longer than the model's context of {n_ctx}")
            print(f"note: the longest training text has {length} tokens; texts are cut to the context of {n_ctx}")
            length = n_ctx
        data = {name: LabelledTokens(rows, classes, tokenizer, length) for name, rows in splits.items()}
        loaders = {"train": BatchLoader(data["train"], args.batch_size, shuffle=True, drop_last=True,
                                        seed=args.seed),
                   **{n: BatchLoader(data[n], args.batch_size) for n in ("validation", "test")}}
        evals = {"train": BatchLoader(data["train"], args.batch_size), "validation": loaders["validation"],
                 "test": loaders["test"]}
        return cls(splits, classes, length, loaders, evals)

    def describe(self, n_rows: int, n_skipped: int, batch_size: int) -> str:
        return (f"data: {n_rows} valid rows ({n_skipped} skipped), classes {', '.join(self.classes)}; "
                f"train / validation / test {' / '.join(str(len(self.splits[n])) for n in SPLIT_NAMES)} rows = "
                f"{' / '.join(str(len(self.loaders[n])) for n in SPLIT_NAMES)} batches of {batch_size}; "
                f"padded to {self.length} tokens")


def accuracy_evaluation(loaders: dict, batches: int):
    """The Trainer's `evaluate`: loss and accuracy of train and validation from one forward pass."""
    def evaluate(m):
        tr, va = score(m, loaders["train"], batches), score(m, loaders["validation"], batches)
        return {"train_loss": tr.loss, "val_loss": va.loss, "train_acc": tr.accuracy, "val_acc": va.accuracy}
    return evaluate


def plot_classify(run_dir) -> None:
    """loss.png and accuracy.png of the evaluations in metrics.jsonl (from two of them on)."""
    recs = [r for r in read_metrics(run_dir) if r["type"] == "eval"]
    if len(recs) < 2:  # a curve needs two points
        return
    for keys, name, ylabel in ((["train_loss", "val_loss"], "loss.png", "loss"),
                               (["train_acc", "val_acc"], "accuracy.png", "accuracy")):
        plot_curves([r for r in recs if keys[0] in r], keys, Path(run_dir) / name, ylabel,
                    seen_key="tokens_seen", seen_label="examples seen")


def _memory(args: argparse.Namespace, spec: ModelSpec, device: str, resuming: bool) -> None:
    """The memory a step needs, before the model is built: the trunk's weights, AdamW over what
    trains, the activations of the blocks that train (the last one, or all with lora)."""
    config = expected_config(spec)
    if config is None:
        return
    config = config.replace(tie_word_embeddings=True)  # the classifier drops an untied LM head
    C, L = config.n_embd, config.n_layer
    block = 12 * C * C + 13 * C
    trained = {"last-block": block + 2 * C, "lora": L * 4 * 2 * args.lora_rank * 4 * C}.get(args.trainable)
    check_training_memory(config, args.batch_size, args.max_length or config.n_ctx, device, dtype=args.dtype,
                          trained_parameters=trained, layers_with_grad=1 if args.trainable == "last-block" else None,
                          vocab_logits=False, resuming=resuming)


def _scores_before(model, data: ClassifyData, out: Path, batches: int | None) -> dict:
    """The untrained model's scores, once, at the start of a run (a resumed run keeps those)."""
    before = {n: scores_dict(score(model, loader, batches, desc=f"scoring {n}")) for n, loader in data.evals.items()}
    write_json(out / "before.json", before)
    return before


def _report(model, trainer: Trainer, data: ClassifyData, before: dict, args, train_time: float) -> None:
    """results.json, confusion_test.png and the printed summary of the trained model."""
    out, classes = Path(args.out), data.classes
    after_scores = {n: score(model, loader, args.report_batches, desc=f"scoring {n}")
                    for n, loader in data.evals.items()}
    after = {n: scores_dict(s) for n, s in after_scores.items()}
    test = after_scores["test"]
    matrix = confusion_matrix(test.targets, test.predictions, len(classes))
    per_class = per_class_scores(matrix, classes)
    plot_confusion(matrix, classes, out / "confusion_test.png", title="test")
    write_json(out / "results.json", {
        "labels": classes, "before": before, "after": after,
        "test_confusion": matrix.tolist(), "test_per_class": per_class,
        "rows": {n: len(data.splits[n]) for n in SPLIT_NAMES}, "max_length": data.length,
        "steps": trainer.step, "epochs": trainer.step / trainer.steps_per_epoch,
        "train_seconds_this_session": train_time, "steps_this_session": trainer.step - trainer.start_step,
        "report_batches": args.report_batches})
    print(results_table(before, after))
    positive = "spam" if "spam" in per_class else classes[-1]
    pc = per_class[positive]
    print(f"test, {positive!r} as positive: precision {pc['precision']:.3f}, recall {pc['recall']:.3f}, "
          f"F1 {pc['f1']:.3f}; confusion (rows true, columns predicted {classes}): {matrix.tolist()}")
    print(f"training took {train_time:.1f} s for {trainer.step - trainer.start_step} steps; outputs in {out}")


def _data(args: argparse.Namespace, run):
    """The labelled rows split, and what run.json records of the file (checked on --resume)."""
    with run.recorded("data", "labels"):
        source = labelled_source(args.data, progress=not args.no_progress)
        splits, classes, n_rows, n_skipped = load_splits(source, parse_labels(args.labels), strict=args.strict,
                                                         balanced=args.balance, split_seed=args.split_seed)
    identity = {"source": str(source.resolve()), **file_identity(source)}
    if run.resuming:
        check_same_data(run.run.get("data"), identity, run.run_json)
    return splits, classes, n_rows, n_skipped, identity


def train(args: argparse.Namespace) -> int:
    run = start_run(vars(args), args.typed, "classify")  # checked: nothing written yet
    args = argparse.Namespace(**run.args)  # on --resume: the run's own arguments
    device = select_device(args.backend, args.dtype)
    out = Path(args.out)
    ensure_inputs([None if args.data else "sms-spam"], args.init)  # every missing file in one message
    splits, classes, n_rows, n_skipped, identity = _data(args, run)
    spec = ModelSpec.from_flags(run.args)
    with run.recorded("init", "size", "n_layer", "n_head", "n_embd", "context"):
        _memory(args, spec, device, run.resuming)
        gpt = build_model(spec)  # a GPT-2 language model (a classifier run is refused)
    data = ClassifyData.build(args, splits, classes, _tokenizer(), gpt.config.n_ctx)
    mg.manual_seed(args.seed)  # the head and the adapters: the same numbers whatever --init did
    model = GPT2Classifier(gpt, len(classes), args.pool)
    check_model_config(run, gpt.config)
    set_trainable(model, args.trainable, args.lora_rank, args.lora_alpha)
    model.to(device)
    # "tokens" in the Trainer's bookkeeping are examples here
    trainer = Trainer(model, data.loaders["train"], classify_loss, accuracy_evaluation(data.loaders, args.eval_batches),
                      out, TrainConfig.from_flags(run.args), tokens_in=lambda b: len(b[1]), plot=plot_classify,
                      unit="examples")
    before = saved_before(out / "before.json") if run.resuming else None
    if run.resuming and not trainer.load(run):  # checked and loaded; still nothing written
        return 0  # finished already: said so, nothing to do
    lora = {"rank": args.lora_rank, "alpha": args.lora_alpha} if args.trainable == "lora" else None
    begin_run(run, gpt.config, "gpt2-classifier", lora=lora, data=identity, classifier={
        "labels": classes, "pool": args.pool, "trainable": args.trainable, "max_length": data.length, "pad_id": PAD_ID})
    write_split_csvs(out, splits)
    print(data.describe(n_rows, n_skipped, args.batch_size))
    print(f"model: {model.num_parameters():,} parameters, {model.num_parameters(trainable_only=True):,} "
          f"trainable ({args.trainable}), pool {args.pool}, on {device}")
    if not run.resuming:
        before = _scores_before(model, data, out, args.report_batches)
        mg.manual_seed(args.seed)  # dropout masks: the same stream whatever came before
    t0 = time.perf_counter()
    if trainer.run(summary=False) is None:
        return trainer.exit_code
    _report(model, trainer, data, before, args, time.perf_counter() - t0)
    return 0


# ----------------------------------------------------------------------------- predict

def _read_texts(args) -> list[str]:
    if args.texts and args.file:
        raise UsageError("give texts as arguments or --file, not both")
    if args.file:
        if args.file == "-":
            raw = sys.stdin.read()
        else:
            path = Path(args.file)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            raw = path.read_text(encoding="utf-8")
        texts = [line.rstrip("\r") for line in raw.split("\n")]
    elif args.texts:
        texts = args.texts
    else:
        if sys.stdin.isatty():
            raise UsageError("no text to classify: give texts as arguments, --file, or pipe them in")
        texts = [line.rstrip("\r") for line in sys.stdin.read().split("\n")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UsageError("no text to classify (only blank lines)")
    return texts


def predict(args: argparse.Namespace) -> int:
    device = select_device(args.backend)
    texts = _read_texts(args)
    init = resolve_run_init(args.init)
    run = run_json_of(init)
    max_length = (run.get("classifier") or {}).get("max_length")
    check_inference_memory(config_of(init), args.batch_size, max_length if isinstance(max_length, int) else 1 << 30,
                           device, f"classifying --batch-size {args.batch_size:,} texts at once", vocab_logits=False)
    if run.get("task") != "classify":
        raise UsageError(f"{init.name} is not a tasks.classify run (its task is {run.get('task')!r})")
    c = run.get("classifier")
    if not isinstance(c, dict) or not {"labels", "max_length"} <= c.keys():
        raise CheckpointError(f"{run_dir_of(init.path) / 'run.json'} has no 'classifier' with its labels and "
                              "max_length: the texts cannot be prepared as the model was trained")
    model = load_run_model(init.path, device)
    ids = pad_ids(encode_texts(texts, _tokenizer()), c["max_length"], c.get("pad_id", PAD_ID))
    try:
        with mg.no_grad():
            for start in range(0, len(texts), args.batch_size):
                logits = backend.to_device(model(ids[start:start + args.batch_size]).data, "cpu")
                e = np.exp(logits - logits.max(axis=-1, keepdims=True))
                probs = e / e.sum(axis=-1, keepdims=True)
                for text, p in zip(texts[start:start + args.batch_size], probs):
                    k = int(p.argmax())
                    print(f"{c['labels'][k]}\t{p[k]:.4f}\t{text}", flush=True)
    except BrokenPipeError:  # the reader (e.g. `| head`) has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush stays quiet
    return 0


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.classify", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,predict}")

    t = sub.add_parser("train", help="fine-tune GPT-2 as a classifier",
                       description="Fine-tune GPT-2 as a classifier on label<TAB>text rows.")
    g = t.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="a UTF-8 file of label<TAB>text lines (default: the SMS Spam Collection from the cache); "
                        "the labels found are the classes, sorted")
    g.add_argument("--labels", default=None,
                   help="comma-separated classes in id order (e.g. ham,spam); rows with other labels are malformed")
    g.add_argument("--strict", action="store_true",
                   help="stop at malformed rows (no tab, empty label or text, unknown label) instead of "
                        "skipping them with a warning")
    g.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="sample every class down to the smallest one's size (default: %(default)s)")
    g.add_argument("--split-seed", type=int, default=123,
                   help="seed of the balancing sample and the 70/10/20 split (default: %(default)s, the book's)")
    g.add_argument("--max-length", type=int, default=None,
                   help="pad or cut every text to this many tokens (default: the longest training text)")
    m = t.add_argument_group("classifier")
    m.add_argument("--pool", default="last", choices=POOLS, help=POOL_HELP)
    m.add_argument("--trainable", default="last-block", choices=TRAINABLE,
                   help="last-block: the last transformer block, final LayerNorm and head (the book); "
                        "all: every weight; lora: low-rank adapters on the trunk's Linear layers plus "
                        "the head (default: %(default)s)")
    m.add_argument("--lora-rank", type=int, default=16, help="with --trainable lora (default: %(default)s)")
    m.add_argument("--lora-alpha", type=float, default=16.0, help="with --trainable lora (default: %(default)s)")
    m.add_argument("--report-batches", type=int, default=None,
                   help="batches per split for the before/after report (default: all)")
    add_model_args(t, init_default="124M", dropout_default=0.0)
    add_train_args(t, epochs=5, batch_size=8, lr=5e-5, weight_decay=0.1, eval_every=50, eval_batches=5,
                       out="runs/classify")
    t.set_defaults(func=train)

    q = sub.add_parser("predict", help="label new texts with a trained classifier",
                       description="Print label<TAB>probability<TAB>text for each text.")
    q.add_argument("texts", nargs="*", help="texts to classify (none: read them from --file or stdin)")
    add_init_arg(q, old_names=("--checkpoint",), help="a tasks.classify run folder or one of its checkpoints")
    q.add_argument("--file", default=None, help="a UTF-8 file with one text a line ('-' for stdin)")
    q.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    add_backend_arg(q)
    q.set_defaults(func=predict)
    return p


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
