"""Evaluate an instruction-tuned GPT-2: judge-model scores of its responses, and MMLU accuracy.

    python -m tasks.evaluate judge --responses responses.json --url http://localhost:11434 \\
        --model llama3 [--api ollama|openai] [--out scores.json]
    python -m tasks.evaluate mmlu --weights 124M --shots 5 --limit 20 [--subjects anatomy ...]
    python -m tasks.evaluate mmlu --checkpoint runs/instruct [--backend cupy]

The pieces live in tasks/judge.py (HTTP judge client) and tasks/mmlu.py (MMLU scoring).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from minigrad.hub import ChecksumError, MissingFileError
from tasks import cli
from tasks.checkpoint import write_json
from tasks.judge import (APIS, JUDGE_PROMPT, JudgeClient, JudgeInputError, judge_records,
                         load_responses)
from tasks.mmlu import MMLUDataError, evaluate_mmlu, load_mmlu, model_next_token_logits


class ModelUnavailableError(RuntimeError):
    """The model (or the code to load it) cannot be had."""


# ----------------------------------------------------------------------------- judge


def default_scores_path(responses: str | os.PathLike) -> Path:
    p = Path(responses)
    return p.with_name(f"{p.stem}-judge-scores.json")


def run_judge(args: argparse.Namespace) -> int:
    records = load_responses(args.responses)
    api_key = None
    if args.api == "openai":
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:  # local OpenAI-compatible servers often need no key
            print(f"note: ${args.api_key_env} is not set; sending no Authorization header",
                  file=sys.stderr)
    client = JudgeClient(args.url, args.model, api=args.api, api_key=api_key,
                         timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    result = judge_records(records, client, progress=not args.no_progress)

    out = Path(args.out) if args.out else default_scores_path(args.responses)
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
    print(f"per-record scores saved to {out}")
    return 0 if result.scored else 1


# ----------------------------------------------------------------------------- MMLU


def load_model(args: argparse.Namespace):
    """The GPT-2 to evaluate: official weights (--weights) or a training run (--checkpoint)."""
    device = cli.device_of(args)
    what = "the official weights" if args.weights else "checkpoints of a training run"
    try:
        import gpt2
        if not args.weights:
            from tasks.checkpoint import load_model_from_run
    except ImportError as err:
        raise ModelUnavailableError(
            f"loading {what} is not available yet in this version ({err})") from None
    source = args.weights or args.checkpoint
    try:
        if args.weights:
            return gpt2.from_pretrained(args.weights, device=device)
        return load_model_from_run(args.checkpoint, device=device)
    except MissingFileError:
        raise  # its message already says where to put the file
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise ModelUnavailableError(f"cannot load the model from {source}: {err}") from None


def load_tokenizer():
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer
    try:
        return get_tokenizer()
    except TokenizerUnavailableError as err:
        raise ModelUnavailableError(str(err)) from None


def run_mmlu(args: argparse.Namespace) -> int:
    if args.shots not in (0, 5):
        raise MMLUDataError(f"--shots must be 0 or 5, got {args.shots}")
    questions = load_mmlu(args.data)  # before the model: a missing file fails fast
    tokenizer = load_tokenizer()
    model = load_model(args)
    config = getattr(model, "config", None)
    max_context = args.max_context or getattr(config, "n_ctx", 1024)
    result = evaluate_mmlu(questions, model_next_token_logits(model), tokenizer,
                           shots=args.shots, limit=args.limit, subjects=args.subjects,
                           max_context=max_context, progress=not args.no_progress)
    print(result.table())
    if args.out:
        source = {"weights": args.weights} if args.weights else {"checkpoint": args.checkpoint}
        write_json(args.out, {**source, "shots": args.shots, "limit": args.limit,
                          "max_context": max_context, **result.to_dict()})
        print(f"results saved to {args.out}")
    return 0


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    j = sub.add_parser("judge", help="score responses with a judge model over HTTP")
    j.add_argument("--responses", required=True,
                   help="JSON list of {instruction, input?, output, model_response}")
    j.add_argument("--url", required=True, help="judge server, e.g. http://localhost:11434")
    j.add_argument("--model", required=True, help="judge model name, e.g. llama3")
    j.add_argument("--api", choices=APIS, default="ollama",
                   help="ollama: POST /api/chat; openai: POST /v1/chat/completions")
    j.add_argument("--out", help="where to save per-record scores "
                                 "(default: <responses>-judge-scores.json beside it)")
    j.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    j.add_argument("--retries", type=int, default=3,
                   help="extra attempts on HTTP 5xx/429, timeouts and connection errors")
    j.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry (doubles after each)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (openai API only)")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=run_judge)

    m = sub.add_parser("mmlu", help="MMLU accuracy from next-token logits")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="folder of a training run")
    src.add_argument("--weights", help="official GPT-2 weights: 124M, 355M, 774M, 1558M")
    m.add_argument("--subjects", nargs="+", help="only these subjects (default: all 57)")
    m.add_argument("--shots", type=int, choices=(0, 5), default=0, help="examples per prompt")
    m.add_argument("--limit", type=int, help="score at most N questions per subject")
    m.add_argument("--max-context", type=int,
                   help="keep the last N prompt tokens (default: the model's context)")
    m.add_argument("--backend", choices=cli.BACKENDS, default="numpy")
    m.add_argument("--data", help="MMLU JSON-lines file (default: the data cache's)")
    m.add_argument("--out", help="save the accuracy table as JSON here")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_mmlu)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (JudgeInputError, MMLUDataError, ModelUnavailableError, MissingFileError,
            ChecksumError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
