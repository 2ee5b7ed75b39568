"""Evaluate a GPT-2: judge-model scores of its responses, MMLU accuracy, HellaSwag.

    python -m tasks.evaluate judge --responses responses.json --url http://localhost:11434 \\
        --model llama3 [--api ollama|openai] [--out scores.json]
    python -m tasks.evaluate mmlu --init 124M --shots 5 --limit 20 [--subjects anatomy ...]
    python -m tasks.evaluate mmlu --init runs/instruct [--backend cupy] [--plot mmlu.png]
    python -m tasks.evaluate hellaswag --init 124M [--limit 100] [--out runs/hellaswag]

The pieces live in tasks/evals/: judge.py (HTTP judge client), mmlu.py (MMLU scoring) and
hellaswag.py (HellaSwag scoring).
"""

from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import os
import sys
from pathlib import Path

from minigrad.backend import BackendError
from files.hub import MissingFileError
from .common.args import add_backend_arg, add_init_arg, parse
from .common.device import select_device
from .common.errors import TaskError, UsageError, note_output
from .common.guard import main_guard
from .common.signals import pause_point
from .common.jsonfiles import append_jsonl, read_json, read_jsonl, write_json
from .common.memory import check_inference_memory
from .common.paths import check_out, check_output_file, make_parent
from .data.manifest import ensure_inputs
from .runs.models import config_of, load_language_model, resolve_init
from .evals.hellaswag import evaluate_hellaswag, load_hellaswag
from .evals.judge import (APIS, JUDGE_PROMPT, JudgeClient, JudgeInputError, JudgeUnreachableError,
                          judge_records, load_responses)
from .evals.mmlu import (MMLUDataError, ensure_dev, evaluate_mmlu, group_by_subject, load_mmlu, select_subjects,
                         model_next_token_logits)


INIT_HELP = ("an official size (124M, 355M, 774M, 1558M), a weights file or folder, or a run/checkpoint "
             "folder")


class ModelUnavailableError(TaskError):
    """The model (or the code to load it) cannot be had."""


def _record(partial: Path, record: dict) -> None:
    append_jsonl(partial, record)
    pause_point("record")


# ----------------------------------------------------------------------------- judge


def default_scores_path(responses: str | os.PathLike) -> Path:
    p = Path(responses)
    return p.with_name(f"{p.stem}-judge-scores.json")


