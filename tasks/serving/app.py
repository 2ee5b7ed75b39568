"""The HTTP side of tasks.serve (Starlette): routes as module-level handlers that find the Server
in `request.app.state` (as vLLM's api_server does), and the checks every request passes first.

    GET  /                      the chat page          GET  /health            counters
    GET  /v1/models[/{id}]      the model              POST /v1/completions    POST /v1/chat/completions
    GET  /tokenizer_info        POST /tokenize         POST /detokenize        (vLLM's, for lm-eval)

Browser safety: a POST must be `Content-Type: application/json` (else 415), which no page on
another origin can send without a CORS preflight; preflights are answered, with CORS headers,
only for the origins named with --cors-origin (none by default); a Content-Encoding is refused
(415) rather than misread; a 405 names the allowed methods in `Allow`.
"""
from __future__ import annotations

import contextlib
import sys
import time
from importlib import resources
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .generation import Generation
from .protocol import ApiError, parse_chat, parse_completion, parse_detokenize, parse_tokenize
from .server import Server

JSON_POST_ONLY = "a POST body must be JSON, sent with Content-Type: application/json"


def error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def server_of(request: Request) -> Server:
    return request.app.state.server


# ------------------------------------------------------------------ handlers
async def index(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


async def health(request: Request) -> Response:
    server = server_of(request)
    return JSONResponse({"status": "ok", "model": server.name, **server.scheduler.status()})


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [server_of(request).model_card()]})


async def get_model(request: Request) -> Response:
    server = server_of(request)
    server.check_model(request.path_params["model_id"], param=None)
    return JSONResponse(server.model_card())


async def completions(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_json(request)
    req = parse_completion(body)
    prompts = [server.prompt_ids(p) for p in req.prompts]
    return await respond(request, Generation(server, req, prompts))


async def chat_completions(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_json(request)
    req = parse_chat(body)
    return await respond(request, Generation(server, req, [server.chat_prompt_ids(req)]))


async def respond(request: Request, gen: Generation) -> Response:
    """The whole response, or server-sent events as the tokens come."""
    if not gen.req.stream:
        body = await gen.collect(request)
        return JSONResponse({}, status_code=499) if body is None else JSONResponse(body)
    return StreamingResponse(gen.events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def tokenizer_info(request: Request) -> Response:
    return JSONResponse(server_of(request).tokenizer_info())


async def tokenize(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_json(request)
    ids = server.tok.encode(parse_tokenize(body))
    return JSONResponse({"count": len(ids), "max_model_len": server.n_ctx, "tokens": ids})


async def detokenize(request: Request) -> Response:
    server = server_of(request)
    body = await server.read_json(request)
    return JSONResponse({"prompt": server.tok.decode(server.check_ids(parse_detokenize(body), "tokens"))})


# ------------------------------------------------------------------ what every request passes
def api(handler, auth: bool = True):
    """ApiErrors as JSON; the API key checked first where `auth`."""
    async def wrapped(request: Request) -> Response:
        try:
            if auth:
                server_of(request).check_auth(request)
            return await handler(request)
        except ApiError as e:
            return error_response(e)
    wrapped.__name__ = handler.__name__
    return wrapped


class BodyRules:
    """ASGI middleware: a POST must declare a JSON body and no Content-Encoding (415 otherwise)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            encoding = headers.get("content-encoding", "identity").strip().lower()
            error = None
            if encoding not in ("", "identity"):
                error = ApiError(415, f"Content-Encoding {encoding!r} is not supported: send the body "
                                      "uncompressed", param="Content-Encoding", code="unsupported_media_type")
            elif media != "application/json":
                error = ApiError(415, f"{JSON_POST_ONLY} (got {media or 'none'!r})", param="Content-Type",
                                 code="unsupported_media_type")
            if error is not None:
                return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


class Cors:
    """ASGI middleware: CORS for the origins named with --cors-origin, exactly those.

    A preflight from a listed origin is answered 204 with what it may send; from any other it
    gets 403 and no CORS header at all. Other requests from a listed origin get
    Access-Control-Allow-Origin on their answer (without it, a browser hides the answer)."""

    def __init__(self, app, origins: tuple[str, ...]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if scope["type"] != "http" or origin is None:
            return await self.app(scope, receive, send)
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            if not allowed:
                response = error_response(ApiError(403, f"origin {origin!r} is not allowed (--cors-origin)",
                                                   code="origin_not_allowed"))
            else:
                response = Response(status_code=204, headers={
                    "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600", "Vary": "Origin"})
            return await response(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start" and allowed:
                message["headers"] = list(message.get("headers", [])) + [
                    (b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            await send(message)
        await self.app(scope, receive, send_with_cors)


class AccessLog:
    """ASGI middleware: one line per request on stderr once it is answered (a stream: once it
    ended), `HH:MM:SS METHOD PATH STATUS SECONDS s`, and `(client left)` if it went first."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, done = time.monotonic(), [None], [False]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                done[0] = True
            await send(message)
        try:
            await self.app(scope, receive, send_logged)
        finally:
            left = "" if done[0] else " (client left)"
            print(f"{time.strftime('%H:%M:%S')} {scope['method']} {scope['path']} {status[0] or '-'} "
                  f"{time.monotonic() - t0:.3f} s{left}", file=sys.stderr, flush=True)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own errors (404, 405 with its Allow header) in OpenAI's error shape."""
    response = error_response(ApiError(exc.status_code, str(exc.detail), code=None))
    response.headers.update(exc.headers or {})
    return response


async def server_error(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))


def make_app(server: Server) -> Starlette:
    """The Starlette application around `server` (whose scheduler the caller starts)."""
    routes = [Route("/", index), Route("/health", health),
              Route("/v1/models", api(list_models)), Route("/v1/models/{model_id:path}", api(get_model)),
              Route("/v1/completions", api(completions), methods=["POST"]),
              Route("/v1/chat/completions", api(chat_completions), methods=["POST"]),
              Route("/tokenizer_info", api(tokenizer_info, auth=False)),
              Route("/tokenize", api(tokenize, auth=False), methods=["POST"]),
              Route("/detokenize", api(detokenize, auth=False), methods=["POST"])]
    middleware = [Middleware(BodyRules)]
    if server.cors_origins:   # before the body rules: a preflight is answered before anything else
        middleware.insert(0, Middleware(Cors, origins=server.cors_origins))
    if server.log_requests:   # outermost: every answer is logged, refusals too
        middleware.insert(0, Middleware(AccessLog))

    app = Starlette(routes=routes, middleware=middleware, lifespan=_lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.server = server
    app.state.page = resources.files("tasks.serving").joinpath("static/chat.html").read_text(encoding="utf-8")
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.server.scheduler.stop()

