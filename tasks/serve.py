"""Serve a GPT-2 over an OpenAI-compatible HTTP API, with a chat page at `/`.

    python -m tasks.serve --init runs/instruct            # a run folder of tasks.*
    python -m tasks.serve --init 124M --port 8000 --max-batch 8
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "Every effort moves you", "max_tokens": 20}'

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream: true` gives
server-sent events ending in `data: [DONE]`), GET /health, and the chat page GET /.
Requests are decoded together in one batch with a KV cache (tasks/serving/); chat
messages use the instruct prompt format when the run was trained by tasks.instruct.
Needs the [serve] extra: pip install -e '.[serve]'.
"""
from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import os
import socket
import sys
from pathlib import Path

from gpt2.config import PRESETS

from .common.args import add_model_args, parse
from .common.device import select_device
from .common.errors import TaskError, Terminated, UsageError
from .common.guard import main_guard
from .common.jsonfiles import read_json
from .common.memory import check_inference_memory
from .data.manifest import ensure_inputs
from .runs.checkpoint import run_dir_of
from .runs.models import ModelSpec, build_model, expected_config
from .serving.server import Server


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tasks.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, init_default="124M", dropout_default=0.0)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback exposes the model (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    g.add_argument("--model-name", help="the model's id in the API (default: from --init)")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* "
                                     "(visible to other users in the process list: prefer --api-key-env)")
    g.add_argument("--api-key-env", metavar="VAR", help="read the required key from this environment variable")
    g.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default: %(default)s)")
    g.add_argument("--max-queue", type=int, default=32,
                   help="requests waiting for a batch slot before new ones get 503 (default: %(default)s)")
    g.add_argument("--max-tokens", type=int, default=256,
                   help="max_tokens when a chat request gives none (completions: 16, as OpenAI) "
                        "(default: %(default)s)")
    g.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a request may wait and generate in all (default: %(default)s)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from this origin (scheme://host[:port]) call the API from a "
                        "browser: CORS preflights answered for it alone; repeatable (default: none)")
    g.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="uvicorn's log level (default: %(default)s)")
    args = parse(p, argv)
    return args


def run_task(init: str) -> str | None:
    """run.json's task for a run or checkpoint folder ("instruct", "pretrain", ...), else None."""
    run_json = run_dir_of(init) / "run.json"
    if not run_json.is_file():
        return None
    try:
        return read_json(run_json).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def default_model_name(init: str) -> str:
    return f"gpt2-{init}" if init in PRESETS else Path(init).resolve().name or init


# ------------------------------------------------------------------ main
def load_server(args: argparse.Namespace) -> Server:
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer

    device = select_device(args.backend)
    ensure_inputs(init=args.init)  # the tokenizer and the official weights: every missing file at once
    try:
        tok = get_tokenizer()
    except TokenizerUnavailableError as e:
        raise TaskError(str(e)) from None
    spec = ModelSpec.from_flags(vars(args))
    check_inference_memory(expected_config(spec), 1, 1 << 30, device, f"serving --max-batch {args.max_batch:,} "
                           "requests (a KV cache each, and one prompt's prefill)", cache_rows=args.max_batch,
                           lower="--max-batch")
    model = build_model(spec).to(device).eval()
    if model.config.vocab_size < tok.n_vocab or not hasattr(model, "logits"):
        raise UsageError(f"--init {args.init}: not a GPT-2 language model with GPT-2's vocabulary")
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that variable is not set")
    return Server(model, tok, args.model_name or default_model_name(args.init),
                  instruct=run_task(args.init) == "instruct", api_key=api_key,
                  max_batch=args.max_batch, max_queue=args.max_queue, chat_max_tokens=args.max_tokens,
                  max_body=args.max_body, timeout=args.timeout, cors_origins=tuple(args.cors_origin))


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn
        import starlette  # noqa: F401
    except ImportError as e:
        raise TaskError(f"tasks.serve needs the [serve] extra ({e.name} is missing): "
                        "pip install -e '.[serve]'") from None
    # bind before loading the model: a taken port is one message, before any work
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise TaskError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    sock.listen(2048)   # clients may connect from now on; uvicorn accepts once it runs
    server = load_server(args)
    server.scheduler.start()
    from .serving.app import make_app  # Starlette, there now (the [serve] extra)
    app = make_app(server)
    port = sock.getsockname()[1]
    kind = "instruct format" if server.instruct else "plain continuation"
    print(f"serving {server.name} ({kind} for chat) on http://{args.host}:{port}  "
          f"(chat page at /, API at /v1)", flush=True)
    return serve_until_stopped(server, uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5),
                               sock)


def serve_until_stopped(server: Server, config, sock: socket.socket) -> int:
    """Serve until SIGTERM or Ctrl-C. uvicorn then lets open requests finish (up to 5 s) and gives
    the signal back: a normal stop, said as one, with the exit status every command has for it."""
    import uvicorn
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt as e:   # Terminated (SIGTERM) is one too
        signame, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("Ctrl-C", 130)
        reasons = server.scheduler.status()["finish_reasons"]
        done = ", ".join(f"{n} {why}" for why, n in reasons.items() if n) or "none"
        print(f"stopped ({signame}); choices answered: {done}", file=sys.stderr, flush=True)
        return code
    finally:
        server.scheduler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