def run_judge(args: argparse.Namespace) -> int:
    records = load_responses(args.responses)
    out = Path(args.out) if args.out is not None else default_scores_path(args.responses)
    check_output_file(out)  # before any request: a bad --out must not cost the scores
    api_key = None
    if args.api == "openai":
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:  # local OpenAI-compatible servers often need no key
            print(f"note: ${args.api_key_env} is not set; sending no Authorization header",
                  file=sys.stderr)
    try:
        client = JudgeClient(args.url, args.model, api=args.api, api_key=api_key,
                             timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    except JudgeInputError as err:  # --url, --timeout, --retries or --backoff
        raise UsageError(str(err)) from None
    # each score is appended to OUT.partial.jsonl as it comes; a rerun with the same --out
    # continues after them, and OUT is written from all of them at the end
    partial = out.with_name(out.name + ".partial.jsonl")
    make_parent(out)
    note_output(out.parent, "run the same command again: it continues after the records scored")
    done = read_jsonl(partial, cut_torn_tail=True)  # appended to below
    if done:
        print(f"{len(done)} records already scored in {partial}; continuing")
    try:
        result = judge_records(records, client, progress=not args.no_progress, done=done,
                               on_score=lambda score: _record(partial, score))
    except JudgeUnreachableError as err:
        kept = f"; the {len(read_jsonl(partial))} scores so far are kept in {partial}" if partial.exists() else ""
        raise TaskError(f"{err}{kept}; start the judge server, then run the same command again") from None
    write_json(out, {
        "judge": {"api": args.api, "url": client.url, "model": args.model,
                  "prompt_template": JUDGE_PROMPT},
        "responses_file": str(args.responses),
        "mean_score": result.mean, "scored": result.scored, "failed": result.failed,
        "scores": result.scores,
    })

    mean = "n/a" if result.mean is None else f"{result.mean:.2f}"
    print(f"mean score: {mean}  scored: {result.scored}  failed: {result.failed}  "
          f"(of {len(records)})")
    errors = [s for s in result.scores if s["error"]]
    if errors:  # one example is enough to see what went wrong; all are in the file
        print(f"first failure (record {errors[0]['index']}): {errors[0]['error']}")
    partial.unlink(missing_ok=True)
    print(f"per-record scores saved to {out}")
    return 0 if result.scored else 1


# ----------------------------------------------------------------------------- MMLU


def load_model(args: argparse.Namespace):
    """The GPT-2 named by --init (an official size, a weights file, a run or checkpoint folder)."""
    init = resolve_init(args.init, random_ok=False)
    try:
        return load_language_model(init, select_device(args.backend),
                                   purpose=", so it cannot be scored on MMLU or HellaSwag")
    except MissingFileError:
        raise  # its message already says where to put the file
    except (FileNotFoundError, KeyError, ValueError, BackendError) as err:
        raise ModelUnavailableError(f"cannot load the model from {args.init}: {err}") from None


def load_tokenizer():
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer
    try:
        return get_tokenizer()
    except TokenizerUnavailableError as err:
        raise ModelUnavailableError(str(err)) from None


def run_mmlu(args: argparse.Namespace) -> int:
    dev_file, missing = args.dev, []
    if args.shots and args.shots_from == "dev" and not dev_file:
        try:  # the dev split is one more input: offline, it joins the list of missing files
            dev_file = ensure_dev(progress=not args.no_progress)
        except MissingFileError as err:
            missing.append(err)
    ensure_inputs([None if args.data else "mmlu"], args.init, found=missing)  # every missing file in one message
    questions = load_mmlu(args.data)  # before the model: a missing file fails fast
    try:
        select_subjects(group_by_subject(questions), args.subjects)
    except MMLUDataError as err:  # an unknown --subjects
        raise UsageError(str(err)) from None
    dev = load_mmlu(dev_file) if args.shots and args.shots_from == "dev" else None
    if args.out is not None:
        check_output_file(Path(args.out))  # before any work ('' included: refused, not taken for no --out)
    tokenizer = load_tokenizer()
    check_inference_memory(config_of(resolve_init(args.init, random_ok=False)), 1, args.max_context or 1 << 30,
                           select_device(args.backend), "scoring MMLU questions", lower="--max-context")
    model = load_model(args)
    n_ctx = getattr(getattr(model, "config", None), "n_ctx", 1024)
    if args.max_context is not None and args.max_context > n_ctx:
        raise UsageError(f"--max-context {args.max_context} is longer than the model's context of {n_ctx}")
    max_context = args.max_context or n_ctx
    # with --out, each answer is appended to OUT.partial.jsonl; a rerun asks only the rest
    partial = Path(args.out).with_name(Path(args.out).name + ".partial.jsonl") if args.out else None
    if partial:
        make_parent(partial)
        note_output(partial.parent, "run the same command again: it asks only the questions left")
    answered = read_jsonl(partial, cut_torn_tail=True) if partial else []  # appended to below
    done = {(r["subject"], r["index"]): r["correct"] for r in answered}
    if done:
        print(f"{len(done)} questions already answered in {partial}; continuing")
    result = evaluate_mmlu(questions, model_next_token_logits(model), tokenizer,
                           shots=args.shots, limit=args.limit, subjects=args.subjects,
                           max_context=max_context, progress=not args.no_progress, dev=dev, done=done,
                           on_answer=(lambda r: _record(partial, r)) if partial else None)
    print(result.table())
    source = {"init": args.init}
    if args.out:
        write_json(args.out, {**source, "shots": args.shots,
                              "shots_from": args.shots_from if args.shots else None,
                              "limit": args.limit, "max_context": max_context, **result.to_dict()})
        partial.unlink(missing_ok=True)
        print(f"results saved to {args.out}")
    if args.plot:
        from .common.plots import plot_subject_accuracy
        title = f"MMLU {args.shots}-shot: {next(iter(source.values()))}"
        print(f"plot saved to {plot_subject_accuracy(result.per_subject, args.plot, title)}")
    return 0


# ----------------------------------------------------------------------------- HellaSwag


def run_hellaswag(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out(out, resume=True)  # a folder of results, continued by a rerun
    ensure_inputs([None if args.data else "hellaswag"], args.init)  # every missing file in one message
    items = load_hellaswag(args.data, args.limit)  # before the model: a missing file fails fast
    config = {"init": args.init, "data": str(args.data) if args.data else "hellaswag"}
    config_path = out / "hellaswag_config.json"
    if config_path.is_file():  # a rerun resumes only what the same model scored on the same data
        before = read_json(config_path)
        changed = [k for k in config if before.get(k) != config[k]]
        if changed:
            raise UsageError(
                f"{out} holds HellaSwag results of {', '.join(f'{k}={before.get(k)!r}' for k in changed)}; "
                f"choose another --out for {', '.join(f'{k}={config[k]!r}' for k in changed)}")
    tokenizer = load_tokenizer()
    check_inference_memory(config_of(resolve_init(args.init, random_ok=False)), 4, 1 << 30,
                           select_device(args.backend), "scoring HellaSwag's four endings of an item",
                           lower="the model's size")
    model = load_model(args)
    out.mkdir(parents=True, exist_ok=True)
    note_output(out, "run the same command again: it continues after the items scored")
    write_json(config_path, config)
    result = evaluate_hellaswag(model, items, tokenizer, out / "hellaswag.jsonl",
                                progress=not args.no_progress)
    write_json(out / "hellaswag_results.json", {**config, **result.to_dict()})
    print(f"HellaSwag ({result.n} items, completion style): acc {result.acc:.4f}  "
          f"acc_norm {result.acc_norm:.4f}")
    print(f"per-item results in {out / 'hellaswag.jsonl'}, summary in "
          f"{out / 'hellaswag_results.json'}")
    return 0


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_judge(sub)
    _add_mmlu(sub)
    _add_hellaswag(sub)
    return parser


def _add_judge(sub) -> None:
    j = sub.add_parser("judge", help="score responses with a judge model over HTTP")
    j.add_argument("--responses", required=True,
                   help="JSON list of {instruction, input?, output, model_response}")
    j.add_argument("--url", required=True, help="judge server, e.g. http://localhost:11434")
    j.add_argument("--model", required=True, help="judge model name, e.g. llama3")
    j.add_argument("--api", choices=APIS, default="ollama",
                   help="ollama: POST /api/chat; openai: POST /v1/chat/completions")
    j.add_argument("--out", help="where to save per-record scores "
                                 "(default: <responses>-judge-scores.json beside it)")
    j.add_argument("--timeout", type=float, default=60.0, help="seconds a whole request may take")
    j.add_argument("--retries", type=int, default=3,
                   help="extra attempts on HTTP 5xx/429, timeouts and connection errors")
    j.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry (doubles after each)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (openai API only)")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=run_judge)


def _add_mmlu(sub) -> None:
    m = sub.add_parser("mmlu", help="MMLU accuracy from next-token logits")
    add_init_arg(m, old_names=("--checkpoint", "--weights"), help=INIT_HELP)
    m.add_argument("--subjects", nargs="+", help="only these subjects (default: all 57)")
    m.add_argument("--shots", type=int, choices=(0, 5), default=0, help="examples per prompt")
    m.add_argument("--shots-from", choices=("dev", "test"), default="dev",
                   help="dev: each subject's first dev questions (MMLU's protocol; the dev split is "
                        "converted with the test split when online); test: its first test "
                        "questions, which are then not scored (default: %(default)s)")
    m.add_argument("--dev", help="MMLU dev-split JSON-lines file (default: the data cache's)")
    m.add_argument("--limit", type=int, help="score at most N questions per subject")
    m.add_argument("--max-context", type=int,
                   help="keep the last N prompt tokens (default: the model's context)")
    add_backend_arg(m)
    m.add_argument("--data", help="MMLU JSON-lines file (default: the data cache's)")
    m.add_argument("--out", help="save the accuracy table as JSON here")
    m.add_argument("--plot", metavar="PNG", help="draw the accuracy per subject here")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_mmlu)


def _add_hellaswag(sub) -> None:
    h = sub.add_parser("hellaswag", help="HellaSwag acc and acc_norm, completion style (as llm.c)")
    add_init_arg(h, help=INIT_HELP)
    h.add_argument("--limit", type=int, help="score only the first N items (default: all 10,042)")
    h.add_argument("--out", default="runs/hellaswag",
                   help="folder for hellaswag.jsonl (one line per item, written as it goes: a "
                        "rerun skips the items done) and hellaswag_results.json "
                        "(default: %(default)s)")
    h.add_argument("--data", help="HellaSwag JSON-lines file (default: the data cache's "
                                  "validation set, downloaded when online)")
    add_backend_arg(h)
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    h.set_defaults(func=run_hellaswag)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
