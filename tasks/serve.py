"""Serve a GPT-2 over an OpenAI-compatible HTTP API, with a chat page at `/`.

    python -m tasks.serve --init runs/instruct            # a run folder of tasks.*
    python -m tasks.serve --init 124M --port 8000 --max-batch 8
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "Every effort moves you", "max_tokens": 20}'

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream: true` gives
server-sent events ending in `data: [DONE]`), GET /health, and the chat page GET /.
Requests are decoded together in one batch with a KV cache (tasks/serve_batch.py); chat
messages use the instruct prompt format when the run was trained by tasks.instruct.
Needs the [serve] extra: pip install -e '.[serve]'.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import socket
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

from gpt2.config import PRESETS

from .common.args import add_model_args, parse
from .common.device import select_device
from .common.errors import TaskError, UsageError
from .common.guard import main_guard
from .common.jsonfiles import read_json
from .runs.checkpoint import run_dir_of
from .runs.models import ModelSpec, build_model
from .serve_api import (INSTRUCT_STOPS, ApiError, StopText, chat_messages, completion_prompt,
                        parse_sampling, render_chat)
from .serve_batch import Job, QueueFull, Scheduler


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
    g.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="uvicorn's log level (default: %(default)s)")
    args = parse(p, argv)
    for name in ("max_batch", "max_tokens", "max_body"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0 or args.timeout <= 0 or not 0 <= args.port < 65536:
        p.error("--max-queue must be >= 0, --timeout > 0 and --port in 0..65535")
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


# ------------------------------------------------------------------ the app
class Server:
    """The model, its tokenizer and scheduler, and the settings every request is checked against."""

    def __init__(self, model, tokenizer, name: str, instruct: bool = False, api_key: str | None = None,
                 max_batch: int = 8, max_queue: int = 32, chat_max_tokens: int = 256,
                 max_body: int = 1 << 20, timeout: float = 300.0):
        self.tok, self.name, self.instruct, self.api_key = tokenizer, name, instruct, api_key
        self.n_ctx = model.config.n_ctx
        self.chat_max_tokens, self.max_body, self.timeout = chat_max_tokens, max_body, timeout
        self.scheduler = Scheduler(model, max_batch, max_queue, eos_id=tokenizer.eot_id)
        self.created = int(time.time())

    # ---------------------------------------------------------- request checks
    def check_auth(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_json(self, request) -> dict:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body):
            raise ApiError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():   # a chunked body has no length to check up front
            body += chunk
            if len(body) > self.max_body:
                raise ApiError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        model = data.get("model", self.name)
        if model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist; this server has {self.name!r}",
                           param="model", code="model_not_found")
        return data

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tok.encode(prompt) if prompt else []
        else:
            ids = list(prompt)
            if not all(0 <= t < self.tok.n_vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {self.tok.n_vocab})", param="prompt",
                               code="invalid_value")
        return ids or [self.tok.eot_id]   # an empty prompt starts from <|endoftext|>

    def budget(self, ids: list[int], asked: int | None) -> int:
        """max_tokens for this prompt: what was asked, checked against the context."""
        room = self.n_ctx - len(ids)
        if asked is None:
            asked = min(self.chat_max_tokens, room)
        if room < 1 or asked > room:
            raise ApiError(400, f"this model's context is {self.n_ctx} tokens; the prompt has {len(ids)} "
                                f"and max_tokens asks for {asked}", param="max_tokens",
                           code="context_length_exceeded")
        return asked

    # ---------------------------------------------------------- generation
    def submit(self, ids: list[int], sampling, max_tokens: int):
        """Queue a job; returns it and the asyncio queue its events arrive on."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):   # on the scheduler's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(ids, max_tokens, emit, sampling.temperature, sampling.top_k, sampling.top_p,
                  sampling.seed, deadline=time.monotonic() + self.timeout)
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; retry later", code="queue_full",
                           type="server_error") from None
        return job, events

    async def tokens(self, job, events, text: StopText, request=None):
        """(new text, finish reason or None) as tokens come; cancels the job at a stop string."""
        checked = time.monotonic()
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                kind = None
            # a non-streaming client that left frees its slot too (twice a second, we look)
            if request is not None and time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.scheduler.cancel(job)
                    return
            if kind is None:
                continue
            if kind == "token":
                text.tokens += 1   # what this response reports; the job may run a step past a stop
                if value == self.tok.eot_id:
                    continue   # the end is reported as finish "stop", not as text
                piece = text.push(value)
                if text.stopped:
                    self.scheduler.cancel(job)
                    yield piece, "stop"
                    return
                if piece:
                    yield piece, None
            elif value == "timeout":
                raise ApiError(504, f"generation did not finish within {self.timeout:g} s (--timeout)",
                               code="timeout", type="server_error")
            elif value in ("stop", "length"):
                yield text.flush(), ("stop" if text.stopped else value)
                return
            else:   # "error: ..." (or "cancelled", which only we ask for)
                raise ApiError(500, f"generation failed: {value}", code="generation_failed",
                               type="server_error")


