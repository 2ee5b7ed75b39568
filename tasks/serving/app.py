"""The HTTP routes of tasks.serve (Starlette). Each handler is a module-level function that finds
the Server in `request.app.state.server`, as vLLM's api_server does, so that routes, the protocol
(protocol.py) and the engine (server.py, scheduler.py) stay apart:

    GET  /                      the chat page (static/chat.html)
    GET  /health                status and the scheduler's counters
    GET  /v1/models             the one model served
    POST /v1/completions        prompt -> text
    POST /v1/chat/completions   messages -> text

`stream: true` answers with server-sent events ending in `data: [DONE]`; a refused request is
a 4xx JSON error as OpenAI's ({"error": {"message", "type", "param", "code"}}).
"""
from __future__ import annotations

import contextlib
import functools
import json
from importlib import resources
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .protocol import (INSTRUCT_STOPS, ApiError, Reply, Sampling, StopText, chat_messages, completion_prompt,
                       parse_sampling, render_chat)
from .scheduler import Job
from .server import Server


def make_app(server: Server) -> Starlette:
    """The Starlette application around `server` (whose scheduler the caller starts)."""
    routes = [Route("/", index), Route("/health", health),
              Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error},
                    lifespan=_lifespan)
    app.state.server = server
    app.state.page = resources.files("tasks.serving").joinpath("static/chat.html").read_text(encoding="utf-8")
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.server.scheduler.stop()


def server_of(request: Request) -> Server:
    return request.app.state.server


def error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def api(handler):
    """A /v1 route: the API key is checked first, and a refused request answered with its error."""
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            server_of(request).check_auth(request)
            return await handler(request)
        except ApiError as e:
            return error_response(e)
    return wrapped


# ------------------------------------------------------------------ routes
async def index(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


async def health(request: Request) -> Response:
    server = server_of(request)
    return JSONResponse({"status": "ok", "model": server.name, **server.scheduler.status()})


@api
async def models(request: Request) -> Response:
    server = server_of(request)
    return JSONResponse({"object": "list", "data": [
        {"id": server.name, "object": "model", "created": server.created, "owned_by": "minigrad-gpt2",
         "context_length": server.n_ctx, "instruct": server.instruct}]})


@api
async def completions(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_body(request)
    s = parse_sampling(body, 16)
    ids = server.prompt_ids(completion_prompt(body))
    return await generate(request, ids, s, chat=False, stops=s.stop)


@api
async def chat_completions(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_body(request)
    s = parse_sampling(body, None)
    messages = chat_messages(body)
    ids = server.prompt_ids(render_chat(messages, server.instruct))
    stops = s.stop + (INSTRUCT_STOPS if server.instruct else [])
    return await generate(request, ids, s, chat=True, stops=stops)


async def http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(ApiError(exc.status_code, str(exc.detail), code=None, type="invalid_request_error"))


async def server_error(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))


# ------------------------------------------------------------------ generating
async def generate(request: Request, ids: list[int], s: Sampling, chat: bool, stops: list[str]) -> Response:
    """Queue the prompt and answer with the whole text, or stream it as it comes."""
    server = server_of(request)
    max_tokens = server.budget(ids, s.max_tokens)
    reply = Reply.new(chat, server.name, len(ids))
    job, events = server.submit(ids, s, max_tokens)
    text = StopText(server.tok, stops)
    if not s.stream:
        return await _whole(request, server, job, events, text, reply)
    return StreamingResponse(_events(server, job, events, text, reply, s.include_usage),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _whole(request: Request, server: Server, job: Job, events, text: StopText, reply: Reply) -> Response:
    pieces, finish = [], None
    try:
        async for piece, finish in server.tokens(job, events, text, request):
            pieces.append(piece)
    finally:
        server.scheduler.cancel(job)   # a no-op once finished; frees the slot otherwise
    if finish is None:   # the client left: nobody reads this
        return JSONResponse({}, status_code=499)
    return JSONResponse(reply.body("".join(pieces), finish, text.tokens))


async def _events(server: Server, job: Job, events, text: StopText, reply: Reply,
                  include_usage: bool) -> AsyncIterator[str]:
    try:
        first = reply.first_event()
        if first is not None:
            yield first
        async for piece, finish in server.tokens(job, events, text):
            if piece:
                yield reply.event([reply.choice(piece, None, True)])
            if finish is not None:
                yield reply.event([reply.choice("", finish, True)])
        if include_usage:
            yield reply.event([], usage=reply.usage(text.tokens))
    except ApiError as e:
        yield f"data: {json.dumps(e.body())}\n\n"
    finally:
        # a client that disconnects ends this generator (Starlette cancels it): free the slot
        server.scheduler.cancel(job)
    yield "data: [DONE]\n\n"