def make_app(server: Server):
    """The Starlette application around `server`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error_response(e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    def api(handler):
        async def wrapped(request):
            try:
                server.check_auth(request)
                return await handler(request)
            except ApiError as e:
                return error_response(e)
        return wrapped

    page = resources.files("tasks").joinpath("static/chat.html").read_text(encoding="utf-8")

    async def index(request):
        return HTMLResponse(page)

    async def health(request):
        return JSONResponse({"status": "ok", "model": server.name, **server.scheduler.status()})

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": server.name, "object": "model", "created": server.created, "owned_by": "minigrad-gpt2",
             "context_length": server.n_ctx, "instruct": server.instruct}]})

    async def completions(request):
        body = await server.read_json(request)
        s = parse_sampling(body, 16)
        ids = server.prompt_ids(completion_prompt(body))
        return await generate(request, ids, s, chat=False, stops=s.stop)

    async def chat(request):
        body = await server.read_json(request)
        s = parse_sampling(body, None)
        messages = chat_messages(body)
        ids = server.prompt_ids(render_chat(messages, server.instruct))
        stops = s.stop + (INSTRUCT_STOPS if server.instruct else [])
        return await generate(request, ids, s, chat=True, stops=stops)

    async def generate(request, ids, s, chat: bool, stops):
        max_tokens = server.budget(ids, s.max_tokens)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        job, events = server.submit(ids, s, max_tokens)
        text = StopText(server.tok, stops)

        def usage() -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": text.tokens,
                    "total_tokens": len(ids) + text.tokens}

        def choice(piece: str, finish, stream: bool) -> dict:
            if not chat:
                return {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
            if stream:
                return {"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": piece},
                    "logprobs": None, "finish_reason": finish}

        if not s.stream:
            pieces, finish = [], None
            try:
                async for piece, finish in server.tokens(job, events, text, request):
                    pieces.append(piece)
            finally:
                server.scheduler.cancel(job)   # a no-op once finished; frees the slot otherwise
            if finish is None:   # the client left: nobody reads this
                return JSONResponse({}, status_code=499)
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": server.name,
                                 "choices": [choice("".join(pieces), finish, False)], "usage": usage()})

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def sse(choices: list, **extra) -> str:
            data = {"id": rid, "object": chunk_obj, "created": created, "model": server.name,
                    "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n"

        async def stream():
            try:
                if chat:
                    yield sse([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                async for piece, finish in server.tokens(job, events, text):
                    if piece:
                        yield sse([choice(piece, None, True)])
                    if finish is not None:
                        yield sse([choice("", finish, True)])
                if s.include_usage:
                    yield sse([], usage=usage())
            except ApiError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
            finally:
                # a client that disconnects ends this generator (Starlette cancels it): free the slot
                server.scheduler.cancel(job)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def http_error(request, exc: HTTPException):
        return error_response(ApiError(exc.status_code, str(exc.detail), code=None,
                                       type="invalid_request_error"))

    async def server_error(request, exc: Exception):
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    routes = [Route("/", index), Route("/health", health),
              Route("/v1/models", api(models)),
              Route("/v1/completions", api(completions), methods=["POST"]),
              Route("/v1/chat/completions", api(chat), methods=["POST"])]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.scheduler.stop()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error},
                    lifespan=lifespan)
    app.state.server = server
    return app


# ------------------------------------------------------------------ main
def load_server(args: argparse.Namespace) -> Server:
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer

    device = select_device(args.backend)
    try:
        tok = get_tokenizer()
    except TokenizerUnavailableError as e:
        raise TaskError(str(e)) from None
    model = build_model(ModelSpec.from_flags(vars(args))).to(device).eval()
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
                  max_body=args.max_body, timeout=args.timeout)


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
    app = make_app(server)
    port = sock.getsockname()[1]
    kind = "instruct format" if server.instruct else "plain continuation"
    print(f"serving {server.name} ({kind} for chat) on http://{args.host}:{port}  "
          f"(chat page at /, API at /v1)", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        server.scheduler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
